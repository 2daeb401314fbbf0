// Shared by the fuzz targets: a configuration with small vectors, and a Store whose database
// can never be reached, so every input that passes validation ends in an `unavailable` error
// instead of touching PostgreSQL. Logging goes nowhere.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <ostream>
#include <string>

#include "config/config.h"
#include "db/pool.h"
#include "embed/embedder.h"
#include "log/log.h"
#include "store/store.h"

namespace ka::fuzz {

inline constexpr int kDimensions = 8;

inline config::Config fuzz_config() {
    auto loaded = config::load_from_string(
        "embedding:\n  dimensions: 8\nstore:\n  max_content_bytes: 4096\nsearch:\n  max_k: 50\n"
        "server:\n  host: 127.0.0.1\n  port: 0\n  workers: 2\n  max_body_bytes: 65536\n"
        "  max_import_bytes: 65536\n  request_timeout: 10\n"
        // Off: at fuzzing rates most requests would be refused before reaching a handler.
        "rate_limit:\n  requests_per_second: 0\n",
        [](const std::string&) -> std::optional<std::string> { return std::nullopt; });
    if (!loaded) {
        std::fprintf(stderr, "fuzz config: %s\n", loaded.error().message.c_str());
        std::abort();
    }
    return *loaded;
}

inline void silence_logs() {
    static std::ostream nowhere(nullptr);  // badbit: every write is dropped
    log::configure("error", "console");
    log::redirect(&nowhere);
}

// A store over a pool pointing at a socket directory that does not exist.
struct OfflineStore {
    config::Config config = fuzz_config();
    db::Pool pool{
        db::Target{"host=/nonexistent/ka-fuzz dbname=none connect_timeout=1", "offline", false}, 2,
        1};
    std::unique_ptr<embed::Embedder> embedder;
    std::unique_ptr<store::Store> store;

    OfflineStore() {
        auto made = embed::make_embedder(config);
        if (!made) {
            std::fprintf(stderr, "fuzz embedder: %s\n", made.error().message.c_str());
            std::abort();
        }
        embedder = std::move(*made);
        store = std::make_unique<store::Store>(pool, *embedder, config);
    }
};

// Aborts (a crash libFuzzer records) when an invariant does not hold.
inline void require(bool ok, const char* what, const std::string& detail = {}) {
    if (ok) return;
    std::fprintf(stderr, "fuzz invariant violated: %s %s\n", what, detail.substr(0, 2000).c_str());
    std::abort();
}

}  // namespace ka::fuzz
