// The import-line parser (simdjson) against the API's (nlohmann + parse_entry): same answers.
#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "store/store.h"
#include "support/pg.h"

namespace ka::store {
namespace {

using nlohmann::json;
using test::contains;

config::Config small() {
    config::Config c = test::config_for("");
    c.embedding.dimensions = 4;
    return c;
}

Result<NewEntry> both(const std::string& line) {
    auto fast = parse_import_line(line, "default", small());
    json j = json::parse(line, nullptr, false);
    if (!j.is_discarded()) {
        auto slow = parse_entry(j, "default", small());
        EXPECT_EQ(bool(fast), bool(slow)) << line;
        if (fast && slow) {
            EXPECT_EQ(fast->content, slow->content);
            EXPECT_EQ(fast->scope, slow->scope);
            EXPECT_EQ(fast->tags, slow->tags);
            EXPECT_EQ(fast->metadata, slow->metadata);
            EXPECT_EQ(fast->embedding, slow->embedding) << line;
        }
    }
    return fast;
}

TEST(ImportLine, ParsesLikeTheApiParser) {
    auto e = both(R"({"content": "Deploys on Tuesdays \u00e9", "scope": "ops", "tags": ["a"],)"
                  R"( "metadata": {"n": [1, {"x": null}]}, "embedding": [1, 0.5, -2e-3, 3]})");
    ASSERT_TRUE(e) << e.error().message;
    EXPECT_EQ(e->content, "Deploys on Tuesdays \u00e9");
    EXPECT_EQ(e->scope, "ops");
    ASSERT_TRUE(e->embedding);
    EXPECT_EQ(e->embedding->size(), 4u);
    EXPECT_TRUE(both(R"({"content": "x", "embedding": null})"));
    // A repeated key: the last one wins, embedding included.
    auto twice = both(R"({"content": "x", "embedding": [1, 2, 3, 4], "embedding": null})");
    ASSERT_TRUE(twice);
    EXPECT_FALSE(twice->embedding);
}

TEST(ImportLine, RejectsWhatTheApiRejects) {
    for (const char* line : {
             R"({"content": "x", "embedding": [1, 2, 3]})",
             R"({"content": "x", "embedding": [1, 2, "3", 4]})",
             R"({"content": "x", "embedding": {"a": 1}})",
             R"({"content": "x", "unknown": 1})",
             R"({"content": 5})",
             R"([1, 2])",
             R"({"content": "x", "tags": "t"})",
         }) {
        auto r = both(line);
        ASSERT_FALSE(r) << line;
        EXPECT_EQ(r.error().code, ErrorCode::invalid_argument) << line;
    }
    EXPECT_TRUE(contains(parse_import_line("{\"content\": ", "d", small()).error().message,
                         "not valid JSON"));
    std::string deep =
        "{\"content\": \"x\", \"metadata\": " + std::string(300, '[') + std::string(300, ']') + "}";
    EXPECT_TRUE(contains(parse_import_line(deep, "d", small()).error().message, "nested deeper"));
    // A line past the parser's first 64 KiB buffer is parsed (and then refused for its content
    // size, not as bad JSON); the depth limit holds after the buffers grew.
    std::string big =
        json{{"content",
              std::string(static_cast<std::size_t>(small().store.max_content_bytes) + 1, 'a')}}
            .dump();
    ASSERT_GT(big.size(), 64u * 1024);
    auto r = parse_import_line(big, "d", small());
    ASSERT_FALSE(r);
    EXPECT_TRUE(contains(r.error().message, "content")) << r.error().message;
    EXPECT_FALSE(contains(r.error().message, "JSON")) << r.error().message;
    EXPECT_TRUE(contains(parse_import_line(deep, "d", small()).error().message, "nested deeper"));
}

}  // namespace
}  // namespace ka::store
