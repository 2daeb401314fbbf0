#include <fmt/format.h>

#include "core/redact.h"
#include "llm/internal.h"
#include "llm/llm.h"

namespace ka::llm {

std::unique_ptr<ChatModel> make_anthropic(detail::Endpoint endpoint, const config::Config& config);
std::unique_ptr<ChatModel> make_openai(detail::Endpoint endpoint, const config::Config& config);

namespace detail {

bool SseParser::feed(std::string_view chunk) {
    buffer_.append(chunk);
    std::size_t start = 0;
    for (std::size_t nl; (nl = buffer_.find('\n', start)) != std::string::npos; start = nl + 1) {
        std::string_view l(buffer_.data() + start, nl - start);
        if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
        if (!line(l)) return false;
    }
    buffer_.erase(0, start);
    return true;
}

bool SseParser::line(std::string_view l) {
    if (l.empty()) {  // a blank line ends an event
        bool go_on = data_.empty() && event_.empty() ? true : on_event_(event_, data_);
        event_.clear();
        data_.clear();
        return go_on;
    }
    if (l.front() == ':') return true;  // comment / keep-alive
    std::size_t colon = l.find(':');
    std::string_view field = l.substr(0, colon);
    std::string_view value = colon == std::string_view::npos ? "" : l.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    if (field == "event") event_ = value;
    if (field == "data") {
        if (!data_.empty()) data_ += '\n';
        data_ += value;
    }
    return true;
}

Result<nlohmann::json> parse_json(const Endpoint& endpoint, std::string_view text) {
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object())
        return fail(ErrorCode::bad_gateway,
                    fmt::format("{} at {} sent a malformed answer (not a JSON object)",
                                endpoint.provider, endpoint.url));
    return j;
}

Result<nlohmann::json> call_json(const Endpoint& endpoint, const nlohmann::json& body) {
    auto r = call(endpoint, body, nullptr);
    if (!r) return std::unexpected(r.error());
    return parse_json(endpoint, r->body);
}

Status stream(const Endpoint& endpoint, const nlohmann::json& body,
              const SseParser::EventFn& on_event, std::optional<Error>& error,
              const std::function<Error(const std::string&)>& malformed) {
    SseParser parser(on_event);
    http::StreamFn fn = [&](std::string_view chunk) {
        try {
            return parser.feed(chunk);
        } catch (const nlohmann::json::exception& e) {
            error = malformed(e.what());
            return false;
        }
    };
    auto r = call(endpoint, body, &fn);
    if (error) return std::unexpected(*error);
    if (!r) return std::unexpected(r.error());
    return {};
}

bool pass_text(const TextFn& on_text, std::string_view text, std::optional<Error>& error) {
    if (text.empty() || on_text(text)) return true;
    error = Error{ErrorCode::unavailable, "the answer's listener went away", "", {}};
    return false;
}

Result<http::Response> call(const Endpoint& endpoint, const nlohmann::json& body,
                            const http::StreamFn* stream) {
    // Invalid UTF-8 (from a terminal, a cut character) is replaced rather than thrown on.
    auto r = http::post_json_with_retries(
        endpoint.url, endpoint.headers,
        body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), endpoint.timeout,
        endpoint.retry, stream);
    if (!r) return r;
    if (r->status >= 200 && r->status < 300) return r;
    std::string message;
    auto j = nlohmann::json::parse(r->body, nullptr, false);
    if (j.is_object() && j.contains("error")) {
        const auto& e = j["error"];
        if (e.is_string()) message = e.get<std::string>();
        if (e.is_object() && e.contains("message") && e["message"].is_string())
            message = e["message"].get<std::string>();
    }
    if (message.empty()) message = r->body.substr(0, 200);
    std::string what =
        redact(fmt::format("{} at {} (model {}) answered HTTP {}: {}", endpoint.provider,
                           endpoint.url, endpoint.model, r->status, message));
    if (r->status == 401 || r->status == 403)
        return fail(ErrorCode::config, what,
                    "check llm.api_key (or the provider's API key variable)");
    if (r->status == 404) return fail(ErrorCode::config, what, "check llm.model and llm.base_url");
    if (http::retryable(r->status))
        return fail(ErrorCode::unavailable, what,
                    "the provider is overloaded or failing; try again later");
    return fail(ErrorCode::bad_gateway, what);
}

}  // namespace detail

Result<std::unique_ptr<ChatModel>> make_chat_model(const config::Config& config) {
    const auto& c = config.llm;
    if (c.provider == "none") return std::unique_ptr<ChatModel>{};
    bool anthropic = c.provider == "anthropic";
    detail::Endpoint e;
    e.provider = anthropic ? "Anthropic" : "OpenAI-compatible";
    e.model = !c.model.empty() ? c.model
              : anthropic      ? std::string(kAnthropicDefaultModel)
                               : std::string(kOpenAIDefaultModel);
    std::string base = !c.base_url.empty() ? c.base_url
                       : anthropic         ? std::string(kAnthropicDefaultUrl)
                                           : std::string(kOpenAIDefaultUrl);
    while (!base.empty() && base.back() == '/') base.pop_back();
    e.url = base + (anthropic ? "/v1/messages" : "/v1/chat/completions");
    std::string key = c.api_key;
    if (key.empty()) {
        auto from_env = config::process_env(anthropic ? "ANTHROPIC_API_KEY" : "OPENAI_API_KEY");
        if (from_env) key = *from_env;
    }
    if (!key.empty()) register_secret(key);
    if (anthropic && key.empty())
        return fail(ErrorCode::config, "llm.provider is anthropic but no API key is set",
                    "set ANTHROPIC_API_KEY or llm.api_key, or use llm.provider: none");
    e.timeout = std::chrono::seconds(c.timeout);
    e.retry.max_retries = c.max_retries;
    if (anthropic) {
        e.headers = {"x-api-key: " + key, "anthropic-version: " + c.anthropic_version};
        return make_anthropic(std::move(e), config);
    }
    if (!key.empty()) e.headers = {"Authorization: Bearer " + key};
    return make_openai(std::move(e), config);
}

}  // namespace ka::llm
