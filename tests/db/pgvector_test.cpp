#include "db/pgvector.h"

#include <gtest/gtest.h>

#include "db/connection.h"

namespace ka::db {
namespace {

TEST(Pgvector, ComparesVersionsNumerically) {
    EXPECT_LT(compare_versions("0.4.4", "0.5.0"), 0);
    EXPECT_EQ(compare_versions("0.5.0", "0.5.0"), 0);
    EXPECT_EQ(compare_versions("0.5", "0.5.0"), 0);
    EXPECT_GT(compare_versions("0.10.0", "0.5.0"), 0);
    EXPECT_GT(compare_versions("0.8.0", "0.7.4"), 0);
}

TEST(Pgvector, InstructionsPutTheDetectedPlatformFirst) {
    Target remote{"", "postgres://x", false};
    auto rds = install_instructions(remote, "mydb.abc123.eu-west-1.rds.amazonaws.com");
    EXPECT_LT(rds.find("AWS RDS"), rds.find("Docker"));
    auto azure = install_instructions(remote, "srv.postgres.database.azure.com");
    EXPECT_LT(azure.find("Azure"), azure.find("Docker"));
    EXPECT_NE(azure.find("azure.extensions"), std::string::npos);
    Target embedded{"", "embedded", true};
    auto local = install_instructions(embedded, "/var/lib/knowledge-agent/postgres");
    EXPECT_LT(local.find("scripts/setup.sh"), local.find("Docker"));
    // Every platform of the production guide is covered.
    for (const char* platform :
         {"Docker", "AWS RDS", "Azure", "Cloud SQL", "Debian", "RHEL", "macOS", "From source",
          "Supabase", "Heroku", "Render", "DigitalOcean", "Railway"}) {
        EXPECT_NE(rds.find(platform), std::string::npos) << platform;
    }
}

TEST(Pgvector, ClassifiesSqlstates) {
    EXPECT_EQ(classify_sqlstate("08006"), ErrorCode::unavailable);
    EXPECT_EQ(classify_sqlstate("57P01"), ErrorCode::unavailable);
    EXPECT_EQ(classify_sqlstate("53100"), ErrorCode::unavailable);
    EXPECT_EQ(classify_sqlstate("40001"), ErrorCode::unavailable);
    EXPECT_EQ(classify_sqlstate("25006"), ErrorCode::unavailable);
    EXPECT_EQ(classify_sqlstate("23505"), ErrorCode::conflict);
    EXPECT_EQ(classify_sqlstate("22P02"), ErrorCode::invalid_argument);
    EXPECT_EQ(classify_sqlstate("42501"), ErrorCode::permission_denied);
    EXPECT_EQ(classify_sqlstate("42P01"), ErrorCode::internal);
    EXPECT_EQ(classify_sqlstate(""), ErrorCode::unavailable);
}

TEST(Pgvector, ConnectionErrorsCarryHints) {
    Target t{"", "postgres://app:***@db/ka", false};
    auto auth = connection_error("FATAL:  password authentication failed for user \"app\"\n", t);
    EXPECT_EQ(auth.code, ErrorCode::unavailable);
    EXPECT_NE(auth.hint.find("password"), std::string::npos);
    auto ssl = connection_error("SSL error: certificate verify failed", t);
    EXPECT_NE(ssl.hint.find("sslrootcert"), std::string::npos);
    auto refused = connection_error("connection to server at \"db\" failed: Connection refused", t);
    EXPECT_NE(refused.hint.find("host and port"), std::string::npos);
    auto timeout = connection_error("timeout expired", t);
    EXPECT_NE(timeout.hint.find("connect_timeout"), std::string::npos);
}

}  // namespace
}  // namespace ka::db
