// Embedding providers behind one interface: builtin (in-process, lexical), ollama, openai.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/error.h"

namespace ka::embed {

// Some models embed queries and documents differently (e.g. nomic's task prefixes, or the
// builtin embedder's query-side term weighting).
enum class Purpose { document, query };

using Vector = std::vector<float>;

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
};

// The provider named by embedding.provider, configured from the embedding.* keys.
Result<std::unique_ptr<Embedder>> make_embedder(const config::Config& config);

}  // namespace ka::embed
