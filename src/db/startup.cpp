#include "db/startup.h"

#include <fmt/format.h>

#include "core/redact.h"
#include "db/embedded.h"
#include "db/migrate.h"
#include "db/pgvector.h"
#include "log/log.h"

namespace ka::db {

Result<Target> resolve_target(const config::Config& config) {
    if (!config.embedded()) return Target{config.postgres.url, redact(config.postgres.url), false};
    auto cluster = resolve_embedded(config.postgres.embedded);
    if (!cluster) return std::unexpected(cluster.error());
    if (auto started = start_embedded(*cluster); !started) return std::unexpected(started.error());
    return embedded_target(*cluster);
}

Result<Connection> connect(const config::Config& config) {
    auto target = resolve_target(config);
    if (!target) return std::unexpected(target.error());
    return Connection::open(*target, config.postgres.connect_timeout);
}

Result<std::optional<HnswParams>> hnsw_index_params(Connection& conn) {
    auto r = conn.exec(
        "SELECT coalesce(array_to_string(c.reloptions, ','), '') FROM pg_class c "
        "JOIN pg_index i ON i.indexrelid = c.oid WHERE c.oid = "
        "to_regclass('idx_memory_entries_embedding')");
    if (!r) return std::unexpected(r.error());
    if (r->rows() == 0) return std::optional<HnswParams>{};
    HnswParams params;
    std::string options = r->text(0, 0);
    for (std::size_t start = 0; start < options.size();) {
        std::size_t end = options.find(',', start);
        if (end == std::string::npos) end = options.size();
        std::string option = options.substr(start, end - start);
        if (option.starts_with("m=")) params.m = std::stoi(option.substr(2));
        if (option.starts_with("ef_construction="))
            params.ef_construction = std::stoi(option.substr(16));
        start = end + 1;
    }
    return std::optional<HnswParams>{params};
}

Result<std::optional<int>> embedding_dimensions(Connection& conn) {
    auto r = conn.exec(
        "SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass('memory_entries') "
        "AND attname = 'embedding' AND NOT attisdropped");
    if (!r) return std::unexpected(r.error());
    if (r->rows() == 0) return std::optional<int>{};
    return std::optional<int>{static_cast<int>(r->integer(0, 0))};
}

Status prepare_schema(Connection& conn, const config::Config& config, bool apply) {
    log::info("Starting database migrations...");
    auto lock = MigrationLock::acquire(conn);
    if (!lock) return std::unexpected(lock.error());
    if (auto verified = verify_pgvector(conn, apply); !verified)
        return std::unexpected(verified.error());
    auto applied = run_migrations(conn, config, apply);
    if (!applied) return std::unexpected(applied.error());

    auto dims = embedding_dimensions(conn);
    if (!dims) return std::unexpected(dims.error());
    if (*dims && **dims != config.embedding.dimensions) {
        return fail(
            ErrorCode::config,
            fmt::format("memory_entries.embedding holds {}-dimensional vectors, but "
                        "embedding.dimensions is {}",
                        **dims, config.embedding.dimensions),
            fmt::format(
                "set embedding.dimensions to {} (and use an embedding model of that size), or "
                "point postgres.url at a new database for {}-dimensional embeddings",
                **dims, config.embedding.dimensions));
    }
    auto params = hnsw_index_params(conn);
    if (!params) return std::unexpected(params.error());
    if (*params && ((*params)->m != config.index.hnsw.m ||
                    (*params)->ef_construction != config.index.hnsw.ef_construction)) {
        log::warn(
            "HNSW index parameters differ from the configuration; rebuild the index to apply them",
            {{"index_m", std::to_string((*params)->m)},
             {"index_ef_construction", std::to_string((*params)->ef_construction)},
             {"config_m", std::to_string(config.index.hnsw.m)},
             {"config_ef_construction", std::to_string(config.index.hnsw.ef_construction)}});
    }
    log::info("Database migrations completed",
              {{"applied", std::to_string(*applied)},
               {"schema_version", std::to_string(known_migrations().back().version)}});
    return {};
}

}  // namespace ka::db
