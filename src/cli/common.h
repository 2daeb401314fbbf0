// Shared by the CLI's command files: loading config, opening the database, reporting errors.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "config/config.h"
#include "core/error.h"
#include "db/connection.h"
#include "db/pool.h"
#include "embed/embedder.h"
#include "store/store.h"

namespace CLI {
class App;
}

namespace ka::cli {

struct Globals {
    std::optional<std::string> config_path;
};

// Logs a failure in the guide's style, then the long explanation and the fix; returns the exit
// code.
int report(std::string_view context, const Error& e);

Result<config::Config> load_config(const Globals& g);

// Connects and runs the start-up path; `apply` overrides migrations.auto when set.
Result<db::Connection> open_ready(const config::Config& config, std::optional<bool> apply,
                                  int& exit);

// Everything a knowledge command needs: the start-up path, a pool, the embedder, the store.
struct Services {
    config::Config config;
    std::unique_ptr<db::Pool> pool;
    std::unique_ptr<embed::Embedder> embedder;
    std::unique_ptr<store::Store> store;
};
// `wrap` may decorate the embedder (e.g. to measure it) before the store takes it.
using WrapEmbedder =
    std::function<std::unique_ptr<embed::Embedder>(std::unique_ptr<embed::Embedder>)>;
std::unique_ptr<Services> open_services(const Globals& g, int& exit, const WrapEmbedder& wrap = {});

// Registers `ask`: the agent from the command line.
void add_ask_command(CLI::App& app, const Globals& g, int& exit);

// Registers `serve`: the HTTP API.
void add_serve_command(CLI::App& app, const Globals& g, int& exit);
// Registers `mcp`: the memory tools for MCP clients over stdin/stdout.
void add_mcp_command(CLI::App& app, const Globals& g, int& exit);

// Registers remember, search, get, forget, list, stats, import, export, reindex.
void add_store_commands(CLI::App& app, const Globals& g, int& exit);

}  // namespace ka::cli
