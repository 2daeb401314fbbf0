// Chat models behind one interface, chosen by llm.provider: anthropic (Messages API), openai
// (chat completions, any compatible server), or none (retrieval-only: no model at all).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.h"
#include "core/error.h"

namespace ka::llm {

struct ToolSpec {
    std::string name;
    std::string description;
    nlohmann::json input_schema;  // JSON Schema of the arguments
};

struct ToolCall {
    std::string id;
    std::string name;
    nlohmann::json arguments = nlohmann::json::object();
};

struct ToolResult {
    std::string call_id;
    std::string content;  // JSON text or an error message
    bool is_error = false;
};

// A conversation turn. An assistant turn may ask for tools; the user turn after it carries
// their results (the Anthropic shape; the OpenAI client maps it to `tool` messages).
struct Message {
    enum class Role { user, assistant };
    Role role = Role::user;
    std::string text;
    std::vector<ToolCall> tool_calls;
    std::vector<ToolResult> tool_results;
};

struct ChatRequest {
    std::string system;
    std::vector<Message> messages;
    std::vector<ToolSpec> tools;
    bool allow_tools = true;  // false: the model must answer in text now (last round)
};

struct ChatReply {
    std::string text;
    std::vector<ToolCall> tool_calls;
    std::string stop_reason;  // end_turn | tool_use | max_tokens (normalised across providers)
};

// Receives answer text as it streams; false when nobody listens any more (e.g. the HTTP client
// disconnected): the model call is then abandoned.
using TextFn = std::function<bool(std::string_view delta)>;

class ChatModel {
  public:
    virtual ~ChatModel() = default;
    virtual const std::string& model() const = 0;
    // One model turn. With `on_text`, the answer streams (server-sent events) and its text is
    // passed on as it arrives; the reply is complete either way. Retries 429/5xx/529 before any
    // text has streamed.
    virtual Result<ChatReply> chat(const ChatRequest& request, const TextFn* on_text) = 0;
};

inline constexpr std::string_view kAnthropicDefaultModel = "claude-sonnet-4-5";
inline constexpr std::string_view kAnthropicDefaultUrl = "https://api.anthropic.com";
inline constexpr std::string_view kOpenAIDefaultModel = "gpt-4o-mini";
inline constexpr std::string_view kOpenAIDefaultUrl = "https://api.openai.com";

// The model named by llm.*, or nullptr for llm.provider none.
Result<std::unique_ptr<ChatModel>> make_chat_model(const config::Config& config);

}  // namespace ka::llm
