#include "store/store.h"

#include <cmath>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "db/startup.h"
#include "support/pg.h"
#include "support/test_embedder.h"

namespace ka::store {
namespace {

using test::contains;

NewEntry entry(std::string content, std::string scope = "", std::vector<std::string> tags = {}) {
    NewEntry e;
    e.content = std::move(content);
    e.scope = std::move(scope);
    e.tags = std::move(tags);
    return e;
}

SearchRequest query(std::string text, int k, std::optional<Mode> mode = {}, Filters filters = {}) {
    SearchRequest r;
    r.query = std::move(text);
    r.k = k;
    r.mode = mode;
    r.filters = std::move(filters);
    return r;
}

Filters scopes(std::vector<std::string> s) {
    Filters f;
    f.scopes = std::move(s);
    return f;
}

class StoreTest : public ::testing::Test {
  protected:
    test::TestDatabase db;
    config::Config config = test::config_for(db.url());
    test::TestEmbedder embedder;
    std::unique_ptr<db::Pool> pool;
    std::unique_ptr<Store> store;

    void SetUp() override {
        auto conn = db.connect();
        ASSERT_TRUE(db::prepare_schema(conn, config, true));
        pool = std::make_unique<db::Pool>(db::Target{db.url(), db.name(), false}, 4, 10);
        store = std::make_unique<Store>(*pool, embedder, config);
    }
    Added must_add(NewEntry e) {
        auto r = store->add(std::move(e));
        if (!r) throw std::runtime_error(r.error().message);
        return *r;
    }
};

TEST_F(StoreTest, AddGetUpdateDelete) {
    NewEntry e = entry("  Deploys are on Tuesdays; roll back with `make rollback`.  ", "",
                       {"deploy", "ops", "deploy"});
    e.metadata = {{"team", "platform"}};
    e.source = "https://wiki.example.com/deploys";
    e.author = "ana";
    auto added = store->add(e);
    ASSERT_TRUE(added) << added.error().message;
    EXPECT_TRUE(added->created);
    const Entry& saved = added->entry;
    EXPECT_EQ(saved.content, "Deploys are on Tuesdays; roll back with `make rollback`.");
    EXPECT_EQ(saved.scope, "default");
    EXPECT_EQ(saved.tags, (std::vector<std::string>{"deploy", "ops"}));
    EXPECT_EQ(saved.metadata["team"], "platform");
    EXPECT_EQ(saved.embedding_model, "test-words-v1");
    ASSERT_EQ(saved.id.size(), 36u);
    EXPECT_EQ(saved.id[14], '7') << "UUIDv7";

    auto got = store->get(saved.id);
    ASSERT_TRUE(got);
    EXPECT_EQ(got->content, saved.content);
    EXPECT_EQ(got->source, e.source);

    int calls = embedder.calls;
    Patch tags_only;
    tags_only.tags = std::vector<std::string>{"release"};
    auto retagged = store->update(saved.id, tags_only);
    ASSERT_TRUE(retagged) << retagged.error().message;
    EXPECT_EQ(retagged->tags, (std::vector<std::string>{"release"}));
    EXPECT_EQ(embedder.calls, calls) << "no re-embedding when content is unchanged";

    Patch content;
    content.content = "Deploys moved to Wednesdays.";
    auto changed = store->update(saved.id, content);
    ASSERT_TRUE(changed);
    EXPECT_EQ(changed->content, "Deploys moved to Wednesdays.");
    EXPECT_EQ(embedder.calls, calls + 1) << "content change re-embeds";
    auto hits = store->search(query("wednesdays.", 1, Mode::vector));
    ASSERT_TRUE(hits && hits->size() == 1);
    EXPECT_EQ((*hits)[0].entry.id, saved.id);
    EXPECT_GT((*hits)[0].similarity.value_or(0), 0.3);

    ASSERT_TRUE(store->remove(saved.id));
    auto gone = store->get(saved.id);
    ASSERT_FALSE(gone);
    EXPECT_EQ(gone.error().code, ErrorCode::not_found);
    EXPECT_EQ(store->remove(saved.id).error().code, ErrorCode::not_found);
}

TEST_F(StoreTest, DedupWithinScopeOnlyAndWithoutEmbedding) {
    auto first = must_add(entry("The staging database is db-staging-2."));
    int calls = embedder.calls;
    auto again = must_add(entry("The staging database is db-staging-2.   "));
    EXPECT_FALSE(again.created);
    EXPECT_EQ(again.entry.id, first.entry.id);
    EXPECT_EQ(embedder.calls, calls) << "a duplicate costs no embedding call";
    auto other_scope = must_add(entry("The staging database is db-staging-2.", "team-b"));
    EXPECT_TRUE(other_scope.created);
    EXPECT_NE(other_scope.entry.id, first.entry.id);
    EXPECT_EQ(*store->count({}), 2);
}

TEST_F(StoreTest, ConcurrentSavesOfTheSameTextMakeOneEntry) {
    std::vector<std::thread> threads;
    std::vector<Result<Added>> results(8, fail(ErrorCode::internal, "not run"));
    for (std::size_t i = 0; i < results.size(); ++i) {
        threads.emplace_back([&, i] { results[i] = store->add(entry("race to save this")); });
    }
    for (auto& t : threads) t.join();
    std::set<std::string> ids;
    int created = 0;
    for (const auto& r : results) {
        ASSERT_TRUE(r) << r.error().message;
        ids.insert(r->entry.id);
        created += r->created;
    }
    EXPECT_EQ(ids.size(), 1u);
    EXPECT_EQ(created, 1);
    EXPECT_EQ(*store->count({}), 1);
}

TEST_F(StoreTest, ScopesIsolateReadsAndWrites) {
    auto a = must_add(entry("alpha team secret: the vault is in room 12", "team-a"));
    auto b = must_add(entry("beta team note: the vault is in room 99", "team-b"));
    Filters only_a = scopes({"team-a"});
    EXPECT_TRUE(store->get(a.entry.id, only_a));
    EXPECT_EQ(store->get(b.entry.id, only_a).error().code, ErrorCode::not_found);
    EXPECT_EQ(store->remove(b.entry.id, only_a).error().code, ErrorCode::not_found);
    Patch p;
    p.content = "overwritten";
    EXPECT_EQ(store->update(b.entry.id, p, only_a).error().code, ErrorCode::not_found);
    for (Mode mode : {Mode::vector, Mode::text, Mode::hybrid}) {
        auto hits = store->search(query("vault room", 10, mode, only_a));
        ASSERT_TRUE(hits) << hits.error().message;
        ASSERT_EQ(hits->size(), 1u) << to_string(mode);
        EXPECT_EQ((*hits)[0].entry.scope, "team-a");
    }
    auto listed = store->list({only_a, 50, ""});
    ASSERT_TRUE(listed);
    ASSERT_EQ(listed->entries.size(), 1u);
    std::ostringstream out;
    EXPECT_EQ(*store->export_jsonl(out, only_a), 1u);
    EXPECT_FALSE(contains(out.str(), "beta team"));
    EXPECT_EQ(*store->count(only_a), 1);
    EXPECT_EQ(store->get(b.entry.id)->content, "beta team note: the vault is in room 99");
}

TEST_F(StoreTest, EveryFilter) {
    auto make = [](std::string content, std::string scope, std::vector<std::string> tags,
                   std::string source, std::string created) {
        NewEntry e = entry(std::move(content), std::move(scope), std::move(tags));
        e.source = std::move(source);
        e.created_at = std::move(created);
        return e;
    };
    must_add(make("kubernetes upgrade runbook", "ops", {"k8s", "runbook"}, "wiki",
                  "2026-01-10T10:00:00Z"));
    must_add(make("kubernetes cost report", "ops", {"k8s"}, "slack", "2026-03-10T10:00:00Z"));
    must_add(
        make("kubernetes onboarding", "dev", {"k8s", "runbook"}, "wiki", "2026-05-10T10:00:00Z"));
    auto found = [&](Filters f, Mode mode) {
        std::set<std::string> out;
        auto hits = store->search(query("kubernetes", 10, mode, std::move(f)));
        if (!hits) throw std::runtime_error(hits.error().message);
        for (const auto& h : *hits) out.insert(h.entry.content);
        return out;
    };
    for (Mode mode : {Mode::vector, Mode::text, Mode::hybrid}) {
        SCOPED_TRACE(to_string(mode));
        EXPECT_EQ(found(scopes({"ops"}), mode).size(), 2u);
        Filters runbook;
        runbook.tags = {"runbook"};
        EXPECT_EQ(found(runbook, mode),
                  (std::set<std::string>{"kubernetes upgrade runbook", "kubernetes onboarding"}));
        Filters slack;
        slack.source = "slack";
        EXPECT_EQ(found(slack, mode), (std::set<std::string>{"kubernetes cost report"}));
        Filters after;
        after.created_after = "2026-03-10T10:00:00Z";
        EXPECT_EQ(found(after, mode).size(), 2u);
        Filters before;
        before.created_before = "2026-03-10T10:00:00Z";
        EXPECT_EQ(found(before, mode), (std::set<std::string>{"kubernetes upgrade runbook"}));
        Filters all = scopes({"ops", "dev"});
        all.tags = {"runbook"};
        all.created_after = "2026-02-01T00:00:00Z";
        EXPECT_EQ(found(all, mode), (std::set<std::string>{"kubernetes onboarding"}));
    }
    auto page1 = store->list({{}, 2, ""});
    ASSERT_TRUE(page1);
    ASSERT_EQ(page1->entries.size(), 2u);
    EXPECT_EQ(page1->entries[0].content, "kubernetes onboarding");  // newest first
    ASSERT_FALSE(page1->next_cursor.empty());
    auto page2 = store->list({{}, 2, page1->next_cursor});
    ASSERT_TRUE(page2);
    ASSERT_EQ(page2->entries.size(), 1u);
    EXPECT_EQ(page2->entries[0].content, "kubernetes upgrade runbook");
    EXPECT_TRUE(page2->next_cursor.empty());
    EXPECT_EQ(store->list({{}, 2, "garbage"}).error().code, ErrorCode::invalid_argument);
}

TEST_F(StoreTest, HybridAndTextModes) {
    must_add(entry("Rollback procedure: run make rollback from the deploy host"));
    must_add(entry("The cafeteria is closed on Fridays"));
    must_add(entry("Deploy host is deploy-01.internal"));
    auto hits = store->search(query("rollback procedure", 3, Mode::hybrid));
    ASSERT_TRUE(hits) << hits.error().message;
    ASSERT_GE(hits->size(), 2u);
    EXPECT_TRUE(contains((*hits)[0].entry.content, "Rollback procedure"));
    EXPECT_EQ((*hits)[0].rank, 1);
    EXPECT_GT((*hits)[0].score, (*hits)[1].score);
    // websearch syntax: a quoted phrase and a negated word.
    auto phrase = store->search(query("\"deploy host\" -rollback", 5, Mode::text));
    ASSERT_TRUE(phrase) << phrase.error().message;
    ASSERT_EQ(phrase->size(), 1u);
    EXPECT_TRUE(contains((*phrase)[0].entry.content, "deploy-01"));
    // A long question matching only some words still finds the entry (OR fallback).
    auto loose = store->search(query("when is the cafeteria closed for lunch", 5, Mode::text));
    ASSERT_TRUE(loose);
    ASSERT_FALSE(loose->empty());
    EXPECT_TRUE(contains((*loose)[0].entry.content, "cafeteria"));
}

TEST_F(StoreTest, RejectsBadInputWithClearErrors) {
    auto expect_invalid = [&](NewEntry e, const std::string& fragment) {
        auto r = store->add(std::move(e));
        ASSERT_FALSE(r) << fragment;
        EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
        EXPECT_TRUE(contains(r.error().message, fragment)) << r.error().message;
    };
    expect_invalid(entry(std::string("nul\0byte", 8)), "NUL byte at offset 3");
    expect_invalid(entry("bad \xC3\x28 utf8"), "not valid UTF-8");
    expect_invalid(entry("   "), "content is empty");
    expect_invalid(entry(std::string(70000, 'x')), "the limit is 65536");
    expect_invalid(entry("x", "bad scope!"), "scope 'bad scope!'");
    expect_invalid(entry("x", "", {""}), "tag");
    NewEntry meta = entry("x");
    meta.metadata = nlohmann::json::array();
    expect_invalid(meta, "metadata must be a JSON object");
    NewEntry when = entry("x");
    when.created_at = "yesterday";
    expect_invalid(when, "not an RFC 3339 timestamp");
    auto with_vector = [](embed::Vector v, std::optional<std::string> model = {}) {
        NewEntry e = entry("x");
        e.embedding = std::move(v);
        e.embedding_model = std::move(model);
        return e;
    };
    embed::Vector nan(768, 0.1f);
    nan[5] = std::nanf("");
    expect_invalid(with_vector(nan), "NaN");
    expect_invalid(with_vector(embed::Vector(3, 1.0f)), "3 dimensions; this store uses 768");
    expect_invalid(with_vector(embed::Vector(768, 0.0f)), "all zeros");
    expect_invalid(with_vector(embed::Vector(768, 1.0f), "other-model"),
                   "made by model other-model");
    EXPECT_EQ(store->get("not-a-uuid").error().code, ErrorCode::invalid_argument);
    for (int k : {-1, 101}) {
        auto r = store->search(query("x", k));
        ASSERT_FALSE(r);
        EXPECT_TRUE(contains(r.error().message, "k must be between 1 and 100"));
    }
    EXPECT_FALSE(store->search(query("x", 5, {}, scopes({"no spaces allowed"}))));
    EXPECT_EQ(*store->count({}), 0) << "nothing was written";
}

TEST_F(StoreTest, ProviderDownFailsSaveAndLeavesNoRow) {
    embedder.failing = true;
    auto r = store->add(entry("this cannot be embedded right now"));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable);
    EXPECT_EQ(*store->count({}), 0);
}

TEST_F(StoreTest, ModelMismatchFailsFastWithChoices) {
    must_add(entry("embedded by the first model"));
    test::TestEmbedder other(768, "another-model");
    Store second(*pool, other, config);
    auto r = second.check_model();
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::config);
    EXPECT_TRUE(contains(r.error().message, "'test-words-v1'")) << r.error().message;
    EXPECT_TRUE(contains(r.error().message, "'another-model'"));
    EXPECT_TRUE(contains(r.error().hint, "export --no-embeddings"));
    EXPECT_TRUE(store->check_model());
}

TEST_F(StoreTest, ReindexAppliesConfiguredParameters) {
    must_add(entry("something to index"));
    config.index.hnsw.m = 24;
    config.index.hnsw.ef_construction = 80;
    ASSERT_TRUE(store->reindex());
    auto conn = db.connect();
    auto params = db::hnsw_index_params(conn);
    ASSERT_TRUE(params && *params);
    EXPECT_EQ((*params)->m, 24);
    EXPECT_EQ((*params)->ef_construction, 80);
    EXPECT_EQ(db.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                     "'idx_memory_entries_embedding'::regclass")
                  .text(0, 0),
              "t");
}

TEST_F(StoreTest, AMissingIndexIsRebuiltAtStartAndByReindex) {
    must_add(entry("something to index"));
    auto index_exists = [&] {
        return db.sql(
                     "SELECT count(*) FROM pg_indexes WHERE indexname = "
                     "'idx_memory_entries_embedding'")
                   .integer(0, 0) == 1;
    };
    db.sql("DROP INDEX idx_memory_entries_embedding");
    ASSERT_FALSE(index_exists());
    ASSERT_TRUE(store->prepare());
    EXPECT_TRUE(index_exists());
    db.sql("DROP INDEX idx_memory_entries_embedding");
    ASSERT_TRUE(store->reindex());
    EXPECT_TRUE(index_exists());
}

}  // namespace
}  // namespace ka::store
