// Prometheus metrics of the HTTP server: requests, latencies (requests, searches, embeddings,
// database statements), the connection pool, entries per scope and build info.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "db/pool.h"
#include "embed/embedder.h"
#include "store/store.h"

namespace prometheus {
class Registry;
}

namespace ka::http {

class Metrics {
  public:
    Metrics();
    ~Metrics();
    Metrics(const Metrics&) = delete;
    Metrics& operator=(const Metrics&) = delete;

    void request(std::string_view method, std::string_view route, int status, double seconds);
    void search(std::string_view mode, double seconds, bool degraded);
    void embedding(bool ok, double seconds);
    void statement(double seconds);

    // The text exposition format, with the pool and per-scope gauges read now.
    std::string render(const db::Pool::Stats& pool, const std::vector<store::Stats::Scope>& scopes);

  private:
    struct Families;
    std::shared_ptr<prometheus::Registry> registry_;
    std::unique_ptr<Families> f_;
};

// Times every embedding call into `metrics`, passing everything else through.
class MeasuredEmbedder : public embed::Embedder {
  public:
    MeasuredEmbedder(std::unique_ptr<embed::Embedder> inner, Metrics& metrics)
        : inner_(std::move(inner)), metrics_(metrics) {}
    const std::string& model() const override { return inner_->model(); }
    int dimensions() const override { return inner_->dimensions(); }
    Result<std::vector<embed::Vector>> embed(std::span<const std::string> texts,
                                             embed::Purpose purpose) override;
    std::vector<std::int64_t> term_features(std::string_view text) const override {
        return inner_->term_features(text);
    }
    void set_term_stats(embed::TermStats* stats) override { inner_->set_term_stats(stats); }

  private:
    std::unique_ptr<embed::Embedder> inner_;
    Metrics& metrics_;
};

}  // namespace ka::http
