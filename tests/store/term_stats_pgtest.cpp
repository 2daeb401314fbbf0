// The store's document frequencies (memory_term_stats) with the real builtin embedder: after
// every kind of write they equal a recount from scratch over the stored contents, prepare()
// backfills them once for older databases, and they make rare query words count more.
#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "db/startup.h"
#include "embed/builtin.h"
#include "store/store.h"
#include "support/pg.h"

namespace ka::store {
namespace {

using test::contains;
using Counts = std::map<std::int64_t, long long>;

NewEntry entry(std::string content, std::string scope = "") {
    NewEntry e;
    e.content = std::move(content);
    e.scope = std::move(scope);
    return e;
}

class TermStats : public ::testing::Test {
  protected:
    test::TestDatabase db;
    config::Config config = test::config_for(db.url());
    embed::BuiltinEmbedder embedder{config.embedding.dimensions, config.embedding.max_input_chars};
    std::unique_ptr<db::Pool> pool;
    std::unique_ptr<Store> store;

    void SetUp() override {
        ASSERT_EQ(config.embedding.provider, "builtin");
        auto conn = db.connect();
        ASSERT_TRUE(db::prepare_schema(conn, config, true));
        pool = std::make_unique<db::Pool>(db::Target{db.url(), db.name(), false}, 4, 10);
        store = std::make_unique<Store>(*pool, embedder, config);
        ASSERT_TRUE(store->prepare());
    }

    Added must_add(NewEntry e) {
        auto r = store->add(std::move(e));
        if (!r) throw std::runtime_error(r.error().message);
        return *r;
    }

    // Document frequencies recounted from scratch: each entry counts once per feature.
    Counts recount() const {
        Counts out;
        auto rows = db.sql("SELECT content FROM memory_entries");
        for (int i = 0; i < rows.rows(); ++i) {
            auto features = embedder.term_features(rows.get(i, 0));
            std::set<std::int64_t> unique(features.begin(), features.end());
            EXPECT_EQ(unique.size(), features.size()) << "term_features are unique";
            for (auto f : unique) ++out[f];
        }
        return out;
    }

    // What the store keeps; features whose count fell to zero may stay as rows with df 0.
    Counts stored(bool keep_zero = false) const {
        Counts out;
        auto rows = db.sql("SELECT feature, df FROM memory_term_stats");
        for (int i = 0; i < rows.rows(); ++i) {
            long long df = rows.integer(i, 1);
            EXPECT_GE(df, 0) << "df never goes negative";
            if (df != 0 || keep_zero) out[rows.integer(i, 0)] = df;
        }
        return out;
    }

    long long df_of(std::string_view word) const {
        auto features = embedder.term_features(word);
        EXPECT_EQ(features.size(), 1u) << word;
        auto all = stored();
        auto it = all.find(features.front());
        return it == all.end() ? 0 : it->second;
    }

    long long entries() const {
        return db.sql("SELECT count(*) FROM memory_entries").integer(0, 0);
    }
};

#define EXPECT_STATS_MATCH_RECOUNT()                                                 \
    do {                                                                             \
        Counts expected = recount();                                                 \
        EXPECT_FALSE(expected.empty());                                              \
        EXPECT_EQ(stored(), expected) << "memory_term_stats differs from a recount"; \
    } while (0)

TEST_F(TermStats, AddCountsEachNewEntryOnceAndDuplicatesNotAtAll) {
    must_add(entry("Deploys go out on Tuesdays after the release review."));
    must_add(entry("Roll back a deploy with make rollback."));
    must_add(entry("Deploy deploy deploy: repeated words count once per entry."));
    EXPECT_STATS_MATCH_RECOUNT();
    EXPECT_EQ(df_of("deploy"), 3) << "stems: deploys, deploy";

    Counts before = stored(true);
    auto again = must_add(entry("  Roll back a deploy with make rollback.  "));
    EXPECT_FALSE(again.created);
    EXPECT_EQ(stored(true), before) << "a duplicate changes no frequency";
    EXPECT_EQ(entries(), 3);

    // The same text in another scope is another document.
    auto other = must_add(entry("Roll back a deploy with make rollback.", "team-b"));
    EXPECT_TRUE(other.created);
    EXPECT_EQ(df_of("rollback"), 2);
    EXPECT_STATS_MATCH_RECOUNT();
}

TEST_F(TermStats, ConcurrentSavesOfOneTextCountOnce) {
    std::vector<std::thread> threads;
    std::vector<Result<Added>> results(6, fail(ErrorCode::internal, "not run"));
    for (std::size_t i = 0; i < results.size(); ++i)
        threads.emplace_back([&, i] { results[i] = store->add(entry("racing writers agree")); });
    for (auto& t : threads) t.join();
    for (const auto& r : results) ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(entries(), 1);
    EXPECT_EQ(df_of("racing"), 1);
    EXPECT_STATS_MATCH_RECOUNT();
}

TEST_F(TermStats, BatchCountsRepeatedTextOnceAndSkipsExistingEntries) {
    must_add(entry("Kafka brokers run on three nodes."));
    auto batch = store->add_batch(
        {entry("Postgres backups run nightly at two."), entry("Kafka brokers run on three nodes."),
         entry("Postgres backups run nightly at two.   "), entry("Redis is only a cache here.")});
    ASSERT_TRUE(batch) << batch.error().message;
    ASSERT_EQ(batch->size(), 4u);
    EXPECT_TRUE((*batch)[0].created);
    EXPECT_FALSE((*batch)[1].created);
    EXPECT_FALSE((*batch)[2].created);
    EXPECT_EQ((*batch)[2].id, (*batch)[0].id);
    EXPECT_TRUE((*batch)[3].created);
    EXPECT_EQ(entries(), 3);
    EXPECT_EQ(df_of("backups"), 1);
    EXPECT_EQ(df_of("kafka"), 1);
    EXPECT_EQ(df_of("run"), 2);
    EXPECT_STATS_MATCH_RECOUNT();
}

TEST_F(TermStats, UpdateMovesFrequenciesOnlyWhenContentChanges) {
    auto keep = must_add(entry("Staging lives in eu-west-1."));
    auto moved = must_add(entry("Staging deploys need approval from ops."));
    EXPECT_EQ(df_of("staging"), 2);
    EXPECT_EQ(df_of("approval"), 1);

    Patch content;
    content.content = "Production deploys need a change ticket.";
    auto changed = store->update(moved.entry.id, content);
    ASSERT_TRUE(changed) << changed.error().message;
    EXPECT_EQ(df_of("staging"), 1) << "old words lose the entry";
    EXPECT_EQ(df_of("approval"), 0);
    EXPECT_EQ(df_of("production"), 1) << "new words gain it";
    EXPECT_EQ(df_of("ticket"), 1);
    EXPECT_EQ(df_of("deploys"), 1) << "words in both stay";
    EXPECT_STATS_MATCH_RECOUNT();

    Counts before = stored(true);
    Patch tags;
    tags.tags = std::vector<std::string>{"ops"};
    tags.metadata = nlohmann::json{{"owner", "sre"}};
    ASSERT_TRUE(store->update(moved.entry.id, tags));
    EXPECT_EQ(stored(true), before) << "metadata-only updates change no frequency";

    Patch same;
    same.content = "  Production deploys need a change ticket. ";  // trims to the same text
    ASSERT_TRUE(store->update(moved.entry.id, same));
    EXPECT_EQ(stored(true), before);

    // Content into a duplicate of another entry is refused and leaves the counts alone.
    Patch clash;
    clash.content = keep.entry.content;
    auto refused = store->update(moved.entry.id, clash);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, ErrorCode::conflict);
    EXPECT_EQ(stored(true), before);
    EXPECT_STATS_MATCH_RECOUNT();
}

TEST_F(TermStats, RemoveTakesTheEntryOutOfEveryFeature) {
    auto a = must_add(entry("Grafana dashboards live in the ops folder."));
    must_add(entry("Alerts page the on-call engineer via Grafana."));
    EXPECT_EQ(df_of("grafana"), 2);
    ASSERT_TRUE(store->remove(a.entry.id));
    EXPECT_EQ(df_of("grafana"), 1);
    EXPECT_EQ(df_of("dashboards"), 0);
    EXPECT_STATS_MATCH_RECOUNT();

    Counts before = stored(true);
    EXPECT_EQ(store->remove(a.entry.id).error().code, ErrorCode::not_found);
    EXPECT_EQ(stored(true), before) << "removing a missing entry changes nothing";
}

TEST_F(TermStats, ImportCountsAddedLinesOnly) {
    must_add(entry("Terraform state lives in S3."));
    std::string text =
        "{\"content\": \"Terraform state lives in S3.\"}\n"                  // existing: duplicate
        "{\"content\": \"Vault unseals with three keys.\"}\n"                // new
        "{\"content\": \"Vault unseals with three keys.\"}\n"                // same text twice
        "not json\n"                                                         // rejected
        "{\"content\": \"Terraform plans run in CI.\", \"scope\": \"b\"}\n"  // new, another scope
        "{\"content\": \"Terraform state lives in S3.\", \"scope\": \"b\"}\n"  // new in scope b
        "{\"content\": \"Consul is being retired.\"}\n";
    for (int batch : {500, 2}) {
        std::istringstream in(text);
        ImportOptions options;
        options.batch_size = batch;
        auto r = store->import_jsonl(in, options);
        ASSERT_TRUE(r) << r.error().message;
        ASSERT_EQ(r->rejected.size(), 1u);
        EXPECT_EQ(r->rejected[0].line, 4u);
        if (batch == 500) {
            EXPECT_EQ(r->added, 4u);
            EXPECT_EQ(r->duplicates, 2u);
        } else {
            EXPECT_EQ(r->added, 0u) << "a re-run adds nothing";
            EXPECT_EQ(r->duplicates, 6u);
        }
        EXPECT_EQ(entries(), 5);
        EXPECT_EQ(df_of("terraform"), 3);
        EXPECT_EQ(df_of("vault"), 1);
        EXPECT_STATS_MATCH_RECOUNT();
    }
}

// A bulk import (--defer-index) leaves the statistics alone per batch and counts them once at
// the end; one cut short leaves the index missing, and prepare() then rebuilds the index and
// recounts, so stale statistics do not outlive it.
TEST_F(TermStats, DeferredImportCountsOnceAndPrepareRecountsAfterACutShortOne) {
    must_add(entry("Terraform state lives in S3."));
    std::istringstream in(
        "{\"content\": \"Terraform state lives in S3.\"}\n"
        "{\"content\": \"Vault unseals with three keys.\"}\n"
        "{\"content\": \"Vault unseals with three keys.\"}\n"
        "{\"content\": \"Terraform plans run in CI.\"}\n");
    ImportOptions options;
    options.batch_size = 2;
    options.defer_index = true;
    auto r = store->import_jsonl(in, options);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->added, 2u);
    EXPECT_EQ(df_of("terraform"), 2);
    EXPECT_EQ(df_of("vault"), 1);
    EXPECT_STATS_MATCH_RECOUNT();

    // What a killed bulk import leaves: no index, statistics that miss its entries.
    db.sql("DROP INDEX idx_memory_entries_embedding");
    db.sql("UPDATE memory_term_stats SET df = 0");
    ASSERT_TRUE(store->prepare());
    EXPECT_EQ(db.sql("SELECT count(*) FROM pg_indexes WHERE indexname = "
                     "'idx_memory_entries_embedding'")
                  .integer(0, 0),
              1);
    EXPECT_EQ(df_of("terraform"), 2);
    EXPECT_STATS_MATCH_RECOUNT();
}

TEST_F(TermStats, ImportBatchWithAConflictingIdCountsTheRestOnce) {
    auto existing = must_add(entry("Nomad was replaced by Kubernetes."));
    // Line 2 reuses an existing id with other content: a conflict the database reports for the
    // whole batch, so each line is retried alone.
    std::string text =
        "{\"content\": \"Helm charts live in the infra repo.\"}\n"
        "{\"content\": \"Different text, same id.\", \"id\": \"" +
        existing.entry.id +
        "\"}\n"
        "{\"content\": \"ArgoCD syncs the charts.\"}\n";
    std::istringstream in(text);
    auto r = store->import_jsonl(in, ImportOptions{});
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->rejected.size(), 1u);
    EXPECT_EQ(r->rejected[0].line, 2u);
    EXPECT_TRUE(contains(r->rejected[0].reason, "already exists")) << r->rejected[0].reason;
    EXPECT_EQ(r->added, 2u);
    EXPECT_EQ(r->duplicates, 0u);
    EXPECT_EQ(entries(), 3);
    EXPECT_EQ(df_of("charts"), 2);
    EXPECT_EQ(df_of("nomad"), 1);
    EXPECT_STATS_MATCH_RECOUNT();
}

TEST_F(TermStats, PrepareBackfillsAnEmptyTableOnceAndLeavesAFilledOneAlone) {
    for (int i = 0; i < 30; ++i) {
        must_add(entry("Service number " + std::to_string(i) + " logs to Loki" +
                       (i % 3 == 0 ? " and pages on-call." : ".")));
    }
    Counts expected = recount();
    ASSERT_EQ(stored(), expected);

    // A database whose entries predate the statistics.
    db.sql("TRUNCATE memory_term_stats");
    ASSERT_TRUE(stored(true).empty());
    ASSERT_TRUE(store->prepare());
    EXPECT_EQ(stored(true), expected) << "backfilled from the stored contents";
    EXPECT_EQ(df_of("loki"), 30);
    EXPECT_EQ(df_of("pages"), 10);

    // Once filled, prepare() does not recount (a marker value survives it).
    auto loki = embedder.term_features("loki").front();
    db.sql("UPDATE memory_term_stats SET df = 12345 WHERE feature = " + std::to_string(loki));
    ASSERT_TRUE(store->prepare());
    EXPECT_EQ(df_of("loki"), 12345);

    // Another agent starting on the same database at the same time builds them once.
    db.sql("TRUNCATE memory_term_stats");
    std::vector<std::thread> starts;
    std::vector<Status> results(4);
    for (std::size_t i = 0; i < results.size(); ++i)
        starts.emplace_back([&, i] { results[i] = store->prepare(); });
    for (auto& t : starts) t.join();
    for (const auto& r : results) ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(stored(true), expected);
}

TEST_F(TermStats, PrepareOnAnEmptyStoreWritesNothing) {
    ASSERT_TRUE(store->prepare());
    EXPECT_TRUE(stored(true).empty());
    must_add(entry("first entry after start"));
    EXPECT_STATS_MATCH_RECOUNT();
}

// A common word in most entries and a rare word in one: a query with both should find the
// entry with the rare word first, because idf weights it above the common one.
TEST_F(TermStats, RareQueryWordsOutweighCommonOnes) {
    const std::vector<std::string> common = {"server alpha",  "server bravo", "server charlie",
                                             "server delta",  "server echo",  "server foxtrot",
                                             "server golf",   "server hotel", "server india",
                                             "server juliet", "server kilo",  "server lima"};
    const std::string rare = "kafka consumer groups rebalance whenever partitions change";
    std::vector<NewEntry> batch;
    for (const auto& text : common) batch.push_back(entry(text));
    batch.push_back(entry(rare));
    batch.push_back(entry("unrelated note about lunch menus"));
    ASSERT_TRUE(store->add_batch(batch));
    EXPECT_EQ(df_of("server"), 12);
    EXPECT_EQ(df_of("kafka"), 1);

    const std::string query = "server kafka";
    // Without document frequencies the short common-word entries are closer to the query, so
    // the ranking below comes from idf and not from the texts alone.
    auto cosine = [](const embed::Vector& a, const embed::Vector& b) {
        double dot = 0;
        for (std::size_t i = 0; i < a.size(); ++i) dot += static_cast<double>(a[i]) * b[i];
        return dot;
    };
    embed::Vector plain = embedder.embed_one(query);
    double rare_plain = cosine(plain, embedder.embed_one(rare));
    double common_plain = cosine(plain, embedder.embed_one(common[0]));
    ASSERT_GT(common_plain, rare_plain) << "the corpus must favour common entries without idf";

    SearchRequest r;
    r.query = query;
    r.k = 5;
    r.mode = Mode::vector;
    auto hits = store->search(r);
    ASSERT_TRUE(hits) << hits.error().message;
    ASSERT_FALSE(hits->empty());
    EXPECT_EQ((*hits)[0].entry.content, rare) << "rare word ranks its entry first";
    EXPECT_EQ((*hits)[0].rank, 1);
    if (hits->size() > 1) {
        EXPECT_TRUE((*hits)[1].entry.content.starts_with("server"));
        EXPECT_GT((*hits)[0].similarity.value_or(0), (*hits)[1].similarity.value_or(0));
    }
}

}  // namespace
}  // namespace ka::store
