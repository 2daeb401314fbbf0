// Embedding providers behind one interface: builtin (in-process, lexical), ollama, openai.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "config/config.h"
#include "core/error.h"

namespace ka::embed {

// Some models embed queries and documents differently (e.g. nomic's task prefixes, or the
// builtin embedder's query-side term weighting).
enum class Purpose { document, query };

using Vector = std::vector<float>;

// Document frequencies of lexical features, kept by the store, for query-side weighting.
struct TermFrequencies {
    double documents = 0;                         // entries in the store
    std::unordered_map<std::int64_t, double> df;  // entries containing each feature
};
class TermStats {
  public:
    virtual ~TermStats() = default;
    virtual Result<TermFrequencies> lookup(const std::vector<std::int64_t>& features) = 0;
};

class Embedder {
  public:
    virtual ~Embedder() = default;
    // Recorded with every entry; a store made with another model refuses to mix them.
    virtual const std::string& model() const = 0;
    virtual int dimensions() const = 0;
    // One vector per text, in order, each of dimensions() finite floats. Errors are values:
    // unavailable (retry later), invalid_argument (bad input), internal (bad provider answer).
    virtual Result<std::vector<Vector>> embed(std::span<const std::string> texts,
                                              Purpose purpose) = 0;

    // Lexical embedders only: the features of a text whose document frequencies the store
    // keeps (sorted, unique), and where to read them when weighting queries.
    virtual std::vector<std::int64_t> term_features(std::string_view) const { return {}; }
    virtual void set_term_stats(TermStats*) {}
};

// The provider named by embedding.provider, configured from the embedding.* keys.
Result<std::unique_ptr<Embedder>> make_embedder(const config::Config& config);

}  // namespace ka::embed
