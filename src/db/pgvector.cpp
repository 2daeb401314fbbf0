#include "db/pgvector.h"

#include <sys/utsname.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "core/redact.h"
#include "log/log.h"

namespace ka::db {
namespace {

bool host_has(const std::string& host, std::string_view part) {
    return host.find(part) != std::string::npos;
}

std::string local_os_id() {
    utsname u{};
    if (uname(&u) == 0 && std::string_view(u.sysname) == "Darwin") return "macos";
    std::ifstream in("/etc/os-release");
    std::string line, id, like;
    while (std::getline(in, line)) {
        if (line.starts_with("ID=")) id = line.substr(3);
        if (line.starts_with("ID_LIKE=")) like = line.substr(8);
    }
    std::string all = id + " " + like;
    if (all.find("debian") != std::string::npos || all.find("ubuntu") != std::string::npos)
        return "debian";
    if (all.find("rhel") != std::string::npos || all.find("fedora") != std::string::npos ||
        all.find("centos") != std::string::npos)
        return "rhel";
    return "";
}

struct Platform {
    std::string_view id;
    std::string_view text;
};

// Per-platform instructions. Where the production guide is out of date we say what is right
// (pgvector needs no shared_preload_libraries; Cloud SQL supports it; bookworm lacks a package).
constexpr Platform kPlatforms[] = {
    {"embedded",
     "  This machine (embedded cluster): run `sudo scripts/setup.sh` from the knowledge-agent "
     "checkout;\n"
     "    it builds pgvector from Debian's own source package and installs it for the local "
     "PostgreSQL.\n"},
    {"docker",
     "  Docker: use the image pgvector/pgvector:pg16 (pgvector pre-installed), e.g. in "
     "docker-compose.yml\n"
     "    image: pgvector/pgvector:pg16 with POSTGRES_DB: knowledge_agent.\n"},
    {"rds",
     "  AWS RDS / Aurora PostgreSQL: pgvector ships with RDS (PostgreSQL 15.2+ or 16.1+ "
     "recommended); no\n"
     "    parameter group change or reboot is needed. Connect as the master user (rds_superuser) "
     "and run\n"
     "    CREATE EXTENSION IF NOT EXISTS vector;  Upgrade the engine minor version if it is not "
     "offered.\n"},
    {"azure",
     "  Azure Database for PostgreSQL (flexible server): allow-list the extension, then create "
     "it:\n"
     "    az postgres flexible-server parameter set --resource-group RG --server-name SERVER \\\n"
     "      --name azure.extensions --value VECTOR\n"
     "    then, as the admin user: CREATE EXTENSION IF NOT EXISTS vector;\n"},
    {"cloudsql",
     "  Google Cloud SQL / AlloyDB: pgvector is supported (PostgreSQL 11+); as a cloudsqlsuperuser "
     "member run\n"
     "    CREATE EXTENSION IF NOT EXISTS vector;  (the production guide's 'not supported' note is "
     "outdated)\n"},
    {"debian",
     "  Debian / Ubuntu: with the PostgreSQL apt repository (apt.postgresql.org):\n"
     "    sudo apt install postgresql-16-pgvector   (use your server's major version)\n"
     "    Debian 12 has no pgvector package of its own: build Debian's source package (trixie) or\n"
     "    from source (below) against postgresql-server-dev-15. No restart is needed.\n"},
    {"rhel",
     "  RHEL / Rocky / Fedora: with the PostgreSQL yum repository: sudo dnf install -y "
     "pgvector_16\n"},
    {"macos",
     "  macOS (Homebrew): brew install pgvector  (for Postgres.app, pgvector is bundled)\n"},
    {"source",
     "  From source (any platform; needs the server's development headers, gcc, make):\n"
     "    git clone --branch v0.8.0 https://github.com/pgvector/pgvector.git && cd pgvector\n"
     "    make && sudo make install   (PG_CONFIG=/path/to/pg_config for a non-default server)\n"},
    {"supabase",
     "  Supabase: pgvector is available; enable it under Database > Extensions or run CREATE "
     "EXTENSION vector;\n"},
    {"hosted",
     "  Heroku (Standard plans and up), Render, DigitalOcean (PostgreSQL 15+), Railway: pgvector "
     "is available;\n"
     "    run CREATE EXTENSION vector; as the database owner.\n"},
};

std::string detect_platform(const Target& target, const std::string& host) {
    if (target.embedded) return "embedded";
    if (host_has(host, "rds.amazonaws.com")) return "rds";
    if (host_has(host, "database.azure.com")) return "azure";
    if (host_has(host, "supabase.co") || host_has(host, "supabase.com")) return "supabase";
    if (host_has(host, "heroku") || host_has(host, "render.com") ||
        host_has(host, "ondigitalocean.com") || host_has(host, "railway"))
        return "hosted";
    if (host.empty() || host.starts_with("/") || host == "localhost" || host.starts_with("127.") ||
        host == "::1") {
        return local_os_id();
    }
    return "";
}

Error pgvector_missing(const Target& target, const ServerInfo& info) {
    std::string detail = fmt::format(
        "The Knowledge Agent requires the pgvector extension for semantic search: it stores "
        "knowledge\n"
        "as {}-dimensional vector embeddings and searches them with an HNSW index.\n"
        "The PostgreSQL {} server at {} has no pgvector files installed\n"
        "(SELECT * FROM pg_available_extensions WHERE name = 'vector' returns no row).\n\n"
        "Installation instructions by platform:\n{}\n"
        "pgvector does not need shared_preload_libraries or a restart. After installing, a "
        "superuser\n"
        "runs CREATE EXTENSION IF NOT EXISTS vector; in the knowledge_agent database "
        "(knowledge-agent\n"
        "does this itself when it connects as a superuser). Then start knowledge-agent again.",
        768, info.version, target.label, install_instructions(target, info.host));
    return Error{ErrorCode::pgvector_missing, "pgvector extension not found",
                 "install pgvector on the database server (instructions above), then start again",
                 detail};
}

}  // namespace

int compare_versions(std::string_view a, std::string_view b) {
    auto next = [](std::string_view& s) {
        int n = 0;
        while (!s.empty() && s.front() >= '0' && s.front() <= '9') {
            n = n * 10 + (s.front() - '0');
            s.remove_prefix(1);
        }
        if (!s.empty()) s.remove_prefix(1);
        return n;
    };
    while (!a.empty() || !b.empty()) {
        int x = next(a), y = next(b);
        if (x != y) return x < y ? -1 : 1;
    }
    return 0;
}

std::string install_instructions(const Target& target, const std::string& host) {
    std::string first = detect_platform(target, host);
    std::string out;
    for (const auto& p : kPlatforms) {
        if (p.id == first) out += std::string(p.text) + "\n  Other platforms:\n";
    }
    for (const auto& p : kPlatforms) {
        if (p.id != first && p.id != "embedded") out += p.text;
    }
    return out;
}

Result<ServerInfo> server_info(Connection& conn) {
    auto r = conn.exec(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version'), "
        "current_user, current_database(), rolsuper FROM pg_roles WHERE rolname = current_user");
    if (!r) return std::unexpected(r.error());
    ServerInfo info;
    if (r->rows() == 1) {
        info.version_num = static_cast<int>(r->integer(0, 0));
        info.version = r->text(0, 1);
        info.version = info.version.substr(0, info.version.find(' '));
        info.user = r->text(0, 2);
        info.database = r->text(0, 3);
        info.superuser = r->boolean(0, 4);
    }
    const char* host = PQhost(conn.raw());
    info.host = host ? host : "";
    info.ssl = PQsslInUse(conn.raw()) != 0;
    info.local = info.host.empty() || info.host.starts_with("/") || info.host == "localhost" ||
                 info.host.starts_with("127.") || info.host == "::1";
    return info;
}

Result<PgvectorInfo> pgvector_info(Connection& conn) {
    auto r = conn.exec(
        "SELECT default_version, installed_version FROM pg_available_extensions WHERE name = "
        "'vector'");
    if (!r) return std::unexpected(r.error());
    PgvectorInfo info;
    if (r->rows() == 1) {
        info.available = true;
        info.default_version = r->text(0, 0);
    }
    // pg_extension, not the installed_version above: the extension may be created from files since
    // removed.
    auto created = conn.exec("SELECT extversion FROM pg_extension WHERE extname = 'vector'");
    if (!created) return std::unexpected(created.error());
    if (created->rows() == 1) info.installed_version = created->text(0, 0);
    return info;
}

Result<std::string> verify_pgvector(Connection& conn, bool create) {
    log::debug("Verifying pgvector extension availability...");
    auto server = server_info(conn);
    if (!server) return std::unexpected(server.error());
    if (server->version_num < kMinServerVersionNum) {
        return fail(
            ErrorCode::postgres_too_old,
            fmt::format("PostgreSQL {} is too old: Knowledge Agent needs PostgreSQL 12 or newer",
                        server->version),
            "upgrade the server to PostgreSQL 15 or 16 (recommended), e.g. with pg_upgrade or your "
            "provider's major-version upgrade, then install pgvector for it");
    }
    auto vector = pgvector_info(conn);
    if (!vector) return std::unexpected(vector.error());
    if (!vector->available && !vector->installed_version)
        return std::unexpected(pgvector_missing(conn.target(), *server));

    if (!vector->installed_version) {
        if (compare_versions(vector->default_version, kMinPgvectorVersion) < 0) {
            return fail(
                ErrorCode::pgvector_too_old,
                fmt::format("pgvector {} on the server is too old: HNSW indexes need {} or newer",
                            vector->default_version, kMinPgvectorVersion),
                "upgrade the pgvector package on the server (0.8.0 or newer recommended), then "
                "start again");
        }
        std::string sql = "CREATE EXTENSION IF NOT EXISTS vector;";
        std::string who = server->superuser ? "" : " (not a superuser)";
        if (create) {
            auto made = conn.exec(sql);
            if (made) {
                log::info("Created pgvector extension", {{"version", vector->default_version}});
                vector->installed_version = vector->default_version;
            } else if (made.error().code != ErrorCode::permission_denied) {
                return std::unexpected(made.error());
            }
        }
        if (!vector->installed_version) {
            Error e{ErrorCode::pgvector_not_created,
                    fmt::format("pgvector extension is installed on the server but not created in "
                                "database \"{}\"",
                                server->database),
                    fmt::format("a superuser must run {} once in database \"{}\"", sql,
                                server->database),
                    {}};
            e.detail = fmt::format(
                "pgvector {} is available on the server, but the extension has not been created in "
                "database\n"
                "\"{}\", and user \"{}\"{} may not create it: pgvector is not a trusted extension, "
                "so\n"
                "CREATE EXTENSION needs a superuser (on AWS RDS the master user with "
                "rds_superuser, on Azure\n"
                "a member of azure_pg_admin, on Cloud SQL a cloudsqlsuperuser). GRANT CREATE ON "
                "DATABASE is\n"
                "not enough for pgvector.\n\n"
                "Ask a superuser to run, once:\n\n"
                "  psql -d {} -c '{}'\n\n"
                "Then start knowledge-agent again; the application user needs no extra privilege "
                "for it.",
                vector->default_version, server->database, server->user, who, server->database,
                sql);
            return std::unexpected(e);
        }
    }
    if (compare_versions(*vector->installed_version, kMinPgvectorVersion) < 0) {
        bool files_new_enough = compare_versions(vector->default_version, kMinPgvectorVersion) >= 0;
        return fail(
            ErrorCode::pgvector_too_old,
            fmt::format(
                "pgvector {} is created in this database, but HNSW indexes need {} or newer",
                *vector->installed_version, kMinPgvectorVersion),
            files_new_enough
                ? fmt::format(
                      "as a superuser run: ALTER EXTENSION vector UPDATE;  (the server has {})",
                      vector->default_version)
                : "upgrade the pgvector package on the server (0.8.0 or newer recommended), then "
                  "as a "
                  "superuser run: ALTER EXTENSION vector UPDATE;");
    }
    // The guide's live check: the distance between [1,2,3] and [4,5,6] is sqrt(27).
    auto live = conn.exec("SELECT '[1,2,3]'::vector <-> '[4,5,6]'::vector");
    if (!live) {
        Error e = live.error();
        e.message = "pgvector is created but a vector operation failed: " + e.message;
        e.hint =
            "make sure the schema holding the extension is on the user's search_path "
            "(SELECT extnamespace::regnamespace FROM pg_extension WHERE extname = 'vector')";
        return std::unexpected(e);
    }
    double distance = std::strtod(live->text(0, 0).c_str(), nullptr);
    if (std::abs(distance - std::sqrt(27.0)) > 1e-4) {
        return fail(ErrorCode::internal,
                    fmt::format("pgvector returned {} for a distance that is sqrt(27)", distance));
    }
    log::info("pgvector extension verified successfully",
              {{"version", *vector->installed_version}});
    return *vector->installed_version;
}

}  // namespace ka::db
