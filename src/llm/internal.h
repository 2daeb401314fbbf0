// Shared by the providers: server-sent-event parsing and the one mapping of HTTP failures.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.h"
#include "http/client.h"
#include "llm/llm.h"

namespace ka::llm::detail {

// Splits a text/event-stream into events (event name, data), across arbitrary chunk borders.
class SseParser {
  public:
    using EventFn = std::function<bool(std::string_view event, std::string_view data)>;
    explicit SseParser(EventFn on_event) : on_event_(std::move(on_event)) {}
    // False when the event handler asked to stop.
    bool feed(std::string_view chunk);

  private:
    bool line(std::string_view l);
    EventFn on_event_;
    std::string buffer_, event_, data_;
};

struct Endpoint {
    std::string provider;  // "Anthropic", "OpenAI-compatible"
    std::string url;
    std::string model;
    std::vector<std::string> headers;
    std::chrono::milliseconds timeout;
    http::RetryPolicy retry;
};

// POSTs with retries; a non-2xx answer becomes an error naming the provider, status and its
// message (from {"error": {"message"}} or {"error": "..."}), keys redacted.
Result<http::Response> call(const Endpoint& endpoint, const nlohmann::json& body,
                            const http::StreamFn* stream);

// A JSON body, or a bad-gateway error naming the provider.
Result<nlohmann::json> parse_json(const Endpoint& endpoint, std::string_view text);

// A non-streamed call's JSON answer.
Result<nlohmann::json> call_json(const Endpoint& endpoint, const nlohmann::json& body);

// A streamed call: its events go to `on_event` until it returns false. An error the handler
// left in `error` wins over the transport's; a json::exception thrown by the handler (a field
// of the wrong type) becomes `malformed(what)` there rather than unwinding through libcurl.
Status stream(const Endpoint& endpoint, const nlohmann::json& body,
              const SseParser::EventFn& on_event, std::optional<Error>& error,
              const std::function<Error(const std::string&)>& malformed);

// Passes streamed text on; when the listener is gone, records why in `error` and says stop.
bool pass_text(const TextFn& on_text, std::string_view text, std::optional<Error>& error);

}  // namespace ka::llm::detail
