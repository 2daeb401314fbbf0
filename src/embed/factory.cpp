#include <fmt/format.h>

#include "embed/builtin.h"
#include "embed/embedder.h"

namespace ka::embed {

std::unique_ptr<Embedder> make_remote_embedder(const config::Config& config);  // embed/remote.cpp

Result<std::unique_ptr<Embedder>> make_embedder(const config::Config& config) {
    const auto& e = config.embedding;
    if (e.provider == "builtin") {
        if (!e.model.empty() && e.model != kBuiltinModel) {
            return fail(
                ErrorCode::config,
                fmt::format("embedding.model '{}' is not available from the builtin provider",
                            e.model),
                fmt::format("leave embedding.model empty (or {}) for the builtin provider, or set "
                            "embedding.provider to ollama or openai",
                            kBuiltinModel));
        }
        return std::unique_ptr<Embedder>(
            std::make_unique<BuiltinEmbedder>(e.dimensions, e.max_input_chars));
    }
    return make_remote_embedder(config);
}

}  // namespace ka::embed
