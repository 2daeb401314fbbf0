// Retrieval quality on SciFact through the product's own paths: the corpus is loaded with
// Store::import_jsonl (document id kept in metadata) into its own scope, every claim is run
// through Store::search, and nDCG@10, recall@10 and recall@100 are reported per mode.
//
//   scifact-eval --data ../shared/data/scifact [--modes vector,text,hybrid] [--json out.json]
#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "db/pool.h"
#include "db/startup.h"
#include "embed/embedder.h"
#include "log/log.h"
#include "store/store.h"

namespace {

using nlohmann::json;
constexpr std::string_view kScope = "eval-scifact";

struct Metrics {
    double ndcg10 = 0, recall10 = 0, recall100 = 0;
    int queries = 0;
    double seconds = 0;
};

double ndcg_at_10(const std::vector<std::string>& ranked, const std::set<std::string>& relevant) {
    double dcg = 0, ideal = 0;
    for (std::size_t i = 0; i < ranked.size() && i < 10; ++i) {
        if (relevant.contains(ranked[i])) dcg += 1.0 / std::log2(static_cast<double>(i) + 2);
    }
    for (std::size_t i = 0; i < relevant.size() && i < 10; ++i)
        ideal += 1.0 / std::log2(static_cast<double>(i) + 2);
    return ideal > 0 ? dcg / ideal : 0;
}

double recall_at(const std::vector<std::string>& ranked, const std::set<std::string>& relevant,
                 std::size_t k) {
    std::size_t found = 0;
    for (std::size_t i = 0; i < ranked.size() && i < k; ++i) found += relevant.contains(ranked[i]);
    return relevant.empty() ? 0 : static_cast<double>(found) / static_cast<double>(relevant.size());
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"SciFact retrieval evaluation through the knowledge-agent store"};
    std::string data_dir, json_out, config_path, modes_arg = "vector,text,hybrid";
    bool drop = false;
    app.add_option("--data", data_dir,
                   "directory with corpus.jsonl, queries-dev.jsonl, qrels-dev.tsv")
        ->required();
    app.add_option("--modes", modes_arg, "comma-separated search modes");
    app.add_option("--json", json_out, "also write the figures to this file");
    app.add_option("-c,--config", config_path, "knowledge-agent config file");
    app.add_flag("--drop", drop, "delete the eval-scifact scope afterwards");
    CLI11_PARSE(app, argc, argv);

    auto config = ka::config::load(
        {config_path.empty() ? std::nullopt : std::optional(config_path), ka::config::process_env});
    if (!config) {
        std::cerr << "config: " << config.error().message << "\n";
        return 3;
    }
    config->search.max_k = std::max(config->search.max_k, 100);
    ka::log::configure(config->log.level, config->log.format);
    auto conn = ka::db::connect(*config);
    if (!conn || !ka::db::prepare_schema(*conn, *config, true)) {
        std::cerr << "database not ready: " << (conn ? "migrations failed" : conn.error().message)
                  << "\n";
        return 4;
    }
    auto embedder = ka::embed::make_embedder(*config);
    if (!embedder) {
        std::cerr << embedder.error().message << "\n";
        return 1;
    }
    ka::db::Pool pool(conn->target(), 2, config->postgres.connect_timeout);
    ka::store::Store store(pool, **embedder, *config);
    if (auto ok = store.prepare(); !ok) {
        std::cerr << ok.error().message << "\n";
        return 1;
    }
    ka::store::Filters scope;
    scope.scopes = {std::string(kScope)};

    // Corpus -> the import format, through the same import path users take.
    std::ifstream corpus(data_dir + "/corpus.jsonl");
    if (!corpus) {
        std::cerr << "cannot read " << data_dir << "/corpus.jsonl\n";
        return 2;
    }
    std::stringstream lines;
    std::map<std::string, std::string> doc_of_content;
    for (std::string line; std::getline(corpus, line);) {
        json doc = json::parse(line);
        std::string content =
            doc["title"].get<std::string>() + " " + doc["text"].get<std::string>();
        lines << json{{"content", content},
                      {"scope", kScope},
                      {"metadata", {{"doc_id", doc["_id"]}}}}
                     .dump()
              << "\n";
    }
    auto started = std::chrono::steady_clock::now();
    ka::store::ImportOptions options;
    options.default_scope = std::string(kScope);
    auto imported = store.import_jsonl(lines, options);
    if (!imported) {
        std::cerr << "import failed: " << imported.error().message << "\n";
        return 1;
    }
    double import_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::cerr << fmt::format(
        "imported {} documents ({} new, {} already there, {} rejected) in {:.1f} s\n",
        imported->lines, imported->added, imported->duplicates, imported->rejected.size(),
        import_seconds);

    std::map<std::string, std::set<std::string>> qrels;
    std::ifstream qrel_file(data_dir + "/qrels-dev.tsv");
    std::string header;
    std::getline(qrel_file, header);
    for (std::string q, d, score; qrel_file >> q >> d >> score;) {
        if (std::stoi(score) > 0) qrels[q].insert(d);
    }
    std::vector<std::pair<std::string, std::string>> queries;
    std::ifstream query_file(data_dir + "/queries-dev.jsonl");
    for (std::string line; std::getline(query_file, line);) {
        json q = json::parse(line);
        if (qrels.contains(q["_id"].get<std::string>())) queries.emplace_back(q["_id"], q["text"]);
    }

    json report = {{"embedding_model", (*embedder)->model()},
                   {"documents", imported->lines},
                   {"queries", queries.size()},
                   {"modes", json::object()}};
    std::cout << fmt::format("SciFact dev: {} claims, {} documents, embedding model {}\n\n",
                             queries.size(), imported->lines, (*embedder)->model());
    std::cout << fmt::format("{:<8} {:>8} {:>10} {:>11} {:>10}\n", "mode", "nDCG@10", "recall@10",
                             "recall@100", "ms/query");
    std::stringstream modes(modes_arg);
    for (std::string name; std::getline(modes, name, ',');) {
        auto mode = ka::store::parse_mode(name);
        if (!mode) {
            std::cerr << mode.error().message << "\n";
            return 2;
        }
        Metrics m;
        auto t0 = std::chrono::steady_clock::now();
        for (const auto& [id, text] : queries) {
            ka::store::SearchRequest request;
            request.query = text;
            request.k = 100;
            request.mode = *mode;
            request.filters = scope;
            auto hits = store.search(request);
            if (!hits) {
                std::cerr << "search failed: " << hits.error().message << "\n";
                return 1;
            }
            std::vector<std::string> ranked;
            for (const auto& h : *hits) ranked.push_back(h.entry.metadata.value("doc_id", ""));
            m.ndcg10 += ndcg_at_10(ranked, qrels[id]);
            m.recall10 += recall_at(ranked, qrels[id], 10);
            m.recall100 += recall_at(ranked, qrels[id], 100);
            ++m.queries;
        }
        m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        double n = std::max(1, m.queries);
        std::cout << fmt::format("{:<8} {:>8.3f} {:>10.3f} {:>11.3f} {:>10.1f}\n", name,
                                 m.ndcg10 / n, m.recall10 / n, m.recall100 / n,
                                 1000 * m.seconds / n);
        report["modes"][name] = {{"ndcg@10", m.ndcg10 / n},
                                 {"recall@10", m.recall10 / n},
                                 {"recall@100", m.recall100 / n},
                                 {"ms_per_query", 1000 * m.seconds / n}};
    }
    if (drop) {
        auto c = pool.acquire();
        if (c) (void)(*c)->exec("DELETE FROM memory_entries WHERE scope = 'eval-scifact'");
    }
    if (!json_out.empty()) std::ofstream(json_out) << report.dump(2) << "\n";
    return 0;
}
