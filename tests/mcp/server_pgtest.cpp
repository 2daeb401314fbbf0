// The MCP server as a client sees it: a scripted JSON-RPC session in process (stringstreams and
// handle_line, on a real store), and the real `knowledge-agent mcp` binary over pipes.
#include "mcp/server.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

#include "db/startup.h"
#include "support/pg.h"
#include "support/test_embedder.h"

extern char** environ;

namespace ka::mcp {
namespace {

using nlohmann::json;
using test::contains;
using namespace std::chrono_literals;

json request(json id, std::string method, json params = nullptr) {
    json m = {{"jsonrpc", "2.0"}, {"id", std::move(id)}, {"method", std::move(method)}};
    if (!params.is_null()) m["params"] = std::move(params);
    return m;
}

json notification(std::string method) {
    return {{"jsonrpc", "2.0"}, {"method", std::move(method)}};
}

json initialize_request(json id, const std::string& version) {
    return request(std::move(id), "initialize",
                   {{"protocolVersion", version},
                    {"capabilities", json::object()},
                    {"clientInfo", {{"name", "scripted-test-client"}, {"version", "1.0"}}}});
}

json call_request(json id, const std::string& tool, json arguments) {
    return request(std::move(id), "tools/call",
                   {{"name", tool}, {"arguments", std::move(arguments)}});
}

store::NewEntry entry(std::string content, std::string scope = "") {
    store::NewEntry e;
    e.content = std::move(content);
    e.scope = std::move(scope);
    return e;
}

agent::Caller writer(std::vector<std::string> scopes = {}) {
    agent::Caller c;
    c.may_write = true;
    if (!scopes.empty()) c.default_scope = scopes.front();
    c.scopes = std::move(scopes);
    return c;
}

class McpServerTest : public ::testing::Test {
  protected:
    test::TestDatabase db;
    config::Config config = test::config_for(db.url());
    test::TestEmbedder embedder;
    std::unique_ptr<db::Pool> pool;
    std::unique_ptr<store::Store> store;

    void SetUp() override {
        auto conn = db.connect();
        ASSERT_TRUE(db::prepare_schema(conn, config, true));
        pool = std::make_unique<db::Pool>(db::Target{db.url(), db.name(), false}, 4, 10);
        store = std::make_unique<store::Store>(*pool, embedder, config);
    }

    // Sends one line; the parsed reply, or null when there is none.
    static json send_line(Server& server, std::string_view line) {
        auto reply = server.handle_line(line);
        if (!reply) return nullptr;
        EXPECT_EQ(reply->find('\n'), std::string::npos) << *reply;
        auto j = json::parse(*reply);
        EXPECT_EQ(j["jsonrpc"], "2.0") << *reply;
        return j;
    }
    static json send(Server& server, const json& message) {
        return send_line(server, message.dump());
    }

    // A server after the handshake.
    std::unique_ptr<Server> session(agent::Caller caller = writer(),
                                    const std::string& version = "2025-06-18") {
        auto server = std::make_unique<Server>(*store, std::move(caller));
        auto init = send(*server, initialize_request(0, version));
        EXPECT_TRUE(init.contains("result")) << init.dump();
        EXPECT_TRUE(send(*server, notification("notifications/initialized")).is_null());
        return server;
    }

    // tools/call: the result object (content, isError, ...), failing the test on protocol errors.
    static json call(Server& server, const std::string& tool, json arguments, int id = 7) {
        auto reply = send(server, call_request(id, tool, std::move(arguments)));
        EXPECT_EQ(reply["id"], id);
        EXPECT_TRUE(reply.contains("result")) << reply.dump();
        return reply.value("result", json::object());
    }
    // The JSON a successful tool call returned in its text content.
    static json payload(const json& result) {
        EXPECT_EQ(result["isError"], false) << result.dump();
        EXPECT_EQ(result["content"].size(), 1u);
        EXPECT_EQ(result["content"][0]["type"], "text");
        return json::parse(result["content"][0]["text"].get<std::string>());
    }
    static std::string error_text(const json& result) {
        EXPECT_EQ(result["isError"], true) << result.dump();
        return result["content"][0]["text"].get<std::string>();
    }
    static std::set<std::string> ids_found(const json& search_payload) {
        std::set<std::string> ids;
        for (const auto& r : search_payload["results"]) ids.insert(r["id"].get<std::string>());
        return ids;
    }
    static void expect_error(const json& reply, int code, const json& id) {
        ASSERT_TRUE(reply.contains("error")) << reply.dump();
        EXPECT_FALSE(reply.contains("result"));
        EXPECT_EQ(reply["error"]["code"], code) << reply.dump();
        EXPECT_TRUE(reply["error"]["message"].is_string());
        EXPECT_FALSE(reply["error"]["message"].get<std::string>().empty());
        EXPECT_EQ(reply["id"], id) << reply.dump();
    }
    long long entries(std::vector<std::string> scopes = {}) {
        store::Filters f;
        f.scopes = std::move(scopes);
        auto n = store->count(f);
        if (!n) throw std::runtime_error(n.error().message);
        return *n;
    }
};

TEST_F(McpServerTest, InitializeNegotiatesTheProtocolVersion) {
    for (const auto& version : supported_protocol_versions()) {
        Server server(*store, writer());
        auto reply = send(server, initialize_request("init-" + version, version));
        ASSERT_TRUE(reply.contains("result")) << reply.dump();
        EXPECT_EQ(reply["id"], "init-" + version);
        const auto& r = reply["result"];
        EXPECT_EQ(r["protocolVersion"], version);
        EXPECT_TRUE(r["capabilities"]["tools"].is_object()) << r.dump();
        EXPECT_EQ(r["serverInfo"]["name"], "knowledge-agent");
        EXPECT_EQ(r["serverInfo"]["version"], KA_VERSION);
        EXPECT_TRUE(r["instructions"].is_string());
        EXPECT_TRUE(server.initialized());
        EXPECT_EQ(server.protocol_version(), version);
    }
    for (const auto& version : {"2025-06-18", "2025-03-26", "2024-11-05"}) {
        EXPECT_NE(std::find(supported_protocol_versions().begin(),
                            supported_protocol_versions().end(), version),
                  supported_protocol_versions().end())
            << version;
    }

    // An unknown revision is answered with the newest one we speak.
    Server future(*store, writer());
    auto reply = send(future, initialize_request(1, "2099-01-01"));
    EXPECT_EQ(reply["result"]["protocolVersion"], supported_protocol_versions().front());

    // initialize happens once.
    expect_error(send(future, initialize_request(2, "2025-06-18")), kInvalidRequest, 2);
    EXPECT_EQ(future.protocol_version(), supported_protocol_versions().front());

    // Bad initialize params are refused without starting the session.
    Server bad(*store, writer());
    expect_error(send(bad, request(3, "initialize")), kInvalidParams, 3);
    expect_error(send(bad, request(4, "initialize", {{"protocolVersion", 20250618}})),
                 kInvalidParams, 4);
    expect_error(send(bad, request(5, "initialize",
                                   {{"protocolVersion", "2025-06-18"}, {"capabilities", "all"}})),
                 kInvalidParams, 5);
    EXPECT_FALSE(bad.initialized());
    EXPECT_TRUE(send(bad, initialize_request(6, "2025-03-26")).contains("result"));
}

TEST_F(McpServerTest, OnlyPingIsServedBeforeInitialize) {
    Server server(*store, writer());
    auto pong = send(server, request(1, "ping"));
    EXPECT_EQ(pong["id"], 1);
    EXPECT_EQ(pong["result"], json::object());
    expect_error(send(server, request(2, "tools/list")), kInvalidRequest, 2);
    expect_error(send(server, call_request(3, "search_memory", {{"query", "x"}})), kInvalidRequest,
                 3);
    expect_error(send(server, request(4, "resources/list")), kMethodNotFound, 4);
    EXPECT_FALSE(server.initialized());
    EXPECT_EQ(entries(), 0);
}

TEST_F(McpServerTest, ToolsListDescribesTheMemoryTools) {
    auto server = session();
    auto reply = send(*server, request("list", "tools/list"));
    EXPECT_EQ(reply["id"], "list");
    const auto& tools = reply["result"]["tools"];
    ASSERT_EQ(tools.size(), 2u) << reply.dump();
    EXPECT_FALSE(reply["result"].contains("nextCursor"));
    const auto& specs = agent::memory_tools();
    for (std::size_t i = 0; i < specs.size(); ++i) {
        EXPECT_EQ(tools[i]["name"], specs[i].name);
        EXPECT_EQ(tools[i]["description"], specs[i].description);
        EXPECT_EQ(tools[i]["inputSchema"], specs[i].input_schema);
        EXPECT_EQ(tools[i]["inputSchema"]["type"], "object");
        EXPECT_TRUE(tools[i]["annotations"].is_object());
    }
    EXPECT_EQ(tools[0]["name"], "search_memory");
    EXPECT_EQ(tools[0]["inputSchema"]["required"], json::array({"query"}));
    EXPECT_EQ(tools[0]["inputSchema"]["properties"]["k"]["type"], "integer");
    EXPECT_EQ(tools[0]["annotations"]["readOnlyHint"], true);
    EXPECT_EQ(tools[1]["name"], "save_to_memory");
    EXPECT_EQ(tools[1]["inputSchema"]["required"], json::array({"content"}));
    EXPECT_EQ(tools[1]["annotations"]["readOnlyHint"], false);

    // params may be an empty object; a cursor we never handed out is invalid.
    EXPECT_EQ(send(*server, request(2, "tools/list", json::object()))["result"]["tools"].size(),
              2u);
    expect_error(send(*server, request(3, "tools/list", {{"cursor", "page-2"}})), kInvalidParams,
                 3);
}

TEST_F(McpServerTest, SaveThenSearchFindsTheSameEntry) {
    auto server = session();
    auto saved_result =
        call(*server, "save_to_memory",
             {{"content", "Deploys happen on Tuesdays; roll back with make rollback"},
              {"tags", {"deploy"}}});
    auto saved = payload(saved_result);
    ASSERT_TRUE(saved["id"].is_string()) << saved.dump();
    EXPECT_EQ(saved["saved"], true);
    // 2025-06-18 and later also get the result as structured content.
    EXPECT_EQ(saved_result["structuredContent"], saved);
    std::string id = saved["id"];

    call(*server, "save_to_memory", {{"content", "The on-call rota lives in PagerDuty"}});

    auto found = payload(
        call(*server, "search_memory", {{"query", "how do I roll back deploys"}, {"k", 5}}));
    ASSERT_FALSE(found["results"].empty()) << found.dump();
    EXPECT_EQ(found["results"][0]["id"], id) << found.dump();
    EXPECT_EQ(found["results"][0]["content"],
              "Deploys happen on Tuesdays; roll back with make rollback");
    EXPECT_EQ(found["results"][0]["tags"], json::array({"deploy"}));
    EXPECT_EQ(found["results"][0]["scope"], "default");

    // Tag filter and k limit.
    auto tagged =
        payload(call(*server, "search_memory", {{"query", "anything"}, {"tags", {"deploy"}}}));
    EXPECT_EQ(ids_found(tagged), std::set<std::string>{id});
    auto one = payload(call(*server, "search_memory", {{"query", "rota deploys"}, {"k", 1}}));
    EXPECT_EQ(one["results"].size(), 1u);

    // Saving the same text again is deduplicated: the same id, nothing new.
    auto again =
        payload(call(*server, "save_to_memory",
                     {{"content", "Deploys happen on Tuesdays; roll back with make rollback"},
                      {"tags", {"deploy"}}}));
    EXPECT_EQ(again["id"], id);
    EXPECT_EQ(again["saved"], false);
    EXPECT_EQ(entries(), 2);
}

TEST_F(McpServerTest, OlderRevisionsGetTextContentOnly) {
    auto server = session(writer(), "2025-03-26");
    auto result = call(*server, "save_to_memory", {{"content", "Postgres runs on port 5432"}});
    EXPECT_TRUE(payload(result)["id"].is_string());
    EXPECT_FALSE(result.contains("structuredContent")) << result.dump();
}

TEST_F(McpServerTest, BadToolArgumentsAreToolErrorsTheModelCanFix) {
    auto server = session();
    EXPECT_TRUE(contains(error_text(call(*server, "search_memory", json::object())), "query"));
    EXPECT_TRUE(contains(error_text(call(*server, "search_memory", {{"query", 42}})), "query"));
    EXPECT_TRUE(
        contains(error_text(call(*server, "search_memory", {{"query", "x"}, {"k", "five"}})), "k"));
    EXPECT_TRUE(contains(error_text(call(*server, "search_memory", {{"query", "x"}, {"k", 0}})),
                         "between 1 and"));
    EXPECT_TRUE(contains(error_text(call(*server, "search_memory", {{"query", "x"}, {"k", 2.5}})),
                         "k must be an integer"));
    EXPECT_TRUE(contains(
        error_text(call(*server, "search_memory", {{"query", "x"}, {"tags", "deploy"}})), "tags"));
    EXPECT_TRUE(contains(error_text(call(*server, "search_memory", {{"query", "x"}, {"limit", 3}})),
                         "unknown argument 'limit'"));
    EXPECT_TRUE(contains(error_text(call(*server, "save_to_memory", {{"text", "x"}})), "text"));
    EXPECT_TRUE(contains(error_text(call(*server, "save_to_memory", {{"content", json::array()}})),
                         "content"));
    EXPECT_TRUE(contains(
        error_text(call(*server, "save_to_memory", {{"content", "x"}, {"tags", {1, 2}}})), "tags"));
    // The store's own validation comes back the same way.
    EXPECT_TRUE(
        contains(error_text(call(*server, "save_to_memory", {{"content", "   "}})), "empty"));
    EXPECT_EQ(entries(), 0);

    // Arguments may be left out (then they are {}): still a tool error, not a protocol error.
    auto no_args = send(*server, request(8, "tools/call", {{"name", "search_memory"}}));
    EXPECT_EQ(no_args["result"]["isError"], true) << no_args.dump();

    // A store failure is a tool error too.
    embedder.failing = true;
    EXPECT_TRUE(
        contains(error_text(call(*server, "save_to_memory", {{"content", "deploys on Fridays"}})),
                 "embedding provider is down"));
    EXPECT_EQ(entries(), 0);
    // A search degrades to full text and tells the model why.
    json degraded = payload(call(*server, "search_memory", {{"query", "deploys"}}));
    EXPECT_TRUE(contains(degraded.value("degraded", ""), "embedding provider is down"))
        << degraded.dump();
}

TEST_F(McpServerTest, MalformedToolCallsAreInvalidParams) {
    auto server = session();
    expect_error(send(*server, call_request(1, "delete_everything", json::object())),
                 kInvalidParams, 1);
    EXPECT_TRUE(contains(
        send(*server, call_request(1, "delete_everything", json::object()))["error"]["message"],
        "unknown tool 'delete_everything'"));
    expect_error(send(*server, request(2, "tools/call")), kInvalidParams, 2);
    expect_error(send(*server, request(3, "tools/call", json::object())), kInvalidParams, 3);
    expect_error(send(*server, request(4, "tools/call", {{"name", 5}})), kInvalidParams, 4);
    expect_error(send(*server, request(5, "tools/call",
                                       {{"name", "search_memory"}, {"arguments", {"query", "x"}}})),
                 kInvalidParams, 5);
    expect_error(send(*server, request(6, "tools/call",
                                       {{"name", "search_memory"}, {"arguments", "query=x"}})),
                 kInvalidParams, 6);
    expect_error(send(*server, request(7, "tools/call", json::array({"search_memory"}))),
                 kInvalidParams, 7);
    expect_error(send(*server, request(8, "tools/list", "all")), kInvalidParams, 8);
}

TEST_F(McpServerTest, ProtocolErrors) {
    auto server = session();
    expect_error(send(*server, request(1, "resources/list")), kMethodNotFound, 1);
    expect_error(send(*server, request("abc", "tools/delete")), kMethodNotFound, "abc");

    // Unparseable lines: -32700 with a null id.
    for (std::string_view line : {std::string_view("{not json"), std::string_view("{\"jsonrpc\":"),
                                  std::string_view("\"unterminated"), std::string_view("nul\0l", 5),
                                  std::string_view("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p"
                                                   "ing\"} trailing")}) {
        expect_error(send_line(*server, line), kParseError, nullptr);
    }
    // Invalid UTF-8 is not JSON.
    expect_error(send_line(*server, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}"),
                 kParseError, nullptr);

    // Valid JSON that is not a valid request: -32600.
    expect_error(send_line(*server, "42"), kInvalidRequest, nullptr);
    expect_error(send_line(*server, "\"ping\""), kInvalidRequest, nullptr);
    expect_error(send_line(*server, "[]"), kInvalidRequest, nullptr);
    expect_error(send(*server, json::array({request(1, "ping"), request(2, "ping")})),
                 kInvalidRequest, nullptr);
    expect_error(send(*server, json{{"id", 9}, {"method", "ping"}}), kInvalidRequest, 9);
    expect_error(send(*server, json{{"jsonrpc", "1.0"}, {"id", 9}, {"method", "ping"}}),
                 kInvalidRequest, 9);
    expect_error(send(*server, json{{"jsonrpc", "2.0"}, {"id", 9}}), kInvalidRequest, 9);
    expect_error(send(*server, json{{"jsonrpc", "2.0"}, {"id", 9}, {"method", 17}}),
                 kInvalidRequest, 9);
    expect_error(send(*server, json{{"jsonrpc", "2.0"}, {"method", 17}}), kInvalidRequest, nullptr);
    for (const json& bad_id :
         {json(nullptr), json(1.5), json::object(), json::array({1}), json(true)}) {
        expect_error(send(*server, json{{"jsonrpc", "2.0"}, {"id", bad_id}, {"method", "ping"}}),
                     kInvalidRequest, nullptr);
    }
    // Deep nesting is refused without harm.
    std::string deep(200000, '[');
    deep += std::string(200000, ']');
    expect_error(send_line(*server, deep), kInvalidRequest, nullptr);
    auto nested = call_request(10, "search_memory", {{"query", "x"}, {"tags", json::array()}});
    std::string deep_args = nested.dump();
    deep_args.replace(deep_args.find("[]"), 2, deep);
    expect_error(send_line(*server, deep_args), kInvalidRequest, nullptr);
    std::string shallow_args = nested.dump();
    shallow_args.replace(shallow_args.find("[]"), 2, std::string(40, '[') + std::string(40, ']'));
    EXPECT_EQ(send_line(*server, shallow_args)["result"]["isError"], true);

    // Responses to requests we never sent, blank lines: no reply.
    EXPECT_TRUE(
        send(*server, json{{"jsonrpc", "2.0"}, {"id", 3}, {"result", json::object()}}).is_null());
    EXPECT_TRUE(send_line(*server, "").is_null());
    EXPECT_TRUE(send_line(*server, "  \r").is_null());

    // A CRLF line ending is accepted; ids of either type are echoed exactly.
    EXPECT_EQ(send_line(*server, request(11, "ping").dump() + "\r")["result"], json::object());
    EXPECT_EQ(send(*server, request("x-1", "ping"))["id"], "x-1");
    EXPECT_EQ(send(*server, request(-3, "ping"))["id"], -3);

    // The session is still fine.
    EXPECT_EQ(send(*server, request(12, "tools/list"))["result"]["tools"].size(), 2u);
}

TEST_F(McpServerTest, NotificationsGetNoReply) {
    Server server(*store, writer());
    EXPECT_TRUE(send(server, initialize_request(1, "2025-06-18")).contains("result"));
    EXPECT_TRUE(send(server, notification("notifications/initialized")).is_null());
    EXPECT_TRUE(send(server, json{{"jsonrpc", "2.0"},
                                  {"method", "notifications/cancelled"},
                                  {"params", {{"requestId", 1}}}})
                    .is_null());
    EXPECT_TRUE(send(server, notification("notifications/whatever")).is_null());
    EXPECT_TRUE(
        send(server, json{{"jsonrpc", "2.0"}, {"method", "ping"}, {"params", 5}}).is_null());
    // A tool call sent as a notification is not run: nobody could see its result.
    EXPECT_TRUE(send(server, json{{"jsonrpc", "2.0"},
                                  {"method", "tools/call"},
                                  {"params",
                                   {{"name", "save_to_memory"},
                                    {"arguments", {{"content", "sent as a notification"}}}}}})
                    .is_null());
    EXPECT_EQ(entries(), 0);
}

TEST_F(McpServerTest, ReadOnlyOffersSearchAndRefusesSaves) {
    ASSERT_TRUE(store->add(entry("Staging is reset every night")));
    agent::Caller reader;  // may_write false
    auto server = session(reader);
    auto tools = send(*server, request(1, "tools/list"))["result"]["tools"];
    ASSERT_EQ(tools.size(), 1u) << tools.dump();
    EXPECT_EQ(tools[0]["name"], "search_memory");

    auto refused = call(*server, "save_to_memory", {{"content", "a new fact"}});
    EXPECT_TRUE(contains(error_text(refused), "read-only")) << refused.dump();
    EXPECT_EQ(entries(), 1);

    auto found = payload(call(*server, "search_memory", {{"query", "when is staging reset"}}));
    EXPECT_EQ(found["results"].size(), 1u);
}

TEST_F(McpServerTest, ScopeLimitsSavesAndSearches) {
    auto other = store->add(entry("Team B deploys with Argo CD", "team-b"));
    auto own = store->add(entry("Team A deploys with Spinnaker", "team-a"));
    ASSERT_TRUE(other && own);

    auto scoped = session(writer({"team-a"}));
    auto saved =
        payload(call(*scoped, "save_to_memory", {{"content", "Team A deploys on Mondays"}}));
    auto stored = store->get(saved["id"].get<std::string>());
    ASSERT_TRUE(stored) << stored.error().message;
    EXPECT_EQ(stored->scope, "team-a");

    auto found = payload(call(*scoped, "search_memory", {{"query", "Team B deploys Argo CD"}}));
    auto ids = ids_found(found);
    EXPECT_FALSE(ids.contains(other->entry.id)) << found.dump();
    EXPECT_TRUE(ids.contains(own->entry.id));
    for (const auto& r : found["results"]) EXPECT_EQ(r["scope"], "team-a");

    // The same text in another scope is a separate entry.
    auto copy =
        payload(call(*scoped, "save_to_memory", {{"content", "Team B deploys with Argo CD"}}));
    EXPECT_EQ(copy["saved"], true);
    EXPECT_NE(copy["id"], other->entry.id);

    // Without a scope: every scope is searched and saves go to store.default_scope.
    auto open = session(writer());
    auto all = ids_found(
        payload(call(*open, "search_memory", {{"query", "Team B deploys Argo CD"}, {"k", 10}})));
    EXPECT_TRUE(all.contains(other->entry.id));
    EXPECT_TRUE(all.contains(own->entry.id));
    auto unscoped = payload(call(*open, "save_to_memory", {{"content", "Lunch is at noon"}}));
    EXPECT_EQ(store->get(unscoped["id"].get<std::string>())->scope, "default");
    EXPECT_EQ(entries({"team-a"}), 3);
    EXPECT_EQ(entries({"team-b"}), 1);
}

TEST_F(McpServerTest, OversizeLinesAreRefusedAndTheSessionGoesOn) {
    Server small(*store, writer(), 1024);
    EXPECT_TRUE(send(small, initialize_request(1, "2025-06-18")).contains("result"));
    auto big = call_request(2, "save_to_memory", {{"content", std::string(2000, 'x')}});
    auto reply = send_line(small, big.dump());
    expect_error(reply, kInvalidRequest, nullptr);
    EXPECT_TRUE(contains(reply["error"]["message"], "too large")) << reply.dump();
    EXPECT_EQ(send(small, request(3, "ping"))["id"], 3);
    EXPECT_EQ(entries(), 0);

    // Through serve() with the real limit: the line is skipped without being kept in memory.
    std::string input = initialize_request(1, "2025-06-18").dump() + "\n";
    input +=
        call_request(2, "save_to_memory", {{"content", std::string(kMaxLineBytes, 'y')}}).dump() +
        "\n";
    input += request(3, "ping").dump() + "\n";
    std::istringstream in(input);
    std::ostringstream out;
    EXPECT_EQ(serve(in, out, *store, writer()), 0);
    std::istringstream lines(out.str());
    std::vector<json> replies;
    for (std::string line; std::getline(lines, line);) replies.push_back(json::parse(line));
    ASSERT_EQ(replies.size(), 3u) << out.str().substr(0, 2000);
    EXPECT_EQ(replies[0]["id"], 1);
    expect_error(replies[1], kInvalidRequest, nullptr);
    EXPECT_EQ(replies[2]["id"], 3);
    EXPECT_EQ(entries(), 0);
}

TEST_F(McpServerTest, ServeAnswersEachRequestAndEndsAtEndOfInput) {
    std::string input;
    input += initialize_request(1, "2024-11-05").dump() + "\n";
    input += notification("notifications/initialized").dump() + "\n";
    input += "\n";
    input += request(2, "tools/list").dump() + "\r\n";
    input +=
        call_request(3, "save_to_memory", {{"content", "Backups run at 02:00 UTC"}}).dump() + "\n";
    input += "this is not json\n";
    input += call_request(4, "search_memory", {{"query", "when do backups run"}}).dump();  // no \n
    std::istringstream in(input);
    std::ostringstream out;
    EXPECT_EQ(serve(in, out, *store, writer()), 0);

    std::istringstream lines(out.str());
    std::vector<json> replies;
    for (std::string line; std::getline(lines, line);) {
        auto j = json::parse(line, nullptr, false);
        ASSERT_FALSE(j.is_discarded()) << line;
        replies.push_back(j);
    }
    ASSERT_EQ(replies.size(), 5u) << out.str();
    EXPECT_EQ(replies[0]["result"]["protocolVersion"], "2024-11-05");
    EXPECT_EQ(replies[1]["id"], 2);
    EXPECT_EQ(replies[2]["id"], 3);
    std::string id = payload(replies[2]["result"])["id"];
    expect_error(replies[3], kParseError, nullptr);
    EXPECT_EQ(replies[4]["id"], 4);
    EXPECT_EQ(payload(replies[4]["result"])["results"][0]["id"], id);

    std::istringstream empty;
    std::ostringstream nothing;
    EXPECT_EQ(serve(empty, nothing, *store, writer()), 0);
    EXPECT_TRUE(nothing.str().empty());

    // A client that went away: serve stops with 1.
    std::istringstream ping(request(1, "ping").dump() + "\n");
    std::ostringstream closed;
    closed.setstate(std::ios::badbit);
    EXPECT_EQ(serve(ping, closed, *store, writer()), 1);
}

// ---- The real binary over pipes -------------------------------------------------------------

// `knowledge-agent mcp <args>` as an MCP client starts it: stdin and stdout are pipes, stderr
// goes to a file.
class McpProcess {
  public:
    McpProcess(const std::vector<std::string>& args, const std::vector<std::string>& env) {
        ::signal(SIGPIPE, SIG_IGN);  // writing to a child that exited must not kill the test
        stderr_path_ = test::unique_dir("mcp-stderr").string() + ".log";
        int in[2], out[2];
        if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0)
            throw std::runtime_error("pipe failed");
        std::vector<std::string> argv = {KA_BINARY, "mcp"};
        argv.insert(argv.end(), args.begin(), args.end());
        std::vector<std::string> envs;
        for (char** e = environ; *e; ++e) {
            std::string entry = *e;
            if (!entry.starts_with("KNOWLEDGE_AGENT_") && !entry.starts_with("POSTGRES_URL=") &&
                !entry.starts_with("XDG_CONFIG_HOME="))
                envs.push_back(entry);
        }
        envs.emplace_back("KNOWLEDGE_AGENT_CONFIG=/dev/null");
        envs.emplace_back("XDG_CONFIG_HOME=/nonexistent");
        envs.insert(envs.end(), env.begin(), env.end());
        std::vector<char*> argp, envp;
        for (auto& a : argv) argp.push_back(a.data());
        argp.push_back(nullptr);
        for (auto& e : envs) envp.push_back(e.data());
        envp.push_back(nullptr);

        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, in[0], 0);
        posix_spawn_file_actions_adddup2(&actions, out[1], 1);
        posix_spawn_file_actions_addopen(&actions, 2, stderr_path_.c_str(),
                                         O_WRONLY | O_CREAT | O_TRUNC, 0644);
        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        sigset_t none, defaults;
        sigemptyset(&none);
        sigemptyset(&defaults);
        for (int s : {SIGTERM, SIGINT, SIGPIPE, SIGHUP}) sigaddset(&defaults, s);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setsigdefault(&attr, &defaults);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        int rc = posix_spawn(&pid_, argp[0], &actions, &attr, argp.data(), envp.data());
        posix_spawn_file_actions_destroy(&actions);
        posix_spawnattr_destroy(&attr);
        ::close(in[0]);
        ::close(out[1]);
        to_child_ = in[1];
        from_child_ = out[0];
        if (rc != 0) throw std::runtime_error(std::string("cannot start: ") + strerror(rc));
    }
    ~McpProcess() {
        close_stdin();
        if (from_child_ >= 0) ::close(from_child_);
        if (!status_) {
            ::kill(pid_, SIGKILL);
            (void)wait_exit(10s);
        }
        std::error_code ec;
        std::filesystem::remove(stderr_path_, ec);
    }
    McpProcess(const McpProcess&) = delete;
    McpProcess& operator=(const McpProcess&) = delete;

    void send(const json& message) { send_raw(message.dump() + "\n"); }
    void send_raw(const std::string& data) {
        std::size_t done = 0;
        while (done < data.size()) {
            ssize_t n = ::write(to_child_, data.data() + done, data.size() - done);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) throw std::runtime_error("the server closed its stdin");
            done += static_cast<std::size_t>(n);
        }
    }
    void close_stdin() {
        if (to_child_ >= 0) ::close(to_child_);
        to_child_ = -1;
    }

    // The next stdout line; nullopt at end of output or when nothing arrives in time.
    std::optional<std::string> read_line(std::chrono::milliseconds timeout = 60s) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
                std::string line = buffer_.substr(0, nl);
                buffer_.erase(0, nl + 1);
                stdout_lines_.push_back(line);
                return line;
            }
            if (eof_) {
                if (!buffer_.empty()) stdout_lines_.push_back(std::exchange(buffer_, {}));
                return std::nullopt;
            }
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) return std::nullopt;
            pollfd p{from_child_, POLLIN, 0};
            int r = ::poll(&p, 1, static_cast<int>(left.count()));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) continue;
            char chunk[65536];
            ssize_t n = ::read(from_child_, chunk, sizeof chunk);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                eof_ = true;
                continue;
            }
            buffer_.append(chunk, static_cast<std::size_t>(n));
        }
    }
    json read_json(std::chrono::milliseconds timeout = 60s) {
        auto line = read_line(timeout);
        if (!line) throw std::runtime_error("no reply; stderr:\n" + stderr_text());
        auto j = json::parse(*line, nullptr, false);
        if (j.is_discarded()) throw std::runtime_error("not JSON on stdout: " + *line);
        return j;
    }

    std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!status_) {
            int status = 0;
            pid_t r = ::waitpid(pid_, &status, WNOHANG);
            if (r == pid_) {
                status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                break;
            }
            if (r < 0) {
                status_ = -1;
                break;
            }
            if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
            std::this_thread::sleep_for(10ms);
        }
        return status_;
    }

    std::string stderr_text() const {
        std::ifstream in(stderr_path_);
        std::ostringstream s;
        s << in.rdbuf();
        return s.str();
    }
    // Every stdout line read so far.
    const std::vector<std::string>& stdout_lines() const { return stdout_lines_; }

  private:
    pid_t pid_ = -1;
    int to_child_ = -1;
    int from_child_ = -1;
    bool eof_ = false;
    std::string buffer_;
    std::vector<std::string> stdout_lines_;
    std::optional<int> status_;
    std::string stderr_path_;
};

TEST(McpBinary, ServesAClientOverStdio) {
    test::TestDatabase db;
    // Debug logging on, so every start-up and per-call log line is produced; none may reach
    // stdout.
    McpProcess mcp({}, {"POSTGRES_URL=" + db.url(), "KNOWLEDGE_AGENT_LOG_LEVEL=debug"});

    mcp.send(initialize_request(1, "2025-03-26"));
    auto init = mcp.read_json();
    EXPECT_EQ(init["id"], 1);
    EXPECT_EQ(init["result"]["protocolVersion"], "2025-03-26") << init.dump();
    EXPECT_EQ(init["result"]["serverInfo"]["name"], "knowledge-agent");
    mcp.send(notification("notifications/initialized"));

    mcp.send(request(2, "tools/list"));
    auto tools = mcp.read_json();
    ASSERT_EQ(tools["result"]["tools"].size(), 2u) << tools.dump();

    mcp.send(call_request(3, "save_to_memory",
                          {{"content", "The VPN config is in the infra repo"}, {"tags", {"vpn"}}}));
    auto saved = mcp.read_json();
    EXPECT_EQ(saved["id"], 3);
    ASSERT_EQ(saved["result"]["isError"], false) << saved.dump();
    auto id = json::parse(saved["result"]["content"][0]["text"].get<std::string>())["id"];

    mcp.send(call_request(4, "search_memory", {{"query", "where is the VPN config"}}));
    auto found = mcp.read_json();
    auto results = json::parse(found["result"]["content"][0]["text"].get<std::string>())["results"];
    ASSERT_FALSE(results.empty()) << found.dump();
    EXPECT_EQ(results[0]["id"], id);

    mcp.send_raw("{\"jsonrpc\": \"2.0\", \"id\": 5, \"method\": \"tools/call\"\n");
    auto parse_error = mcp.read_json();
    EXPECT_EQ(parse_error["error"]["code"], kParseError);
    EXPECT_TRUE(parse_error["id"].is_null());

    mcp.send(request(6, "no/such/method"));
    EXPECT_EQ(mcp.read_json()["error"]["code"], kMethodNotFound);

    // End of input: the server stops cleanly, and says nothing more on stdout.
    mcp.close_stdin();
    EXPECT_FALSE(mcp.read_line(30s).has_value());
    EXPECT_EQ(mcp.wait_exit(30s), 0) << mcp.stderr_text();

    ASSERT_EQ(mcp.stdout_lines().size(), 6u);
    for (const auto& line : mcp.stdout_lines()) {
        auto j = json::parse(line, nullptr, false);
        ASSERT_FALSE(j.is_discarded()) << "stdout carried a non-JSON line: " << line;
        EXPECT_EQ(j["jsonrpc"], "2.0") << line;
        EXPECT_TRUE(j.contains("id"));
        EXPECT_NE(j.contains("result"), j.contains("error")) << line;
    }
    // The logs went to stderr.
    auto err = mcp.stderr_text();
    EXPECT_TRUE(contains(err, "Starting database migrations")) << err;
    EXPECT_TRUE(contains(err, "MCP server ready")) << err;
    EXPECT_TRUE(contains(err, "MCP session started")) << err;
}

TEST(McpBinary, ReadOnlyAndScopeOptions) {
    test::TestDatabase db;
    {
        McpProcess writer_process({"--scope", "team-x"}, {"POSTGRES_URL=" + db.url()});
        writer_process.send(initialize_request(1, "2025-06-18"));
        ASSERT_TRUE(writer_process.read_json().contains("result"));
        writer_process.send(
            call_request(2, "save_to_memory", {{"content", "Team X owns billing"}}));
        auto saved = writer_process.read_json();
        ASSERT_EQ(saved["result"]["isError"], false) << saved.dump();
        writer_process.close_stdin();
        EXPECT_EQ(writer_process.wait_exit(30s), 0) << writer_process.stderr_text();
    }
    EXPECT_EQ(db.sql("SELECT scope FROM memory_entries").text(0, 0), "team-x");

    McpProcess reader({"--read-only", "--scope", "team-y"}, {"POSTGRES_URL=" + db.url()});
    reader.send(initialize_request(1, "2025-06-18"));
    ASSERT_TRUE(reader.read_json().contains("result"));
    reader.send(request(2, "tools/list"));
    auto tools = reader.read_json()["result"]["tools"];
    ASSERT_EQ(tools.size(), 1u);
    EXPECT_EQ(tools[0]["name"], "search_memory");
    reader.send(call_request(3, "save_to_memory", {{"content", "should not be saved"}}));
    EXPECT_EQ(reader.read_json()["result"]["isError"], true);
    reader.send(call_request(4, "search_memory", {{"query", "who owns billing"}}));
    auto found = reader.read_json();
    EXPECT_EQ(found["result"]["structuredContent"]["results"], json::array()) << found.dump();
    reader.close_stdin();
    EXPECT_EQ(reader.wait_exit(30s), 0);
    EXPECT_EQ(db.sql("SELECT count(*) FROM memory_entries").integer(0, 0), 1);

    // An invalid scope fails at start, with nothing on stdout.
    McpProcess bad({"--scope", "not a scope!"}, {"POSTGRES_URL=" + db.url()});
    EXPECT_FALSE(bad.read_line(60s).has_value());
    EXPECT_EQ(bad.wait_exit(30s), 2) << bad.stderr_text();
    EXPECT_TRUE(contains(bad.stderr_text(), "scope")) << bad.stderr_text();
    EXPECT_TRUE(bad.stdout_lines().empty());
}

}  // namespace
}  // namespace ka::mcp
