// A deterministic Embedder for store tests: words hashed into signed buckets, L2-normalised.
// It can be told to fail, to test how the store behaves when a provider is down.
#pragma once

#include <atomic>
#include <cmath>
#include <functional>
#include <sstream>

#include "embed/embedder.h"

namespace ka::test {

class TestEmbedder : public embed::Embedder {
  public:
    explicit TestEmbedder(int dims = 768, std::string model = "test-words-v1")
        : dims_(dims), model_(std::move(model)) {}
    const std::string& model() const override { return model_; }
    int dimensions() const override { return dims_; }
    Result<std::vector<embed::Vector>> embed(std::span<const std::string> texts,
                                             embed::Purpose) override {
        ++calls;
        if (failing) return fail(ErrorCode::unavailable, "embedding provider is down (test)");
        std::vector<embed::Vector> out;
        for (const auto& text : texts) {
            embed::Vector v(static_cast<std::size_t>(dims_), 0.0f);
            std::istringstream words(text);
            for (std::string w; words >> w;) {
                for (auto& c : w)
                    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
                std::size_t h = std::hash<std::string>{}(w);
                v[h % v.size()] += (h >> 40) & 1 ? 1.0f : -1.0f;
            }
            double norm = 0;
            for (float x : v) norm += x * x;
            if (norm == 0) v[0] = 1, norm = 1;
            for (auto& x : v) x = static_cast<float>(x / std::sqrt(norm));
            out.push_back(std::move(v));
        }
        return out;
    }
    std::atomic<bool> failing{false};
    std::atomic<int> calls{0};

  private:
    int dims_;
    std::string model_;
};

}  // namespace ka::test
