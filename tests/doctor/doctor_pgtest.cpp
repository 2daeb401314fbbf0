#include "doctor/doctor.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "db/startup.h"
#include "support/pg.h"

namespace ka::doctor {
namespace {

using test::contains;

const Check& find(const Report& r, const std::string& id) {
    for (const auto& c : r.checks) {
        if (c.id == id) return c;
    }
    throw std::runtime_error("no check " + id);
}

TEST(Doctor, PassesOnAMigratedDatabaseWithMonitoringFigures) {
    test::TestDatabase db;
    auto config = test::config_for(db.url());
    auto conn = db.connect();
    ASSERT_TRUE(db::prepare_schema(conn, config, true));

    auto report = run(config);
    EXPECT_TRUE(report.ok()) << render_text(report);
    for (const char* id :
         {"connection", "server_version", "pgvector_available", "pgvector_created", "privileges",
          "vector_operation", "schema", "embedding_dimensions", "hnsw_index"}) {
        const auto& c = find(report, id);
        EXPECT_TRUE(c.required) << id;
        EXPECT_TRUE(c.status == Status::pass || c.status == Status::warn) << id << ": " << c.value;
    }
    EXPECT_TRUE(contains(find(report, "vector_operation").value, "5.196"));
    EXPECT_TRUE(contains(find(report, "hnsw_index").value, "m=16 ef_construction=128"));
    EXPECT_EQ(find(report, "shared_preload_libraries").status, Status::info);

    auto cli = test::run_agent({"doctor", "--json"}, {"POSTGRES_URL=" + db.url()});
    EXPECT_EQ(cli.exit_code, 0) << cli.output;
    auto j = nlohmann::json::parse(cli.output);
    EXPECT_TRUE(j["ok"].get<bool>());
    for (const char* figure :
         {"entries", "table size (memory_entries, total)",
          "index size (idx_memory_entries_embedding)", "idx_scan", "idx_tup_read"}) {
        EXPECT_TRUE(j["monitoring"].contains(figure)) << figure;
    }
    EXPECT_TRUE(j["tuning"].contains("shared_buffers"));

    auto text = test::run_agent({"doctor"}, {"POSTGRES_URL=" + db.url()});
    EXPECT_EQ(text.exit_code, 0);
    EXPECT_TRUE(contains(text.output, "PASS  HNSW index idx_memory_entries_embedding"))
        << text.output;
    EXPECT_TRUE(contains(text.output, "All required checks pass"));
}

TEST(Doctor, FailsWithFixesOnAnUnmigratedDatabase) {
    test::TestDatabase db;
    auto r = test::run_agent({"doctor"}, {"POSTGRES_URL=" + db.url()});
    EXPECT_EQ(r.exit_code, 10) << r.output;
    EXPECT_TRUE(contains(r.output, "FAIL  pgvector created in this database")) << r.output;
    EXPECT_TRUE(contains(r.output, "fix: as a superuser, in database " + db.name()));
    EXPECT_TRUE(contains(r.output, "FAIL  Schema up to date"));
    EXPECT_TRUE(contains(r.output, "run knowledge-agent migrate up"));
    // doctor diagnoses only: it changed nothing.
    EXPECT_EQ(db.sql("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").integer(0, 0),
              0);
    EXPECT_EQ(db.sql("SELECT to_regclass('schema_migrations') IS NULL").text(0, 0), "t");
}

TEST(Doctor, ReportsIndexParametersThatDifferFromConfig) {
    test::TestDatabase db;
    auto config = test::config_for(db.url());
    auto conn = db.connect();
    ASSERT_TRUE(db::prepare_schema(conn, config, true));
    config.index.hnsw.m = 32;
    config.index.hnsw.ef_construction = 128;
    auto report = run(config);
    EXPECT_TRUE(report.ok());
    EXPECT_EQ(find(report, "hnsw_index").status, Status::warn);
    EXPECT_TRUE(contains(find(report, "hnsw_index").fix, "m=32 ef_construction=128"));
}

TEST(Doctor, UnreachableDatabaseFailsFirstCheckAndRedactsPassword) {
    auto config = test::config_for(
        "postgres://app:PlainTextPw9@127.0.0.1:" + std::to_string(test::free_port()) + "/ka");
    auto report = run(config);
    EXPECT_FALSE(report.ok());
    EXPECT_EQ(find(report, "connection").status, Status::fail);
    std::string text = render_text(report) + render_json(report);
    EXPECT_FALSE(contains(text, "PlainTextPw9")) << text;
    EXPECT_TRUE(contains(text, "app:***@127.0.0.1"));
}

}  // namespace
}  // namespace ka::doctor
