#include "db/migrate.h"

#include <thread>

#include <gtest/gtest.h>

#include "db/startup.h"
#include "support/pg.h"

namespace ka::db {
namespace {

using test::contains;
using test::TestDatabase;

TEST(Migrate, FreshDatabaseGetsSchemaAndIndex) {
    TestDatabase db;
    auto config = test::config_for(db.url());
    auto conn = db.connect();
    ASSERT_TRUE(prepare_schema(conn, config, true));

    auto applied = db.sql(
        "SELECT version, name, length(checksum), duration_ms >= 0 FROM schema_migrations ORDER BY "
        "1");
    ASSERT_EQ(applied.rows(), static_cast<int>(known_migrations().size()));
    EXPECT_EQ(applied.text(0, 1), "memory_entries");
    EXPECT_EQ(applied.integer(0, 2), 64);
    EXPECT_TRUE(applied.boolean(0, 3));

    auto index = db.sql(
        "SELECT am.amname, pg_get_indexdef(c.oid) FROM pg_class c JOIN pg_am am ON am.oid = "
        "c.relam "
        "WHERE c.relname = 'idx_memory_entries_embedding'");
    ASSERT_EQ(index.rows(), 1);
    EXPECT_EQ(index.text(0, 0), "hnsw");
    EXPECT_TRUE(contains(index.text(0, 1), "vector_cosine_ops")) << index.text(0, 1);
    EXPECT_TRUE(contains(index.text(0, 1), "m='16'")) << index.text(0, 1);
    EXPECT_TRUE(contains(index.text(0, 1), "ef_construction='128'"));

    auto column = db.sql(
        "SELECT format_type(atttypid, atttypmod), attstorage FROM pg_attribute "
        "WHERE attrelid = 'memory_entries'::regclass AND attname = 'embedding'");
    EXPECT_EQ(column.text(0, 0), "vector(768)");
    EXPECT_EQ(column.text(0, 1), "p");  // PLAIN: kept inline

    // A short entry stays whole in the heap: nothing of it goes to the TOAST table.
    db.sql(
        "INSERT INTO memory_entries (id, scope, content, content_hash, embedding, embedding_model) "
        "SELECT gen_random_uuid(), 'default', repeat('deploys are on Tuesdays ', 40), sha256('x'), "
        "array_fill(0.036, ARRAY[768])::vector, 'm'");
    EXPECT_EQ(db.sql("SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = "
                     "'memory_entries'")
                  .integer(0, 0),
              0);

    auto columns = db.sql(
        "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute "
        "WHERE attrelid = 'memory_entries'::regclass AND attnum > 0 AND NOT attisdropped");
    EXPECT_EQ(columns.text(0, 0),
              "id,scope,content,content_hash,metadata,tags,source,author,embedding,embedding_model,"
              "created_at,updated_at,content_tsv");
}

TEST(Migrate, SecondRunIsANoOp) {
    TestDatabase db;
    auto config = test::config_for(db.url());
    auto conn = db.connect();
    ASSERT_TRUE(prepare_schema(conn, config, true));
    auto before = db.sql("SELECT applied_at FROM schema_migrations WHERE version = 1").text(0, 0);
    EXPECT_EQ(*run_migrations(conn, config, true), 0);
    ASSERT_TRUE(prepare_schema(conn, config, true));
    EXPECT_EQ(db.sql("SELECT applied_at FROM schema_migrations WHERE version = 1").text(0, 0),
              before);
    EXPECT_EQ(db.sql("SELECT count(*) FROM schema_migrations").integer(0, 0),
              static_cast<long long>(known_migrations().size()));
}

TEST(Migrate, HnswParametersComeFromConfig) {
    TestDatabase db;
    auto config = test::config_for(db.url());
    config.index.hnsw.m = 24;
    config.index.hnsw.ef_construction = 100;
    auto conn = db.connect();
    ASSERT_TRUE(prepare_schema(conn, config, true));
    auto params = hnsw_index_params(conn);
    ASSERT_TRUE(params && *params);
    EXPECT_EQ((*params)->m, 24);
    EXPECT_EQ((*params)->ef_construction, 100);
}

TEST(Migrate, EightProcessesApplyEachMigrationOnce) {
    TestDatabase db;
    std::vector<ProcessResult> results(8);
    std::vector<std::thread> threads;
    for (auto& r : results) {
        threads.emplace_back([&] {
            r = test::run_agent({"migrate", "up"}, {"POSTGRES_URL=" + db.url()});
        });
    }
    for (auto& t : threads) t.join();
    int applied_lines = 0;
    for (const auto& r : results) {
        EXPECT_EQ(r.exit_code, 0) << r.output;
        for (std::size_t at = r.output.find("Applied migration"); at != std::string::npos;
             at = r.output.find("Applied migration", at + 1))
            ++applied_lines;
    }
    EXPECT_EQ(applied_lines, static_cast<int>(known_migrations().size()));
    EXPECT_EQ(db.sql("SELECT count(*), count(DISTINCT version) FROM schema_migrations").text(0, 0),
              std::to_string(known_migrations().size()));
    EXPECT_EQ(db.sql("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").integer(0, 0),
              1);
}

TEST(Migrate, TamperedChecksumFailsFast) {
    TestDatabase db;
    auto config = test::config_for(db.url());
    auto conn = db.connect();
    ASSERT_TRUE(prepare_schema(conn, config, true));
    db.sql("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 1");
    auto again = prepare_schema(conn, config, true);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ErrorCode::migration);
    EXPECT_TRUE(
        contains(again.error().message, "0001_memory_entries was changed after it was applied"))
        << again.error().message;

    auto cli = test::run_agent({"migrate", "up"}, {"POSTGRES_URL=" + db.url()});
    EXPECT_EQ(cli.exit_code, 9) << cli.output;
    EXPECT_TRUE(contains(cli.output, "ERROR Failed to run database migrations error="))
        << cli.output;
    auto status = test::run_agent({"migrate", "status"}, {"POSTGRES_URL=" + db.url()});
    EXPECT_EQ(status.exit_code, 9);
    EXPECT_TRUE(contains(status.output, "changed")) << status.output;
}

TEST(Migrate, MigrationFromANewerVersionFailsFast) {
    TestDatabase db;
    auto config = test::config_for(db.url());
    auto conn = db.connect();
    ASSERT_TRUE(prepare_schema(conn, config, true));
    db.sql(
        "INSERT INTO schema_migrations (version, name, checksum, duration_ms) VALUES (9999, "
        "'future', 'x', 1)");
    auto again = prepare_schema(conn, config, true);
    ASSERT_FALSE(again);
    EXPECT_TRUE(contains(again.error().message, "9999_future")) << again.error().message;
    EXPECT_TRUE(contains(again.error().message, "newer version"));
}

TEST(Migrate, AutoOffRefusesPendingAndSaysHow) {
    TestDatabase db;
    auto r = test::run_agent({"migrate", "status"}, {"POSTGRES_URL=" + db.url()});
    EXPECT_EQ(r.exit_code, 9);
    EXPECT_TRUE(contains(r.output, "pending")) << r.output;

    auto config = test::config_for(db.url());
    config.migrations.auto_apply = false;
    auto conn = db.connect();
    db.sql("CREATE EXTENSION vector");
    auto refused = prepare_schema(conn, config, false);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, ErrorCode::migration);
    EXPECT_TRUE(contains(refused.error().message, "pending migration(s): 0001_memory_entries"));
    EXPECT_TRUE(contains(refused.error().hint, "knowledge-agent migrate up"));
    EXPECT_EQ(db.sql("SELECT to_regclass('memory_entries') IS NULL").text(0, 0), "t");

    auto up = test::run_agent(
        {"migrate", "up"}, {"POSTGRES_URL=" + db.url(), "KNOWLEDGE_AGENT_MIGRATIONS_AUTO=false"});
    EXPECT_EQ(up.exit_code, 0) << up.output;  // `migrate up` applies whatever migrations.auto says
    EXPECT_TRUE(prepare_schema(conn, config, false));
}

TEST(Migrate, DimensionMismatchWithExistingSchemaFailsFast) {
    TestDatabase db;
    auto config = test::config_for(db.url());
    auto conn = db.connect();
    ASSERT_TRUE(prepare_schema(conn, config, true));
    config.embedding.dimensions = 1024;
    auto again = prepare_schema(conn, config, true);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ErrorCode::config);
    EXPECT_TRUE(contains(again.error().message, "768-dimensional")) << again.error().message;
    EXPECT_TRUE(contains(again.error().message, "1024"));
}

TEST(Migrate, FailedMigrationLeavesNothingBehind) {
    TestDatabase db;
    auto config = test::config_for(db.url());
    db.sql("CREATE EXTENSION vector; CREATE TABLE memory_entries (id int)");  // clashes with 0001
    auto conn = db.connect();
    auto r = prepare_schema(conn, config, true);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::migration);
    EXPECT_TRUE(contains(r.error().message, "migration 0001_memory_entries failed"))
        << r.error().message;
    EXPECT_EQ(db.sql("SELECT count(*) FROM schema_migrations").integer(0, 0), 0);
    EXPECT_EQ(db.sql("SELECT to_regclass('idx_memory_entries_embedding') IS NULL").text(0, 0), "t");
}

}  // namespace
}  // namespace ka::db
