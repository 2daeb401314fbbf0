// An http::Server in this process, wired as `knowledge-agent serve` wires it: migrations (as
// migrations.auto_apply says), a pool, the configured embedder (metered), the store, the
// configured chat model (none for llm.provider none) and the agent, serving on a loopback port
// from a thread.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "agent/agent.h"
#include "config/config.h"
#include "db/pool.h"
#include "embed/embedder.h"
#include "http/metrics.h"
#include "http/server.h"
#include "llm/llm.h"
#include "store/store.h"

namespace ka::test {

class Served {
  public:
    // `yaml` is the configuration; postgres.url comes from `url` (as POSTGRES_URL, since
    // conninfo strings may hold quotes). Throws std::runtime_error when a part cannot start.
    Served(const std::string& url, const std::string& yaml);
    ~Served();
    Served(const Served&) = delete;
    Served& operator=(const Served&) = delete;

    int port() const { return port_; }
    store::Store& store() { return *store_; }
    const config::Config& config() const { return config_; }

  private:
    config::Config config_;
    http::Metrics metrics_;
    std::unique_ptr<db::Pool> pool_;
    std::unique_ptr<embed::Embedder> embedder_;
    std::unique_ptr<store::Store> store_;
    std::unique_ptr<llm::ChatModel> model_;
    std::unique_ptr<agent::Agent> agent_;
    std::unique_ptr<http::Server> server_;
    std::thread thread_;
    int port_ = 0;
};

}  // namespace ka::test
