// The knowledge store: the only code that writes SQL for knowledge entries. CLI, HTTP, MCP and
// the agent all call it, so dedup, validation, scoping and filters exist once.
#pragma once

#include <cstdint>
#include <functional>
#include <istream>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.h"
#include "core/error.h"
#include "db/pool.h"
#include "embed/embedder.h"

namespace ka::store {

inline constexpr std::size_t kMaxScopeLength = 128;
inline constexpr std::size_t kMaxTagLength = 128;
inline constexpr std::size_t kMaxTags = 64;
inline constexpr std::size_t kMaxFieldLength = 1024;  // source, author
inline constexpr int kMaxListLimit = 1000;

struct Entry {
    std::string id;  // UUID
    std::string scope;
    std::string content;
    nlohmann::json metadata = nlohmann::json::object();
    std::vector<std::string> tags;
    std::optional<std::string> source;
    std::optional<std::string> author;
    std::string embedding_model;
    std::string created_at;  // RFC 3339, UTC
    std::string updated_at;
};

struct NewEntry {
    std::string content;
    std::string scope;  // empty: store.default_scope
    nlohmann::json metadata = nlohmann::json::object();
    std::vector<std::string> tags;
    std::optional<std::string> source;
    std::optional<std::string> author;
    std::optional<std::string> created_at;   // RFC 3339; default now
    std::optional<std::string> updated_at;   // RFC 3339; default created_at (kept on import)
    std::optional<std::string> id;           // keep an id on import; default a new UUIDv7
    std::optional<embed::Vector> embedding;  // precomputed, must come from the store's model
    std::optional<std::string> embedding_model;
};

struct Added {
    Entry entry;
    bool created = false;  // false: the same text already existed in the scope (dedup)
};

// What add_batch did with one entry.
struct Saved {
    std::string id;  // the new entry's, or that of the entry whose text it repeats
    bool created = false;
};

struct Patch {
    std::optional<std::string> content;  // re-embedded when it changes
    std::optional<nlohmann::json> metadata;
    std::optional<std::vector<std::string>> tags;
    std::optional<std::optional<std::string>> source;
    std::optional<std::optional<std::string>> author;
};

// Restricts every read and write; `scopes` empty means all scopes.
struct Filters {
    std::vector<std::string> scopes;
    std::vector<std::string> tags;  // entries carrying all of them
    std::optional<std::string> source;
    std::optional<std::string> created_after;   // RFC 3339, inclusive
    std::optional<std::string> created_before;  // exclusive
};
// Validates filters as every store call does; for callers that must refuse bad filters before
// they start answering (the HTTP export streams its body).
Status check_filters(const Filters& filters);

enum class Mode { vector, text, hybrid };
Result<Mode> parse_mode(std::string_view name);
std::string_view to_string(Mode mode);

struct SearchRequest {
    std::string query;
    int k = 0;  // 0: search.default_k
    Filters filters;
    double min_similarity = -1.0;               // cosine similarity floor (vector and hybrid)
    std::optional<Mode> mode;                   // default search.mode
    std::optional<int> ef_search;               // default search.ef_search
    std::optional<embed::Vector> query_vector;  // search by a precomputed embedding instead
};

struct Hit {
    Entry entry;
    std::optional<double> similarity;  // 1 - cosine distance; unknown in a full-text fallback
    int rank = 0;                      // 1-based
    double score = 0;                  // mode-specific: similarity, text rank, or fused RRF score
};

struct ListRequest {
    Filters filters;
    int limit = 50;
    std::string cursor;  // from the previous page; empty for the first
};

struct Page {
    std::vector<Entry> entries;
    std::string next_cursor;  // empty on the last page
};

struct Stats {
    struct Scope {
        std::string scope;
        long long entries = 0;
    };
    std::vector<Scope> scopes;
    long long entries = 0;
    std::string table_size;
    std::string index_size;
    std::string embedding_model;
};

inline constexpr std::size_t kMaxImportLineBytes = 16 * 1024 * 1024;

struct ImportOptions {
    std::string default_scope;  // for lines without scope; empty: store.default_scope
    int batch_size = 500;
    std::vector<std::string> allowed_scopes;  // non-empty: lines in other scopes are rejected
    std::function<void(std::uint64_t bytes_read, std::uint64_t lines)> progress;
    // Drop the HNSW index first and rebuild it afterwards (also after a failed import): a bulk
    // load then costs a fraction of inserting into the live index. Term statistics are recounted
    // once at the end instead of per batch. Vector searches meanwhile scan exactly (slow, still
    // right). A killed import leaves both to prepare(), which rebuilds a missing index at the
    // next start and then recounts the statistics.
    bool defer_index = false;
};

struct ImportReport {
    std::uint64_t lines = 0;
    std::uint64_t added = 0;
    std::uint64_t duplicates = 0;
    struct Rejected {
        std::uint64_t line = 0;
        std::string reason;
    };
    std::vector<Rejected> rejected;
};

// One entry in the import-line JSON form (also the body of POST /api/v1/memories), validated:
// unknown fields, wrong types and invalid values are invalid_argument errors. `embedding`: one
// the caller parsed itself (imports), instead of j["embedding"].
Result<NewEntry> parse_entry(const nlohmann::json& j, const std::string& default_scope,
                             const config::Config& config,
                             std::optional<embed::Vector> embedding = std::nullopt);

// One import line, as `import` parses it: simdjson (a line carries hundreds of floats as text,
// which nlohmann parses at a fraction of the speed), then parse_entry.
Result<NewEntry> parse_import_line(const std::string& line, const std::string& default_scope,
                                   const config::Config& config);

// The JSON form of an entry used by the CLI, the HTTP API and export.
nlohmann::json to_json(const Entry& entry);
nlohmann::json to_json(const Hit& hit);

class Store {
  public:
    Store(db::Pool& pool, embed::Embedder& embedder, const config::Config& config);
    ~Store();
    Store(const Store&) = delete;
    Store& operator=(const Store&) = delete;

    // At start: check_model, pgvector's features, then build the term statistics once for entries
    // saved before they existed (safe when several agents start together).
    Status prepare();
    // Fails fast when stored entries were embedded by another model than the embedder's.
    Status check_model();

    Result<Added> add(NewEntry entry);
    // All or nothing, in one transaction; results in the entries' order.
    Result<std::vector<Saved>> add_batch(std::vector<NewEntry> entries);
    Result<Entry> get(const std::string& id, const Filters& within = {});
    Result<Entry> update(const std::string& id, const Patch& patch, const Filters& within = {});
    Status remove(const std::string& id, const Filters& within = {});
    Result<Page> list(const ListRequest& request);
    Result<long long> count(const Filters& filters);
    // When the embedding provider fails (unavailable or a bad answer) and search.text_fallback is
    // on, text and hybrid searches run on full text alone: *degraded (if given) is set to why,
    // similarities are unknown (0) and min_similarity is not applied. Otherwise it is cleared.
    Result<std::vector<Hit>> search(const SearchRequest& request, std::string* degraded = nullptr);
    Result<Stats> stats();

    // JSONL in, one entry per line; bad lines are reported, never half-written.
    Result<ImportReport> import_jsonl(std::istream& in, const ImportOptions& options);
    // JSONL out with embeddings and model names: importing it reproduces the store. Without
    // embeddings, importing it re-embeds every entry (moving to another model).
    Result<std::uint64_t> export_jsonl(std::ostream& out, const Filters& filters,
                                       bool with_embeddings = true);

    // Rebuilds idx_memory_entries_embedding with the configured m / ef_construction.
    Status reindex();

    const config::Config& config() const { return config_; }
    embed::Embedder& embedder() { return embedder_; }

  private:
    Result<ImportReport> import_lines(std::istream& in, const ImportOptions& options);
    // term_stats false: the caller recounts them afterwards (bulk import).
    Result<std::vector<Saved>> add_batch(std::vector<NewEntry> entries, bool term_stats);
    // Recounts the builtin embedder's term statistics from every entry; `only_if_empty`: only
    // when there are none yet (a store filled before they existed).
    Status recount_term_stats(db::Connection& c, bool only_if_empty);

    db::Pool& pool_;
    embed::Embedder& embedder_;
    const config::Config& config_;
    std::unique_ptr<embed::TermStats> term_stats_;
    bool iterative_scan_ = true;  // pgvector >= 0.8; checked by prepare()
};

}  // namespace ka::store
