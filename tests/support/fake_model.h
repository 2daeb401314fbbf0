// A scripted chat model on 127.0.0.1 speaking Anthropic's Messages API or OpenAI's chat
// completions, whole or streamed, for the agent and /api/v1/ask tests. Requests are checked as
// the real APIs check them (key, tool results that answer the turn before, no empty message),
// recorded, then answered by the script with the turn it returns.
#pragma once

#include <httplib.h>

#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace ka::test {

enum class Api { anthropic, openai };

inline const std::string kModelKey = "sk-ant-test-0123456789abcdef";
inline const std::string kModelName = "claude-test-model";

struct Call {
    std::string id, name;
    nlohmann::json input = nlohmann::json::object();
};

// One model turn: text, then the tools it asks for; or (status != 200) a provider error.
struct Turn {
    std::string text;
    std::vector<Call> calls;
    int status = 200;
    std::chrono::milliseconds stall{0};  // streamed: pause after the first text delta
};

// What the real APIs refuse with a 400: each tool result must answer a tool call of the
// assistant turn right before it, no message may be empty, tool_choice needs tools.
std::optional<std::string> invalid_request(Api api, const nlohmann::json& body);

// The tool_result blocks of a Messages API request's last message.
nlohmann::json tool_results(const nlohmann::json& request);

class FakeModel {
  public:
    // Request number (from 0) and body -> the turn to answer with.
    using Script = std::function<Turn(int n, const nlohmann::json& request)>;

    explicit FakeModel(Api api = Api::anthropic);
    ~FakeModel();
    FakeModel(const FakeModel&) = delete;
    FakeModel& operator=(const FakeModel&) = delete;

    std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
    void script(Script s);
    std::vector<nlohmann::json> requests();
    std::vector<std::string> refused();  // why each refused request was refused

  private:
    void serve(const httplib::Request& req, httplib::Response& res);

    Api api_;
    httplib::Server server_;
    int port_ = 0;
    std::thread thread_;
    std::mutex mutex_;
    std::vector<nlohmann::json> requests_;
    std::vector<std::string> refused_;
    Script script_;
};

}  // namespace ka::test
