// The HTTP API (`knowledge-agent serve`): REST over the store under /api/v1, API-key auth with
// roles and scopes, limits, health/readiness and Prometheus metrics. Handlers only validate,
// call the store and map results; the store owns every behaviour.
#pragma once

#include <memory>

#include "agent/agent.h"
#include "config/config.h"
#include "core/error.h"
#include "db/pool.h"
#include "http/metrics.h"
#include "store/store.h"

namespace ka::http {

// Refuses to listen beyond loopback without API keys, unless auth.allow_anonymous is set.
Status check_exposure(const config::Config& config);

// The HTTP status for an error code: 400, 403, 404, 409, 503 or 500.
int status_for(ErrorCode code);

class Server {
  public:
    // Without an agent, POST /api/v1/ask is not served.
    Server(const config::Config& config, store::Store& store, db::Pool& pool, Metrics& metrics,
           agent::Agent* agent = nullptr);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Binds server.host:server.port; returns the port (useful with port 0).
    Result<int> bind();
    // Serves until stop(); returns once in-flight requests have finished.
    void run();
    // Stops accepting connections; safe from any thread.
    void stop();

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace ka::http
