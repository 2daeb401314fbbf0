// Test support for `knowledge-agent serve`: the real binary as a background child process with
// its output captured, stopped by a signal, and its exit status collected.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace ka::test {

class ServeProcess {
  public:
    // Starts `knowledge-agent serve <args>` with a clean environment (no KNOWLEDGE_AGENT_*,
    // no POSTGRES_URL, KNOWLEDGE_AGENT_CONFIG=/dev/null) plus `env` (NAME=value entries).
    // stdout and stderr go to one file, read back with output().
    ServeProcess(const std::vector<std::string>& args, const std::vector<std::string>& env);
    // Kills the process (SIGKILL) when it is still running.
    ~ServeProcess();
    ServeProcess(const ServeProcess&) = delete;
    ServeProcess& operator=(const ServeProcess&) = delete;

    // Waits until the log names the listening address and GET /health answers 200. False when
    // the process exits or the time runs out first.
    bool wait_ready(std::chrono::milliseconds timeout = std::chrono::seconds(60));
    // The port from the "listening" log line (valid after wait_ready).
    int port() const { return port_; }

    void signal(int sig);
    // Waits for the process to end: its exit code, or 128 + signal when a signal killed it;
    // nullopt when it is still running after `timeout`.
    std::optional<int> wait_exit(std::chrono::milliseconds timeout);
    bool running();

    // Everything the process wrote so far (stdout and stderr interleaved).
    std::string output() const;
    pid_t pid() const { return pid_; }

  private:
    pid_t pid_ = -1;
    std::optional<int> status_;
    int port_ = 0;
    std::filesystem::path log_;
};

// True when a TCP connection to 127.0.0.1:port is refused (nothing listening).
bool connection_refused(int port);

}  // namespace ka::test
