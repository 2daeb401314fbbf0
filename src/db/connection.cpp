#include "db/connection.h"

#include <charconv>
#include <chrono>

#include <fmt/format.h>

#include "core/redact.h"

namespace ka::db {
namespace {

std::string trimmed(std::string_view s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
    return std::string(s);
}

bool contains(std::string_view haystack, std::string_view needle) {
    return haystack.find(needle) != std::string_view::npos;
}

}  // namespace

long long PgResult::integer(int row, int col) const {
    std::string_view v = get(row, col);
    long long out = 0;
    std::from_chars(v.data(), v.data() + v.size(), out);
    return out;
}

Result<Connection> Connection::open(const Target& target, int connect_timeout_seconds) {
    // connect_timeout comes first so a value inside the conninfo (expanded from dbname) wins.
    std::string timeout = std::to_string(connect_timeout_seconds);
    const char* keys[] = {"connect_timeout", "fallback_application_name", "dbname", nullptr};
    const char* values[] = {timeout.c_str(), "knowledge-agent", target.conninfo.c_str(), nullptr};
    PGconn* conn = PQconnectdbParams(keys, values, 1);
    if (!conn) return fail(ErrorCode::unavailable, "out of memory while connecting to PostgreSQL");
    if (PQstatus(conn) != CONNECTION_OK) {
        Error error = connection_error(PQerrorMessage(conn), target);
        PQfinish(conn);
        return std::unexpected(error);
    }
    // Notices (e.g. "extension already exists, skipping") are not for end users.
    PQsetNoticeProcessor(
        conn, [](void*, const char*) {}, nullptr);
    return Connection(conn, target);
}

namespace {

struct Wire {
    std::vector<const char*> values;
    std::vector<int> lengths;
    std::vector<int> formats;
    explicit Wire(const Params& params) {
        for (const auto& p : params) {
            values.push_back(p.value ? p.value->data() : nullptr);
            lengths.push_back(p.value ? static_cast<int>(p.value->size()) : 0);
            formats.push_back(p.binary ? 1 : 0);
        }
    }
    int count() const { return static_cast<int>(values.size()); }
};

void (*statement_observer)(double) = nullptr;

// Times one libpq call for the statement observer.
template <class F>
PGresult* timed(F&& call) {
    if (!statement_observer) return call();
    auto start = std::chrono::steady_clock::now();
    PGresult* r = call();
    statement_observer(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return r;
}

Result<PgResult> checked(PGresult* raw, PGconn* conn) {
    PgResult result(raw);
    auto status = PQresultStatus(result.raw());
    if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return result;
    return std::unexpected(statement_error(result.raw(), conn));
}

}  // namespace

Result<PgResult> Connection::exec(std::string_view sql) {
    return checked(timed([&] { return PQexec(conn_.get(), std::string(sql).c_str()); }),
                   conn_.get());
}

Result<PgResult> Connection::exec(std::string_view sql, const Params& params) {
    Wire wire(params);
    return checked(timed([&] {
                       return PQexecParams(conn_.get(), std::string(sql).c_str(), wire.count(),
                                           nullptr, wire.values.data(), wire.lengths.data(),
                                           wire.formats.data(), 0);
                   }),
                   conn_.get());
}

Result<PgResult> Connection::exec_prepared(const std::string& name, std::string_view sql,
                                           const Params& params) {
    if (!prepared_.contains(name)) {
        auto made =
            checked(PQprepare(conn_.get(), name.c_str(), std::string(sql).c_str(), 0, nullptr),
                    conn_.get());
        if (!made) return made;
        prepared_.insert(name);
    }
    Wire wire(params);
    return checked(timed([&] {
                       return PQexecPrepared(conn_.get(), name.c_str(), wire.count(),
                                             wire.values.data(), wire.lengths.data(),
                                             wire.formats.data(), 0);
                   }),
                   conn_.get());
}

void set_statement_observer(void (*observer)(double seconds)) {
    statement_observer = observer;
}

Status Connection::set(const std::string& name, const std::string& value) {
    auto it = settings_.find(name);
    if (it != settings_.end() && it->second == value) return {};
    auto r = exec("SELECT set_config($1, $2, false)", {name, value});
    if (!r) return std::unexpected(r.error());
    settings_[name] = value;
    return {};
}

ErrorCode classify_sqlstate(std::string_view state) {
    if (state.size() != 5) return ErrorCode::unavailable;  // no SQLSTATE: the connection broke
    std::string_view cls = state.substr(0, 2);
    if (cls == "08" || cls == "53" || cls == "57" || state == "40001" || state == "40P01" ||
        state == "25006" || state == "55P03" || state == "58030") {
        // connection lost, out of resources (disk full, too many connections), shutting down,
        // serialization failure/deadlock, read-only transaction, lock timeout, I/O error
        return ErrorCode::unavailable;
    }
    if (state == "23505") return ErrorCode::conflict;
    if (cls == "22" || cls == "23") return ErrorCode::invalid_argument;
    if (state == "42501") return ErrorCode::permission_denied;
    return ErrorCode::internal;
}

Error statement_error(const PGresult* result, PGconn* conn) {
    const char* state = result ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
    const char* primary = result ? PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY) : nullptr;
    const char* hint = result ? PQresultErrorField(result, PG_DIAG_MESSAGE_HINT) : nullptr;
    std::string message = primary ? primary : trimmed(PQerrorMessage(conn));
    if (message.empty()) message = "unknown error";
    ErrorCode code = classify_sqlstate(state ? state : "");
    std::string fix = hint ? hint : "";
    if (fix.empty()) {
        std::string_view s = state ? state : "";
        if (s == "25006")
            fix =
                "the database is read-only (default_transaction_read_only or a standby); point "
                "postgres.url at the primary";
        else if (s == "53100")
            fix = "the database server is out of disk space; free space on its data volume";
        else if (s == "42501")
            fix =
                "grant the privilege to the database user (see docs/postgresql.md, User "
                "Permissions)";
        else if (code == ErrorCode::unavailable)
            fix = "PostgreSQL is unavailable; retry when it is back";
    }
    return Error{code,
                 redact(fmt::format("PostgreSQL error{}: {}",
                                    state ? fmt::format(" {}", state) : "", message)),
                 redact(fix),
                 {}};
}

Error connection_error(std::string_view libpq_message, const Target& target) {
    std::string reason = redact(trimmed(libpq_message));
    std::string hint;
    if (contains(reason, "password authentication failed") ||
        contains(reason, "no password supplied") || contains(reason, "authentication failed")) {
        hint =
            "check the user name and password in postgres.url (or POSTGRES_URL); percent-encode "
            "special characters in the password";
    } else if (contains(reason, "no pg_hba.conf entry")) {
        hint =
            "the server's pg_hba.conf does not admit this client; add a host/hostssl rule for it, "
            "or connect with sslmode=require if only SSL connections are allowed";
    } else if (contains(reason, "certificate") || contains(reason, "SSL") ||
               contains(reason, "ssl")) {
        hint =
            "check sslmode and sslrootcert in postgres.url: verify-full needs the CA certificate "
            "that signed the server's certificate (sslrootcert=/path/ca.crt) and a host name that "
            "matches it; the server must have ssl=on for sslmode=require";
    } else if (contains(reason, "timeout expired")) {
        hint =
            "the server did not answer within connect_timeout; check the host, port, firewall or "
            "security group, or raise postgres.connect_timeout";
    } else if (contains(reason, "could not translate host name")) {
        hint = "the host name in postgres.url does not resolve; check it for typos";
    } else if (contains(reason, "does not exist") && contains(reason, "database")) {
        hint =
            "create the database first (createdb knowledge_agent, or CREATE DATABASE "
            "knowledge_agent;)";
    } else if (contains(reason, "role") && contains(reason, "does not exist")) {
        hint = "create the role first (CREATE USER knowledge_agent WITH PASSWORD '...';)";
    } else if (contains(reason, "Connection refused") ||
               contains(reason, "No such file or directory")) {
        hint = target.embedded
                   ? "the embedded cluster is not running; start it with `knowledge-agent db start`"
                   : "no PostgreSQL server listens there; check host and port in postgres.url and "
                     "that the server is running";
    } else if (contains(reason, "too many")) {
        hint =
            "the server has no free connection slots; lower postgres.pool_size or raise "
            "max_connections";
    } else {
        hint = "check postgres.url and that the server is reachable";
    }
    return Error{ErrorCode::unavailable,
                 fmt::format("cannot connect to PostgreSQL at {}: {}", target.label, reason),
                 hint,
                 {}};
}

std::string quote_ident(std::string_view name) {
    std::string out = "\"";
    for (char c : name) {
        if (c == '"') out += '"';
        out += c;
    }
    return out + "\"";
}

std::string quote_literal(std::string_view value) {
    std::string out = "'";
    for (char c : value) {
        if (c == '\'') out += '\'';
        out += c;
    }
    return out + "'";
}

}  // namespace ka::db
