#include "embed/builtin.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <map>
#include <optional>

#include <gtest/gtest.h>

#include "config/config.h"
#include "embed/text.h"

namespace ka::embed {
namespace {

double dot(const Vector& a, const Vector& b) {
    double s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
    return s;
}

double norm(const Vector& v) {
    return std::sqrt(dot(v, v));
}

// Every vector the embedder returns must be a finite unit vector of the configured size:
// the store searches by cosine and pgvector rejects NaN.
void expect_unit(const Vector& v, std::size_t dims) {
    ASSERT_EQ(v.size(), dims);
    for (float x : v) ASSERT_TRUE(std::isfinite(x));
    EXPECT_NEAR(norm(v), 1.0, 1e-5);
}

Vector embed_document(BuiltinEmbedder& e, const std::string& text) {
    std::vector<std::string> texts{text};
    auto r = e.embed(texts, Purpose::document);
    EXPECT_TRUE(r) << r.error().message;
    if (!r || r->size() != 1) return {};
    return std::move(r->front());
}

config::Config default_config() {
    auto c = config::load_from_string("", [](const std::string&) { return std::nullopt; });
    EXPECT_TRUE(c) << c.error().message;
    return *c;
}

TEST(BuiltinEmbedder, DefaultsFromConfig) {
    auto made = make_embedder(default_config());
    ASSERT_TRUE(made) << made.error().message;
    EXPECT_EQ((*made)->model(), "builtin-lexical-v1");
    EXPECT_EQ((*made)->dimensions(), 768);

    std::vector<std::string> texts{"PostgreSQL stores the knowledge base"};
    auto r = (*made)->embed(texts, Purpose::document);
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->size(), 1u);
    expect_unit(r->front(), 768);
}

// A store records the model name with every entry; another size must not pass for 768.
TEST(BuiltinEmbedder, ModelNameNamesNonDefaultDimensions) {
    EXPECT_EQ(BuiltinEmbedder(768, 8000).model(), "builtin-lexical-v1");
    BuiltinEmbedder small(256, 8000);
    EXPECT_EQ(small.model(), "builtin-lexical-v1-256d");
    EXPECT_EQ(small.dimensions(), 256);
    expect_unit(embed_document(small, "vector search with pgvector"), 256);
}

TEST(BuiltinEmbedder, FactoryRejectsAForeignModel) {
    auto c = default_config();
    c.embedding.model = "nomic-embed-text";
    auto made = make_embedder(c);
    ASSERT_FALSE(made);
    EXPECT_EQ(made.error().code, ErrorCode::config);
    EXPECT_NE(made.error().message.find("nomic-embed-text"), std::string::npos)
        << made.error().message;

    c.embedding.model = "builtin-lexical-v1";
    EXPECT_TRUE(make_embedder(c));
}

TEST(BuiltinEmbedder, ReturnsOneUnitVectorPerTextInOrder) {
    BuiltinEmbedder e(768, 8000);
    std::vector<std::string> texts{"rotate the TLS certificates", "backup schedule for postgres",
                                   "rotate the TLS certificates"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->size(), 3u);
    for (const auto& v : *r) expect_unit(v, 768);
    EXPECT_EQ((*r)[0], (*r)[2]);
    EXPECT_NE((*r)[0], (*r)[1]);
    EXPECT_EQ((*r)[1], e.embed_one(texts[1]));

    auto none = e.embed({}, Purpose::document);
    ASSERT_TRUE(none);
    EXPECT_TRUE(none->empty());
}

// Stored vectors are compared with vectors computed later, possibly by another process.
TEST(BuiltinEmbedder, DeterministicAcrossInstances) {
    BuiltinEmbedder a(768, 8000);
    BuiltinEmbedder b(768, 8000);
    const std::string text = "Deploying the ingest service needs the feature flag enabled.";
    Vector first = a.embed_one(text);
    EXPECT_EQ(first, a.embed_one(text));
    EXPECT_EQ(first, b.embed_one(text));
    EXPECT_EQ(first, embed_document(b, text));
}

// Pinned values: vectors are stored, so the hash must never change between builds.
TEST(BuiltinEmbedder, StableHashIsPinned) {
    EXPECT_EQ(stable_hash(""), stable_hash(""));
    EXPECT_NE(stable_hash("w:deploy"), stable_hash("w:deploi"));
    // FNV-1a offset basis and prime, then the murmur3 finaliser.
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned char c : std::string_view("w:servic")) {
        h ^= c;
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    EXPECT_EQ(stable_hash("w:servic"), h);
}

TEST(BuiltinEmbedder, WordsAreLowerCasedAlphanumericRuns) {
    EXPECT_EQ(words("Hello, World! pg_dump v16 café"),
              (std::vector<std::string>{"hello", "world", "pg", "dump", "v16", "café"}));
    EXPECT_TRUE(words("  ...  ").empty());
}

TEST(BuiltinEmbedder, StemmingBringsInflectionsTogether) {
    BuiltinEmbedder e(768, 8000);
    Vector a = e.embed_one("deploying services");
    Vector b = e.embed_one("deployed service");
    Vector unrelated = e.embed_one("the cat sat quietly on a warm windowsill");
    double close = dot(a, b);
    EXPECT_GT(close, 0.5);
    EXPECT_GT(close, dot(a, unrelated) + 0.4);
}

// Character trigrams keep a misspelt word nearer to the right one than to unrelated words.
TEST(BuiltinEmbedder, TypoStaysCloserThanUnrelatedText) {
    BuiltinEmbedder e(768, 8000);
    Vector right = e.embed_one("kubernetes");
    double typo = dot(right, e.embed_one("kuberentes"));
    EXPECT_GT(typo, 0.0);
    for (const char* other : {"banana", "postgres", "windowsill", "kilometres"})
        EXPECT_GT(typo, dot(right, e.embed_one(other))) << other;
}

TEST(BuiltinEmbedder, StopWordsOrSymbolsStillGiveAVector) {
    BuiltinEmbedder e(768, 8000);
    for (const char* text : {"the and of", "it is", "!!! ???", "--> <--", "   "}) {
        Vector v = e.embed_one(text);
        SCOPED_TRACE(text);
        expect_unit(v, 768);
    }
    // Different stop-word texts must not all collapse onto one direction.
    EXPECT_NE(e.embed_one("the and of"), e.embed_one("it is"));
    EXPECT_NE(e.embed_one("!!! ???"), e.embed_one("--> <--"));
}

// Empty text has no features: the embedder returns a fixed unit vector, not NaN or an error.
TEST(BuiltinEmbedder, EmptyTextGivesAFixedUnitVector) {
    BuiltinEmbedder e(768, 8000);
    std::vector<std::string> texts{"", "not empty"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->size(), 2u);
    expect_unit((*r)[0], 768);
    EXPECT_EQ((*r)[0][0], 1.0f);
    EXPECT_EQ((*r)[0], e.embed_one(""));
    EXPECT_TRUE(e.term_features("").empty());
}

TEST(TruncateUtf8, NeverSplitsACharacter) {
    EXPECT_EQ(truncate_utf8("abcdef", 3), "abc");
    EXPECT_EQ(truncate_utf8("abc", 3), "abc");
    EXPECT_EQ(truncate_utf8("abc", 10), "abc");
    EXPECT_EQ(truncate_utf8("abc", 0), "");
    // Counted in code points: é is two bytes, the emoji four.
    EXPECT_EQ(truncate_utf8("caf\xc3\xa9s", 4), "caf\xc3\xa9");
    EXPECT_EQ(truncate_utf8("ab\xf0\x9f\x98\x80z", 3), "ab\xf0\x9f\x98\x80");
    EXPECT_EQ(truncate_utf8("ab\xf0\x9f\x98\x80z", 2), "ab");
}

TEST(BuiltinEmbedder, LongTextIsEmbeddedFromItsFirstCharacters) {
    constexpr int kMax = 64;
    BuiltinEmbedder e(768, kMax);
    // 63 ASCII characters, then a two-byte character as the 64th: a cut by bytes would leave
    // a stray lead byte on the last word and so change the vector.
    const std::string head = "deploy " + std::string(50, 'x') + "abcdef\xc3\xa9";
    ASSERT_EQ(truncate_utf8(head + " ", kMax), head);
    std::string tail = " kubernetes postgres rotation " + std::string(500, 'z');
    EXPECT_EQ(e.embed_one(head + tail), e.embed_one(head));
    EXPECT_EQ(e.term_features(head + tail), e.term_features(head));
    // The same text under a larger limit does see the tail.
    BuiltinEmbedder wide(768, 8000);
    EXPECT_NE(wide.embed_one(head + tail), wide.embed_one(head));
}

TEST(BuiltinEmbedder, TermFeaturesAreSortedWordsAndPairsOnly) {
    BuiltinEmbedder e(768, 8000);
    auto features = e.term_features("Deploying the services; deploying services cluster");
    EXPECT_TRUE(std::is_sorted(features.begin(), features.end()));
    EXPECT_EQ(std::adjacent_find(features.begin(), features.end()), features.end());

    // Expected: stems deploy, servic, cluster and the pairs "servic deploy", "deploy servic",
    // "servic cluster" ("the" is a stop word and breaks a pair); no trigrams.
    std::vector<std::int64_t> expected;
    for (const char* name : {"w:deploy", "w:servic", "w:cluster", "b:deploy servic",
                             "b:servic deploy", "b:servic cluster"})
        expected.push_back(static_cast<std::int64_t>(stable_hash(name)));
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(features, expected);

    std::size_t trigrams = 0;
    for (const auto& f : lexical_features("Deploying the services; deploying services cluster"))
        trigrams += f.kind == Kind::trigram;
    EXPECT_GT(trigrams, 0u);
}

// Document frequencies from a map, recording what it was asked.
class FakeStats : public TermStats {
  public:
    Result<TermFrequencies> lookup(const std::vector<std::int64_t>& features) override {
        asked.push_back(features);
        if (failing) return fail(ErrorCode::unavailable, "stats are down (test)");
        TermFrequencies f;
        f.documents = documents;
        for (auto feature : features) {
            auto it = df.find(feature);
            if (it != df.end()) f.df[feature] = it->second;
        }
        return f;
    }
    double documents = 1000;
    std::map<std::int64_t, double> df;
    std::vector<std::vector<std::int64_t>> asked;
    bool failing = false;
};

std::int64_t word_feature(const BuiltinEmbedder& e, const std::string& word) {
    auto f = e.term_features(word);
    EXPECT_EQ(f.size(), 1u) << word;
    return f.empty() ? 0 : f.front();
}

TEST(BuiltinEmbedder, QueryWeightsRareWordsOverCommonOnes) {
    BuiltinEmbedder e(768, 8000);
    FakeStats stats;
    stats.df[word_feature(e, "deploy")] = 900;  // in almost every entry
    stats.df[word_feature(e, "kubernetes")] = 2;
    Vector common = e.embed_one("deploy");
    Vector rare = e.embed_one("kubernetes");

    std::vector<std::string> query{"deploy kubernetes"};
    auto plain = e.embed(query, Purpose::query);
    ASSERT_TRUE(plain);
    // Without statistics both words weigh about the same.
    EXPECT_NEAR(dot(plain->front(), common), dot(plain->front(), rare), 0.1);

    e.set_term_stats(&stats);
    auto weighted = e.embed(query, Purpose::query);
    ASSERT_TRUE(weighted) << weighted.error().message;
    expect_unit(weighted->front(), 768);
    EXPECT_GT(dot(weighted->front(), rare), 0.5);
    EXPECT_GT(dot(weighted->front(), rare), dot(weighted->front(), common) + 0.4);
    ASSERT_EQ(stats.asked.size(), 1u);
    EXPECT_EQ(stats.asked.front(), e.term_features("deploy kubernetes"));

    // Documents are embedded without query weighting, so stored vectors do not depend on it.
    auto document = e.embed(query, Purpose::document);
    ASSERT_TRUE(document);
    EXPECT_EQ(document->front(), plain->front());
    EXPECT_EQ(stats.asked.size(), 1u);
}

TEST(BuiltinEmbedder, TermStatsFailureIsAnErrorValue) {
    BuiltinEmbedder e(768, 8000);
    FakeStats stats;
    stats.failing = true;
    e.set_term_stats(&stats);
    std::vector<std::string> query{"deploy kubernetes"};
    auto r = e.embed(query, Purpose::query);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable);
}

// Not a timed assertion: the rate is printed for information only.
TEST(BuiltinEmbedder, ThroughputSanity) {
    BuiltinEmbedder e(768, 8000);
    std::vector<std::string> texts;
    for (int i = 0; i < 2000; ++i)
        texts.push_back("note " + std::to_string(i) + ": deploying service " +
                        std::to_string(i % 37) + " needs the migration flag enabled");
    auto start = std::chrono::steady_clock::now();
    auto r = e.embed(texts, Purpose::document);
    auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->size(), texts.size());
    for (const auto& v : *r) expect_unit(v, 768);
    std::cout << "[ info     ] builtin embedder: " << texts.size() << " texts in " << seconds
              << " s (" << static_cast<long>(static_cast<double>(texts.size()) / seconds)
              << " texts/s)\n";
}

}  // namespace
}  // namespace ka::embed
