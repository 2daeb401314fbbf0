// Runs an external program and captures its output (used for initdb, pg_ctl, runuser).
#pragma once

#include <string>
#include <vector>

#include "core/error.h"

namespace ka {

struct ProcessResult {
    int exit_code = -1;  // -1 when killed by a signal
    std::string output;  // stdout and stderr interleaved
};

// Runs argv[0] (looked up in PATH when it has no slash) and waits for it. Fails only when the
// program cannot be started; a non-zero exit is reported in ProcessResult.
Result<ProcessResult> run_process(const std::vector<std::string>& argv);

}  // namespace ka
