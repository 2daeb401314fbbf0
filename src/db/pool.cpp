#include "db/pool.h"

#include <fmt/format.h>

namespace ka::db {

Pool::Pool(Target target, int size, int connect_timeout_seconds)
    : target_(std::move(target)), size_(size), connect_timeout_(connect_timeout_seconds) {}

Pool::Lease::~Lease() {
    if (pool_ && conn_) pool_->give_back(std::move(conn_));
}

Result<Pool::Lease> Pool::acquire(std::chrono::milliseconds wait) {
    std::unique_lock lock(mutex_);
    if (!available_.wait_for(lock, wait, [&] { return !idle_.empty() || open_ < size_; })) {
        return fail(ErrorCode::unavailable,
                    fmt::format("all {} database connections are busy", size_),
                    "raise postgres.pool_size or reduce concurrent load");
    }
    if (!idle_.empty()) {
        auto conn = std::move(idle_.back());
        idle_.pop_back();
        if (conn->healthy()) return Lease(this, std::move(conn));
        --open_;  // broken while idle (server restarted): replace it below
    }
    ++open_;
    lock.unlock();
    auto conn = Connection::open(target_, connect_timeout_);
    if (!conn) {
        lock.lock();
        --open_;
        available_.notify_one();
        return std::unexpected(conn.error());
    }
    return Lease(this, std::make_unique<Connection>(std::move(*conn)));
}

void Pool::give_back(std::unique_ptr<Connection> conn) {
    std::lock_guard lock(mutex_);
    // Only clean connections go back: a broken one or one left inside a transaction is closed.
    if (conn->healthy() && PQtransactionStatus(conn->raw()) == PQTRANS_IDLE) {
        idle_.push_back(std::move(conn));
    } else {
        --open_;
    }
    available_.notify_one();
}

Pool::Stats Pool::stats() const {
    std::lock_guard lock(mutex_);
    return {size_, open_, open_ - static_cast<int>(idle_.size())};
}

}  // namespace ka::db
