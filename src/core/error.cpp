#include "core/error.h"

namespace ka {

std::string_view to_string(ErrorCode code) {
    switch (code) {
        case ErrorCode::invalid_argument:
            return "invalid_argument";
        case ErrorCode::not_found:
            return "not_found";
        case ErrorCode::conflict:
            return "conflict";
        case ErrorCode::config:
            return "config";
        case ErrorCode::unavailable:
            return "unavailable";
        case ErrorCode::permission_denied:
            return "permission_denied";
        case ErrorCode::forbidden:
            return "forbidden";
        case ErrorCode::pgvector_missing:
            return "pgvector_missing";
        case ErrorCode::pgvector_not_created:
            return "pgvector_not_created";
        case ErrorCode::pgvector_too_old:
            return "pgvector_too_old";
        case ErrorCode::postgres_too_old:
            return "postgres_too_old";
        case ErrorCode::migration:
            return "migration";
        case ErrorCode::check_failed:
            return "check_failed";
        case ErrorCode::bad_gateway:
            return "bad_gateway";
        case ErrorCode::internal:
            return "internal";
    }
    return "internal";
}

int exit_code(ErrorCode code) {
    switch (code) {
        case ErrorCode::invalid_argument:
            return 2;
        case ErrorCode::config:
            return 3;
        case ErrorCode::unavailable:
            return 4;
        case ErrorCode::pgvector_missing:
            return 5;
        case ErrorCode::pgvector_not_created:
            return 6;
        case ErrorCode::pgvector_too_old:
            return 7;
        case ErrorCode::postgres_too_old:
            return 8;
        case ErrorCode::migration:
            return 9;
        case ErrorCode::check_failed:
            return 10;
        case ErrorCode::permission_denied:
            return 11;
        case ErrorCode::not_found:
            return 12;
        case ErrorCode::conflict:
            return 13;
        case ErrorCode::forbidden:
            return 15;
        case ErrorCode::bad_gateway:
            return 16;
        case ErrorCode::internal:
            return 1;
    }
    return 1;
}

}  // namespace ka
