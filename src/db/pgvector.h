// Verifies that the server can do what we need: PostgreSQL >= 12 and pgvector >= 0.5.0 (HNSW),
// created in this database. Tells each missing piece apart with its own fix.
#pragma once

#include <optional>
#include <string>

#include "core/error.h"
#include "db/connection.h"

namespace ka::db {

inline constexpr int kMinServerVersionNum = 120000;
inline constexpr std::string_view kMinPgvectorVersion = "0.5.0";  // first release with HNSW

struct ServerInfo {
    int version_num = 0;
    std::string version;  // e.g. "15.18"
    std::string user;
    std::string database;
    std::string host;  // PQhost: a name, an address or a socket directory
    bool superuser = false;
    bool ssl = false;
    bool local = false;  // unix socket or loopback
};

struct PgvectorInfo {
    bool available = false;  // control file present on the server
    std::string default_version;
    std::optional<std::string> installed_version;  // created in this database
};

Result<ServerInfo> server_info(Connection& conn);
Result<PgvectorInfo> pgvector_info(Connection& conn);

// The startup check: fails with pgvector_missing / pgvector_not_created / pgvector_too_old /
// postgres_too_old, creating the extension first when it is absent and `create` is set and
// the user may. Runs a live vector operation. Returns the installed pgvector version.
Result<std::string> verify_pgvector(Connection& conn, bool create);

// Numeric comparison of dotted versions ("0.10.0" > "0.5.0").
int compare_versions(std::string_view a, std::string_view b);

// Installation instructions, with the platform the server appears to run on first.
std::string install_instructions(const Target& target, const std::string& host);

}  // namespace ka::db
