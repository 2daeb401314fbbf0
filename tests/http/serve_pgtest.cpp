// `knowledge-agent serve` as a user runs it: the real binary in the background against real
// PostgreSQL. Graceful shutdown, refusing to expose itself without keys, and logs free of keys.
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/pg.h"
#include "support/server.h"

namespace ka::test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

const std::string kKey = "serve-admin-key-5f0c2b7e9d1a4c3b";

std::string keys_env(const std::string& key) {
    return "KNOWLEDGE_AGENT_AUTH_KEYS=" +
           json::array({{{"name", "ops"}, {"key", key}, {"role", "admin"}}}).dump();
}

httplib::Client client_for(int port) {
    httplib::Client client("127.0.0.1", port);
    client.set_connection_timeout(5s);
    client.set_read_timeout(30s);
    client.set_write_timeout(30s);
    return client;
}

TEST(Serve, SigtermFinishesRequestsInFlightThenExitsZero) {
    TestDatabase db;
    ServeProcess serve({"--port", "0"}, {"POSTGRES_URL=" + db.url(), keys_env(kKey),
                                         "KNOWLEDGE_AGENT_SERVER_SHUTDOWN_GRACE=20"});
    ASSERT_TRUE(serve.wait_ready()) << serve.output();
    const int port = serve.port();

    // A slow import: one line at a time, streamed with chunked encoding, still going when
    // SIGTERM arrives.
    constexpr int kLines = 30;
    std::atomic<int> written{0};
    std::atomic<bool> release{false};
    httplib::Result result{nullptr, httplib::Error::Unknown};
    std::thread slow([&] {
        auto client = client_for(port);
        client.set_bearer_token_auth(kKey);
        result = client.Post(
            "/api/v1/memories:import",
            [&](std::size_t, httplib::DataSink& sink) {
                int n = written.load();
                if (n == kLines) {
                    sink.done();
                    return true;
                }
                // After the first lines, wait for the test to have sent SIGTERM.
                if (n == 3) {
                    for (int i = 0; i < 1000 && !release; ++i) std::this_thread::sleep_for(5ms);
                } else if (n > 3) {
                    std::this_thread::sleep_for(20ms);
                }
                std::string line = json({{"content", fmt::format("Streamed line {} of the slow "
                                                                 "import during shutdown",
                                                                 n)}})
                                       .dump() +
                                   "\n";
                bool ok = sink.write(line.data(), line.size());
                ++written;
                return ok;
            },
            "application/x-ndjson");
    });

    while (written < 3) std::this_thread::sleep_for(5ms);
    // The server has had time to accept the connection and start the handler.
    std::this_thread::sleep_for(200ms);
    serve.signal(SIGTERM);
    // Soon no new connection is accepted, while the import is still streaming.
    bool refused_while_busy = false;
    for (int i = 0; i < 500 && !refused_while_busy; ++i) {
        refused_while_busy = connection_refused(port);
        if (!refused_while_busy) std::this_thread::sleep_for(5ms);
    }
    EXPECT_TRUE(refused_while_busy) << "the listening socket stayed open after SIGTERM";
    EXPECT_LT(written.load(), kLines) << "the import ended before the check; it proves nothing";
    EXPECT_TRUE(serve.running()) << "exited with the import still in flight";
    release = true;
    slow.join();

    ASSERT_TRUE(result) << httplib::to_string(result.error()) << "\n" << serve.output();
    EXPECT_EQ(result->status, 200) << result->body;
    json report = json::parse(result->body, nullptr, false);
    EXPECT_EQ(report["lines"], kLines) << result->body;
    EXPECT_EQ(report["added"], kLines) << result->body;
    EXPECT_TRUE(report["rejected"].empty()) << result->body;

    auto status = serve.wait_exit(30s);
    ASSERT_TRUE(status) << "still running long after SIGTERM\n" << serve.output();
    EXPECT_EQ(*status, 0) << serve.output();
    EXPECT_TRUE(connection_refused(port));
    std::string out = serve.output();
    EXPECT_TRUE(contains(out, "Shutting down")) << out;
    EXPECT_TRUE(contains(out, "Server stopped")) << out;

    // Everything the import sent landed.
    auto counted = db.sql("SELECT count(*) FROM memory_entries");
    EXPECT_EQ(counted.integer(0, 0), kLines);
}

TEST(Serve, IdleServerStopsOnSigint) {
    TestDatabase db;
    ServeProcess serve({"--port", "0"}, {"POSTGRES_URL=" + db.url()});
    ASSERT_TRUE(serve.wait_ready()) << serve.output();
    serve.signal(SIGINT);
    auto status = serve.wait_exit(30s);
    ASSERT_TRUE(status) << serve.output();
    EXPECT_EQ(*status, 0) << serve.output();
    EXPECT_TRUE(connection_refused(serve.port()));
}

TEST(Serve, RefusesAllInterfacesWithoutKeys) {
    TestDatabase db;
    {
        ServeProcess serve({"--host", "0.0.0.0", "--port", "0"}, {"POSTGRES_URL=" + db.url()});
        auto status = serve.wait_exit(60s);
        ASSERT_TRUE(status) << "it serves on 0.0.0.0 without keys\n" << serve.output();
        EXPECT_NE(*status, 0) << serve.output();
        EXPECT_TRUE(contains(serve.output(), "auth.keys")) << serve.output();
        EXPECT_TRUE(contains(serve.output(), "0.0.0.0")) << serve.output();
    }
    {
        // The same from the config (server.host) rather than the flag.
        ServeProcess serve({"--port", "0"},
                           {"POSTGRES_URL=" + db.url(), "KNOWLEDGE_AGENT_SERVER_HOST=0.0.0.0"});
        auto status = serve.wait_exit(60s);
        ASSERT_TRUE(status) << serve.output();
        EXPECT_NE(*status, 0) << serve.output();
        EXPECT_TRUE(contains(serve.output(), "auth.keys")) << serve.output();
    }
    {
        // allow_anonymous opts in: it serves, everyone is admin, and it says so.
        ServeProcess serve(
            {"--host", "0.0.0.0", "--port", "0"},
            {"POSTGRES_URL=" + db.url(), "KNOWLEDGE_AGENT_AUTH_ALLOW_ANONYMOUS=true"});
        ASSERT_TRUE(serve.wait_ready()) << serve.output();
        auto client = client_for(serve.port());
        auto res = client.Get("/api/v1/stats");
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 200) << res->body;
        EXPECT_TRUE(contains(serve.output(), "No API keys configured")) << serve.output();
        serve.signal(SIGTERM);
        auto status = serve.wait_exit(30s);
        ASSERT_TRUE(status);
        EXPECT_EQ(*status, 0) << serve.output();
    }
    {
        // With keys it serves on every interface, and wants them.
        ServeProcess serve({"--host", "0.0.0.0", "--port", "0"},
                           {"POSTGRES_URL=" + db.url(), keys_env(kKey)});
        ASSERT_TRUE(serve.wait_ready()) << serve.output();
        auto client = client_for(serve.port());
        auto res = client.Get("/api/v1/stats");
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 401);
        serve.signal(SIGTERM);
        auto status = serve.wait_exit(30s);
        ASSERT_TRUE(status);
        EXPECT_EQ(*status, 0) << serve.output();
    }
}

TEST(Serve, LogsNeverContainApiKeys) {
    TestDatabase db;
    const std::string wrong = "wrong-key-7a1e93c0b55d4f28";
    const std::string wrong_header = "guess-key-0d6b2c8e4f7a9135";
    for (const char* format : {"console", "json"}) {
        SCOPED_TRACE(format);
        ServeProcess serve({"--port", "0"}, {"POSTGRES_URL=" + db.url(), keys_env(kKey),
                                             "KNOWLEDGE_AGENT_LOG_LEVEL=debug",
                                             std::string("KNOWLEDGE_AGENT_LOG_FORMAT=") + format});
        ASSERT_TRUE(serve.wait_ready()) << serve.output();
        auto client = client_for(serve.port());

        httplib::Headers bearer = {{"Authorization", "Bearer " + kKey}};
        auto saved =
            client.Post("/api/v1/memories", bearer,
                        json({{"content", fmt::format("Logged request {}", format)}}).dump(),
                        "application/json");
        ASSERT_TRUE(saved);
        EXPECT_EQ(saved->status, 201) << saved->body;
        auto searched = client.Post("/api/v1/search", {{"X-API-Key", kKey}},
                                    R"({"query": "logged"})", "application/json");
        ASSERT_TRUE(searched);
        EXPECT_EQ(searched->status, 200);
        for (const char* path : {"/api/v1/memories", "/api/v1/stats", "/metrics",
                                 "/api/v1/memories:export", "/api/v1/memories/zz"}) {
            auto res = client.Get(path, bearer);
            ASSERT_TRUE(res) << path;
        }
        // A failing request (bad JSON) and failed authentications.
        auto bad = client.Post("/api/v1/search", bearer, "{", "application/json");
        ASSERT_TRUE(bad);
        EXPECT_EQ(bad->status, 400);
        auto denied = client.Get("/api/v1/memories", {{"Authorization", "Bearer " + wrong}});
        ASSERT_TRUE(denied);
        EXPECT_EQ(denied->status, 401);
        auto denied_header = client.Get("/api/v1/memories", {{"X-API-Key", wrong_header}});
        ASSERT_TRUE(denied_header);
        EXPECT_EQ(denied_header->status, 401);
        // A key in the query string is not a key, and not logged either.
        auto in_query = client.Get("/api/v1/memories?api_key=" + kKey);
        ASSERT_TRUE(in_query);
        EXPECT_EQ(in_query->status, 401);

        serve.signal(SIGTERM);
        auto status = serve.wait_exit(30s);
        ASSERT_TRUE(status);
        EXPECT_EQ(*status, 0);
        std::string out = serve.output();
        // The log did record the requests, by key name.
        EXPECT_TRUE(contains(out, "401")) << out;
        EXPECT_TRUE(contains(out, "ops")) << out;
        EXPECT_TRUE(contains(out, "/api/v1/search")) << out;
        EXPECT_FALSE(contains(out, kKey)) << out;
        EXPECT_FALSE(contains(out, wrong)) << out;
        EXPECT_FALSE(contains(out, wrong_header)) << out;
        // Nor a recognisable part of one.
        EXPECT_FALSE(contains(out, kKey.substr(0, 16))) << out;
    }
}

}  // namespace
}  // namespace ka::test
