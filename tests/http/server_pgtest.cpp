// The HTTP API in-process against real PostgreSQL: a Server on a loopback port over a real
// store, driven with httplib::Client. Endpoints, validation, auth roles and scopes, rate
// limiting, concurrency, and a database restart while serving.
#include "http/server.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "agent/agent.h"
#include "db/embedded.h"
#include "db/startup.h"
#include "embed/embedder.h"
#include "llm/llm.h"
#include "log/log.h"
#include "support/pg.h"
#include "support/served.h"

namespace ka::http {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// Plaintext keys (at least 16 characters, as the config demands).
const std::string kAdmin = "admin-key-0123456789abcdef";
const std::string kWriter = "writer-key-0123456789abcdef";
const std::string kReader = "reader-key-0123456789abcdef";
// Configured only by its SHA-256 (`printf %s hashed-key-0123456789abcdef | sha256sum`).
const std::string kHashed = "hashed-key-0123456789abcdef";
const std::string kHashedSha256 =
    "befb5785adc7cb4b9802bc48c01815ec8593f81e424914c0a5010e9a8a90a645";
// An admin key bound to scope team-a.
const std::string kTeamA = "team-a-key-0123456789abcdef";

struct Options {
    bool keys = true;
    int requests_per_second = 0;  // rate limiting off unless a test wants it
    int burst = 1;
    int pool_size = 4;
    int connect_timeout = 5;
    int workers = 8;
};

// The configuration YAML; postgres.url comes from POSTGRES_URL (conninfo strings may hold
// quotes).
std::string yaml_for(const Options& o) {
    std::string y = fmt::format(
        "postgres:\n"
        "  pool_size: {}\n"
        "  connect_timeout: {}\n"
        "embedding:\n"
        "  dimensions: 256\n"
        "search:\n"
        "  max_k: 20\n"
        "server:\n"
        "  host: 127.0.0.1\n"
        "  port: 0\n"
        "  workers: {}\n"
        "  max_body_bytes: 4096\n"
        "  max_import_bytes: 65536\n"
        "  request_timeout: 30\n"
        "rate_limit:\n"
        "  requests_per_second: {}\n"
        "  burst: {}\n",
        o.pool_size, o.connect_timeout, o.workers, o.requests_per_second, o.burst);
    if (o.keys) {
        y += fmt::format(
            "auth:\n"
            "  keys:\n"
            "    - {{name: admin, key: {}, role: admin}}\n"
            "    - {{name: writer, key: {}, role: write}}\n"
            "    - {{name: reader, key: {}, role: read}}\n"
            "    - {{name: hashed, key_sha256: {}, role: read}}\n"
            "    - {{name: team-a, key: {}, role: admin, scopes: [team-a]}}\n",
            kAdmin, kWriter, kReader, kHashedSha256, kTeamA);
    }
    return y;
}

// Percent-encodes a query parameter value.
std::string encode(std::string_view value) {
    std::string out;
    for (unsigned char c : value) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += fmt::format("%{:02X}", c);
        }
    }
    return out;
}

struct Reply {
    int status = 0;     // 0: no HTTP response at all
    std::string error;  // the transport error then
    std::string body;
    httplib::Headers headers;

    std::string header(const std::string& name) const {
        auto it = headers.find(name);
        return it == headers.end() ? std::string() : it->second;
    }
    json j() const { return json::parse(body, nullptr, false); }
};

std::ostream& operator<<(std::ostream& os, const Reply& r) {
    return os << "HTTP " << r.status << " " << r.error << " " << r.body.substr(0, 400);
}

httplib::Headers bearer(const std::string& key) {
    if (key.empty()) return {};
    return {{"Authorization", "Bearer " + key}};
}

// One request on a fresh connection (no keep-alive, so no idle connection holds a worker).
// `timeout` bounds the wait for the answer: a hang shows as a transport error.
Reply send(int port, const std::string& method, const std::string& path, httplib::Headers headers,
           const std::string& body = {}, const std::string& content_type = "application/json",
           std::chrono::seconds timeout = 60s) {
    httplib::Client client("127.0.0.1", port);
    client.set_url_encode(false);
    client.set_connection_timeout(5s);
    client.set_read_timeout(timeout);
    client.set_write_timeout(timeout);
    httplib::Request req;
    req.method = method;
    req.path = path;
    req.headers = std::move(headers);
    if (!body.empty() || method == "POST" || method == "PATCH") {
        req.body = body;
        req.headers.emplace("Content-Type", content_type);
    }
    auto res = client.send(req);
    Reply r;
    if (!res) {
        r.error = httplib::to_string(res.error());
        return r;
    }
    r.status = res->status;
    r.body = res->body;
    r.headers = res->headers;
    return r;
}

// Asserts an error in the API's shape: {"error": {"code", "message", "hint"?}}.
void expect_error(const Reply& r, int status, const std::string& code) {
    EXPECT_EQ(r.status, status) << r;
    EXPECT_TRUE(r.header("Content-Type").starts_with("application/json")) << r;
    json j = r.j();
    ASSERT_TRUE(j.is_object()) << r;
    ASSERT_TRUE(j.contains("error") && j["error"].is_object()) << r;
    EXPECT_EQ(j["error"].value("code", ""), code) << r;
    EXPECT_TRUE(j["error"]["message"].is_string() && !j["error"]["message"].empty()) << r;
    if (j["error"].contains("hint")) {
        EXPECT_TRUE(j["error"]["hint"].is_string()) << r;
    }
}

class ServerTest : public ::testing::Test {
  protected:
    static void SetUpTestSuite() { log::configure("warn", "console"); }

    test::TestDatabase db;
    std::unique_ptr<test::Served> served;

    void SetUp() override { served = std::make_unique<test::Served>(db.url(), yaml_for({})); }
    void TearDown() override { served.reset(); }

    int port() const { return served->port(); }
    Reply get(const std::string& path, const std::string& key = kAdmin) {
        return send(port(), "GET", path, bearer(key));
    }
    Reply post(const std::string& path, const json& body, const std::string& key = kAdmin) {
        return send(port(), "POST", path, bearer(key), body.dump());
    }
    Reply post_raw(const std::string& path, const std::string& body,
                   const std::string& key = kAdmin,
                   const std::string& content_type = "application/json") {
        return send(port(), "POST", path, bearer(key), body, content_type);
    }
    Reply patch(const std::string& path, const json& body, const std::string& key = kAdmin) {
        return send(port(), "PATCH", path, bearer(key), body.dump());
    }
    Reply del(const std::string& path, const std::string& key = kAdmin) {
        return send(port(), "DELETE", path, bearer(key));
    }
    Reply import(const std::string& ndjson, const std::string& key = kAdmin,
                 const std::string& query = "") {
        return post_raw("/api/v1/memories:import" + query, ndjson, key, "application/x-ndjson");
    }

    // Saves and returns the entry, failing the test unless it was created.
    json save_body(const json& body, const std::string& key = kAdmin) {
        Reply r = post("/api/v1/memories", body, key);
        EXPECT_EQ(r.status, 201) << r;
        return r.j();
    }
    json save(const std::string& content, const std::string& scope = "",
              const std::vector<std::string>& tags = {}) {
        json body = {{"content", content}};
        if (!scope.empty()) body["scope"] = scope;
        if (!tags.empty()) body["tags"] = tags;
        return save_body(body);
    }
    json search(const json& body, const std::string& key = kAdmin) {
        Reply r = post("/api/v1/search", body, key);
        EXPECT_EQ(r.status, 200) << body.dump() << " -> " << r;
        return r.j();
    }
};

std::vector<json> ndjson_lines(const std::string& text) {
    std::vector<json> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        if (line.empty()) continue;
        out.push_back(json::parse(line, nullptr, false));
    }
    return out;
}

std::set<std::string> field_set(const json& entries, const char* field) {
    std::set<std::string> out;
    for (const auto& e : entries) out.insert(e.at(field).get<std::string>());
    return out;
}

// --- memories ---------------------------------------------------------------------------------

TEST_F(ServerTest, SaveAnswers201ThenDeduplicatesWith200) {
    json body = {{"content", "Deploys happen on Tuesdays; roll back with make rollback."},
                 {"tags", {"deploy", "ops"}},
                 {"metadata", {{"team", "platform"}}},
                 {"source", "https://wiki.example.com/deploys"},
                 {"author", "ana"}};
    Reply first = post("/api/v1/memories", body);
    ASSERT_EQ(first.status, 201) << first;
    EXPECT_TRUE(first.header("Content-Type").starts_with("application/json"));
    json e = first.j();
    EXPECT_EQ(e["created"], true);
    EXPECT_EQ(e["content"], body["content"]);
    EXPECT_EQ(e["scope"], "default");
    EXPECT_EQ(e["tags"], json({"deploy", "ops"}));
    EXPECT_EQ(e["metadata"]["team"], "platform");
    EXPECT_EQ(e["source"], "https://wiki.example.com/deploys");
    EXPECT_EQ(e["author"], "ana");
    EXPECT_TRUE(e["embedding_model"].get<std::string>().starts_with("builtin-lexical-v1")) << e;
    ASSERT_TRUE(e["id"].is_string());
    EXPECT_EQ(e["id"].get<std::string>().size(), 36u);

    Reply again = post("/api/v1/memories", {{"content", body["content"]}});
    ASSERT_EQ(again.status, 200) << again;
    EXPECT_EQ(again.j()["created"], false);
    EXPECT_EQ(again.j()["id"], e["id"]);

    // The same text in another scope is another entry.
    Reply other = post("/api/v1/memories", {{"content", body["content"]}, {"scope", "other"}});
    ASSERT_EQ(other.status, 201) << other;
    EXPECT_NE(other.j()["id"], e["id"]);
}

TEST_F(ServerTest, SaveRejectsBadBodies) {
    expect_error(post("/api/v1/memories", json::object()), 400, "invalid_argument");
    expect_error(post("/api/v1/memories", {{"content", 5}}), 400, "invalid_argument");
    expect_error(post("/api/v1/memories", {{"content", ""}}), 400, "invalid_argument");
    expect_error(post("/api/v1/memories", {{"content", "x"}, {"colour", "red"}}), 400,
                 "invalid_argument");
    expect_error(post("/api/v1/memories", {{"content", "x"}, {"tags", "not-a-list"}}), 400,
                 "invalid_argument");
    expect_error(post("/api/v1/memories", {{"content", "x"}, {"metadata", {1, 2}}}), 400,
                 "invalid_argument");
    expect_error(post_raw("/api/v1/memories", "{\"content\": \"unterminated"), 400,
                 "invalid_argument");
    expect_error(post_raw("/api/v1/memories", ""), 400, "invalid_argument");
    expect_error(post_raw("/api/v1/memories", "[{\"content\": \"x\"}]"), 400, "invalid_argument");
    // Nested deeper than the parser allows.
    std::string deep = "{\"content\": \"x\", \"metadata\": ";
    for (int i = 0; i < 40; ++i) deep += "{\"a\": ";
    deep += "1";
    for (int i = 0; i < 40; ++i) deep += "}";
    deep += "}";
    expect_error(post_raw("/api/v1/memories", deep), 400, "invalid_argument");

    // Over server.max_body_bytes (4096): refused by the server's own limit.
    std::string big = json({{"content", std::string(5000, 'a')}}).dump();
    expect_error(post_raw("/api/v1/memories", big), 413, "payload_too_large");
    // Over the transport limit (max(max_body_bytes, max_import_bytes) = 64 KiB): httplib's
    // refusal, still as JSON.
    std::string huge = json({{"content", std::string(70000, 'a')}}).dump();
    Reply r = post_raw("/api/v1/memories", huge);
    EXPECT_EQ(r.status, 413) << r;
    EXPECT_TRUE(r.j().contains("error")) << r;

    // Nothing was stored by any of it.
    Reply list = get("/api/v1/memories");
    ASSERT_EQ(list.status, 200) << list;
    EXPECT_TRUE(list.j()["entries"].empty()) << list;
}

TEST_F(ServerTest, GetPatchDelete) {
    json e = save_body(json{{"content", "The staging database is reset every night at 02:00 UTC."},
                            {"tags", {"staging"}},
                            {"source", "runbook"}});
    std::string path = "/api/v1/memories/" + e["id"].get<std::string>();

    Reply got = get(path);
    ASSERT_EQ(got.status, 200) << got;
    EXPECT_EQ(got.j()["content"], e["content"]);
    EXPECT_EQ(got.j()["id"], e["id"]);
    EXPECT_FALSE(got.j().contains("created"));

    Reply patched = patch(path, {{"content", "The staging database is reset every night at 03:00."},
                                 {"tags", {"staging", "db"}},
                                 {"metadata", {{"owner", "dba"}}},
                                 {"source", nullptr}});
    ASSERT_EQ(patched.status, 200) << patched;
    EXPECT_EQ(patched.j()["content"], "The staging database is reset every night at 03:00.");
    EXPECT_EQ(patched.j()["tags"], json({"staging", "db"}));
    EXPECT_EQ(patched.j()["metadata"]["owner"], "dba");
    EXPECT_TRUE(patched.j()["source"].is_null());
    EXPECT_EQ(get(path).j()["content"], patched.j()["content"]);
    // The new text is what search finds now.
    json hits = search({{"query", "reset every night 03:00"}, {"mode", "text"}});
    ASSERT_FALSE(hits["results"].empty()) << hits;
    EXPECT_EQ(hits["results"][0]["id"], e["id"]);

    expect_error(patch(path, {{"content", 5}}), 400, "invalid_argument");
    expect_error(patch(path, {{"tags", "one"}}), 400, "invalid_argument");
    expect_error(patch(path, {{"metadata", "x"}}), 400, "invalid_argument");
    expect_error(patch(path, {{"scope", "elsewhere"}}), 400, "invalid_argument");
    expect_error(patch(path, {{"author", 7}}), 400, "invalid_argument");
    expect_error(send(port(), "PATCH", path, bearer(kAdmin), "{oops"), 400, "invalid_argument");

    // Unknown, malformed and impossible ids: 4xx JSON, never 5xx.
    const std::string unknown = "/api/v1/memories/0190b7a8-0000-7000-8000-000000000000";
    expect_error(get(unknown), 404, "not_found");
    expect_error(patch(unknown, {{"content", "x"}}), 404, "not_found");
    expect_error(del(unknown), 404, "not_found");
    expect_error(get("/api/v1/memories/abc"), 400, "invalid_argument");
    expect_error(del("/api/v1/memories/abc-def"), 400, "invalid_argument");
    for (const std::string& bad :
         std::vector<std::string>{"/api/v1/memories/not-a-uuid!", "/api/v1/memories/xyz",
                                  "/api/v1/memories/" + std::string(80, 'a')}) {
        Reply r = get(bad);
        EXPECT_GE(r.status, 400) << bad << " " << r;
        EXPECT_LT(r.status, 500) << bad << " " << r;
        EXPECT_TRUE(r.j().contains("error")) << bad << " " << r;
    }

    Reply deleted = del(path);
    EXPECT_EQ(deleted.status, 204) << deleted;
    expect_error(get(path), 404, "not_found");
    expect_error(del(path), 404, "not_found");
}

TEST_F(ServerTest, ListFiltersLimitAndCursor) {
    std::vector<std::string> ids;
    for (int i = 0; i < 7; ++i) {
        std::string scope = i < 4 ? "alpha" : "beta";
        std::vector<std::string> tags = {i % 2 == 0 ? "even" : "odd"};
        json body = {{"content", fmt::format("List entry number {} about topic {}", i, i * 7)},
                     {"scope", scope},
                     {"tags", tags}};
        if (i == 3) body["source"] = "special-source";
        ids.push_back(save_body(body)["id"].get<std::string>());
    }

    Reply all = get("/api/v1/memories");
    ASSERT_EQ(all.status, 200) << all;
    EXPECT_EQ(all.j()["entries"].size(), 7u);
    EXPECT_TRUE(all.j()["next_cursor"].is_null());

    // Pages of 3, newest first, every entry exactly once.
    std::vector<std::string> paged;
    std::string cursor;
    int pages = 0;
    do {
        std::string path = "/api/v1/memories?limit=3";
        if (!cursor.empty()) path += "&cursor=" + encode(cursor);
        Reply page = get(path);
        ASSERT_EQ(page.status, 200) << page;
        json j = page.j();
        EXPECT_LE(j["entries"].size(), 3u);
        for (const auto& e : j["entries"]) paged.push_back(e["id"].get<std::string>());
        cursor = j["next_cursor"].is_null() ? "" : j["next_cursor"].get<std::string>();
        ASSERT_LT(++pages, 10);
    } while (!cursor.empty());
    EXPECT_EQ(pages, 3);
    std::vector<std::string> newest_first(ids.rbegin(), ids.rend());
    EXPECT_EQ(paged, newest_first);

    Reply alpha = get("/api/v1/memories?scope=alpha");
    ASSERT_EQ(alpha.status, 200) << alpha;
    EXPECT_EQ(alpha.j()["entries"].size(), 4u);
    EXPECT_EQ(field_set(alpha.j()["entries"], "scope"), std::set<std::string>{"alpha"});

    Reply both = get("/api/v1/memories?scope=alpha&scope=beta&limit=100");
    EXPECT_EQ(both.j()["entries"].size(), 7u) << both;

    Reply even = get("/api/v1/memories?tag=even");
    ASSERT_EQ(even.status, 200) << even;
    EXPECT_EQ(even.j()["entries"].size(), 4u) << even;
    Reply beta_odd = get("/api/v1/memories?scope=beta&tag=odd");
    EXPECT_EQ(beta_odd.j()["entries"].size(), 1u) << beta_odd;

    Reply by_source = get("/api/v1/memories?source=special-source");
    ASSERT_EQ(by_source.j()["entries"].size(), 1u) << by_source;
    EXPECT_EQ(by_source.j()["entries"][0]["id"], ids[3]);

    Reply future = get("/api/v1/memories?created_after=" + encode("2999-01-01T00:00:00Z"));
    ASSERT_EQ(future.status, 200) << future;
    EXPECT_TRUE(future.j()["entries"].empty());
    Reply past = get("/api/v1/memories?created_before=" + encode("2999-01-01T00:00:00Z"));
    EXPECT_EQ(past.j()["entries"].size(), 7u) << past;

    expect_error(get("/api/v1/memories?limit=0"), 400, "invalid_argument");
    expect_error(get("/api/v1/memories?limit=1001"), 400, "invalid_argument");
    expect_error(get("/api/v1/memories?limit=abc"), 400, "invalid_argument");
    expect_error(get("/api/v1/memories?limit=5x"), 400, "invalid_argument");
    expect_error(get("/api/v1/memories?cursor=garbage"), 400, "invalid_argument");
    expect_error(get("/api/v1/memories?created_after=yesterday"), 400, "invalid_argument");
}

// --- search -----------------------------------------------------------------------------------

TEST_F(ServerTest, SearchOptions) {
    save("PostgreSQL backups run nightly with pg_dump to the S3 bucket", "ops", {"backup"});
    save("Rotate the TLS certificates every ninety days", "ops", {"security"});
    save("The frontend is built with Vite and deployed to the CDN", "web", {"frontend"});
    save("Backups of the Redis cache are not needed; it is rebuilt on start", "web", {"backup"});

    json hits = search({{"query", "PostgreSQL backups with pg_dump"}});
    ASSERT_FALSE(hits["results"].empty()) << hits;
    EXPECT_EQ(hits["results"][0]["content"],
              "PostgreSQL backups run nightly with pg_dump to the S3 bucket");
    int rank = 0;
    for (const auto& h : hits["results"]) {
        EXPECT_EQ(h["rank"], ++rank);
        EXPECT_TRUE(h["similarity"].is_number());
        EXPECT_TRUE(h["score"].is_number());
        EXPECT_TRUE(h["id"].is_string());
    }

    EXPECT_EQ(search({{"query", "backups"}, {"k", 1}})["results"].size(), 1u);
    for (const char* mode : {"vector", "text", "hybrid"}) {
        json r = search({{"query", "TLS certificates"}, {"mode", mode}, {"k", 2}});
        ASSERT_FALSE(r["results"].empty()) << mode;
        EXPECT_LE(r["results"].size(), 2u) << mode;
        EXPECT_EQ(r["results"][0]["content"], "Rotate the TLS certificates every ninety days")
            << mode;
    }

    json web = search({{"query", "backups"}, {"filters", {{"scopes", {"web"}}}}});
    ASSERT_FALSE(web["results"].empty());
    EXPECT_EQ(field_set(web["results"], "scope"), std::set<std::string>{"web"});
    json tagged = search({{"query", "backups"}, {"filters", {{"tags", {"backup"}}}}, {"k", 10}});
    EXPECT_EQ(tagged["results"].size(), 2u) << tagged;
    json single_scope = search({{"query", "backups"}, {"filters", {{"scopes", "ops"}}}});
    EXPECT_EQ(field_set(single_scope["results"], "scope"), std::set<std::string>{"ops"});

    // A high similarity floor drops weak vector matches; ef_search is accepted.
    json loose = search({{"query", "certificates"}, {"mode", "vector"}, {"k", 10}});
    json strict = search(
        {{"query", "certificates"}, {"mode", "vector"}, {"k", 10}, {"min_similarity", 0.99}});
    EXPECT_LT(strict["results"].size(), loose["results"].size());
    for (const auto& h : strict["results"]) EXPECT_GE(h["similarity"].get<double>(), 0.99);
    json tuned = search({{"query", "certificates"}, {"ef_search", 100}, {"k", 3}});
    EXPECT_FALSE(tuned["results"].empty());
    // Explicit nulls mean "the default".
    json nulls = search({{"query", "certificates"},
                         {"k", nullptr},
                         {"mode", nullptr},
                         {"filters", nullptr},
                         {"min_similarity", nullptr},
                         {"ef_search", nullptr}});
    EXPECT_FALSE(nulls["results"].empty());
}

TEST_F(ServerTest, SearchValidation) {
    save("Something to find", "ops");
    const std::vector<json> bad = {
        {{"query", "x"}, {"k", "5"}},
        {{"query", "x"}, {"k", 1.5}},
        {{"query", "x"}, {"k", 0}},
        {{"query", "x"}, {"k", -3}},
        {{"query", "x"}, {"k", 21}},  // search.max_k is 20 here
        {{"query", "x"}, {"k", 5000000000LL}},
        {{"query", "x"}, {"mode", "bogus"}},
        {{"query", "x"}, {"mode", 1}},
        {{"query", "x"}, {"min_similarity", 2}},
        {{"query", "x"}, {"min_similarity", "high"}},
        {{"query", "x"}, {"ef_search", 0}},
        {{"query", "x"}, {"ef_search", 1001}},
        {{"query", "x"}, {"ef_search", "many"}},
        {{"query", "x"}, {"filters", "ops"}},
        {{"query", "x"}, {"filters", {{"scope", {"ops"}}}}},
        {{"query", "x"}, {"filters", {{"tags", {1, 2}}}}},
        {{"query", "x"}, {"filters", {{"source", 3}}}},
        {{"query", "x"}, {"filters", {{"created_after", "not a time"}}}},
        {{"query", "x"}, {"q", "unknown field"}},
        {{"k", 3}},
        {{"query", 5}},
        {{"query", ""}},
        {{"query", "   "}, {"mode", "text"}},
    };
    for (const auto& body : bad) {
        SCOPED_TRACE(body.dump());
        expect_error(post("/api/v1/search", body), 400, "invalid_argument");
    }
    expect_error(post_raw("/api/v1/search", "{\"query\": "), 400, "invalid_argument");
    expect_error(post_raw("/api/v1/search", "[\"query\"]"), 400, "invalid_argument");
    expect_error(post_raw("/api/v1/search", "\"query\""), 400, "invalid_argument");
    expect_error(post_raw("/api/v1/search", "not json at all"), 400, "invalid_argument");
    std::string big = json({{"query", std::string(5000, 'q')}}).dump();
    expect_error(post_raw("/api/v1/search", big), 413, "payload_too_large");
}

// --- import and export ------------------------------------------------------------------------

TEST_F(ServerTest, ImportReportsEachBadLine) {
    save("Already here before the import");
    std::string ndjson =
        "{\"content\": \"Imported line one about kafka retention\", \"tags\": [\"kafka\"]}\n"
        "this is not json\n"
        "{\"content\": 5}\n"
        "{\"content\": \"Imported line four about grafana\", \"scope\": \"dash\"}\n"
        "\n"
        "{\"content\": \"unknown field\", \"bogus\": true}\n"
        "{\"content\": \"Already here before the import\"}\n"
        "{\"content\": \"Imported line one about kafka retention\", \"tags\": [\"kafka\"]}\n"
        "[1, 2, 3]\n";
    Reply r = import(ndjson);
    ASSERT_EQ(r.status, 200) << r;
    json report = r.j();
    EXPECT_EQ(report["lines"], 9);
    EXPECT_EQ(report["added"], 2);
    EXPECT_EQ(report["duplicates"], 2);
    ASSERT_EQ(report["rejected"].size(), 4u) << report;
    std::vector<int> lines;
    for (const auto& rej : report["rejected"]) {
        lines.push_back(rej["line"].get<int>());
        EXPECT_TRUE(rej["reason"].is_string() && !rej["reason"].empty()) << rej;
    }
    EXPECT_EQ(lines, (std::vector<int>{2, 3, 6, 9}));
    EXPECT_NE(report["rejected"][2]["reason"].get<std::string>().find("bogus"), std::string::npos)
        << report;

    Reply dash = get("/api/v1/memories?scope=dash");
    ASSERT_EQ(dash.j()["entries"].size(), 1u) << dash;
    EXPECT_EQ(dash.j()["entries"][0]["content"], "Imported line four about grafana");
    Reply all = get("/api/v1/memories");
    EXPECT_EQ(all.j()["entries"].size(), 3u) << all;

    // ?scope= is the scope of lines without one.
    Reply scoped = import("{\"content\": \"Lands in the given scope\"}\n", kAdmin, "?scope=given");
    ASSERT_EQ(scoped.status, 200) << scoped;
    EXPECT_EQ(scoped.j()["added"], 1);
    EXPECT_EQ(get("/api/v1/memories?scope=given").j()["entries"].size(), 1u);

    // An empty body imports nothing; a body over max_import_bytes is refused.
    Reply empty = import("");
    ASSERT_EQ(empty.status, 200) << empty;
    EXPECT_EQ(empty.j()["lines"], 0);
    std::string huge;
    while (huge.size() < 70000) {
        huge += "{\"content\": \"filler line " + std::to_string(huge.size()) + " " +
                std::string(3000, 'f') + "\"}\n";
    }
    Reply too_big = import(huge);
    expect_error(too_big, 413, "payload_too_large");
    EXPECT_EQ(get("/api/v1/memories?limit=100").j()["entries"].size(), 4u);
    // The same body streamed without a length (chunked) is held to the same limit.
    httplib::Client client("127.0.0.1", port());
    client.set_read_timeout(60s);
    std::size_t sent = 0;
    auto chunked = client.Post(
        "/api/v1/memories:import", bearer(kAdmin),
        [&](std::size_t, httplib::DataSink& sink) {
            if (sent >= huge.size()) {
                sink.done();
                return true;
            }
            std::size_t n = std::min<std::size_t>(8192, huge.size() - sent);
            sent += n;
            return sink.write(huge.data() + sent - n, n);
        },
        "application/x-ndjson");
    ASSERT_TRUE(chunked) << httplib::to_string(chunked.error());
    Reply streamed{chunked->status, "", chunked->body, chunked->headers};
    // Lines before the limit may have been imported already; the error says so.
    expect_error(streamed, 413, "payload_too_large");
}

TEST_F(ServerTest, ExportStreamsNdjsonThatReimports) {
    std::map<std::string, json> saved;
    for (int i = 0; i < 4; ++i) {
        json e =
            save_body(json{{"content", fmt::format("Export entry {} about subject {}", i, i * 11)},
                           {"scope", i % 2 ? "odd" : "even"},
                           {"tags", {"export", fmt::format("n{}", i)}},
                           {"metadata", {{"i", i}}}});
        saved[e["id"].get<std::string>()] = e;
    }

    Reply r = get("/api/v1/memories:export");
    ASSERT_EQ(r.status, 200) << r;
    EXPECT_TRUE(r.header("Content-Type").starts_with("application/x-ndjson")) << r;
    auto lines = ndjson_lines(r.body);
    ASSERT_EQ(lines.size(), 4u) << r.body.substr(0, 500);
    for (const auto& line : lines) {
        ASSERT_TRUE(line.is_object());
        ASSERT_TRUE(saved.contains(line["id"].get<std::string>())) << line.dump();
        const json& e = saved[line["id"].get<std::string>()];
        EXPECT_EQ(line["content"], e["content"]);
        EXPECT_EQ(line["scope"], e["scope"]);
        EXPECT_EQ(line["tags"], e["tags"]);
        EXPECT_EQ(line["metadata"], e["metadata"]);
        EXPECT_EQ(line["embedding_model"], e["embedding_model"]);
        ASSERT_TRUE(line["embedding"].is_array());
        EXPECT_EQ(line["embedding"].size(), 256u);
    }

    Reply bare = get("/api/v1/memories:export?embeddings=false");
    ASSERT_EQ(bare.status, 200) << bare;
    auto bare_lines = ndjson_lines(bare.body);
    ASSERT_EQ(bare_lines.size(), 4u);
    for (const auto& line : bare_lines) EXPECT_FALSE(line.contains("embedding")) << line.dump();
    expect_error(get("/api/v1/memories:export?embeddings=maybe"), 400, "invalid_argument");

    Reply odd = get("/api/v1/memories:export?scope=odd");
    ASSERT_EQ(odd.status, 200) << odd;
    auto odd_lines = ndjson_lines(odd.body);
    EXPECT_EQ(odd_lines.size(), 2u);
    for (const auto& line : odd_lines) EXPECT_EQ(line["scope"], "odd");

    // Into a fresh server (no keys: everyone is admin): the same entries, ids and all.
    test::TestDatabase other_db;
    Options open;
    open.keys = false;
    test::Served other(other_db.url(), yaml_for(open));
    Reply imported =
        send(other.port(), "POST", "/api/v1/memories:import", {}, r.body, "application/x-ndjson");
    ASSERT_EQ(imported.status, 200) << imported;
    EXPECT_EQ(imported.j()["added"], 4) << imported;
    EXPECT_TRUE(imported.j()["rejected"].empty()) << imported;
    for (const auto& [id, e] : saved) {
        Reply got = send(other.port(), "GET", "/api/v1/memories/" + id, {});
        ASSERT_EQ(got.status, 200) << got;
        EXPECT_EQ(got.j()["content"], e["content"]);
        EXPECT_EQ(got.j()["scope"], e["scope"]);
        EXPECT_EQ(got.j()["created_at"], e["created_at"]);
    }
    // The copy exports the same lines.
    Reply again = send(other.port(), "GET", "/api/v1/memories:export", {});
    ASSERT_EQ(again.status, 200) << again;
    EXPECT_EQ(ndjson_lines(again.body), lines);
}

// --- health, readiness, metrics, the API description ------------------------------------------

TEST_F(ServerTest, HealthAndReadinessNeedNoKey) {
    Reply health = send(port(), "GET", "/health", {});
    ASSERT_EQ(health.status, 200) << health;
    EXPECT_EQ(health.j()["status"], "ok");

    Reply ready = send(port(), "GET", "/ready", {});
    ASSERT_EQ(ready.status, 200) << ready;
    EXPECT_EQ(ready.j()["status"], "ready");
    ASSERT_TRUE(ready.j()["pgvector"].is_string()) << ready;
    EXPECT_FALSE(ready.j()["pgvector"].get<std::string>().empty());
    ASSERT_TRUE(ready.j()["migrations"].is_number_integer()) << ready;
    EXPECT_GE(ready.j()["migrations"].get<int>(), 3);
}

TEST_F(ServerTest, MetricsExposition) {
    save("Metrics need at least one entry to count", "observed");
    search({{"query", "metrics entry"}, {"mode", "hybrid"}});
    (void)get("/api/v1/memories/0190b7a8-0000-7000-8000-000000000000");

    Reply m = get("/metrics");
    ASSERT_EQ(m.status, 200) << m;
    EXPECT_TRUE(m.header("Content-Type").starts_with("text/plain")) << m.header("Content-Type");
    for (const char* name :
         {"knowledge_agent_http_requests_total", "knowledge_agent_http_request_duration_seconds",
          "knowledge_agent_search_duration_seconds", "knowledge_agent_embedding_duration_seconds",
          "knowledge_agent_db_statement_duration_seconds", "knowledge_agent_db_pool_connections",
          "knowledge_agent_entries", "knowledge_agent_build_info"}) {
        EXPECT_TRUE(test::contains(m.body, std::string("# TYPE ") + name)) << name;
    }
    EXPECT_TRUE(test::contains(
        m.body,
        R"(knowledge_agent_http_requests_total{method="POST",route="/api/v1/memories",status="201"} 1)"))
        << m.body;
    EXPECT_TRUE(test::contains(
        m.body,
        R"(knowledge_agent_http_requests_total{method="GET",route="/api/v1/memories/{id}",status="404"} 1)"))
        << m.body;
    EXPECT_TRUE(test::contains(m.body, R"(knowledge_agent_entries{scope="observed"} 1)")) << m.body;
    EXPECT_TRUE(
        test::contains(m.body, R"(knowledge_agent_search_duration_seconds_count{mode="hybrid"} 1)"))
        << m.body;
    EXPECT_TRUE(
        test::contains(m.body, R"(knowledge_agent_embedding_duration_seconds_count{outcome="ok"})"))
        << m.body;
    EXPECT_TRUE(test::contains(m.body, R"(knowledge_agent_db_pool_connections{state="max"} 4)"))
        << m.body;
    EXPECT_TRUE(test::contains(m.body, "knowledge_agent_build_info{version=")) << m.body;
    // Statements were timed: the histogram's count is not zero.
    const std::string statements = "knowledge_agent_db_statement_duration_seconds_count ";
    auto at = m.body.find(statements);
    ASSERT_NE(at, std::string::npos);
    EXPECT_GT(std::stod(m.body.substr(at + statements.size())), 0);
}

// Every route the server registers (method, OpenAPI path, a concrete path to probe it).
struct RouteCase {
    std::string method;
    std::string path;
    std::string probe;
};
const std::vector<RouteCase> kRoutes = {
    {"get", "/health", "/health"},
    {"get", "/ready", "/ready"},
    {"get", "/openapi.json", "/openapi.json"},
    {"get", "/api/v1/openapi.json", "/api/v1/openapi.json"},
    {"get", "/metrics", "/metrics"},
    {"post", "/api/v1/memories", "/api/v1/memories"},
    {"get", "/api/v1/memories", "/api/v1/memories"},
    {"get", "/api/v1/memories:export", "/api/v1/memories:export"},
    {"post", "/api/v1/memories:import", "/api/v1/memories:import"},
    {"get", "/api/v1/memories/{id}", "/api/v1/memories/0190b7a8-0000-7000-8000-000000000000"},
    {"patch", "/api/v1/memories/{id}", "/api/v1/memories/0190b7a8-0000-7000-8000-000000000000"},
    {"delete", "/api/v1/memories/{id}", "/api/v1/memories/0190b7a8-0000-7000-8000-000000000000"},
    {"post", "/api/v1/search", "/api/v1/search"},
    {"get", "/api/v1/stats", "/api/v1/stats"},
    {"post", "/api/v1/reindex", "/api/v1/reindex"},
    {"post", "/api/v1/ask", "/api/v1/ask"},
};

bool no_route(const Reply& r) {
    return r.status == 404 && test::contains(r.j()["error"].value("message", ""), "no route");
}

TEST_F(ServerTest, OpenApiDescribesEveryRoute) {
    Reply doc = send(port(), "GET", "/openapi.json", {});
    ASSERT_EQ(doc.status, 200) << doc;
    EXPECT_TRUE(doc.header("Content-Type").starts_with("application/json"));
    json j = doc.j();
    ASSERT_TRUE(j.is_object()) << "not JSON";
    EXPECT_TRUE(j["openapi"].get<std::string>().starts_with("3."));
    ASSERT_TRUE(j["paths"].is_object());
    Reply v1 = send(port(), "GET", "/api/v1/openapi.json", {});
    ASSERT_EQ(v1.status, 200) << v1;
    EXPECT_EQ(v1.j(), j);

    for (const auto& r : kRoutes) {
        SCOPED_TRACE(r.method + " " + r.path);
        ASSERT_TRUE(j["paths"].contains(r.path)) << "missing from openapi.json";
        EXPECT_TRUE(j["paths"][r.path].contains(r.method)) << "method missing from openapi.json";
        std::string method = r.method;
        for (auto& ch : method)
            ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
        EXPECT_FALSE(no_route(send(port(), method, r.probe, bearer(kAdmin), "{}")));
    }
    // And everything it describes is served.
    for (const auto& [path, methods] : j["paths"].items()) {
        for (const auto& [method, operation] : methods.items()) {
            SCOPED_TRACE(method + " " + path);
            bool registered = std::any_of(kRoutes.begin(), kRoutes.end(), [&](const auto& r) {
                return r.path == path && r.method == method;
            });
            EXPECT_TRUE(registered) << "described but not registered";
        }
    }
}

TEST_F(ServerTest, UnknownRoutesAreJson404) {
    for (const auto& [method, path] :
         std::vector<std::pair<std::string, std::string>>{{"GET", "/"},
                                                          {"GET", "/api/v2/memories"},
                                                          {"POST", "/api/v1/nothing"},
                                                          {"DELETE", "/api/v1/memories"},
                                                          {"GET", "/api/v1/memories/abc/extra"}}) {
        SCOPED_TRACE(method + " " + path);
        Reply r = send(port(), method, path, bearer(kAdmin));
        expect_error(r, 404, "not_found");
        EXPECT_TRUE(no_route(r)) << r;
    }
}

TEST_F(ServerTest, RequestIds) {
    Reply given = send(port(), "GET", "/health", {{"X-Request-Id", "trace-42.abc_DEF:1"}});
    EXPECT_EQ(given.header("X-Request-Id"), "trace-42.abc_DEF:1");

    Reply generated = send(port(), "GET", "/api/v1/memories", bearer(kAdmin));
    std::string id = generated.header("X-Request-Id");
    EXPECT_EQ(id.size(), 32u) << id;
    EXPECT_TRUE(std::all_of(id.begin(), id.end(), [](unsigned char c) {
        return std::isxdigit(c) != 0;
    })) << id;
    EXPECT_NE(send(port(), "GET", "/health", {}).header("X-Request-Id"), id);

    // Unsafe or oversized ids are replaced, never echoed.
    for (const std::string& bad :
         {std::string("has space"), std::string("semi;colon"), std::string(200, 'a')}) {
        std::string got =
            send(port(), "GET", "/health", {{"X-Request-Id", bad}}).header("X-Request-Id");
        EXPECT_NE(got, bad);
        EXPECT_EQ(got.size(), 32u) << got;
    }
    // Errors carry it too.
    Reply unauthorized = send(port(), "GET", "/api/v1/memories", {{"X-Request-Id", "req-401"}});
    EXPECT_EQ(unauthorized.status, 401);
    EXPECT_EQ(unauthorized.header("X-Request-Id"), "req-401");
    Reply bad = send(port(), "POST", "/api/v1/search",
                     {{"X-Request-Id", "req-400"}, {"Authorization", "Bearer " + kAdmin}}, "{");
    EXPECT_EQ(bad.status, 400);
    EXPECT_EQ(bad.header("X-Request-Id"), "req-400");
}

// --- authentication and authorisation ---------------------------------------------------------

TEST_F(ServerTest, MissingOrWrongKeyIs401) {
    json e = save("An entry behind authentication");
    std::string item = "/api/v1/memories/" + e["id"].get<std::string>();
    const std::vector<std::pair<std::string, std::string>> protected_routes = {
        {"GET", "/api/v1/memories"},
        {"POST", "/api/v1/memories"},
        {"GET", item},
        {"PATCH", item},
        {"DELETE", item},
        {"POST", "/api/v1/search"},
        {"GET", "/api/v1/stats"},
        {"POST", "/api/v1/reindex"},
        {"GET", "/metrics"},
        {"GET", "/api/v1/memories:export"},
        {"POST", "/api/v1/memories:import"},
        {"POST", "/api/v1/ask"}};
    for (const auto& [method, path] : protected_routes) {
        SCOPED_TRACE(method + " " + path);
        Reply none = send(port(), method, path, {}, "{\"content\": \"x\", \"query\": \"x\"}");
        expect_error(none, 401, "unauthorized");
        EXPECT_EQ(none.header("WWW-Authenticate"), "Bearer");
        Reply wrong = send(port(), method, path, bearer("wrong-key-0123456789abcdef"),
                           "{\"content\": \"x\", \"query\": \"x\"}");
        expect_error(wrong, 401, "unauthorized");
        EXPECT_EQ(wrong.header("WWW-Authenticate"), "Bearer");
    }
    // Near misses: other schemes, a prefix of a key, a key with extra characters, an empty
    // bearer token.
    for (const auto& headers : std::vector<httplib::Headers>{
             {{"Authorization", "Basic " + kAdmin}},
             {{"Authorization", "Bearer " + kAdmin.substr(0, kAdmin.size() - 1)}},
             {{"Authorization", "Bearer " + kAdmin + "x"}},
             {{"Authorization", "Bearer "}},
             {{"X-API-Key", ""}}}) {
        Reply r = send(port(), "GET", "/api/v1/memories", headers);
        EXPECT_EQ(r.status, 401) << headers.begin()->second << " " << r;
    }
    // The entry is untouched.
    EXPECT_EQ(get(item).status, 200);
}

TEST_F(ServerTest, KeysByHeaderAndByDigest) {
    save("Reachable with every form of key");
    EXPECT_EQ(
        send(port(), "GET", "/api/v1/memories", {{"Authorization", "Bearer " + kReader}}).status,
        200);
    EXPECT_EQ(
        send(port(), "GET", "/api/v1/memories", {{"Authorization", "bearer " + kReader}}).status,
        200);
    EXPECT_EQ(send(port(), "GET", "/api/v1/memories", {{"X-API-Key", kReader}}).status, 200);
    // key_sha256: the plaintext key works, the digest itself is not a key.
    Reply hashed = send(port(), "GET", "/api/v1/memories", {{"X-API-Key", kHashed}});
    ASSERT_EQ(hashed.status, 200) << hashed;
    EXPECT_EQ(hashed.j()["entries"].size(), 1u);
    EXPECT_EQ(send(port(), "POST", "/api/v1/search", bearer(kHashed), R"({"query": "key"})").status,
              200);
    EXPECT_EQ(send(port(), "GET", "/api/v1/memories", bearer(kHashedSha256)).status, 401);
    // The hashed key has role read.
    expect_error(post("/api/v1/memories", {{"content", "no"}}, kHashed), 403, "forbidden");
}

TEST_F(ServerTest, RolesGateEveryRoute) {
    json e = save("Role matrix entry about caching layers");
    std::string item = "/api/v1/memories/" + e["id"].get<std::string>();

    // read: search, get, list, ask.
    EXPECT_EQ(post("/api/v1/search", {{"query", "caching"}}, kReader).status, 200);
    Reply asked = post("/api/v1/ask", {{"question", "What about caching layers?"}}, kReader);
    EXPECT_EQ(asked.status, 200) << asked;
    EXPECT_EQ(get(item, kReader).status, 200);
    EXPECT_EQ(get("/api/v1/memories", kReader).status, 200);
    expect_error(post("/api/v1/memories", {{"content", "reader writes"}}, kReader), 403,
                 "forbidden");
    expect_error(patch(item, {{"tags", {"x"}}}, kReader), 403, "forbidden");
    expect_error(del(item, kReader), 403, "forbidden");
    expect_error(import("{\"content\": \"reader imports\"}\n", kReader), 403, "forbidden");
    expect_error(get("/api/v1/memories:export", kReader), 403, "forbidden");
    expect_error(get("/api/v1/stats", kReader), 403, "forbidden");
    expect_error(get("/metrics", kReader), 403, "forbidden");
    expect_error(post("/api/v1/reindex", json::object(), kReader), 403, "forbidden");

    // write: also save, patch, delete, import; not the admin routes.
    EXPECT_EQ(post("/api/v1/search", {{"query", "caching"}}, kWriter).status, 200);
    EXPECT_EQ(get("/api/v1/memories", kWriter).status, 200);
    Reply saved = post("/api/v1/memories", {{"content", "Writer saves this"}}, kWriter);
    ASSERT_EQ(saved.status, 201) << saved;
    std::string written = "/api/v1/memories/" + saved.j()["id"].get<std::string>();
    EXPECT_EQ(patch(written, {{"tags", {"w"}}}, kWriter).status, 200);
    Reply imported = import("{\"content\": \"Writer imports this\"}\n", kWriter);
    ASSERT_EQ(imported.status, 200) << imported;
    EXPECT_EQ(imported.j()["added"], 1);
    EXPECT_EQ(del(written, kWriter).status, 204);
    expect_error(get("/api/v1/memories:export", kWriter), 403, "forbidden");
    expect_error(get("/api/v1/stats", kWriter), 403, "forbidden");
    expect_error(get("/metrics", kWriter), 403, "forbidden");
    expect_error(post("/api/v1/reindex", json::object(), kWriter), 403, "forbidden");

    // admin: everything.
    EXPECT_EQ(get("/api/v1/memories:export", kAdmin).status, 200);
    Reply stats = get("/api/v1/stats", kAdmin);
    ASSERT_EQ(stats.status, 200) << stats;
    EXPECT_EQ(stats.j()["entries"], 2);
    EXPECT_EQ(stats.j()["embedding_model"], e["embedding_model"]);
    EXPECT_EQ(get("/metrics", kAdmin).status, 200);
    Reply reindexed = post("/api/v1/reindex", json::object(), kAdmin);
    EXPECT_EQ(reindexed.status, 200) << reindexed;
    EXPECT_EQ(patch(item, {{"tags", {"admin"}}}, kAdmin).status, 200);
    EXPECT_EQ(del(item, kAdmin).status, 204);
}

TEST_F(ServerTest, ScopeBoundKeyIsIsolated) {
    json b = save_body(json{{"content", "Team B secret roadmap for the payments launch"},
                            {"scope", "team-b"},
                            {"tags", {"roadmap"}}});
    json a = save_body(json{{"content", "Team A roadmap for the search relaunch"},
                            {"scope", "team-a"},
                            {"tags", {"roadmap"}}});
    std::string b_item = "/api/v1/memories/" + b["id"].get<std::string>();
    std::string a_item = "/api/v1/memories/" + a["id"].get<std::string>();

    // Another scope's entry does not exist for this key, and nothing of it leaks.
    for (const Reply& r : {get(b_item, kTeamA), patch(b_item, {{"content", "overwritten"}}, kTeamA),
                           del(b_item, kTeamA)}) {
        expect_error(r, 404, "not_found");
        EXPECT_FALSE(test::contains(r.body, "secret")) << r;
        EXPECT_FALSE(test::contains(r.body, "team-b")) << r;
    }
    EXPECT_EQ(get(b_item).j()["content"], b["content"]) << "team-a changed a team-b entry";
    EXPECT_EQ(get(a_item, kTeamA).status, 200);

    // Asking for another scope is forbidden.
    expect_error(post("/api/v1/search",
                      {{"query", "roadmap"}, {"filters", {{"scopes", {"team-b"}}}}}, kTeamA),
                 403, "forbidden");
    expect_error(
        post("/api/v1/search",
             {{"query", "roadmap"}, {"filters", {{"scopes", {"team-a", "team-b"}}}}}, kTeamA),
        403, "forbidden");
    expect_error(get("/api/v1/memories?scope=team-b", kTeamA), 403, "forbidden");
    expect_error(get("/api/v1/memories:export?scope=team-b", kTeamA), 403, "forbidden");

    // Unfiltered reads only ever see team-a.
    for (const char* mode : {"vector", "text", "hybrid"}) {
        json hits = search({{"query", "secret roadmap payments launch"}, {"mode", mode}}, kTeamA);
        ASSERT_FALSE(hits["results"].empty()) << mode;
        EXPECT_EQ(field_set(hits["results"], "scope"), std::set<std::string>{"team-a"}) << mode;
    }
    Reply list = get("/api/v1/memories", kTeamA);
    ASSERT_EQ(list.status, 200);
    EXPECT_EQ(field_set(list.j()["entries"], "scope"), std::set<std::string>{"team-a"});
    Reply tagged = get("/api/v1/memories?tag=roadmap", kTeamA);
    EXPECT_EQ(tagged.j()["entries"].size(), 1u) << tagged;
    Reply exported = get("/api/v1/memories:export", kTeamA);
    ASSERT_EQ(exported.status, 200);
    auto lines = ndjson_lines(exported.body);
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0]["scope"], "team-a");
    Reply stats = get("/api/v1/stats", kTeamA);
    ASSERT_EQ(stats.status, 200) << stats;
    EXPECT_EQ(stats.j()["entries"], 1);
    EXPECT_FALSE(test::contains(stats.body, "team-b")) << stats;
    expect_error(post("/api/v1/reindex", json::object(), kTeamA), 403, "forbidden");

    // Writes: never into team-b; without a scope they land in team-a.
    expect_error(
        post("/api/v1/memories", {{"content", "Sneaking in"}, {"scope", "team-b"}}, kTeamA), 403,
        "forbidden");
    Reply own = post("/api/v1/memories", {{"content", "Saved without a scope"}}, kTeamA);
    ASSERT_EQ(own.status, 201) << own;
    EXPECT_EQ(own.j()["scope"], "team-a");
    // The same text as team-b's entry is a new team-a entry, not team-b's id.
    Reply same = post("/api/v1/memories", {{"content", b["content"]}}, kTeamA);
    ASSERT_EQ(same.status, 201) << same;
    EXPECT_NE(same.j()["id"], b["id"]);
    EXPECT_EQ(same.j()["scope"], "team-a");

    Reply imported = import(
        "{\"content\": \"Imported into team b\", \"scope\": \"team-b\"}\n"
        "{\"content\": \"Imported without scope\"}\n"
        "{\"content\": \"Imported into team a\", \"scope\": \"team-a\"}\n",
        kTeamA);
    ASSERT_EQ(imported.status, 200) << imported;
    EXPECT_EQ(imported.j()["added"], 2);
    ASSERT_EQ(imported.j()["rejected"].size(), 1u) << imported;
    EXPECT_EQ(imported.j()["rejected"][0]["line"], 1);
    expect_error(import("{\"content\": \"x\"}\n", kTeamA, "?scope=team-b"), 403, "forbidden");

    // team-b holds only what the admin put there.
    Reply b_list = get("/api/v1/memories?scope=team-b");
    ASSERT_EQ(b_list.j()["entries"].size(), 1u) << b_list;
    EXPECT_EQ(b_list.j()["entries"][0]["id"], b["id"]);
    Reply a_list = get("/api/v1/memories?scope=team-a&limit=100");
    EXPECT_EQ(a_list.j()["entries"].size(), 5u) << a_list;
}

// --- rate limiting ----------------------------------------------------------------------------

TEST(ServerRateLimit, FourthQuickRequestIs429WithRetryAfter) {
    log::configure("warn", "console");
    test::TestDatabase db;
    Options o;
    o.requests_per_second = 1;
    o.burst = 3;
    test::Served served(db.url(), yaml_for(o));
    // Cheap requests (rejected before touching the database), so four fit well within a second.
    auto quick = [&](const std::string& key) {
        return send(served.port(), "POST", "/api/v1/search", bearer(key), "{}");
    };
    for (int i = 0; i < 3; ++i) EXPECT_EQ(quick(kReader).status, 400) << i;
    Reply limited = quick(kReader);
    expect_error(limited, 429, "rate_limited");
    std::string retry = limited.header("Retry-After");
    ASSERT_FALSE(retry.empty());
    EXPECT_GE(std::stoi(retry), 1) << retry;

    // Buckets are per key; open routes are not limited.
    EXPECT_EQ(quick(kWriter).status, 400);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(send(served.port(), "GET", "/health", {}).status, 200);

    // Callers without a valid key are limited by address, so guessing keys is slow.
    std::vector<int> statuses;
    for (int i = 0; i < 4; ++i)
        statuses.push_back(quick("guess-" + std::to_string(i) + "-0123456789abcdef").status);
    EXPECT_EQ(statuses, (std::vector<int>{401, 401, 401, 429}));
}

// --- concurrency ------------------------------------------------------------------------------

TEST_F(ServerTest, ConcurrentSavesAndSearches) {
    constexpr int kThreads = 32;
    constexpr int kRounds = 3;
    std::mutex mutex;
    std::vector<std::string> ids;
    std::vector<std::string> problems;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < kRounds; ++i) {
                std::string content =
                    fmt::format("Concurrent note {} from worker {} round {} about shard{}",
                                t * 100 + i, t, i, (t + i) % 5);
                Reply saved = send(port(), "POST", "/api/v1/memories", bearer(kAdmin),
                                   json({{"content", content}}).dump());
                Reply found = send(
                    port(), "POST", "/api/v1/search", bearer(kReader),
                    json({{"query", fmt::format("worker {} shard{}", t, i)}, {"k", 5}}).dump());
                std::lock_guard lock(mutex);
                if (saved.status == 201 && saved.j()["content"] == content) {
                    ids.push_back(saved.j()["id"].get<std::string>());
                } else {
                    problems.push_back(fmt::format("save: {} {} {}", saved.status, saved.error,
                                                   saved.body.substr(0, 200)));
                }
                if (found.status != 200 || !found.j()["results"].is_array())
                    problems.push_back(fmt::format("search: {} {} {}", found.status, found.error,
                                                   found.body.substr(0, 200)));
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_TRUE(problems.empty()) << problems.size() << " failures, first: " << problems.front();
    EXPECT_EQ(ids.size(), static_cast<std::size_t>(kThreads * kRounds));
    EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), ids.size());

    for (const auto& id : ids) {
        Reply got = get("/api/v1/memories/" + id, kReader);
        EXPECT_EQ(got.status, 200) << id << " " << got;
    }
    Reply stats = get("/api/v1/stats");
    ASSERT_EQ(stats.status, 200) << stats;
    EXPECT_EQ(stats.j()["entries"].get<std::size_t>(), ids.size());
    auto counted = served->store().count({});
    ASSERT_TRUE(counted);
    EXPECT_EQ(static_cast<std::size_t>(*counted), ids.size());
}

// --- the database going away and coming back -----------------------------------------------

TEST(ServerDatabaseRestart, Answers503WhileDownAndRecoversWithoutRestart) {
    log::configure("error", "console");
    test::PrivateCluster cluster("http-restart");
    Options o;
    o.connect_timeout = 2;
    o.pool_size = 2;
    test::Served served(db::embedded_target(cluster.cluster()).conninfo, yaml_for(o));
    int port = served.port();
    // Answers must come well within this, or the request counts as hung.
    auto send = [&](const std::string& method, const std::string& path, httplib::Headers headers,
                    const std::string& body = {}) {
        return http::send(port, method, path, std::move(headers), body, "application/json", 15s);
    };
    auto save_one = [&](const std::string& content) {
        return send("POST", "/api/v1/memories", bearer(kAdmin),
                    json({{"content", content}}).dump());
    };
    Reply before = save_one("Saved before the database restart");
    ASSERT_EQ(before.status, 201) << before;
    std::string item = "/api/v1/memories/" + before.j()["id"].get<std::string>();

    ASSERT_TRUE(db::stop_embedded(cluster.cluster()));
    // Every request that needs the database gets a 503 JSON error (not a crash, not a hang
    // past the client's timeout); the process stays healthy.
    for (int round = 0; round < 2; ++round) {
        SCOPED_TRACE(round);
        expect_error(send("GET", "/api/v1/memories", bearer(kAdmin)), 503, "unavailable");
        expect_error(send("GET", item, bearer(kAdmin)), 503, "unavailable");
        expect_error(send("POST", "/api/v1/search", bearer(kAdmin), R"({"query": "saved"})"), 503,
                     "unavailable");
        expect_error(save_one("Saved while the database is down"), 503, "unavailable");
        expect_error(send("POST", "/api/v1/memories:import", bearer(kAdmin),
                          "{\"content\": \"Imported while the database is down\"}\n"),
                     503, "unavailable");
        // An export has sent its headers before it reads: its last line says it failed, so
        // it is never mistaken for a whole (empty) export.
        Reply exported = send("GET", "/api/v1/memories:export", bearer(kAdmin));
        if (exported.status == 200) {
            auto lines = ndjson_lines(exported.body);
            ASSERT_FALSE(lines.empty()) << exported;
            EXPECT_TRUE(lines.back().contains("error")) << exported;
        } else {
            expect_error(exported, 503, "unavailable");
        }
        Reply ready = send("GET", "/ready", {});
        EXPECT_EQ(ready.status, 503) << ready;
        EXPECT_EQ(ready.j()["status"], "unavailable") << ready;
        EXPECT_EQ(send("GET", "/health", {}).status, 200);
    }

    ASSERT_TRUE(db::start_embedded(cluster.cluster()));
    Reply again = send("GET", item, bearer(kAdmin));
    EXPECT_EQ(again.status, 200) << again;
    Reply after = save_one("Saved after the database restart");
    EXPECT_EQ(after.status, 201) << after;
    EXPECT_EQ(send("POST", "/api/v1/search", bearer(kAdmin), R"({"query": "restart"})").status,
              200);
    EXPECT_EQ(send("GET", "/ready", {}).status, 200);
    Reply list = send("GET", "/api/v1/memories", bearer(kAdmin));
    ASSERT_EQ(list.status, 200) << list;
    EXPECT_EQ(list.j()["entries"].size(), 2u) << list;
}

}  // namespace
}  // namespace ka::http
