#include "http/client.h"

#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include <gtest/gtest.h>

namespace ka::http {
namespace {

using namespace std::chrono_literals;

// A local server on 127.0.0.1 answering POST /echo with `handler` (request number from 0),
// recording each request.
class TestServer {
  public:
    using Handler = std::function<void(int n, const httplib::Request&, httplib::Response&)>;

    explicit TestServer(Handler handler) : handler_(std::move(handler)) {
        // A developer's proxy settings must not capture requests to the test server.
        ::setenv("no_proxy", "127.0.0.1", 1);
        server_.Post("/echo", [this](const httplib::Request& req, httplib::Response& res) {
            int n = 0;
            {
                std::lock_guard lock(mutex_);
                n = static_cast<int>(requests_.size());
                requests_.push_back(req);
            }
            handler_(n, req, res);
        });
        port_ = server_.bind_to_any_port("127.0.0.1");
        thread_ = std::thread([this] { server_.listen_after_bind(); });
        // stop() before the accept loop has started would be lost and join() would hang.
        while (!server_.is_running()) std::this_thread::sleep_for(1ms);
    }
    ~TestServer() {
        release();
        server_.stop();
        thread_.join();
    }
    TestServer(const TestServer&) = delete;
    TestServer& operator=(const TestServer&) = delete;

    std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/echo"; }
    int port() const { return port_; }
    std::vector<httplib::Request> requests() {
        std::lock_guard lock(mutex_);
        return requests_;
    }

    // Blocks a handler until the test ends, to outlast the client's timeout without making
    // the server's stop() wait.
    void hang() {
        std::unique_lock lock(mutex_);
        released_cv_.wait_for(lock, 30s, [this] { return released_; });
    }
    void release() {
        {
            std::lock_guard lock(mutex_);
            released_ = true;
        }
        released_cv_.notify_all();
    }

  private:
    Handler handler_;
    httplib::Server server_;
    int port_ = 0;
    std::thread thread_;
    std::mutex mutex_;
    std::vector<httplib::Request> requests_;
    bool released_ = false;
    std::condition_variable released_cv_;
};

// A URL on which nothing listens: a server's port after it stopped.
std::string refused_url() {
    TestServer gone([](int, const httplib::Request&, httplib::Response&) {});
    return gone.url();
}

TestServer::Handler status_then_ok(int failures, int status, std::string retry_after = {}) {
    return [=](int n, const httplib::Request&, httplib::Response& res) {
        if (n < failures) {
            res.status = status;
            if (!retry_after.empty()) res.set_header("Retry-After", retry_after);
            res.set_content("busy", "text/plain");
            return;
        }
        res.set_content(R"({"ok":true})", "application/json");
    };
}

constexpr RetryPolicy kFast{3, 1ms, 20ms};

TEST(HttpClient, RetryableStatuses) {
    for (long s : {408L, 429L, 500L, 502L, 503L, 504L, 529L, 599L}) EXPECT_TRUE(retryable(s)) << s;
    for (long s : {0L, 200L, 204L, 301L, 400L, 401L, 403L, 404L, 409L, 422L, 499L, 600L})
        EXPECT_FALSE(retryable(s)) << s;
}

TEST(HttpClient, PostsJsonAndReturnsStatusAndBody) {
    TestServer server([](int, const httplib::Request& req, httplib::Response& res) {
        res.status = 201;
        res.set_content("got " + req.body, "application/json");
    });
    auto r = post_json(server.url(), {"Authorization: Bearer abc", "X-Extra: 1"},
                       R"({"input":["a"]})", 5s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->status, 201);
    EXPECT_EQ(r->body, R"(got {"input":["a"]})");
    EXPECT_FALSE(r->retry_after);

    auto seen = server.requests();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].get_header_value("Content-Type"), "application/json");
    EXPECT_EQ(seen[0].get_header_value("Authorization"), "Bearer abc");
    EXPECT_EQ(seen[0].get_header_value("X-Extra"), "1");
}

TEST(HttpClient, LargeBodiesArriveWhole) {
    std::string body = "\"" + std::string(3 << 20, 'x') + "\"";  // past curl's Expect threshold
    TestServer server([](int, const httplib::Request& req, httplib::Response& res) {
        res.set_content(std::to_string(req.body.size()), "text/plain");
    });
    auto r = post_json(server.url(), {}, body, 10s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, std::to_string(body.size()));
}

TEST(HttpClient, ParsesRetryAfterSeconds) {
    struct Case {
        std::string header, value;
        std::optional<double> expected;
    } cases[] = {
        {"Retry-After", "7", 7.0},
        {"retry-after", "2", 2.0},  // header names are case-insensitive
        {"RETRY-AFTER", "0", 0.0},
        {"Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT", std::nullopt},  // dates: own backoff
        {"X-Retry-After-Ms", "5", std::nullopt},
    };
    for (const auto& c : cases) {
        TestServer server([&](int, const httplib::Request&, httplib::Response& res) {
            res.status = 429;
            res.set_header(c.header, c.value);
            res.set_content("slow down", "text/plain");
        });
        auto r = post_json(server.url(), {}, "{}", 5s);
        ASSERT_TRUE(r) << r.error().message;
        EXPECT_EQ(r->status, 429);
        EXPECT_EQ(r->body, "slow down");
        EXPECT_EQ(r->retry_after, c.expected) << c.header << ": " << c.value;
    }
}

TEST(HttpClient, ConnectionRefusedIsUnavailable) {
    auto r = post_json(refused_url(), {}, "{}", 5s);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable);
    EXPECT_NE(r.error().message.find("cannot reach"), std::string::npos) << r.error().message;
}

TEST(HttpClient, TransportErrorsDoNotShowPasswords) {
    std::string url = refused_url();
    url.replace(url.find("://") + 3, 0, "user:s3cret-pass@");
    auto r = post_json(url, {}, "{}", 5s);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message.find("s3cret-pass"), std::string::npos) << r.error().message;
}

TEST(HttpClient, TimeoutIsUnavailable) {
    TestServer server([&](int, const httplib::Request&, httplib::Response&) { server.hang(); });
    auto r = post_json(server.url(), {}, "{}", 200ms);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable);
    EXPECT_NE(r.error().message.find("timed out"), std::string::npos) << r.error().message;
}

TEST(HttpClient, RetriesUntilSuccess) {
    TestServer server(status_then_ok(2, 503));
    auto r = post_json_with_retries(server.url(), {}, "{}", 5s, kFast);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, R"({"ok":true})");
    EXPECT_EQ(server.requests().size(), 3u);
}

TEST(HttpClient, RetriesStopAtMaxRetriesWithTheLastResponse) {
    for (int max_retries : {0, 1, 3}) {
        TestServer server(status_then_ok(1000, 529));
        RetryPolicy policy = kFast;
        policy.max_retries = max_retries;
        auto r = post_json_with_retries(server.url(), {}, "{}", 5s, policy);
        ASSERT_TRUE(r) << r.error().message;  // a status, not a transport error
        EXPECT_EQ(r->status, 529);
        EXPECT_EQ(server.requests().size(), static_cast<std::size_t>(max_retries + 1));
    }
}

TEST(HttpClient, NonRetryableStatusReturnsAtOnce) {
    for (int status : {400, 401, 404}) {
        TestServer server(status_then_ok(1000, status));
        auto r = post_json_with_retries(server.url(), {}, "{}", 5s, kFast);
        ASSERT_TRUE(r) << r.error().message;
        EXPECT_EQ(r->status, status);
        EXPECT_EQ(server.requests().size(), 1u) << status;
    }
}

TEST(HttpClient, TransportFailuresAreRetriedThenReported) {
    TestServer server([&](int n, const httplib::Request&, httplib::Response& res) {
        if (n == 0) return server.hang();
        res.set_content("late but fine", "text/plain");
    });
    auto r = post_json_with_retries(server.url(), {}, "{}", 200ms, kFast);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->body, "late but fine");
    EXPECT_EQ(server.requests().size(), 2u);

    auto refused = post_json_with_retries(refused_url(), {}, "{}", 5s, kFast);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, ErrorCode::unavailable);
}

// A lower bound only: Retry-After (1 s) must win over the 1 ms backoff.
TEST(HttpClient, RetryAfterIsHonoured) {
    TestServer server(status_then_ok(1, 429, "1"));
    auto start = std::chrono::steady_clock::now();
    auto r = post_json_with_retries(server.url(), {}, "{}", 5s, {1, 1ms, 30s});
    auto elapsed = std::chrono::steady_clock::now() - start;
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(server.requests().size(), 2u);
    EXPECT_GE(elapsed, 1s);
}

// A long Retry-After must not stall the caller past max_delay. The bound is far above the
// expected ~20 ms and below the 25 s asked for; it only fails if the cap is ignored.
TEST(HttpClient, RetryAfterIsCappedAtMaxDelay) {
    TestServer server(status_then_ok(1, 503, "25"));
    auto start = std::chrono::steady_clock::now();
    auto r = post_json_with_retries(server.url(), {}, "{}", 5s, {1, 1ms, 20ms});
    auto elapsed = std::chrono::steady_clock::now() - start;
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->status, 200);
    EXPECT_LT(elapsed, 20s);
}

}  // namespace
}  // namespace ka::http
