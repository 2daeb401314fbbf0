// Anthropic Messages API: POST /v1/messages with x-api-key and anthropic-version, tools with
// input_schema, tool_use / tool_result blocks, and streaming events.
#include <map>

#include <fmt/format.h>

#include "llm/internal.h"

namespace ka::llm {
namespace {

using detail::Endpoint;
using nlohmann::json;

std::string normalise_stop(const std::string& reason) {
    if (reason == "stop_sequence") return "end_turn";
    return reason;
}

class Anthropic : public ChatModel {
  public:
    Anthropic(Endpoint endpoint, int max_tokens)
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
                [&](std::string_view event, std::string_view data) {
                    return s.on_event(event, data);
                },
                s.error, [this](const std::string& what) { return malformed(what); });
            !ok)
            return std::unexpected(ok.error());
        if (!s.stopped)
            return fail(ErrorCode::unavailable,
                        fmt::format("{} stream ended before message_stop (connection cut?)",
                                    endpoint_.provider));
        return s.finish();
    }

  private:
    json request_body(const ChatRequest& request, bool stream) const {
        json messages = json::array();
        for (const auto& m : request.messages) {
            json content = json::array();
            for (const auto& r : m.tool_results) {
                content.push_back({{"type", "tool_result"},
                                   {"tool_use_id", r.call_id},
                                   {"content", r.content},
                                   {"is_error", r.is_error}});
            }
            if (!m.text.empty()) content.push_back({{"type", "text"}, {"text", m.text}});
            for (const auto& c : m.tool_calls) {
                content.push_back(
                    {{"type", "tool_use"}, {"id", c.id}, {"name", c.name}, {"input", c.arguments}});
            }
            if (content.empty()) continue;  // the API refuses empty turns
            messages.push_back({{"role", m.role == Message::Role::user ? "user" : "assistant"},
                                {"content", content}});
        }
        json body = {{"model", endpoint_.model},
                     {"max_tokens", max_tokens_},
                     {"system", request.system},
                     {"messages", messages}};
        if (!request.tools.empty()) {
            json tools = json::array();
            for (const auto& t : request.tools)
                tools.push_back({{"name", t.name},
                                 {"description", t.description},
                                 {"input_schema", t.input_schema}});
            body["tools"] = tools;
            if (!request.allow_tools) body["tool_choice"] = {{"type", "none"}};
        }
        if (stream) body["stream"] = true;
        return body;
    }

    Error malformed(const std::string& what) const {
        return Error{ErrorCode::bad_gateway,
                     fmt::format("{} sent a malformed message: {}", endpoint_.provider, what),
                     "",
                     {}};
    }

    Result<ToolCall> tool_call(const json& block) const {
        if (!block.contains("id") || !block["id"].is_string() || !block.contains("name") ||
            !block["name"].is_string())
            return std::unexpected(malformed("tool_use block without id or name"));
        ToolCall c{block["id"].get<std::string>(), block["name"].get<std::string>(),
                   json::object()};
        if (block.contains("input")) {
            if (!block["input"].is_object())
                return std::unexpected(malformed("tool_use input is not an object"));
            c.arguments = block["input"];
        }
        return c;
    }

    Result<ChatReply> reply_from(const json& j) const {
        if (!j.contains("content") || !j["content"].is_array())
            return std::unexpected(malformed("no content array"));
        ChatReply reply;
        for (const auto& block : j["content"]) {
            if (!block.is_object() || !block.contains("type") || !block["type"].is_string())
                return std::unexpected(malformed("content block without a type"));
            std::string type = block["type"].get<std::string>();
            if (type == "text") {
                if (!block.contains("text") || !block["text"].is_string())
                    return std::unexpected(malformed("text block without text"));
                reply.text += block["text"].get<std::string>();
            } else if (type == "tool_use") {
                auto call = tool_call(block);
                if (!call) return std::unexpected(call.error());
                reply.tool_calls.push_back(std::move(*call));
            }  // thinking and other blocks carry nothing for us
        }
        if (j.contains("stop_reason") && j["stop_reason"].is_string())
            reply.stop_reason = normalise_stop(j["stop_reason"].get<std::string>());
        return reply;
    }

    // Rebuilds the message from its streamed events.
    struct Stream {
        const Anthropic* self = nullptr;
        const TextFn* on_text = nullptr;
        struct Block {
            std::string type, text, id, name, partial_json;
        };
        std::map<int, Block> blocks;
        std::string stop_reason;
        bool stopped = false;
        std::optional<Error> error;

        bool on_event(std::string_view, std::string_view data) {
            json e = json::parse(data, nullptr, false);
            if (e.is_discarded() || !e.is_object() || !e.contains("type") ||
                !e["type"].is_string()) {
                error = self->malformed("an event that is not a JSON object with a type");
                return false;
            }
            std::string type = e["type"].get<std::string>();
            int index =
                e.contains("index") && e["index"].is_number_integer() ? e["index"].get<int>() : -1;
            if (type == "content_block_start") {
                const json& b = e.value("content_block", json::object());
                Block block;
                block.type = b.value("type", "");
                if (block.type == "tool_use") {
                    block.id = b.value("id", "");
                    block.name = b.value("name", "");
                }
                blocks[index] = block;
            } else if (type == "content_block_delta") {
                auto it = blocks.find(index);
                const json& d = e.value("delta", json::object());
                if (it == blocks.end() || !d.is_object()) {
                    error = self->malformed("a delta for a block that was not started");
                    return false;
                }
                std::string dtype = d.value("type", "");
                if (dtype == "text_delta" && d.contains("text") && d["text"].is_string()) {
                    std::string text = d["text"].get<std::string>();
                    it->second.text += text;
                    if (!detail::pass_text(*on_text, text, error)) return false;
                } else if (dtype == "input_json_delta" && d.contains("partial_json") &&
                           d["partial_json"].is_string()) {
                    it->second.partial_json += d["partial_json"].get<std::string>();
                }
            } else if (type == "message_delta") {
                const json& d = e.value("delta", json::object());
                if (d.is_object() && d.contains("stop_reason") && d["stop_reason"].is_string())
                    stop_reason = normalise_stop(d["stop_reason"].get<std::string>());
            } else if (type == "message_stop") {
                stopped = true;
            } else if (type == "error") {
                const json& err = e.value("error", json::object());
                std::string kind = err.is_object() ? err.value("type", "error") : "error";
                std::string message = err.is_object() ? err.value("message", "") : "";
                error = Error{kind == "overloaded_error" || kind == "api_error"
                                  ? ErrorCode::unavailable
                                  : ErrorCode::bad_gateway,
                              fmt::format("{} stream failed: {}: {}", self->endpoint_.provider,
                                          kind, message),
                              "try again later",
                              {}};
                return false;
            }
            return true;  // message_start, content_block_stop, ping
        }

        Result<ChatReply> finish() {
            ChatReply reply;
            reply.stop_reason = stop_reason;
            for (auto& [index, b] : blocks) {
                if (b.type == "text") reply.text += b.text;
                if (b.type != "tool_use") continue;
                json input = b.partial_json.empty() ? json::object()
                                                    : json::parse(b.partial_json, nullptr, false);
                if (input.is_discarded() || !input.is_object())
                    return std::unexpected(self->malformed("tool_use input is not a JSON object"));
                json block = {{"id", b.id}, {"name", b.name}, {"input", input}};
                auto call = self->tool_call(block);
                if (!call) return std::unexpected(call.error());
                if (call->id.empty() || call->name.empty())
                    return std::unexpected(self->malformed("tool_use block without id or name"));
                reply.tool_calls.push_back(std::move(*call));
            }
            return reply;
        }
    };

    Endpoint endpoint_;
    int max_tokens_;
};

}  // namespace

std::unique_ptr<ChatModel> make_anthropic(Endpoint endpoint, const config::Config& config) {
    return std::make_unique<Anthropic>(std::move(endpoint), config.llm.max_tokens);
}

}  // namespace ka::llm
