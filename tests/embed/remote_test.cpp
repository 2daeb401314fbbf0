#include "embed/remote.h"

#include <httplib.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "core/redact.h"
#include "embed/text.h"

namespace ka::embed {
namespace {

using nlohmann::json;

// A deterministic, deliberately unnormalised vector for a text, so tests can check both which
// text a vector belongs to and that the client normalises.
std::vector<double> raw_vector(const std::string& text, int dims) {
    std::vector<double> v(static_cast<std::size_t>(dims));
    std::size_t h = std::hash<std::string>{}(text);
    for (std::size_t i = 0; i < v.size(); ++i)
        v[i] = 1.0 + static_cast<double>((h >> (i % 48)) & 0xF) - 7.0 * static_cast<double>(i % 2);
    return v;
}

Vector unit(const std::vector<double>& v) {
    double n = 0;
    for (double x : v) n += x * x;
    Vector out;
    for (double x : v) out.push_back(static_cast<float>(x / std::sqrt(n)));
    return out;
}

void expect_vector_of(const Vector& got, const std::string& text, int dims) {
    Vector want = unit(raw_vector(text, dims));
    ASSERT_EQ(got.size(), want.size()) << text;
    for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << text;
}

// What the server saw of one request.
struct Seen {
    std::string path;
    json body;
    std::string authorization;  // empty when absent
    bool has_authorization = false;
};

// Correct answers in each provider's documented wire format.
void answer_ollama(const json& request, int dims, httplib::Response& res) {
    json out = {{"model", request["model"]}, {"embeddings", json::array()}};
    for (const auto& text : request["input"])
        out["embeddings"].push_back(raw_vector(text.get<std::string>(), dims));
    res.set_content(out.dump(), "application/json");
}

json openai_answer(const json& request, int dims) {
    json out = {{"object", "list"},
                {"data", json::array()},
                {"model", request["model"]},
                {"usage", {{"prompt_tokens", 3}, {"total_tokens", 3}}}};
    std::size_t i = 0;
    for (const auto& text : request["input"]) {
        out["data"].push_back({{"object", "embedding"},
                               {"index", i++},
                               {"embedding", raw_vector(text.get<std::string>(), dims)}});
    }
    return out;
}

// A fake Ollama / OpenAI-compatible server on 127.0.0.1. Each request is recorded, then
// answered by `handler` (request number from 0, parsed body, response); by default correctly.
class FakeProvider {
  public:
    using Handler = std::function<void(int n, const json& body, httplib::Response& res)>;

    explicit FakeProvider(int dims) : dims_(dims) {
        // A developer's proxy settings must not capture requests to the fake server.
        ::setenv("no_proxy", "127.0.0.1", 1);
        auto serve = [this](const httplib::Request& req, httplib::Response& res) {
            Seen seen;
            seen.path = req.path;
            seen.body = json::parse(req.body, nullptr, false);
            seen.has_authorization = req.has_header("Authorization");
            seen.authorization = req.get_header_value("Authorization");
            int n = 0;
            Handler handler;
            {
                std::lock_guard lock(mutex_);
                n = static_cast<int>(seen_.size());
                seen_.push_back(seen);
                handler = handler_;
            }
            if (handler) return handler(n, seen.body, res);
            if (req.path == "/api/embed") return answer_ollama(seen.body, dims_, res);
            res.set_content(openai_answer(seen.body, dims_).dump(), "application/json");
        };
        server_.Post("/api/embed", serve);
        server_.Post("/v1/embeddings", serve);
        port_ = server_.bind_to_any_port("127.0.0.1");
        thread_ = std::thread([this] { server_.listen_after_bind(); });
        // stop() before the accept loop has started would be lost and join() would hang.
        while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ~FakeProvider() {
        release();
        server_.stop();
        thread_.join();
    }
    FakeProvider(const FakeProvider&) = delete;
    FakeProvider& operator=(const FakeProvider&) = delete;

    std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
    void on_request(Handler h) {
        std::lock_guard lock(mutex_);
        handler_ = std::move(h);
    }
    std::vector<Seen> seen() {
        std::lock_guard lock(mutex_);
        return seen_;
    }
    std::size_t requests() { return seen().size(); }

    // For handlers that hang past the client's timeout: blocks until the test ends, so the
    // server's stop() does not wait out a long sleep.
    void hang() {
        std::unique_lock lock(mutex_);
        released_cv_.wait_for(lock, std::chrono::seconds(30), [this] { return released_; });
    }
    void release() {
        {
            std::lock_guard lock(mutex_);
            released_ = true;
        }
        released_cv_.notify_all();
    }

  private:
    int dims_;
    httplib::Server server_;
    int port_ = 0;
    std::thread thread_;
    std::mutex mutex_;
    std::vector<Seen> seen_;
    Handler handler_;
    bool released_ = false;
    std::condition_variable released_cv_;
};

// A configuration as a user would write it; `extra` holds further embedding.* keys.
config::Config make_config(const std::string& provider, const std::string& base_url,
                           const std::map<std::string, std::string>& extra = {}) {
    std::string yaml = "embedding:\n  provider: " + provider + "\n";
    if (!base_url.empty()) yaml += "  base_url: " + base_url + "\n";
    for (const auto& [key, value] : extra) yaml += "  " + key + ": " + value + "\n";
    auto c = config::load_from_string(yaml, [](const std::string&) { return std::nullopt; });
    EXPECT_TRUE(c) << c.error().message << "\n" << yaml;
    return c ? *c : config::Config{};
}

constexpr int kDims = 8;

// A non-nomic model, so inputs reach the server without task prefixes.
std::map<std::string, std::string> small_model(std::map<std::string, std::string> extra = {}) {
    extra.emplace("model", "all-minilm");
    extra.emplace("dimensions", std::to_string(kDims));
    extra.emplace("max_retries", "3");
    return extra;
}

std::string message_of(const Result<std::vector<Vector>>& r) {
    return r ? std::string("(success)") : r.error().message + " | hint: " + r.error().hint;
}

std::vector<std::string> strings_of(const json& array) {
    std::vector<std::string> out;
    for (const auto& s : array) out.push_back(s.get<std::string>());
    return out;
}

// --- Defaults and endpoints -------------------------------------------------------------

TEST(RemoteEmbedder, DefaultModelsAndEndpoints) {
    RemoteEmbedder ollama(Api::ollama, make_config("ollama", ""));
    EXPECT_EQ(ollama.model(), "nomic-embed-text");
    EXPECT_EQ(ollama.endpoint(), "http://127.0.0.1:11434/api/embed");
    EXPECT_EQ(ollama.dimensions(), 768);

    RemoteEmbedder openai(Api::openai, make_config("openai", ""));
    EXPECT_EQ(openai.model(), "text-embedding-3-small");
    EXPECT_EQ(openai.endpoint(), "https://api.openai.com/v1/embeddings");

    // Base URLs given with a trailing slash or the /v1 suffix reach the same endpoint.
    EXPECT_EQ(RemoteEmbedder(Api::openai, make_config("openai", "http://h:8000/v1/")).endpoint(),
              "http://h:8000/v1/embeddings");
    EXPECT_EQ(RemoteEmbedder(Api::ollama, make_config("ollama", "http://h:1/")).endpoint(),
              "http://h:1/api/embed");

    auto made = make_embedder(make_config("openai", "http://h:8000", {{"model", "bge-m3"}}));
    ASSERT_TRUE(made);
    EXPECT_EQ((*made)->model(), "bge-m3");
    ASSERT_NE(dynamic_cast<RemoteEmbedder*>(made->get()), nullptr);
}

// --- Ollama -----------------------------------------------------------------------------

TEST(RemoteEmbedder, OllamaReturnsNormalisedVectorsInInputOrder) {
    FakeProvider server(kDims);
    RemoteEmbedder e(Api::ollama, make_config("ollama", server.url(), small_model()));
    std::vector<std::string> texts{"first text", "second text", "third text"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_TRUE(r) << message_of(r);
    ASSERT_EQ(r->size(), 3u);
    for (std::size_t i = 0; i < texts.size(); ++i) expect_vector_of((*r)[i], texts[i], kDims);

    auto seen = server.seen();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].path, "/api/embed");
    EXPECT_EQ(seen[0].body["model"], "all-minilm");
    EXPECT_EQ(strings_of(seen[0].body["input"]), texts);
    EXPECT_FALSE(seen[0].has_authorization);
}

TEST(RemoteEmbedder, NoTextsMeansNoRequest) {
    FakeProvider server(kDims);
    RemoteEmbedder e(Api::ollama, make_config("ollama", server.url(), small_model()));
    auto r = e.embed({}, Purpose::document);
    ASSERT_TRUE(r) << message_of(r);
    EXPECT_TRUE(r->empty());
    EXPECT_EQ(server.requests(), 0u);
}

TEST(RemoteEmbedder, BatchesRequestsAndKeepsOrder) {
    FakeProvider server(kDims);
    RemoteEmbedder e(Api::ollama,
                     make_config("ollama", server.url(), small_model({{"batch_size", "4"}})));
    std::vector<std::string> texts;
    for (int i = 0; i < 10; ++i) texts.push_back("text number " + std::to_string(i));
    auto r = e.embed(texts, Purpose::document);
    ASSERT_TRUE(r) << message_of(r);
    ASSERT_EQ(r->size(), texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) expect_vector_of((*r)[i], texts[i], kDims);

    auto seen = server.seen();
    ASSERT_EQ(seen.size(), 3u);  // ceil(10 / 4)
    std::vector<std::string> sent;
    for (const auto& s : seen) {
        EXPECT_LE(s.body["input"].size(), 4u);
        for (const auto& t : strings_of(s.body["input"])) sent.push_back(t);
    }
    EXPECT_EQ(sent, texts);
}

TEST(RemoteEmbedder, NomicGetsTaskPrefixesPerPurpose) {
    FakeProvider server(kDims);
    RemoteEmbedder e(
        Api::ollama,
        make_config("ollama", server.url(), {{"model", "nomic-embed-text"}, {"dimensions", "8"}}));
    std::vector<std::string> texts{"how to rotate keys"};
    auto doc = e.embed(texts, Purpose::document);
    ASSERT_TRUE(doc) << message_of(doc);
    auto query = e.embed(texts, Purpose::query);
    ASSERT_TRUE(query) << message_of(query);

    auto seen = server.seen();
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen[0].body["input"][0], "search_document: how to rotate keys");
    EXPECT_EQ(seen[1].body["input"][0], "search_query: how to rotate keys");
    expect_vector_of(doc->front(), "search_document: how to rotate keys", kDims);
    expect_vector_of(query->front(), "search_query: how to rotate keys", kDims);
}

TEST(RemoteEmbedder, LongTextsAreTruncatedBeforeSending) {
    FakeProvider server(kDims);
    RemoteEmbedder e(Api::ollama,
                     make_config("ollama", server.url(), small_model({{"max_input_chars", "64"}})));
    // 63 ASCII characters and a two-byte 64th, then more: the server must get exactly 64
    // whole characters.
    std::string head = std::string(63, 'a') + "\xc3\xa9";
    std::vector<std::string> texts{head + "bbbbbbbbbb", "short"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_TRUE(r) << message_of(r);
    auto seen = server.seen();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].body["input"][0], head);
    EXPECT_EQ(seen[0].body["input"][1], "short");
    expect_vector_of(r->front(), head, kDims);
}

TEST(RemoteEmbedder, OllamaMissingModelSaysToPullIt) {
    FakeProvider server(kDims);
    server.on_request([](int, const json&, httplib::Response& res) {
        res.status = 404;
        res.set_content(R"({"error":"model \"all-minilm\" not found, try pulling it first"})",
                        "application/json");
    });
    RemoteEmbedder e(Api::ollama, make_config("ollama", server.url(), small_model()));
    std::vector<std::string> texts{"x"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::config);
    EXPECT_NE(r.error().message.find("404"), std::string::npos) << message_of(r);
    EXPECT_NE(r.error().message.find("not found"), std::string::npos) << message_of(r);
    EXPECT_NE(r.error().hint.find("ollama pull all-minilm"), std::string::npos) << message_of(r);
    EXPECT_EQ(server.requests(), 1u);  // not retried
}

TEST(RemoteEmbedder, MalformedBodiesAreClearErrors) {
    struct Case {
        std::string body, fragment;
    } cases[] = {
        {"<html>gateway</html>", "not a JSON object"},
        {R"({"embeddings": [[0.1, 0.2)", "not a JSON object"},  // cut short
        {"[1, 2, 3]", "not a JSON object"},
        {R"({"model":"all-minilm"})", "no \"embeddings\" array"},
        {R"({"embeddings": {"0": [1]}})", "no \"embeddings\" array"},
        {R"({"embeddings": [5]})", "not an array"},
    };
    FakeProvider server(kDims);
    RemoteEmbedder e(Api::ollama, make_config("ollama", server.url(), small_model()));
    for (const auto& c : cases) {
        server.on_request([&](int, const json&, httplib::Response& res) {
            res.set_content(c.body, "application/json");
        });
        std::vector<std::string> texts{"x"};
        auto r = e.embed(texts, Purpose::document);
        ASSERT_FALSE(r) << c.body;
        EXPECT_EQ(r.error().code, ErrorCode::bad_gateway) << c.body;
        EXPECT_NE(r.error().message.find("malformed"), std::string::npos) << message_of(r);
        EXPECT_NE(r.error().message.find(c.fragment), std::string::npos) << message_of(r);
    }
}

TEST(RemoteEmbedder, WrongNumberOfEmbeddingsIsRejected) {
    FakeProvider server(kDims);
    server.on_request([](int, const json& body, httplib::Response& res) {
        json one = body;
        one["input"] = json::array({body["input"][0]});
        answer_ollama(one, kDims, res);
    });
    RemoteEmbedder e(Api::ollama, make_config("ollama", server.url(), small_model()));
    std::vector<std::string> texts{"a", "b"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::bad_gateway);
    EXPECT_NE(r.error().message.find("1 embeddings for 2 inputs"), std::string::npos)
        << message_of(r);
}

TEST(RemoteEmbedder, NonFiniteOrNonNumericValuesAreRejected) {
    const std::string ok = "0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7";  // seven of eight
    struct Case {
        std::string last, fragment;
    } cases[] = {
        {"\"0.8\"", "not a number"}, {"null", "not a number"},    {"true", "not a number"},
        {"[0.8]", "not a number"},   {"1e39", "NaN or infinity"}, {"NaN", "not a JSON object"},
    };
    FakeProvider server(kDims);
    RemoteEmbedder e(Api::ollama, make_config("ollama", server.url(), small_model()));
    for (const auto& c : cases) {
        server.on_request([&](int, const json&, httplib::Response& res) {
            res.set_content(R"({"model":"all-minilm","embeddings":[[)" + ok + ", " + c.last + "]]}",
                            "application/json");
        });
        std::vector<std::string> texts{"x"};
        auto r = e.embed(texts, Purpose::document);
        ASSERT_FALSE(r) << c.last;
        EXPECT_EQ(r.error().code, ErrorCode::bad_gateway) << c.last;
        EXPECT_NE(r.error().message.find(c.fragment), std::string::npos) << message_of(r);
    }

    // An all-zero vector has no direction to normalise.
    server.on_request([](int, const json&, httplib::Response& res) {
        res.set_content(R"({"embeddings":[[0,0,0,0,0,0,0,0]]})", "application/json");
    });
    std::vector<std::string> texts{"x"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("all zeros"), std::string::npos) << message_of(r);
}

TEST(RemoteEmbedder, WrongDimensionNamesBothSizes) {
    FakeProvider server(512);
    RemoteEmbedder e(Api::ollama,
                     make_config("ollama", server.url(),
                                 {{"model", "mxbai-embed-large"}, {"dimensions", "768"}}));
    std::vector<std::string> texts{"x"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::config);
    EXPECT_NE(r.error().message.find("512"), std::string::npos) << message_of(r);
    EXPECT_NE(r.error().message.find("768"), std::string::npos) << message_of(r);
    EXPECT_NE(r.error().message.find("mxbai-embed-large"), std::string::npos) << message_of(r);
}

// --- Retries ----------------------------------------------------------------------------

// The first `failures` requests get `status` (with optional headers), the rest succeed.
FakeProvider::Handler fail_first(int failures, int status,
                                 std::map<std::string, std::string> headers = {}) {
    return [=](int n, const json& body, httplib::Response& res) {
        if (n < failures) {
            res.status = status;
            for (const auto& [k, v] : headers) res.set_header(k, v);
            res.set_content(R"({"error":"busy"})", "application/json");
            return;
        }
        answer_ollama(body, kDims, res);
    };
}

TEST(RemoteEmbedder, RetriesRateLimitHonouringRetryAfter) {
    FakeProvider server(kDims);
    server.on_request(fail_first(2, 429, {{"Retry-After", "0"}}));
    RemoteEmbedder e(Api::ollama, make_config("ollama", server.url(), small_model()));
    std::vector<std::string> texts{"a", "b"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_TRUE(r) << message_of(r);
    ASSERT_EQ(r->size(), 2u);
    expect_vector_of((*r)[1], "b", kDims);
    EXPECT_EQ(server.requests(), 3u);
}

TEST(RemoteEmbedder, RetriesServerErrorsAndOverload) {
    for (int status : {500, 529}) {
        FakeProvider server(kDims);
        server.on_request(fail_first(1, status));
        RemoteEmbedder e(Api::ollama, make_config("ollama", server.url(), small_model()));
        std::vector<std::string> texts{"a"};
        auto r = e.embed(texts, Purpose::document);
        ASSERT_TRUE(r) << status << ": " << message_of(r);
        EXPECT_EQ(server.requests(), 2u) << status;
    }
}

TEST(RemoteEmbedder, PersistentFailureGivesUpAfterMaxRetries) {
    FakeProvider server(kDims);
    server.on_request(fail_first(1000, 503));
    RemoteEmbedder e(Api::ollama,
                     make_config("ollama", server.url(), small_model({{"max_retries", "2"}})));
    std::vector<std::string> texts{"a"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable);
    EXPECT_NE(r.error().message.find("HTTP 503"), std::string::npos) << message_of(r);
    EXPECT_NE(r.error().hint.find("retried 2 times"), std::string::npos) << message_of(r);
    EXPECT_EQ(server.requests(), 3u);  // max_retries + 1
}

TEST(RemoteEmbedder, ClientErrorsAreNotRetried) {
    FakeProvider server(kDims);
    server.on_request([](int, const json&, httplib::Response& res) {
        res.status = 400;
        res.set_content(R"({"error":"input must not be empty"})", "application/json");
    });
    RemoteEmbedder e(Api::ollama, make_config("ollama", server.url(), small_model()));
    std::vector<std::string> texts{"a"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(r.error().message.find("input must not be empty"), std::string::npos)
        << message_of(r);
    EXPECT_EQ(server.requests(), 1u);
}

// embedding.timeout is whole seconds (at least 1), so these two tests take about 1 s each.
TEST(RemoteEmbedder, TimeoutIsUnavailable) {
    FakeProvider server(kDims);
    server.on_request([&](int, const json&, httplib::Response&) { server.hang(); });
    RemoteEmbedder e(
        Api::ollama,
        make_config("ollama", server.url(), small_model({{"timeout", "1"}, {"max_retries", "0"}})));
    std::vector<std::string> texts{"a"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable);
    EXPECT_NE(r.error().message.find("timed out"), std::string::npos) << message_of(r);
    EXPECT_NE(r.error().hint.find(server.url()), std::string::npos) << message_of(r);
    EXPECT_EQ(server.requests(), 1u);
}

TEST(RemoteEmbedder, TimeoutIsRetried) {
    FakeProvider server(kDims);
    server.on_request([&](int n, const json& body, httplib::Response& res) {
        if (n == 0) return server.hang();
        answer_ollama(body, kDims, res);
    });
    RemoteEmbedder e(
        Api::ollama,
        make_config("ollama", server.url(), small_model({{"timeout", "1"}, {"max_retries", "1"}})));
    std::vector<std::string> texts{"a"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_TRUE(r) << message_of(r);
    EXPECT_EQ(server.requests(), 2u);
}

TEST(RemoteEmbedder, UnreachableServerIsUnavailable) {
    std::string url;
    {
        FakeProvider gone(kDims);
        url = gone.url();
    }  // stopped: the port now refuses connections
    RemoteEmbedder e(Api::ollama, make_config("ollama", url, small_model({{"max_retries", "1"}})));
    std::vector<std::string> texts{"a"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable);
    EXPECT_NE(r.error().message.find("unavailable"), std::string::npos) << message_of(r);
}

// --- OpenAI-compatible ------------------------------------------------------------------

const std::string kKey = "sk-test-remote-embedder-0123456789";

TEST(RemoteEmbedder, OpenAISendsBearerKeyAndReadsData) {
    FakeProvider server(kDims);
    RemoteEmbedder e(
        Api::openai,
        make_config("openai", server.url(),
                    small_model({{"api_key", kKey}, {"model", "text-embedding-3-small"}})));
    std::vector<std::string> texts{"alpha", "beta"};
    auto r = e.embed(texts, Purpose::query);
    ASSERT_TRUE(r) << message_of(r);
    ASSERT_EQ(r->size(), 2u);
    expect_vector_of((*r)[0], "alpha", kDims);  // no nomic prefix for this model
    expect_vector_of((*r)[1], "beta", kDims);

    auto seen = server.seen();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].path, "/v1/embeddings");
    EXPECT_EQ(seen[0].authorization, "Bearer " + kKey);
    EXPECT_EQ(seen[0].body["model"], "text-embedding-3-small");
    EXPECT_EQ(strings_of(seen[0].body["input"]), texts);
    EXPECT_EQ(seen[0].body["encoding_format"], "float");
    EXPECT_FALSE(seen[0].body.contains("dimensions"));  // send_dimensions is off by default
}

TEST(RemoteEmbedder, OpenAIWithoutKeySendsNoAuthorization) {
    FakeProvider server(kDims);
    RemoteEmbedder e(Api::openai, make_config("openai", server.url() + "/v1", small_model()));
    std::vector<std::string> texts{"alpha"};
    ASSERT_TRUE(e.embed(texts, Purpose::document));
    auto seen = server.seen();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].path, "/v1/embeddings");
    EXPECT_FALSE(seen[0].has_authorization);
}

TEST(RemoteEmbedder, OpenAISendsDimensionsOnlyWhenAsked) {
    FakeProvider server(kDims);
    RemoteEmbedder e(Api::openai, make_config("openai", server.url(),
                                              small_model({{"send_dimensions", "true"}})));
    std::vector<std::string> texts{"alpha"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_TRUE(r) << message_of(r);
    auto seen = server.seen();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].body["dimensions"], kDims);
}

TEST(RemoteEmbedder, OpenAIOrdersDataByIndex) {
    FakeProvider server(kDims);
    server.on_request([](int, const json& body, httplib::Response& res) {
        json out = openai_answer(body, kDims);
        std::reverse(out["data"].begin(), out["data"].end());
        res.set_content(out.dump(), "application/json");
    });
    RemoteEmbedder e(Api::openai, make_config("openai", server.url(), small_model()));
    std::vector<std::string> texts{"zero", "one", "two", "three"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_TRUE(r) << message_of(r);
    ASSERT_EQ(r->size(), texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) expect_vector_of((*r)[i], texts[i], kDims);
}

TEST(RemoteEmbedder, OpenAIBadIndexesAreRejected) {
    struct Case {
        std::string name;
        std::function<void(json&)> spoil;
        std::string fragment;
    } cases[] = {
        {"repeated", [](json& d) { d[1]["index"] = 0; }, "repeated"},
        {"out of range", [](json& d) { d[1]["index"] = 2; }, "out of range"},
        {"missing", [](json& d) { d[1].erase("index"); }, "lacks"},
        {"negative", [](json& d) { d[1]["index"] = -1; }, "lacks"},
        {"not a number", [](json& d) { d[1]["index"] = "1"; }, "lacks"},
        {"no embedding", [](json& d) { d[1].erase("embedding"); }, "lacks"},
        {"too few", [](json& d) { d.erase(1); }, "1 embeddings for 2 inputs"},
    };
    FakeProvider server(kDims);
    RemoteEmbedder e(Api::openai, make_config("openai", server.url(), small_model()));
    for (const auto& c : cases) {
        server.on_request([&](int, const json& body, httplib::Response& res) {
            json out = openai_answer(body, kDims);
            c.spoil(out["data"]);
            res.set_content(out.dump(), "application/json");
        });
        std::vector<std::string> texts{"zero", "one"};
        auto r = e.embed(texts, Purpose::document);
        ASSERT_FALSE(r) << c.name;
        EXPECT_EQ(r.error().code, ErrorCode::bad_gateway) << c.name;
        EXPECT_NE(r.error().message.find(c.fragment), std::string::npos)
            << c.name << ": " << message_of(r);
    }
}

TEST(RemoteEmbedder, OpenAIUnauthorisedPointsAtTheKeyWithoutShowingIt) {
    FakeProvider server(kDims);
    // Some servers echo the key they were given.
    server.on_request([](int, const json&, httplib::Response& res) {
        res.status = 401;
        json err = {{"error",
                     {{"message", "Incorrect API key provided: " + kKey + "."},
                      {"type", "invalid_request_error"},
                      {"code", "invalid_api_key"}}}};
        res.set_content(err.dump(), "application/json");
    });
    RemoteEmbedder e(Api::openai,
                     make_config("openai", server.url(), small_model({{"api_key", kKey}})));
    std::vector<std::string> texts{"alpha"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::permission_denied);
    EXPECT_EQ(server.requests(), 1u);  // retrying cannot fix a bad key
    EXPECT_NE(r.error().message.find("401"), std::string::npos) << message_of(r);
    EXPECT_NE(r.error().message.find("Incorrect API key provided"), std::string::npos)
        << message_of(r);
    EXPECT_NE(r.error().hint.find("api_key"), std::string::npos) << message_of(r);
    for (const std::string* text : {&r.error().message, &r.error().hint, &r.error().detail})
        EXPECT_EQ(text->find(kKey), std::string::npos) << *text;
}

TEST(RemoteEmbedder, KeyNeverAppearsInTransportErrors) {
    std::string url;
    {
        FakeProvider gone(kDims);
        url = gone.url();
    }
    RemoteEmbedder e(
        Api::openai,
        make_config("openai", url, small_model({{"api_key", kKey}, {"max_retries", "0"}})));
    std::vector<std::string> texts{"alpha"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::unavailable);
    EXPECT_EQ(message_of(r).find(kKey), std::string::npos) << message_of(r);
}

TEST(RemoteEmbedder, OpenAIErrorMessageIsShown) {
    FakeProvider server(kDims);
    server.on_request([](int, const json&, httplib::Response& res) {
        res.status = 400;
        json err = {{"error",
                     {{"message", "This model's maximum context length is 8192 tokens"},
                      {"type", "invalid_request_error"},
                      {"code", nullptr}}}};
        res.set_content(err.dump(), "application/json");
    });
    RemoteEmbedder e(Api::openai, make_config("openai", server.url(), small_model()));
    std::vector<std::string> texts{"alpha"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(r.error().message.find("maximum context length is 8192 tokens"), std::string::npos)
        << message_of(r);
    EXPECT_EQ(r.error().message.find("invalid_request_error"), std::string::npos)
        << "the provider's message, not its raw JSON: " << message_of(r);
}

TEST(RemoteEmbedder, OpenAIModelNotFoundNamesTheModel) {
    FakeProvider server(kDims);
    server.on_request([](int, const json&, httplib::Response& res) {
        res.status = 404;
        json err = {{"error",
                     {{"message", "The model `text-embedding-9` does not exist"},
                      {"type", "invalid_request_error"},
                      {"code", "model_not_found"}}}};
        res.set_content(err.dump(), "application/json");
    });
    RemoteEmbedder e(Api::openai, make_config("openai", server.url(),
                                              small_model({{"model", "text-embedding-9"}})));
    std::vector<std::string> texts{"alpha"};
    auto r = e.embed(texts, Purpose::document);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::config);
    EXPECT_NE(r.error().message.find("text-embedding-9"), std::string::npos) << message_of(r);
    EXPECT_NE(r.error().hint.find("embedding.model"), std::string::npos) << message_of(r);
    EXPECT_EQ(server.requests(), 1u);
}

}  // namespace
}  // namespace ka::embed
