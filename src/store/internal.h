// Store internals shared by its translation units: validation, wire formats, SQL pieces.
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/bytes.h"
#include "db/connection.h"
#include "store/store.h"

namespace ka::store::detail {

// Columns every entry query selects, in the order row_to_entry reads them.
inline constexpr std::string_view kEntryColumns =
    "id::text, scope, content, metadata::text, tags, source, author, embedding_model, "
    "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS created_text, "
    "to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS updated_text";
inline constexpr int kEntryColumnCount = 10;

Entry row_to_entry(const db::PgResult& r, int row, int first_col = 0);

// Validation with messages a user can act on (field names as in the API).
Status check_text(std::string_view field, std::string_view value, std::size_t max_bytes);
Status check_scope(std::string_view scope);
Status check_tags(const std::vector<std::string>& tags);
Status check_metadata(const nlohmann::json& metadata);
Status check_timestamp(std::string_view field, std::string_view value);
// An RFC 3339 timestamp as microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's binary
// timestamptz); nullopt where PostgreSQL refuses it (30 February, year 0, offsets past 15:59).
std::optional<std::int64_t> timestamp_micros(std::string_view value);
Status check_id(std::string_view id);
Status check_vector(const embed::Vector& v, int dimensions);
std::string trim(std::string_view text);

// Validates and normalises an entry in place (trimmed content, default scope, deduped tags).
Status normalise(NewEntry& entry, const config::Config& config);

std::string new_uuid_v7();
std::string vector_binary(const embed::Vector& v);  // pgvector's binary wire format
std::string text_array_literal(const std::vector<std::string>& items);  // {"a","b"}

// WHERE clause for filters; parameters are appended to `params` ($n numbered after them).
std::string where_sql(const Filters& filters, db::Params& params);

// Runs through a per-connection prepared statement named after the SQL text.
Result<db::PgResult> run(db::Connection& conn, const std::string& sql, const db::Params& params);

}  // namespace ka::store::detail

namespace ka::store::detail {

// Embeds texts for documents with the store's embedder, checking what comes back.
Result<std::vector<embed::Vector>> embed_documents(embed::Embedder& embedder,
                                                   const std::vector<std::string>& texts,
                                                   int dimensions);

}  // namespace ka::store::detail

namespace ka::store::detail {

// Changes to document frequencies (feature -> +n / -n), applied with the entry change.
using TermDelta = std::unordered_map<std::int64_t, int>;  // hashed: recounts touch millions
void count_terms(TermDelta& delta, const std::vector<std::int64_t>& features, int sign);
// Applies a delta inside the caller's transaction (features in ascending order: no deadlocks).
Status apply_term_delta(db::Connection& conn, const TermDelta& delta);
std::string bigint_array_literal(const std::vector<std::int64_t>& values);

// Reads document frequencies for the builtin embedder's query weighting.
class StoreTermStats : public embed::TermStats {
  public:
    explicit StoreTermStats(db::Pool& pool) : pool_(pool) {}
    Result<embed::TermFrequencies> lookup(const std::vector<std::int64_t>& features) override;

  private:
    db::Pool& pool_;
};

}  // namespace ka::store::detail
