// OpenAI-compatible chat completions (OpenAI, Ollama's /v1, vLLM, llama.cpp server, LM Studio):
// POST /v1/chat/completions with tools as functions, tool_calls and `tool` messages, streaming
// as `data:` chunks ending with [DONE].
#include <map>

#include <fmt/format.h>

#include "llm/internal.h"

namespace ka::llm {
namespace {

using detail::Endpoint;
using nlohmann::json;

std::string normalise_finish(const std::string& reason) {
    if (reason == "stop") return "end_turn";
    if (reason == "tool_calls" || reason == "function_call") return "tool_use";
    if (reason == "length") return "max_tokens";
    return reason;
}

// Arguments arrive as JSON text; text that is not an object is passed on as a string so the
// tool reports the problem to the model, which can correct itself.
json arguments_of(const std::string& text) {
    if (text.empty()) return json::object();
    json j = json::parse(text, nullptr, false);
    return j.is_object() ? j : json(text);
}

class OpenAI : public ChatModel {
  public:
    OpenAI(Endpoint endpoint, int max_tokens)
        : endpoint_(std::move(endpoint)), max_tokens_(max_tokens) {}
    const std::string& model() const override { return endpoint_.model; }

    Result<ChatReply> chat(const ChatRequest& request, const TextFn* on_text) override {
        json body = request_body(request, on_text != nullptr);
        if (!on_text) {
            auto j = detail::call_json(endpoint_, body);
            if (!j) return std::unexpected(j.error());
            return reply_from(*j);
        }
        Stream s;
        s.self = this;
        s.on_text = on_text;
        if (auto ok = detail::stream(
                endpoint_, body,
                [&](std::string_view, std::string_view data) { return s.on_data(data); }, s.error,
                [this](const std::string& what) { return malformed(what); });
            !ok)
            return std::unexpected(ok.error());
        if (!s.done && s.reply.stop_reason.empty())
            return fail(
                ErrorCode::unavailable,
                fmt::format("{} stream ended before [DONE] (connection cut?)", endpoint_.provider));
        return s.finish();
    }

  private:
    json request_body(const ChatRequest& request, bool stream) const {
        json messages = json::array();
        if (!request.system.empty())
            messages.push_back({{"role", "system"}, {"content", request.system}});
        for (const auto& m : request.messages) {
            for (const auto& r : m.tool_results) {
                messages.push_back({{"role", "tool"},
                                    {"tool_call_id", r.call_id},
                                    {"content", r.is_error ? "error: " + r.content : r.content}});
            }
            if (m.role == Message::Role::user) {
                if (!m.text.empty()) messages.push_back({{"role", "user"}, {"content", m.text}});
                continue;
            }
            if (m.text.empty() && m.tool_calls.empty()) continue;  // refused as empty
            json msg = {{"role", "assistant"},
                        {"content", m.text.empty() ? json(nullptr) : json(m.text)}};
            if (!m.tool_calls.empty()) {
                json calls = json::array();
                for (const auto& c : m.tool_calls) {
                    calls.push_back(
                        {{"id", c.id},
                         {"type", "function"},
                         {"function",
                          {{"name", c.name},
                           {"arguments", c.arguments.is_string() ? c.arguments.get<std::string>()
                                                                 : c.arguments.dump()}}}});
                }
                msg["tool_calls"] = calls;
            }
            messages.push_back(msg);
        }
        json body = {
            {"model", endpoint_.model}, {"messages", messages}, {"max_tokens", max_tokens_}};
        if (!request.tools.empty()) {
            json tools = json::array();
            for (const auto& t : request.tools)
                tools.push_back({{"type", "function"},
                                 {"function",
                                  {{"name", t.name},
                                   {"description", t.description},
                                   {"parameters", t.input_schema}}}});
            body["tools"] = tools;
            if (!request.allow_tools) body["tool_choice"] = "none";
        }
        if (stream) body["stream"] = true;
        return body;
    }

    Error malformed(const std::string& what) const {
        return Error{ErrorCode::bad_gateway,
                     fmt::format("{} sent a malformed completion: {}", endpoint_.provider, what),
                     "",
                     {}};
    }

    Result<ChatReply> reply_from(const json& j) const {
        if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty() ||
            !j["choices"][0].is_object())
            return std::unexpected(malformed("no choices"));
        const json& choice = j["choices"][0];
        const json& m = choice.value("message", json());
        if (!m.is_object()) return std::unexpected(malformed("choice without a message"));
        ChatReply reply;
        if (m.contains("content") && m["content"].is_string())
            reply.text = m["content"].get<std::string>();
        if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
            if (!m["tool_calls"].is_array()) return std::unexpected(malformed("tool_calls"));
            for (const auto& c : m["tool_calls"]) {
                const json& f = c.is_object() ? c.value("function", json()) : json();
                if (!c.contains("id") || !c["id"].is_string() || !f.is_object() ||
                    !f.contains("name") || !f["name"].is_string())
                    return std::unexpected(malformed("tool call without id or function name"));
                std::string args = f.contains("arguments") && f["arguments"].is_string()
                                       ? f["arguments"].get<std::string>()
                                       : "";
                reply.tool_calls.push_back(
                    {c["id"].get<std::string>(), f["name"].get<std::string>(), arguments_of(args)});
            }
        }
        if (choice.contains("finish_reason") && choice["finish_reason"].is_string())
            reply.stop_reason = normalise_finish(choice["finish_reason"].get<std::string>());
        return reply;
    }

    struct Stream {
        const OpenAI* self = nullptr;
        const TextFn* on_text = nullptr;
        ChatReply reply;
        struct Partial {
            std::string id, name, arguments;
        };
        std::map<int, Partial> calls;
        bool done = false;
        std::optional<Error> error;

        bool on_data(std::string_view data) {
            if (data == "[DONE]") {
                done = true;
                return true;
            }
            json j = json::parse(data, nullptr, false);
            if (j.is_discarded() || !j.is_object()) {
                error = self->malformed("a stream chunk that is not a JSON object");
                return false;
            }
            if (j.contains("error")) {
                const json& e = j["error"];
                std::string message = e.is_object() ? e.value("message", "") : e.dump();
                error =
                    Error{ErrorCode::unavailable,
                          fmt::format("{} stream failed: {}", self->endpoint_.provider, message),
                          "try again later",
                          {}};
                return false;
            }
            if (!j.contains("choices") || !j["choices"].is_array()) {
                error = self->malformed("a stream chunk without choices");
                return false;
            }
            if (j["choices"].empty()) return true;  // e.g. a usage-only chunk
            const json& choice = j["choices"][0];
            const json& delta = choice.value("delta", json::object());
            if (!delta.is_object()) {
                error = self->malformed("a stream chunk whose delta is not an object");
                return false;
            }
            if (delta.contains("content") && delta["content"].is_string()) {
                std::string text = delta["content"].get<std::string>();
                reply.text += text;
                if (!detail::pass_text(*on_text, text, error)) return false;
            }
            if (delta.contains("tool_calls") && delta["tool_calls"].is_array()) {
                for (const auto& c : delta["tool_calls"]) {
                    int index = c.value("index", 0);
                    auto& p = calls[index];
                    if (c.contains("id") && c["id"].is_string()) p.id = c["id"].get<std::string>();
                    const json& f = c.value("function", json::object());
                    if (f.is_object()) {
                        if (f.contains("name") && f["name"].is_string())
                            p.name += f["name"].get<std::string>();
                        if (f.contains("arguments") && f["arguments"].is_string())
                            p.arguments += f["arguments"].get<std::string>();
                    }
                }
            }
            if (choice.contains("finish_reason") && choice["finish_reason"].is_string())
                reply.stop_reason = normalise_finish(choice["finish_reason"].get<std::string>());
            return true;
        }

        Result<ChatReply> finish() {
            for (auto& [index, p] : calls) {
                if (p.id.empty() || p.name.empty())
                    return std::unexpected(
                        self->malformed("a streamed tool call without id or name"));
                reply.tool_calls.push_back({p.id, p.name, arguments_of(p.arguments)});
            }
            return reply;
        }
    };

    Endpoint endpoint_;
    int max_tokens_;
};

}  // namespace

std::unique_ptr<ChatModel> make_openai(Endpoint endpoint, const config::Config& config) {
    return std::make_unique<OpenAI>(std::move(endpoint), config.llm.max_tokens);
}

}  // namespace ka::llm
