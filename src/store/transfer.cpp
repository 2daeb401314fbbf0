// Bulk import and export as JSON Lines, one entry per line.
#include <algorithm>
#include <deque>
#include <future>
#include <set>

#include <fmt/format.h>
#include <simdjson.h>
#include <nlohmann/json.hpp>

#include "log/log.h"
#include "store/internal.h"
#include "store/store.h"

namespace ka::store {
namespace {

using namespace detail;
using nlohmann::json;

constexpr int kExportFetch = 1000;
// Batches written at once, each on its own connection and transaction, while the next is
// parsed: two keep both cores of a small server busy (20k-row bench: 0.54x raw COPY instead
// of 0.33x with one).
constexpr std::size_t kImportWriters = 2;
// Deeper import lines are refused while parsing: copying or printing a JSON value recurses once
// per level, so a line of 100k nested brackets in a field would overflow the stack. No entry
// the API accepts comes near this depth.
constexpr int kMaxLineDepth = 256;

// Bad lines are rejected one by one; anything else (database or provider down, a wrong API key,
// a model with other dimensions) would fail every line alike, so it stops the import.
bool about_the_data(const Error& e) {
    return e.code == ErrorCode::invalid_argument || e.code == ErrorCode::conflict;
}

std::unexpected<Error> bad(std::string why) {
    return std::unexpected(Error{ErrorCode::invalid_argument, std::move(why), "", {}});
}

}  // namespace

Result<NewEntry> parse_import_line(const std::string& line, const std::string& default_scope,
                                   const config::Config& config) {
    if (line.size() > kMaxImportLineBytes)
        return bad(fmt::format("line is longer than {} bytes", kMaxImportLineBytes));
    thread_local simdjson::dom::parser parser;
    thread_local bool allocated = false;
    if (!allocated) {
        if (parser.allocate(64 * 1024, kMaxLineDepth) != simdjson::SUCCESS)
            return fail(ErrorCode::internal, "cannot allocate the JSON parser");
        allocated = true;
    }
    simdjson::dom::element doc;
    if (auto err = parser.parse(line).get(doc); err) {
        if (err == simdjson::DEPTH_ERROR)
            return bad(fmt::format("line is nested deeper than {} levels", kMaxLineDepth));
        return bad("not valid JSON");
    }
    simdjson::dom::object object;
    if (doc.get_object().get(object)) return bad("expected a JSON object");
    // The embedding straight into floats; every other field through parse_entry (small).
    json rest = json::object();
    std::optional<embed::Vector> embedding;
    for (auto field : object) {
        std::string key(field.key);
        if (key != "embedding" || field.value.is_null()) {
            if (key == "embedding") embedding.reset();  // a repeated key: the last one wins
            json value = json::parse(simdjson::minify(field.value), nullptr, false);
            if (value.is_discarded()) return bad("not valid JSON");
            rest[key] = std::move(value);
            continue;
        }
        simdjson::dom::array array;
        if (field.value.get_array().get(array)) return bad("embedding must be an array of numbers");
        embed::Vector v;
        v.reserve(array.size());
        for (auto x : array) {
            double d = 0;
            if (x.get_double().get(d)) return bad("embedding must be an array of numbers");
            v.push_back(static_cast<float>(d));
        }
        rest.erase("embedding");
        embedding = std::move(v);
    }
    return parse_entry(rest, default_scope, config, std::move(embedding));
}

Result<NewEntry> parse_entry(const json& j, const std::string& default_scope,
                             const config::Config& config, std::optional<embed::Vector> embedding) {
    if (!j.is_object()) return bad("expected a JSON object");
    NewEntry e;
    e.scope = default_scope;
    auto string_field = [&](const char* name, auto& target) -> Status {
        const json& v = j[name];
        if (v.is_null()) return {};
        if (!v.is_string())
            return std::unexpected(Error{
                ErrorCode::invalid_argument, fmt::format("{} must be a string", name), "", {}});
        target = v.get<std::string>();
        return {};
    };
    for (const auto& [key, value] : j.items()) {
        static const std::set<std::string, std::less<>> known = {
            "id",     "scope",      "content",    "metadata",  "tags",           "source",
            "author", "created_at", "updated_at", "embedding", "embedding_model"};
        if (!known.contains(key)) return bad(fmt::format("unknown field '{}'", key));
    }
    if (!j.contains("content")) return bad("missing field 'content'");
    if (!j["content"].is_string()) return bad("content must be a string");
    e.content = j["content"].get<std::string>();
    if (j.contains("scope") && !j["scope"].is_null()) {
        if (!j["scope"].is_string()) return bad("scope must be a string");
        e.scope = j["scope"].get<std::string>();
    }
    for (auto [name, target] : {std::pair{"source", &e.source},
                                {"author", &e.author},
                                {"created_at", &e.created_at},
                                {"updated_at", &e.updated_at},
                                {"id", &e.id},
                                {"embedding_model", &e.embedding_model}}) {
        if (!j.contains(name)) continue;
        if (auto ok = string_field(name, *target); !ok) return std::unexpected(ok.error());
    }
    if (j.contains("metadata") && !j["metadata"].is_null()) {
        if (!j["metadata"].is_object()) return bad("metadata must be a JSON object");
        e.metadata = j["metadata"];
    }
    if (j.contains("tags") && !j["tags"].is_null()) {
        if (!j["tags"].is_array()) return bad("tags must be an array of strings");
        for (const auto& t : j["tags"]) {
            if (!t.is_string()) return bad("tags must be an array of strings");
            e.tags.push_back(t.get<std::string>());
        }
    }
    if (embedding) {
        e.embedding = std::move(embedding);
    } else if (j.contains("embedding") && !j["embedding"].is_null()) {
        if (!j["embedding"].is_array()) return bad("embedding must be an array of numbers");
        embed::Vector v;
        v.reserve(j["embedding"].size());
        for (const auto& x : j["embedding"]) {
            if (!x.is_number()) return bad("embedding must be an array of numbers");
            v.push_back(x.get<float>());
        }
        e.embedding = std::move(v);
    }
    if (auto ok = normalise(e, config); !ok) return std::unexpected(ok.error());
    return e;
}

json to_json(const Entry& e) {
    return {{"id", e.id},
            {"scope", e.scope},
            {"content", e.content},
            {"metadata", e.metadata},
            {"tags", e.tags},
            {"source", e.source ? json(*e.source) : json(nullptr)},
            {"author", e.author ? json(*e.author) : json(nullptr)},
            {"embedding_model", e.embedding_model},
            {"created_at", e.created_at},
            {"updated_at", e.updated_at}};
}

json to_json(const Hit& h) {
    json j = to_json(h.entry);
    j["rank"] = h.rank;
    j["similarity"] = h.similarity ? json(*h.similarity) : json(nullptr);
    j["score"] = h.score;
    return j;
}

Result<ImportReport> Store::import_jsonl(std::istream& in, const ImportOptions& options) {
    if (!options.defer_index) return import_lines(in, options);
    {
        auto conn = pool_.acquire();
        if (!conn) return std::unexpected(conn.error());
        log::warn(
            "Dropping the HNSW index for a bulk import; vector searches scan exactly until "
            "it is rebuilt");
        if (auto ok = (*conn)->exec("DROP INDEX IF EXISTS idx_memory_entries_embedding"); !ok)
            return std::unexpected(ok.error());
    }
    auto report = import_lines(in, options);
    auto rebuilt = reindex();
    if (!rebuilt && report) return std::unexpected(rebuilt.error());
    auto conn = pool_.acquire();
    auto counted = conn ? recount_term_stats(**conn, false) : Status(std::unexpected(conn.error()));
    if (!counted && report) return std::unexpected(counted.error());
    return report;
}

Result<ImportReport> Store::import_lines(std::istream& in, const ImportOptions& options) {
    ImportReport report;
    std::string default_scope =
        options.default_scope.empty() ? config_.store.default_scope : options.default_scope;
    if (auto ok = check_scope(default_scope); !ok) return std::unexpected(ok.error());

    struct Batch {
        std::vector<NewEntry> entries;
        std::vector<std::uint64_t> lines;
    };
    // A batch is one transaction. When the database refuses it, each line is retried alone so
    // the bad ones are reported and the good ones still land; an unreachable provider or
    // database stops the import (re-running it skips what was already imported).
    auto write = [this, term_stats = !options.defer_index](Batch batch) -> Result<ImportReport> {
        ImportReport done;
        auto tally = [&](const std::vector<Saved>& added) {
            for (const auto& a : added) ++(a.created ? done.added : done.duplicates);
        };
        auto added = add_batch(batch.entries, term_stats);
        if (added) {
            tally(*added);
            return done;
        }
        if (!about_the_data(added.error())) {
            Error e = added.error();
            e.message =
                fmt::format("import stopped at line {}: {}", batch.lines.front(), e.message);
            e.hint =
                "fix the cause and run the same import again: lines already imported are skipped "
                "as duplicates";
            return std::unexpected(e);
        }
        for (std::size_t i = 0; i < batch.entries.size(); ++i) {
            auto one = add_batch({batch.entries[i]}, term_stats);
            if (one)
                tally(*one);
            else if (!about_the_data(one.error()))
                return std::unexpected(one.error());
            else
                done.rejected.push_back({batch.lines[i], one.error().message});
        }
        return done;
    };
    // Up to kImportWriters batches are written on other threads while the next is parsed;
    // their results are taken in file order.
    std::deque<std::future<Result<ImportReport>>> in_flight;
    std::uint64_t bytes = 0;
    auto finish_oldest = [&]() -> Status {
        auto done = in_flight.front().get();
        in_flight.pop_front();
        if (!done) return std::unexpected(done.error());
        report.added += done->added;
        report.duplicates += done->duplicates;
        for (auto& r : done->rejected) report.rejected.push_back(std::move(r));
        if (options.progress) options.progress(bytes, report.lines);
        return {};
    };
    auto finish_in_flight = [&]() -> Status {
        Status first;
        while (!in_flight.empty()) {
            auto ok = finish_oldest();
            if (!ok && first) first = ok;
        }
        return first;
    };
    auto flush = [&](Batch& batch) -> Status {
        while (in_flight.size() >= kImportWriters) {
            if (auto ok = finish_oldest(); !ok) {
                (void)finish_in_flight();
                return ok;
            }
        }
        if (batch.entries.empty()) return {};
        in_flight.push_back(std::async(std::launch::async, write, std::move(batch)));
        batch = {};
        return {};
    };

    Batch batch;
    for (std::string line; std::getline(in, line);) {
        ++report.lines;
        bytes += line.size() + 1;
        if (trim(line).empty()) continue;
        auto entry = parse_import_line(line, default_scope, config_);
        if (entry && !options.allowed_scopes.empty() &&
            std::find(options.allowed_scopes.begin(), options.allowed_scopes.end(), entry->scope) ==
                options.allowed_scopes.end()) {
            entry = bad(fmt::format("scope '{}' is not allowed for this caller", entry->scope));
        }
        if (!entry) {
            report.rejected.push_back({report.lines, entry.error().message});
            continue;
        }
        batch.entries.push_back(std::move(*entry));
        batch.lines.push_back(report.lines);
        if (static_cast<int>(batch.entries.size()) >= options.batch_size) {
            if (auto ok = flush(batch); !ok) return std::unexpected(ok.error());
        }
    }
    if (auto ok = flush(batch); !ok) return std::unexpected(ok.error());
    if (auto ok = finish_in_flight(); !ok) return std::unexpected(ok.error());
    std::stable_sort(report.rejected.begin(), report.rejected.end(),
                     [](const auto& a, const auto& b) { return a.line < b.line; });
    return report;
}

Result<std::uint64_t> Store::export_jsonl(std::ostream& out, const Filters& filters,
                                          bool with_embeddings) {
    if (auto ok = check_filters(filters); !ok) return std::unexpected(ok.error());
    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    auto& c = **conn;
    db::Params params;
    std::string where = where_sql(filters, params);
    // One snapshot for the whole export, read through a cursor so memory stays flat.
    if (auto ok = c.exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); !ok)
        return std::unexpected(ok.error());
    auto abort = [&](Error e) -> Result<std::uint64_t> {
        (void)c.exec("ROLLBACK");
        return std::unexpected(std::move(e));
    };
    auto declared =
        c.exec(fmt::format("DECLARE ka_export NO SCROLL CURSOR FOR SELECT {}, embedding::text FROM "
                           "memory_entries WHERE {} ORDER BY created_at, id",
                           kEntryColumns, where),
               params);
    if (!declared) return abort(declared.error());
    std::uint64_t written = 0;
    while (true) {
        auto rows = c.exec(fmt::format("FETCH {} FROM ka_export", kExportFetch));
        if (!rows) return abort(rows.error());
        for (int i = 0; i < rows->rows(); ++i) {
            Entry e = row_to_entry(*rows, i);
            json j = to_json(e);
            j.erase("embedding_model");  // written beside the embedding below, or dropped
            std::string line = j.dump();
            if (with_embeddings) {
                // pgvector prints each float in its shortest exact form, which is valid JSON.
                line.pop_back();
                line +=
                    fmt::format(",\"embedding_model\":{},\"embedding\":{}}}",
                                json(e.embedding_model).dump(), rows->get(i, kEntryColumnCount));
            }
            out << line << '\n';
            ++written;
        }
        if (rows->rows() < kExportFetch) break;
    }
    if (auto ok = c.exec("COMMIT"); !ok) return std::unexpected(ok.error());
    if (!out)
        return fail(ErrorCode::unavailable,
                    "cannot write the export (disk full or closed output?)");
    return written;
}

}  // namespace ka::store
