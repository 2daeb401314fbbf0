// Embedding over HTTP: Ollama (POST {base_url}/api/embed) and any OpenAI-compatible server
// (POST {base_url}/v1/embeddings: OpenAI, vLLM, text-embeddings-inference, llama.cpp, LM Studio).
#pragma once

#include "embed/embedder.h"

namespace ka::embed {

inline constexpr std::string_view kOllamaDefaultModel = "nomic-embed-text";
inline constexpr std::string_view kOllamaDefaultUrl = "http://127.0.0.1:11434";
inline constexpr std::string_view kOpenAIDefaultModel = "text-embedding-3-small";
inline constexpr std::string_view kOpenAIDefaultUrl = "https://api.openai.com";

enum class Api { ollama, openai };

class RemoteEmbedder : public Embedder {
  public:
    RemoteEmbedder(Api api, const config::Config& config);
    const std::string& model() const override { return model_; }
    int dimensions() const override { return dimensions_; }
    Result<std::vector<Vector>> embed(std::span<const std::string> texts, Purpose purpose) override;

    const std::string& endpoint() const { return endpoint_; }

  private:
    Result<std::vector<Vector>> embed_batch(std::span<const std::string> texts, Purpose purpose);
    Error http_error(long status, const std::string& body) const;

    Api api_;
    std::string model_;
    std::string endpoint_;
    std::string api_key_;
    bool send_dimensions_;
    int dimensions_;
    int batch_size_;
    int timeout_;
    int max_retries_;
    int max_input_chars_;
};

}  // namespace ka::embed
