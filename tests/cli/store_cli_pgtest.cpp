// The knowledge commands through the real binary, as users run them: remember, search, get,
// list, forget, stats, export, import and reindex against a fresh database.
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "db/startup.h"
#include "support/pg.h"

namespace ka {
namespace {

using nlohmann::json;
using test::contains;
namespace fs = std::filesystem;

const std::regex kUuid(R"([0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12})");

// The JSON document in a command's output (stderr is interleaved; logs stay at warn and up).
json parse_json(const std::string& output) {
    auto start = output.find_first_of("[{");
    if (start == std::string::npos) throw std::runtime_error("no JSON in: " + output);
    auto end = output.find_last_of("]}");
    return json::parse(output.substr(start, end - start + 1));
}

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

class StoreCli : public ::testing::Test {
  protected:
    test::TestDatabase db;
    fs::path dir = test::unique_dir("store-cli");

    void SetUp() override {
        fs::create_directories(dir);
        auto up = agent({"migrate", "up"});
        ASSERT_EQ(up.exit_code, 0) << up.output;
    }

    ProcessResult agent(std::vector<std::string> args, const test::TestDatabase* on = nullptr,
                        const std::vector<std::string>& extra_env = {}) {
        // Later assignments win, so extra_env can override these.
        std::vector<std::string> env = {"POSTGRES_URL=" + (on ? on : &db)->url(),
                                        "KNOWLEDGE_AGENT_LOG_LEVEL=warn"};
        env.insert(env.end(), extra_env.begin(), extra_env.end());
        return test::run_agent(args, env);
    }
    json agent_json(std::vector<std::string> args, const test::TestDatabase* on = nullptr) {
        args.push_back("--json");
        auto r = agent(args, on);
        EXPECT_EQ(r.exit_code, 0) << r.output;
        return parse_json(r.output);
    }
    // Saves a text and returns the new entry's id.
    std::string remember(std::vector<std::string> args) {
        args.insert(args.begin(), "remember");
        auto r = agent(args);
        EXPECT_EQ(r.exit_code, 0) << r.output;
        EXPECT_TRUE(contains(r.output, "Saved ")) << r.output;
        std::smatch m;
        if (!std::regex_search(r.output, m, kUuid)) throw std::runtime_error("no id: " + r.output);
        return m.str();
    }
    long long count(const test::TestDatabase& on) const {
        return on.sql("SELECT count(*) FROM memory_entries").integer(0, 0);
    }
};

TEST_F(StoreCli, RememberThenSearchFindsItWithEveryField) {
    auto saved =
        agent({"remember", "Deploys go out on Tuesdays through the release train.", "--tag",
               "deploy", "--tag", "ops", "--scope", "platform", "--meta", "team=sre", "--meta",
               "url=https://x.example/a=b", "--source", "wiki", "--author", "ana"});
    ASSERT_EQ(saved.exit_code, 0) << saved.output;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(saved.output, m, kUuid)) << saved.output;
    std::string id = m.str();
    EXPECT_TRUE(contains(saved.output, "Saved " + id + " (scope platform)")) << saved.output;
    remember({"The staging database is db-staging-2.", "--scope", "platform"});
    remember({"Lunch is at noon on Fridays.", "--scope", "office"});

    json hits = agent_json({"search", "when do deploys go out"});
    ASSERT_TRUE(hits.is_array());
    ASSERT_FALSE(hits.empty()) << hits.dump();
    const json& top = hits[0];
    EXPECT_EQ(top["id"], id);
    EXPECT_EQ(top["content"], "Deploys go out on Tuesdays through the release train.");
    EXPECT_EQ(top["tags"], json({"deploy", "ops"}));
    EXPECT_EQ(top["scope"], "platform");
    EXPECT_EQ(top["metadata"], json({{"team", "sre"}, {"url", "https://x.example/a=b"}}));
    EXPECT_EQ(top["source"], "wiki");
    EXPECT_EQ(top["author"], "ana");
    EXPECT_EQ(top["embedding_model"], "builtin-lexical-v1");
    EXPECT_EQ(top["rank"], 1);
    ASSERT_TRUE(top["similarity"].is_number());
    EXPECT_GT(top["similarity"].get<double>(), 0.1);
    EXPECT_LE(top["similarity"].get<double>(), 1.0 + 1e-6);
    EXPECT_TRUE(top["score"].is_number());
    EXPECT_TRUE(top["created_at"].get<std::string>().ends_with("Z"));
    for (std::size_t i = 0; i < hits.size(); ++i) EXPECT_EQ(hits[i]["rank"], i + 1);

    auto text = agent({"search", "when do deploys go out", "-k", "1"});
    ASSERT_EQ(text.exit_code, 0) << text.output;
    EXPECT_TRUE(contains(text.output, " 1. [")) << text.output;
    EXPECT_TRUE(contains(text.output, "Deploys go out on Tuesdays")) << text.output;
    EXPECT_TRUE(contains(text.output, id + " | scope platform | tags deploy,ops")) << text.output;
    EXPECT_FALSE(contains(text.output, " 2. ")) << "-k 1 shows one result";

    json scoped = agent_json({"search", "deploys", "--scope", "office"});
    for (const auto& h : scoped) EXPECT_EQ(h["scope"], "office");

    auto none = agent({"search", "deploys", "--scope", "nowhere"});
    EXPECT_EQ(none.exit_code, 0) << none.output;
    EXPECT_TRUE(contains(none.output, "No matching knowledge.")) << none.output;
}

TEST_F(StoreCli, RememberingTheSameTextReportsTheExistingEntry) {
    std::string id = remember({"On-call rotates every Monday.", "--scope", "ops"});
    auto again = agent({"remember", "  On-call rotates every Monday.  ", "--scope", "ops"});
    EXPECT_EQ(again.exit_code, 0) << again.output;
    EXPECT_TRUE(contains(again.output, "Already known: " + id + " (scope ops)")) << again.output;

    json j = agent_json({"remember", "On-call rotates every Monday.", "--scope", "ops"});
    EXPECT_EQ(j["created"], false);
    EXPECT_EQ(j["entry"]["id"], id);
    EXPECT_EQ(count(db), 1);

    json other = agent_json({"remember", "On-call rotates every Monday.", "--scope", "dev"});
    EXPECT_EQ(other["created"], true) << "dedup is per scope";
    EXPECT_NE(other["entry"]["id"], id);
    EXPECT_EQ(other["entry"]["scope"], "dev");
    EXPECT_EQ(count(db), 2);

    auto bad_meta = agent({"remember", "something", "--meta", "novalue"});
    EXPECT_EQ(bad_meta.exit_code, 2) << bad_meta.output;
    EXPECT_TRUE(contains(bad_meta.output, "--meta 'novalue' is not key=value")) << bad_meta.output;
    auto empty = agent({"remember", "   "});
    EXPECT_EQ(empty.exit_code, 2) << empty.output;
    EXPECT_EQ(count(db), 2);
}

TEST_F(StoreCli, GetListAndForget) {
    std::string a = remember({"Grafana dashboards live in the ops folder.", "--scope", "ops",
                              "--tag", "grafana", "--source", "wiki"});
    std::string b = remember({"Alerts page the on-call engineer.", "--scope", "ops", "--tag",
                              "grafana", "--tag", "alerts"});
    std::string c = remember({"Design reviews are on Thursdays.", "--scope", "eng"});

    auto got = agent({"get", a});
    ASSERT_EQ(got.exit_code, 0) << got.output;
    EXPECT_TRUE(contains(got.output, "Grafana dashboards live in the ops folder.\n"));
    EXPECT_TRUE(contains(got.output, "id:       " + a)) << got.output;
    EXPECT_TRUE(contains(got.output, "scope:    ops"));
    EXPECT_TRUE(contains(got.output, "tags:     grafana"));
    EXPECT_TRUE(contains(got.output, "source:   wiki"));
    EXPECT_TRUE(contains(got.output, "author:   -"));
    EXPECT_TRUE(contains(got.output, "model:    builtin-lexical-v1"));
    json got_json = agent_json({"get", b});
    EXPECT_EQ(got_json["id"], b);
    EXPECT_EQ(got_json["tags"], json({"grafana", "alerts"}));
    EXPECT_TRUE(got_json["source"].is_null());

    auto listed = agent({"list"});
    ASSERT_EQ(listed.exit_code, 0) << listed.output;
    for (const auto& id : {a, b, c}) EXPECT_TRUE(contains(listed.output, id)) << listed.output;
    EXPECT_TRUE(contains(listed.output, "- Design reviews are on Thursdays."));
    // Newest first.
    EXPECT_LT(listed.output.find(c), listed.output.find(a));

    auto ids = [](const json& page) {
        std::vector<std::string> out;
        for (const auto& e : page["entries"]) out.push_back(e["id"]);
        return out;
    };
    json all = agent_json({"list"});
    EXPECT_EQ(ids(all), (std::vector<std::string>{c, b, a}));
    EXPECT_EQ(all["next_cursor"], "");
    EXPECT_EQ(ids(agent_json({"list", "--scope", "ops"})), (std::vector<std::string>{b, a}));
    EXPECT_EQ(ids(agent_json({"list", "--scope", "ops", "--scope", "eng"})),
              (std::vector<std::string>{c, b, a}));
    EXPECT_EQ(ids(agent_json({"list", "--tag", "grafana", "--tag", "alerts"})),
              (std::vector<std::string>{b}));
    EXPECT_EQ(ids(agent_json({"list", "--source", "wiki"})), (std::vector<std::string>{a}));
    EXPECT_TRUE(ids(agent_json({"list", "--after", "2999-01-01T00:00:00Z"})).empty());
    EXPECT_EQ(ids(agent_json({"list", "--before", "2999-01-01T00:00:00Z"})).size(), 3u);

    // Pages of two, following next_cursor.
    json first = agent_json({"list", "--limit", "2"});
    EXPECT_EQ(ids(first), (std::vector<std::string>{c, b}));
    std::string cursor = first["next_cursor"];
    ASSERT_FALSE(cursor.empty());
    auto more = agent({"list", "--limit", "2"});
    EXPECT_TRUE(contains(more.output, "more: --cursor " + cursor)) << more.output;
    json second = agent_json({"list", "--limit", "2", "--cursor", cursor});
    EXPECT_EQ(ids(second), (std::vector<std::string>{a}));
    EXPECT_EQ(second["next_cursor"], "");

    auto forgot = agent({"forget", a});
    EXPECT_EQ(forgot.exit_code, 0) << forgot.output;
    EXPECT_TRUE(contains(forgot.output, "Deleted " + a));
    auto gone = agent({"get", a});
    EXPECT_EQ(gone.exit_code, 12) << gone.output;
    EXPECT_TRUE(contains(gone.output, "no entry " + a)) << gone.output;
    auto twice = agent({"forget", a});
    EXPECT_EQ(twice.exit_code, 12) << twice.output;
    EXPECT_EQ(ids(agent_json({"list"})), (std::vector<std::string>{c, b}));
}

TEST_F(StoreCli, Stats) {
    auto empty = agent_json({"stats"});
    EXPECT_EQ(empty["entries"], 0);
    EXPECT_EQ(empty["embedding_model"], "builtin-lexical-v1");

    remember({"first fact", "--scope", "a"});
    remember({"second fact", "--scope", "a"});
    remember({"third fact", "--scope", "b"});
    json s = agent_json({"stats"});
    EXPECT_EQ(s["entries"], 3);
    EXPECT_EQ(s["scopes"], json({{"a", 2}, {"b", 1}}));
    EXPECT_TRUE(s["table_size"].is_string());
    EXPECT_FALSE(s["table_size"].get<std::string>().empty());
    EXPECT_TRUE(s["index_size"].is_string());

    auto text = agent({"stats"});
    ASSERT_EQ(text.exit_code, 0) << text.output;
    EXPECT_TRUE(contains(text.output, "entries:          3")) << text.output;
    EXPECT_TRUE(contains(text.output, "embedding model:  builtin-lexical-v1"));
    EXPECT_TRUE(std::regex_search(text.output, std::regex(R"(\n  a +2\n)"))) << text.output;
}

TEST_F(StoreCli, ConfigFileSelectsTheDatabase) {
    fs::path file = dir / "config.yaml";
    std::ofstream(file) << "postgres:\n  url: \"" << db.url() << "\"\nlog:\n  level: warn\n";
    auto saved = test::run_agent({"--config", file.string(), "remember", "from a config file"});
    ASSERT_EQ(saved.exit_code, 0) << saved.output;
    EXPECT_EQ(count(db), 1);
    auto stats = test::run_agent({"--config", file.string(), "stats", "--json"});
    ASSERT_EQ(stats.exit_code, 0) << stats.output;
    EXPECT_EQ(parse_json(stats.output)["entries"], 1);
}

TEST_F(StoreCli, ExportThenImportIntoAFreshDatabaseReproducesTheStore) {
    remember({"Deploys go out on Tuesdays.", "--tag", "deploy", "--meta", "team=sre"});
    remember({"Rollback with make rollback.", "--scope", "ops", "--author", "ana"});
    remember({"Quotes \"and\" unicode: caf\u00e9 \u2603", "--tag", "a,b"});

    fs::path file = dir / "kb.jsonl";
    auto exported = agent({"export", file.string()});
    ASSERT_EQ(exported.exit_code, 0) << exported.output;
    EXPECT_TRUE(contains(exported.output, "exported 3 entries")) << exported.output;
    std::string jsonl = read_file(file);
    std::istringstream lines(jsonl);
    int n = 0;
    for (std::string line; std::getline(lines, line); ++n) {
        json j = json::parse(line);
        EXPECT_EQ(j["embedding_model"], "builtin-lexical-v1");
        EXPECT_EQ(j["embedding"].size(), 768u);
    }
    EXPECT_EQ(n, 3);

    test::TestDatabase other;
    auto imported = agent({"import", file.string(), "--json"}, &other);
    ASSERT_EQ(imported.exit_code, 0) << imported.output;
    json report = parse_json(imported.output);
    EXPECT_EQ(report["lines"], 3);
    EXPECT_EQ(report["added"], 3);
    EXPECT_EQ(report["duplicates"], 0);
    EXPECT_TRUE(report["rejected"].empty());

    const char* digest =
        "SELECT md5(string_agg(concat_ws('|', id, scope, content, encode(content_hash, 'hex'), "
        "metadata::text, tags::text, source, author, embedding::text, embedding_model, "
        "created_at, updated_at), E'\\n' ORDER BY id)) FROM memory_entries";
    EXPECT_EQ(db.sql(digest).text(0, 0), other.sql(digest).text(0, 0))
        << "same ids, contents and embeddings";
    const char* terms =
        "SELECT md5(coalesce(string_agg(feature || ':' || df, ',' ORDER BY feature), '')) FROM "
        "memory_term_stats WHERE df > 0";
    EXPECT_EQ(db.sql(terms).text(0, 0), other.sql(terms).text(0, 0))
        << "the same document frequencies";

    auto ids = [&](const test::TestDatabase* on) {
        std::set<std::string> out;
        const auto entries = agent_json({"list"}, on)["entries"];  // outlives the loop
        for (const auto& e : entries)
            out.insert(e["id"].get<std::string>() + "|" + e["content"].get<std::string>());
        return out;
    };
    EXPECT_EQ(ids(nullptr), ids(&other));

    // Re-running skips everything; the text report says so.
    auto again = agent({"import", file.string()}, &other);
    EXPECT_EQ(again.exit_code, 0) << again.output;
    EXPECT_TRUE(contains(again.output, "3 lines: 0 added, 3 duplicates skipped, 0 rejected"))
        << again.output;
    EXPECT_EQ(count(other), 3);

    // Standard input and output work too; --no-embeddings leaves vectors out.
    auto bare = agent({"export", "--no-embeddings", (dir / "bare.jsonl").string()});
    ASSERT_EQ(bare.exit_code, 0) << bare.output;
    EXPECT_FALSE(contains(read_file(dir / "bare.jsonl"), "embedding"));
    auto to_stdout = agent({"export", "--scope", "ops"});
    ASSERT_EQ(to_stdout.exit_code, 0) << to_stdout.output;
    EXPECT_TRUE(contains(to_stdout.output, "Rollback with make rollback.")) << to_stdout.output;
    EXPECT_TRUE(contains(to_stdout.output, "exported 1 entries")) << to_stdout.output;
}

TEST_F(StoreCli, ImportReportsBadLinesWithTheirNumbersAndExits14) {
    fs::path file = dir / "mixed.jsonl";
    std::ofstream(file) << "{\"content\": \"good one\"}\n"
                        << "this is not json\n"
                        << "{\"content\": \"good two\", \"scope\": \"s\"}\n"
                        << "{\"text\": \"wrong field\"}\n";
    auto r = agent({"import", file.string()});
    EXPECT_EQ(r.exit_code, 14) << r.output;
    EXPECT_TRUE(contains(r.output, "4 lines: 2 added, 0 duplicates skipped, 2 rejected"))
        << r.output;
    EXPECT_TRUE(contains(r.output, "line 2: not valid JSON")) << r.output;
    EXPECT_TRUE(contains(r.output, "line 4: unknown field 'text'")) << r.output;
    EXPECT_EQ(count(db), 2);

    auto j = agent({"import", file.string(), "--json", "--scope", "other"});
    EXPECT_EQ(j.exit_code, 14) << j.output;
    json report = parse_json(j.output);
    ASSERT_EQ(report["rejected"].size(), 2u);
    EXPECT_EQ(report["rejected"][0]["line"], 2);
    EXPECT_EQ(report["rejected"][0]["reason"], "not valid JSON");
    EXPECT_EQ(report["rejected"][1]["line"], 4);
    EXPECT_EQ(report["added"], 1) << "--scope applies to lines without one";
    EXPECT_EQ(report["duplicates"], 1);
    EXPECT_EQ(db.sql("SELECT count(*) FROM memory_entries WHERE scope = 'other'").integer(0, 0), 1);

    // An id already taken by other content rejects that line only; the rest of its batch lands.
    std::string taken = db.sql("SELECT id FROM memory_entries LIMIT 1").text(0, 0);
    fs::path clash = dir / "clash.jsonl";
    std::ofstream(clash) << "{\"content\": \"brand new\"}\n"
                         << "{\"content\": \"other text\", \"id\": \"" << taken << "\"}\n"
                         << "{\"content\": \"also new\"}\n";
    auto clashed = agent({"import", clash.string()});
    EXPECT_EQ(clashed.exit_code, 14) << clashed.output;
    EXPECT_TRUE(contains(clashed.output, "3 lines: 2 added, 0 duplicates skipped, 1 rejected"))
        << clashed.output;
    EXPECT_TRUE(contains(clashed.output, "line 2: ")) << clashed.output;
    EXPECT_TRUE(contains(clashed.output, "an entry with id " + taken + " already exists"))
        << clashed.output;
    EXPECT_EQ(count(db), 5);

    auto missing = agent({"import", (dir / "nope.jsonl").string()});
    EXPECT_EQ(missing.exit_code, 2) << missing.output;
    EXPECT_TRUE(contains(missing.output, "cannot read")) << missing.output;
}

TEST_F(StoreCli, SearchModes) {
    std::string kafka = remember({"Kafka consumer groups rebalance when partitions change."});
    std::string pg = remember({"PostgreSQL backups run nightly with pgBackRest."});
    remember({"Lunch menus are posted on Mondays."});

    for (const char* mode : {"vector", "text", "hybrid"}) {
        json hits = agent_json({"search", "kafka partitions", "--mode", mode});
        ASSERT_FALSE(hits.empty()) << mode;
        EXPECT_EQ(hits[0]["id"], kafka) << mode;
        for (std::size_t i = 0; i < hits.size(); ++i) EXPECT_EQ(hits[i]["rank"], i + 1) << mode;
        EXPECT_GT(hits[0]["similarity"].get<double>(), 0.0) << mode;
    }
    json text = agent_json({"search", "pgbackrest", "--mode", "text"});
    ASSERT_EQ(text.size(), 1u) << "text mode finds only matching words: " << text.dump();
    EXPECT_EQ(text[0]["id"], pg);

    json floor =
        agent_json({"search", "kafka partitions", "--mode", "vector", "--min-similarity", "0.99"});
    EXPECT_TRUE(floor.empty()) << floor.dump();
    json tuned = agent_json({"search", "kafka", "--ef-search", "200", "-k", "2"});
    EXPECT_LE(tuned.size(), 2u);
    ASSERT_FALSE(tuned.empty());
    EXPECT_EQ(tuned[0]["id"], kafka);
}

TEST_F(StoreCli, InvalidArgumentsExitTwoWithAClearMessage) {
    remember({"something to search"});
    struct Case {
        std::vector<std::string> args;
        std::string message;
    };
    const std::vector<Case> cases = {
        {{"search", "x", "-k", "0"}, "-k: Value 0 not in range"},
        {{"search", "x", "-k", "-3"}, "-k: Value -3 not in range"},
        {{"search", "x", "-k", "5000"}, "k must be between 1 and 100"},
        {{"search", "x", "-k", "many"}, "-k"},
        {{"search", "x", "--mode", "bogus"}, "unknown search mode 'bogus'"},
        {{"search", "x", "--min-similarity", "2"}, "min_similarity must be between -1 and 1"},
        {{"search", "x", "--ef-search", "0"}, "--ef-search: Value 0 not in range"},
        {{"search", "x", "--ef-search", "5000"}, "--ef-search: Value 5000 not in range"},
        {{"search", "   "}, "query is empty"},
        {{"search", "x", "--after", "last week"}, "RFC 3339"},
        {{"search"}, "query is required"},
        {{"get", "not-a-uuid"}, "'not-a-uuid' is not an entry id (a UUID)"},
        {{"forget", "not-a-uuid"}, "'not-a-uuid' is not an entry id (a UUID)"},
        {{"list", "--limit", "0"}, "limit must be between 1 and 1000"},
        {{"list", "--cursor", "garbage"}, "cursor is not valid"},
        {{"list", "--scope", "a b"}, "scope 'a b'"},
        {{"import", "-", "--batch-size", "0"}, "--batch-size"},
        {{"remember", "x", "--tag", ""}, "tag '' is empty"},
    };
    for (const auto& c : cases) {
        auto r = agent(c.args);
        std::string shown;
        for (const auto& a : c.args) shown += a + " ";
        EXPECT_EQ(r.exit_code, 2) << shown << "\n" << r.output;
        EXPECT_TRUE(contains(r.output, c.message)) << shown << "\n" << r.output;
    }
    EXPECT_EQ(count(db), 1);
}

TEST_F(StoreCli, ReindexAppliesConfiguredParameters) {
    remember({"something to index"});
    auto r =
        agent({"reindex"}, nullptr,
              {"KNOWLEDGE_AGENT_INDEX_HNSW_M=24", "KNOWLEDGE_AGENT_INDEX_HNSW_EF_CONSTRUCTION=80"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto conn = db.connect();
    auto params = db::hnsw_index_params(conn);
    ASSERT_TRUE(params && *params);
    EXPECT_EQ((*params)->m, 24);
    EXPECT_EQ((*params)->ef_construction, 80);
    EXPECT_EQ(db.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                     "'idx_memory_entries_embedding'::regclass")
                  .text(0, 0),
              "t");
    json hits = agent_json({"search", "index"});
    ASSERT_EQ(hits.size(), 1u) << "search works on the rebuilt index";

    auto info = agent({"reindex"}, nullptr, {"KNOWLEDGE_AGENT_LOG_LEVEL=info"});
    EXPECT_EQ(info.exit_code, 0) << info.output;
    EXPECT_TRUE(contains(info.output, "HNSW index rebuilt")) << info.output;
}

}  // namespace
}  // namespace ka
