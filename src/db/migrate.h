// Versioned schema migrations: numbered .sql files embedded at build time, applied once each
// under an advisory lock, recorded with a checksum in schema_migrations.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "core/error.h"
#include "db/connection.h"

namespace ka::db {

// Arbitrary fixed key ("KAMIGRAT") for pg_advisory_lock, shared by every knowledge-agent.
inline constexpr long long kMigrationLockKey = 0x4b414d4947524154LL;

struct EmbeddedMigration {
    std::string_view file;  // e.g. "0001_memory_entries.sql"
    std::string_view sql;
};
const std::vector<EmbeddedMigration>& embedded_migrations();  // generated at build time

struct Migration {
    int version = 0;
    std::string name;
    std::string_view sql;  // template with {{placeholders}}
    std::string checksum;  // sha256 of the template, hex
};
std::vector<Migration> known_migrations();

enum class MigrationState { applied, pending, changed, unknown };
std::string_view to_string(MigrationState state);

struct MigrationStatus {
    int version = 0;
    std::string name;
    MigrationState state = MigrationState::pending;
    std::string applied_at;
    long long duration_ms = 0;
    std::string recorded_checksum;
    std::string expected_checksum;
};

// Compares the embedded migrations with schema_migrations (read-only).
Result<std::vector<MigrationStatus>> migration_status(Connection& conn);

// Fails on changed or unknown migrations; applies pending ones when `apply`, else fails
// listing them. Returns how many were applied. Caller holds the migration lock.
Result<int> run_migrations(Connection& conn, const config::Config& config, bool apply);

// Fills {{placeholders}} from the configuration.
std::string render_migration(std::string_view sql, const config::Config& config);

// Session-level advisory lock held while verifying and migrating.
class MigrationLock {
  public:
    static Result<MigrationLock> acquire(Connection& conn);
    MigrationLock(MigrationLock&& other) noexcept : conn_(other.conn_) { other.conn_ = nullptr; }
    MigrationLock& operator=(MigrationLock&&) = delete;
    ~MigrationLock();

  private:
    explicit MigrationLock(Connection* conn) : conn_(conn) {}
    Connection* conn_;
};

}  // namespace ka::db
