// Typed errors that travel as values across module boundaries.
#pragma once

#include <expected>
#include <string>
#include <string_view>

namespace ka {

// What the caller should do about an error; each code has one documented process exit code.
enum class ErrorCode {
    invalid_argument,      // bad input from a user: fix the input
    not_found,             // the thing asked for does not exist
    conflict,              // the request clashes with existing state
    config,                // configuration is wrong: fix config.yaml or the environment
    unavailable,           // database or provider unreachable: retry later or fix connectivity
    permission_denied,     // the database user lacks a privilege
    forbidden,             // the caller's API key may not do this (role or scope)
    pgvector_missing,      // pgvector is not installed on the server
    pgvector_not_created,  // installed but not created in the database, and we may not create it
    pgvector_too_old,      // installed version has no HNSW
    postgres_too_old,      // server older than the supported minimum
    migration,             // schema migrations failed, are pending, or were tampered with
    check_failed,          // `doctor` found a required item failing
    bad_gateway,           // a provider (embeddings, LLM) answered something unusable
    internal,              // a bug or an unexpected server answer
};

struct Error {
    ErrorCode code = ErrorCode::internal;
    std::string message;  // one line: what went wrong
    std::string hint;     // what to change to fix it (may be empty)
    std::string detail;   // longer explanation printed after the message (may be empty)
};

template <class T>
using Result = std::expected<T, Error>;
using Status = std::expected<void, Error>;

inline std::unexpected<Error> fail(ErrorCode code, std::string message, std::string hint = {}) {
    return std::unexpected(Error{code, std::move(message), std::move(hint), {}});
}

std::string_view to_string(ErrorCode code);

// Process exit code for an error; the table is documented in docs/cli.md.
int exit_code(ErrorCode code);

}  // namespace ka
