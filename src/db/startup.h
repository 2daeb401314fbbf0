// The start-up path every command takes: resolve the database (starting the embedded cluster
// when postgres.url is empty), connect, verify pgvector, migrate, check the schema fits the config.
#pragma once

#include "config/config.h"
#include "core/error.h"
#include "db/connection.h"

namespace ka::db {

// The configured database; starts the embedded cluster when postgres.url is empty.
Result<Target> resolve_target(const config::Config& config);

// resolve_target + Connection::open.
Result<Connection> connect(const config::Config& config);

// Logs the guide's lines ("Starting database migrations...", "pgvector extension verified
// successfully"), verifies pgvector, applies pending migrations when `apply` (else fails on
// them), and checks memory_entries matches embedding.dimensions. Holds the migration lock.
Status prepare_schema(Connection& conn, const config::Config& config, bool apply);

// HNSW parameters of idx_memory_entries_embedding, or nullopt when the index is missing.
struct HnswParams {
    int m = 16;  // pgvector's defaults when reloptions omit them
    int ef_construction = 64;
};
Result<std::optional<HnswParams>> hnsw_index_params(Connection& conn);

// Dimensions of memory_entries.embedding, or nullopt when the table is missing.
Result<std::optional<int>> embedding_dimensions(Connection& conn);

}  // namespace ka::db
