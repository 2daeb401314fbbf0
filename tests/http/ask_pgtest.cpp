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
#include "support/fake_model.h"
#include "support/pg.h"
#include "support/served.h"

namespace ka::http {
namespace {

using json = nlohmann::json;
using test::contains;
using namespace std::chrono_literals;

const std::string& kLlmKey = test::kModelKey;
const std::string& kModel = test::kModelName;
// API keys (at least 16 characters, as the config demands).
const std::string kAdmin = "admin-key-0123456789abcdef";
const std::string kWriter = "writer-key-0123456789abcdef";
const std::string kReader = "reader-key-0123456789abcdef";
const std::string kTeamA = "team-a-key-0123456789abcdef";  // write, bound to scope team-a

using test::Call;
using test::FakeModel;
using test::tool_results;
using test::Turn;

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
    std::unique_ptr<test::Served> served;
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
        served = std::make_unique<test::Served>(db.url(), yaml);
        port = served->port();
    }

    void TearDown() override { served.reset(); }

    Reply ask(const json& body, const std::string& key = "") {
        return post(port, body.dump(), key);
    }

    store::Entry add(const std::string& content, const std::string& scope = "") {
        store::NewEntry e;
        e.content = content;
        e.scope = scope;
        auto r = served->store().add(std::move(e));
        if (!r) throw std::runtime_error(r.error().message);
        return r->entry;
    }

    long long count() {
        auto n = served->store().count({});
        if (!n) throw std::runtime_error(n.error().message);
        return *n;
    }

    // A model that searches once with `query`, then answers `answer`.
    void search_then_answer(const std::string& query, const std::string& answer) {
        fake.script([=](int, const json& request) -> Turn {
            if (tool_results(request).empty())
                return {"Let me look. ", {{"toolu_s", "search_memory", {{"query", query}}}}};
            return {answer, {}};
        });
    }
    // A model that saves `content`, then says so.
    void save_then_answer(const std::string& content) {
        fake.script([=](int, const json& request) -> Turn {
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
    fake.script([](int, const json&) -> Turn { return {"", {}, 529}; });
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
    fake.script([](int, const json& request) -> Turn {
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
    fake.script([](int, const json&) -> Turn { return {"Hello again.", {}}; });
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
    fake.script([](int, const json&) -> Turn { return {"should not be asked", {}}; });
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
    auto row = served->store().get(saved[0]["id"].get<std::string>());
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
