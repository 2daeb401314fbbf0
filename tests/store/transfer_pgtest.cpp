// Import and export: round trip, bad lines, re-runs, batches that fail as a whole.
#include <chrono>
#include <future>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "db/startup.h"
#include "store/store.h"
#include "support/pg.h"
#include "support/test_embedder.h"

namespace ka::store {
namespace {

store::ImportOptions options(int batch_size) {
    store::ImportOptions o;
    o.batch_size = batch_size;
    return o;
}

using test::contains;

class Transfer : public ::testing::Test {
  protected:
    test::TestDatabase db;
    config::Config config = test::config_for(db.url());
    test::TestEmbedder embedder;
    std::unique_ptr<db::Pool> pool;
    std::unique_ptr<Store> store;
    void SetUp() override {
        auto conn = db.connect();
        ASSERT_TRUE(db::prepare_schema(conn, config, true));
        pool = std::make_unique<db::Pool>(db::Target{db.url(), db.name(), false}, 2, 10);
        store = std::make_unique<Store>(*pool, embedder, config);
    }
    ImportReport import(const std::string& text, int batch = 500) {
        std::istringstream in(text);
        auto r = store->import_jsonl(in, options(batch));
        if (!r) throw std::runtime_error(r.error().message);
        return *r;
    }
};

constexpr const char* kGood =
    R"({"content": "Deploys are on Tuesdays", "tags": ["deploy"], "metadata": {"team": "ops"}, "source": "wiki"}
{"content": "Rollback with make rollback", "scope": "ops", "created_at": "2026-01-02T03:04:05.123456Z", "author": "ana"}
{"content": "On-call rotates every Monday"}
)";

TEST_F(Transfer, ImportsAndIsSafeToRerun) {
    auto first = import(kGood);
    EXPECT_EQ(first.lines, 3u);
    EXPECT_EQ(first.added, 3u);
    EXPECT_TRUE(first.rejected.empty());
    auto again = import(kGood);
    EXPECT_EQ(again.added, 0u);
    EXPECT_EQ(again.duplicates, 3u);
    EXPECT_EQ(*store->count({}), 3);
    auto rollback = store->search({"rollback", 1, {}, -1, Mode::text, {}, {}});
    ASSERT_TRUE(rollback && rollback->size() == 1);
    EXPECT_EQ((*rollback)[0].entry.scope, "ops");
    EXPECT_EQ((*rollback)[0].entry.created_at, "2026-01-02T03:04:05.123456Z");
    EXPECT_EQ((*rollback)[0].entry.author, "ana");
}

// Batches are written on a second thread while the next is parsed: reports still add up and
// list rejected lines in file order, whichever thread found them.
TEST_F(Transfer, ManySmallBatchesReportInFileOrder) {
    std::string text;
    for (int i = 1; i <= 40; ++i) {
        if (i % 7 == 0)
            text += "{\"content\": 7}\n";  // rejected while parsing
        else if (i % 10 == 0)
            text += "{\"content\": \"line 1\"}\n";  // a duplicate of line 1
        else
            text += fmt::format("{{\"content\": \"line {}\"}}\n", i);
    }
    auto r = import(text, 3);
    EXPECT_EQ(r.lines, 40u);
    EXPECT_EQ(r.added, 31u);
    EXPECT_EQ(r.duplicates, 4u);
    ASSERT_EQ(r.rejected.size(), 5u);
    for (std::size_t i = 0; i < r.rejected.size(); ++i) EXPECT_EQ(r.rejected[i].line, 7 * (i + 1));
    EXPECT_EQ(*store->count({}), 31);
}

TEST_F(Transfer, DeferredIndexImportDropsAndRebuildsTheIndex) {
    auto index = [&] {
        auto r = db.connect().exec(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_memory_entries_embedding'");
        return r && r->rows() == 1 ? r->text(0, 0) : std::string();
    };
    ASSERT_FALSE(index().empty());
    store::ImportOptions o = options(2);
    o.defer_index = true;
    bool dropped_during_import = false;
    o.progress = [&](std::uint64_t, std::uint64_t) { dropped_during_import |= index().empty(); };
    std::istringstream in(kGood);
    auto r = store->import_jsonl(in, o);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->added, 3u);
    EXPECT_TRUE(dropped_during_import);
    std::string rebuilt = index();
    EXPECT_TRUE(contains(rebuilt, "hnsw")) << rebuilt;
    EXPECT_TRUE(contains(rebuilt, fmt::format("m='{}'", config.index.hnsw.m))) << rebuilt;
    auto found = store->search({"rollback", 1, {}, -1, Mode::vector, {}, {}});
    ASSERT_TRUE(found && found->size() == 1);
}

// The per-batch duplicate probe must use the indexes whatever the table held when the
// connection first ran it: as a prepared statement, the plan re-made after a TRUNCATE (or the
// DROP INDEX of --defer-index) for an empty table seq-scanned the growing table on every batch.
TEST_F(Transfer, DuplicateProbeUsesTheIndexesAfterTheTableWasEmptied) {
    auto conn = db.connect();
    // No HNSW inserts (speed) and no autovacuum (its ANALYZE would re-plan a stale plan).
    ASSERT_TRUE(
        conn.exec("DROP INDEX idx_memory_entries_embedding; ALTER TABLE memory_entries "
                  "SET (autovacuum_enabled = off)"));
    auto import_rows = [&](const char* prefix, int n) {
        std::string text;
        for (int i = 0; i < n; ++i) text += fmt::format("{{\"content\": \"{} {}\"}}\n", prefix, i);
        return import(text, 100).added;
    };
    ASSERT_EQ(import_rows("first", 1500), 1500u);  // 15 probes over the 2 pooled connections
    ASSERT_TRUE(conn.exec("TRUNCATE memory_entries, memory_term_stats"));
    ASSERT_EQ(import_rows("second", 2000), 2000u);
    ASSERT_EQ(import_rows("third", 1000), 1000u);
    // Backends report their counters when idle for 10 s or when they exit.
    store.reset();
    pool.reset();
    long long seq_read = -1;
    for (int i = 0; i < 100 && seq_read < 0; ++i) {
        auto r = conn.exec(
            "SELECT n_tup_ins, seq_tup_read FROM pg_stat_user_tables WHERE relname = "
            "'memory_entries'");
        if (r->integer(0, 0) == 4500)
            seq_read = r->integer(0, 1);
        else
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    // Planned per batch, the probe scans the table only while it is a few pages small (5,300-7,200
    // rows read in all, three runs); the stale prepared plan scanned it for every batch (~86,000).
    EXPECT_GE(seq_read, 0) << "the statistics never showed the 4,500 inserted rows";
    EXPECT_LT(seq_read, 20000) << "rows read by sequential scans during the imports";
}

TEST_F(Transfer, BadLinesAreReportedAndNeverHalfWritten) {
    std::string text =
        "{\"content\": \"fine one\"}\n"
        "not json\n"
        "[1, 2]\n"
        "{\"text\": \"wrong field name\"}\n"
        "{\"content\": 42}\n"
        "{\"content\": \"bad tags\", \"tags\": \"x\"}\n"
        "{\"content\": \"bad date\", \"created_at\": \"last week\"}\n"
        "{\"content\": \"short vector\", \"embedding\": [1, 2, 3]}\n"
        "{\"content\": \"\\u0000 nul\"}\n"
        "{\"content\": \"bad scope\", \"scope\": \"a b\"}\n"
        "\n"
        "{\"content\": \"fine two\", \"tags\": [\"t\"]}\n"
        "{\"content\": \"foreign model\", \"embedding\": " +
        nlohmann::json(std::vector<float>(768, 0.5f)).dump() +
        ", \"embedding_model\": \"other\"}\n";
    auto r = import(text, 2);
    EXPECT_EQ(r.lines, 13u);
    EXPECT_EQ(r.added, 2u);
    std::map<std::uint64_t, std::string> rejected;
    for (const auto& x : r.rejected) rejected[x.line] = x.reason;
    EXPECT_EQ(rejected.size(), 10u);
    EXPECT_EQ(rejected[2], "not valid JSON");
    EXPECT_EQ(rejected[3], "expected a JSON object");
    EXPECT_EQ(rejected[4], "unknown field 'text'");
    EXPECT_EQ(rejected[5], "content must be a string");
    EXPECT_EQ(rejected[6], "tags must be an array of strings");
    EXPECT_TRUE(contains(rejected[7], "RFC 3339"));
    EXPECT_TRUE(contains(rejected[8], "3 dimensions"));
    EXPECT_TRUE(contains(rejected[9], "NUL byte"));
    EXPECT_TRUE(contains(rejected[10], "scope 'a b'"));
    EXPECT_TRUE(contains(rejected[13], "made by model other")) << rejected[13];
    EXPECT_EQ(*store->count({}), 2);
}

TEST_F(Transfer, ProviderOutageStopsTheImportAndARerunCompletesIt) {
    std::string text;
    for (int i = 0; i < 10; ++i)
        text += "{\"content\": \"fact number " + std::to_string(i) + "\"}\n";
    embedder.failing = true;
    std::istringstream in(text);
    auto r = store->import_jsonl(in, options(4));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable);
    EXPECT_TRUE(contains(r.error().message, "import stopped at line 1"));
    EXPECT_EQ(*store->count({}), 0);
    embedder.failing = false;
    auto done = import(text, 4);
    EXPECT_EQ(done.added, 10u);
}

TEST_F(Transfer, ExportThenImportIntoAnEmptyDatabaseReproducesEverything) {
    import(kGood);
    import(
        "{\"content\": \"quoted \\\"text\\\" and unicode: caf\\u00e9 \\u2603\", \"tags\": "
        "[\"a,b\", \"c\\\"d\"]}\n");
    std::ostringstream exported;
    ASSERT_EQ(*store->export_jsonl(exported, {}), 4u);
    EXPECT_TRUE(contains(exported.str(), "\"embedding_model\":\"test-words-v1\""));

    test::TestDatabase other;
    auto other_config = test::config_for(other.url());
    auto conn = other.connect();
    ASSERT_TRUE(db::prepare_schema(conn, other_config, true));
    db::Pool other_pool(db::Target{other.url(), other.name(), false}, 2, 10);
    test::TestEmbedder other_embedder;
    Store copy(other_pool, other_embedder, other_config);
    std::istringstream in(exported.str());
    auto r = copy.import_jsonl(in, options(500));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->added, 4u);
    EXPECT_EQ(other_embedder.calls, 0) << "exported embeddings are reused, not recomputed";

    const char* digest =
        "SELECT md5(string_agg(concat_ws('|', id, scope, content, encode(content_hash, 'hex'), "
        "metadata::text, "
        "tags::text, source, author, embedding::text, embedding_model, created_at, updated_at), "
        "E'\\n' ORDER BY id)) "
        "FROM memory_entries";
    EXPECT_EQ(db.sql(digest).text(0, 0), other.sql(digest).text(0, 0))
        << "the copy is identical, embeddings included";

    std::ostringstream again;
    ASSERT_TRUE(copy.export_jsonl(again, {}));
    EXPECT_EQ(again.str(), exported.str());

    std::ostringstream bare;
    ASSERT_TRUE(store->export_jsonl(bare, {}, false));
    EXPECT_FALSE(contains(bare.str(), "embedding"));
}

// Import writes timestamps in PostgreSQL's binary format, converted here: every RFC 3339 form
// must land as the instant PostgreSQL itself reads from the text.
TEST_F(Transfer, TimestampsLandAsPostgreSQLReadsThem) {
    const std::vector<std::string> stamps = {"2026-01-02T03:04:05Z",
                                             "2026-01-02t03:04:05.5+02:30",
                                             "2024-02-29 23:59:59.999999-11:00",
                                             "1999-12-31T23:59:59.0000005z",
                                             "1999-12-31T23:59:59.0000015Z",
                                             "2000-01-01T00:00:00.9999996+00:00",
                                             "1970-01-01T00:00:00Z",
                                             "0001-01-01T00:00:00Z",
                                             "9999-12-31T23:59:59.123456789-15:59"};
    std::string lines;
    for (std::size_t i = 0; i < stamps.size(); ++i) {
        lines += fmt::format(
                     R"({{"content": "stamp {}", "created_at": "{}", "metadata": {{"t": "{}"}}}})",
                     i, stamps[i], stamps[i]) +
                 "\n";
    }
    // Without updated_at, an entry was last updated when it was created.
    lines +=
        R"({"content": "both", "created_at": "2026-05-01T00:00:00Z", "updated_at": "2026-06-01T12:00:00.25-01:00", "metadata": {"t": "2026-05-01T00:00:00Z"}})"
        "\n";
    auto r = import(lines);
    EXPECT_EQ(r.added, stamps.size() + 1);
    EXPECT_EQ(db.sql("SELECT count(*) FROM memory_entries WHERE created_at = "
                     "(metadata->>'t')::timestamptz")
                  .integer(0, 0),
              static_cast<long long>(stamps.size() + 1));
    EXPECT_EQ(
        db.sql("SELECT count(*) FROM memory_entries WHERE updated_at = created_at").integer(0, 0),
        static_cast<long long>(stamps.size()));
    EXPECT_EQ(db.sql("SELECT updated_at = '2026-06-01T12:00:00.25-01:00'::timestamptz FROM "
                     "memory_entries WHERE content = 'both'")
                  .text(0, 0),
              "t");

    auto bad = import(R"({"content": "no such day", "created_at": "2026-02-30T10:00:00Z"})"
                      "\n"
                      R"({"content": "no year 0", "created_at": "0000-06-01T10:00:00Z"})"
                      "\n"
                      R"({"content": "offset too far", "created_at": "2026-06-01T10:00:00+16:00"})"
                      "\n");
    EXPECT_EQ(bad.added, 0u);
    ASSERT_EQ(bad.rejected.size(), 3u);
    for (const auto& rejected : bad.rejected)
        EXPECT_TRUE(contains(rejected.reason, "not an RFC 3339 timestamp")) << rejected.reason;
}

// A fresh batch is copied straight into memory_entries. When a concurrent save of one of its
// texts commits while the copy waits on it, the batch falls back to the staging path: one entry
// for that text, the others saved, nothing lost.
TEST_F(Transfer, ABatchRacingAConcurrentSaveOfTheSameTextKeepsOneEntry) {
    const std::string racer = "01900000-0000-7000-8000-000000000001";
    auto other = db.connect();
    ASSERT_TRUE(other.exec("BEGIN"));
    ASSERT_TRUE(other.exec(fmt::format(
        "INSERT INTO memory_entries (id, content, content_hash, embedding, embedding_model) "
        "VALUES ('{}', 'Racing text', sha256(convert_to('Racing text', 'UTF8')), "
        "array_fill(0.5, ARRAY[{}])::vector, '{}')",
        racer, config.embedding.dimensions, embedder.model())));
    auto batch = std::async(std::launch::async, [&] {
        std::vector<NewEntry> entries(3);
        entries[0].content = "First new text";
        entries[1].content = "Racing text";
        entries[2].content = "Second new text";
        return store->add_batch(std::move(entries));
    });
    bool waited = false;
    for (int i = 0; i < 500 && !waited; ++i) {
        waited = db.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = '" + db.name() +
                        "' AND wait_event_type = 'Lock'")
                     .integer(0, 0) > 0;
        if (!waited) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_TRUE(other.exec("COMMIT"));
    auto saved = batch.get();
    ASSERT_TRUE(waited) << "the batch's copy never waited on the uncommitted row";
    ASSERT_TRUE(saved) << saved.error().message;
    ASSERT_EQ(saved->size(), 3u);
    EXPECT_TRUE((*saved)[0].created);
    EXPECT_FALSE((*saved)[1].created);
    EXPECT_EQ((*saved)[1].id, racer);
    EXPECT_TRUE((*saved)[2].created);
    EXPECT_EQ(*store->count({}), 3);
}

// Imports write two batches at once. Batches that share texts in opposite orders must not
// deadlock on the unique index (PostgreSQL would abort one as 40P01 and stop the import): rows
// go in in one global order.
TEST_F(Transfer, ConcurrentBatchesWithTheSameTextsInOppositeOrderDoNotDeadlock) {
    for (int round = 0; round < 5; ++round) {
        std::vector<NewEntry> forward(300);
        for (int i = 0; i < 300; ++i)
            forward[static_cast<std::size_t>(i)].content =
                fmt::format("round {} text {}", round, i);
        std::vector<NewEntry> backward(forward.rbegin(), forward.rend());
        // Half the rows fresh on each side, so both batches take the direct path or the staging
        // path depending on who probes first.
        for (int i = 0; i < 150; ++i) backward[static_cast<std::size_t>(i)].content += " (second)";
        auto a = std::async(std::launch::async, [&] { return store->add_batch(forward); });
        auto b = std::async(std::launch::async, [&] { return store->add_batch(backward); });
        auto ra = a.get();
        auto rb = b.get();
        ASSERT_TRUE(ra) << ra.error().message;
        ASSERT_TRUE(rb) << rb.error().message;
    }
    EXPECT_EQ(*store->count({}), 5 * 450);
}

}  // namespace
}  // namespace ka::store
