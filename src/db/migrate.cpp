#include "db/migrate.h"

#include <algorithm>
#include <chrono>
#include <map>

#include <fmt/format.h>

#include "core/bytes.h"
#include "log/log.h"

namespace ka::db {
namespace {

constexpr std::string_view kCreateTable =
    "CREATE TABLE schema_migrations ("
    " version integer PRIMARY KEY,"
    " name text NOT NULL,"
    " checksum text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now(),"
    " duration_ms integer NOT NULL)";

// The table is created only when missing: an application user without CREATE on the schema can
// then start once everything is applied.
Status ensure_table(Connection& conn) {
    auto exists = conn.exec("SELECT to_regclass('schema_migrations') IS NOT NULL");
    if (!exists) return std::unexpected(exists.error());
    if (exists->boolean(0, 0)) return {};
    auto made = conn.exec(kCreateTable);
    if (!made) return std::unexpected(made.error());
    return {};
}

std::string describe(const MigrationStatus& m) {
    return fmt::format("{:04}_{}", m.version, m.name);
}

}  // namespace

std::string_view to_string(MigrationState state) {
    switch (state) {
        case MigrationState::applied:
            return "applied";
        case MigrationState::pending:
            return "pending";
        case MigrationState::changed:
            return "changed";
        case MigrationState::unknown:
            return "unknown";
    }
    return "unknown";
}

std::vector<Migration> known_migrations() {
    std::vector<Migration> out;
    for (const auto& m : embedded_migrations()) {
        Migration migration;
        std::string_view file = m.file;
        std::size_t underscore = file.find('_');
        migration.version = std::stoi(std::string(file.substr(0, underscore)));
        migration.name = std::string(file.substr(underscore + 1, file.size() - underscore - 1 - 4));
        migration.sql = m.sql;
        migration.checksum = hex(sha256(m.sql));
        out.push_back(std::move(migration));
    }
    std::sort(out.begin(), out.end(),
              [](const auto& a, const auto& b) { return a.version < b.version; });
    return out;
}

std::string render_migration(std::string_view sql, const config::Config& config) {
    const std::pair<std::string_view, std::string> values[] = {
        {"{{dimensions}}", std::to_string(config.embedding.dimensions)},
        {"{{hnsw_m}}", std::to_string(config.index.hnsw.m)},
        {"{{hnsw_ef_construction}}", std::to_string(config.index.hnsw.ef_construction)},
        // Inline (PLAIN) while a row fits a page; MAIN lets very wide vectors move out of line.
        {"{{embedding_storage}}", config.embedding.dimensions <= 1024 ? "PLAIN" : "MAIN"},
    };
    std::string out(sql);
    for (const auto& [key, value] : values) {
        for (std::size_t at = out.find(key); at != std::string::npos;
             at = out.find(key, at + value.size())) {
            out.replace(at, key.size(), value);
        }
    }
    return out;
}

Result<std::vector<MigrationStatus>> migration_status(Connection& conn) {
    std::map<int, MigrationStatus> recorded;
    auto exists = conn.exec("SELECT to_regclass('schema_migrations') IS NOT NULL");
    if (!exists) return std::unexpected(exists.error());
    if (exists->boolean(0, 0)) {
        auto rows = conn.exec(
            "SELECT version, name, checksum, to_char(applied_at AT TIME ZONE 'UTC', "
            "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), duration_ms FROM schema_migrations ORDER BY "
            "version");
        if (!rows) return std::unexpected(rows.error());
        for (int i = 0; i < rows->rows(); ++i) {
            MigrationStatus s;
            s.version = static_cast<int>(rows->integer(i, 0));
            s.name = rows->text(i, 1);
            s.recorded_checksum = rows->text(i, 2);
            s.applied_at = rows->text(i, 3);
            s.duration_ms = rows->integer(i, 4);
            s.state = MigrationState::unknown;
            recorded[s.version] = s;
        }
    }
    std::vector<MigrationStatus> out;
    for (const auto& m : known_migrations()) {
        MigrationStatus s;
        if (auto it = recorded.find(m.version); it != recorded.end()) {
            s = it->second;
            s.state = s.recorded_checksum == m.checksum ? MigrationState::applied
                                                        : MigrationState::changed;
            recorded.erase(it);
        }
        s.version = m.version;
        s.name = m.name;
        s.expected_checksum = m.checksum;
        out.push_back(s);
    }
    for (auto& [version, s] : recorded) out.push_back(s);  // applied by a newer knowledge-agent
    return out;
}

Result<int> run_migrations(Connection& conn, const config::Config& config, bool apply) {
    auto status = migration_status(conn);
    if (!status) return std::unexpected(status.error());
    std::vector<const MigrationStatus*> pending;
    for (const auto& s : *status) {
        if (s.state == MigrationState::changed) {
            return fail(
                ErrorCode::migration,
                fmt::format(
                    "migration {} was changed after it was applied (checksum in schema_migrations "
                    "{}, in this binary {})",
                    describe(s), s.recorded_checksum.substr(0, 12),
                    s.expected_checksum.substr(0, 12)),
                "never edit an applied migration: restore it and add a new numbered migration; if "
                "schema_migrations was edited by hand, restore its checksum");
        }
        if (s.state == MigrationState::unknown) {
            return fail(
                ErrorCode::migration,
                fmt::format(
                    "the database has migration {} applied, which this knowledge-agent {} does not "
                    "know: it was migrated by a newer version",
                    describe(s), KA_VERSION),
                "run the newer knowledge-agent, or restore a backup taken before the upgrade");
        }
        if (s.state == MigrationState::pending) pending.push_back(&s);
    }
    if (pending.empty()) return 0;
    if (!apply) {
        std::vector<std::string> names;
        for (const auto* s : pending) names.push_back(describe(*s));
        return fail(
            ErrorCode::migration,
            fmt::format("{} pending migration(s): {}", pending.size(), fmt::join(names, ", ")),
            "apply them with `knowledge-agent migrate up`, or set migrations.auto: true");
    }
    if (auto ok = ensure_table(conn); !ok) return std::unexpected(ok.error());
    auto migrations = known_migrations();
    for (const auto* s : pending) {
        const auto& m = *std::find_if(migrations.begin(), migrations.end(),
                                      [&](const Migration& x) { return x.version == s->version; });
        auto started = std::chrono::steady_clock::now();
        auto fail_with = [&](Error e) -> Result<int> {
            (void)conn.exec("ROLLBACK");
            e.code = e.code == ErrorCode::permission_denied ? e.code : ErrorCode::migration;
            e.message = fmt::format("migration {} failed: {}", describe(*s), e.message);
            if (e.code == ErrorCode::permission_denied) {
                e.hint =
                    "the database user needs CREATE on schema public to apply migrations: GRANT "
                    "CREATE ON "
                    "SCHEMA public TO <user>; (see docs/postgresql.md)";
            }
            return std::unexpected(e);
        };
        if (auto ok = conn.exec("BEGIN"); !ok) return fail_with(ok.error());
        if (auto ok = conn.exec(render_migration(m.sql, config)); !ok) return fail_with(ok.error());
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::steady_clock::now() - started);
        auto recorded = conn.exec(
            "INSERT INTO schema_migrations (version, name, checksum, duration_ms) VALUES ($1, $2, "
            "$3, $4)",
            {std::to_string(m.version), m.name, m.checksum, std::to_string(ms.count())});
        if (!recorded) return fail_with(recorded.error());
        if (auto ok = conn.exec("COMMIT"); !ok) return fail_with(ok.error());
        log::info("Applied migration", {{"version", std::to_string(m.version)},
                                        {"name", m.name},
                                        {"duration_ms", std::to_string(ms.count())}});
    }
    return static_cast<int>(pending.size());
}

Result<MigrationLock> MigrationLock::acquire(Connection& conn) {
    auto locked = conn.exec("SELECT pg_advisory_lock($1)", {std::to_string(kMigrationLockKey)});
    if (!locked) return std::unexpected(locked.error());
    return MigrationLock(&conn);
}

MigrationLock::~MigrationLock() {
    if (conn_ && conn_->healthy()) {
        (void)conn_->exec("SELECT pg_advisory_unlock($1)", {std::to_string(kMigrationLockKey)});
    }
}

}  // namespace ka::db
