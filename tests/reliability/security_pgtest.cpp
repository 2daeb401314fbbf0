// Security against real PostgreSQL (issue 7): secrets never appear in anything the processes
// print or answer; a scope-bound key cannot reach another scope through any endpoint or filter;
// TLS to PostgreSQL with a self-signed CA (verify-full); the guide's least-privilege roles end
// to end. Figures are printed as "[reliability] ..." lines for RELIABILITY.md.
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <httplib.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
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
#include "http/server.h"
#include "log/log.h"
#include "support/pg.h"
#include "support/server.h"

namespace ka {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;

struct Reply {
    int status = 0;
    std::string error;
    std::string body;
    json j() const { return json::parse(body, nullptr, false); }
};

std::ostream& operator<<(std::ostream& os, const Reply& r) {
    return os << "HTTP " << r.status << " " << r.error << " " << r.body.substr(0, 400);
}

Reply send(int port, const std::string& method, const std::string& path, const std::string& key,
           const std::string& body = {}, const std::string& content_type = "application/json") {
    httplib::Client client("127.0.0.1", port);
    client.set_url_encode(false);
    client.set_connection_timeout(5s);
    client.set_read_timeout(60s);
    httplib::Request req;
    req.method = method;
    req.path = path;
    if (!key.empty()) req.headers.emplace("Authorization", "Bearer " + key);
    if (!body.empty() || method == "POST" || method == "PATCH") {
        req.body = body;
        req.headers.emplace("Content-Type", content_type);
    }
    Reply r;
    auto res = client.send(req);
    if (!res) {
        r.error = httplib::to_string(res.error());
        return r;
    }
    r.status = res->status;
    r.body = res->body;
    return r;
}

std::string error_code(const Reply& r) {
    json j = r.j();
    if (!j.is_object() || !j.contains("error") || !j["error"].is_object()) return "(not an error)";
    return j["error"].value("code", "");
}

std::string read_all(const fs::path& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

void print_figure(const std::string& line) {
    std::cout << "[reliability] " << line << std::endl;
}

ProcessResult run(const std::vector<std::string>& argv) {
    auto r = run_process(argv);
    if (!r) throw std::runtime_error(r.error().message);
    return *r;
}

class Security : public ::testing::Test {
  protected:
    static void SetUpTestSuite() { log::configure("error", "console"); }
};

// --- secrets never appear -----------------------------------------------------------------------

// An OpenAI-compatible provider that refuses every key and echoes it back, as OpenAI does
// ("Incorrect API key provided: sk-..."): whatever prints its answer must mask the key.
class EchoingProvider {
  public:
    EchoingProvider() {
        auto refuse = [this](const httplib::Request& req, httplib::Response& res) {
            std::string auth = req.get_header_value("Authorization");
            std::string key = auth.starts_with("Bearer ") ? auth.substr(7) : auth;
            {
                std::lock_guard lock(mutex_);
                seen_.insert(key);
            }
            res.status = 401;
            res.set_content(json{{"error",
                                  {{"message", "Incorrect API key provided: " + key},
                                   {"type", "invalid_request_error"},
                                   {"code", "invalid_api_key"}}}}
                                .dump(),
                            "application/json");
        };
        svr_.Post("/v1/embeddings", refuse);
        svr_.Post("/v1/chat/completions", refuse);
        port_ = svr_.bind_to_any_port("127.0.0.1");
        thread_ = std::thread([this] { svr_.listen_after_bind(); });
        while (!svr_.is_running()) std::this_thread::sleep_for(1ms);
    }
    ~EchoingProvider() {
        svr_.stop();
        thread_.join();
    }
    int port() const { return port_; }
    bool saw(const std::string& key) {
        std::lock_guard lock(mutex_);
        return seen_.contains(key);
    }

  private:
    httplib::Server svr_;
    std::thread thread_;
    int port_ = 0;
    std::mutex mutex_;
    std::set<std::string> seen_;
};

TEST_F(Security, SecretsNeverAppearInOutputLogsMetricsOrErrors) {
    test::PrivateCluster cluster("rel-secrets", test::free_port());
    const auto& c = cluster.cluster();
    const std::string password = trim(read_all(c.data_dir / "knowledge-agent.password"));
    ASSERT_GE(password.size(), 16u);
    const std::string auth_key = "sk-auth-Zr8Qm2Lx5Tn7Vb3KpW";
    const std::string openai_key = "sk-openai-Hd6Pw1Ys9Fc4Jg8NqR";
    const std::string url = fmt::format(
        "postgresql://knowledge_agent:{}@127.0.0.1:{}/knowledge_agent", password, c.port);
    EchoingProvider provider;
    const std::string provider_url = fmt::format("http://127.0.0.1:{}", provider.port());
    // Everything through the environment, as a deployment would.
    const std::vector<std::string> env = {
        "POSTGRES_URL=" + url,
        "OPENAI_API_KEY=" + openai_key,
        "KNOWLEDGE_AGENT_EMBEDDING_DIMENSIONS=64",
        fmt::format(R"(KNOWLEDGE_AGENT_AUTH_KEYS=[{{"name":"ops","key":"{}","role":"admin"}}])",
                    auth_key),
        "KNOWLEDGE_AGENT_LLM_PROVIDER=openai",
        "KNOWLEDGE_AGENT_LLM_BASE_URL=" + provider_url,
        "KNOWLEDGE_AGENT_LLM_MAX_RETRIES=0",
        "KNOWLEDGE_AGENT_LOG_LEVEL=debug",
    };
    std::vector<std::pair<std::string, std::string>> printed;  // what, text
    auto agent = [&](const std::string& what, const std::vector<std::string>& args,
                     std::vector<std::string> extra = {}) {
        std::vector<std::string> e = env;
        e.insert(e.end(), extra.begin(), extra.end());
        auto r = test::run_agent(args, e);
        printed.emplace_back(what, r.output);
        return r;
    };

    // The provider call that fails first (no entries yet, so the embedder is asked).
    auto remember = agent("remember via a refusing provider", {"remember", "A fact to embed"},
                          {"KNOWLEDGE_AGENT_EMBEDDING_PROVIDER=openai",
                           "KNOWLEDGE_AGENT_EMBEDDING_BASE_URL=" + provider_url,
                           "KNOWLEDGE_AGENT_EMBEDDING_MAX_RETRIES=0"});
    EXPECT_NE(remember.exit_code, 0) << remember.output;
    EXPECT_TRUE(provider.saw(openai_key)) << "the provider never got the key: " << remember.output;

    EXPECT_EQ(agent("migrate up", {"migrate", "up"}).exit_code, 0) << printed.back().second;
    agent("doctor", {"doctor"});
    agent("doctor --json", {"doctor", "--json"});
    EXPECT_EQ(agent("config show", {"config", "show"}).exit_code, 0) << printed.back().second;
    fs::path dir = test::unique_dir("rel-secrets-files");
    fs::create_directories(dir);
    {
        std::ofstream(dir / "in.jsonl") << R"({"content": "Imported fact one"})"
                                        << "\n"
                                        << R"({"content": "Imported fact two"})"
                                        << "\n"
                                        << R"({"content": 42})"
                                        << "\n";
    }
    // Exit 14: the good lines are imported, the bad one rejected.
    EXPECT_EQ(agent("import", {"import", (dir / "in.jsonl").string()}).exit_code, 14)
        << printed.back().second;
    agent("export", {"export"});
    // A wrong port: the connection error names the server, not the password.
    {
        std::vector<std::string> e = env;
        e[0] =
            fmt::format("POSTGRES_URL=postgresql://knowledge_agent:{}@127.0.0.1:{}/knowledge_agent",
                        password, test::free_port());
        auto r = test::run_agent({"migrate", "up"}, e);
        EXPECT_EQ(r.exit_code, 4) << r.output;
        printed.emplace_back("migrate up against a closed port", r.output);
        // A wrong password, in keyword form.
        e[0] = fmt::format(
            "POSTGRES_URL=host=127.0.0.1 port={} dbname=knowledge_agent user=knowledge_agent "
            "password={}-wrong",
            c.port, password);
        r = test::run_agent({"doctor"}, e);
        EXPECT_NE(r.exit_code, 0) << r.output;
        printed.emplace_back("doctor with a wrong password", r.output);
    }

    // The server: requests that succeed, fail, and reach the refusing provider.
    std::vector<std::string> serve_env = env;
    serve_env.erase(serve_env.begin());  // ServeProcess takes POSTGRES_URL from here too
    serve_env.push_back("POSTGRES_URL=" + url);
    test::ServeProcess serve({"--port", "0"}, serve_env);
    ASSERT_TRUE(serve.wait_ready()) << serve.output();
    int port = serve.port();
    std::vector<Reply> replies = {
        send(port, "POST", "/api/v1/memories", auth_key, R"({"content": "Served fact"})"),
        send(port, "POST", "/api/v1/search", auth_key, R"({"query": "fact"})"),
        send(port, "GET", "/api/v1/memories/00000000-0000-0000-0000-000000000000", auth_key),
        send(port, "POST", "/api/v1/memories", auth_key, R"({"content": 1})"),
        send(port, "GET", "/api/v1/memories", auth_key + "-wrong"),
        send(port, "GET", "/api/v1/memories", ""),
        send(port, "POST", "/api/v1/ask", auth_key, R"({"question": "What facts are there?"})"),
        send(port, "POST", "/api/v1/ask", auth_key,
             R"({"question": "What facts are there?", "stream": true})"),
        send(port, "GET", "/metrics", auth_key),
        send(port, "GET", "/api/v1/stats", auth_key),
        send(port, "GET", "/api/v1/memories:export", auth_key),
        send(port, "GET", "/ready", ""),
    };
    EXPECT_EQ(replies[0].status, 201) << replies[0];
    EXPECT_EQ(replies[4].status, 401) << replies[4];
    EXPECT_GE(replies[6].status, 500) << replies[6];  // the model refused the key
    EXPECT_EQ(replies[8].status, 200) << replies[8];
    serve.signal(SIGTERM);
    EXPECT_EQ(serve.wait_exit(30s), 0);
    printed.emplace_back("serve (whole log)", serve.output());
    for (std::size_t i = 0; i < replies.size(); ++i)
        printed.emplace_back(fmt::format("HTTP answer {}", i), replies[i].body);

    // KA_RELIABILITY_DUMP=1 prints everything that was checked, for a human to audit.
    if (std::getenv("KA_RELIABILITY_DUMP")) {
        for (const auto& [what, text] : printed)
            std::cout << "=== " << what << "\n" << text << "\n";
    }
    std::size_t bytes = 0;
    for (const auto& [what, text] : printed) {
        bytes += text.size();
        for (const auto& [name, secret] : {std::pair{"postgres password", password},
                                           {"API key", auth_key},
                                           {"OPENAI_API_KEY", openai_key}}) {
            EXPECT_FALSE(test::contains(text, secret)) << name << " appears in " << what << ":\n"
                                                       << text.substr(0, 3000);
        }
    }
    // The provider's echo really was printed (masked), so the check above is meaningful.
    bool echo_seen = false;
    for (const auto& [what, text] : printed)
        echo_seen = echo_seen || test::contains(text, "Incorrect API key provided");
    EXPECT_TRUE(echo_seen) << "no output carried the provider's echo";
    print_figure(fmt::format(
        "secrets outputs_checked={} bytes_checked={} secrets=3 (postgres password, API key, "
        "OPENAI_API_KEY) occurrences=0",
        printed.size(), bytes));
    fs::remove_all(dir);
}

// --- scope isolation
// ------------------------------------------------------------------------------

const std::string kAdmin = "scope-admin-key-0123456789abcdef";
const std::string kTeamA = "scope-team-a-key-0123456789abcdef";

std::string encode(std::string_view value) {
    std::string out;
    for (unsigned char ch : value) {
        if (std::isalnum(ch) || ch == '-' || ch == '_' || ch == '.') {
            out += static_cast<char>(ch);
        } else {
            out += fmt::format("%{:02X}", ch);
        }
    }
    return out;
}

std::set<std::string> scopes_of(const json& entries) {
    std::set<std::string> out;
    for (const auto& e : entries) out.insert(e.value("scope", "?"));
    return out;
}

TEST_F(Security, ScopeBoundKeyNeverReachesAnotherScope) {
    test::TestDatabase db;
    auto config = config::load_from_string(
        fmt::format("embedding:\n"
                    "  dimensions: 64\n"
                    "server:\n"
                    "  host: 127.0.0.1\n"
                    "  port: 0\n"
                    "rate_limit:\n"
                    "  requests_per_second: 0\n"
                    "auth:\n"
                    "  keys:\n"
                    "    - {{name: admin, key: {}, role: admin}}\n"
                    "    - {{name: team-a, key: {}, role: admin, scopes: [team-a]}}\n",
                    kAdmin, kTeamA),
        [&](const std::string& name) -> std::optional<std::string> {
            if (name == "POSTGRES_URL") return db.url();
            return std::nullopt;
        });
    ASSERT_TRUE(config) << config.error().message;
    auto conn = db::connect(*config);
    ASSERT_TRUE(conn) << conn.error().message;
    ASSERT_TRUE(db::prepare_schema(*conn, *config, true));
    db::Pool pool(conn->target(), 4, 5);
    auto embedder = embed::make_embedder(*config);
    ASSERT_TRUE(embedder);
    store::Store store(pool, **embedder, *config);
    ASSERT_TRUE(store.prepare());
    http::Metrics metrics;
    auto prompt = agent::base_prompt(*config);
    ASSERT_TRUE(prompt);
    agent::Agent agent(store, nullptr, *config, *prompt);  // retrieval-only
    http::Server server(*config, store, pool, metrics, &agent);
    auto bound = server.bind();
    ASSERT_TRUE(bound);
    const int port = *bound;
    std::thread serving([&] { server.run(); });
    struct Stop {
        http::Server& s;
        std::thread& t;
        ~Stop() {
            s.stop();
            t.join();
        }
    } stop{server, serving};
    for (int i = 0; i < 1000 && send(port, "GET", "/health", "").status != 200; ++i)
        std::this_thread::sleep_for(5ms);

    // team-b holds text that shares every word with team-a's, so any leak would rank first.
    auto save = [&](const std::string& key, const json& body) {
        Reply r = send(port, "POST", "/api/v1/memories", key, body.dump());
        EXPECT_EQ(r.status, 201) << r;
        return r.j();
    };
    json b = save(kAdmin, {{"content", "Confidential team-b payroll escalation contacts"},
                           {"scope", "team-b"},
                           {"tags", {"payroll"}},
                           {"source", "wiki"}});
    json a = save(kAdmin, {{"content", "Team-a payroll escalation contacts"},
                           {"scope", "team-a"},
                           {"tags", {"payroll"}},
                           {"source", "wiki"}});
    const std::string b_item = "/api/v1/memories/" + b["id"].get<std::string>();
    int checks = 0;
    auto expect_status = [&](const Reply& r, int status, const std::string& what) {
        ++checks;
        EXPECT_EQ(r.status, status) << what << ": " << r;
        EXPECT_FALSE(test::contains(r.body, "Confidential")) << what << ": " << r;
    };

    // By id: indistinguishable from an id that does not exist.
    Reply missing =
        send(port, "GET", "/api/v1/memories/00000000-0000-7000-8000-000000000000", kTeamA);
    expect_status(send(port, "GET", b_item, kTeamA), 404, "GET team-b id");
    expect_status(send(port, "PATCH", b_item, kTeamA, R"({"content": "overwritten"})"), 404,
                  "PATCH team-b id");
    expect_status(send(port, "PATCH", b_item, kTeamA, R"({"tags": ["stolen"]})"), 404,
                  "PATCH team-b tags");
    expect_status(send(port, "DELETE", b_item, kTeamA), 404, "DELETE team-b id");
    EXPECT_EQ(error_code(send(port, "GET", b_item, kTeamA)), error_code(missing));
    Reply intact = send(port, "GET", b_item, kAdmin);
    EXPECT_EQ(intact.j()["content"], b["content"]) << intact;
    EXPECT_EQ(intact.j()["tags"], json({"payroll"})) << intact;

    // Asking for team-b in any filter: 403.
    for (const std::string& path : {std::string("/api/v1/memories?scope=team-b"),
                                    std::string("/api/v1/memories?scope=team-a&scope=team-b"),
                                    std::string("/api/v1/memories:export?scope=team-b"),
                                    std::string("/api/v1/memories?scope=") + encode("team-b")}) {
        expect_status(send(port, "GET", path, kTeamA), 403, path);
    }
    for (const json& filters :
         {json{{"scopes", {"team-b"}}}, json{{"scopes", {"team-a", "team-b"}}},
          json{{"scopes", "team-b"}}}) {
        for (const char* mode : {"vector", "text", "hybrid"}) {
            expect_status(
                send(port, "POST", "/api/v1/search", kTeamA,
                     json{{"query", "payroll"}, {"mode", mode}, {"filters", filters}}.dump()),
                403, std::string("search ") + mode + " " + filters.dump());
        }
    }
    expect_status(send(port, "POST", "/api/v1/ask", kTeamA,
                       R"({"question": "payroll escalation contacts", "scope": "team-b"})"),
                  403, "ask in team-b");
    expect_status(send(port, "POST", "/api/v1/memories", kTeamA,
                       R"({"content": "planted", "scope": "team-b"})"),
                  403, "save into team-b");
    expect_status(send(port, "POST", "/api/v1/memories:import?scope=team-b", kTeamA,
                       "{\"content\": \"planted\"}\n", "application/x-ndjson"),
                  403, "import with ?scope=team-b");
    expect_status(send(port, "POST", "/api/v1/reindex", kTeamA, "{}"), 403, "reindex");

    // Without a scope filter, every read sees team-a only.
    for (const std::string& path :
         {std::string("/api/v1/memories"), std::string("/api/v1/memories?tag=payroll"),
          std::string("/api/v1/memories?source=wiki"),
          std::string("/api/v1/memories?limit=1000")}) {
        Reply r = send(port, "GET", path, kTeamA);
        expect_status(r, 200, path);
        EXPECT_EQ(scopes_of(r.j()["entries"]), std::set<std::string>{"team-a"}) << path;
    }
    for (const char* mode : {"vector", "text", "hybrid"}) {
        for (const json& filters :
             {json::object(), json{{"tags", {"payroll"}}}, json{{"source", "wiki"}}}) {
            Reply r = send(port, "POST", "/api/v1/search", kTeamA,
                           json{{"query", "Confidential team-b payroll escalation contacts"},
                                {"mode", mode},
                                {"filters", filters}}
                               .dump());
            expect_status(r, 200, std::string("search ") + mode);
            json ids = json::array();
            json hits = r.j();
            for (const auto& h : hits["results"]) ids.push_back(h["id"]);
            EXPECT_EQ(ids, json::array({a["id"]})) << mode << " " << filters.dump() << " " << r;
        }
    }
    Reply exported = send(port, "GET", "/api/v1/memories:export", kTeamA);
    expect_status(exported, 200, "export");
    EXPECT_EQ(std::count(exported.body.begin(), exported.body.end(), '\n'), 1) << exported;
    EXPECT_TRUE(test::contains(exported.body, "\"team-a\"")) << exported;
    Reply stats = send(port, "GET", "/api/v1/stats", kTeamA);
    expect_status(stats, 200, "stats");
    EXPECT_EQ(stats.j()["entries"], 1) << stats;
    EXPECT_FALSE(test::contains(stats.body, "team-b")) << stats;
    // /metrics is server-wide (entries per scope, for every scope): refused, even after an
    // unbound admin's scrape filled the per-scope gauges.
    ASSERT_EQ(send(port, "GET", "/metrics", kAdmin).status, 200);
    Reply metrics_text = send(port, "GET", "/metrics", kTeamA);
    expect_status(metrics_text, 403, "metrics");
    EXPECT_FALSE(test::contains(metrics_text.body, "team-b")) << "metrics show team-b to team-a";
    for (const char* body : {R"({"question": "Confidential team-b payroll escalation contacts"})",
                             R"({"question": "payroll escalation contacts", "scope": "team-a"})"}) {
        Reply asked = send(port, "POST", "/api/v1/ask", kTeamA, body);
        expect_status(asked, 200, "ask");
        json sources = asked.j()["sources"];
        ASSERT_TRUE(sources.is_array()) << asked;
        EXPECT_FALSE(sources.empty()) << asked;
        EXPECT_EQ(scopes_of(sources), std::set<std::string>{"team-a"}) << asked;
    }
    Reply streamed = send(port, "POST", "/api/v1/ask", kTeamA,
                          R"({"question": "Confidential team-b payroll", "stream": true})");
    expect_status(streamed, 200, "ask stream");
    EXPECT_FALSE(test::contains(streamed.body, "team-b\"")) << streamed;

    // Imports: lines for team-b are rejected, the rest land in team-a.
    Reply imported = send(port, "POST", "/api/v1/memories:import", kTeamA,
                          "{\"content\": \"Imported for b\", \"scope\": \"team-b\"}\n"
                          "{\"content\": \"Imported without a scope\"}\n",
                          "application/x-ndjson");
    expect_status(imported, 200, "import");
    EXPECT_EQ(imported.j()["added"], 1) << imported;
    EXPECT_EQ(imported.j()["rejected"].size(), 1u) << imported;
    // Saving team-b's exact text from team-a makes a team-a entry, never returns team-b's id.
    Reply same =
        send(port, "POST", "/api/v1/memories", kTeamA, json{{"content", b["content"]}}.dump());
    ++checks;
    EXPECT_EQ(same.status, 201) << same;
    EXPECT_NE(same.j()["id"], b["id"]);
    EXPECT_EQ(same.j()["scope"], "team-a");

    // Afterwards team-b holds exactly what the admin saved there.
    Reply b_list = send(port, "GET", "/api/v1/memories?scope=team-b", kAdmin);
    ASSERT_EQ(b_list.status, 200) << b_list;
    ASSERT_EQ(b_list.j()["entries"].size(), 1u) << b_list;
    EXPECT_EQ(b_list.j()["entries"][0]["id"], b["id"]);
    EXPECT_EQ(b_list.j()["entries"][0]["content"], b["content"]);
    print_figure(fmt::format("scope-isolation requests_checked={} leaks=0", checks));
}

// --- TLS to PostgreSQL
// ----------------------------------------------------------------------------

// Runs openssl, failing the test on error.
void openssl(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"openssl"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = run(argv);
    if (r.exit_code != 0)
        throw std::runtime_error(fmt::format("openssl {} failed: {}", args.front(), r.output));
}

// A CA (ca.crt, ca.key) in `dir` with this common name.
void make_ca(const fs::path& dir, const std::string& cn) {
    fs::create_directories(dir);
    openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", (dir / "ca.key").string(), "-out", (dir / "ca.crt").string(), "-days", "2",
             "-subj", "/CN=" + cn});
}

TEST_F(Security, TlsVerifyFullConnectsWithTheRightCaAndFailsClearlyWithAWrongOne) {
    test::PrivateCluster cluster("rel-tls", test::free_port());
    const auto& c = cluster.cluster();
    fs::path dir = test::unique_dir("rel-tls-certs");
    make_ca(dir / "right", "knowledge-agent test CA");
    make_ca(dir / "wrong", "some other CA");
    // The server certificate: CN and SAN localhost, signed by the right CA.
    fs::path key = c.data_dir / "server.key", crt = c.data_dir / "server.crt";
    openssl({"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key.string(), "-out", (dir / "server.csr").string(), "-subj",
             "/CN=localhost"});
    std::ofstream(dir / "san.ext") << "subjectAltName=DNS:localhost\n";
    openssl({"x509", "-req", "-in", (dir / "server.csr").string(), "-CA",
             (dir / "right/ca.crt").string(), "-CAkey", (dir / "right/ca.key").string(),
             "-CAcreateserial", "-out", crt.string(), "-days", "2", "-extfile",
             (dir / "san.ext").string()});
    // The key belongs to the account running PostgreSQL, mode 0600, or the server refuses it.
    if (!c.run_as.empty()) {
        const passwd* pw = getpwnam(c.run_as.c_str());
        ASSERT_NE(pw, nullptr);
        for (const auto& f : {key, crt}) ASSERT_EQ(chown(f.c_str(), pw->pw_uid, pw->pw_gid), 0);
    }
    ASSERT_EQ(chmod(key.c_str(), 0600), 0);
    std::ofstream(c.data_dir / "postgresql.conf", std::ios::app)
        << "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n";
    ASSERT_TRUE(db::stop_embedded(c));
    auto started = db::start_embedded(c);
    ASSERT_TRUE(started) << started.error().message;

    const std::string password = trim(read_all(c.data_dir / "knowledge-agent.password"));
    auto url = [&](const std::string& host, const fs::path& root) {
        return fmt::format(
            "postgresql://knowledge_agent:{}@{}:{}/knowledge_agent?hostaddr=127.0.0.1&"
            "sslmode=verify-full&sslrootcert={}",
            password, host, c.port, root.string());
    };
    // The right CA: the whole start-up path (pgvector, migrations) runs over TLS.
    auto good = test::run_agent({"migrate", "up"},
                                {"POSTGRES_URL=" + url("localhost", dir / "right/ca.crt"),
                                 "KNOWLEDGE_AGENT_EMBEDDING_DIMENSIONS=64"});
    EXPECT_EQ(good.exit_code, 0) << good.output;
    auto doctor = test::run_agent({"doctor", "--json"},
                                  {"POSTGRES_URL=" + url("localhost", dir / "right/ca.crt"),
                                   "KNOWLEDGE_AGENT_EMBEDDING_DIMENSIONS=64"});
    EXPECT_TRUE(test::contains(doctor.output, "in use")) << doctor.output;
    auto direct = db::Connection::open(
        db::Target{url("localhost", dir / "right/ca.crt"), "tls test", false}, 10);
    ASSERT_TRUE(direct) << direct.error().message;
    auto ssl = direct->exec("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    ASSERT_TRUE(ssl);
    EXPECT_EQ(ssl->text(0, 0), "t");

    // A wrong CA: exit 4 with libpq's reason and a hint about sslrootcert.
    auto wrong = test::run_agent({"migrate", "up"},
                                 {"POSTGRES_URL=" + url("localhost", dir / "wrong/ca.crt")});
    EXPECT_EQ(wrong.exit_code, 4) << wrong.output;
    EXPECT_TRUE(test::contains(wrong.output, "certificate verify failed")) << wrong.output;
    EXPECT_TRUE(test::contains(wrong.output, "sslrootcert")) << wrong.output;
    // The right CA but a host name the certificate does not name.
    auto mismatch = test::run_agent({"migrate", "up"},
                                    {"POSTGRES_URL=" + url("127.0.0.1", dir / "right/ca.crt")});
    EXPECT_EQ(mismatch.exit_code, 4) << mismatch.output;
    EXPECT_TRUE(test::contains(mismatch.output, "does not match host name")) << mismatch.output;
    for (const auto* out : {&good.output, &doctor.output, &wrong.output, &mismatch.output})
        EXPECT_FALSE(test::contains(*out, password)) << *out;
    print_figure(fmt::format(
        "tls verify-full right_ca=exit {} ssl={} wrong_ca=exit {} host_mismatch=exit {}",
        good.exit_code, ssl->text(0, 1), wrong.exit_code, mismatch.exit_code));
    fs::remove_all(dir);
}

// --- least privilege, the guide's setup ---------------------------------------------------------

// Drops the roles when the test ends (after the databases that hold their objects).
struct Roles {
    std::vector<std::string> names;
    ~Roles() {
        auto admin =
            db::Connection::open(db::embedded_target(test::shared_cluster(), "postgres"), 10);
        if (!admin) return;
        for (const auto& n : names) (void)admin->exec("DROP ROLE IF EXISTS " + db::quote_ident(n));
    }
};

TEST_F(Security, LeastPrivilegeRolesFromTheGuideWorkEndToEnd) {
    Roles roles;
    const std::string owner = fmt::format("ka_owner_{}", getpid());
    const std::string app = fmt::format("ka_app_{}", getpid());
    roles.names = {owner, app};
    test::TestDatabase db;      // set up as the guide says
    test::TestDatabase no_ext;  // pgvector not created by a superuser
    for (const auto& r : roles.names) db.sql("CREATE ROLE " + db::quote_ident(r) + " LOGIN");
    // docs/postgresql.md, "Separate schema owner and runtime role", as a superuser:
    db.sql("CREATE EXTENSION IF NOT EXISTS vector");
    db.sql("GRANT CREATE ON SCHEMA public TO " + db::quote_ident(owner));
    db.sql(
        fmt::format("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT, "
                    "INSERT, UPDATE, DELETE ON TABLES TO {}",
                    db::quote_ident(owner), db::quote_ident(app)));
    no_ext.sql("GRANT CREATE ON SCHEMA public TO " + db::quote_ident(owner));
    const std::vector<std::string> common = {"KNOWLEDGE_AGENT_EMBEDDING_DIMENSIONS=64"};
    auto with = [&](std::vector<std::string> env) {
        env.insert(env.end(), common.begin(), common.end());
        return env;
    };

    // The owner applies the migrations ...
    auto migrated = test::run_agent({"migrate", "up"}, with({"POSTGRES_URL=" + db.url(owner)}));
    ASSERT_EQ(migrated.exit_code, 0) << migrated.output;
    // ... and cannot create the extension in a database where no superuser did.
    auto refused = test::run_agent({"migrate", "up"}, with({"POSTGRES_URL=" + no_ext.url(owner)}));
    EXPECT_EQ(refused.exit_code, 6) << refused.output;
    EXPECT_TRUE(test::contains(refused.output, "CREATE EXTENSION")) << refused.output;
    EXPECT_TRUE(test::contains(refused.output, "superuser")) << refused.output;
    auto ext = no_ext.sql("SELECT count(*) FROM pg_extension WHERE extname = 'vector'");
    EXPECT_EQ(ext.integer(0, 0), 0);

    // The runtime role serves with migrations.auto false: save, search, import, export.
    test::ServeProcess serve({"--port", "0"}, with({"POSTGRES_URL=" + db.url(app),
                                                    "KNOWLEDGE_AGENT_MIGRATIONS_AUTO=false"}));
    ASSERT_TRUE(serve.wait_ready()) << serve.output();
    int port = serve.port();
    Reply saved =
        send(port, "POST", "/api/v1/memories", "",
             R"({"content": "The VPN certificate renews every 90 days", "tags": ["vpn"]})");
    EXPECT_EQ(saved.status, 201) << saved;
    Reply again = send(port, "POST", "/api/v1/memories", "",
                       R"({"content": "The VPN certificate renews every 90 days"})");
    EXPECT_EQ(again.status, 200) << again;
    for (const char* mode : {"vector", "text", "hybrid"}) {
        Reply found = send(port, "POST", "/api/v1/search", "",
                           json{{"query", "VPN certificate renewal"}, {"mode", mode}}.dump());
        EXPECT_EQ(found.status, 200) << found;
        EXPECT_EQ(found.j()["results"].size(), 1u) << mode << " " << found;
    }
    Reply imported =
        send(port, "POST", "/api/v1/memories:import", "",
             "{\"content\": \"Imported as the runtime role\"}\n", "application/x-ndjson");
    EXPECT_EQ(imported.status, 200) << imported;
    EXPECT_EQ(imported.j()["added"], 1) << imported;
    std::string id = saved.j().value("id", "");
    EXPECT_EQ(
        send(port, "PATCH", "/api/v1/memories/" + id, "", R"({"tags": ["vpn", "it"]})").status,
        200);
    EXPECT_EQ(send(port, "GET", "/api/v1/memories:export", "").status, 200);
    EXPECT_EQ(send(port, "GET", "/ready", "").status, 200);
    serve.signal(SIGTERM);
    EXPECT_EQ(serve.wait_exit(30s), 0) << serve.output();
    EXPECT_FALSE(test::contains(serve.output(), "ERROR")) << serve.output();

    // The runtime role really holds only DML: no DDL, no extension.
    auto as_app = db.connect(app);
    for (const char* sql : {"CREATE TABLE ka_intruder (x int)", "DROP TABLE memory_entries",
                            "ALTER TABLE memory_entries ADD COLUMN x int",
                            "CREATE EXTENSION IF NOT EXISTS pg_trgm", "TRUNCATE memory_entries"}) {
        auto r = as_app.exec(sql);
        EXPECT_FALSE(r) << sql << " succeeded as the runtime role";
        if (!r) {
            EXPECT_TRUE(test::contains(r.error().message, "42501") ||
                        test::contains(r.error().message, "permission denied") ||
                        test::contains(r.error().message, "must be owner"))
                << sql << ": " << r.error().message;
        }
    }
    EXPECT_EQ(db.sql("SELECT count(*) FROM memory_entries").integer(0, 0), 2);
    print_figure(
        "least-privilege owner=migrate up ok, extension refused (exit 6); runtime role: save, "
        "dedup, 3 search modes, import, patch, export ok; DDL refused 5/5");
}

}  // namespace
}  // namespace ka
