// POST /api/v1/ask in process: an http::Server with an agent on a real store (PostgreSQL,
// builtin embedder), the model a loopback server speaking Anthropic's Messages API with
// scripted turns. JSON and server-sent-event answers, validation, roles and scopes.
#include "http/server.h"

#include <httplib.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "db/startup.h"
#include "embed/embedder.h"
#include "llm/internal.h"
#include "log/log.h"
#include "support/pg.h"

namespace ka::http {
namespace {

using json = nlohmann::json;
using test::contains;
using namespace std::chrono_literals;

const std::string kLlmKey = "sk-ant-test-0123456789abcdef";
const std::string kModel = "claude-test-model";
// API keys (at least 16 characters, as the config demands).
const std::string kAdmin = "admin-key-0123456789abcdef";
const std::string kWriter = "writer-key-0123456789abcdef";
const std::string kReader = "reader-key-0123456789abcdef";
const std::string kTeamA = "team-a-key-0123456789abcdef";  // write, bound to scope team-a

// --- A scripted model speaking the Messages API -----------------------------------------------

struct Call {
    std::string id, name;
    json input = json::object();
};

// One model turn, or (status != 200) a provider error.
struct Turn {
    std::string text;
    std::vector<Call> calls;
    int status = 200;
    std::chrono::milliseconds stall{0};  // streamed: pause after the first text delta
};

std::string sse(const json& data) {
    return "event: " + data["type"].get<std::string>() + "\ndata: " + data.dump() + "\n\n";
}

std::string message_body(const Turn& t) {
    json content = json::array();
    if (!t.text.empty()) content.push_back({{"type", "text"}, {"text", t.text}});
    for (const auto& c : t.calls)
        content.push_back(
            {{"type", "tool_use"}, {"id", c.id}, {"name", c.name}, {"input", c.input}});
    return json{
        {"id", "msg_01"},           {"type", "message"},
        {"role", "assistant"},      {"model", kModel},
        {"content", content},       {"stop_reason", t.calls.empty() ? "end_turn" : "tool_use"},
        {"stop_sequence", nullptr}, {"usage", {{"input_tokens", 100}, {"output_tokens", 20}}}}
        .dump();
}

// The turn as Messages API events; text streams word by word.
std::string message_stream(const Turn& t) {
    std::string out = sse({{"type", "message_start"},
                           {"message",
                            {{"id", "msg_01"},
                             {"type", "message"},
                             {"role", "assistant"},
                             {"model", kModel},
                             {"content", json::array()},
                             {"stop_reason", nullptr},
                             {"stop_sequence", nullptr},
                             {"usage", {{"input_tokens", 100}, {"output_tokens", 1}}}}}});
    int index = 0;
    if (!t.text.empty()) {
        out += sse({{"type", "content_block_start"},
                    {"index", index},
                    {"content_block", {{"type", "text"}, {"text", ""}}}});
        std::size_t start = 0;
        while (start < t.text.size()) {
            std::size_t space = t.text.find(' ', start);
            std::size_t end = space == std::string::npos ? t.text.size() : space + 1;
            out += sse(
                {{"type", "content_block_delta"},
                 {"index", index},
                 {"delta", {{"type", "text_delta"}, {"text", t.text.substr(start, end - start)}}}});
            start = end;
        }
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
        for (const auto& p : {input.substr(0, input.size() / 2), input.substr(input.size() / 2)})
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

// The tool_result blocks of a request's last message.
json tool_results(const json& request) {
    json out = json::array();
    for (const auto& b : request["messages"].back()["content"]) {
        if (b.value("type", "") == "tool_result") out.push_back(b);
    }
    return out;
}

// What the real API refuses: a wrong key, a tool_result that answers no tool_use of the
// assistant turn right before it, empty content.
std::optional<std::string> refusal(const httplib::Request& req, const json& body) {
    if (req.get_header_value("x-api-key") != kLlmKey || !req.has_header("anthropic-version"))
        return "invalid x-api-key";
    if (!body.is_object() || !body.contains("messages") || body["messages"].empty())
        return "messages: at least one message is required";
    std::set<std::string> open;
    for (const auto& m : body["messages"]) {
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
        open = m["role"] == "assistant" ? uses : std::set<std::string>{};
    }
    return std::nullopt;
}

class FakeModel {
  public:
    using Script = std::function<Turn(const json& request)>;

    FakeModel() {
        ::setenv("no_proxy", "127.0.0.1", 1);
        server_.Post("/v1/messages", [this](const httplib::Request& req, httplib::Response& res) {
            serve(req, res);
        });
        port_ = server_.bind_to_any_port("127.0.0.1");
        thread_ = std::thread([this] { server_.listen_after_bind(); });
        while (!server_.is_running()) std::this_thread::sleep_for(1ms);
    }
    ~FakeModel() {
        server_.stop();
        thread_.join();
    }
    FakeModel(const FakeModel&) = delete;
    FakeModel& operator=(const FakeModel&) = delete;

    std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
    void script(Script s) {
        std::lock_guard lock(mutex_);
        script_ = std::move(s);
    }
    std::vector<json> requests() {
        std::lock_guard lock(mutex_);
        return requests_;
    }
    std::vector<std::string> refused() {
        std::lock_guard lock(mutex_);
        return refused_;
    }

  private:
    void serve(const httplib::Request& req, httplib::Response& res) {
        json body = json::parse(req.body, nullptr, false);
        Script script;
        {
            std::lock_guard lock(mutex_);
            requests_.push_back(body);
            script = script_;
        }
        auto error = [&](int status, const std::string& type, const std::string& message) {
            res.status = status;
            res.set_content(
                json{{"type", "error"}, {"error", {{"type", type}, {"message", message}}}}.dump(),
                "application/json");
        };
        auto why = refusal(req, body);
        if (!why && !script) why = "no script";
        if (why) {
            std::lock_guard lock(mutex_);
            refused_.push_back(*why);
            return error(
                *why == "invalid x-api-key" ? 401 : 400,
                *why == "invalid x-api-key" ? "authentication_error" : "invalid_request_error",
                *why);
        }
        Turn turn = script(body);
        if (turn.status == 529) return error(529, "overloaded_error", "Overloaded");
        if (turn.status != 200) return error(turn.status, "api_error", "Internal server error");
        if (!body.value("stream", false)) {
            res.set_content(message_body(turn), "application/json");
            return;
        }
        auto text = std::make_shared<std::string>(message_stream(turn));
        auto stall = turn.stall;
        res.set_chunked_content_provider(
            "text/event-stream", [text, stall](std::size_t, httplib::DataSink& sink) {
                std::size_t cut = 0;
                if (stall.count() > 0) {
                    cut = text->find("\n\n", text->find("content_block_delta")) + 2;
                    if (!sink.write(text->data(), cut)) return false;
                    std::this_thread::sleep_for(stall);
                }
                sink.write(text->data() + cut, text->size() - cut);
                sink.done();
                return true;
            });
    }

    httplib::Server server_;
    int port_ = 0;
    std::thread thread_;
    std::mutex mutex_;
    std::vector<json> requests_;
    std::vector<std::string> refused_;
    Script script_;
};

// --- The API server ---------------------------------------------------------------------------

struct Options {
    bool model = true;  // false: llm.provider none (retrieval-only)
    bool keys = false;
};

struct Reply {
    int status = 0;
    std::string error;  // transport error when there was no answer
    std::string body;
    std::string content_type;
    json j() const { return json::parse(body, nullptr, false); }
};

std::ostream& operator<<(std::ostream& os, const Reply& r) {
    return os << "HTTP " << r.status << " " << r.error << " " << r.body.substr(0, 600);
}

Reply post(int port, const std::string& body, const std::string& key = "") {
    httplib::Client client("127.0.0.1", port);
    client.set_connection_timeout(5s);
    client.set_read_timeout(60s);
    httplib::Headers headers;
    if (!key.empty()) headers.emplace("Authorization", "Bearer " + key);
    auto res = client.Post("/api/v1/ask", headers, body, "application/json");
    Reply r;
    if (!res) {
        r.error = httplib::to_string(res.error());
        return r;
    }
    r.status = res->status;
    r.body = res->body;
    r.content_type = res->get_header_value("Content-Type");
    return r;
}

// A server-sent event of the answer stream.
struct Event {
    std::string name;
    json data;
};

std::vector<Event> events_of(const std::string& body) {
    std::vector<Event> out;
    llm::detail::SseParser parser([&](std::string_view name, std::string_view data) {
        out.push_back({std::string(name), json::parse(data, nullptr, false)});
        return true;
    });
    parser.feed(body);
    return out;
}

std::set<std::string> ids_in(const json& entries) {
    std::set<std::string> out;
    for (const auto& e : entries) out.insert(e.at("id").get<std::string>());
    return out;
}

class AskTest : public ::testing::Test {
  protected:
    static void SetUpTestSuite() { log::configure("error", "console"); }

    test::TestDatabase db;
    FakeModel fake;
    config::Config config;
    Metrics metrics;
    std::unique_ptr<db::Pool> pool;
    std::unique_ptr<embed::Embedder> embedder;
    std::unique_ptr<store::Store> store;
    std::unique_ptr<llm::ChatModel> model;
    std::unique_ptr<agent::Agent> agent;
    std::unique_ptr<Server> server;
    std::thread thread;
    int port = 0;

    void start(const Options& o = {}) {
        std::string yaml =
            "server:\n  host: 127.0.0.1\n  port: 0\n  workers: 4\n  request_timeout: 30\n"
            "rate_limit:\n  requests_per_second: 0\n"
            "agent:\n  context_k: 3\n  max_tool_rounds: 3\n";
        if (o.model) {
            yaml += fmt::format(
                "llm:\n  provider: anthropic\n  base_url: {}\n  api_key: {}\n  model: {}\n"
                "  timeout: 30\n  max_retries: 0\n",
                fake.url(), kLlmKey, kModel);
        }
        if (o.keys) {
            yaml += fmt::format(
                "auth:\n  keys:\n"
                "    - {{name: admin, key: {}, role: admin}}\n"
                "    - {{name: writer, key: {}, role: write}}\n"
                "    - {{name: reader, key: {}, role: read}}\n"
                "    - {{name: team-a, key: {}, role: write, scopes: [team-a]}}\n",
                kAdmin, kWriter, kReader, kTeamA);
        }
        auto loaded = config::load_from_string(
            yaml, [&](const std::string& name) -> std::optional<std::string> {
                if (name == "POSTGRES_URL") return db.url();
                return std::nullopt;
            });
        if (!loaded) throw std::runtime_error("config: " + loaded.error().message);
        config = std::move(*loaded);
        auto conn = db.connect();
        if (auto ok = db::prepare_schema(conn, config, true); !ok)
            throw std::runtime_error("schema: " + ok.error().message);
        pool = std::make_unique<db::Pool>(db::Target{db.url(), db.name(), false}, 4, 10);
        auto e = embed::make_embedder(config);
        if (!e) throw std::runtime_error("embedder: " + e.error().message);
        embedder = std::move(*e);
        store = std::make_unique<store::Store>(*pool, *embedder, config);
        if (auto ok = store->prepare(); !ok) throw std::runtime_error(ok.error().message);
        auto m = llm::make_chat_model(config);
        if (!m) throw std::runtime_error("model: " + m.error().message);
        model = std::move(*m);
        agent = std::make_unique<agent::Agent>(*store, model.get(), config, config.agent.prompt);
        server = std::make_unique<Server>(config, *store, *pool, metrics, agent.get());
        auto bound = server->bind();
        if (!bound) throw std::runtime_error("bind: " + bound.error().message);
        port = *bound;
        thread = std::thread([this] { server->run(); });
        // stop() before the accept loop runs would be lost: wait until it answers.
        httplib::Client probe("127.0.0.1", port);
        auto deadline = std::chrono::steady_clock::now() + 30s;
        while (true) {
            auto res = probe.Get("/health");
            if (res && res->status == 200) break;
            if (std::chrono::steady_clock::now() > deadline)
                throw std::runtime_error("the server did not come up");
            std::this_thread::sleep_for(5ms);
        }
    }

    void TearDown() override {
        if (server) server->stop();
        if (thread.joinable()) thread.join();
    }

    Reply ask(const json& body, const std::string& key = "") {
        return post(port, body.dump(), key);
    }

    store::Entry add(const std::string& content, const std::string& scope = "") {
        store::NewEntry e;
        e.content = content;
        e.scope = scope;
        auto r = store->add(std::move(e));
        if (!r) throw std::runtime_error(r.error().message);
        return r->entry;
    }

    long long count() {
        auto n = store->count({});
        if (!n) throw std::runtime_error(n.error().message);
        return *n;
    }

    // A model that searches once with `query`, then answers `answer`.
    void search_then_answer(const std::string& query, const std::string& answer) {
        fake.script([=](const json& request) -> Turn {
            if (tool_results(request).empty())
                return {"Let me look. ", {{"toolu_s", "search_memory", {{"query", query}}}}};
            return {answer, {}};
        });
    }
    // A model that saves `content`, then says so.
    void save_then_answer(const std::string& content) {
        fake.script([=](const json& request) -> Turn {
            if (tool_results(request).empty())
                return {"", {{"toolu_w", "save_to_memory", {{"content", content}}}}};
            return {"Done.", {}};
        });
    }
};

void expect_error(const Reply& r, int status, const std::string& code) {
    EXPECT_EQ(r.status, status) << r;
    EXPECT_TRUE(r.content_type.starts_with("application/json")) << r;
    json j = r.j();
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r;
    EXPECT_EQ(j["error"].value("code", ""), code) << r;
    EXPECT_FALSE(j["error"].value("message", "").empty()) << r;
}

// --- Answers ----------------------------------------------------------------------------------

TEST_F(AskTest, RetrievalOnlyAnswerWithSources) {
    start({.model = false});
    auto runbook = add("The deploy runbook lives at wiki/deploy-runbook.");
    add("Lunch is served at noon.");
    Reply r = ask({{"question", "where is the deploy runbook?"}});
    ASSERT_EQ(r.status, 200) << r;
    EXPECT_TRUE(r.content_type.starts_with("application/json")) << r;
    json j = r.j();
    EXPECT_TRUE(contains(j["answer"].get<std::string>(), "No LLM is configured")) << r;
    EXPECT_TRUE(contains(j["answer"].get<std::string>(), runbook.id)) << r;
    ASSERT_FALSE(j["sources"].empty()) << r;
    const json& first = j["sources"][0];
    EXPECT_EQ(first["id"], runbook.id);
    EXPECT_EQ(first["content"], runbook.content);
    EXPECT_EQ(first["scope"], runbook.scope);
    EXPECT_TRUE(first["tags"].is_array());
    EXPECT_EQ(first["created_at"], runbook.created_at);
    EXPECT_EQ(j["saved"], json::array());
    EXPECT_EQ(j["tool_rounds"], 0);
    EXPECT_TRUE(j["model"].is_null());

    // Streamed, the same answer comes as one text event and done.
    Reply s = ask({{"question", "where is the deploy runbook?"}, {"stream", true}});
    ASSERT_EQ(s.status, 200) << s;
    EXPECT_TRUE(s.content_type.starts_with("text/event-stream")) << s;
    auto events = events_of(s.body);
    ASSERT_EQ(events.size(), 2u) << s;
    EXPECT_EQ(events[0].name, "text");
    EXPECT_EQ(events[1].name, "done");
    EXPECT_EQ(events[1].data["answer"], events[0].data["text"]);
    EXPECT_EQ(events[1].data["answer"], j["answer"]);
    EXPECT_TRUE(fake.requests().empty());
}

TEST_F(AskTest, ModelAnswerWithSourcesAndHistory) {
    start();
    auto deploy = add("Deploys happen on Tuesdays after the standup.");
    auto rollback = add("Roll back a failed deploy with make rollback.");
    search_then_answer("rollback", "Use make rollback [" + rollback.id + "].");
    Reply r = ask({{"question", "When do deploys happen?"},
                   {"history",
                    {{{"role", "user"}, {"content", "I am on the platform team."}},
                     {{"role", "assistant"}, {"content", "Hello, platform team."}}}}});
    ASSERT_EQ(r.status, 200) << r << " refused: " << json(fake.refused()).dump();
    json j = r.j();
    EXPECT_TRUE(
        j["answer"].get<std::string>().ends_with("Use make rollback [" + rollback.id + "]."))
        << r;
    EXPECT_EQ(j["model"], kModel);
    EXPECT_EQ(j["tool_rounds"], 1);
    auto sources = ids_in(j["sources"]);
    EXPECT_TRUE(sources.count(deploy.id)) << "searched up front: " << r;
    EXPECT_TRUE(sources.count(rollback.id)) << "found by the tool: " << r;
    EXPECT_EQ(j["sources"][0]["id"], deploy.id) << "the best up-front match comes first";

    auto requests = fake.requests();
    ASSERT_EQ(requests.size(), 2u);
    const json& messages = requests[0]["messages"];
    ASSERT_EQ(messages.size(), 3u) << messages.dump(2);
    EXPECT_EQ(messages[0]["role"], "user");
    EXPECT_EQ(messages[0]["content"][0]["text"], "I am on the platform team.");
    EXPECT_EQ(messages[1]["role"], "assistant");
    EXPECT_EQ(messages[1]["content"][0]["text"], "Hello, platform team.");
    EXPECT_EQ(messages[2]["content"][0]["text"], "When do deploys happen?");
    json results = tool_results(requests[1]);
    ASSERT_EQ(results.size(), 1u);
    EXPECT_TRUE(contains(results[0]["content"].get<std::string>(), rollback.id));
}

TEST_F(AskTest, StreamedAnswerIsTextEventsThenDone) {
    start();
    auto deploy = add("Deploys happen on Tuesdays after the standup.");
    search_then_answer("deploy day", "Deploys are on Tuesdays [" + deploy.id + "].");
    Reply r = ask({{"question", "When do deploys happen?"}, {"stream", true}});
    ASSERT_EQ(r.status, 200) << r;
    EXPECT_TRUE(r.content_type.starts_with("text/event-stream")) << r;
    auto events = events_of(r.body);
    ASSERT_GE(events.size(), 3u) << r;
    std::string text;
    int texts = 0;
    std::vector<json> tools;
    for (std::size_t i = 0; i + 1 < events.size(); ++i) {
        const Event& e = events[i];
        ASSERT_TRUE(e.name == "text" || e.name == "tool") << e.name << " " << e.data.dump();
        if (e.name == "text") {
            text += e.data["text"].get<std::string>();
            ++texts;
        } else {
            tools.push_back(e.data);
        }
    }
    EXPECT_GT(texts, 2) << "the answer streams in pieces";
    ASSERT_EQ(tools.size(), 1u);
    EXPECT_EQ(tools[0]["name"], "search_memory");
    EXPECT_EQ(tools[0]["arguments"], json::parse(R"({"query":"deploy day"})"));
    const Event& done = events.back();
    ASSERT_EQ(done.name, "done") << r;
    EXPECT_EQ(done.data["answer"], text);
    EXPECT_EQ(text, "Let me look. \n\nDeploys are on Tuesdays [" + deploy.id + "].");
    EXPECT_TRUE(ids_in(done.data["sources"]).count(deploy.id)) << r;
    EXPECT_EQ(done.data["tool_rounds"], 1);
    EXPECT_EQ(done.data["model"], kModel);
    for (const auto& req : fake.requests()) EXPECT_EQ(req["stream"], true);
}

TEST_F(AskTest, ModelFailureIsAnErrorInEitherForm) {
    start();
    fake.script([](const json&) -> Turn { return {"", {}, 529}; });
    expect_error(ask({{"question", "Anything?"}}), 503, "unavailable");

    Reply s = ask({{"question", "Anything?"}, {"stream", true}});
    ASSERT_EQ(s.status, 200) << s;
    auto events = events_of(s.body);
    ASSERT_FALSE(events.empty()) << s;
    EXPECT_EQ(events.back().name, "error") << s;
    EXPECT_EQ(events.back().data["error"]["code"], "unavailable") << s;
    EXPECT_TRUE(contains(events.back().data["error"]["message"].get<std::string>(), "529")) << s;
}

// A client that hangs up mid-answer stops the agent: the model's stream is dropped, the tool
// call it was about to make is not run, and no further model round is paid for.
TEST_F(AskTest, ClientDisconnectStopsTheStreamedAnswer) {
    start({.model = true, .keys = true});
    fake.script([](const json& request) -> Turn {
        if (!tool_results(request).empty()) return {"Saved.", {}};
        Turn t{"I will save that for you now. ",
               {{"toolu_w", "save_to_memory", {{"content", "Deploys freeze on Fridays"}}}}};
        t.stall = 800ms;
        return t;
    });
    {
        httplib::Client client("127.0.0.1", port);
        client.set_read_timeout(30s);
        httplib::Request req;
        req.method = "POST";
        req.path = "/api/v1/ask";
        req.headers = {{"Authorization", "Bearer " + kWriter}};
        req.set_header("Content-Type", "application/json");
        req.body = json{{"question", "Remember the Friday freeze"}, {"stream", true}}.dump();
        std::string got;
        req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
            got.append(data, n);
            return got.find("event: text") == std::string::npos;  // hang up after the first
        };
        httplib::Response res;
        httplib::Error error = httplib::Error::Success;
        EXPECT_FALSE(client.send(req, res, error));
        EXPECT_TRUE(contains(got, "event: text")) << got;
    }  // the client and its socket are gone
    // The stall ends 800 ms after the first delta; give the server time to act on the rest.
    std::this_thread::sleep_for(2500ms);
    EXPECT_EQ(fake.requests().size(), 1u) << "a second model round ran for nobody";
    EXPECT_EQ(count(), 0) << "the tool call ran for nobody";

    // The server is fine: the same question with a listening client saves and answers.
    Reply r = ask({{"question", "Remember the Friday freeze"}, {"stream", true}}, kWriter);
    ASSERT_EQ(r.status, 200) << r;
    EXPECT_EQ(events_of(r.body).back().name, "done") << r;
    EXPECT_EQ(count(), 1);
    EXPECT_EQ(fake.requests().size(), 3u);
}

// An empty history turn is allowed by the API and skipped on the way to the model (which
// refuses empty messages).
TEST_F(AskTest, EmptyHistoryTurnsAreSkipped) {
    start();
    fake.script([](const json&) -> Turn { return {"Hello again.", {}}; });
    Reply r =
        ask({{"question", "Still there?"},
             {"history",
              {{{"role", "user"}, {"content", "Hi."}}, {{"role", "assistant"}, {"content", ""}}}}});
    ASSERT_EQ(r.status, 200) << r << " refused: " << json(fake.refused()).dump();
    EXPECT_EQ(r.j()["answer"], "Hello again.");
    auto requests = fake.requests();
    ASSERT_EQ(requests.size(), 1u);
    EXPECT_EQ(requests[0]["messages"].size(), 2u) << requests[0]["messages"].dump();
}

// --- Validation -------------------------------------------------------------------------------

TEST_F(AskTest, InvalidRequestsAre400) {
    start();
    fake.script([](const json&) -> Turn { return {"should not be asked", {}}; });
    for (const std::string& body : std::vector<std::string>{
             R"({})",
             R"({"question": 42})",
             R"({"question": null})",
             R"({"question": "   "})",
             R"({"question": "q", "history": "earlier"})",
             R"({"question": "q", "history": ["hi"]})",
             R"({"question": "q", "history": [{"role": "system", "content": "x"}]})",
             R"({"question": "q", "history": [{"role": "user"}]})",
             R"({"question": "q", "history": [{"role": "user", "content": 5}]})",
             R"({"question": "q", "stream": "yes"})",
             R"({"question": "q", "scope": 7})",
             R"({"question": "q", "colour": "red"})",
             R"({"question": "q")",
             R"(["question"])",
         }) {
        SCOPED_TRACE(body);
        expect_error(post(port, body), 400, "invalid_argument");
    }
    json long_history = json::array();
    for (int i = 0; i < 101; ++i) long_history.push_back({{"role", "user"}, {"content", "x"}});
    expect_error(ask({{"question", "q"}, {"history", long_history}}), 400, "invalid_argument");
    EXPECT_TRUE(fake.requests().empty()) << "nothing invalid reaches the model";
}

// --- Auth -------------------------------------------------------------------------------------

TEST_F(AskTest, ReadKeyCannotSaveWriteKeyCan) {
    start({.keys = true});
    expect_error(ask({{"question", "Hello?"}}), 401, "unauthorized");

    long long before = count();
    save_then_answer("The VPN gateway is vpn-2.example.com.");
    Reply read = ask({{"question", "Remember: the VPN gateway is vpn-2."}}, kReader);
    ASSERT_EQ(read.status, 200) << read << " refused: " << json(fake.refused()).dump();
    EXPECT_EQ(read.j()["saved"], json::array()) << read;
    EXPECT_EQ(count(), before) << "no row written for a read key";
    auto requests = fake.requests();
    ASSERT_EQ(requests.size(), 2u);
    json results = tool_results(requests[1]);
    ASSERT_EQ(results.size(), 1u);
    EXPECT_EQ(results[0]["is_error"], true) << results.dump();

    Reply write = ask({{"question", "Remember: the VPN gateway is vpn-2."}}, kWriter);
    ASSERT_EQ(write.status, 200) << write << " refused: " << json(fake.refused()).dump();
    json saved = write.j()["saved"];
    ASSERT_EQ(saved.size(), 1u) << write;
    EXPECT_EQ(saved[0]["content"], "The VPN gateway is vpn-2.example.com.");
    EXPECT_EQ(count(), before + 1);
    auto row = store->get(saved[0]["id"].get<std::string>());
    ASSERT_TRUE(row) << row.error().message;
    EXPECT_EQ(row->content, "The VPN gateway is vpn-2.example.com.");
}

TEST_F(AskTest, ScopeBoundKeyOnlySeesItsScope) {
    start({.keys = true});
    auto a = add("Team A deploys services with Argo CD.", "team-a");
    auto b = add("Team B deploys services with Jenkins.", "team-b");
    search_then_answer("deploys services", "Argo CD.");
    Reply r = ask({{"question", "How do we deploy services?"}}, kTeamA);
    ASSERT_EQ(r.status, 200) << r << " refused: " << json(fake.refused()).dump();
    json j = r.j();
    EXPECT_EQ(ids_in(j["sources"]), (std::set<std::string>{a.id})) << r;
    auto requests = fake.requests();
    ASSERT_EQ(requests.size(), 2u);
    std::string system = requests[0]["system"].get<std::string>();
    EXPECT_TRUE(contains(system, a.id)) << system;
    EXPECT_FALSE(contains(system, b.id)) << system;
    std::string results = tool_results(requests[1]).dump();
    EXPECT_TRUE(contains(results, a.id)) << results;
    EXPECT_FALSE(contains(results, b.id)) << results;
    EXPECT_FALSE(contains(results, "Jenkins")) << results;

    // Its scope explicitly is fine; another is forbidden.
    Reply own = ask({{"question", "How do we deploy services?"}, {"scope", "team-a"}}, kTeamA);
    EXPECT_EQ(own.status, 200) << own;
    std::size_t asked = fake.requests().size();
    expect_error(ask({{"question", "How do we deploy services?"}, {"scope", "team-b"}}, kTeamA),
                 403, "forbidden");
    EXPECT_EQ(fake.requests().size(), asked) << "a forbidden ask never reaches the model";

    // An unbound key asking for one scope sees only that scope.
    Reply admin = ask({{"question", "How do we deploy services?"}, {"scope", "team-b"}}, kAdmin);
    ASSERT_EQ(admin.status, 200) << admin;
    EXPECT_EQ(ids_in(admin.j()["sources"]), (std::set<std::string>{b.id})) << admin;
}

}  // namespace
}  // namespace ka::http
