#include "support/fake_model.h"

#include <cstdlib>
#include <memory>
#include <set>

namespace ka::test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// Text in pieces that end after each space, as a model streams it.
std::vector<std::string> pieces_of(const std::string& text) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start < text.size()) {
        std::size_t space = text.find(' ', start);
        std::size_t end = space == std::string::npos ? text.size() : space + 1;
        out.push_back(text.substr(start, end - start));
        start = end;
    }
    return out;
}

std::string sse(const json& data) {
    return "event: " + data["type"].get<std::string>() + "\ndata: " + data.dump() + "\n\n";
}

std::string chunk(const json& delta, json finish = nullptr) {
    json c = {{"id", "chatcmpl-1"},
              {"object", "chat.completion.chunk"},
              {"created", 1700000000},
              {"model", kModelName},
              {"choices", json::array({{{"index", 0},
                                        {"delta", delta},
                                        {"logprobs", nullptr},
                                        {"finish_reason", std::move(finish)}}})}};
    return "data: " + c.dump() + "\n\n";
}

// The Messages API answer for a turn, whole or as server-sent events.
std::string anthropic_body(const Turn& t) {
    json content = json::array();
    if (!t.text.empty()) content.push_back({{"type", "text"}, {"text", t.text}});
    for (const auto& c : t.calls)
        content.push_back(
            {{"type", "tool_use"}, {"id", c.id}, {"name", c.name}, {"input", c.input}});
    return json{
        {"id", "msg_01"},           {"type", "message"},
        {"role", "assistant"},      {"model", kModelName},
        {"content", content},       {"stop_reason", t.calls.empty() ? "end_turn" : "tool_use"},
        {"stop_sequence", nullptr}, {"usage", {{"input_tokens", 100}, {"output_tokens", 20}}}}
        .dump();
}

std::string anthropic_stream(const Turn& t) {
    std::string out = sse({{"type", "message_start"},
                           {"message",
                            {{"id", "msg_01"},
                             {"type", "message"},
                             {"role", "assistant"},
                             {"model", kModelName},
                             {"content", json::array()},
                             {"stop_reason", nullptr},
                             {"stop_sequence", nullptr},
                             {"usage", {{"input_tokens", 100}, {"output_tokens", 1}}}}}});
    int index = 0;
    if (!t.text.empty()) {
        out += sse({{"type", "content_block_start"},
                    {"index", index},
                    {"content_block", {{"type", "text"}, {"text", ""}}}});
        out += sse({{"type", "ping"}});
        for (const auto& p : pieces_of(t.text))
            out += sse({{"type", "content_block_delta"},
                        {"index", index},
                        {"delta", {{"type", "text_delta"}, {"text", p}}}});
        out += sse({{"type", "content_block_stop"}, {"index", index}});
        ++index;
    }
    for (const auto& c : t.calls) {
        out += sse(
            {{"type", "content_block_start"},
             {"index", index},
             {"content_block",
              {{"type", "tool_use"}, {"id", c.id}, {"name", c.name}, {"input", json::object()}}}});
        std::string input = c.input.dump();
        std::size_t half = input.size() / 2;
        for (const auto& p : {std::string(), input.substr(0, half), input.substr(half)})
            out += sse({{"type", "content_block_delta"},
                        {"index", index},
                        {"delta", {{"type", "input_json_delta"}, {"partial_json", p}}}});
        out += sse({{"type", "content_block_stop"}, {"index", index}});
        ++index;
    }
    out += sse(
        {{"type", "message_delta"},
         {"delta",
          {{"stop_reason", t.calls.empty() ? "end_turn" : "tool_use"}, {"stop_sequence", nullptr}}},
         {"usage", {{"output_tokens", 20}}}});
    out += sse({{"type", "message_stop"}});
    return out;
}

// The chat completions answer for a turn, whole or as `data:` chunks.
std::string openai_body(const Turn& t) {
    json message = {{"role", "assistant"},
                    {"content", t.text.empty() ? json(nullptr) : json(t.text)},
                    {"refusal", nullptr}};
    if (!t.calls.empty()) {
        message["tool_calls"] = json::array();
        for (const auto& c : t.calls)
            message["tool_calls"].push_back(
                {{"id", c.id},
                 {"type", "function"},
                 {"function", {{"name", c.name}, {"arguments", c.input.dump()}}}});
    }
    return json{
        {"id", "chatcmpl-1"},
        {"object", "chat.completion"},
        {"created", 1700000000},
        {"model", kModelName},
        {"choices", json::array({{{"index", 0},
                                  {"message", message},
                                  {"logprobs", nullptr},
                                  {"finish_reason", t.calls.empty() ? "stop" : "tool_calls"}}})},
        {"usage", {{"prompt_tokens", 100}, {"completion_tokens", 20}, {"total_tokens", 120}}}}
        .dump();
}

std::string openai_stream(const Turn& t) {
    std::string out = chunk({{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}});
    for (const auto& p : pieces_of(t.text)) out += chunk({{"content", p}});
    for (std::size_t i = 0; i < t.calls.size(); ++i) {
        const auto& c = t.calls[i];
        out += chunk(
            {{"tool_calls", json::array({{{"index", i},
                                          {"id", c.id},
                                          {"type", "function"},
                                          {"function", {{"name", c.name}, {"arguments", ""}}}}})}});
        std::string args = c.input.dump();
        std::size_t half = args.size() / 2;
        for (const auto& p : {args.substr(0, half), args.substr(half)})
            out += chunk(
                {{"tool_calls", json::array({{{"index", i}, {"function", {{"arguments", p}}}}})}});
    }
    out += chunk(json::object(), t.calls.empty() ? "stop" : "tool_calls");
    out += "data: [DONE]\n\n";
    return out;
}

// A provider's error answer in its own format.
void send_error(Api api, int status, const std::string& message, httplib::Response& res) {
    std::string type = status == 401   ? "authentication_error"
                       : status == 400 ? "invalid_request_error"
                       : status == 529 ? "overloaded_error"
                                       : "api_error";
    res.status = status;
    json body = api == Api::anthropic
                    ? json{{"type", "error"}, {"error", {{"type", type}, {"message", message}}}}
                    : json{{"error",
                            {{"message", message},
                             {"type", status >= 500 ? "server_error" : "invalid_request_error"},
                             {"param", nullptr},
                             {"code", status == 401 ? json("invalid_api_key") : json(nullptr)}}}};
    res.set_content(body.dump(), "application/json");
}

}  // namespace

std::optional<std::string> invalid_request(Api api, const json& body) {
    if (!body.is_object() || !body.contains("messages") || !body["messages"].is_array() ||
        body["messages"].empty())
        return "messages: at least one message is required";
    if (body.contains("tool_choice") && !body.contains("tools"))
        return "tool_choice may only be specified while providing tools";
    std::set<std::string> open;
    for (const auto& m : body["messages"]) {
        std::string role = m.value("role", "");
        if (api == Api::anthropic) {
            if (!m["content"].is_array() || m["content"].empty())
                return "messages: all messages must have non-empty content";
            std::set<std::string> uses;
            for (const auto& b : m["content"]) {
                std::string type = b.value("type", "");
                if (type == "text" && b.value("text", "").empty())
                    return "messages: text content blocks must be non-empty";
                if (type == "tool_use") uses.insert(b.value("id", ""));
                if (type == "tool_result" && !open.count(b.value("tool_use_id", "")))
                    return "messages: unexpected `tool_use_id` found in `tool_result` blocks";
            }
            open = role == "assistant" ? uses : std::set<std::string>{};
        } else {
            if (role == "tool") {
                if (!open.count(m.value("tool_call_id", "")))
                    return "messages with role 'tool' must be a response to a preceeding "
                           "message with 'tool_calls'";
                continue;
            }
            open.clear();
            if (role == "assistant" && m.contains("tool_calls")) {
                for (const auto& c : m["tool_calls"]) open.insert(c.value("id", ""));
            }
        }
    }
    return std::nullopt;
}

json tool_results(const json& request) {
    json out = json::array();
    for (const auto& b : request["messages"].back()["content"]) {
        if (b.value("type", "") == "tool_result") out.push_back(b);
    }
    return out;
}

FakeModel::FakeModel(Api api) : api_(api) {
    // A developer's proxy settings must not capture requests to the fake server.
    ::setenv("no_proxy", "127.0.0.1", 1);
    server_.Post(api == Api::anthropic ? "/v1/messages" : "/v1/chat/completions",
                 [this](const httplib::Request& req, httplib::Response& res) { serve(req, res); });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // stop() before the accept loop has started would be lost and join() would hang.
    while (!server_.is_running()) std::this_thread::sleep_for(1ms);
}

FakeModel::~FakeModel() {
    server_.stop();
    thread_.join();
}

void FakeModel::script(Script s) {
    std::lock_guard lock(mutex_);
    script_ = std::move(s);
}

std::vector<json> FakeModel::requests() {
    std::lock_guard lock(mutex_);
    return requests_;
}

std::vector<std::string> FakeModel::refused() {
    std::lock_guard lock(mutex_);
    return refused_;
}

void FakeModel::serve(const httplib::Request& req, httplib::Response& res) {
    json body = json::parse(req.body, nullptr, false);
    int n = 0;
    Script script;
    {
        std::lock_guard lock(mutex_);
        n = static_cast<int>(requests_.size());
        requests_.push_back(body);
        script = script_;
    }
    bool authorised =
        api_ == Api::anthropic
            ? req.get_header_value("x-api-key") == kModelKey && req.has_header("anthropic-version")
            : req.get_header_value("Authorization") == "Bearer " + kModelKey;
    std::optional<std::string> why =
        !authorised ? std::optional<std::string>("invalid API key") : invalid_request(api_, body);
    if (!why && !script) why = "no script";
    if (why) {
        {
            std::lock_guard lock(mutex_);
            refused_.push_back(*why);
        }
        return send_error(api_, authorised ? 400 : 401, *why, res);
    }
    Turn turn = script(n, body);
    if (turn.status == 529) return send_error(api_, 529, "Overloaded", res);
    if (turn.status != 200) return send_error(api_, turn.status, "Internal server error", res);
    if (!body.value("stream", false)) {
        res.set_content(api_ == Api::anthropic ? anthropic_body(turn) : openai_body(turn),
                        "application/json");
        return;
    }
    auto text = std::make_shared<std::string>(api_ == Api::anthropic ? anthropic_stream(turn)
                                                                     : openai_stream(turn));
    // A stall cuts the stream after its first text delta (the second OpenAI chunk).
    std::size_t cut = 0;
    if (turn.stall.count() > 0) {
        std::size_t delta =
            api_ == Api::anthropic ? text->find("content_block_delta") : text->find("data: ", 1);
        cut = text->find("\n\n", delta) + 2;
    }
    res.set_chunked_content_provider(
        "text/event-stream", [text, cut, stall = turn.stall](std::size_t, httplib::DataSink& sink) {
            if (cut > 0) {
                if (!sink.write(text->data(), cut)) return false;
                std::this_thread::sleep_for(stall);
            }
            sink.write(text->data() + cut, text->size() - cut);
            sink.done();
            return true;
        });
}

}  // namespace ka::test
