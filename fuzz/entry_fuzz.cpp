// Fuzzes the import-line parser (store::parse_import_line, simdjson) and the body parser of POST
// /api/v1/memories (nlohmann, then store::parse_entry) on the same bytes. Accepted entries must be
// storable: valid UTF-8 everywhere (to_json().dump() would throw otherwise), non-empty content
// within the limit, a valid scope, at most kMaxTags tags, vectors of the configured size. The same
// bytes then go through Store::import_jsonl (the real line reader, with its depth limit) over a
// store whose database is unreachable: every line is rejected with a reason, or the import stops
// with `unavailable` when a valid batch reaches the database.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "offline_store.h"
#include "store/store.h"

namespace {

// A parsed entry is either a clear invalid_argument rejection or storable.
void check_entry(const ka::Result<ka::store::NewEntry>& parsed, const ka::config::Config& config) {
    if (!parsed) {
        ka::fuzz::require(parsed.error().code == ka::ErrorCode::invalid_argument,
                          "parse_entry failed with a code other than invalid_argument");
        ka::fuzz::require(!parsed.error().message.empty(), "rejection without a message");
        return;
    }
    const ka::store::NewEntry& e = *parsed;
    ka::fuzz::require(!e.content.empty(), "empty content accepted");
    ka::fuzz::require(e.content.size() <= static_cast<std::size_t>(config.store.max_content_bytes),
                      "content over the limit accepted");
    ka::fuzz::require(!e.scope.empty() && e.scope.size() <= ka::store::kMaxScopeLength,
                      "bad scope accepted", e.scope);
    ka::fuzz::require(e.tags.size() <= ka::store::kMaxTags, "too many tags accepted");
    ka::fuzz::require(e.metadata.is_object(), "metadata that is not an object accepted");
    if (e.embedding)
        ka::fuzz::require(e.embedding->size() == static_cast<std::size_t>(ka::fuzz::kDimensions),
                          "embedding of the wrong size accepted");
    ka::store::Entry stored;
    stored.id = e.id.value_or("00000000-0000-7000-8000-000000000000");
    stored.scope = e.scope;
    stored.content = e.content;
    stored.metadata = e.metadata;
    stored.tags = e.tags;
    stored.source = e.source;
    stored.author = e.author;
    stored.created_at = e.created_at.value_or("");
    stored.updated_at = e.updated_at.value_or("");
    // Throws (and so crashes the fuzzer) on invalid UTF-8 that validation let through.
    std::string out = ka::store::to_json(stored).dump();
    ka::fuzz::require(!out.empty(), "empty JSON");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const ka::config::Config config = ka::fuzz::fuzz_config();
    static ka::fuzz::OfflineStore* offline = [] {
        ka::fuzz::silence_logs();
        return new ka::fuzz::OfflineStore();
    }();
    std::string line(reinterpret_cast<const char*>(data), size);
    {
        std::istringstream in(line);
        ka::store::ImportOptions options;
        options.batch_size = 4;
        auto report = offline->store->import_jsonl(in, options);
        if (report) {
            ka::fuzz::require(report->added == 0 && report->duplicates == 0,
                              "an import wrote to an unreachable database");
            ka::fuzz::require(report->rejected.size() <= report->lines,
                              "more rejections than lines");
            for (const auto& r : report->rejected)
                ka::fuzz::require(!r.reason.empty() && r.line >= 1 && r.line <= report->lines,
                                  "rejection without a reason or line");
        } else {
            ka::fuzz::require(report.error().code == ka::ErrorCode::unavailable,
                              "import failed with a code other than unavailable",
                              report.error().message);
        }
    }
    // Both parsers: the import's (simdjson) and the API's (nlohmann, then parse_entry).
    check_entry(ka::store::parse_import_line(line, "default", config), config);
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded()) check_entry(ka::store::parse_entry(j, "default", config), config);
    return 0;
}
