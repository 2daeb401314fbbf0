// A fixed-size pool of connections: opened lazily, health-checked on return, replaced after
// the server restarts, so callers see one `unavailable` error during an outage, not a crash.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

#include "db/connection.h"

namespace ka::db {

class Pool {
  public:
    Pool(Target target, int size, int connect_timeout_seconds);

    // A connection on loan; returned to the pool when destroyed.
    class Lease {
      public:
        Lease(Pool* pool, std::unique_ptr<Connection> conn) : pool_(pool), conn_(std::move(conn)) {}
        Lease(Lease&&) noexcept = default;
        Lease& operator=(Lease&&) = delete;
        ~Lease();
        Connection& operator*() const { return *conn_; }
        Connection* operator->() const { return conn_.get(); }

      private:
        Pool* pool_;
        std::unique_ptr<Connection> conn_;
    };

    // Waits up to `wait` for a free connection, opening one when the pool is not full.
    Result<Lease> acquire(std::chrono::milliseconds wait = std::chrono::seconds(10));

    struct Stats {
        int size = 0;
        int open = 0;
        int in_use = 0;
    };
    Stats stats() const;
    const Target& target() const { return target_; }

  private:
    void give_back(std::unique_ptr<Connection> conn);

    Target target_;
    int size_;
    int connect_timeout_;
    mutable std::mutex mutex_;
    std::condition_variable available_;
    std::vector<std::unique_ptr<Connection>> idle_;
    int open_ = 0;
};

}  // namespace ka::db
