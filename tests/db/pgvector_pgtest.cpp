#include "db/pgvector.h"

#include <gtest/gtest.h>

#include "support/pg.h"

namespace ka::db {
namespace {

using test::contains;

// Tables in the public schema: an untouched database has none.
long long public_relations(Connection& conn) {
    return conn.exec("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")
        ->integer(0, 0);
}

TEST(PgvectorServer, MissingOnServerFailsWithGuideErrorAndLeavesDatabaseUntouched) {
    test::PrivateCluster pg("novector", 0, test::relocated_postgres("novector-install"));
    auto r = test::run_agent({"migrate", "up"}, pg.env());
    EXPECT_EQ(r.exit_code, 5) << r.output;
    EXPECT_TRUE(contains(r.output, "INFO  Starting database migrations...")) << r.output;
    EXPECT_TRUE(
        contains(r.output,
                 "ERROR Failed to run database migrations error=\"pgvector extension not found\""));
    EXPECT_TRUE(contains(
        r.output, "The Knowledge Agent requires the pgvector extension for semantic search"));
    EXPECT_TRUE(contains(r.output, "Installation instructions by platform:"));
    // The embedded cluster's own fix comes first, then every platform of the guide.
    EXPECT_LT(r.output.find("scripts/setup.sh"), r.output.find("Docker"));
    for (const char* platform :
         {"pgvector/pgvector:pg16", "AWS RDS", "azure.extensions", "Cloud SQL", "Debian", "RHEL",
          "brew install pgvector", "From source", "Supabase", "Railway"}) {
        EXPECT_TRUE(contains(r.output, platform)) << platform;
    }
    EXPECT_FALSE(contains(r.output, "pgvector extension verified successfully"));

    auto conn = Connection::open(embedded_target(pg.cluster()), 10);
    ASSERT_TRUE(conn);
    EXPECT_EQ(public_relations(*conn), 0);
    EXPECT_EQ(
        conn->exec("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")->integer(0, 0), 0);

    // Through postgres.url, and with JSON logs, the same error is one JSON line.
    auto json = test::run_agent({"migrate", "up"},
                                {"POSTGRES_URL=" + embedded_target(pg.cluster()).conninfo,
                                 "KNOWLEDGE_AGENT_LOG_FORMAT=json"});
    EXPECT_EQ(json.exit_code, 5);
    EXPECT_TRUE(contains(json.output, "\"error\":\"pgvector extension not found\"")) << json.output;
    EXPECT_TRUE(contains(json.output, "\"code\":\"pgvector_missing\""));

    auto doctor = test::run_agent({"doctor"}, pg.env());
    EXPECT_EQ(doctor.exit_code, 10) << doctor.output;
    EXPECT_TRUE(contains(doctor.output, "FAIL  pgvector installed on the server")) << doctor.output;
}

class AppUser : public ::testing::Test {
  protected:
    test::TestDatabase db;
    std::string app = db.name() + "_app";
    void SetUp() override {
        // The production guide's least-privilege user: no superuser, no CREATE on the database.
        db.sql("CREATE ROLE " + app + " LOGIN; GRANT CONNECT ON DATABASE " + db.name() + " TO " +
               app + "; GRANT USAGE, CREATE ON SCHEMA public TO " + app);
    }
};

TEST_F(AppUser, StartsWhenADbaCreatedTheExtension) {
    db.sql("CREATE EXTENSION vector");
    auto r = test::run_agent({"migrate", "up"}, {"POSTGRES_URL=" + db.url(app)});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_TRUE(contains(r.output, "INFO  pgvector extension verified successfully version=0."))
        << r.output;
    EXPECT_EQ(db.sql("SELECT has_database_privilege('" + app + "', current_database(), 'CREATE')")
                  .text(0, 0),
              "f");
    EXPECT_EQ(
        db.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'memory_entries'").text(0, 0),
        app);

    auto doctor = test::run_agent({"doctor"}, {"POSTGRES_URL=" + db.url(app)});
    EXPECT_EQ(doctor.exit_code, 0) << doctor.output;
}

TEST_F(AppUser, WithoutTheExtensionGetsSuperuserGuidanceEvenWithCreateOnDatabase) {
    // The guide suggests GRANT CREATE ON DATABASE; it is not enough: pgvector is not trusted.
    db.sql("GRANT CREATE ON DATABASE " + db.name() + " TO " + app);
    auto r = test::run_agent({"migrate", "up"}, {"POSTGRES_URL=" + db.url(app)});
    EXPECT_EQ(r.exit_code, 6) << r.output;
    EXPECT_TRUE(contains(r.output, "pgvector extension is installed on the server but not created"))
        << r.output;
    EXPECT_TRUE(contains(r.output, "CREATE EXTENSION IF NOT EXISTS vector;"));
    EXPECT_TRUE(contains(r.output, "not a trusted extension"));
    EXPECT_TRUE(contains(r.output, "superuser"));
    EXPECT_TRUE(contains(r.output, "user \"" + app + "\""));
    auto conn = db.connect();
    EXPECT_EQ(public_relations(conn), 0);
}

TEST(PgvectorServer, TooOldToHaveHnsw) {
    test::PrivateCluster pg("oldvector", 0, test::relocated_postgres("oldvector-install", "0.4.0"));
    auto available = test::run_agent({"migrate", "up"}, pg.env());
    EXPECT_EQ(available.exit_code, 7) << available.output;
    EXPECT_TRUE(contains(available.output, "pgvector 0.4.0 on the server is too old"))
        << available.output;

    auto conn = Connection::open(embedded_target(pg.cluster()), 10);
    ASSERT_TRUE(conn);
    ASSERT_TRUE(conn->exec("CREATE EXTENSION vector"));  // a stand-in created long ago by a DBA
    auto created = test::run_agent({"migrate", "up"}, pg.env());
    EXPECT_EQ(created.exit_code, 7) << created.output;
    EXPECT_TRUE(contains(created.output, "pgvector 0.4.0 is created in this database"))
        << created.output;
    EXPECT_TRUE(contains(created.output, "ALTER EXTENSION vector UPDATE"));
    EXPECT_EQ(conn->exec("SELECT to_regclass('schema_migrations') IS NULL")->text(0, 0), "t");
}

}  // namespace
}  // namespace ka::db
