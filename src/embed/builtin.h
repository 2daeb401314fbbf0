// The built-in embedder: in-process, deterministic, no service and no download. It is lexical,
// not a neural model: texts that share (stemmed) words, word pairs and character trigrams
// come out close; synonyms with no shared form do not.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "embed/embedder.h"

namespace ka::embed {

inline constexpr std::string_view kBuiltinModel = "builtin-lexical-v1";

// Feature weights relative to a stemmed word (1.0).
inline constexpr float kBigramWeight = 0.5f;
inline constexpr float kTrigramWeight = 0.3f;  // shared by all trigrams of one word

enum class Kind { word, bigram, trigram };

struct Feature {
    std::uint64_t hash;
    float weight;
    Kind kind;
};

// Lower-cased words: runs of ASCII letters and digits, and of any non-ASCII UTF-8 bytes.
std::vector<std::string> words(std::string_view text);

// Weighted features of a text, sublinear in repetitions: 1 + ln(count) per feature.
std::vector<Feature> lexical_features(std::string_view text);

// A stable 64-bit hash (FNV-1a with a murmur3 finaliser): vectors must not change between
// builds or platforms, since they are stored.
std::uint64_t stable_hash(std::string_view data);

class BuiltinEmbedder : public Embedder {
  public:
    BuiltinEmbedder(int dimensions, int max_input_chars);
    const std::string& model() const override { return model_; }
    int dimensions() const override { return dimensions_; }
    Result<std::vector<Vector>> embed(std::span<const std::string> texts, Purpose purpose) override;
    std::vector<std::int64_t> term_features(std::string_view text) const override;
    void set_term_stats(TermStats* stats) override { stats_ = stats; }

    // One text's vector: features hashed into signed buckets, L2-normalised. With document
    // frequencies (queries), word and pair features are weighted by their BM25 idf.
    Vector embed_one(std::string_view text, const TermFrequencies* frequencies = nullptr) const;

  private:
    int dimensions_;
    int max_input_chars_;
    std::string model_;
    TermStats* stats_ = nullptr;
};

}  // namespace ka::embed
