#include "log/log.h"

#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace ka::log {
namespace {

TEST(Log, ConsoleLinesFollowTheGuide) {
    EXPECT_EQ(format_line(Level::info, Format::console, "Starting database migrations...", {}),
              "INFO  Starting database migrations...");
    EXPECT_EQ(format_line(Level::debug, Format::console,
                          "Verifying pgvector extension availability...", {}),
              "DEBUG Verifying pgvector extension availability...");
    EXPECT_EQ(format_line(Level::error, Format::console, "Failed to run database migrations",
                          {{"error", "pgvector extension not found"}}),
              "ERROR Failed to run database migrations error=\"pgvector extension not found\"");
    EXPECT_EQ(format_line(Level::warn, Format::console, "m", {{"k", "v"}, {"n", "2"}, {"e", ""}}),
              "WARN  m k=v n=2 e=\"\"");
}

TEST(Log, JsonLinesAreObjects) {
    auto line = format_line(Level::warn, Format::json, "slow query",
                            {{"duration_ms", "12"}, {"quote", "a\"b"}});
    auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["level"], "warn");
    EXPECT_EQ(j["msg"], "slow query");
    EXPECT_EQ(j["duration_ms"], "12");
    EXPECT_EQ(j["quote"], "a\"b");
    EXPECT_TRUE(j.contains("ts"));
}

TEST(Log, PasswordsNeverReachTheLog) {
    for (auto format : {Format::console, Format::json}) {
        auto line =
            format_line(Level::error, format, "cannot connect to postgres://app:hunter22@db/ka",
                        {{"url", "host=db password=hunter22"}});
        EXPECT_EQ(line.find("hunter22"), std::string::npos) << line;
        EXPECT_NE(line.find("***"), std::string::npos) << line;
    }
}

TEST(Log, LevelFilteringAndRedirect) {
    std::ostringstream out;
    redirect(&out);
    configure("warn", "console");
    info("hidden");
    warn("shown", {{"k", "v"}});
    configure("info", "console");
    redirect(nullptr);
    EXPECT_EQ(out.str(), "WARN  shown k=v\n");
}

}  // namespace
}  // namespace ka::log
