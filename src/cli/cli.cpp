#include "cli/cli.h"
#include "cli/common.h"

#include <iostream>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "core/redact.h"
#include "db/embedded.h"
#include "db/migrate.h"
#include "db/startup.h"
#include "doctor/doctor.h"
#include "log/log.h"

namespace ka::cli {

namespace {
bool json_logs = false;
}  // namespace

int report(std::string_view context, const Error& e) {
    if (json_logs) {
        log::error(context, {{"error", e.message},
                             {"code", std::string(to_string(e.code))},
                             {"hint", e.hint},
                             {"detail", e.detail}});
    } else {
        log::error(context, {{"error", e.message}});
        if (!e.detail.empty()) std::cerr << "\n" << redact(e.detail) << "\n";
        if (!e.hint.empty()) std::cerr << "\nHint: " << redact(e.hint) << "\n";
    }
    return exit_code(e.code);
}

Result<config::Config> load_config(const Globals& g) {
    auto config = config::load({g.config_path, config::process_env});
    if (config) {
        log::configure(config->log.level, config->log.format);
        json_logs = config->log.format == "json";
    }
    return config;
}

Result<db::Connection> open_ready(const config::Config& config, std::optional<bool> apply,
                                  int& exit) {
    auto conn = db::connect(config);
    if (!conn) {
        exit = report("Failed to connect to PostgreSQL", conn.error());
        return conn;
    }
    if (auto ok = db::prepare_schema(*conn, config, apply.value_or(config.migrations.auto_apply));
        !ok) {
        exit = report("Failed to run database migrations", ok.error());
        return std::unexpected(ok.error());
    }
    return conn;
}

std::unique_ptr<Services> open_services(const Globals& g, int& exit, const WrapEmbedder& wrap) {
    auto config = load_config(g);
    if (!config) {
        exit = report("Invalid configuration", config.error());
        return nullptr;
    }
    auto services = std::make_unique<Services>();
    services->config = std::move(*config);
    auto conn = open_ready(services->config, std::nullopt, exit);
    if (!conn) return nullptr;
    auto embedder = embed::make_embedder(services->config);
    if (!embedder) {
        exit = report("Cannot set up the embedding provider", embedder.error());
        return nullptr;
    }
    services->embedder = wrap ? wrap(std::move(*embedder)) : std::move(*embedder);
    services->pool = std::make_unique<db::Pool>(conn->target(), services->config.postgres.pool_size,
                                                services->config.postgres.connect_timeout);
    services->store =
        std::make_unique<store::Store>(*services->pool, *services->embedder, services->config);
    if (auto ok = services->store->prepare(); !ok) {
        exit = report("Cannot prepare the knowledge store", ok.error());
        return nullptr;
    }
    return services;
}

namespace {

int cmd_db(const Globals& g, const std::string& action, bool json) {
    auto config = load_config(g);
    if (!config) return report("Invalid configuration", config.error());
    if (!config->embedded()) {
        return report(
            "Cannot manage the database",
            Error{ErrorCode::invalid_argument,
                  "postgres.url is set: `db " + action + "` manages only the embedded cluster",
                  "unset postgres.url / POSTGRES_URL to use the embedded cluster",
                  {}});
    }
    auto cluster = db::resolve_embedded(config->postgres.embedded);
    if (!cluster) return report("Embedded PostgreSQL unavailable", cluster.error());
    if (action == "start") {
        if (auto ok = db::start_embedded(*cluster); !ok)
            return report("Failed to start embedded PostgreSQL", ok.error());
    } else if (action == "stop") {
        if (auto ok = db::stop_embedded(*cluster); !ok)
            return report("Failed to stop embedded PostgreSQL", ok.error());
    }
    auto status = db::embedded_status(*cluster);
    if (!status) return report("Failed to read embedded PostgreSQL status", status.error());
    if (json) {
        nlohmann::json j = {{"data_dir", cluster->data_dir.string()},
                            {"bin_dir", cluster->bin_dir.string()},
                            {"initialized", status->initialized},
                            {"running", status->running},
                            {"pid", status->pid},
                            {"version", status->server_version},
                            {"conninfo", db::embedded_target(*cluster).conninfo},
                            {"log_file", db::embedded_log_file(*cluster).string()}};
        std::cout << j.dump(2) << "\n";
    } else {
        std::cout << fmt::format("embedded PostgreSQL {}: {}\n", status->server_version,
                                 !status->initialized ? "not initialised"
                                 : status->running    ? fmt::format("running (pid {})", status->pid)
                                                      : "stopped");
        std::cout << fmt::format("  data dir: {}\n  connect:  psql \"{}\"\n  log:      {}\n",
                                 cluster->data_dir.string(), db::embedded_target(*cluster).conninfo,
                                 db::embedded_log_file(*cluster).string());
        if (cluster->port > 0) {
            std::cout << fmt::format(
                "  tcp:      postgres://{}@127.0.0.1:{}/{} (password in "
                "{}/knowledge-agent.password)\n",
                db::kEmbeddedSuperuser, cluster->port, db::kEmbeddedDatabase,
                cluster->data_dir.string());
        }
    }
    // `status` reports a stopped cluster with exit 3, like pg_ctl status.
    return action == "status" && !status->running ? 3 : 0;
}

int cmd_migrate(const Globals& g, const std::string& action, bool json) {
    auto config = load_config(g);
    if (!config) return report("Invalid configuration", config.error());
    int exit = 0;
    if (action == "up") {
        auto conn = open_ready(*config, true, exit);
        return conn ? 0 : exit;
    }
    auto conn = db::connect(*config);
    if (!conn) return report("Failed to connect to PostgreSQL", conn.error());
    auto status = db::migration_status(*conn);
    if (!status) return report("Failed to read migration status", status.error());
    bool current = true;
    nlohmann::json j = nlohmann::json::array();
    for (const auto& m : *status) {
        current = current && m.state == db::MigrationState::applied;
        if (json) {
            j.push_back({{"version", m.version},
                         {"name", m.name},
                         {"state", db::to_string(m.state)},
                         {"applied_at", m.applied_at},
                         {"duration_ms", m.duration_ms}});
        } else {
            std::cout << fmt::format(
                "{:04}  {:<28} {:<8} {}\n", m.version, m.name, db::to_string(m.state),
                m.applied_at.empty() ? "" : fmt::format("{} ({} ms)", m.applied_at, m.duration_ms));
        }
    }
    if (json) std::cout << j.dump(2) << "\n";
    return current ? 0 : exit_code(ErrorCode::migration);
}

int cmd_doctor(const Globals& g, bool json) {
    auto config = load_config(g);
    if (!config) return report("Invalid configuration", config.error());
    auto result = doctor::run(*config);
    std::cout << redact(json ? doctor::render_json(result) : doctor::render_text(result));
    return result.ok() ? 0 : exit_code(ErrorCode::check_failed);
}

int cmd_config(const Globals& g, const std::string& action) {
    if (action == "example") {
        std::cout << config::example_yaml();
        return 0;
    }
    auto config = load_config(g);
    if (!config) return report("Invalid configuration", config.error());
    if (action == "show") {
        std::cout << config::dump_yaml(*config);
    } else {
        std::cout << "configuration is valid"
                  << (config->source.empty() ? " (defaults and environment)"
                                             : " (" + config->source + ")")
                  << "\n";
    }
    return 0;
}

}  // namespace

int run(int argc, char** argv) {
    CLI::App app{
        "Knowledge Agent: a self-hosted knowledge base for engineering teams, on PostgreSQL + "
        "pgvector"};
    app.require_subcommand(1);
    Globals g;
    app.add_option("-c,--config", g.config_path,
                   "config file (default: $KNOWLEDGE_AGENT_CONFIG, then "
                   "~/.config/knowledge-agent/config.yaml if present)");
    int exit = 0;
    bool json = false;

    auto* db_cmd = app.add_subcommand("db", "manage the embedded PostgreSQL cluster");
    db_cmd->require_subcommand(1);
    for (const char* action : {"start", "stop", "status"}) {
        auto* sub = db_cmd->add_subcommand(action, std::string(action) + " the embedded cluster");
        sub->add_flag("--json", json, "machine-readable output");
        sub->callback([&, action] { exit = cmd_db(g, action, json); });
    }

    auto* migrate = app.add_subcommand("migrate", "schema migrations");
    migrate->require_subcommand(1);
    migrate->add_subcommand("up", "verify pgvector and apply pending migrations")->callback([&] {
        exit = cmd_migrate(g, "up", false);
    });
    auto* mstatus =
        migrate->add_subcommand("status", "list migrations and whether each is applied");
    mstatus->add_flag("--json", json, "machine-readable output");
    mstatus->callback([&] { exit = cmd_migrate(g, "status", json); });

    auto* doc = app.add_subcommand("doctor", "check the database against the production checklist");
    doc->add_flag("--json", json, "machine-readable output");
    doc->callback([&] { exit = cmd_doctor(g, json); });

    auto* cfg = app.add_subcommand("config", "configuration");
    cfg->require_subcommand(1);
    cfg->add_subcommand("check", "validate the configuration")->callback([&] {
        exit = cmd_config(g, "check");
    });
    cfg->add_subcommand("show", "print the effective configuration (secrets redacted)")
        ->callback([&] { exit = cmd_config(g, "show"); });
    cfg->add_subcommand("example", "print config-example.yaml")->callback([&] {
        exit = cmd_config(g, "example");
    });

    add_store_commands(app, g, exit);
    add_serve_command(app, g, exit);
    add_ask_command(app, g, exit);
    add_mcp_command(app, g, exit);

    app.add_subcommand("version", "print the version")->callback([&] {
        std::cout << "knowledge-agent " << KA_VERSION << "\n";
    });

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int code = app.exit(e);
        return code == 0 ? 0 : exit_code(ErrorCode::invalid_argument);
    }
    return exit;
}

}  // namespace ka::cli
