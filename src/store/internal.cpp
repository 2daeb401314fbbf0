#include "store/internal.h"

#include <arpa/inet.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <regex>

#include <fmt/format.h>
#include <openssl/rand.h>

namespace ka::store::detail {
namespace {

Error invalid(std::string message, std::string hint = {}) {
    return Error{ErrorCode::invalid_argument, std::move(message), std::move(hint), {}};
}

// Offset of the first invalid UTF-8 sequence, or npos.
std::size_t invalid_utf8_at(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        std::size_t n = c < 0x80           ? 1
                        : (c >> 5) == 0x6  ? 2
                        : (c >> 4) == 0xE  ? 3
                        : (c >> 3) == 0x1E ? 4
                                           : 0;
        if (n == 0 || i + n > s.size()) return i;
        std::uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
        for (std::size_t j = 1; j < n; ++j) {
            auto cc = static_cast<unsigned char>(s[i + j]);
            if ((cc >> 6) != 0x2) return i;
            cp = (cp << 6) | (cc & 0x3F);
        }
        // Overlong forms, surrogates and values past U+10FFFF are invalid.
        if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
            (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
            return i;
        i += n;
    }
    return std::string_view::npos;
}

void put16(std::string& out, std::uint16_t v) {
    v = htons(v);
    out.append(reinterpret_cast<const char*>(&v), 2);
}

}  // namespace

std::string trim(std::string_view text) {
    auto space = [](char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
    };
    while (!text.empty() && space(text.front())) text.remove_prefix(1);
    while (!text.empty() && space(text.back())) text.remove_suffix(1);
    return std::string(text);
}

Status check_text(std::string_view field, std::string_view value, std::size_t max_bytes) {
    if (auto nul = value.find('\0'); nul != std::string_view::npos) {
        return std::unexpected(
            invalid(fmt::format("{} contains a NUL byte at offset {}", field, nul),
                    "remove NUL characters; PostgreSQL text cannot hold them"));
    }
    if (auto bad = invalid_utf8_at(value); bad != std::string_view::npos) {
        return std::unexpected(
            invalid(fmt::format("{} is not valid UTF-8 (bad byte at offset {})", field, bad),
                    "send text encoded as UTF-8"));
    }
    if (value.size() > max_bytes) {
        return std::unexpected(invalid(
            fmt::format("{} is {} bytes; the limit is {}", field, value.size(), max_bytes),
            field == "content" ? "split it into smaller entries, or raise store.max_content_bytes"
                               : ""));
    }
    return {};
}

Status check_scope(std::string_view scope) {
    bool ok = !scope.empty() && scope.size() <= kMaxScopeLength &&
              std::all_of(scope.begin(), scope.end(), [](unsigned char c) {
                  return std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == ':' ||
                         c == '/' || c == '@';
              });
    if (!ok) {
        return std::unexpected(
            invalid(fmt::format("scope '{}' is not valid", scope.substr(0, 200)),
                    "a scope is 1-128 characters of letters, digits and - _ . : / @"));
    }
    return {};
}

Status check_tags(const std::vector<std::string>& tags) {
    if (tags.size() > kMaxTags) {
        return std::unexpected(
            invalid(fmt::format("{} tags given; at most {} are allowed", tags.size(), kMaxTags)));
    }
    for (const auto& tag : tags) {
        if (auto ok = check_text("tag", tag, kMaxTagLength); !ok) return ok;
        if (tag.empty() ||
            std::any_of(tag.begin(), tag.end(), [](unsigned char c) { return c < 0x20; })) {
            return std::unexpected(
                invalid(fmt::format("tag '{}' is empty or has control characters", tag)));
        }
    }
    return {};
}

Status check_metadata(const nlohmann::json& metadata) {
    if (!metadata.is_object()) return std::unexpected(invalid("metadata must be a JSON object"));
    std::string text;
    try {
        text = metadata.dump();
    } catch (const nlohmann::json::exception&) {
        return std::unexpected(invalid("metadata contains text that is not valid UTF-8"));
    }
    if (text.size() > 65536) return std::unexpected(invalid("metadata is larger than 64 KiB"));
    if (text.find("\\u0000") != std::string::npos) {
        return std::unexpected(
            invalid("metadata contains a NUL character", "PostgreSQL jsonb cannot hold \\u0000"));
    }
    return {};
}

Status check_timestamp(std::string_view field, std::string_view value) {
    static const std::regex rfc3339(
        R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt ]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d))");
    if (value.size() > 40 || !std::regex_match(value.begin(), value.end(), rfc3339) ||
        !timestamp_micros(value)) {
        return std::unexpected(
            invalid(fmt::format("{} '{}' is not an RFC 3339 timestamp", field, value.substr(0, 60)),
                    "use e.g. 2026-11-24T09:30:00Z"));
    }
    return {};
}

std::optional<std::int64_t> timestamp_micros(std::string_view v) {
    auto num = [&](std::size_t pos, std::size_t len) {
        int n = 0;
        for (std::size_t i = pos; i < pos + len && i < v.size(); ++i) {
            if (v[i] < '0' || v[i] > '9') return -1;
            n = n * 10 + (v[i] - '0');
        }
        return n;
    };
    using namespace std::chrono;
    year_month_day date{year{num(0, 4)}, month{static_cast<unsigned>(num(5, 2))},
                        day{static_cast<unsigned>(num(8, 2))}};
    if (v.size() < 20 || num(0, 4) < 1 || !date.ok()) return std::nullopt;
    std::int64_t us =
        (sys_days(date) - sys_days(year{2000} / January / 1)).count() * 86'400'000'000LL +
        (num(11, 2) * 3600LL + num(14, 2) * 60 + num(17, 2)) * 1'000'000;
    std::size_t pos = 19;
    if (v[pos] == '.') {
        std::size_t end = std::min(v.find_first_not_of("0123456789", pos + 1), v.size());
        // As PostgreSQL rounds: rint() of the fraction read as a double, times a million.
        us += static_cast<std::int64_t>(
            std::rint(std::strtod(std::string(v.substr(pos, end - pos)).c_str(), nullptr) * 1e6));
        pos = end;
    }
    if (pos < v.size() && v[pos] != 'Z' && v[pos] != 'z') {
        if (num(pos + 1, 2) > 15) return std::nullopt;  // PostgreSQL's limit for an offset
        std::int64_t offset = (num(pos + 1, 2) * 3600LL + num(pos + 4, 2) * 60) * 1'000'000;
        us += v[pos] == '-' ? offset : -offset;
    }
    return us;
}

Status check_id(std::string_view id) {
    static const std::regex uuid(
        R"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})");
    if (!std::regex_match(id.begin(), id.end(), uuid)) {
        return std::unexpected(
            Error{ErrorCode::invalid_argument,
                  fmt::format("'{}' is not an entry id (a UUID)", id.substr(0, 60)),
                  "",
                  {}});
    }
    return {};
}

Status check_vector(const embed::Vector& v, int dimensions) {
    if (static_cast<int>(v.size()) != dimensions) {
        return std::unexpected(invalid(
            fmt::format("embedding has {} dimensions; this store uses {}", v.size(), dimensions),
            "embed with a model of embedding.dimensions dimensions, or omit the embedding to let "
            "the store embed"));
    }
    double norm = 0;
    for (float x : v) {
        if (!std::isfinite(x))
            return std::unexpected(invalid("embedding contains NaN or infinity"));
        norm += static_cast<double>(x) * x;
    }
    if (norm == 0)
        return std::unexpected(
            invalid("embedding is all zeros; cosine distance is undefined for it"));
    return {};
}

Status normalise(NewEntry& e, const config::Config& config) {
    if (auto ok = check_text("content", e.content,
                             static_cast<std::size_t>(config.store.max_content_bytes));
        !ok)
        return ok;
    e.content = trim(e.content);
    if (e.content.empty()) return std::unexpected(invalid("content is empty"));
    if (e.scope.empty()) e.scope = config.store.default_scope;
    if (auto ok = check_scope(e.scope); !ok) return ok;
    std::vector<std::string> tags;
    for (auto& t : e.tags) {
        std::string tag = trim(t);
        if (std::find(tags.begin(), tags.end(), tag) == tags.end()) tags.push_back(std::move(tag));
    }
    e.tags = std::move(tags);
    if (auto ok = check_tags(e.tags); !ok) return ok;
    if (auto ok = check_metadata(e.metadata); !ok) return ok;
    for (auto* field : {&e.source, &e.author}) {
        if (*field) {
            if (auto ok =
                    check_text(field == &e.source ? "source" : "author", **field, kMaxFieldLength);
                !ok)
                return ok;
        }
    }
    if (e.created_at) {
        if (auto ok = check_timestamp("created_at", *e.created_at); !ok) return ok;
    }
    if (e.updated_at) {
        if (auto ok = check_timestamp("updated_at", *e.updated_at); !ok) return ok;
    }
    if (e.id) {
        if (auto ok = check_id(*e.id); !ok) return ok;
    }
    if (e.embedding) {
        if (auto ok = check_vector(*e.embedding, config.embedding.dimensions); !ok) return ok;
    }
    return {};
}

Entry row_to_entry(const db::PgResult& r, int row, int c) {
    Entry e;
    e.id = r.text(row, c);
    e.scope = r.text(row, c + 1);
    e.content = r.text(row, c + 2);
    e.metadata = nlohmann::json::parse(r.get(row, c + 3), nullptr, false);
    // text[] output: {a,"b c"}; parse PostgreSQL's array syntax.
    std::string_view tags = r.get(row, c + 4);
    if (tags.size() > 2) {
        std::string current;
        bool quoted = false;
        for (std::size_t i = 1; i + 1 < tags.size(); ++i) {
            char ch = tags[i];
            if (quoted && ch == '\\' && i + 2 < tags.size()) {
                current += tags[++i];
            } else if (ch == '"') {
                quoted = !quoted;
            } else if (ch == ',' && !quoted) {
                e.tags.push_back(std::move(current));
                current.clear();
            } else {
                current += ch;
            }
        }
        e.tags.push_back(std::move(current));
    }
    if (!r.is_null(row, c + 5)) e.source = r.text(row, c + 5);
    if (!r.is_null(row, c + 6)) e.author = r.text(row, c + 6);
    e.embedding_model = r.text(row, c + 7);
    e.created_at = r.text(row, c + 8);
    e.updated_at = r.text(row, c + 9);
    return e;
}

std::string new_uuid_v7() {
    // RFC 9562 UUIDv7: 48-bit Unix milliseconds, then random bits; ids sort by creation time.
    unsigned char b[16];
    RAND_bytes(b, sizeof b);
    auto ms = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::system_clock::now().time_since_epoch())
                                             .count());
    for (int i = 0; i < 6; ++i) b[i] = static_cast<unsigned char>(ms >> (40 - 8 * i));
    b[6] = static_cast<unsigned char>((b[6] & 0x0F) | 0x70);
    b[8] = static_cast<unsigned char>((b[8] & 0x3F) | 0x80);
    std::string digits = hex({reinterpret_cast<const char*>(b), sizeof b});
    for (std::size_t dash : {20, 16, 12, 8}) digits.insert(dash, 1, '-');
    return digits;
}

std::string vector_binary(const embed::Vector& v) {
    std::string out;
    out.reserve(4 + 4 * v.size());
    put16(out, static_cast<std::uint16_t>(v.size()));
    put16(out, 0);
    for (float x : v) {
        std::uint32_t bits;
        std::memcpy(&bits, &x, 4);
        bits = htonl(bits);
        out.append(reinterpret_cast<const char*>(&bits), 4);
    }
    return out;
}

std::string text_array_literal(const std::vector<std::string>& items) {
    std::string out = "{";
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (i) out += ',';
        out += '"';
        for (char c : items[i]) {
            if (c == '"' || c == '\\') out += '\\';
            out += c;
        }
        out += '"';
    }
    return out + "}";
}

std::string where_sql(const Filters& f, db::Params& params) {
    std::vector<std::string> clauses;
    auto next = [&](db::Param p) {
        params.push_back(std::move(p));
        return "$" + std::to_string(params.size());
    };
    if (!f.scopes.empty())
        clauses.push_back("scope = ANY(" + next(text_array_literal(f.scopes)) + "::text[])");
    if (!f.tags.empty())
        clauses.push_back("tags @> " + next(text_array_literal(f.tags)) + "::text[]");
    if (f.source) clauses.push_back("source = " + next(*f.source));
    if (f.created_after)
        clauses.push_back("created_at >= " + next(*f.created_after) + "::timestamptz");
    if (f.created_before)
        clauses.push_back("created_at < " + next(*f.created_before) + "::timestamptz");
    if (clauses.empty()) return "TRUE";
    return fmt::format("{}", fmt::join(clauses, " AND "));
}

Result<db::PgResult> run(db::Connection& conn, const std::string& sql, const db::Params& params) {
    return conn.exec_prepared(fmt::format("ka_{:016x}", std::hash<std::string>{}(sql)), sql,
                              params);
}

}  // namespace ka::store::detail

namespace ka::store {

Status check_filters(const Filters& f) {
    using namespace detail;
    for (const auto& s : f.scopes) {
        if (auto ok = check_scope(s); !ok) return ok;
    }
    if (auto ok = check_tags(f.tags); !ok) return ok;
    if (f.source) {
        if (auto ok = check_text("source", *f.source, kMaxFieldLength); !ok) return ok;
    }
    if (f.created_after) {
        if (auto ok = check_timestamp("created_after", *f.created_after); !ok) return ok;
    }
    if (f.created_before) {
        if (auto ok = check_timestamp("created_before", *f.created_before); !ok) return ok;
    }
    return {};
}

}  // namespace ka::store

namespace ka::store::detail {

Result<std::vector<embed::Vector>> embed_documents(embed::Embedder& embedder,
                                                   const std::vector<std::string>& texts,
                                                   int dimensions) {
    if (texts.empty()) return std::vector<embed::Vector>{};
    auto vectors = embedder.embed(texts, embed::Purpose::document);
    if (!vectors) return vectors;
    if (vectors->size() != texts.size()) {
        return fail(ErrorCode::internal,
                    fmt::format("embedding model {} returned {} vectors for {} texts",
                                embedder.model(), vectors->size(), texts.size()));
    }
    for (const auto& v : *vectors) {
        if (auto ok = check_vector(v, dimensions); !ok) {
            Error e = ok.error();
            e.code = ErrorCode::internal;
            e.message = fmt::format("embedding model {} returned a bad vector: {}",
                                    embedder.model(), e.message);
            return std::unexpected(e);
        }
    }
    return vectors;
}

}  // namespace ka::store::detail

namespace ka::store::detail {

void count_terms(TermDelta& delta, const std::vector<std::int64_t>& features, int sign) {
    for (auto f : features) delta[f] += sign;
}

std::string bigint_array_literal(const std::vector<std::int64_t>& values) {
    return fmt::format("{{{}}}", fmt::join(values, ","));
}

Status apply_term_delta(db::Connection& conn, const TermDelta& delta) {
    std::vector<std::pair<std::int64_t, int>> sorted(delta.begin(), delta.end());
    std::sort(sorted.begin(), sorted.end());
    std::vector<std::int64_t> up, up_n, down, down_n;
    for (const auto& [feature, n] : sorted) {
        if (n > 0) up.push_back(feature), up_n.push_back(n);
        if (n < 0) down.push_back(feature), down_n.push_back(n);
    }
    if (!up.empty()) {
        auto r = run(conn,
                     "INSERT INTO memory_term_stats (feature, df) SELECT f, d FROM "
                     "unnest($1::bigint[], $2::int[]) "
                     "AS t(f, d) ON CONFLICT (feature) DO UPDATE SET df = memory_term_stats.df + "
                     "excluded.df",
                     {bigint_array_literal(up), bigint_array_literal(up_n)});
        if (!r) return std::unexpected(r.error());
    }
    if (!down.empty()) {
        auto r = run(
            conn,
            "UPDATE memory_term_stats s SET df = GREATEST(s.df + t.d, 0) FROM unnest($1::bigint[], "
            "$2::int[]) AS t(f, d) WHERE s.feature = t.f",
            {bigint_array_literal(down), bigint_array_literal(down_n)});
        if (!r) return std::unexpected(r.error());
    }
    return {};
}

Result<embed::TermFrequencies> StoreTermStats::lookup(const std::vector<std::int64_t>& features) {
    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    // The entry count: the planner's estimate on large tables, an exact count on small ones.
    auto r = run(**conn,
                 "SELECT n.docs, t.feature, t.df FROM (SELECT CASE WHEN c.reltuples < 10000 THEN "
                 "(SELECT count(*) "
                 "FROM memory_entries)::float8 ELSE c.reltuples::float8 END AS docs FROM pg_class "
                 "c WHERE c.oid = "
                 "'memory_entries'::regclass) n LEFT JOIN memory_term_stats t ON t.feature = "
                 "ANY($1::bigint[])",
                 {bigint_array_literal(features)});
    if (!r) return std::unexpected(r.error());
    embed::TermFrequencies out;
    for (int i = 0; i < r->rows(); ++i) {
        out.documents = std::strtod(r->text(i, 0).c_str(), nullptr);
        if (!r->is_null(i, 1)) out.df[r->integer(i, 1)] = static_cast<double>(r->integer(i, 2));
    }
    return out;
}

}  // namespace ka::store::detail
