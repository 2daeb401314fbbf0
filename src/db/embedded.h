// The embedded PostgreSQL cluster knowledge-agent manages itself when postgres.url is empty:
// initdb on first use, pg_ctl start on a private unix socket, database `knowledge_agent`.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "config/config.h"
#include "core/error.h"
#include "db/connection.h"

namespace ka::db {

inline constexpr std::string_view kEmbeddedDatabase = "knowledge_agent";
inline constexpr std::string_view kEmbeddedSuperuser = "knowledge_agent";
inline constexpr int kEmbeddedSocketPort = 5432;  // names the socket file when TCP is off
inline constexpr int kStartTimeoutSeconds = 60;

struct EmbeddedCluster {
    std::filesystem::path data_dir;  // PGDATA; also holds the unix socket and the server log
    std::filesystem::path bin_dir;   // initdb, pg_ctl, postgres
    std::string run_as;              // account running the server; empty when not root
    int port = 0;                    // loopback TCP port, 0 for none
};

struct EmbeddedStatus {
    bool initialized = false;
    bool running = false;
    long pid = 0;
    std::string server_version;  // major version from PG_VERSION
};

// Fills defaults (data dir, binaries, account) and checks they are usable.
Result<EmbeddedCluster> resolve_embedded(const config::Embedded& settings);

// initdb when needed, start when stopped, create the database; safe to call concurrently.
Status start_embedded(const EmbeddedCluster& cluster);
Status stop_embedded(const EmbeddedCluster& cluster);
Result<EmbeddedStatus> embedded_status(const EmbeddedCluster& cluster);

// Conninfo for the cluster's database over its private socket.
Target embedded_target(const EmbeddedCluster& cluster,
                       std::string_view database = kEmbeddedDatabase);

// The server log, for error messages.
std::filesystem::path embedded_log_file(const EmbeddedCluster& cluster);

}  // namespace ka::db
