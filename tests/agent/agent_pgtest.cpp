// The agent loop on a real store (PostgreSQL, builtin embedder) with a scripted model: a
// loopback server speaking Anthropic's Messages API (and, once, OpenAI chat completions),
// reached through llm::make_chat_model with llm.base_url pointing at it. The script decides
// each model turn from the request it got, so the tests see exactly what the agent sends:
// the system prompt, the history, tool results, and tool_choice on the last round.
#include "agent/agent.h"

#include <httplib.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "db/startup.h"
#include "embed/embedder.h"
#include "log/log.h"
#include "support/fake_model.h"
#include "support/pg.h"

namespace ka::agent {
namespace {

using nlohmann::json;
using test::contains;
using namespace std::chrono_literals;

using test::Api;
using test::Call;
using test::FakeModel;
using test::tool_results;
using test::Turn;
const std::string& kKey = test::kModelKey;
const std::string& kModel = test::kModelName;

// --- Reading requests -------------------------------------------------------------------------

// The ids in a search_memory result.
std::vector<std::string> result_ids(const json& tool_result_content) {
    json j = json::parse(tool_result_content.get<std::string>());
    std::vector<std::string> ids;
    for (const auto& r : j["results"]) ids.push_back(r["id"].get<std::string>());
    return ids;
}

std::vector<std::string> ids_of(const std::vector<store::Entry>& entries) {
    std::vector<std::string> out;
    for (const auto& e : entries) out.push_back(e.id);
    return out;
}

std::string utc_today() {
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    char buf[16];
    std::strftime(buf, sizeof buf, "%Y-%m-%d", &tm);
    return buf;
}

std::string what(const Result<Answer>& a) {
    return a ? "(answer) " + a->text
             : std::string(to_string(a.error().code)) + ": " + a.error().message;
}

// --- Fixture ----------------------------------------------------------------------------------

// The value, or an exception (the test fails with its message).
template <class T>
T must(Result<T> r, const std::string& what) {
    if (!r) throw std::runtime_error(what + ": " + r.error().message);
    return std::move(*r);
}
inline void must(Status s, const std::string& what) {
    if (!s) throw std::runtime_error(what + ": " + s.error().message);
}

class AgentTest : public ::testing::Test {
  protected:
    static void SetUpTestSuite() { log::configure("error", "console"); }

    test::TestDatabase db;
    std::unique_ptr<FakeModel> fake;
    config::Config config;
    std::unique_ptr<db::Pool> pool;
    std::unique_ptr<embed::Embedder> embedder;
    std::unique_ptr<store::Store> store;
    std::unique_ptr<llm::ChatModel> model;
    std::unique_ptr<Agent> agent;

    // Builds the store and the agent; `provider` none is retrieval-only (no fake model).
    // `agent_keys` are agent.* settings.
    void build(const std::string& provider = "anthropic",
               const std::map<std::string, std::string>& agent_keys = {}) {
        std::string yaml = "llm:\n  provider: " + provider + "\n";
        if (provider != "none") {
            fake =
                std::make_unique<FakeModel>(provider == "anthropic" ? Api::anthropic : Api::openai);
            yaml += "  base_url: " + fake->url() + "\n  api_key: " + kKey + "\n  model: " + kModel +
                    "\n  timeout: 30\n  max_retries: 0\n";
        }
        std::map<std::string, std::string> a = {{"context_k", "3"}, {"max_tool_rounds", "3"}};
        for (const auto& [k, v] : agent_keys) a[k] = v;
        yaml += "agent:\n";
        for (const auto& [k, v] : a) yaml += "  " + k + ": " + v + "\n";
        auto loaded = config::load_from_string(
            yaml, [&](const std::string& name) -> std::optional<std::string> {
                if (name == "POSTGRES_URL") return db.url();
                return std::nullopt;
            });
        config = must(std::move(loaded), "config");
        auto conn = db.connect();
        must(db::prepare_schema(conn, config, true), "schema");
        pool = std::make_unique<db::Pool>(db::Target{db.url(), db.name(), false}, 4, 10);
        embedder = must(embed::make_embedder(config), "embedder");
        store = std::make_unique<store::Store>(*pool, *embedder, config);
        must(store->prepare(), "prepare");
        model = must(llm::make_chat_model(config), "model");
        if ((model == nullptr) != (provider == "none"))
            throw std::runtime_error("a model exactly when llm.provider is not none");
        agent = std::make_unique<Agent>(*store, model.get(), config,
                                        must(base_prompt(config), "prompt"));
    }

    store::Entry add(const std::string& content, const std::string& scope = "",
                     std::vector<std::string> tags = {}) {
        store::NewEntry e;
        e.content = content;
        e.scope = scope;
        e.tags = std::move(tags);
        auto r = store->add(std::move(e));
        if (!r) throw std::runtime_error(r.error().message);
        return r->entry;
    }

    long long count(std::vector<std::string> scopes = {}) {
        store::Filters f;
        f.scopes = std::move(scopes);
        auto n = store->count(f);
        if (!n) throw std::runtime_error(n.error().message);
        return *n;
    }

    Question ask_as(const std::string& text, bool may_write = true,
                    std::vector<std::string> scopes = {}) {
        Question q;
        q.text = text;
        q.caller.may_write = may_write;
        q.caller.scopes = std::move(scopes);
        return q;
    }
};

// --- The loop ---------------------------------------------------------------------------------

TEST_F(AgentTest, SearchesMemoryAndSendsTheResultsBack) {
    build("anthropic", {{"context_k", "1"}});
    auto runbook = add("The deploy runbook lives at wiki/deploy-runbook and needs VPN access.", "",
                       {"deploy"});
    auto oncall = add("The oncall rotation hands over every Monday at 10:00.");
    auto rollback = add("Roll back a failed deploy with make rollback in the deploy repo.");
    fake->script([&](int n, const json&) -> Turn {
        if (n == 0)
            return {"Let me search.",
                    {{"toolu_01", "search_memory", {{"query", "deploy rollback"}, {"k", 2}}}}};
        return {"Roll back with make rollback [" + rollback.id + "].", {}};
    });

    auto a = agent->ask(ask_as("How do I roll back a failed deploy?"));
    ASSERT_TRUE(a) << what(a) << " refused: " << json(fake->refused()).dump();
    // Text from every round makes up the answer.
    EXPECT_TRUE(a->text.starts_with("Let me search.")) << a->text;
    EXPECT_TRUE(a->text.ends_with("Roll back with make rollback [" + rollback.id + "]."))
        << a->text;
    EXPECT_EQ(a->tool_rounds, 1);
    EXPECT_EQ(a->model, kModel);
    EXPECT_TRUE(a->saved.empty());

    auto requests = fake->requests();
    ASSERT_EQ(requests.size(), 2u);
    // First request: the question, both tools, the pre-searched entry in the system prompt.
    const json& first = requests[0];
    EXPECT_EQ(first["model"], kModel);
    ASSERT_EQ(first["messages"].size(), 1u);
    EXPECT_EQ(first["messages"][0]["role"], "user");
    EXPECT_EQ(first["messages"][0]["content"][0]["text"], "How do I roll back a failed deploy?");
    std::set<std::string> tools;
    for (const auto& t : first["tools"]) tools.insert(t["name"].get<std::string>());
    EXPECT_EQ(tools, (std::set<std::string>{"search_memory", "save_to_memory"}));
    EXPECT_FALSE(first.contains("tool_choice"));
    std::string system = first["system"].get<std::string>();
    ASSERT_EQ(a->sources.empty(), false);
    std::string pre = a->sources[0].id;  // context_k 1: one entry searched up front
    EXPECT_TRUE(contains(system, pre)) << system;
    EXPECT_EQ(pre, rollback.id) << "the best match for the question is searched up front";

    // Second request: the assistant's tool_use, then its result from the real store.
    const json& second = requests[1];
    ASSERT_EQ(second["messages"].size(), 3u) << second["messages"].dump(2);
    EXPECT_EQ(second["messages"][1]["role"], "assistant");
    EXPECT_EQ(second["messages"][1]["content"][1]["type"], "tool_use");
    EXPECT_EQ(second["messages"][1]["content"][1]["id"], "toolu_01");
    json results = tool_results(second);
    ASSERT_EQ(results.size(), 1u) << second.dump(2);
    EXPECT_EQ(results[0]["tool_use_id"], "toolu_01");
    EXPECT_EQ(results[0]["is_error"], false);
    auto found = result_ids(results[0]["content"]);
    ASSERT_EQ(found.size(), 2u) << "k from the tool call is honoured";
    std::set<std::string> found_set(found.begin(), found.end());
    EXPECT_TRUE(found_set.count(rollback.id));
    EXPECT_TRUE(found_set.count(runbook.id)) << "both deploy entries match 'deploy rollback'";
    EXPECT_FALSE(found_set.count(oncall.id));
    json first_result = json::parse(results[0]["content"].get<std::string>())["results"][0];
    EXPECT_TRUE(first_result.contains("content"));
    EXPECT_TRUE(first_result.contains("created_at"));

    // Sources: the pre-search hit first, then tool results, each once.
    std::vector<std::string> source_ids = ids_of(a->sources);
    EXPECT_EQ(source_ids[0], rollback.id);
    EXPECT_EQ(std::set<std::string>(source_ids.begin(), source_ids.end()).size(),
              source_ids.size());
    EXPECT_EQ(std::set<std::string>(source_ids.begin(), source_ids.end()),
              (std::set<std::string>{rollback.id, runbook.id}));

    json j = to_json(*a);
    EXPECT_EQ(j["model"], kModel);
    EXPECT_EQ(j["tool_rounds"], 1);
    EXPECT_EQ(j["sources"].size(), 2u);
}

TEST_F(AgentTest, SavesToMemory) {
    build();
    long long before = count();
    const std::string fact = "The staging database moved to db-staging-3 on 2025-01-02.";
    fake->script([&](int n, const json&) -> Turn {
        if (n == 0)
            return {"",
                    {{"toolu_save", "save_to_memory", {{"content", fact}, {"tags", {"staging"}}}}}};
        return {"Saved.", {}};
    });
    auto a = agent->ask(ask_as("Remember: the staging database moved to db-staging-3 today."));
    ASSERT_TRUE(a) << what(a) << " refused: " << json(fake->refused()).dump();
    EXPECT_EQ(a->text, "Saved.");
    ASSERT_EQ(a->saved.size(), 1u);
    EXPECT_EQ(a->saved[0].content, fact);
    EXPECT_EQ(count(), before + 1);

    auto stored = store->get(a->saved[0].id);
    ASSERT_TRUE(stored) << stored.error().message;
    EXPECT_EQ(stored->content, fact);
    EXPECT_EQ(stored->tags, (std::vector<std::string>{"staging"}));
    EXPECT_EQ(stored->source, std::optional<std::string>("agent"));
    EXPECT_EQ(stored->scope, config.store.default_scope);

    json results = tool_results(fake->requests()[1]);
    ASSERT_EQ(results.size(), 1u);
    EXPECT_EQ(results[0]["is_error"], false);
    json saved = json::parse(results[0]["content"].get<std::string>());
    EXPECT_EQ(saved["id"], a->saved[0].id);
    EXPECT_EQ(saved["saved"], true);
    EXPECT_EQ(to_json(*a)["saved"][0]["id"], a->saved[0].id);
}

// A model that asks for tools every time, even when told not to: it gets max_tool_rounds
// rounds, then one last request with tool_choice none, and the agent answers anyway.
TEST_F(AgentTest, ToolRoundsAreBounded) {
    build("anthropic", {{"max_tool_rounds", "2"}});
    add("Deploys happen on Tuesdays.");
    fake->script([&](int n, const json&) -> Turn {
        std::string text = n == 2 ? "Deploys are on Tuesdays." : "";
        return {text, {{"toolu_" + std::to_string(n), "search_memory", {{"query", "deploy day"}}}}};
    });
    auto a = agent->ask(ask_as("When are deploys?"));
    ASSERT_TRUE(a) << what(a) << " refused: " << json(fake->refused()).dump();
    auto requests = fake->requests();
    ASSERT_EQ(requests.size(), 3u) << "max_tool_rounds rounds, then the last request";
    EXPECT_FALSE(requests[0].contains("tool_choice"));
    EXPECT_FALSE(requests[1].contains("tool_choice"));
    EXPECT_EQ(requests[2]["tool_choice"], json::parse(R"({"type":"none"})"));
    // Each round adds the assistant turn and its results.
    EXPECT_EQ(requests[2]["messages"].size(), 5u);
    EXPECT_EQ(a->tool_rounds, 2);
    EXPECT_EQ(a->text, "Deploys are on Tuesdays.");
}

TEST_F(AgentTest, ToolRoundBoundStillGivesAnAnswerWhenTheModelSaysNothing) {
    build("anthropic", {{"max_tool_rounds", "1"}});
    fake->script([&](int n, const json&) -> Turn {
        return {"", {{"toolu_" + std::to_string(n), "search_memory", {{"query", "anything"}}}}};
    });
    auto a = agent->ask(ask_as("Tell me everything."));
    ASSERT_TRUE(a) << what(a) << " refused: " << json(fake->refused()).dump();
    EXPECT_EQ(fake->requests().size(), 2u);
    EXPECT_EQ(fake->requests()[1]["tool_choice"], json::parse(R"({"type":"none"})"));
    EXPECT_EQ(a->tool_rounds, 1);
    EXPECT_FALSE(a->text.empty());
    EXPECT_TRUE(contains(a->text, "1 tool round")) << a->text;
}

TEST_F(AgentTest, ReadOnlyCallerCannotSave) {
    build();
    long long before = count();
    fake->script([&](int n, const json&) -> Turn {
        if (n == 0)
            return {"", {{"toolu_save", "save_to_memory", {{"content", "Readers cannot write."}}}}};
        return {"I could not save that.", {}};
    });
    auto a = agent->ask(ask_as("Remember that readers cannot write.", false));
    ASSERT_TRUE(a) << what(a) << " refused: " << json(fake->refused()).dump();
    EXPECT_TRUE(a->saved.empty());
    EXPECT_EQ(count(), before) << "no row written";
    json results = tool_results(fake->requests()[1]);
    ASSERT_EQ(results.size(), 1u);
    EXPECT_EQ(results[0]["tool_use_id"], "toolu_save");
    EXPECT_EQ(results[0]["is_error"], true);
    EXPECT_TRUE(contains(results[0]["content"].get<std::string>(), "not allowed"))
        << results[0].dump();
}

TEST_F(AgentTest, BadToolArgumentsGoBackToTheModelAsErrors) {
    build();
    fake->script([&](int n, const json&) -> Turn {
        if (n == 0)
            return {"",
                    {{"toolu_a", "search_memory", {{"query", "x"}, {"k", 500}}},
                     {"toolu_b", "delete_everything", json::object()},
                     {"toolu_c", "search_memory", {{"query", "deploy"}}}}};
        return {"Done.", {}};
    });
    auto a = agent->ask(ask_as("Search weirdly."));
    ASSERT_TRUE(a) << what(a) << " refused: " << json(fake->refused()).dump();
    json results = tool_results(fake->requests()[1]);
    ASSERT_EQ(results.size(), 3u) << "one result per call, in order";
    EXPECT_EQ(results[0]["tool_use_id"], "toolu_a");
    EXPECT_EQ(results[0]["is_error"], true);
    EXPECT_EQ(results[1]["tool_use_id"], "toolu_b");
    EXPECT_EQ(results[1]["is_error"], true);
    EXPECT_TRUE(contains(results[1]["content"].get<std::string>(), "unknown tool"));
    EXPECT_EQ(results[2]["tool_use_id"], "toolu_c");
    EXPECT_EQ(results[2]["is_error"], false);
}

TEST_F(AgentTest, ScopeBoundCallerOnlySeesItsScope) {
    build();
    auto a_entry = add("Team A deploys services with Argo CD every morning.", "team-a");
    auto b_entry = add("Team B deploys services with Jenkins every evening.", "team-b");
    fake->script([&](int n, const json&) -> Turn {
        if (n == 0)
            return {"",
                    {{"toolu_s", "search_memory", {{"query", "deploys services"}}},
                     {"toolu_w",
                      "save_to_memory",
                      {{"content", "Team A freezes deploys in December."}}}}};
        return {"Argo CD.", {}};
    });
    auto answer = agent->ask(ask_as("How do teams deploy services?", true, {"team-a"}));
    ASSERT_TRUE(answer) << what(answer) << " refused: " << json(fake->refused()).dump();

    auto requests = fake->requests();
    std::string system = requests[0]["system"].get<std::string>();
    EXPECT_TRUE(contains(system, a_entry.id)) << system;
    EXPECT_FALSE(contains(system, b_entry.id)) << system;
    EXPECT_FALSE(contains(system, "Jenkins")) << system;
    json results = tool_results(requests[1]);
    ASSERT_EQ(results.size(), 2u);
    auto found = result_ids(results[0]["content"]);
    EXPECT_EQ(found, (std::vector<std::string>{a_entry.id}));
    EXPECT_FALSE(contains(results[0]["content"].get<std::string>(), "Jenkins"));
    for (const auto& e : answer->sources) EXPECT_EQ(e.scope, "team-a") << e.content;
    // A save goes to the caller's scope.
    ASSERT_EQ(answer->saved.size(), 1u);
    EXPECT_EQ(answer->saved[0].scope, "team-a");
    EXPECT_EQ(count({"team-b"}), 1);
}

TEST_F(AgentTest, SystemPromptNamesTheAgentAndToday) {
    build("anthropic", {{"name", "Testy McAgent"}, {"prompt", "Always answer in haiku."}});
    fake->script([](int, const json&) -> Turn { return {"Hello.", {}}; });
    std::string before = utc_today();
    auto a = agent->ask(ask_as("Who are you?"));
    std::string after = utc_today();
    ASSERT_TRUE(a) << what(a);
    std::string system = fake->requests()[0]["system"].get<std::string>();
    EXPECT_TRUE(contains(system, "Testy McAgent")) << system;
    EXPECT_TRUE(contains(system, before) || contains(system, after))
        << "today (UTC) " << before << " in: " << system;
    EXPECT_TRUE(contains(system, "Always answer in haiku.")) << system;
    EXPECT_TRUE(contains(system, "search_memory")) << system;
}

TEST_F(AgentTest, HistoryTurnsArePassedInOrder) {
    build();
    fake->script([](int, const json&) -> Turn { return {"You are Ana, on payments.", {}}; });
    Question q = ask_as("Who am I?");
    q.history = {{llm::Message::Role::user, "My name is Ana.", {}, {}},
                 {llm::Message::Role::assistant, "Nice to meet you, Ana.", {}, {}},
                 {llm::Message::Role::user, "I work on the payments team.", {}, {}},
                 {llm::Message::Role::assistant, "Noted.", {}, {}}};
    auto a = agent->ask(q);
    ASSERT_TRUE(a) << what(a) << " refused: " << json(fake->refused()).dump();
    json messages = fake->requests()[0]["messages"];
    ASSERT_EQ(messages.size(), 5u) << messages.dump(2);
    std::vector<std::pair<std::string, std::string>> got;
    for (const auto& m : messages)
        got.emplace_back(m["role"].get<std::string>(), m["content"][0]["text"].get<std::string>());
    EXPECT_EQ(got, (std::vector<std::pair<std::string, std::string>>{
                       {"user", "My name is Ana."},
                       {"assistant", "Nice to meet you, Ana."},
                       {"user", "I work on the payments team."},
                       {"assistant", "Noted."},
                       {"user", "Who am I?"}}));
}

TEST_F(AgentTest, EventsStreamTextAndToolCalls) {
    build();
    auto deploy = add("Deploys happen on Tuesdays after the standup.");
    fake->script([&](int n, const json&) -> Turn {
        if (n == 0)
            return {"Let me check. ", {{"toolu_1", "search_memory", {{"query", "deploy day"}}}}};
        return {"Deploys are on Tuesdays [" + deploy.id + "].", {}};
    });
    std::vector<std::string> deltas;
    std::vector<std::pair<std::string, json>> tools;
    Events events;
    events.on_text = [&](std::string_view d) {
        deltas.emplace_back(d);
        return true;
    };
    events.on_tool = [&](const std::string& name, const json& args) {
        tools.emplace_back(name, args);
        return true;
    };
    auto a = agent->ask(ask_as("When are deploys?"), &events);
    ASSERT_TRUE(a) << what(a) << " refused: " << json(fake->refused()).dump();
    for (const auto& r : fake->requests()) EXPECT_EQ(r["stream"], true);
    std::string joined;
    for (const auto& d : deltas) joined += d;
    EXPECT_EQ(joined, a->text);
    // Rounds are kept apart by a blank line, in the stream as in the answer.
    EXPECT_EQ(a->text, "Let me check. \n\nDeploys are on Tuesdays [" + deploy.id + "].");
    EXPECT_GT(deltas.size(), 2u) << "text arrives in pieces";
    ASSERT_EQ(tools.size(), 1u);
    EXPECT_EQ(tools[0].first, "search_memory");
    EXPECT_EQ(tools[0].second, json::parse(R"({"query":"deploy day"})"));
}

TEST_F(AgentTest, OpenAIWireFormatToolRound) {
    build("openai");
    auto deploy = add("Deploys happen on Tuesdays after the standup.");
    fake->script([&](int n, const json&) -> Turn {
        if (n == 0) return {"", {{"call_1", "search_memory", {{"query", "deploys"}}}}};
        return {"Tuesdays [" + deploy.id + "].", {}};
    });
    auto a = agent->ask(ask_as("When are deploys?"));
    ASSERT_TRUE(a) << what(a) << " refused: " << json(fake->refused()).dump();
    EXPECT_EQ(a->text, "Tuesdays [" + deploy.id + "].");
    EXPECT_EQ(a->tool_rounds, 1);
    auto requests = fake->requests();
    ASSERT_EQ(requests.size(), 2u);
    const json& messages = requests[1]["messages"];
    // system, user, assistant with tool_calls, tool
    ASSERT_EQ(messages.size(), 4u) << messages.dump(2);
    EXPECT_EQ(messages[0]["role"], "system");
    EXPECT_EQ(messages[2]["role"], "assistant");
    EXPECT_EQ(messages[2]["tool_calls"][0]["id"], "call_1");
    EXPECT_EQ(messages[3]["role"], "tool");
    EXPECT_EQ(messages[3]["tool_call_id"], "call_1");
    EXPECT_EQ(result_ids(messages[3]["content"]), (std::vector<std::string>{deploy.id}));

    // Streaming through the same format.
    std::string joined;
    Events events;
    events.on_text = [&](std::string_view d) {
        joined += d;
        return true;
    };
    auto streamed = agent->ask(ask_as("When are deploys?"), &events);
    ASSERT_TRUE(streamed) << what(streamed) << " refused: " << json(fake->refused()).dump();
    EXPECT_EQ(streamed->text, "Tuesdays [" + deploy.id + "].");
    EXPECT_EQ(joined, streamed->text);
}

TEST_F(AgentTest, ModelFailureIsReported) {
    build();
    fake->script(nullptr);  // the fake answers 400 to everything
    auto a = agent->ask(ask_as("Anything?"));
    ASSERT_FALSE(a);
    EXPECT_EQ(a.error().code, ErrorCode::bad_gateway) << what(a);
    EXPECT_TRUE(contains(a.error().message, "Anthropic")) << what(a);
}

TEST_F(AgentTest, EmptyQuestionIsInvalid) {
    build();
    fake->script([](int, const json&) -> Turn { return {"should not be asked", {}}; });
    for (const std::string text : {"", "   ", "\n\t "}) {
        auto a = agent->ask(ask_as(text));
        ASSERT_FALSE(a) << "'" << text << "'";
        EXPECT_EQ(a.error().code, ErrorCode::invalid_argument);
    }
    EXPECT_TRUE(fake->requests().empty());
}

// --- Retrieval-only (llm.provider none) -------------------------------------------------------

TEST_F(AgentTest, RetrievalOnlyListsTheBestEntries) {
    build("none");
    auto runbook = add("The deploy runbook lives at wiki/deploy-runbook.");
    auto rollback = add("Roll back a failed deploy with make rollback.");
    add("Lunch is served at noon in the kitchen.");
    std::string streamed;
    Events events;
    events.on_text = [&](std::string_view d) {
        streamed += d;
        return true;
    };
    auto a = agent->ask(ask_as("where is the deploy runbook?"), &events);
    ASSERT_TRUE(a) << what(a);
    EXPECT_TRUE(contains(a->text, "No LLM is configured")) << a->text;
    EXPECT_TRUE(a->model.empty());
    EXPECT_EQ(a->tool_rounds, 0);
    ASSERT_FALSE(a->sources.empty());
    EXPECT_EQ(a->sources[0].id, runbook.id) << "the best match comes first";
    for (const auto& e : a->sources) {
        EXPECT_TRUE(contains(a->text, e.id)) << a->text;
        EXPECT_TRUE(contains(a->text, e.content)) << a->text;
        EXPECT_TRUE(contains(a->text, e.created_at.substr(0, 10))) << a->text;
    }
    EXPECT_LT(a->text.find(runbook.id), a->text.find(rollback.id)) << a->text;
    EXPECT_EQ(streamed, a->text) << "the answer is passed to on_text too";
    EXPECT_TRUE(to_json(*a)["model"].is_null());
}

TEST_F(AgentTest, RetrievalOnlyRespectsScopes) {
    build("none");
    add("Team A deploys with Argo CD.", "team-a");
    auto b = add("Team B deploys with Jenkins.", "team-b");
    auto a = agent->ask(ask_as("how does the team deploy?", false, {"team-a"}));
    ASSERT_TRUE(a) << what(a);
    EXPECT_FALSE(contains(a->text, b.id)) << a->text;
    EXPECT_FALSE(contains(a->text, "Jenkins")) << a->text;
    for (const auto& e : a->sources) EXPECT_EQ(e.scope, "team-a");
}

TEST_F(AgentTest, RetrievalOnlyWithNothingSaved) {
    build("none");
    auto a = agent->ask(ask_as("where is the deploy runbook?"));
    ASSERT_TRUE(a) << what(a);
    EXPECT_TRUE(contains(a->text, "No LLM is configured")) << a->text;
    EXPECT_TRUE(contains(a->text, "nothing saved matches")) << a->text;
    EXPECT_TRUE(a->sources.empty());
}

TEST_F(AgentTest, RetrievalOnlyEmptyQuestionIsInvalid) {
    build("none");
    auto a = agent->ask(ask_as(" "));
    ASSERT_FALSE(a);
    EXPECT_EQ(a.error().code, ErrorCode::invalid_argument);
}

}  // namespace
}  // namespace ka::agent
