// A small HTTP client (libcurl) for provider APIs, with the one retry policy every provider
// uses: 429, 5xx and transport failures are retried with exponential backoff and jitter,
// honouring Retry-After; everything else is returned to the caller at once.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace ka::http {

struct Response {
    long status = 0;
    std::string body;
    std::optional<double> retry_after;  // seconds, from a Retry-After header
};

// Receives a successful (2xx) response body as it arrives; returning false aborts the transfer.
using StreamFn = std::function<bool(std::string_view chunk)>;

// One POST. Transport failures (refused, DNS, timeout) are ErrorCode::unavailable. With `stream`,
// a 2xx body goes to it instead of Response::body, and `timeout` bounds the silence between
// chunks rather than the whole response (answers may stream for minutes).
Result<Response> post_json(const std::string& url, const std::vector<std::string>& headers,
                           const std::string& body, std::chrono::milliseconds timeout,
                           const StreamFn* stream = nullptr);

struct RetryPolicy {
    int max_retries = 3;
    std::chrono::milliseconds base_delay{200};
    std::chrono::milliseconds max_delay{30000};
};

bool retryable(long status);  // 408, 429, 5xx (incl. 529 "overloaded")

// post_json with retries. Returns the last response when retries run out on a retryable
// status, or the last transport error. A stream that has delivered data is never retried.
Result<Response> post_json_with_retries(const std::string& url,
                                        const std::vector<std::string>& headers,
                                        const std::string& body, std::chrono::milliseconds timeout,
                                        const RetryPolicy& policy,
                                        const StreamFn* stream = nullptr);

}  // namespace ka::http
