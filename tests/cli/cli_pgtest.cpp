// The binary as users run it: configuration errors, overrides, redaction, exit codes.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "db/migrate.h"
#include "support/pg.h"

namespace ka {
namespace {

using test::contains;
namespace fs = std::filesystem;

fs::path write_config(const std::string& text) {
    fs::path dir = test::unique_dir("config");
    fs::create_directories(dir);
    std::ofstream(dir / "config.yaml") << text;
    return dir / "config.yaml";
}

TEST(Cli, ConfigErrorsExitThreeWithKeyPath) {
    auto file = write_config("postgres:\n  pool_size: -1\n");
    auto r = test::run_agent({"--config", file.string(), "migrate", "up"});
    EXPECT_EQ(r.exit_code, 3) << r.output;
    EXPECT_TRUE(contains(r.output, "ERROR Invalid configuration error=")) << r.output;
    EXPECT_TRUE(contains(r.output, "postgres.pool_size"));
    EXPECT_TRUE(contains(r.output, "an integer from 1 to 1000"));

    auto unknown = test::run_agent(
        {"config", "check"},
        {"KNOWLEDGE_AGENT_CONFIG=" + write_config("serch:\n  ef_search: 3\n").string()});
    EXPECT_EQ(unknown.exit_code, 3);
    EXPECT_TRUE(contains(unknown.output, "unknown config key 'serch'")) << unknown.output;
    EXPECT_TRUE(contains(unknown.output,
                         "Hint: allowed keys: agent, auth, embedding, index, llm, log, migrations, "
                         "postgres, rate_limit, search, server, store"))
        << unknown.output;
}

TEST(Cli, FileExpansionAndEnvironmentOverride) {
    test::TestDatabase db;
    auto file = write_config("postgres:\n  url: ${TEST_DB_URL}\nsearch:\n  ef_search: ${EF:-55}\n");
    auto shown =
        test::run_agent({"--config", file.string(), "config", "show"},
                        {"TEST_DB_URL=" + db.url(), "KNOWLEDGE_AGENT_SEARCH_EF_SEARCH=99"});
    EXPECT_EQ(shown.exit_code, 0) << shown.output;
    EXPECT_TRUE(contains(shown.output, "ef_search: 99")) << shown.output;
    EXPECT_TRUE(contains(shown.output, db.name()));

    auto up =
        test::run_agent({"--config", file.string(), "migrate", "up"}, {"TEST_DB_URL=" + db.url()});
    EXPECT_EQ(up.exit_code, 0) << up.output;
    EXPECT_EQ(db.sql("SELECT count(*) FROM schema_migrations").integer(0, 0),
              static_cast<int>(db::known_migrations().size()));
}

TEST(Cli, PasswordsAreRedactedInEveryOutput) {
    std::string url =
        "postgres://app:Redact-Me-42@127.0.0.1:" + std::to_string(test::free_port()) + "/ka";
    for (const auto& args : std::vector<std::vector<std::string>>{{"migrate", "up"},
                                                                  {"migrate", "status"},
                                                                  {"doctor"},
                                                                  {"doctor", "--json"},
                                                                  {"config", "show"}}) {
        for (const char* format : {"console", "json"}) {
            auto r = test::run_agent(
                args, {"POSTGRES_URL=" + url, std::string("KNOWLEDGE_AGENT_LOG_FORMAT=") + format});
            EXPECT_FALSE(contains(r.output, "Redact-Me-42")) << args[0] << ": " << r.output;
        }
    }
}

TEST(Cli, UsageErrorsExitTwo) {
    EXPECT_EQ(test::run_agent({"no-such-command"}).exit_code, 2);
    EXPECT_EQ(test::run_agent({"migrate"}).exit_code, 2);
    EXPECT_EQ(test::run_agent({"--help"}).exit_code, 0);
    auto v = test::run_agent({"version"});
    EXPECT_EQ(v.exit_code, 0);
    EXPECT_TRUE(contains(v.output, "knowledge-agent "));
}

TEST(Cli, DbCommandsRefuseAnExternalServer) {
    auto r = test::run_agent({"db", "stop"}, {"POSTGRES_URL=postgres://h/db"});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_TRUE(contains(r.output, "manages only the embedded cluster"));
}

}  // namespace
}  // namespace ka
