#include "embed/builtin.h"

#include <libstemmer.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "embed/text.h"

namespace ka::embed {
namespace {

// Common English function words: they carry no topic, and would dominate short texts.
const std::unordered_set<std::string_view>& stop_words() {
    static const std::unordered_set<std::string_view> words = {
        "a",      "about",  "above", "after",  "again",    "against",    "all",  "am",
        "an",     "and",    "any",   "are",    "as",       "at",         "be",   "because",
        "been",   "before", "being", "below",  "between",  "both",       "but",  "by",
        "can",    "could",  "did",   "do",     "does",     "doing",      "down", "during",
        "each",   "few",    "for",   "from",   "further",  "had",        "has",  "have",
        "having", "he",     "her",   "here",   "hers",     "herself",    "him",  "himself",
        "his",    "how",    "i",     "if",     "in",       "into",       "is",   "it",
        "its",    "itself", "just",  "me",     "more",     "most",       "my",   "myself",
        "no",     "nor",    "not",   "now",    "of",       "off",        "on",   "once",
        "only",   "or",     "other", "our",    "ours",     "ourselves",  "out",  "over",
        "own",    "same",   "she",   "should", "so",       "some",       "such", "than",
        "that",   "the",    "their", "theirs", "them",     "themselves", "then", "there",
        "these",  "they",   "this",  "those",  "through",  "to",         "too",  "under",
        "until",  "up",     "very",  "was",    "we",       "were",       "what", "when",
        "where",  "which",  "while", "who",    "whom",     "why",        "will", "with",
        "would",  "you",    "your",  "yours",  "yourself", "yourselves", "s",    "t",
        "also",   "may",    "might", "must",   "shall",    "us"};
    return words;
}

// Snowball stemmers are not thread-safe: one per thread.
std::string stem(const std::string& word) {
    struct Deleter {
        void operator()(sb_stemmer* s) const { sb_stemmer_delete(s); }
    };
    thread_local std::unique_ptr<sb_stemmer, Deleter> stemmer(sb_stemmer_new("english", "UTF_8"));
    if (!stemmer) return word;
    const sb_symbol* out =
        sb_stemmer_stem(stemmer.get(), reinterpret_cast<const sb_symbol*>(word.data()),
                        static_cast<int>(word.size()));
    if (!out) return word;
    return std::string(reinterpret_cast<const char*>(out),
                       static_cast<std::size_t>(sb_stemmer_length(stemmer.get())));
}

bool word_byte(unsigned char c) {
    return std::isalnum(c) || c >= 0x80;
}

void add(std::unordered_map<std::string, std::pair<float, Kind>>& counts, std::string name,
         float weight, Kind kind) {
    auto& slot = counts[std::move(name)];
    slot.first += weight;
    slot.second = kind;
}

// BM25's idf: rare features count more; never negative.
double idf(double documents, double df) {
    return std::log(1.0 + (documents - df + 0.5) / (df + 0.5));
}

}  // namespace

std::uint64_t stable_hash(std::string_view data) {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned char c : data) {
        h ^= c;
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

std::vector<std::string> words(std::string_view text) {
    std::vector<std::string> out;
    std::string current;
    for (char ch : text) {
        auto c = static_cast<unsigned char>(ch);
        if (word_byte(c)) {
            current += c < 0x80 ? static_cast<char>(std::tolower(c)) : ch;
        } else if (!current.empty()) {
            out.push_back(std::move(current));
            current.clear();
        }
    }
    if (!current.empty()) out.push_back(std::move(current));
    return out;
}

std::vector<Feature> lexical_features(std::string_view text) {
    std::unordered_map<std::string, std::pair<float, Kind>> counts;
    std::vector<std::string> all = words(text);
    std::string previous;
    for (const auto& word : all) {
        if (stop_words().contains(word)) {
            previous.clear();  // a stop word breaks a pair
            continue;
        }
        std::string s = stem(word);
        add(counts, "w:" + s, 1.0f, Kind::word);
        if (!previous.empty()) add(counts, "b:" + previous + " " + s, kBigramWeight, Kind::bigram);
        previous = s;
        // Character trigrams of the word with boundary marks catch typos and inflections.
        std::string marked = "<" + word + ">";
        if (marked.size() >= 5) {
            float each = kTrigramWeight / static_cast<float>(marked.size() - 2);
            for (std::size_t i = 0; i + 3 <= marked.size(); ++i)
                add(counts, "c:" + marked.substr(i, 3), each, Kind::trigram);
        }
    }
    if (counts.empty()) {
        // Only stop words or symbols: use what there is rather than an undefined zero vector.
        for (const auto& word : all) add(counts, "w:" + word, 1.0f, Kind::word);
        if (counts.empty() && !text.empty())
            add(counts, "t:" + std::string(text), 1.0f, Kind::word);
    }
    std::vector<Feature> features;
    features.reserve(counts.size());
    for (const auto& [name, entry] : counts) {
        // Sublinear: a word said five times is not five times as topical. Fractional counts
        // (pairs, trigrams) keep their relative weight below one occurrence.
        auto [count, kind] = entry;
        float weight = count >= 1.0f ? 1.0f + std::log(count) : count;
        features.push_back({stable_hash(name), weight, kind});
    }
    return features;
}

BuiltinEmbedder::BuiltinEmbedder(int dimensions, int max_input_chars)
    : dimensions_(dimensions),
      max_input_chars_(max_input_chars),
      model_(dimensions == 768 ? std::string(kBuiltinModel)
                               : fmt::format("{}-{}d", kBuiltinModel, dimensions)) {}

std::vector<std::int64_t> BuiltinEmbedder::term_features(std::string_view text) const {
    std::vector<std::int64_t> out;
    for (const auto& f :
         lexical_features(truncate_utf8(text, static_cast<std::size_t>(max_input_chars_)))) {
        if (f.kind != Kind::trigram) out.push_back(static_cast<std::int64_t>(f.hash));
    }
    std::sort(out.begin(), out.end());
    return out;
}

Vector BuiltinEmbedder::embed_one(std::string_view text, const TermFrequencies* frequencies) const {
    Vector v(static_cast<std::size_t>(dimensions_), 0.0f);
    for (const auto& f :
         lexical_features(truncate_utf8(text, static_cast<std::size_t>(max_input_chars_)))) {
        float weight = f.weight;
        if (frequencies && frequencies->documents > 0 && f.kind != Kind::trigram) {
            auto it = frequencies->df.find(static_cast<std::int64_t>(f.hash));
            weight *= static_cast<float>(
                idf(frequencies->documents, it == frequencies->df.end() ? 0.0 : it->second));
        }
        // Signed hashing: collisions cancel on average instead of piling up.
        float sign = (f.hash >> 63) ? -1.0f : 1.0f;
        v[(f.hash & 0x7FFFFFFFFFFFFFFFULL) % v.size()] += sign * weight;
    }
    double norm = 0;
    for (float x : v) norm += static_cast<double>(x) * x;
    if (norm == 0) {
        v[0] = 1.0f;  // colliding features cancelled exactly: still a valid direction
        return v;
    }
    auto scale = static_cast<float>(1.0 / std::sqrt(norm));
    for (auto& x : v) x *= scale;
    return v;
}

Result<std::vector<Vector>> BuiltinEmbedder::embed(std::span<const std::string> texts,
                                                   Purpose purpose) {
    std::vector<Vector> out;
    out.reserve(texts.size());
    for (const auto& t : texts) {
        if (purpose == Purpose::query && stats_) {
            auto frequencies = stats_->lookup(term_features(t));
            if (!frequencies) return std::unexpected(frequencies.error());
            out.push_back(embed_one(t, &*frequencies));
        } else {
            out.push_back(embed_one(t));
        }
    }
    return out;
}

}  // namespace ka::embed
