// `knowledge-agent serve`: the start-up path, then the HTTP API until SIGTERM/SIGINT.
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "agent/agent.h"
#include "cli/common.h"
#include "http/server.h"
#include "llm/llm.h"
#include "log/log.h"

namespace ka::cli {
namespace {

int serve(const Globals& g, const std::optional<std::string>& host,
          const std::optional<int>& port) {
    // Signals are taken by one thread with sigwait; block them before any thread starts.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    int exit = 0;
    http::Metrics metrics;
    auto services = open_services(g, exit, [&](std::unique_ptr<embed::Embedder> inner) {
        return std::make_unique<http::MeasuredEmbedder>(std::move(inner), metrics);
    });
    if (!services) return exit;
    auto& config = services->config;
    if (host) config.server.host = *host;
    if (port) config.server.port = *port;
    if (auto ok = http::check_exposure(config); !ok) return report("Cannot serve", ok.error());
    if (config.auth.keys.empty()) {
        log::warn("No API keys configured: every caller that reaches the server is admin",
                  {{"host", config.server.host}});
    }

    auto model = llm::make_chat_model(config);
    if (!model) return report("Cannot set up the LLM provider", model.error());
    auto prompt = agent::base_prompt(config);
    if (!prompt) return report("Cannot set up the agent", prompt.error());
    agent::Agent agent(*services->store, model->get(), config, std::move(*prompt));

    http::Server server(config, *services->store, *services->pool, metrics, &agent);
    auto bound = server.bind();
    if (!bound) return report("Cannot serve", bound.error());
    log::info("Knowledge Agent listening",
              {{"address", fmt::format("http://{}:{}", config.server.host, *bound)},
               {"workers", std::to_string(config.server.workers)},
               {"auth", config.auth.keys.empty() ? "off" : "api keys"},
               {"llm", *model ? (*model)->model() : "none (retrieval-only)"}});

    std::mutex mutex;
    std::condition_variable finished_cv;
    bool finished = false;
    std::thread signals([&] {
        int sig = 0;
        sigwait(&stop_signals, &sig);
        {
            std::lock_guard lock(mutex);
            if (finished) return;
        }
        log::info("Shutting down: finishing requests in flight",
                  {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"},
                   {"grace_seconds", std::to_string(config.server.shutdown_grace)}});
        server.stop();
        std::unique_lock lock(mutex);
        if (!finished_cv.wait_for(lock, std::chrono::seconds(config.server.shutdown_grace),
                                  [&] { return finished; })) {
            log::error("Requests still running after the grace period; exiting",
                       {{"grace_seconds", std::to_string(config.server.shutdown_grace)}});
            std::_Exit(1);
        }
    });
    server.run();
    {
        std::lock_guard lock(mutex);
        finished = true;
    }
    finished_cv.notify_all();
    // Wake the signal thread if the server stopped for another reason.
    pthread_kill(signals.native_handle(), SIGTERM);
    signals.join();
    log::info("Server stopped");
    return 0;
}

}  // namespace

void add_serve_command(CLI::App& app, const Globals& g, int& exit) {
    struct State {
        std::optional<std::string> host;
        std::optional<int> port;
    };
    auto st = std::make_shared<State>();
    auto* cmd =
        app.add_subcommand("serve", "serve the HTTP API (/api/v1, /health, /ready, /metrics)");
    cmd->add_option("--host", st->host, "listen address (overrides server.host)");
    cmd->add_option("--port", st->port, "TCP port, 0 for any free one (overrides server.port)")
        ->check(CLI::Range(0, 65535));
    cmd->callback([&g, &exit, st] { exit = serve(g, st->host, st->port); });
}

}  // namespace ka::cli
