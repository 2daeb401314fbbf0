#include "support/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <httplib.h>

#include "support/pg.h"

extern char** environ;

namespace ka::test {
namespace {

using namespace std::chrono_literals;

bool dropped(const std::string& entry) {
    return entry.starts_with("KNOWLEDGE_AGENT_") || entry.starts_with("POSTGRES_URL=") ||
           entry.starts_with("XDG_CONFIG_HOME=");
}

}  // namespace

ServeProcess::ServeProcess(const std::vector<std::string>& args,
                           const std::vector<std::string>& env) {
    log_ = unique_dir("serve").string() + ".log";
    std::vector<std::string> argv = {KA_BINARY, "serve"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<std::string> envs;
    for (char** e = environ; *e; ++e) {
        if (!dropped(*e)) envs.emplace_back(*e);
    }
    envs.emplace_back("KNOWLEDGE_AGENT_CONFIG=/dev/null");
    envs.emplace_back("XDG_CONFIG_HOME=/nonexistent");
    envs.insert(envs.end(), env.begin(), env.end());

    std::vector<char*> argp;
    for (auto& a : argv) argp.push_back(a.data());
    argp.push_back(nullptr);
    std::vector<char*> envp;
    for (auto& e : envs) envp.push_back(e.data());
    envp.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    // The child starts with no blocked signals and default dispositions, whatever the test
    // process set up.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    sigset_t defaults;
    sigemptyset(&defaults);
    for (int s : {SIGTERM, SIGINT, SIGPIPE, SIGHUP}) sigaddset(&defaults, s);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int rc = posix_spawn(&pid_, argp[0], &actions, &attr, argp.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0)
        throw std::runtime_error(std::string("cannot start knowledge-agent: ") + strerror(rc));
}

ServeProcess::~ServeProcess() {
    if (running()) {
        ::kill(pid_, SIGKILL);
        (void)wait_exit(10s);
    }
    std::error_code ec;
    std::filesystem::remove(log_, ec);
}

bool ServeProcess::wait_ready(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    static const std::regex address(R"(http://[^ :"]+:([0-9]+))");
    while (std::chrono::steady_clock::now() < deadline) {
        if (!running()) return false;
        if (port_ == 0) {
            std::istringstream out(output());
            for (std::string line; port_ == 0 && std::getline(out, line);) {
                std::smatch m;
                if (line.find("listening") != std::string::npos &&
                    std::regex_search(line, m, address))
                    port_ = std::stoi(m[1].str());
            }
        }
        if (port_ != 0) {
            httplib::Client client("127.0.0.1", port_);
            client.set_connection_timeout(2s);
            client.set_read_timeout(5s);
            if (auto res = client.Get("/health"); res && res->status == 200) return true;
        }
        std::this_thread::sleep_for(20ms);
    }
    return false;
}

void ServeProcess::signal(int sig) {
    if (!status_) ::kill(pid_, sig);
}

bool ServeProcess::running() {
    if (status_) return false;
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == 0) return true;
    if (r == pid_) {
        status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    } else {
        status_ = -1;  // not our child any more: nothing to wait for
    }
    return false;
}

std::optional<int> ServeProcess::wait_exit(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (running()) {
        if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
        std::this_thread::sleep_for(10ms);
    }
    return status_;
}

std::string ServeProcess::output() const {
    std::ifstream in(log_);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

bool connection_refused(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    bool refused = rc != 0 && errno == ECONNREFUSED;
    ::close(fd);
    return refused;
}

}  // namespace ka::test
