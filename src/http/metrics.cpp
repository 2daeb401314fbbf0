#include "http/metrics.h"

#include <atomic>
#include <chrono>
#include <sstream>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "db/connection.h"

#ifndef KA_VERSION
#define KA_VERSION "dev"
#endif

namespace ka::http {
namespace {

using prometheus::Histogram;

// Latency buckets from 0.5 ms to 10 s: searches are milliseconds, imports seconds.
const Histogram::BucketBoundaries& buckets() {
    static const Histogram::BucketBoundaries b = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                  0.1,    0.25,  0.5,    1,     2.5,  5,     10};
    return b;
}

// libpq statements are timed through a plain function pointer: the one live Metrics.
std::atomic<Metrics*> active{nullptr};

void observe_statement(double seconds) {
    if (auto* m = active.load()) m->statement(seconds);
}

}  // namespace

struct Metrics::Families {
    prometheus::Family<prometheus::Counter>& requests;
    prometheus::Family<Histogram>& request_seconds;
    prometheus::Family<Histogram>& search_seconds;
    prometheus::Family<prometheus::Counter>& searches_degraded;
    prometheus::Family<Histogram>& embedding_seconds;
    Histogram& statement_seconds;
    prometheus::Family<prometheus::Gauge>& pool;
    prometheus::Family<prometheus::Gauge>& entries;
};

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
    using namespace prometheus;
    auto& r = *registry_;
    f_ = std::make_unique<Families>(Families{
        BuildCounter()
            .Name("knowledge_agent_http_requests_total")
            .Help("HTTP requests by route, method and status")
            .Register(r),
        BuildHistogram()
            .Name("knowledge_agent_http_request_duration_seconds")
            .Help("HTTP request latency by route")
            .Register(r),
        BuildHistogram()
            .Name("knowledge_agent_search_duration_seconds")
            .Help("Store search latency by mode")
            .Register(r),
        BuildCounter()
            .Name("knowledge_agent_search_degraded_total")
            .Help("Searches answered from full text alone because the embedding provider failed")
            .Register(r),
        BuildHistogram()
            .Name("knowledge_agent_embedding_duration_seconds")
            .Help("Embedding provider call latency by outcome")
            .Register(r),
        BuildHistogram()
            .Name("knowledge_agent_db_statement_duration_seconds")
            .Help("PostgreSQL statement latency")
            .Register(r)
            .Add({}, buckets()),
        BuildGauge()
            .Name("knowledge_agent_db_pool_connections")
            .Help("PostgreSQL pool connections by state")
            .Register(r),
        BuildGauge()
            .Name("knowledge_agent_entries")
            .Help("Knowledge entries per scope")
            .Register(r),
    });
    BuildGauge()
        .Name("knowledge_agent_build_info")
        .Help("Build information")
        .Register(r)
        .Add({{"version", KA_VERSION}})
        .Set(1);
    active.store(this);
    db::set_statement_observer(&observe_statement);
}

Metrics::~Metrics() {
    Metrics* self = this;
    active.compare_exchange_strong(self, nullptr);
}

void Metrics::request(std::string_view method, std::string_view route, int status, double seconds) {
    f_->requests
        .Add({{"method", std::string(method)},
              {"route", std::string(route)},
              {"status", std::to_string(status)}})
        .Increment();
    f_->request_seconds.Add({{"route", std::string(route)}}, buckets()).Observe(seconds);
}

void Metrics::search(std::string_view mode, double seconds, bool degraded) {
    f_->search_seconds.Add({{"mode", std::string(mode)}}, buckets()).Observe(seconds);
    if (degraded) f_->searches_degraded.Add({{"mode", std::string(mode)}}).Increment();
}

void Metrics::embedding(bool ok, double seconds) {
    f_->embedding_seconds.Add({{"outcome", ok ? "ok" : "error"}}, buckets()).Observe(seconds);
}

void Metrics::statement(double seconds) {
    f_->statement_seconds.Observe(seconds);
}

std::string Metrics::render(const db::Pool::Stats& pool,
                            const std::vector<store::Stats::Scope>& scopes) {
    f_->pool.Add({{"state", "in_use"}}).Set(pool.in_use);
    f_->pool.Add({{"state", "idle"}}).Set(pool.open - pool.in_use);
    f_->pool.Add({{"state", "max"}}).Set(pool.size);
    for (const auto& s : scopes)
        f_->entries.Add({{"scope", s.scope}}).Set(static_cast<double>(s.entries));
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, registry_->Collect());
    return out.str();
}

Result<std::vector<embed::Vector>> MeasuredEmbedder::embed(std::span<const std::string> texts,
                                                           embed::Purpose purpose) {
    auto start = std::chrono::steady_clock::now();
    auto result = inner_->embed(texts, purpose);
    metrics_.embedding(
        result.has_value(),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return result;
}

}  // namespace ka::http
