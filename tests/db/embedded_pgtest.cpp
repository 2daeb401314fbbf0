#include "db/embedded.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/pg.h"

namespace ka::db {
namespace {

using test::contains;
namespace fs = std::filesystem;

TEST(Embedded, CliManagesTheClusterLifecycleAndKeepsData) {
    fs::path dir = test::unique_dir("lifecycle");
    std::vector<std::string> env = {"KNOWLEDGE_AGENT_POSTGRES_EMBEDDED_DATA_DIR=" + dir.string()};

    auto fresh = test::run_agent({"db", "status"}, env);
    EXPECT_EQ(fresh.exit_code, 3) << fresh.output;
    EXPECT_TRUE(contains(fresh.output, "not initialised"));

    auto start = test::run_agent({"db", "start"}, env);
    ASSERT_EQ(start.exit_code, 0) << start.output;
    EXPECT_TRUE(contains(start.output, "Initialising embedded PostgreSQL cluster"));
    EXPECT_TRUE(contains(start.output, "running (pid "));
    EXPECT_TRUE(fs::exists(dir / ".s.PGSQL.5432")) << "socket lives in the private data directory";
    struct stat st {};
    ASSERT_EQ(stat(dir.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0700u);

    auto json = test::run_agent({"db", "status", "--json"}, env);
    ASSERT_EQ(json.exit_code, 0) << json.output;
    auto j = nlohmann::json::parse(json.output.substr(json.output.find('{')));
    EXPECT_TRUE(j["running"].get<bool>());
    EXPECT_EQ(j["data_dir"], dir.string());

    config::Embedded settings;
    settings.data_dir = dir.string();
    settings.run_as = "postgres";
    auto cluster = resolve_embedded(settings);
    ASSERT_TRUE(cluster);
    {
        auto conn = Connection::open(embedded_target(*cluster), 10);
        ASSERT_TRUE(conn) << conn.error().message;
        ASSERT_TRUE(conn->exec("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"));
        // The managed tuning knobs are live (knowledge-agent.conf is included).
        EXPECT_EQ(conn->exec("SHOW max_wal_size")->text(0, 0), "4GB");
        EXPECT_EQ(conn->exec("SHOW work_mem")->text(0, 0), "64MB");
    }
    EXPECT_EQ(test::run_agent({"db", "stop"}, env).exit_code, 0);
    auto stopped = test::run_agent({"db", "status"}, env);
    EXPECT_EQ(stopped.exit_code, 3);
    EXPECT_TRUE(contains(stopped.output, "stopped")) << stopped.output;

    // A later run reuses the cluster: no second initdb, data still there.
    auto again = test::run_agent({"db", "start"}, env);
    ASSERT_EQ(again.exit_code, 0) << again.output;
    EXPECT_FALSE(contains(again.output, "Initialising"));
    {
        auto conn = Connection::open(embedded_target(*cluster), 10);
        ASSERT_TRUE(conn);
        EXPECT_EQ(conn->exec("SELECT v FROM kept")->text(0, 0), "42");
    }
    // Starting a running cluster is a no-op.
    EXPECT_EQ(test::run_agent({"db", "start"}, env).exit_code, 0);
    EXPECT_EQ(test::run_agent({"db", "stop"}, env).exit_code, 0);
    fs::remove_all(dir);
}

TEST(Embedded, LoopbackPortUsesAGeneratedPassword) {
    int port = test::free_port();
    test::PrivateCluster pg("tcp", port);
    fs::path password_file = pg.cluster().data_dir / "knowledge-agent.password";
    ASSERT_TRUE(fs::exists(password_file));
    EXPECT_EQ(fs::status(password_file).permissions() & fs::perms::all,
              fs::perms::owner_read | fs::perms::owner_write);
    std::string password;
    std::ifstream(password_file) >> password;
    ASSERT_EQ(password.size(), 48u);

    std::string base =
        "postgres://knowledge_agent:{}@127.0.0.1:" + std::to_string(port) + "/knowledge_agent";
    auto good = test::run_agent({"migrate", "up"},
                                {"POSTGRES_URL=" + fmt::format(fmt::runtime(base), password)});
    EXPECT_EQ(good.exit_code, 0) << good.output;
    EXPECT_FALSE(contains(good.output, password));

    auto bad = test::run_agent(
        {"migrate", "up"}, {"POSTGRES_URL=" + fmt::format(fmt::runtime(base), "wrong-pass-1234")});
    EXPECT_EQ(bad.exit_code, 4) << bad.output;
    EXPECT_TRUE(contains(bad.output, "ERROR Failed to connect to PostgreSQL")) << bad.output;
    EXPECT_TRUE(contains(bad.output, "password authentication failed"));
    EXPECT_TRUE(contains(bad.output, "Hint: check the user name and password"));
    EXPECT_TRUE(contains(bad.output, "knowledge_agent:***@127.0.0.1"));
    EXPECT_FALSE(contains(bad.output, "wrong-pass-1234"));
}

TEST(Embedded, UnreachableServerIsAClearConnectionError) {
    int port = test::free_port();
    auto r = test::run_agent(
        {"migrate", "up"},
        {"POSTGRES_URL=postgresql://app:Sup3rSecret!@127.0.0.1:" + std::to_string(port) + "/ka"});
    EXPECT_EQ(r.exit_code, 4) << r.output;
    EXPECT_TRUE(contains(r.output, "Connection refused")) << r.output;
    EXPECT_TRUE(contains(r.output, "no PostgreSQL server listens there"));
    EXPECT_FALSE(contains(r.output, "Sup3rSecret"));

    // libpq options pass through untouched: sslmode=require against a server without SSL.
    auto ssl = test::run_agent(
        {"migrate", "up"},
        {"POSTGRES_URL=host=/nonexistent-dir port=5432 dbname=x sslmode=verify-full"});
    EXPECT_EQ(ssl.exit_code, 4) << ssl.output;
}

TEST(Embedded, RefusesANonEmptyDirectoryThatIsNoCluster) {
    fs::path dir = test::unique_dir("notacluster");
    fs::create_directories(dir);
    std::ofstream(dir / "precious.txt") << "data";
    auto r = test::run_agent({"db", "start"},
                             {"KNOWLEDGE_AGENT_POSTGRES_EMBEDDED_DATA_DIR=" + dir.string()});
    EXPECT_EQ(r.exit_code, 4) << r.output;
    EXPECT_TRUE(contains(r.output, "is not a PostgreSQL data directory"));
    EXPECT_TRUE(fs::exists(dir / "precious.txt"));
    fs::remove_all(dir);
}

TEST(Embedded, AsRootExplainsAnUnreachableDataDirectory) {
    if (geteuid() != 0) GTEST_SKIP() << "only meaningful as root";
    fs::path parent = test::unique_dir("private");
    fs::create_directories(parent);
    fs::permissions(parent, fs::perms::owner_all);
    auto r = test::run_agent({"db", "start"}, {"KNOWLEDGE_AGENT_POSTGRES_EMBEDDED_DATA_DIR=" +
                                               (parent / "pg").string()});
    EXPECT_EQ(r.exit_code, 4) << r.output;
    EXPECT_TRUE(contains(r.output, "cannot enter " + parent.string())) << r.output;
    fs::remove_all(parent);
}

}  // namespace
}  // namespace ka::db
