#include "http/rate_limit.h"

#include <algorithm>
#include <iterator>

namespace ka::http {

std::optional<double> RateLimiter::take(const std::string& caller, Clock::time_point now) {
    if (rate_ <= 0) return std::nullopt;
    std::lock_guard lock(mutex_);
    // Full buckets carry no state: drop them now and then so client addresses cannot grow the
    // map without bound.
    if (buckets_.size() > 100000) {
        std::erase_if(buckets_, [&](const auto& item) {
            std::chrono::duration<double> idle = now - item.second.updated;
            return item.second.tokens + idle.count() * rate_ >= burst_;
        });
    }
    auto [it, fresh] = buckets_.try_emplace(caller, Bucket{burst_, now});
    Bucket& b = it->second;
    if (!fresh) {
        std::chrono::duration<double> elapsed = now - b.updated;
        b.tokens = std::min(burst_, b.tokens + elapsed.count() * rate_);
        b.updated = now;
    }
    if (b.tokens >= 1.0) {
        b.tokens -= 1.0;
        return std::nullopt;
    }
    return (1.0 - b.tokens) / rate_;
}

}  // namespace ka::http
