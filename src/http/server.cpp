#include "http/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>
#include <ext/stdio_filebuf.h>
#include <nlohmann/json.hpp>

#include "db/migrate.h"
#include "http/auth.h"
#include "http/openapi.h"
#include "http/rate_limit.h"
#include "log/log.h"
#include "store/internal.h"

namespace ka::http {
namespace {

// Debian's compiled cpp-httplib listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG): a burst
// of new connections overflows it and clients get resets ("Read" errors). listen() on a socket
// that already listens sets a new backlog (Linux); the socket is the one bound to our port.
void raise_listen_backlog(int port) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
        int fd = 0;
        const std::string name = entry.path().filename().string();
        if (std::from_chars(name.data(), name.data() + name.size(), fd).ec != std::errc()) continue;
        int listening = 0;
        socklen_t length = sizeof listening;
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) != 0 || !listening)
            continue;
        sockaddr_storage address{};
        socklen_t size = sizeof address;
        if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0) continue;
        int bound = address.ss_family == AF_INET
                        ? ntohs(reinterpret_cast<const sockaddr_in&>(address).sin_port)
                    : address.ss_family == AF_INET6
                        ? ntohs(reinterpret_cast<const sockaddr_in6&>(address).sin6_port)
                        : -1;
        if (bound == port) ::listen(fd, SOMAXCONN);
    }
}

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int kMaxJsonDepth = 32;
constexpr std::string_view kNdjson = "application/x-ndjson";

// What a handler gets: the request, the response to fill, and who is calling.
struct Call {
    const httplib::Request& req;
    httplib::Response& res;
    Principal who;
    const httplib::ContentReader* reader = nullptr;  // streaming routes only
};

std::unexpected<Error> invalid(std::string message, std::string hint = {}) {
    return fail(ErrorCode::invalid_argument, std::move(message), std::move(hint));
}

void send(httplib::Response& res, int status, const json& body) {
    res.status = status;
    res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, int status, std::string_view code,
                const std::string& message, const std::string& hint = {}) {
    json e = {{"code", code}, {"message", message}};
    if (!hint.empty()) e["hint"] = hint;
    send(res, status, {{"error", e}});
}

bool loopback(const std::string& host) {
    return host == "127.0.0.1" || host == "::1" || host == "localhost" || host.starts_with("127.");
}

// A JSON request body: an object, bounded in size and nesting depth.
Result<json> body_object(const Call& c) {
    bool too_deep = false;
    json j = json::parse(
        c.req.body,
        [&](int depth, json::parse_event_t, json&) {
            if (depth > kMaxJsonDepth) too_deep = true;
            return !too_deep;
        },
        false);
    if (too_deep)
        return invalid(fmt::format("request body is nested deeper than {} levels", kMaxJsonDepth));
    if (j.is_discarded())
        return invalid("request body is not valid JSON",
                       "send a JSON object with Content-Type: application/json");
    if (!j.is_object()) return invalid("request body must be a JSON object");
    return j;
}

Status only_fields(const json& j, std::initializer_list<std::string_view> allowed) {
    for (const auto& [key, value] : j.items()) {
        if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
            return invalid(fmt::format("unknown field '{}'", key),
                           fmt::format("allowed fields: {}", fmt::join(allowed, ", ")));
    }
    return {};
}

Result<std::vector<std::string>> string_list(const json& v, std::string_view name) {
    if (v.is_string()) return std::vector<std::string>{v.get<std::string>()};
    if (!v.is_array()) return invalid(fmt::format("{} must be an array of strings", name));
    std::vector<std::string> out;
    for (const auto& item : v) {
        if (!item.is_string()) return invalid(fmt::format("{} must be an array of strings", name));
        out.push_back(item.get<std::string>());
    }
    return out;
}

Result<int> int_field(const json& v, std::string_view name) {
    if (!v.is_number_integer()) return invalid(fmt::format("{} must be an integer", name));
    // No llabs: it overflows (undefined behaviour) on -2^63.
    if (v.is_number_unsigned()
            ? v.get<std::uint64_t>() > 1000000
            : v.get<std::int64_t>() > 1000000 || v.get<std::int64_t>() < -1000000)
        return invalid(fmt::format("{} is out of range", name));
    return static_cast<int>(v.get<std::int64_t>());
}

Result<int> int_param(const httplib::Request& req, const char* name, int fallback) {
    if (!req.has_param(name)) return fallback;
    std::string text = req.get_param_value(name);
    int value = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || ptr != text.data() + text.size())
        return invalid(fmt::format("query parameter {} must be an integer", name));
    return value;
}

std::vector<std::string> params(const httplib::Request& req, const char* name) {
    std::vector<std::string> out;
    for (std::size_t i = 0; i < req.get_param_value_count(name); ++i)
        out.push_back(req.get_param_value(name, i));
    return out;
}

// Filters from a JSON object (search) into `f`; scopes are checked against the caller after.
Status filters_from_json(const json& j, store::Filters& f) {
    if (!j.is_object()) return invalid("filters must be an object");
    if (auto ok = only_fields(j, {"scopes", "tags", "source", "created_after", "created_before"});
        !ok)
        return ok;
    for (auto [name, target] : {std::pair{"scopes", &f.scopes}, {"tags", &f.tags}}) {
        if (!j.contains(name) || j[name].is_null()) continue;
        auto list = string_list(j[name], name);
        if (!list) return std::unexpected(list.error());
        *target = std::move(*list);
    }
    for (auto [name, target] : {std::pair{"source", &f.source},
                                {"created_after", &f.created_after},
                                {"created_before", &f.created_before}}) {
        if (!j.contains(name) || j[name].is_null()) continue;
        if (!j[name].is_string()) return invalid(fmt::format("{} must be a string", name));
        *target = j[name].get<std::string>();
    }
    return {};
}

// Filters from query parameters: scope and tag may repeat.
store::Filters filters_from_query(const httplib::Request& req) {
    store::Filters f;
    f.scopes = params(req, "scope");
    f.tags = params(req, "tag");
    if (req.has_param("source")) f.source = req.get_param_value("source");
    if (req.has_param("created_after")) f.created_after = req.get_param_value("created_after");
    if (req.has_param("created_before")) f.created_before = req.get_param_value("created_before");
    return f;
}

Status restrict_scopes(const Principal& who, store::Filters& f) {
    auto scopes = allowed_scopes(who, f.scopes);
    if (!scopes) return std::unexpected(scopes.error());
    f.scopes = std::move(*scopes);
    return {};
}

std::string request_id(const httplib::Request& req) {
    std::string given = req.get_header_value("X-Request-Id");
    if (!given.empty() && given.size() <= 128 &&
        std::all_of(given.begin(), given.end(), [](unsigned char c) {
            return std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == ':';
        }))
        return given;
    thread_local std::mt19937_64 rng{std::random_device{}()};
    return fmt::format("{:016x}{:016x}", rng(), rng());
}

// An ostream target over an httplib DataSink, buffered. httplib's own sink stream handles only
// bulk writes: a single `<< '\n'` would set failbit.
class SinkBuf : public std::streambuf {
  public:
    explicit SinkBuf(httplib::DataSink& sink) : sink_(sink) { setp(buf_, buf_ + sizeof buf_); }
    ~SinkBuf() override { sync(); }

  protected:
    int_type overflow(int_type c) override {
        if (sync() != 0) return traits_type::eof();
        if (!traits_type::eq_int_type(c, traits_type::eof())) {
            *pptr() = traits_type::to_char_type(c);
            pbump(1);
        }
        return traits_type::not_eof(c);
    }
    int sync() override {
        std::size_t n = static_cast<std::size_t>(pptr() - pbase());
        if (n > 0 && !sink_.write(pbase(), n)) return -1;
        setp(buf_, buf_ + sizeof buf_);
        return 0;
    }

  private:
    httplib::DataSink& sink_;
    char buf_[64 * 1024];
};

std::string presented_key(const httplib::Request& req) {
    std::string auth = req.get_header_value("Authorization");
    if (auth.size() > 7 && (auth.starts_with("Bearer ") || auth.starts_with("bearer ")))
        return auth.substr(7);
    return req.get_header_value("X-API-Key");
}

}  // namespace

Status check_exposure(const config::Config& config) {
    if (loopback(config.server.host) || !config.auth.keys.empty() || config.auth.allow_anonymous)
        return {};
    return fail(ErrorCode::config,
                fmt::format("refusing to listen on {} without API keys", config.server.host),
                "configure auth.keys, listen on 127.0.0.1, or set auth.allow_anonymous: true to "
                "serve everyone as admin");
}

int status_for(ErrorCode code) {
    switch (code) {
        case ErrorCode::invalid_argument:
            return 400;
        case ErrorCode::forbidden:
            return 403;
        case ErrorCode::not_found:
            return 404;
        case ErrorCode::conflict:
            return 409;
        case ErrorCode::bad_gateway:
            return 502;
        case ErrorCode::unavailable:
        case ErrorCode::config:
        case ErrorCode::migration:
        case ErrorCode::pgvector_missing:
        case ErrorCode::pgvector_not_created:
        case ErrorCode::pgvector_too_old:
        case ErrorCode::postgres_too_old:
            return 503;
        case ErrorCode::permission_denied:
        case ErrorCode::check_failed:
        case ErrorCode::internal:
            return 500;
    }
    return 500;
}

struct Server::Impl {
    const config::Config& config;
    store::Store& store;
    db::Pool& pool;
    Metrics& metrics;
    agent::Agent* agent;
    Auth auth;
    RateLimiter limiter;
    httplib::Server svr;

    Impl(const config::Config& c, store::Store& s, db::Pool& p, Metrics& m, agent::Agent* a)
        : config(c),
          store(s),
          pool(p),
          metrics(m),
          agent(a),
          auth(c.auth.keys),
          limiter(c.rate_limit.requests_per_second, c.rate_limit.burst) {}

    using Handler = Status (Impl::*)(Call&);

    bool body_too_large(std::size_t size) const {
        return size > static_cast<std::size_t>(config.server.max_body_bytes);
    }

    // Every route: request id, auth, rate limit, role, the handler, error mapping, access log
    // and metrics. `needed` empty: open (health, readiness, the API description).
    void handle(std::string_view route, std::optional<Role> needed, Handler handler,
                const httplib::Request& req, httplib::Response& res,
                const httplib::ContentReader* reader = nullptr) {
        auto start = Clock::now();
        std::string id = request_id(req);
        res.set_header("X-Request-Id", id);
        Principal who{"anonymous", Role::admin, {}};
        bool authenticated = true;
        if (needed && auth.enabled()) {
            std::string key = presented_key(req);
            auto found = key.empty() ? std::nullopt : auth.authenticate(key);
            if (found) {
                who = *found;
            } else {
                authenticated = false;
                res.set_header("WWW-Authenticate", "Bearer");
                send_error(res, 401, "unauthorized",
                           key.empty() ? "missing API key" : "invalid API key",
                           "send `Authorization: Bearer <key>` or `X-API-Key: <key>`");
            }
        }
        if (authenticated) {
            // Unauthenticated callers are limited by address too, so guessing keys is slow.
            std::string caller =
                who.name == "anonymous" ? "ip:" + req.remote_addr : "key:" + who.name;
            if (auto wait = needed ? limiter.take(caller) : std::nullopt) {
                res.set_header("Retry-After", std::to_string(static_cast<int>(std::ceil(*wait))));
                send_error(res, 429, "rate_limited", "too many requests",
                           "retry after the number of seconds in Retry-After");
            } else if (!reader && body_too_large(req.body.size())) {
                send_error(res, 413, "payload_too_large",
                           fmt::format("request body is larger than {} bytes",
                                       config.server.max_body_bytes),
                           "send less, or raise server.max_body_bytes");
            } else if (needed && !who.may(*needed)) {
                send_error(res, 403, "forbidden",
                           fmt::format("API key '{}' has role {}; this needs {}", who.name,
                                       to_string(who.role), to_string(*needed)));
            } else {
                Call call{req, res, who, reader};
                if (auto ok = (this->*handler)(call); !ok) {
                    const Error& e = ok.error();
                    send_error(res, status_for(e.code), to_string(e.code), e.message, e.hint);
                    if (res.status >= 500)
                        log::error("Request failed", {{"request_id", id}, {"error", e.message}});
                }
            }
        } else if (auto wait = limiter.take("ip:" + req.remote_addr)) {
            res.set_header("Retry-After", std::to_string(static_cast<int>(std::ceil(*wait))));
            send_error(res, 429, "rate_limited", "too many requests",
                       "retry after the number of seconds in Retry-After");
        }
        // A refused streaming request may leave its body unread on the connection, where
        // keep-alive would read it as the next request: end the connection with this answer.
        if (reader && res.status >= 400) res.set_header("Connection", "close");
        double seconds = std::chrono::duration<double>(Clock::now() - start).count();
        metrics.request(req.method, route, res.status, seconds);
        log::info("request", {{"method", req.method},
                              {"route", std::string(route)},
                              {"status", std::to_string(res.status)},
                              {"duration_ms", fmt::format("{:.1f}", seconds * 1000)},
                              {"key", who.name},
                              {"request_id", id},
                              {"remote", req.remote_addr}});
    }

    void route(const char* method, const std::string& pattern, std::string_view name,
               std::optional<Role> needed, Handler handler) {
        auto h = [this, name, needed, handler](const httplib::Request& req,
                                               httplib::Response& res) {
            handle(name, needed, handler, req, res);
        };
        std::string m = method;
        if (m == "GET") svr.Get(pattern, h);
        if (m == "POST") svr.Post(pattern, h);
        if (m == "PATCH") svr.Patch(pattern, h);
        if (m == "DELETE") svr.Delete(pattern, h);
    }

    // --- handlers -------------------------------------------------------------------------

    Status health(Call& c) {
        send(c.res, 200, {{"status", "ok"}});
        return {};
    }

    Status ready(Call& c) {
        auto problem = [&](const Error& e) {
            send(c.res, 503, {{"status", "unavailable"}, {"reason", e.message}});
            return Status{};
        };
        auto conn = pool.acquire(std::chrono::seconds(2));
        if (!conn) return problem(conn.error());
        auto ext = (*conn)->exec("SELECT extversion FROM pg_extension WHERE extname = 'vector'");
        if (!ext) return problem(ext.error());
        if (ext->rows() == 0)
            return problem(
                {ErrorCode::pgvector_not_created, "pgvector extension not found", "", ""});
        auto migrations = db::migration_status(**conn);
        if (!migrations) return problem(migrations.error());
        for (const auto& m : *migrations) {
            if (m.state != db::MigrationState::applied)
                return problem({ErrorCode::migration,
                                fmt::format("migration {:04} {} is {}", m.version, m.name,
                                            db::to_string(m.state)),
                                "", ""});
        }
        send(c.res, 200,
             {{"status", "ready"},
              {"pgvector", ext->text(0, 0)},
              {"migrations", migrations->size()}});
        return {};
    }

    Status metrics_text(Call& c) {
        // The exposition is server-wide (entries per scope for every scope): not for a key
        // bound to some scopes, whatever its role.
        if (!c.who.scopes.empty())
            return fail(ErrorCode::forbidden,
                        "a scope-bound key may not read the server-wide metrics",
                        "scrape /metrics with an admin key that has no scopes");
        auto stats = store.stats();
        std::vector<store::Stats::Scope> scopes;
        if (stats) scopes = stats->scopes;
        c.res.status = 200;
        c.res.set_content(metrics.render(pool.stats(), scopes), "text/plain; version=0.0.4");
        return {};
    }

    Status openapi(Call& c) {
        c.res.status = 200;
        c.res.set_content(std::string(openapi_json()), "application/json");
        return {};
    }

    Status save(Call& c) {
        auto body = body_object(c);
        if (!body) return std::unexpected(body.error());
        std::string default_scope =
            c.who.scopes.empty() ? config.store.default_scope : c.who.scopes.front();
        auto entry = store::parse_entry(*body, default_scope, config);
        if (!entry) return std::unexpected(entry.error());
        if (auto ok = allowed_scopes(c.who, {entry->scope}); !ok)
            return std::unexpected(ok.error());
        auto added = store.add(std::move(*entry));
        if (!added) return std::unexpected(added.error());
        json j = store::to_json(added->entry);
        j["created"] = added->created;
        send(c.res, added->created ? 201 : 200, j);
        return {};
    }

    Status list(Call& c) {
        store::ListRequest r;
        r.filters = filters_from_query(c.req);
        if (auto ok = restrict_scopes(c.who, r.filters); !ok) return ok;
        auto limit = int_param(c.req, "limit", r.limit);
        if (!limit) return std::unexpected(limit.error());
        r.limit = *limit;
        r.cursor = c.req.get_param_value("cursor");
        auto page = store.list(r);
        if (!page) return std::unexpected(page.error());
        json entries = json::array();
        for (const auto& e : page->entries) entries.push_back(store::to_json(e));
        json j = {{"entries", entries}};
        j["next_cursor"] = page->next_cursor.empty() ? json(nullptr) : json(page->next_cursor);
        send(c.res, 200, j);
        return {};
    }

    store::Filters within(const Call& c) { return store::Filters{c.who.scopes, {}, {}, {}, {}}; }

    Status get(Call& c) {
        auto entry = store.get(c.req.matches[1].str(), within(c));
        if (!entry) return std::unexpected(entry.error());
        send(c.res, 200, store::to_json(*entry));
        return {};
    }

    Status patch(Call& c) {
        auto body = body_object(c);
        if (!body) return std::unexpected(body.error());
        const json& j = *body;
        if (auto ok = only_fields(j, {"content", "metadata", "tags", "source", "author"}); !ok)
            return ok;
        store::Patch p;
        if (j.contains("content")) {
            if (!j["content"].is_string()) return invalid("content must be a string");
            p.content = j["content"].get<std::string>();
        }
        if (j.contains("metadata")) {
            if (!j["metadata"].is_object()) return invalid("metadata must be a JSON object");
            p.metadata = j["metadata"];
        }
        if (j.contains("tags")) {
            auto tags = string_list(j["tags"], "tags");
            if (!tags || !j["tags"].is_array()) return invalid("tags must be an array of strings");
            p.tags = std::move(*tags);
        }
        for (auto [name, target] : {std::pair{"source", &p.source}, {"author", &p.author}}) {
            if (!j.contains(name)) continue;
            if (j[name].is_null()) {
                *target = std::optional<std::string>{};
            } else if (j[name].is_string()) {
                *target = j[name].get<std::string>();
            } else {
                return invalid(fmt::format("{} must be a string or null", name));
            }
        }
        auto entry = store.update(c.req.matches[1].str(), p, within(c));
        if (!entry) return std::unexpected(entry.error());
        send(c.res, 200, store::to_json(*entry));
        return {};
    }

    Status remove(Call& c) {
        if (auto ok = store.remove(c.req.matches[1].str(), within(c)); !ok) return ok;
        c.res.status = 204;
        return {};
    }

    Status search(Call& c) {
        auto body = body_object(c);
        if (!body) return std::unexpected(body.error());
        const json& j = *body;
        if (auto ok =
                only_fields(j, {"query", "k", "mode", "filters", "min_similarity", "ef_search"});
            !ok)
            return ok;
        store::SearchRequest r;
        if (!j.contains("query") || !j["query"].is_string())
            return invalid("query is required and must be a string");
        r.query = j["query"].get<std::string>();
        if (j.contains("k") && !j["k"].is_null()) {
            auto k = int_field(j["k"], "k");
            if (!k) return std::unexpected(k.error());
            r.k = *k;
            if (r.k < 1) return invalid("k must be at least 1");
        }
        if (j.contains("ef_search") && !j["ef_search"].is_null()) {
            auto ef = int_field(j["ef_search"], "ef_search");
            if (!ef) return std::unexpected(ef.error());
            if (*ef < 1 || *ef > 1000) return invalid("ef_search must be between 1 and 1000");
            r.ef_search = *ef;
        }
        if (j.contains("mode") && !j["mode"].is_null()) {
            if (!j["mode"].is_string()) return invalid("mode must be vector, text or hybrid");
            auto mode = store::parse_mode(j["mode"].get<std::string>());
            if (!mode) return std::unexpected(mode.error());
            r.mode = *mode;
        }
        if (j.contains("min_similarity") && !j["min_similarity"].is_null()) {
            if (!j["min_similarity"].is_number()) return invalid("min_similarity must be a number");
            r.min_similarity = j["min_similarity"].get<double>();
            if (!(r.min_similarity >= -1.0 && r.min_similarity <= 1.0))
                return invalid("min_similarity must be between -1 and 1");
        }
        if (j.contains("filters") && !j["filters"].is_null()) {
            if (auto ok = filters_from_json(j["filters"], r.filters); !ok) return ok;
        }
        if (auto ok = restrict_scopes(c.who, r.filters); !ok) return ok;
        auto start = Clock::now();
        std::string degraded;
        auto hits = store.search(r, &degraded);
        if (!hits) return std::unexpected(hits.error());
        metrics.search(store::to_string(r.mode.value_or(
                           store::parse_mode(config.search.mode).value_or(store::Mode::hybrid))),
                       std::chrono::duration<double>(Clock::now() - start).count(),
                       !degraded.empty());
        json results = json::array();
        for (const auto& h : *hits) results.push_back(store::to_json(h));
        json answer = {{"results", results}};
        if (!degraded.empty()) answer["degraded"] = degraded;
        send(c.res, 200, answer);
        return {};
    }

    Status stats(Call& c) {
        auto s = store.stats();
        if (!s) return std::unexpected(s.error());
        json scopes = json::array();
        long long total = 0;
        for (const auto& scope : s->scopes) {
            if (!c.who.may_use_scope(scope.scope)) continue;
            scopes.push_back({{"scope", scope.scope}, {"entries", scope.entries}});
            total += scope.entries;
        }
        send(c.res, 200,
             {{"entries", total},
              {"scopes", scopes},
              {"table_size", s->table_size},
              {"index_size", s->index_size},
              {"embedding_model", s->embedding_model}});
        return {};
    }

    Status reindex(Call& c) {
        if (!c.who.scopes.empty())
            return fail(ErrorCode::forbidden, "a scope-bound key may not rebuild the shared index");
        if (auto ok = store.reindex(); !ok) return ok;
        send(c.res, 200, {{"status", "rebuilt"}});
        return {};
    }

    // The body streams through a pipe into the same import path the CLI uses, so memory stays
    // flat whatever the size.
    Status import(Call& c) {
        store::ImportOptions options;
        options.default_scope = c.req.has_param("scope") ? c.req.get_param_value("scope")
                                : c.who.scopes.empty()   ? std::string()
                                                         : c.who.scopes.front();
        options.allowed_scopes = c.who.scopes;
        if (!options.default_scope.empty()) {
            if (auto ok = allowed_scopes(c.who, {options.default_scope}); !ok)
                return std::unexpected(ok.error());
        }
        int fds[2];
        if (pipe(fds) != 0) return fail(ErrorCode::internal, "cannot create a pipe");
        Result<store::ImportReport> report = fail(ErrorCode::internal, "import did not run");
        std::thread reader_thread([&] {
            __gnu_cxx::stdio_filebuf<char> buf(fds[0], std::ios::in);
            std::istream in(&buf);
            report = store.import_jsonl(in, options);
            // Drain what the client still sends after a stopped import, so the writer finishes.
            char sink[65536];
            while (::read(fds[0], sink, sizeof sink) > 0) {
            }
        });
        bool write_failed = false;
        // httplib bounds bodies with a Content-Length; chunked ones are counted here.
        std::uint64_t received = 0;
        bool too_large = false;
        bool complete = (*c.reader)([&](const char* data, std::size_t size) {
            received += size;
            if (received > static_cast<std::uint64_t>(config.server.max_import_bytes)) {
                too_large = true;
                return false;
            }
            while (size > 0 && !write_failed) {
                ssize_t n = ::write(fds[1], data, size);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) {
                    write_failed = true;
                    break;
                }
                data += n;
                size -= static_cast<std::size_t>(n);
            }
            return !write_failed;
        });
        ::close(fds[1]);
        reader_thread.join();  // the filebuf closed fds[0]
        // A body that was cut off (too large, or the client went away) must not be reported as
        // a whole import.
        if (!complete && !write_failed) {
            std::string partly =
                report && report->added > 0
                    ? fmt::format(" ({} entries before that point were imported)", report->added)
                    : "";
            if (too_large || c.res.status == 413) {
                send_error(c.res, 413, "payload_too_large",
                           fmt::format("import body is larger than {} bytes{}",
                                       config.server.max_import_bytes, partly),
                           "split the file, or raise server.max_import_bytes");
                return {};
            }
            return invalid("the request body could not be read completely" + partly,
                           "send the whole NDJSON body; re-sending it skips what was imported");
        }
        if (!report) return std::unexpected(report.error());
        json rejected = json::array();
        for (const auto& r : report->rejected)
            rejected.push_back({{"line", r.line}, {"reason", r.reason}});
        send(c.res, 200,
             {{"lines", report->lines},
              {"added", report->added},
              {"duplicates", report->duplicates},
              {"rejected", rejected}});
        return {};
    }

    Status export_ndjson(Call& c) {
        store::Filters f = filters_from_query(c.req);
        if (auto ok = restrict_scopes(c.who, f); !ok) return ok;
        // Checked before streaming starts: after that the status is already 200.
        if (auto ok = store::check_filters(f); !ok) return ok;
        std::string with = c.req.get_param_value("embeddings");
        if (!with.empty() && with != "true" && with != "false")
            return invalid("query parameter embeddings must be true or false");
        bool embeddings = with != "false";
        c.res.status = 200;
        c.res.set_chunked_content_provider(
            std::string(kNdjson), [this, f, embeddings](std::size_t, httplib::DataSink& sink) {
                // Headers are already sent: a failure mid-way ends the stream early, and a
                // final line says so, so clients never mistake a cut export for a whole one.
                SinkBuf buf(sink);
                std::ostream out(&buf);
                auto written = store.export_jsonl(out, f, embeddings);
                if (!written) {
                    json e = {{"error",
                               {{"code", to_string(written.error().code)},
                                {"message", written.error().message}}}};
                    out << e.dump() << "\n";
                    log::error("Export failed", {{"error", written.error().message}});
                }
                out.flush();
                sink.done();
                return true;
            });
        return {};
    }

    // A question for the agent; with "stream": true the answer comes as server-sent events:
    // `text` deltas, `tool` calls, then `done` with the whole answer (or `error`).
    Status ask(Call& c) {
        auto body = body_object(c);
        if (!body) return std::unexpected(body.error());
        const json& j = *body;
        if (auto ok = only_fields(j, {"question", "scope", "history", "stream"}); !ok) return ok;
        agent::Question q;
        if (!j.contains("question") || !j["question"].is_string())
            return invalid("question is required and must be a string");
        q.text = j["question"].get<std::string>();
        q.caller.scopes = c.who.scopes;
        q.caller.may_write = c.who.may(Role::write);
        if (j.contains("scope") && !j["scope"].is_null()) {
            if (!j["scope"].is_string()) return invalid("scope must be a string");
            auto scopes = allowed_scopes(c.who, {j["scope"].get<std::string>()});
            if (!scopes) return std::unexpected(scopes.error());
            q.caller.scopes = *scopes;
            q.caller.default_scope = scopes->front();
        }
        if (j.contains("history") && !j["history"].is_null()) {
            const json& h = j["history"];
            if (!h.is_array() || h.size() > 100)
                return invalid("history must be an array of at most 100 turns");
            for (const auto& turn : h) {
                if (!turn.is_object() || !turn.contains("role") || !turn.contains("content") ||
                    !turn["content"].is_string() ||
                    (turn["role"] != "user" && turn["role"] != "assistant"))
                    return invalid(
                        "each history turn is {\"role\": \"user\"|\"assistant\", \"content\": "
                        "string}");
                q.history.push_back({turn["role"] == "user" ? llm::Message::Role::user
                                                            : llm::Message::Role::assistant,
                                     turn["content"].get<std::string>(),
                                     {},
                                     {}});
            }
        }
        bool stream = false;
        if (j.contains("stream") && !j["stream"].is_null()) {
            if (!j["stream"].is_boolean()) return invalid("stream must be true or false");
            stream = j["stream"].get<bool>();
        }
        if (!stream) {
            auto answer = agent->ask(q);
            if (!answer) return std::unexpected(answer.error());
            send(c.res, 200, agent::to_json(*answer));
            return {};
        }
        c.res.status = 200;
        c.res.set_header("Cache-Control", "no-cache");
        c.res.set_chunked_content_provider(
            "text/event-stream", [this, q](std::size_t, httplib::DataSink& sink) {
                // is_writable() sees a client that hung up (its FIN), where the first write
                // after it would still succeed; the agent then stops instead of paying the model.
                auto event = [&](std::string_view name, const json& data) {
                    std::string text =
                        fmt::format("event: {}\ndata: {}\n\n", name,
                                    data.dump(-1, ' ', false, json::error_handler_t::replace));
                    return sink.is_writable() && sink.write(text.data(), text.size());
                };
                agent::Events events;
                events.on_text = [&](std::string_view delta) {
                    return event("text", {{"text", std::string(delta)}});
                };
                events.on_tool = [&](const std::string& tool, const json& arguments) {
                    return event("tool", {{"name", tool}, {"arguments", arguments}});
                };
                auto answer = agent->ask(q, &events);
                if (answer) {
                    event("done", agent::to_json(*answer));
                } else {
                    event("error", {{"error",
                                     {{"code", to_string(answer.error().code)},
                                      {"message", answer.error().message}}}});
                }
                sink.done();
                return true;
            });
        return {};
    }

    void register_routes() {
        const std::string v1 = "/api/v1";
        const std::string id = "/([0-9a-fA-F-]{1,64})";
        route("GET", "/health", "/health", std::nullopt, &Impl::health);
        route("GET", "/ready", "/ready", std::nullopt, &Impl::ready);
        route("GET", "/openapi.json", "/openapi.json", std::nullopt, &Impl::openapi);
        route("GET", v1 + "/openapi.json", "/api/v1/openapi.json", std::nullopt, &Impl::openapi);
        route("GET", "/metrics", "/metrics", Role::admin, &Impl::metrics_text);
        route("POST", v1 + "/memories", "/api/v1/memories", Role::write, &Impl::save);
        route("GET", v1 + "/memories", "/api/v1/memories", Role::read, &Impl::list);
        route("GET", v1 + "/memories:export", "/api/v1/memories:export", Role::admin,
              &Impl::export_ndjson);
        route("GET", v1 + "/memories" + id, "/api/v1/memories/{id}", Role::read, &Impl::get);
        route("PATCH", v1 + "/memories" + id, "/api/v1/memories/{id}", Role::write, &Impl::patch);
        route("DELETE", v1 + "/memories" + id, "/api/v1/memories/{id}", Role::write, &Impl::remove);
        route("POST", v1 + "/search", "/api/v1/search", Role::read, &Impl::search);
        route("GET", v1 + "/stats", "/api/v1/stats", Role::admin, &Impl::stats);
        route("POST", v1 + "/reindex", "/api/v1/reindex", Role::admin, &Impl::reindex);
        if (agent) route("POST", v1 + "/ask", "/api/v1/ask", Role::read, &Impl::ask);
        svr.Post(
            v1 + "/memories:import", [this](const httplib::Request& req, httplib::Response& res,
                                            const httplib::ContentReader& reader) {
                handle("/api/v1/memories:import", Role::write, &Impl::import, req, res, &reader);
            });
        // Anything else, and httplib's own refusals (413, 400), as JSON errors.
        svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
            if (!res.body.empty()) return;
            if (res.status == 404) {
                send_error(res, 404, "not_found",
                           fmt::format("no route for {} {}", req.method, req.path),
                           "see GET /openapi.json");
            } else if (res.status == 413) {
                send_error(res, 413, "payload_too_large", "request body too large");
            } else {
                send_error(res, res.status, "bad_request",
                           fmt::format("request refused (HTTP {})", res.status));
            }
        });
        svr.set_exception_handler(
            [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
                std::string what = "unknown";
                try {
                    std::rethrow_exception(ep);
                } catch (const std::exception& e) {
                    what = e.what();
                } catch (...) {
                }
                log::error("Request raised an exception", {{"error", what}});
                send_error(res, 500, "internal", "internal server error");
            });
    }
};

Server::Server(const config::Config& config, store::Store& store, db::Pool& pool, Metrics& metrics,
               agent::Agent* agent)
    : impl_(std::make_unique<Impl>(config, store, pool, metrics, agent)) {
    auto& svr = impl_->svr;
    int workers = config.server.workers;
    svr.new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
    svr.set_payload_max_length(static_cast<std::size_t>(
        std::max(config.server.max_body_bytes, config.server.max_import_bytes)));
    svr.set_read_timeout(config.server.request_timeout, 0);
    svr.set_write_timeout(config.server.request_timeout, 0);
    svr.set_keep_alive_timeout(5);
    // cpp-httplib closes a connection after 5 requests by default: under load every client then
    // reconnects constantly, and Debian's build listens with a backlog of 5, so a starved
    // acceptor drops handshakes (seen as clients' read errors in the 32-client load test).
    svr.set_keep_alive_max_count(100);
    // Small JSON answers must not wait for the peer's delayed ACK (~40 ms per request).
    svr.set_tcp_nodelay(true);
    impl_->register_routes();
}

Server::~Server() = default;

Result<int> Server::bind() {
    const auto& c = impl_->config;
    int port = c.server.port == 0
                   ? impl_->svr.bind_to_any_port(c.server.host)
                   : (impl_->svr.bind_to_port(c.server.host, c.server.port) ? c.server.port : -1);
    if (port < 0)
        return fail(ErrorCode::unavailable,
                    fmt::format("cannot listen on {}:{}", c.server.host, c.server.port),
                    "is another process using the port? change server.port or server.host");
    raise_listen_backlog(port);
    return port;
}

void Server::run() {
    impl_->svr.listen_after_bind();
}

void Server::stop() {
    impl_->svr.stop();
}

}  // namespace ka::http
