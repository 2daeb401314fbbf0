// `knowledge-agent mcp`: the memory tools for an MCP client (Claude Desktop, IDEs, agents) over
// stdin/stdout. stdout belongs to the protocol: before anything else runs, the original stdout
// is kept on a private descriptor for JSON-RPC messages and descriptor 1 is pointed at stderr,
// so a stray write (a library, a child process, a log line) can never corrupt the stream.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <streambuf>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "agent/tools.h"
#include "cli/common.h"
#include "log/log.h"
#include "mcp/server.h"

namespace ka::cli {
namespace {

// A buffered std::streambuf writing to a file descriptor.
class FdOutBuf : public std::streambuf {
  public:
    explicit FdOutBuf(int fd) : fd_(fd) { setp(buffer_, buffer_ + sizeof buffer_); }
    ~FdOutBuf() override { (void)flush(); }
    FdOutBuf(const FdOutBuf&) = delete;
    FdOutBuf& operator=(const FdOutBuf&) = delete;

  protected:
    int_type overflow(int_type c) override {
        if (!flush()) return traits_type::eof();
        if (!traits_type::eq_int_type(c, traits_type::eof())) {
            *pptr() = traits_type::to_char_type(c);
            pbump(1);
        }
        return traits_type::not_eof(c);
    }
    int sync() override { return flush() ? 0 : -1; }

  private:
    bool flush() {
        const char* p = pbase();
        while (p < pptr()) {
            ssize_t n = ::write(fd_, p, static_cast<std::size_t>(pptr() - p));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            p += n;
        }
        setp(buffer_, buffer_ + sizeof buffer_);
        return true;
    }

    int fd_;
    char buffer_[64 * 1024];
};

int run_mcp(const Globals& g, const std::optional<std::string>& scope, bool read_only) {
    std::cout.flush();
    int protocol_fd = ::fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
    if (protocol_fd < 0) {
        return report("Cannot serve MCP",
                      Error{ErrorCode::unavailable,
                            fmt::format("stdout is not usable: {}", std::strerror(errno)),
                            "run `knowledge-agent mcp` from an MCP client, which connects to its "
                            "stdin and stdout",
                            {}});
    }
    ::dup2(STDERR_FILENO, STDOUT_FILENO);

    int exit = 0;
    auto services = open_services(g, exit);
    if (!services) {
        ::close(protocol_fd);
        return exit;
    }
    // A client that goes away shows up as a failed write, not a killed process. (Set after
    // start-up, so an embedded cluster started above does not inherit it.)
    std::signal(SIGPIPE, SIG_IGN);
    agent::Caller caller;
    caller.may_write = !read_only;
    if (scope) {
        // The store validates scope names in filters; a one-row list checks this one up front.
        store::ListRequest probe;
        probe.filters.scopes = {*scope};
        probe.limit = 1;
        if (auto ok = services->store->list(probe); !ok) {
            ::close(protocol_fd);
            return report("Invalid --scope", ok.error());
        }
        caller.scopes = {*scope};
        caller.default_scope = *scope;
    }
    log::info("MCP server ready on stdin/stdout",
              {{"scope", scope ? *scope : "all"},
               {"saves_to", read_only ? "none (read-only)"
                            : scope   ? *scope
                                      : services->config.store.default_scope},
               {"protocol_versions",
                fmt::format("{}", fmt::join(mcp::supported_protocol_versions(), ","))}});

    int rc = 0;
    {
        FdOutBuf buffer(protocol_fd);
        std::ostream out(&buffer);
        rc = mcp::serve(std::cin, out, *services->store, caller);
    }
    ::close(protocol_fd);
    if (rc == 0) log::info("MCP client closed the connection; stopping");
    return rc;
}

}  // namespace

void add_mcp_command(CLI::App& app, const Globals& g, int& exit) {
    struct State {
        std::optional<std::string> scope;
        bool read_only = false;
    };
    auto st = std::make_shared<State>();
    auto* cmd = app.add_subcommand(
        "mcp", "serve search_memory and save_to_memory to an MCP client over stdin/stdout");
    cmd->add_option("--scope", st->scope,
                    "limit searches and saves to this scope (default: search every scope, save "
                    "to store.default_scope)");
    cmd->add_flag("--read-only", st->read_only, "offer search_memory only; saves are refused");
    cmd->callback([&g, &exit, st] { exit = run_mcp(g, st->scope, st->read_only); });
}

}  // namespace ka::cli
