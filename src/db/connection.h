// RAII wrappers over libpq, and the one place SQLSTATEs and connection failures are classified.
#pragma once

#include <libpq-fe.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/error.h"

namespace ka::db {

// Where to connect: a libpq conninfo (URI or key=value) plus a redacted label for messages.
struct Target {
    std::string conninfo;
    std::string label;      // redacted, for humans
    bool embedded = false;  // the cluster knowledge-agent manages itself
};

class PgResult {
  public:
    explicit PgResult(PGresult* r) : result_(r, &PQclear) {}
    int rows() const { return PQntuples(result_.get()); }
    int columns() const { return PQnfields(result_.get()); }
    bool is_null(int row, int col) const { return PQgetisnull(result_.get(), row, col) != 0; }
    std::string_view get(int row, int col) const {
        return {PQgetvalue(result_.get(), row, col),
                static_cast<std::size_t>(PQgetlength(result_.get(), row, col))};
    }
    std::string text(int row, int col) const { return std::string(get(row, col)); }
    long long integer(int row, int col) const;
    bool boolean(int row, int col) const { return get(row, col) == "t"; }
    const PGresult* raw() const { return result_.get(); }

  private:
    std::unique_ptr<PGresult, decltype(&PQclear)> result_;
};

// A statement parameter: text by default, or binary (e.g. a pgvector `vector` in its wire
// format, which avoids printing and parsing 768 floats as text). nullopt is SQL NULL.
struct Param {
    std::optional<std::string> value;
    bool binary = false;
    Param(std::nullopt_t) {}
    Param(std::string v) : value(std::move(v)) {}
    Param(const char* v) : value(v) {}
    Param(std::optional<std::string> v) : value(std::move(v)) {}
    static Param bytes(std::string v) {
        Param p(std::move(v));
        p.binary = true;
        return p;
    }
};
using Params = std::vector<Param>;

class Connection {
  public:
    // Connects; connect_timeout applies unless the conninfo sets its own.
    static Result<Connection> open(const Target& target, int connect_timeout_seconds);

    // Runs SQL with the simple protocol (several statements allowed, no parameters).
    Result<PgResult> exec(std::string_view sql);
    // Runs one statement with parameters ($1, $2, ...).
    Result<PgResult> exec(std::string_view sql, const Params& params);
    // Same, as a statement prepared once per connection under `name`.
    Result<PgResult> exec_prepared(const std::string& name, std::string_view sql,
                                   const Params& params);
    // Sets a session setting (e.g. hnsw.ef_search), skipping the round trip when unchanged.
    Status set(const std::string& name, const std::string& value);

    PGconn* raw() const { return conn_.get(); }
    const Target& target() const { return target_; }
    bool healthy() const { return conn_ && PQstatus(conn_.get()) == CONNECTION_OK; }

  private:
    Connection(PGconn* c, Target t) : conn_(c, &PQfinish), target_(std::move(t)) {}
    std::unique_ptr<PGconn, decltype(&PQfinish)> conn_;
    Target target_;
    std::unordered_set<std::string> prepared_;
    std::unordered_map<std::string, std::string> settings_;
};

// Called with the seconds every statement took (for metrics). Set once, before any query runs.
void set_statement_observer(void (*observer)(double seconds));

// Classifies a failed statement by SQLSTATE (retryable, conflict, invalid, permission...).
Error statement_error(const PGresult* result, PGconn* conn);
ErrorCode classify_sqlstate(std::string_view sqlstate);

// Explains a failed connection attempt: libpq's reason and what to change.
Error connection_error(std::string_view libpq_message, const Target& target);

// Quotes an identifier / literal for the rare SQL that cannot take parameters (DDL).
std::string quote_ident(std::string_view name);
std::string quote_literal(std::string_view value);

}  // namespace ka::db
