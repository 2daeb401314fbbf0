// Token-bucket rate limiting per caller (API key name, or client address without a key).
#pragma once

#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace ka::http {

class RateLimiter {
  public:
    using Clock = std::chrono::steady_clock;

    // rate 0 disables limiting.
    RateLimiter(double per_second, double burst) : rate_(per_second), burst_(burst) {}

    // Takes one token; when none is left, the seconds until one will be.
    std::optional<double> take(const std::string& caller, Clock::time_point now = Clock::now());

  private:
    struct Bucket {
        double tokens;
        Clock::time_point updated;
    };
    double rate_;
    double burst_;
    std::mutex mutex_;
    std::unordered_map<std::string, Bucket> buckets_;
};

}  // namespace ka::http
