#include "embed/remote.h"

#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/redact.h"
#include "embed/text.h"
#include "http/client.h"

namespace ka::embed {
namespace {

using nlohmann::json;

std::string_view name(Api api) {
    return api == Api::ollama ? "Ollama" : "OpenAI-compatible";
}

// The provider's own error text: {"error": "..."} (Ollama) or {"error": {"message": ...}} (OpenAI).
std::string provider_message(const std::string& body) {
    json j = json::parse(body, nullptr, false);
    if (j.is_object() && j.contains("error")) {
        const json& e = j["error"];
        if (e.is_string()) return e.get<std::string>();
        if (e.is_object() && e.contains("message") && e["message"].is_string())
            return e["message"].get<std::string>();
    }
    return body.substr(0, 300);
}

bool nomic(std::string_view model) {
    return model.starts_with("nomic-embed");
}

}  // namespace

RemoteEmbedder::RemoteEmbedder(Api api, const config::Config& config)
    : api_(api),
      model_(config.embedding.model.empty()
                 ? std::string(api == Api::ollama ? kOllamaDefaultModel : kOpenAIDefaultModel)
                 : config.embedding.model),
      api_key_(config.embedding.api_key),
      send_dimensions_(config.embedding.send_dimensions),
      dimensions_(config.embedding.dimensions),
      batch_size_(config.embedding.batch_size),
      timeout_(config.embedding.timeout),
      max_retries_(config.embedding.max_retries),
      max_input_chars_(config.embedding.max_input_chars) {
    std::string base = config.embedding.base_url.empty()
                           ? std::string(api == Api::ollama ? kOllamaDefaultUrl : kOpenAIDefaultUrl)
                           : config.embedding.base_url;
    while (!base.empty() && base.back() == '/') base.pop_back();
    if (api == Api::ollama) {
        endpoint_ = base + "/api/embed";
    } else {
        endpoint_ = base.ends_with("/v1") ? base + "/embeddings" : base + "/v1/embeddings";
    }
    register_secret(api_key_);
}

Error RemoteEmbedder::http_error(long status, const std::string& body) const {
    // Providers may echo the key they were sent (e.g. "Incorrect API key provided: sk-...").
    std::string what =
        redact(fmt::format("{} embeddings at {} (model {}) answered HTTP {}: {}", name(api_),
                           endpoint_, model_, status, provider_message(body)));
    if (status == 401 || status == 403) {
        return Error{
            ErrorCode::permission_denied, what, "check embedding.api_key (or OPENAI_API_KEY)", {}};
    }
    if (status == 404) {
        return Error{ErrorCode::config,
                     what,
                     api_ == Api::ollama
                         ? fmt::format("pull the model first: ollama pull {}", model_)
                         : "check embedding.model and embedding.base_url",
                     {}};
    }
    if (http::retryable(status)) {
        return Error{
            ErrorCode::unavailable,
            what,
            fmt::format("the provider is overloaded or failing; retried {} times", max_retries_),
            {}};
    }
    if (status >= 400 && status < 500) return Error{ErrorCode::invalid_argument, what, "", {}};
    return Error{ErrorCode::bad_gateway, what, "", {}};
}

Result<std::vector<Vector>> RemoteEmbedder::embed(std::span<const std::string> texts,
                                                  Purpose purpose) {
    std::vector<Vector> out;
    out.reserve(texts.size());
    for (std::size_t start = 0; start < texts.size();
         start += static_cast<std::size_t>(batch_size_)) {
        auto batch = embed_batch(
            texts.subspan(start,
                          std::min(texts.size() - start, static_cast<std::size_t>(batch_size_))),
            purpose);
        if (!batch) return batch;
        for (auto& v : *batch) out.push_back(std::move(v));
    }
    return out;
}

Result<std::vector<Vector>> RemoteEmbedder::embed_batch(std::span<const std::string> texts,
                                                        Purpose purpose) {
    // nomic-embed-text is trained with task prefixes and retrieves worse without them.
    std::string prefix = !nomic(model_)              ? ""
                         : purpose == Purpose::query ? "search_query: "
                                                     : "search_document: ";
    json input = json::array();
    for (const auto& t : texts)
        input.push_back(prefix +
                        std::string(truncate_utf8(t, static_cast<std::size_t>(max_input_chars_))));
    json body = {{"model", model_}, {"input", input}};
    std::vector<std::string> headers;
    if (api_ == Api::openai) {
        body["encoding_format"] = "float";
        if (send_dimensions_) body["dimensions"] = dimensions_;
        if (!api_key_.empty()) headers.push_back("Authorization: Bearer " + api_key_);
    }
    auto response = http::post_json_with_retries(
        endpoint_, headers, body.dump(), std::chrono::seconds(timeout_),
        {max_retries_, std::chrono::milliseconds(200), std::chrono::seconds(30)});
    if (!response) {
        Error e = response.error();
        e.message = fmt::format("{} embeddings unavailable: {}", name(api_), e.message);
        e.hint =
            fmt::format("check that the server at {} is running and reachable (retried {} times)",
                        endpoint_, max_retries_);
        return std::unexpected(e);
    }
    if (response->status != 200)
        return std::unexpected(http_error(response->status, response->body));

    auto bad = [&](std::string why) {
        return std::unexpected(
            Error{ErrorCode::bad_gateway,
                  fmt::format("{} embeddings at {} (model {}) sent a malformed answer: {}",
                              name(api_), endpoint_, model_, why),
                  "check that embedding.base_url points at an embeddings API",
                  {}});
    };
    json j = json::parse(response->body, nullptr, false);
    if (!j.is_object()) return bad("not a JSON object");
    std::vector<const json*> rows(texts.size(), nullptr);
    if (api_ == Api::ollama) {
        if (!j.contains("embeddings") || !j["embeddings"].is_array())
            return bad("no \"embeddings\" array");
        if (j["embeddings"].size() != texts.size()) {
            return bad(
                fmt::format("{} embeddings for {} inputs", j["embeddings"].size(), texts.size()));
        }
        for (std::size_t i = 0; i < texts.size(); ++i) rows[i] = &j["embeddings"][i];
    } else {
        if (!j.contains("data") || !j["data"].is_array()) return bad("no \"data\" array");
        if (j["data"].size() != texts.size())
            return bad(fmt::format("{} embeddings for {} inputs", j["data"].size(), texts.size()));
        for (const auto& item : j["data"]) {
            if (!item.is_object() || !item.contains("index") ||
                !item["index"].is_number_unsigned() || !item.contains("embedding"))
                return bad("an item lacks \"index\" or \"embedding\"");
            auto index = item["index"].get<std::size_t>();
            if (index >= rows.size() || rows[index])
                return bad(fmt::format("index {} is out of range or repeated", index));
            rows[index] = &item["embedding"];
        }
    }
    std::vector<Vector> out;
    for (const json* row : rows) {
        if (!row->is_array()) return bad("an embedding is not an array");
        if (static_cast<int>(row->size()) != dimensions_) {
            return std::unexpected(Error{
                ErrorCode::config,
                fmt::format(
                    "model {} returned {}-dimensional embeddings, but embedding.dimensions is {}",
                    model_, row->size(), dimensions_),
                fmt::format("use a {}-dimensional model, set embedding.dimensions to {} on a new "
                            "database, or (for "
                            "models that can shorten, e.g. text-embedding-3-*) set "
                            "embedding.send_dimensions: true",
                            dimensions_, row->size()),
                {}});
        }
        Vector v;
        v.reserve(row->size());
        double norm = 0;
        for (const auto& x : *row) {
            if (!x.is_number()) return bad("an embedding holds a value that is not a number");
            double d = x.get<double>();
            if (!std::isfinite(d) || std::abs(d) > 3.0e38)
                return bad("an embedding holds NaN or infinity");
            v.push_back(static_cast<float>(d));
            norm += d * d;
        }
        if (norm == 0) return bad("an embedding is all zeros");
        // Cosine search wants unit vectors; some servers do not normalise.
        auto scale = static_cast<float>(1.0 / std::sqrt(norm));
        for (auto& x : v) x *= scale;
        out.push_back(std::move(v));
    }
    return out;
}

std::unique_ptr<Embedder> make_remote_embedder(const config::Config& config) {
    return std::make_unique<RemoteEmbedder>(
        config.embedding.provider == "ollama" ? Api::ollama : Api::openai, config);
}

}  // namespace ka::embed
