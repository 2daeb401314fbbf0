// Search: vector (HNSW cosine, iterative scans for filters, exact for selective filters),
// text (PostgreSQL full-text, websearch syntax) and hybrid (reciprocal-rank fusion).
#include <algorithm>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "log/log.h"
#include "store/internal.h"
#include "store/store.h"

namespace ka::store {
namespace {

using namespace detail;

// Candidates each side contributes to hybrid fusion.
constexpr int kHybridDepthFactor = 4;
constexpr int kHybridMinDepth = 50;

bool has_filters(const Filters& f) {
    return !f.scopes.empty() || !f.tags.empty() || f.source || f.created_after || f.created_before;
}

// Whether the planner expects the filter to match few enough rows, absolutely or as a share of
// the table, to rank every match exactly (no execution). One EXPLAIN estimates both: the two
// branches of the UNION ALL are the filtered rows and the whole table.
Result<bool> selective(db::Connection& conn, const std::string& where, const db::Params& params,
                       const config::Config& config) {
    auto r = conn.exec("EXPLAIN (FORMAT JSON) SELECT 1 FROM memory_entries WHERE " + where +
                           " UNION ALL SELECT 1 FROM memory_entries",
                       params);
    if (!r) return std::unexpected(r.error());
    auto plan = nlohmann::json::parse(r->get(0, 0), nullptr, false);
    const nlohmann::json* plans = nullptr;
    if (!plan.is_discarded() && plan.is_array() && !plan.empty()) plans = &plan[0]["Plan"]["Plans"];
    if (!plans || !plans->is_array() || plans->size() != 2) return false;
    double rows = (*plans)[0].value("Plan Rows", 0.0), total = (*plans)[1].value("Plan Rows", 0.0);
    return rows <= config.search.exact_max_rows ||
           rows * 100 <= total * config.search.exact_max_percent;
}

std::vector<Hit> to_hits(const db::PgResult& r) {
    std::vector<Hit> hits;
    for (int i = 0; i < r.rows(); ++i) {
        Hit h;
        h.entry = row_to_entry(r, i);
        if (!r.is_null(i, kEntryColumnCount))
            h.similarity = std::strtod(r.text(i, kEntryColumnCount).c_str(), nullptr);
        // Vector rows carry no separate score: it is the similarity.
        h.score = r.columns() > kEntryColumnCount + 1
                      ? std::strtod(r.text(i, kEntryColumnCount + 1).c_str(), nullptr)
                      : h.similarity.value_or(0.0);
        hits.push_back(std::move(h));
    }
    return hits;
}

struct Query {
    std::string vector;  // binary pgvector
    int k;
    double min_similarity;
};

Result<std::vector<Hit>> vector_search(db::Connection& conn, const Query& q, const Filters& filters,
                                       const config::Config& config, int ef_search,
                                       bool iterative_scan) {
    db::Params params{db::Param::bytes(q.vector)};
    std::string where = where_sql(filters, params);
    params.push_back(std::to_string(q.k));

    bool exact = false;
    if (has_filters(filters)) {
        db::Params where_params;
        auto few = selective(conn, where_sql(filters, where_params), where_params, config);
        if (!few) return std::unexpected(few.error());
        exact = *few;
    }
    // The k rows are ranked, cut at min_similarity and re-sorted here, not in SQL: a subquery
    // and sort around the index scan cost ~8% of a search (pgbench, 20k rows, ef 40).
    auto finish = [&](const db::PgResult& r) {
        auto hits = to_hits(r);
        std::erase_if(hits,
                      [&](const Hit& h) { return h.similarity.value_or(-1.0) < q.min_similarity; });
        // Iterative scans may return rows slightly out of order.
        std::stable_sort(hits.begin(), hits.end(), [](const Hit& a, const Hit& b) {
            return a.similarity != b.similarity ? a.similarity > b.similarity
                                                : a.entry.id < b.entry.id;
        });
        return hits;
    };
    std::string select = fmt::format(
        "SELECT {}, 1 - (embedding <=> $1::vector) FROM memory_entries WHERE {} ORDER BY ",
        kEntryColumns, where);
    std::string limit = fmt::format(" LIMIT ${}", params.size());
    if (!exact) {
        if (auto ok = conn.set("hnsw.ef_search", std::to_string(ef_search)); !ok)
            return std::unexpected(ok.error());
        // pgvector before 0.8 has no iterative scans; the exact fallback below covers filters.
        if (iterative_scan) {
            if (auto ok = conn.set("hnsw.iterative_scan",
                                   has_filters(filters) ? config.search.iterative_scan : "off");
                !ok)
                return std::unexpected(ok.error());
        }
        auto r = run(conn, select + "embedding <=> $1::vector" + limit, params);
        if (!r) return std::unexpected(r.error());
        if (r->rows() >= q.k || !has_filters(filters)) return finish(*r);
        // Fewer than k: the index scan gave up early; never return fewer when more rows match.
    }
    // Exact: "+ 0" keeps the planner from ordering through the HNSW index, so the filter's own
    // indexes pick the rows and every match is ranked; the columns are formatted for the k
    // rows only, not for every match (2x the time at 1% of 100k rows).
    auto r = run(conn,
                 fmt::format("SELECT {}, 1 - d FROM (SELECT *, (embedding <=> $1::vector) + 0 AS d "
                             "FROM memory_entries WHERE {} ORDER BY d{}) t",
                             kEntryColumns, where, limit),
                 params);
    if (!r) return std::unexpected(r.error());
    return finish(*r);
}

Result<std::vector<Hit>> text_search(db::Connection& conn, const std::string& query,
                                     const std::string* vector, int k, const Filters& filters) {
    db::Params params{query};
    std::string similarity = "NULL::float8";
    if (vector) {
        params.push_back(db::Param::bytes(*vector));
        similarity = "1 - (embedding <=> $2::vector)";
    }
    std::string where = where_sql(filters, params);
    params.push_back(std::to_string(k));
    // websearch syntax ANDs the words; a long question rarely matches all of them, so when the
    // strict query finds fewer than k, entries matching any word follow (unless it negates).
    std::string sql = fmt::format(
        "WITH q AS (SELECT websearch_to_tsquery('english', $1) AS strict, "
        "CASE WHEN position('!' in websearch_to_tsquery('english', $1)::text) = 0 THEN "
        "replace(websearch_to_tsquery('english', $1)::text, ' & ', ' | ')::tsquery END AS loose) "
        "SELECT {0}, {1}, (content_tsv @@ q.strict)::int + ts_rank_cd(content_tsv, "
        "coalesce(q.loose, q.strict), 1) "
        "AS score FROM memory_entries, q WHERE (content_tsv @@ q.strict OR content_tsv @@ q.loose) "
        "AND {2} "
        "ORDER BY score DESC, id LIMIT ${3}",
        kEntryColumns, similarity, where, params.size());
    auto r = run(conn, sql, params);
    if (!r) return std::unexpected(r.error());
    return to_hits(*r);
}

// Sets each hit's 1-based rank.
Result<std::vector<Hit>> numbered(Result<std::vector<Hit>> hits) {
    if (!hits) return hits;
    for (std::size_t i = 0; i < hits->size(); ++i) (*hits)[i].rank = static_cast<int>(i) + 1;
    return hits;
}

}  // namespace

Result<Mode> parse_mode(std::string_view name) {
    if (name == "vector") return Mode::vector;
    if (name == "text") return Mode::text;
    if (name == "hybrid") return Mode::hybrid;
    return fail(ErrorCode::invalid_argument, fmt::format("unknown search mode '{}'", name),
                "use vector, text or hybrid");
}

std::string_view to_string(Mode mode) {
    switch (mode) {
        case Mode::vector:
            return "vector";
        case Mode::text:
            return "text";
        case Mode::hybrid:
            return "hybrid";
    }
    return "hybrid";
}

Result<std::vector<Hit>> Store::search(const SearchRequest& request, std::string* degraded) {
    if (degraded) degraded->clear();
    int k = request.k == 0 ? config_.search.default_k : request.k;
    if (k < 1 || k > config_.search.max_k) {
        return fail(ErrorCode::invalid_argument,
                    fmt::format("k must be between 1 and {}", config_.search.max_k),
                    "ask for fewer results, or raise search.max_k");
    }
    int ef = request.ef_search.value_or(config_.search.ef_search);
    if (ef < 1 || ef > 1000)
        return fail(ErrorCode::invalid_argument, "ef_search must be between 1 and 1000");
    if (request.min_similarity > 1.0 || request.min_similarity < -1.0 ||
        std::isnan(request.min_similarity)) {
        return fail(ErrorCode::invalid_argument, "min_similarity must be between -1 and 1");
    }
    if (auto ok = check_text("query", request.query,
                             static_cast<std::size_t>(config_.store.max_content_bytes));
        !ok)
        return std::unexpected(ok.error());
    std::string query = trim(request.query);
    if (query.empty() && !request.query_vector)
        return fail(ErrorCode::invalid_argument, "query is empty");
    if (auto ok = check_filters(request.filters); !ok) return std::unexpected(ok.error());
    Mode mode = request.mode.value_or(parse_mode(config_.search.mode).value_or(Mode::hybrid));
    if (query.empty() && mode != Mode::vector) {
        return fail(ErrorCode::invalid_argument, "text and hybrid search need query text");
    }

    embed::Vector vector;
    if (request.query_vector) {
        if (auto ok = check_vector(*request.query_vector, config_.embedding.dimensions); !ok)
            return std::unexpected(ok.error());
        vector = *request.query_vector;
    } else {
        auto embedded = embedder_.embed(std::vector<std::string>{query}, embed::Purpose::query);
        if (!embedded) {
            const Error& e = embedded.error();
            bool provider_fault =
                e.code == ErrorCode::unavailable || e.code == ErrorCode::bad_gateway;
            if (mode == Mode::vector || !config_.search.text_fallback || !provider_fault)
                return std::unexpected(e);
            // Full text needs no provider: an answer ranked by words beats no answer.
            log::warn("Search ran on full text only",
                      {{"mode", std::string(to_string(mode))}, {"error", e.message}});
            if (degraded) *degraded = "full-text search only: " + e.message;
            auto conn = pool_.acquire();
            if (!conn) return std::unexpected(conn.error());
            return numbered(text_search(**conn, query, nullptr, k, request.filters));
        }
        if (embedded->size() != 1)
            return fail(ErrorCode::internal, "the embedder returned no vector for the query");
        if (auto ok = check_vector(embedded->front(), config_.embedding.dimensions); !ok) {
            return fail(ErrorCode::internal,
                        "the embedder returned a bad query vector: " + ok.error().message);
        }
        vector = std::move(embedded->front());
    }
    Query q{vector_binary(vector), k, request.min_similarity};

    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    Result<std::vector<Hit>> hits;
    if (mode == Mode::vector) {
        // The index returns at most ef_search rows: never fewer than k.
        hits = vector_search(**conn, q, request.filters, config_, std::min(std::max(ef, k), 1000),
                             iterative_scan_);
    } else if (mode == Mode::text) {
        hits = text_search(**conn, query, &q.vector, k, request.filters);
    } else {
        int depth = std::max(k * kHybridDepthFactor, kHybridMinDepth);
        Query deep = q;
        deep.k = depth;
        auto by_vector = vector_search(**conn, deep, request.filters, config_,
                                       std::min(std::max(ef, depth), 1000), iterative_scan_);
        if (!by_vector) return by_vector;
        auto by_text = text_search(**conn, query, &q.vector, depth, request.filters);
        if (!by_text) return by_text;
        // Reciprocal-rank fusion: score = sum over lists of 1 / (rrf_k + rank).
        std::map<std::string, Hit> fused;
        for (const auto* list : {&*by_vector, &*by_text}) {
            for (std::size_t i = 0; i < list->size(); ++i) {
                const Hit& h = (*list)[i];
                auto [it, added] = fused.try_emplace(h.entry.id, h);
                if (added) it->second.score = 0;
                it->second.score += 1.0 / (config_.search.rrf_k + static_cast<double>(i) + 1);
            }
        }
        std::vector<Hit> merged;
        for (auto& [id, h] : fused) {
            if (h.similarity.value_or(-1.0) >= request.min_similarity)
                merged.push_back(std::move(h));
        }
        std::sort(merged.begin(), merged.end(), [](const Hit& a, const Hit& b) {
            return a.score != b.score ? a.score > b.score : a.entry.id < b.entry.id;
        });
        if (static_cast<int>(merged.size()) > k) merged.resize(static_cast<std::size_t>(k));
        hits = std::move(merged);
    }
    return numbered(std::move(hits));
}

}  // namespace ka::store
