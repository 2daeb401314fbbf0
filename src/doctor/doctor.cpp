#include "doctor/doctor.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "db/connection.h"
#include "db/migrate.h"
#include "db/pgvector.h"
#include "db/startup.h"

namespace ka::doctor {
namespace {

constexpr std::string_view kRecommendedPgvector = "0.8.0";  // iterative index scans for filters

struct Checks {
    Report& report;
    Check& add(std::string id, std::string title, bool required) {
        report.checks.push_back(
            Check{std::move(id), std::move(title), Status::skip, required, {}, {}});
        return report.checks.back();
    }
};

void set(Check& c, Status s, std::string value, std::string fix = {}) {
    c.status = s;
    c.value = std::move(value);
    c.fix = std::move(fix);
}

// Monitoring figures from the guide's "Monitoring" section.
void monitoring(db::Connection& conn, Report& report) {
    auto sizes = conn.exec(
        "SELECT (SELECT count(*) FROM memory_entries), "
        "pg_size_pretty(pg_total_relation_size('memory_entries')), "
        "pg_size_pretty(pg_relation_size('idx_memory_entries_embedding'))");
    if (sizes) {
        report.monitoring.emplace_back("entries", sizes->text(0, 0));
        report.monitoring.emplace_back("table size (memory_entries, total)", sizes->text(0, 1));
        report.monitoring.emplace_back("index size (idx_memory_entries_embedding)",
                                       sizes->text(0, 2));
    }
    auto usage = conn.exec(
        "SELECT idx_scan, idx_tup_read, idx_tup_fetch FROM pg_stat_user_indexes "
        "WHERE indexrelname = 'idx_memory_entries_embedding'");
    if (usage && usage->rows() == 1) {
        report.monitoring.emplace_back("idx_scan", usage->text(0, 0));
        report.monitoring.emplace_back("idx_tup_read", usage->text(0, 1));
        report.monitoring.emplace_back("idx_tup_fetch", usage->text(0, 2));
    }
}

// The guide's postgresql.conf knobs, shown beside what it recommends.
void tuning(db::Connection& conn, Report& report) {
    const std::pair<const char*, const char*> knobs[] = {
        {"shared_buffers", "25% of RAM"},
        {"effective_cache_size", "75% of RAM"},
        {"work_mem", "64MB"},
        {"maintenance_work_mem", "~4GB per 1M x 768-d entries for HNSW builds"},
        {"max_connections", "100"},
        {"max_parallel_workers_per_gather", "4 (at most the CPU count)"},
    };
    for (const auto& [name, advice] : knobs) {
        auto r = conn.exec("SELECT current_setting($1)", {std::string(name)});
        if (r)
            report.tuning.emplace_back(name, fmt::format("{}  (guide: {})", r->text(0, 0), advice));
    }
}

void privileges(db::Connection& conn, const db::ServerInfo& server, Checks& checks,
                bool table_exists) {
    bool embedded = conn.target().embedded;  // its own superuser owns a private cluster
    auto& c = checks.add("privileges", "Database user privileges", true);
    auto r = conn.exec(
        "SELECT has_database_privilege(current_database(), 'CREATE'), "
        "has_schema_privilege('public', 'CREATE'), "
        "CASE WHEN to_regclass('memory_entries') IS NULL THEN NULL ELSE "
        "has_table_privilege('memory_entries', 'SELECT,INSERT,UPDATE,DELETE') END");
    if (!r) return set(c, Status::fail, r.error().message);
    bool create_db = r->boolean(0, 0), create_schema = r->boolean(0, 1);
    std::string value =
        fmt::format("user {}{}; CREATE on database: {}; CREATE on schema public: {}", server.user,
                    server.superuser ? " (superuser)" : "", create_db ? "yes" : "no",
                    create_schema ? "yes" : "no");
    if (table_exists) {
        bool dml = r->boolean(0, 2);
        value += fmt::format("; read/write memory_entries: {}", dml ? "yes" : "no");
        if (!dml) {
            return set(c, Status::fail, value,
                       fmt::format("GRANT SELECT, INSERT, UPDATE, DELETE ON memory_entries TO {};",
                                   server.user));
        }
        if (server.superuser && !embedded) {
            return set(c, Status::warn, value,
                       "run the agent as a dedicated non-superuser once the extension exists "
                       "(docs/postgresql.md)");
        }
        return set(c, Status::pass, value);
    }
    if (!create_schema) {
        return set(
            c, Status::fail, value,
            fmt::format(
                "migrations need CREATE on schema public: GRANT CREATE ON SCHEMA public TO {};",
                server.user));
    }
    set(c, Status::pass, value);
}

}  // namespace

std::string_view to_string(Status status) {
    switch (status) {
        case Status::pass:
            return "pass";
        case Status::warn:
            return "warn";
        case Status::fail:
            return "fail";
        case Status::info:
            return "info";
        case Status::skip:
            return "skip";
    }
    return "skip";
}

bool Report::ok() const {
    for (const auto& c : checks) {
        if (c.required && (c.status == Status::fail || c.status == Status::skip)) return false;
    }
    return true;
}

Report run(const config::Config& config) {
    Report report;
    Checks checks{report};
    auto& connect = checks.add("connection", "Connect to PostgreSQL", true);
    auto target = db::resolve_target(config);
    if (!target) {
        report.target = config.embedded() ? "embedded cluster" : "postgres.url";
        set(connect, Status::fail, target.error().message, target.error().hint);
        return report;
    }
    report.target = target->label;
    auto conn = db::Connection::open(*target, config.postgres.connect_timeout);
    if (!conn) {
        set(connect, Status::fail, conn.error().message, conn.error().hint);
        return report;
    }
    set(connect, Status::pass, target->label);

    auto server = db::server_info(*conn);
    auto& version = checks.add("server_version", "PostgreSQL version", true);
    if (!server) {
        set(version, Status::fail, server.error().message);
        return report;
    }
    if (server->version_num < db::kMinServerVersionNum) {
        set(version, Status::fail, server->version + " (12 or newer required)",
            "upgrade to PostgreSQL 15 or 16");
    } else if (server->version_num < 150000) {
        set(version, Status::warn, server->version + " (supported; 15 or 16 recommended)",
            "plan an upgrade to PostgreSQL 15 or 16");
    } else {
        set(version, Status::pass, server->version + " (12+ required; 15 or 16 recommended)");
    }

    auto vector = db::pgvector_info(*conn);
    auto& available = checks.add("pgvector_available", "pgvector installed on the server", true);
    auto& created = checks.add("pgvector_created", "pgvector created in this database", true);
    if (!vector) {
        set(available, Status::fail, vector.error().message);
    } else if (!vector->available) {
        set(available, Status::fail, "not installed (no row in pg_available_extensions)",
            "install pgvector on the server: docs/postgresql.md, or run knowledge-agent migrate up "
            "for "
            "instructions by platform");
    } else {
        set(available, Status::pass, "version " + vector->default_version + " available");
    }
    if (vector && vector->installed_version) {
        const auto& v = *vector->installed_version;
        if (db::compare_versions(v, db::kMinPgvectorVersion) < 0) {
            set(created, Status::fail, v + " (HNSW needs 0.5.0+)",
                "as a superuser: ALTER EXTENSION vector UPDATE;");
        } else if (db::compare_versions(v, kRecommendedPgvector) < 0) {
            set(created, Status::warn, v + " (0.8.0+ recommended for filtered search)",
                "upgrade pgvector, then as a superuser: ALTER EXTENSION vector UPDATE;");
        } else {
            set(created, Status::pass, "version " + v);
        }
    } else if (vector) {
        set(created, Status::fail, "not created",
            fmt::format("as a superuser, in database {}: CREATE EXTENSION IF NOT EXISTS vector;",
                        server->database));
    }

    auto& preload = checks.add("shared_preload_libraries", "shared_preload_libraries", false);
    if (auto r = conn->exec("SHOW shared_preload_libraries")) {
        std::string value = r->text(0, 0);
        set(preload, Status::info, value.empty() ? "(empty)" : value);
        preload.fix = "informational: pgvector does not need preloading";
    }

    auto table = db::embedding_dimensions(*conn);
    privileges(*conn, *server, checks, table && *table);

    auto& live = checks.add("vector_operation", "Vector operation", true);
    if (vector && vector->installed_version) {
        auto r = conn->exec("SELECT '[1,2,3]'::vector <-> '[4,5,6]'::vector");
        if (r)
            set(live, Status::pass, "'[1,2,3]'::vector <-> '[4,5,6]'::vector = " + r->text(0, 0));
        else
            set(live, Status::fail, r.error().message, r.error().hint);
    }

    auto& ssl = checks.add("ssl", "SSL", false);
    if (server->ssl) {
        set(ssl, Status::pass, "in use");
    } else if (server->local) {
        set(ssl, Status::info, "not in use (local connection)");
    } else {
        set(ssl, Status::warn, "not in use on a connection to " + server->host,
            "add sslmode=require (better: sslmode=verify-full&sslrootcert=/path/ca.crt) to "
            "postgres.url");
    }

    auto& schema = checks.add("schema", "Schema up to date", true);
    auto status = db::migration_status(*conn);
    if (!status) {
        set(schema, Status::fail, status.error().message);
    } else {
        std::vector<std::string> behind;
        for (const auto& m : *status) {
            if (m.state != db::MigrationState::applied) {
                behind.push_back(
                    fmt::format("{:04}_{} {}", m.version, m.name, db::to_string(m.state)));
            }
        }
        if (behind.empty()) {
            set(schema, Status::pass, fmt::format("version {}", status->back().version));
        } else {
            set(schema, Status::fail, fmt::format("{}", fmt::join(behind, ", ")),
                "run knowledge-agent migrate up (changed/unknown migrations: see "
                "docs/operations.md)");
        }
    }

    auto& dims = checks.add("embedding_dimensions", "Embedding column dimensions", true);
    if (table && *table) {
        if (**table == config.embedding.dimensions) {
            set(dims, Status::pass, fmt::format("vector({})", **table));
        } else {
            set(dims, Status::fail,
                fmt::format("vector({}), config says {}", **table, config.embedding.dimensions),
                "set embedding.dimensions to match, or use a new database");
        }
    }

    auto& index = checks.add("hnsw_index", "HNSW index idx_memory_entries_embedding", true);
    auto params = db::hnsw_index_params(*conn);
    if (!params) {
        set(index, Status::fail, params.error().message);
    } else if (!*params) {
        set(index, Status::fail, "missing", "run knowledge-agent migrate up");
    } else {
        std::string value = fmt::format("hnsw (vector_cosine_ops) m={} ef_construction={}",
                                        (*params)->m, (*params)->ef_construction);
        if ((*params)->m != config.index.hnsw.m ||
            (*params)->ef_construction != config.index.hnsw.ef_construction) {
            set(index, Status::warn, value,
                fmt::format("config asks for m={} ef_construction={}: rebuild the index "
                            "(knowledge-agent reindex)",
                            config.index.hnsw.m, config.index.hnsw.ef_construction));
        } else {
            set(index, Status::pass, value);
        }
        monitoring(*conn, report);
    }
    tuning(*conn, report);
    return report;
}

std::string render_text(const Report& report) {
    std::string out = fmt::format("Knowledge Agent doctor: {}\n\n", report.target);
    int failed = 0, warned = 0, passed = 0;
    for (const auto& c : report.checks) {
        std::string label = c.status == Status::skip ? "SKIP" : std::string(to_string(c.status));
        for (auto& ch : label) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
        out += fmt::format("  {:<5} {:<42} {}\n", label, c.title,
                           c.status == Status::skip ? "not checked" : c.value);
        if (!c.fix.empty() && c.status != Status::pass)
            out += fmt::format("        {:<42} fix: {}\n", "", c.fix);
        if (c.status == Status::fail || (c.required && c.status == Status::skip)) ++failed;
        if (c.status == Status::warn) ++warned;
        if (c.status == Status::pass) ++passed;
    }
    if (!report.monitoring.empty()) {
        out += "\nMonitoring\n";
        for (const auto& [name, value] : report.monitoring)
            out += fmt::format("  {:<44} {}\n", name, value);
    }
    if (!report.tuning.empty()) {
        out += "\nTuning (postgresql.conf)\n";
        for (const auto& [name, value] : report.tuning)
            out += fmt::format("  {:<44} {}\n", name, value);
    }
    out += failed == 0
               ? fmt::format("\nAll required checks pass ({} ok, {} warnings).\n", passed, warned)
               : fmt::format("\n{} required check(s) failing; fix them and run doctor again.\n",
                             failed);
    return out;
}

std::string render_json(const Report& report) {
    nlohmann::json j;
    j["target"] = report.target;
    j["ok"] = report.ok();
    j["checks"] = nlohmann::json::array();
    for (const auto& c : report.checks) {
        j["checks"].push_back({{"id", c.id},
                               {"title", c.title},
                               {"status", to_string(c.status)},
                               {"required", c.required},
                               {"value", c.value},
                               {"fix", c.fix}});
    }
    j["monitoring"] = nlohmann::json::object();
    for (const auto& [name, value] : report.monitoring) j["monitoring"][name] = value;
    j["tuning"] = nlohmann::json::object();
    for (const auto& [name, value] : report.tuning) j["tuning"][name] = value;
    return j.dump(2) + "\n";
}

}  // namespace ka::doctor
