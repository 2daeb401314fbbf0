// `knowledge-agent doctor`: the production guide's verification checklist and monitoring
// figures, run against the configured database, each item with its fix.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "config/config.h"

namespace ka::doctor {

enum class Status { pass, warn, fail, info, skip };
std::string_view to_string(Status status);

struct Check {
    std::string id;     // stable key for --json, e.g. "server_version"
    std::string title;  // human label
    Status status = Status::skip;
    bool required = false;  // a failing required check makes doctor exit non-zero
    std::string value;      // what was found
    std::string fix;        // what to do when not passing
};

struct Report {
    std::string target;  // redacted
    std::vector<Check> checks;
    std::vector<std::pair<std::string, std::string>> monitoring;  // name, value
    std::vector<std::pair<std::string, std::string>> tuning;      // setting, "value (guide: ...)"
    bool ok() const;                                              // no required check failed
};

// Runs every check; never throws and never changes the database.
Report run(const config::Config& config);

std::string render_text(const Report& report);
std::string render_json(const Report& report);

}  // namespace ka::doctor
