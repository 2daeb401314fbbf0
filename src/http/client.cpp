#include "http/client.h"

#include <curl/curl.h>

#include <algorithm>
#include <mutex>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "core/redact.h"
#include "log/log.h"

namespace ka::http {
namespace {

struct BodySink {
    CURL* curl;
    Response* response;
    const StreamFn* stream;
};

std::size_t on_body(char* data, std::size_t size, std::size_t n, void* out) {
    auto* sink = static_cast<BodySink*>(out);
    if (sink->stream) {
        long status = 0;
        curl_easy_getinfo(sink->curl, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200 && status < 300) {
            return (*sink->stream)(std::string_view(data, size * n)) ? size * n : 0;
        }
    }
    sink->response->body.append(data, size * n);
    return size * n;
}

std::size_t on_header(char* data, std::size_t size, std::size_t n, void* out) {
    std::string_view line(data, size * n);
    constexpr std::string_view kName = "retry-after:";
    if (line.size() > kName.size()) {
        std::string lower(line.substr(0, kName.size()));
        std::transform(lower.begin(), lower.end(), lower.begin(),
                       [](unsigned char c) { return std::tolower(c); });
        if (lower == kName) {
            try {
                static_cast<Response*>(out)->retry_after =
                    std::stod(std::string(line.substr(kName.size())));
            } catch (...) {
                // An HTTP date instead of seconds: fall back to our own backoff.
            }
        }
    }
    return size * n;
}

}  // namespace

bool retryable(long status) {
    return status == 408 || status == 429 || (status >= 500 && status <= 599);
}

Result<Response> post_json(const std::string& url, const std::vector<std::string>& headers,
                           const std::string& body, std::chrono::milliseconds timeout,
                           const StreamFn* stream) {
    static std::once_flag init;
    std::call_once(init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
    std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), &curl_easy_cleanup);
    if (!curl) return fail(ErrorCode::internal, "cannot initialise libcurl");
    curl_slist* list = curl_slist_append(nullptr, "Content-Type: application/json");
    for (const auto& h : headers) list = curl_slist_append(list, h.c_str());
    std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> header_list(list,
                                                                            &curl_slist_free_all);
    Response response;
    char error[CURL_ERROR_SIZE] = {};
    CURL* c = curl.get();
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, header_list.get());
    BodySink sink{c, &response, stream};
    if (stream) {
        long seconds = std::max(1L, static_cast<long>(timeout.count() / 1000));
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(timeout.count()));
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, seconds);
    } else {
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
    }
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);  // thread-safe timeouts
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &response);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error);
    curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK) {
        std::string reason = error[0] ? error : curl_easy_strerror(rc);
        if (rc == CURLE_WRITE_ERROR && stream) return fail(ErrorCode::internal, "stream aborted");
        return fail(
            ErrorCode::unavailable,
            redact(fmt::format(
                "{} {}: {}", rc == CURLE_OPERATION_TIMEDOUT ? "timed out calling" : "cannot reach",
                url, reason)));
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &response.status);
    return response;
}

Result<Response> post_json_with_retries(const std::string& url,
                                        const std::vector<std::string>& headers,
                                        const std::string& body, std::chrono::milliseconds timeout,
                                        const RetryPolicy& policy, const StreamFn* stream) {
    thread_local std::mt19937 rng(std::random_device{}());
    bool delivered = false;
    StreamFn counting = [&](std::string_view chunk) {
        delivered = true;
        return (*stream)(chunk);
    };
    for (int attempt = 0;; ++attempt) {
        auto r = post_json(url, headers, body, timeout, stream ? &counting : nullptr);
        bool again =
            r ? retryable(r->status) : r.error().code == ErrorCode::unavailable && !delivered;
        if (!again || attempt >= policy.max_retries) return r;
        // Full jitter over an exponentially growing window; Retry-After wins when given.
        std::chrono::milliseconds window =
            std::min(policy.max_delay,
                     std::chrono::milliseconds(policy.base_delay.count() << std::min(attempt, 20)));
        std::chrono::milliseconds delay(
            std::uniform_int_distribution<long long>(window.count() / 2, window.count())(rng));
        if (r && r->retry_after) {
            delay =
                std::min(policy.max_delay,
                         std::chrono::milliseconds(static_cast<long long>(*r->retry_after * 1000)));
        }
        log::warn("Retrying provider request",
                  {{"url", url},
                   {"attempt", std::to_string(attempt + 1)},
                   {"reason", r ? "HTTP " + std::to_string(r->status) : r.error().message},
                   {"delay_ms", std::to_string(delay.count())}});
        std::this_thread::sleep_for(delay);
    }
}

}  // namespace ka::http
