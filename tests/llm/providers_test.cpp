// The chat-model providers against loopback servers speaking each provider's wire format:
// Anthropic's Messages API (POST /v1/messages, x-api-key + anthropic-version, tool_use /
// tool_result blocks, streamed events) and OpenAI chat completions (POST /v1/chat/completions,
// Bearer key, function tools, `tool` messages, `data:` chunks ending with [DONE]). The fake
// servers check requests the way the real APIs do, so a malformed request fails the test with
// the provider's own 400. Also: the factory, retries, error mapping and the SSE parser.
#include "llm/llm.h"

#include <httplib.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "llm/internal.h"

namespace ka::llm {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

const std::string kKey = "sk-test-0123456789-secret-key";
const std::string kWrongKey = "sk-wrong-9876543210-other-key";

// --- The fake servers -------------------------------------------------------------------------

// What the server saw of one request.
struct Seen {
    std::string path;
    httplib::Headers headers;
    json body;

    bool has(const std::string& name) const { return headers.find(name) != headers.end(); }
    std::string header(const std::string& name) const {
        auto it = headers.find(name);
        return it == headers.end() ? std::string() : it->second;
    }
};

// One scripted answer: a plain body, or a stream of server-sent events.
struct Reply {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::optional<std::string> stream;  // text/event-stream body, sent chunked
    std::size_t piece = 0;              // >0: the stream goes out in pieces of this many bytes
    bool cut = false;                   // the connection drops before the chunked body ends
    httplib::Headers headers;
};

Reply json_reply(const json& body, int status = 200) {
    Reply r;
    r.status = status;
    r.body = body.dump();
    return r;
}

Reply stream_reply(std::string sse, std::size_t piece = 0) {
    Reply r;
    r.stream = std::move(sse);
    r.piece = piece;
    return r;
}

enum class Api { anthropic, openai };

// The checks the real APIs make before answering; an error message in the provider's words.
std::optional<std::string> anthropic_invalid(const Seen& s) {
    const json& b = s.body;
    if (!s.has("anthropic-version")) return "anthropic-version: header is required";
    if (!b.is_object()) return "request body is not valid JSON";
    if (!b.contains("model") || !b["model"].is_string()) return "model: Field required";
    if (!b.contains("max_tokens") || !b["max_tokens"].is_number_integer())
        return "max_tokens: Field required";
    if (!b.contains("messages") || !b["messages"].is_array() || b["messages"].empty())
        return "messages: at least one message is required";
    if (b.contains("system") && !b["system"].is_string() && !b["system"].is_array())
        return "system: Input should be a valid string";
    std::set<std::string> open_tool_uses;  // tool_use ids of the previous assistant turn
    for (const auto& m : b["messages"]) {
        if (!m.is_object() || !m.contains("role") || !m.contains("content"))
            return "messages: each message needs role and content";
        std::string role = m["role"].get<std::string>();
        if (role != "user" && role != "assistant")
            return "messages: role must be user or assistant";
        const json& content = m["content"];
        if (content.is_string()) {
            if (content.get<std::string>().empty())
                return "messages: text content blocks must be non-empty";
            open_tool_uses.clear();
            continue;
        }
        if (!content.is_array() || content.empty())
            return "messages: all messages must have non-empty content";
        std::set<std::string> uses;
        bool seen_other = false;
        for (const auto& block : content) {
            std::string type = block.value("type", "");
            if (type == "text") {
                if (!block.contains("text") || !block["text"].is_string() ||
                    block["text"].get<std::string>().empty())
                    return "messages: text content blocks must be non-empty";
                seen_other = true;
            } else if (type == "tool_use") {
                if (role != "assistant") return "messages: tool_use blocks belong to assistant";
                if (!block.contains("input") || !block["input"].is_object())
                    return "messages: tool_use.input: Input should be a valid dictionary";
                uses.insert(block.value("id", ""));
            } else if (type == "tool_result") {
                if (role != "user") return "messages: tool_result blocks belong to user";
                if (seen_other) return "messages: tool_result blocks must come first";
                if (!open_tool_uses.count(block.value("tool_use_id", "")))
                    return "messages: unexpected `tool_use_id` found in `tool_result` blocks: " +
                           block.value("tool_use_id", "");
            } else {
                return "messages: unknown content block type '" + type + "'";
            }
        }
        open_tool_uses = role == "assistant" ? uses : std::set<std::string>{};
    }
    if (b.contains("tools")) {
        for (const auto& t : b["tools"]) {
            if (!t.contains("name") || !t.contains("input_schema") ||
                t["input_schema"].value("type", "") != "object")
                return "tools: each tool needs a name and an object input_schema";
        }
    }
    if (b.contains("tool_choice") && !b.contains("tools"))
        return "tool_choice may only be specified while providing tools";
    return std::nullopt;
}

std::optional<std::string> openai_invalid(const Seen& s) {
    const json& b = s.body;
    if (!b.is_object()) return "We could not parse the JSON body of your request.";
    if (!b.contains("model") || !b["model"].is_string())
        return "you must provide a model parameter";
    if (!b.contains("messages") || !b["messages"].is_array() || b["messages"].empty())
        return "[] is too short - 'messages'";
    std::set<std::string> open_calls;
    for (const auto& m : b["messages"]) {
        std::string role = m.value("role", "");
        if (role == "tool") {
            if (!open_calls.count(m.value("tool_call_id", "")))
                return "Invalid parameter: messages with role 'tool' must be a response to a "
                       "preceeding message with 'tool_calls'.";
            if (!m.contains("content") || !m["content"].is_string())
                return "tool message content must be a string";
            continue;
        }
        open_calls.clear();
        if (role == "assistant") {
            if (m.contains("tool_calls")) {
                for (const auto& c : m["tool_calls"]) {
                    if (c.value("type", "") != "function" || !c.contains("function") ||
                        !c["function"].contains("arguments") ||
                        !c["function"]["arguments"].is_string())
                        return "tool_calls: function arguments must be a string";
                    open_calls.insert(c.value("id", ""));
                }
            } else if (!m.contains("content") || !m["content"].is_string()) {
                return "assistant messages need content or tool_calls";
            }
        } else if (role == "system" || role == "user") {
            if (!m.contains("content") || !m["content"].is_string())
                return "messages: content must be a string";
        } else {
            return "Invalid value for 'role': '" + role + "'";
        }
    }
    if (b.contains("tools")) {
        for (const auto& t : b["tools"]) {
            if (t.value("type", "") != "function" || !t.contains("function") ||
                !t["function"].contains("name"))
                return "tools: each tool is {type: function, function: {name, ...}}";
        }
    }
    if (b.contains("tool_choice") && !b.contains("tools"))
        return "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
               "specified.";
    return std::nullopt;
}

// A fake provider on 127.0.0.1. Requests are checked as the real API would (key, headers,
// body), recorded, then answered by the script (request number from 0, what was seen).
class FakeProvider {
  public:
    using Script = std::function<Reply(int n, const Seen& seen)>;

    explicit FakeProvider(Api api, std::string key = kKey) : api_(api), key_(std::move(key)) {
        // A developer's proxy settings must not capture requests to the fake server.
        ::setenv("no_proxy", "127.0.0.1", 1);
        server_.Post(
            api == Api::anthropic ? "/v1/messages" : "/v1/chat/completions",
            [this](const httplib::Request& req, httplib::Response& res) { serve(req, res); });
        port_ = server_.bind_to_any_port("127.0.0.1");
        thread_ = std::thread([this] { server_.listen_after_bind(); });
        // stop() before the accept loop has started would be lost and join() would hang.
        while (!server_.is_running()) std::this_thread::sleep_for(1ms);
    }
    ~FakeProvider() {
        server_.stop();
        thread_.join();
    }
    FakeProvider(const FakeProvider&) = delete;
    FakeProvider& operator=(const FakeProvider&) = delete;

    std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
    void script(Script s) {
        std::lock_guard lock(mutex_);
        script_ = std::move(s);
    }
    // Answers every request with the same reply.
    void always(Reply r) {
        script([r](int, const Seen&) { return r; });
    }
    std::vector<Seen> seen() {
        std::lock_guard lock(mutex_);
        return seen_;
    }
    std::size_t requests() { return seen().size(); }

  private:
    void serve(const httplib::Request& req, httplib::Response& res) {
        Seen s{req.path, req.headers, json::parse(req.body, nullptr, false)};
        int n = 0;
        Script script;
        {
            std::lock_guard lock(mutex_);
            n = static_cast<int>(seen_.size());
            seen_.push_back(s);
            script = script_;
        }
        if (auto refused = refuse(s)) return apply(*refused, res);
        if (!script) return apply(json_reply({{"error", "no script"}}, 500), res);
        apply(script(n, s), res);
    }

    // The provider's own 401 / 400 answers.
    std::optional<Reply> refuse(const Seen& s) const {
        if (api_ == Api::anthropic) {
            if (s.header("x-api-key") != key_)
                return json_reply(
                    {{"type", "error"},
                     {"error",
                      {{"type", "authentication_error"}, {"message", "invalid x-api-key"}}},
                     {"request_id", "req_011CSHoEeqs5C35K2UUqR7Fy"}},
                    401);
            if (auto why = anthropic_invalid(s))
                return json_reply(
                    {{"type", "error"},
                     {"error", {{"type", "invalid_request_error"}, {"message", *why}}},
                     {"request_id", "req_011CSHoEeqs5C35K2UUqR7Fz"}},
                    400);
            return std::nullopt;
        }
        if (!key_.empty() && s.header("Authorization") != "Bearer " + key_) {
            // OpenAI-compatible servers may echo the key they were given; it must never
            // reach our logs or errors.
            std::string given = s.header("Authorization");
            if (given.starts_with("Bearer ")) given = given.substr(7);
            return json_reply({{"error",
                                {{"message", "Incorrect API key provided: " + given +
                                                 ". You can find your API key at "
                                                 "https://platform.openai.com/account/api-keys."},
                                 {"type", "invalid_request_error"},
                                 {"param", nullptr},
                                 {"code", "invalid_api_key"}}}},
                              401);
        }
        if (auto why = openai_invalid(s))
            return json_reply({{"error",
                                {{"message", *why},
                                 {"type", "invalid_request_error"},
                                 {"param", nullptr},
                                 {"code", nullptr}}}},
                              400);
        return std::nullopt;
    }

    static void apply(const Reply& r, httplib::Response& res) {
        res.status = r.status;
        for (const auto& [name, value] : r.headers) res.set_header(name, value);
        if (!r.stream) {
            res.set_content(r.body, r.content_type);
            return;
        }
        res.set_header("Cache-Control", "no-cache");
        auto reply = std::make_shared<Reply>(r);
        res.set_chunked_content_provider("text/event-stream", [reply](std::size_t,
                                                                      httplib::DataSink& sink) {
            const std::string& text = *reply->stream;
            std::size_t step = reply->piece ? reply->piece : std::max<std::size_t>(1, text.size());
            for (std::size_t i = 0; i < text.size(); i += step) {
                if (!sink.write(text.data() + i, std::min(step, text.size() - i))) return false;
                // Separate writes, so the client sees the stream in pieces.
                if (reply->piece) std::this_thread::sleep_for(1ms);
            }
            if (reply->cut) return false;  // drop the connection mid-body
            sink.done();
            return true;
        });
    }

    Api api_;
    std::string key_;
    httplib::Server server_;
    int port_ = 0;
    std::thread thread_;
    std::mutex mutex_;
    std::vector<Seen> seen_;
    Script script_;
};

// --- Wire-format builders (shapes from the providers' API references) -------------------------

json anthropic_message(json content, const std::string& stop_reason) {
    return {{"id", "msg_01XFDUDYJgAACzvnptvVoYEL"},
            {"type", "message"},
            {"role", "assistant"},
            {"model", "claude-sonnet-4-5-20250929"},
            {"content", std::move(content)},
            {"stop_reason", stop_reason},
            {"stop_sequence", nullptr},
            {"usage", {{"input_tokens", 2095}, {"output_tokens", 503}}}};
}

json anthropic_text(const std::string& text) {
    return anthropic_message(json::array({{{"type", "text"}, {"text", text}}}), "end_turn");
}

std::string sse(const json& data) {
    return "event: " + data["type"].get<std::string>() + "\ndata: " + data.dump() + "\n\n";
}

// A block of a streamed Anthropic message: text streams as text_delta pieces, tool_use input
// as input_json_delta pieces.
struct Block {
    std::string type;  // text | tool_use
    std::vector<std::string> pieces;
    std::string id, name;
};

std::string anthropic_stream(const std::vector<Block>& blocks, const std::string& stop_reason) {
    std::string out = sse({{"type", "message_start"},
                           {"message",
                            {{"id", "msg_014p7gG3wDgGV9EUtLvnow3U"},
                             {"type", "message"},
                             {"role", "assistant"},
                             {"model", "claude-sonnet-4-5-20250929"},
                             {"content", json::array()},
                             {"stop_reason", nullptr},
                             {"stop_sequence", nullptr},
                             {"usage", {{"input_tokens", 472}, {"output_tokens", 2}}}}}});
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        const Block& b = blocks[i];
        json start = b.type == "text" ? json{{"type", "text"}, {"text", ""}}
                                      : json{{"type", "tool_use"},
                                             {"id", b.id},
                                             {"name", b.name},
                                             {"input", json::object()}};
        out += sse({{"type", "content_block_start"}, {"index", i}, {"content_block", start}});
        if (i == 0) out += sse({{"type", "ping"}});
        for (const auto& p : b.pieces) {
            json delta = b.type == "text" ? json{{"type", "text_delta"}, {"text", p}}
                                          : json{{"type", "input_json_delta"}, {"partial_json", p}};
            out += sse({{"type", "content_block_delta"}, {"index", i}, {"delta", delta}});
        }
        out += sse({{"type", "content_block_stop"}, {"index", i}});
    }
    out += sse({{"type", "message_delta"},
                {"delta", {{"stop_reason", stop_reason}, {"stop_sequence", nullptr}}},
                {"usage", {{"output_tokens", 89}}}});
    out += sse({{"type", "message_stop"}});
    return out;
}

json openai_completion(json message, const std::string& finish_reason) {
    return {{"id", "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"},
            {"object", "chat.completion"},
            {"created", 1741570283},
            {"model", "gpt-4o-mini-2024-07-18"},
            {"choices", json::array({{{"index", 0},
                                      {"message", std::move(message)},
                                      {"logprobs", nullptr},
                                      {"finish_reason", finish_reason}}})},
            {"usage", {{"prompt_tokens", 1117}, {"completion_tokens", 46}, {"total_tokens", 1163}}},
            {"system_fingerprint", "fp_fc9f1d7035"}};
}

json openai_text(const std::string& text) {
    return openai_completion({{"role", "assistant"},
                              {"content", text},
                              {"refusal", nullptr},
                              {"annotations", json::array()}},
                             "stop");
}

json openai_chunk(json delta, json finish_reason = nullptr) {
    return {{"id", "chatcmpl-123"},
            {"object", "chat.completion.chunk"},
            {"created", 1694268190},
            {"model", "gpt-4o-mini-2024-07-18"},
            {"system_fingerprint", "fp_44709d6fcb"},
            {"choices", json::array({{{"index", 0},
                                      {"delta", std::move(delta)},
                                      {"logprobs", nullptr},
                                      {"finish_reason", std::move(finish_reason)}}})}};
}

std::string data(const json& chunk) {
    return "data: " + chunk.dump() + "\n\n";
}

std::string openai_text_stream(const std::vector<std::string>& pieces, bool done = true) {
    std::string out =
        data(openai_chunk({{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}}));
    for (const auto& p : pieces) out += data(openai_chunk({{"content", p}}));
    if (!done) return out;
    out += data(openai_chunk(json::object(), "stop"));
    out += "data: [DONE]\n\n";
    return out;
}

// --- Configuration and requests ---------------------------------------------------------------

config::Config llm_config(const std::string& provider, const std::string& base_url,
                          const std::map<std::string, std::string>& extra = {}) {
    std::map<std::string, std::string> keys = {{"provider", provider},
                                               {"base_url", base_url},
                                               {"api_key", kKey},
                                               {"timeout", "10"},
                                               {"max_retries", "3"}};
    for (const auto& [k, v] : extra) keys[k] = v;
    std::string yaml = "llm:\n";
    for (const auto& [k, v] : keys) {
        if (!v.empty()) yaml += "  " + k + ": " + v + "\n";
    }
    auto c = config::load_from_string(yaml, [](const std::string&) { return std::nullopt; });
    EXPECT_TRUE(c) << c.error().message << "\n" << yaml;
    return c ? *c : config::Config{};
}

std::unique_ptr<ChatModel> model_for(const config::Config& c) {
    auto m = make_chat_model(c);
    if (!m) throw std::runtime_error("make_chat_model: " + m.error().message);
    if (!*m) throw std::runtime_error("make_chat_model gave no model");
    return std::move(*m);
}

ToolSpec lookup_tool() {
    return {"lookup",
            "Look up saved notes.",
            {{"type", "object"},
             {"properties", {{"query", {{"type", "string"}}}, {"k", {{"type", "integer"}}}}},
             {"required", {"query"}}}};
}

ChatRequest question(bool allow_tools = true) {
    ChatRequest r;
    r.system = "You are a test agent. Today is 2025-01-02.";
    r.tools = {lookup_tool()};
    r.allow_tools = allow_tools;
    r.messages = {{Message::Role::user, "Where is the deploy runbook?", {}, {}}};
    return r;
}

// The same question after one tool round: two calls, one of which failed.
ChatRequest after_tool_round(bool allow_tools) {
    ChatRequest r = question(allow_tools);
    r.messages.push_back({Message::Role::assistant,
                          "Let me look.",
                          {{"toolu_01A", "lookup", {{"query", "deploy runbook"}, {"k", 3}}},
                           {"toolu_01B", "lookup", {{"query", "runbook"}}}},
                          {}});
    r.messages.push_back(
        {Message::Role::user,
         "",
         {},
         {{"toolu_01A", R"({"results":[{"id":"e1","content":"wiki/deploy"}]})", false},
          {"toolu_01B", "k must be between 1 and 20", true}}});
    return r;
}

std::string what(const Result<ChatReply>& r) {
    return r ? "(success) " + r->text
             : std::string(to_string(r.error().code)) + ": " + r.error().message +
                   " | hint: " + r.error().hint;
}

// Collects streamed deltas.
struct Deltas {
    std::vector<std::string> got;
    TextFn fn = [this](std::string_view d) {
        got.emplace_back(d);
        return true;
    };
    std::string joined() const {
        std::string s;
        for (const auto& d : got) s += d;
        return s;
    }
};

// --- Factory ----------------------------------------------------------------------------------

TEST(ChatModelFactory, NoneMeansNoModel) {
    auto m = make_chat_model(llm_config("none", ""));
    ASSERT_TRUE(m) << m.error().message;
    EXPECT_EQ(m->get(), nullptr);
}

TEST(ChatModelFactory, DefaultModelsAndAnthropicNeedsAKey) {
    auto anthropic = model_for(llm_config("anthropic", ""));
    EXPECT_EQ(anthropic->model(), kAnthropicDefaultModel);
    auto openai = model_for(llm_config("openai", ""));
    EXPECT_EQ(openai->model(), kOpenAIDefaultModel);
    auto named = model_for(llm_config("openai", "", {{"model", "llama3.2"}}));
    EXPECT_EQ(named->model(), "llama3.2");

    ::unsetenv("ANTHROPIC_API_KEY");
    auto keyless = make_chat_model(llm_config("anthropic", "", {{"api_key", ""}}));
    ASSERT_FALSE(keyless);
    EXPECT_EQ(keyless.error().code, ErrorCode::config);
    EXPECT_NE(keyless.error().hint.find("ANTHROPIC_API_KEY"), std::string::npos);
}

// --- Anthropic --------------------------------------------------------------------------------

class AnthropicTest : public ::testing::Test {
  protected:
    FakeProvider fake{Api::anthropic};
    std::unique_ptr<ChatModel> model(const std::map<std::string, std::string>& extra = {}) {
        return model_for(llm_config("anthropic", fake.url(), extra));
    }
};

TEST_F(AnthropicTest, PlainAnswerAndRequestShape) {
    fake.always(json_reply(anthropic_text("The runbook is at wiki/deploy.")));
    // A trailing slash on base_url must not double up in the path.
    auto m = model({{"base_url", fake.url() + "/"},
                    {"model", "claude-test-1"},
                    {"max_tokens", "512"},
                    {"anthropic_version", "2023-06-01"}});
    EXPECT_EQ(m->model(), "claude-test-1");
    auto r = m->chat(question(), nullptr);
    ASSERT_TRUE(r) << what(r);
    EXPECT_EQ(r->text, "The runbook is at wiki/deploy.");
    EXPECT_TRUE(r->tool_calls.empty());
    EXPECT_EQ(r->stop_reason, "end_turn");

    auto seen = fake.seen();
    ASSERT_EQ(seen.size(), 1u);
    const Seen& s = seen[0];
    EXPECT_EQ(s.path, "/v1/messages");
    EXPECT_EQ(s.header("x-api-key"), kKey);
    EXPECT_EQ(s.header("anthropic-version"), "2023-06-01");
    EXPECT_TRUE(s.header("Content-Type").starts_with("application/json"));
    EXPECT_FALSE(s.has("Authorization")) << "Anthropic takes the key in x-api-key only";
    EXPECT_EQ(s.body["model"], "claude-test-1");
    EXPECT_EQ(s.body["max_tokens"], 512);
    EXPECT_EQ(s.body["system"], "You are a test agent. Today is 2025-01-02.");
    EXPECT_EQ(s.body["messages"], json::parse(R"([{"role":"user","content":[
                  {"type":"text","text":"Where is the deploy runbook?"}]}])"));
    ASSERT_TRUE(s.body["tools"].is_array());
    ASSERT_EQ(s.body["tools"].size(), 1u);
    EXPECT_EQ(s.body["tools"][0]["name"], "lookup");
    EXPECT_EQ(s.body["tools"][0]["description"], "Look up saved notes.");
    EXPECT_EQ(s.body["tools"][0]["input_schema"], lookup_tool().input_schema);
    EXPECT_FALSE(s.body.contains("tool_choice")) << "the model may use tools";
    EXPECT_FALSE(s.body.value("stream", false));
}

TEST_F(AnthropicTest, ToolRoundSendsToolUseAndToolResultBlocks) {
    fake.always(json_reply(anthropic_text("It is at wiki/deploy [e1].")));
    auto m = model();
    auto r = m->chat(after_tool_round(true), nullptr);
    ASSERT_TRUE(r) << what(r);
    r = m->chat(after_tool_round(false), nullptr);
    ASSERT_TRUE(r) << what(r);

    auto seen = fake.seen();
    ASSERT_EQ(seen.size(), 2u);
    const json& messages = seen[0].body["messages"];
    ASSERT_EQ(messages.size(), 3u) << messages.dump(2);
    EXPECT_EQ(messages[1], json::parse(R"({"role":"assistant","content":[
        {"type":"text","text":"Let me look."},
        {"type":"tool_use","id":"toolu_01A","name":"lookup",
         "input":{"query":"deploy runbook","k":3}},
        {"type":"tool_use","id":"toolu_01B","name":"lookup","input":{"query":"runbook"}}]})"));
    EXPECT_EQ(messages[2], json::parse(R"({"role":"user","content":[
        {"type":"tool_result","tool_use_id":"toolu_01A",
         "content":"{\"results\":[{\"id\":\"e1\",\"content\":\"wiki/deploy\"}]}","is_error":false},
        {"type":"tool_result","tool_use_id":"toolu_01B",
         "content":"k must be between 1 and 20","is_error":true}]})"));
    EXPECT_FALSE(seen[0].body.contains("tool_choice"));
    // The last round: tools are still described (the history uses them) but not allowed.
    EXPECT_EQ(seen[1].body["tool_choice"], json::parse(R"({"type":"none"})"));
    EXPECT_TRUE(seen[1].body.contains("tools"));
}

TEST_F(AnthropicTest, ToolUseReplyIsParsed) {
    fake.always(json_reply(anthropic_message(json::parse(R"([
            {"type":"text","text":"I'll look that up."},
            {"type":"tool_use","id":"toolu_01T","name":"lookup",
             "input":{"query":"deploy runbook","k":3}},
            {"type":"tool_use","id":"toolu_01U","name":"lookup","input":{"query":"oncall"}}])"),
                                             "tool_use")));
    auto r = model()->chat(question(), nullptr);
    ASSERT_TRUE(r) << what(r);
    EXPECT_EQ(r->text, "I'll look that up.");
    EXPECT_EQ(r->stop_reason, "tool_use");
    ASSERT_EQ(r->tool_calls.size(), 2u);
    EXPECT_EQ(r->tool_calls[0].id, "toolu_01T");
    EXPECT_EQ(r->tool_calls[0].name, "lookup");
    EXPECT_EQ(r->tool_calls[0].arguments, json::parse(R"({"query":"deploy runbook","k":3})"));
    EXPECT_EQ(r->tool_calls[1].id, "toolu_01U");
    EXPECT_EQ(r->tool_calls[1].arguments, json::parse(R"({"query":"oncall"})"));
}

TEST_F(AnthropicTest, StreamedTextArrivesInOrder) {
    std::vector<std::string> pieces = {"The runbook", " is at", " wiki/deploy", " — ünïcode", "."};
    // Pieces of 13 bytes split events, lines and JSON (and UTF-8) anywhere.
    fake.always(stream_reply(anthropic_stream({{"text", pieces, "", ""}}, "end_turn"), 13));
    Deltas deltas;
    auto r = model()->chat(question(), &deltas.fn);
    ASSERT_TRUE(r) << what(r);
    EXPECT_EQ(deltas.got, pieces);
    EXPECT_EQ(r->text, deltas.joined());
    EXPECT_EQ(r->stop_reason, "end_turn");
    EXPECT_TRUE(r->tool_calls.empty());
    ASSERT_EQ(fake.requests(), 1u);
    EXPECT_EQ(fake.seen()[0].body["stream"], true);
}

TEST_F(AnthropicTest, StreamedToolUseJoinsInputJsonDeltas) {
    fake.always(
        stream_reply(anthropic_stream({{"text", {"Let me", " check."}, "", ""},
                                       {"tool_use",
                                        {"", "{\"query\": \"dep", "loy runbook\", \"k\"", ": 3}"},
                                        "toolu_01S",
                                        "lookup"},
                                       // A tool without arguments streams only an empty partial.
                                       {"tool_use", {""}, "toolu_01E", "lookup"}},
                                      "tool_use"),
                     29));
    Deltas deltas;
    auto r = model()->chat(question(), &deltas.fn);
    ASSERT_TRUE(r) << what(r);
    EXPECT_EQ(deltas.joined(), "Let me check.") << "only text is streamed to the caller";
    EXPECT_EQ(r->text, "Let me check.");
    EXPECT_EQ(r->stop_reason, "tool_use");
    ASSERT_EQ(r->tool_calls.size(), 2u);
    EXPECT_EQ(r->tool_calls[0].id, "toolu_01S");
    EXPECT_EQ(r->tool_calls[0].name, "lookup");
    EXPECT_EQ(r->tool_calls[0].arguments, json::parse(R"({"query":"deploy runbook","k":3})"));
    EXPECT_EQ(r->tool_calls[1].id, "toolu_01E");
    EXPECT_EQ(r->tool_calls[1].arguments, json::object());
}

TEST_F(AnthropicTest, RateLimitedWithRetryAfterThenSuccess) {
    fake.script([](int n, const Seen&) {
        if (n > 0) return json_reply(anthropic_text("ok after 429"));
        Reply r = json_reply({{"type", "error"},
                              {"error",
                               {{"type", "rate_limit_error"},
                                {"message",
                                 "Number of request tokens has exceeded your "
                                 "per-minute rate limit"}}}},
                             429);
        r.headers.emplace("retry-after", "0");
        return r;
    });
    auto r = model()->chat(question(), nullptr);
    ASSERT_TRUE(r) << what(r);
    EXPECT_EQ(r->text, "ok after 429");
    EXPECT_EQ(fake.requests(), 2u);
}

TEST_F(AnthropicTest, ServerErrorThenSuccess) {
    fake.script([](int n, const Seen&) {
        if (n > 0) return json_reply(anthropic_text("ok after 500"));
        return json_reply(
            {{"type", "error"},
             {"error", {{"type", "api_error"}, {"message", "Internal server error"}}}},
            500);
    });
    auto r = model()->chat(question(), nullptr);
    ASSERT_TRUE(r) << what(r);
    EXPECT_EQ(r->text, "ok after 500");
    EXPECT_EQ(fake.requests(), 2u);
}

// 529 comes before any event, so even a streamed request is retried, and only the successful
// attempt's text reaches the caller.
TEST_F(AnthropicTest, OverloadedIsRetriedBeforeTheStreamStarts) {
    fake.script([](int n, const Seen&) {
        if (n > 0)
            return stream_reply(anthropic_stream({{"text", {"fine", " now"}, "", ""}}, "end_turn"));
        return json_reply({{"type", "error"},
                           {"error", {{"type", "overloaded_error"}, {"message", "Overloaded"}}}},
                          529);
    });
    Deltas deltas;
    auto r = model()->chat(question(), &deltas.fn);
    ASSERT_TRUE(r) << what(r);
    EXPECT_EQ(deltas.got, (std::vector<std::string>{"fine", " now"}));
    EXPECT_EQ(r->text, "fine now");
    EXPECT_EQ(fake.requests(), 2u);
}

TEST_F(AnthropicTest, PersistentUnavailableGivesUpAfterMaxRetries) {
    Reply r = json_reply({{"type", "error"},
                          {"error", {{"type", "api_error"}, {"message", "upstream unavailable"}}}},
                         503);
    r.headers.emplace("Retry-After", "0");
    fake.always(r);
    auto reply = model({{"max_retries", "2"}})->chat(question(), nullptr);
    ASSERT_FALSE(reply);
    EXPECT_EQ(reply.error().code, ErrorCode::unavailable) << what(reply);
    EXPECT_EQ(fake.requests(), 3u) << "one attempt plus max_retries";
    EXPECT_NE(reply.error().message.find("Anthropic"), std::string::npos) << what(reply);
    EXPECT_NE(reply.error().message.find("503"), std::string::npos) << what(reply);
    EXPECT_NE(reply.error().message.find("upstream unavailable"), std::string::npos) << what(reply);
}

TEST_F(AnthropicTest, UnauthorizedIsAConfigErrorWithoutTheKey) {
    auto reply = model({{"api_key", kWrongKey}})->chat(question(), nullptr);
    ASSERT_FALSE(reply);
    EXPECT_EQ(reply.error().code, ErrorCode::config) << what(reply);
    EXPECT_NE(reply.error().message.find("Anthropic"), std::string::npos) << what(reply);
    EXPECT_NE(reply.error().message.find("401"), std::string::npos) << what(reply);
    EXPECT_NE(reply.error().message.find("invalid x-api-key"), std::string::npos) << what(reply);
    EXPECT_NE(reply.error().hint.find("llm.api_key"), std::string::npos) << what(reply);
    EXPECT_EQ(what(reply).find(kWrongKey), std::string::npos) << what(reply);
    EXPECT_EQ(fake.requests(), 1u) << "a 401 is not retried";
}

TEST_F(AnthropicTest, UnknownModelIsAConfigError) {
    fake.always(
        json_reply({{"type", "error"},
                    {"error", {{"type", "not_found_error"}, {"message", "model: claude-nope"}}}},
                   404));
    auto reply = model({{"model", "claude-nope"}})->chat(question(), nullptr);
    ASSERT_FALSE(reply);
    EXPECT_EQ(reply.error().code, ErrorCode::config) << what(reply);
    EXPECT_NE(reply.error().hint.find("llm.model"), std::string::npos) << what(reply);
    EXPECT_EQ(fake.requests(), 1u);
}

TEST_F(AnthropicTest, BadRequestIsAnInternalErrorWithTheProvidersMessage) {
    fake.always(json_reply({{"type", "error"},
                            {"error",
                             {{"type", "invalid_request_error"},
                              {"message", "messages.1.content: tool_use ids must be unique"}}}},
                           400));
    auto reply = model()->chat(question(), nullptr);
    ASSERT_FALSE(reply);
    EXPECT_EQ(reply.error().code, ErrorCode::bad_gateway) << what(reply);
    EXPECT_NE(reply.error().message.find("tool_use ids must be unique"), std::string::npos)
        << what(reply);
    EXPECT_EQ(fake.requests(), 1u);
}

TEST_F(AnthropicTest, StreamEndingBeforeMessageStopIsAnError) {
    std::string whole = anthropic_stream({{"text", {"half an", " answer"}, "", ""}}, "end_turn");
    fake.always(stream_reply(whole.substr(0, whole.find("event: message_delta"))));
    Deltas deltas;
    auto r = model()->chat(question(), &deltas.fn);
    ASSERT_FALSE(r) << what(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable) << what(r);
    EXPECT_NE(r.error().message.find("message_stop"), std::string::npos) << what(r);
    EXPECT_EQ(fake.requests(), 1u) << "text has streamed: no retry";
}

TEST_F(AnthropicTest, ConnectionCutMidStreamIsAnError) {
    std::string whole = anthropic_stream({{"text", {"half an", " answer"}, "", ""}}, "end_turn");
    Reply cut = stream_reply(whole.substr(0, whole.find("event: content_block_stop")));
    cut.cut = true;
    fake.always(cut);
    Deltas deltas;
    auto r = model()->chat(question(), &deltas.fn);
    ASSERT_FALSE(r) << what(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable) << what(r);
    EXPECT_EQ(deltas.joined(), "half an answer") << "what arrived was passed on";
    EXPECT_EQ(fake.requests(), 1u) << "text has streamed: no retry";
}

TEST_F(AnthropicTest, MalformedBodyIsAnInternalError) {
    Reply html;
    html.body = "<html><body>502 Bad Gateway</body></html>";
    html.content_type = "text/html";
    fake.always(html);
    auto r = model()->chat(question(), nullptr);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::bad_gateway) << what(r);
    EXPECT_NE(r.error().message.find("Anthropic"), std::string::npos) << what(r);

    // JSON, but not a message.
    fake.always(json_reply({{"type", "message"}, {"role", "assistant"}}));
    r = model()->chat(question(), nullptr);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::bad_gateway) << what(r);

    // A tool_use block whose input is not an object.
    fake.always(json_reply(anthropic_message(
        json::parse(R"([{"type":"tool_use","id":"toolu_1","name":"lookup","input":"q"}])"),
        "tool_use")));
    r = model()->chat(question(), nullptr);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::bad_gateway) << what(r);
}

TEST_F(AnthropicTest, ErrorEventMidStreamIsAnError) {
    std::string s = sse({{"type", "message_start"},
                         {"message",
                          {{"id", "msg_1"},
                           {"type", "message"},
                           {"role", "assistant"},
                           {"model", "claude-sonnet-4-5"},
                           {"content", json::array()},
                           {"stop_reason", nullptr},
                           {"stop_sequence", nullptr},
                           {"usage", {{"input_tokens", 10}, {"output_tokens", 1}}}}}});
    s += sse({{"type", "content_block_start"},
              {"index", 0},
              {"content_block", {{"type", "text"}, {"text", ""}}}});
    s += sse({{"type", "content_block_delta"},
              {"index", 0},
              {"delta", {{"type", "text_delta"}, {"text", "Partial"}}}});
    s += sse(
        {{"type", "error"}, {"error", {{"type", "overloaded_error"}, {"message", "Overloaded"}}}});
    fake.always(stream_reply(s));
    Deltas deltas;
    auto r = model()->chat(question(), &deltas.fn);
    ASSERT_FALSE(r) << what(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable) << what(r);
    EXPECT_NE(r.error().message.find("overloaded_error"), std::string::npos) << what(r);
    EXPECT_NE(r.error().message.find("Overloaded"), std::string::npos) << what(r);
    EXPECT_EQ(deltas.joined(), "Partial");
    EXPECT_EQ(fake.requests(), 1u) << "text has streamed: no retry";
}

// Events with fields of the wrong type are the provider's bug, not ours: an internal error,
// never an exception thrown through the HTTP client's callback.
TEST_F(AnthropicTest, WronglyTypedStreamEventsAreInternalErrors) {
    std::string start = sse({{"type", "message_start"},
                             {"message",
                              {{"id", "msg_1"},
                               {"type", "message"},
                               {"role", "assistant"},
                               {"model", "claude-sonnet-4-5"},
                               {"content", json::array()},
                               {"stop_reason", nullptr},
                               {"stop_sequence", nullptr},
                               {"usage", {{"input_tokens", 10}, {"output_tokens", 1}}}}}});
    std::string text_block = sse({{"type", "content_block_start"},
                                  {"index", 0},
                                  {"content_block", {{"type", "text"}, {"text", ""}}}});
    for (const std::string& bad : {
             sse({{"type", "content_block_start"}, {"index", 0}, {"content_block", "text"}}),
             sse({{"type", "content_block_start"},
                  {"index", 0},
                  {"content_block", {{"type", 7}, {"text", ""}}}}),
             text_block + sse({{"type", "content_block_delta"},
                               {"index", 0},
                               {"delta", {{"type", json::array()}, {"text", "x"}}}}),
             sse({{"type", "error"}, {"error", {{"type", "api_error"}, {"message", 42}}}}),
         }) {
        SCOPED_TRACE(bad);
        fake.always(stream_reply(start + bad + sse({{"type", "message_stop"}})));
        Deltas deltas;
        Result<ChatReply> r = fail(ErrorCode::internal, "not run");
        EXPECT_NO_THROW(r = model()->chat(question(), &deltas.fn));
        ASSERT_FALSE(r) << what(r);
        EXPECT_TRUE(r.error().code == ErrorCode::bad_gateway ||
                    r.error().code == ErrorCode::unavailable)
            << what(r);
    }
}

// A history turn without text has nothing to send; the API refuses empty content.
TEST_F(AnthropicTest, EmptyHistoryTurnsAreNotSent) {
    fake.always(json_reply(anthropic_text("fine")));
    ChatRequest r = question();
    r.messages.insert(r.messages.begin(), {{Message::Role::user, "Hello.", {}, {}},
                                           {Message::Role::assistant, "", {}, {}}});
    auto reply = model()->chat(r, nullptr);
    ASSERT_TRUE(reply) << what(reply);
    const json messages = fake.seen().at(0).body["messages"];
    for (const auto& m : messages) EXPECT_FALSE(m["content"].empty()) << messages.dump();
    EXPECT_EQ(messages.back()["content"][0]["text"], "Where is the deploy runbook?");
}

// Text that is not valid UTF-8 (a terminal in another encoding, a cut multi-byte character)
// must not make building the request throw.
TEST_F(AnthropicTest, InvalidUtf8IsReplacedNotThrown) {
    fake.always(json_reply(anthropic_text("fine")));
    ChatRequest r = question();
    r.messages.back().text = "caf\xe9 menu?";
    Result<ChatReply> reply = fail(ErrorCode::internal, "not run");
    EXPECT_NO_THROW(reply = model()->chat(r, nullptr));
    ASSERT_TRUE(reply) << what(reply);
    EXPECT_EQ(fake.seen().at(0).body["messages"][0]["content"][0]["text"], "caf\uFFFD menu?");
}

// --- OpenAI-compatible ------------------------------------------------------------------------

class OpenAITest : public ::testing::Test {
  protected:
    FakeProvider fake{Api::openai};
    std::unique_ptr<ChatModel> model(const std::map<std::string, std::string>& extra = {}) {
        return model_for(llm_config("openai", fake.url(), extra));
    }
};

TEST_F(OpenAITest, PlainAnswerAndRequestShape) {
    fake.always(json_reply(openai_text("The runbook is at wiki/deploy.")));
    auto m = model({{"model", "gpt-test"}, {"max_tokens", "256"}});
    auto r = m->chat(question(), nullptr);
    ASSERT_TRUE(r) << what(r);
    EXPECT_EQ(r->text, "The runbook is at wiki/deploy.");
    EXPECT_EQ(r->stop_reason, "end_turn") << "finish_reason stop is normalised";
    EXPECT_TRUE(r->tool_calls.empty());

    auto seen = fake.seen();
    ASSERT_EQ(seen.size(), 1u);
    const Seen& s = seen[0];
    EXPECT_EQ(s.path, "/v1/chat/completions");
    EXPECT_EQ(s.header("Authorization"), "Bearer " + kKey);
    EXPECT_FALSE(s.has("x-api-key"));
    EXPECT_EQ(s.body["model"], "gpt-test");
    EXPECT_EQ(s.body["max_tokens"], 256);
    EXPECT_EQ(s.body["messages"], json::parse(R"([
        {"role":"system","content":"You are a test agent. Today is 2025-01-02."},
        {"role":"user","content":"Where is the deploy runbook?"}])"));
    ASSERT_EQ(s.body["tools"].size(), 1u);
    EXPECT_EQ(s.body["tools"][0]["type"], "function");
    EXPECT_EQ(s.body["tools"][0]["function"]["name"], "lookup");
    EXPECT_EQ(s.body["tools"][0]["function"]["description"], "Look up saved notes.");
    EXPECT_EQ(s.body["tools"][0]["function"]["parameters"], lookup_tool().input_schema);
    EXPECT_FALSE(s.body.contains("tool_choice"));
    EXPECT_FALSE(s.body.value("stream", false));
}

TEST(OpenAIKeyless, LocalServersGetNoAuthorizationHeader) {
    FakeProvider fake(Api::openai, "");
    fake.always(json_reply(openai_text("hi from a local model")));
    ::unsetenv("OPENAI_API_KEY");  // a developer's shell may have one
    auto m = model_for(llm_config("openai", fake.url(), {{"api_key", ""}}));
    auto r = m->chat(question(), nullptr);
    ASSERT_TRUE(r) << what(r);
    ASSERT_EQ(fake.requests(), 1u);
    EXPECT_FALSE(fake.seen()[0].has("Authorization"));
}

TEST_F(OpenAITest, ToolRoundSendsToolCallsAndToolMessages) {
    fake.always(json_reply(openai_text("It is at wiki/deploy [e1].")));
    auto m = model();
    auto r = m->chat(after_tool_round(true), nullptr);
    ASSERT_TRUE(r) << what(r);
    r = m->chat(after_tool_round(false), nullptr);
    ASSERT_TRUE(r) << what(r);

    auto seen = fake.seen();
    ASSERT_EQ(seen.size(), 2u);
    const json& messages = seen[0].body["messages"];
    ASSERT_EQ(messages.size(), 5u) << messages.dump(2);
    const json& assistant = messages[2];
    EXPECT_EQ(assistant["role"], "assistant");
    EXPECT_EQ(assistant["content"], "Let me look.");
    ASSERT_EQ(assistant["tool_calls"].size(), 2u);
    EXPECT_EQ(assistant["tool_calls"][0]["id"], "toolu_01A");
    EXPECT_EQ(assistant["tool_calls"][0]["type"], "function");
    EXPECT_EQ(assistant["tool_calls"][0]["function"]["name"], "lookup");
    // Arguments travel as JSON text.
    ASSERT_TRUE(assistant["tool_calls"][0]["function"]["arguments"].is_string());
    EXPECT_EQ(json::parse(assistant["tool_calls"][0]["function"]["arguments"].get<std::string>()),
              json::parse(R"({"query":"deploy runbook","k":3})"));
    EXPECT_EQ(messages[3], json::parse(R"({"role":"tool","tool_call_id":"toolu_01A",
        "content":"{\"results\":[{\"id\":\"e1\",\"content\":\"wiki/deploy\"}]}"})"));
    EXPECT_EQ(messages[4]["role"], "tool");
    EXPECT_EQ(messages[4]["tool_call_id"], "toolu_01B");
    EXPECT_NE(messages[4]["content"].get<std::string>().find("error"), std::string::npos)
        << "a failed tool call must read as an error";
    EXPECT_NE(messages[4]["content"].get<std::string>().find("k must be between 1 and 20"),
              std::string::npos);
    EXPECT_FALSE(seen[0].body.contains("tool_choice"));
    EXPECT_EQ(seen[1].body["tool_choice"], "none");
    EXPECT_TRUE(seen[1].body.contains("tools"));
}

TEST_F(OpenAITest, ToolCallsReplyIsParsed) {
    fake.always(json_reply(openai_completion(json::parse(R"({
        "role":"assistant","content":null,"refusal":null,
        "tool_calls":[
          {"id":"call_DdmO9pD3xa9XTPNJ32zg2hcA","type":"function",
           "function":{"name":"lookup","arguments":"{\"query\":\"deploy runbook\",\"k\":3}"}},
          {"id":"call_2","type":"function","function":{"name":"lookup","arguments":"{}"}}]})"),
                                             "tool_calls")));
    auto r = model()->chat(question(), nullptr);
    ASSERT_TRUE(r) << what(r);
    EXPECT_EQ(r->text, "");
    EXPECT_EQ(r->stop_reason, "tool_use");
    ASSERT_EQ(r->tool_calls.size(), 2u);
    EXPECT_EQ(r->tool_calls[0].id, "call_DdmO9pD3xa9XTPNJ32zg2hcA");
    EXPECT_EQ(r->tool_calls[0].name, "lookup");
    EXPECT_EQ(r->tool_calls[0].arguments, json::parse(R"({"query":"deploy runbook","k":3})"));
    EXPECT_EQ(r->tool_calls[1].arguments, json::object());
}

TEST_F(OpenAITest, StreamedTextArrivesInOrder) {
    std::vector<std::string> pieces = {"The runbook", " is at", " wiki/deploy", " — ünïcode", "."};
    fake.always(stream_reply(openai_text_stream(pieces), 11));
    Deltas deltas;
    auto r = model()->chat(question(), &deltas.fn);
    ASSERT_TRUE(r) << what(r);
    EXPECT_EQ(deltas.got, pieces);
    EXPECT_EQ(r->text, deltas.joined());
    EXPECT_EQ(r->stop_reason, "end_turn");
    ASSERT_EQ(fake.requests(), 1u);
    EXPECT_EQ(fake.seen()[0].body["stream"], true);
}

TEST_F(OpenAITest, StreamedToolCallsJoinArgumentsAcrossChunks) {
    auto call_delta = [](int index, json fields) {
        fields["index"] = index;
        return json{{"tool_calls", json::array({fields})}};
    };
    std::string s = data(openai_chunk({{"role", "assistant"}, {"content", nullptr}}));
    s += data(openai_chunk(call_delta(0, {{"id", "call_A"},
                                          {"type", "function"},
                                          {"function", {{"name", "lookup"}, {"arguments", ""}}}})));
    for (const char* p : {"{\"qu", "ery\": \"deploy", " runbook\", \"k\": 3", "}"})
        s += data(openai_chunk(call_delta(0, {{"function", {{"arguments", p}}}})));
    s += data(openai_chunk(call_delta(1, {{"id", "call_B"},
                                          {"type", "function"},
                                          {"function", {{"name", "lookup"}, {"arguments", ""}}}})));
    for (const char* p : {"{\"query\"", ": \"oncall\"}"})
        s += data(openai_chunk(call_delta(1, {{"function", {{"arguments", p}}}})));
    s += data(openai_chunk(json::object(), "tool_calls"));
    s += "data: [DONE]\n\n";
    fake.always(stream_reply(s, 17));
    Deltas deltas;
    auto r = model()->chat(question(), &deltas.fn);
    ASSERT_TRUE(r) << what(r);
    EXPECT_TRUE(deltas.got.empty()) << deltas.joined();
    EXPECT_EQ(r->stop_reason, "tool_use");
    ASSERT_EQ(r->tool_calls.size(), 2u);
    EXPECT_EQ(r->tool_calls[0].id, "call_A");
    EXPECT_EQ(r->tool_calls[0].name, "lookup");
    EXPECT_EQ(r->tool_calls[0].arguments, json::parse(R"({"query":"deploy runbook","k":3})"));
    EXPECT_EQ(r->tool_calls[1].id, "call_B");
    EXPECT_EQ(r->tool_calls[1].arguments, json::parse(R"({"query":"oncall"})"));
}

TEST_F(OpenAITest, RateLimitedWithRetryAfterThenSuccess) {
    fake.script([](int n, const Seen&) {
        if (n > 0) return json_reply(openai_text("ok after 429"));
        Reply r = json_reply({{"error",
                               {{"message",
                                 "Rate limit reached for gpt-4o-mini on requests per min "
                                 "(RPM): Limit 3, Used 3, Requested 1."},
                                {"type", "requests"},
                                {"param", nullptr},
                                {"code", "rate_limit_exceeded"}}}},
                             429);
        r.headers.emplace("Retry-After", "0");
        return r;
    });
    auto r = model()->chat(question(), nullptr);
    ASSERT_TRUE(r) << what(r);
    EXPECT_EQ(r->text, "ok after 429");
    EXPECT_EQ(fake.requests(), 2u);
}

TEST_F(OpenAITest, ServerErrorThenSuccessWhileStreaming) {
    fake.script([](int n, const Seen&) {
        if (n > 0) return stream_reply(openai_text_stream({"ok", " after 500"}));
        return json_reply({{"error",
                            {{"message", "The server had an error while processing your request."},
                             {"type", "server_error"},
                             {"param", nullptr},
                             {"code", nullptr}}}},
                          500);
    });
    Deltas deltas;
    auto r = model()->chat(question(), &deltas.fn);
    ASSERT_TRUE(r) << what(r);
    EXPECT_EQ(r->text, "ok after 500");
    EXPECT_EQ(deltas.joined(), "ok after 500");
    EXPECT_EQ(fake.requests(), 2u);
}

TEST_F(OpenAITest, PersistentUnavailableGivesUpAfterMaxRetries) {
    Reply r =
        json_reply({{"error",
                     {{"message", "The engine is currently overloaded, please try again later."},
                      {"type", "server_error"},
                      {"param", nullptr},
                      {"code", nullptr}}}},
                   503);
    r.headers.emplace("Retry-After", "0");
    fake.always(r);
    auto reply = model({{"max_retries", "1"}})->chat(question(), nullptr);
    ASSERT_FALSE(reply);
    EXPECT_EQ(reply.error().code, ErrorCode::unavailable) << what(reply);
    EXPECT_EQ(fake.requests(), 2u) << "one attempt plus max_retries";
    EXPECT_NE(reply.error().message.find("OpenAI-compatible"), std::string::npos) << what(reply);
    EXPECT_NE(reply.error().message.find("currently overloaded"), std::string::npos) << what(reply);
}

TEST_F(OpenAITest, UnauthorizedIsAConfigErrorWithoutTheKey) {
    // The fake echoes the key it was given in its error message, as some servers do.
    auto reply = model({{"api_key", kWrongKey}})->chat(question(), nullptr);
    ASSERT_FALSE(reply);
    EXPECT_EQ(reply.error().code, ErrorCode::config) << what(reply);
    EXPECT_NE(reply.error().message.find("OpenAI-compatible"), std::string::npos) << what(reply);
    EXPECT_NE(reply.error().message.find("401"), std::string::npos) << what(reply);
    EXPECT_NE(reply.error().message.find("Incorrect API key"), std::string::npos) << what(reply);
    EXPECT_EQ(what(reply).find(kWrongKey), std::string::npos) << what(reply);
    EXPECT_EQ(fake.requests(), 1u) << "a 401 is not retried";
}

TEST_F(OpenAITest, StreamEndingBeforeDoneIsAnError) {
    fake.always(stream_reply(openai_text_stream({"half an", " answer"}, false)));
    Deltas deltas;
    auto r = model()->chat(question(), &deltas.fn);
    ASSERT_FALSE(r) << what(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable) << what(r);
    EXPECT_NE(r.error().message.find("[DONE]"), std::string::npos) << what(r);
    EXPECT_EQ(fake.requests(), 1u);
}

TEST_F(OpenAITest, ConnectionCutMidStreamIsAnError) {
    Reply cut = stream_reply(openai_text_stream({"half an", " answer"}, false));
    cut.cut = true;
    fake.always(cut);
    Deltas deltas;
    auto r = model()->chat(question(), &deltas.fn);
    ASSERT_FALSE(r) << what(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable) << what(r);
    EXPECT_EQ(deltas.joined(), "half an answer") << "what arrived was passed on";
    EXPECT_EQ(fake.requests(), 1u) << "text has streamed: no retry";
}

TEST_F(OpenAITest, MalformedBodyIsAnInternalError) {
    Reply truncated;
    truncated.body = R"({"id":"chatcmpl-1","choices":[{"index":0,"message":{"role":"assi)";
    fake.always(truncated);
    auto r = model()->chat(question(), nullptr);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::bad_gateway) << what(r);
    EXPECT_NE(r.error().message.find("OpenAI-compatible"), std::string::npos) << what(r);

    fake.always(json_reply(
        {{"id", "chatcmpl-1"}, {"object", "chat.completion"}, {"choices", json::array()}}));
    r = model()->chat(question(), nullptr);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::bad_gateway) << what(r);

    // A stream chunk that is not JSON.
    fake.always(stream_reply("data: {\"choices\": [\n\n"));
    Deltas deltas;
    r = model()->chat(question(), &deltas.fn);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::bad_gateway) << what(r);
}

TEST_F(OpenAITest, ErrorChunkMidStreamIsAnError) {
    std::string s = openai_text_stream({"Partial"}, false);
    s += data({{"error",
                {{"message", "The server had an error while processing your request."},
                 {"type", "server_error"},
                 {"param", nullptr},
                 {"code", nullptr}}}});
    fake.always(stream_reply(s));
    Deltas deltas;
    auto r = model()->chat(question(), &deltas.fn);
    ASSERT_FALSE(r) << what(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable) << what(r);
    EXPECT_NE(r.error().message.find("had an error"), std::string::npos) << what(r);
    EXPECT_EQ(deltas.joined(), "Partial");
    EXPECT_EQ(fake.requests(), 1u);
}

TEST_F(OpenAITest, WronglyTypedStreamChunksAreInternalErrors) {
    for (const std::string& bad : {
             data({{"id", "c"}, {"object", "chat.completion.chunk"}, {"choices", {5}}}),
             data(openai_chunk("not a delta")),
             data(openai_chunk({{"tool_calls", {{{"index", "zero"}, {"id", "call_1"}}}}})),
             data(openai_chunk({{"tool_calls", {"call_1"}}})),
             data({{"error", {{"message", nullptr}, {"type", "server_error"}}}}),
         }) {
        SCOPED_TRACE(bad);
        fake.always(stream_reply(bad + "data: [DONE]\n\n"));
        Deltas deltas;
        Result<ChatReply> r = fail(ErrorCode::internal, "not run");
        EXPECT_NO_THROW(r = model()->chat(question(), &deltas.fn));
        ASSERT_FALSE(r) << what(r);
        EXPECT_TRUE(r.error().code == ErrorCode::bad_gateway ||
                    r.error().code == ErrorCode::unavailable)
            << what(r);
    }
}

TEST_F(OpenAITest, EmptyHistoryTurnsAreNotSent) {
    fake.always(json_reply(openai_text("fine")));
    ChatRequest r = question();
    r.messages.insert(r.messages.begin(), {{Message::Role::user, "Hello.", {}, {}},
                                           {Message::Role::assistant, "", {}, {}},
                                           {Message::Role::user, "", {}, {}}});
    auto reply = model()->chat(r, nullptr);
    ASSERT_TRUE(reply) << what(reply);
    const json messages = fake.seen().at(0).body["messages"];
    ASSERT_EQ(messages.size(), 3u) << messages.dump();  // system, Hello., the question
    for (const auto& m : messages) EXPECT_TRUE(m["content"].is_string()) << messages.dump();
}

// --- SseParser --------------------------------------------------------------------------------

using Events = std::vector<std::pair<std::string, std::string>>;

struct Parsed {
    Events events;
    detail::SseParser parser{[this](std::string_view e, std::string_view d) {
        events.emplace_back(std::string(e), std::string(d));
        return true;
    }};
};

TEST(SseParser, EventsWithNamesAndData) {
    Parsed p;
    EXPECT_TRUE(p.parser.feed("event: ping\ndata: {\"type\": \"ping\"}\n\ndata: plain\n\n"));
    EXPECT_EQ(p.events, (Events{{"ping", "{\"type\": \"ping\"}"}, {"", "plain"}}))
        << "the event name does not carry over to the next event";
}

TEST(SseParser, CrlfLineEndings) {
    Parsed p;
    EXPECT_TRUE(p.parser.feed("event: a\r\ndata: one\r\n\r\ndata: two\r\n\r\n"));
    EXPECT_EQ(p.events, (Events{{"a", "one"}, {"", "two"}}));
}

TEST(SseParser, ChunksSplitAnywhere) {
    std::string stream = "event: message_start\r\ndata: {\"x\": 1}\r\n\r\ndata: [DONE]\n\n";
    // Every split point, including between \r and \n.
    for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
        Parsed p;
        EXPECT_TRUE(p.parser.feed(stream.substr(0, cut)));
        EXPECT_TRUE(p.parser.feed(stream.substr(cut)));
        EXPECT_EQ(p.events, (Events{{"message_start", "{\"x\": 1}"}, {"", "[DONE]"}}))
            << "split at " << cut;
    }
    // One byte at a time.
    Parsed p;
    for (char c : stream) EXPECT_TRUE(p.parser.feed(std::string_view(&c, 1)));
    EXPECT_EQ(p.events.size(), 2u);
}

TEST(SseParser, CommentsAndKeepAlivesAreIgnored) {
    Parsed p;
    EXPECT_TRUE(p.parser.feed(": OPENROUTER PROCESSING\n\n:keep-alive\ndata: x\n: inside\n\n"));
    EXPECT_EQ(p.events, (Events{{"", "x"}}));
}

TEST(SseParser, MultiLineDataJoinsWithNewlines) {
    Parsed p;
    EXPECT_TRUE(p.parser.feed("data: first\ndata:second\ndata:  third\n\n"));
    // One optional space after the colon is removed, no more.
    EXPECT_EQ(p.events, (Events{{"", "first\nsecond\n third"}}));
}

TEST(SseParser, IncompleteEventIsHeldBack) {
    Parsed p;
    EXPECT_TRUE(p.parser.feed("data: not yet\n"));
    EXPECT_TRUE(p.events.empty());
    EXPECT_TRUE(p.parser.feed("\n"));
    EXPECT_EQ(p.events, (Events{{"", "not yet"}}));
}

TEST(SseParser, HandlerCanStopTheStream) {
    int calls = 0;
    detail::SseParser parser([&](std::string_view, std::string_view) {
        ++calls;
        return false;
    });
    EXPECT_FALSE(parser.feed("data: 1\n\ndata: 2\n\n"));
    EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace ka::llm
