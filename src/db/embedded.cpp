#include "db/embedded.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <openssl/rand.h>

#include "core/bytes.h"
#include "core/process.h"
#include "log/log.h"

namespace ka::db {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kManagedConf = "knowledge-agent.conf";
constexpr std::string_view kPasswordFile = "knowledge-agent.password";
constexpr std::size_t kMaxSocketPath = 107;  // sizeof(sockaddr_un::sun_path) - 1

Error embedded_error(std::string message, std::string hint = {}) {
    return Error{ErrorCode::unavailable, std::move(message), std::move(hint), {}};
}

int socket_port(const EmbeddedCluster& c) {
    return c.port > 0 ? c.port : kEmbeddedSocketPort;
}

fs::path default_data_dir(bool root) {
    if (root) return "/var/lib/knowledge-agent/postgres";
    if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg && *xdg) {
        return fs::path(xdg) / "knowledge-agent/postgres";
    }
    const char* home = std::getenv("HOME");
    if (!home || !*home) {
        if (const passwd* pw = getpwuid(geteuid())) home = pw->pw_dir;
    }
    return fs::path(home ? home : ".") / ".local/share/knowledge-agent/postgres";
}

int version_of(const fs::path& dir) {
    // /usr/lib/postgresql/<major>/bin
    try {
        return std::stoi(dir.parent_path().filename().string());
    } catch (...) {
        return -1;
    }
}

std::optional<fs::path> detect_bin_dir() {
    std::optional<fs::path> best;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/usr/lib/postgresql", ec)) {
        fs::path bin = entry.path() / "bin";
        if (!fs::exists(bin / "initdb")) continue;
        if (!best || version_of(bin) > version_of(*best)) best = bin;
    }
    if (best) return best;
    if (const char* path = std::getenv("PATH")) {
        std::stringstream dirs(path);
        for (std::string dir; std::getline(dirs, dir, ':');) {
            if (!dir.empty() && access((fs::path(dir) / "initdb").c_str(), X_OK) == 0)
                return fs::path(dir);
        }
    }
    return std::nullopt;
}

// Argument vector that runs a PostgreSQL program as the cluster's account.
std::vector<std::string> as_owner(const EmbeddedCluster& c, std::vector<std::string> argv) {
    if (c.run_as.empty()) return argv;
    std::vector<std::string> full = {"runuser", "-u", c.run_as, "--"};
    full.insert(full.end(), argv.begin(), argv.end());
    return full;
}

std::string tail_lines(const std::string& text, std::size_t lines) {
    std::size_t pos = text.size();
    while (lines-- > 0 && pos > 0) {
        pos = text.rfind('\n', pos - 1);
        if (pos == std::string::npos) return text;
    }
    return text.substr(pos + 1);
}

std::string read_file(const fs::path& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

Status chown_to_owner(const EmbeddedCluster& c, const fs::path& path) {
    if (c.run_as.empty()) return {};
    const passwd* pw = getpwnam(c.run_as.c_str());
    if (!pw || chown(path.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
        return std::unexpected(embedded_error(fmt::format(
            "cannot give {} to account {}: {}", path.string(), c.run_as, std::strerror(errno))));
    }
    return {};
}

// The account must be able to enter every parent directory of the data directory.
Status check_reachable(const EmbeddedCluster& c) {
    if (c.run_as.empty()) return {};
    const passwd* pw = getpwnam(c.run_as.c_str());
    for (fs::path dir = c.data_dir.parent_path(); !dir.empty(); dir = dir.parent_path()) {
        struct stat st {};
        if (stat(dir.c_str(), &st) == 0) {
            bool ok = (st.st_mode & S_IXOTH) ||
                      (st.st_uid == pw->pw_uid && (st.st_mode & S_IXUSR)) ||
                      (st.st_gid == pw->pw_gid && (st.st_mode & S_IXGRP));
            if (!ok) {
                return std::unexpected(embedded_error(
                    fmt::format(
                        "the account '{}' that runs the embedded PostgreSQL cannot enter {} "
                        "(mode {:o})",
                        c.run_as, dir.string(), st.st_mode & 07777),
                    "set postgres.embedded.data_dir to a directory that account can reach, e.g. "
                    "/var/lib/knowledge-agent/postgres"));
            }
        }
        if (dir == dir.parent_path()) break;
    }
    return {};
}

long long total_memory_bytes() {
    long long bytes = static_cast<long long>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
    // A container's cgroup limit, when lower, is the real budget.
    std::ifstream limit("/sys/fs/cgroup/memory.max");
    long long cgroup = 0;
    if (limit >> cgroup && cgroup > 0 && cgroup < bytes) bytes = cgroup;
    return bytes;
}

// postgresql.conf settings rewritten at every start: the socket, the port and the production
// guide's tuning knobs (shared_buffers 25% of RAM, effective_cache_size 75%, work_mem 64MB,
// max_connections 100, parallel workers), scaled to this machine. max_wal_size is raised from
// 1 GB so an import of ~100k entries does not checkpoint every few seconds (PostgreSQL's
// "Populating a Database" advice; at 1 GB, 100k rows saw three checkpoints 17-29 s apart).
std::string managed_conf(const EmbeddedCluster& c) {
    long long mb = total_memory_bytes() / (1024 * 1024);
    long long shared = std::clamp(mb / 4, 128LL, 8192LL);
    long long cache = std::max(mb * 3 / 4, 256LL);
    long long maintenance = std::clamp(mb / 8, 64LL, 4096LL);  // HNSW builds want it large
    int cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    std::string dir = c.data_dir.string();
    std::string escaped;
    for (char ch : dir) escaped += ch == '\'' ? std::string("''") : std::string(1, ch);
    return fmt::format(
        "# Written by knowledge-agent at every start of the embedded cluster; edits here are\n"
        "# overwritten. Override any setting with ALTER SYSTEM (postgresql.auto.conf wins).\n"
        "listen_addresses = '{}'\n"
        "port = {}\n"
        "unix_socket_directories = '{}'\n"
        "unix_socket_permissions = 0700\n"
        "shared_buffers = {}MB\n"
        "effective_cache_size = {}MB\n"
        "work_mem = 64MB\n"
        "maintenance_work_mem = {}MB\n"
        "max_connections = 100\n"
        "max_parallel_workers_per_gather = {}\n"
        "max_parallel_maintenance_workers = {}\n"
        "max_wal_size = 4GB\n",
        c.port > 0 ? "127.0.0.1" : "", socket_port(c), escaped, shared, cache, maintenance,
        std::min(4, cpus), std::min(4, std::max(1, cpus - 1)));
}

Status write_owned_file(const EmbeddedCluster& c, const fs::path& path, const std::string& text) {
    {
        std::ofstream out(path, std::ios::trunc);
        if (!(out << text)) {
            return std::unexpected(embedded_error(fmt::format("cannot write {}", path.string())));
        }
    }
    fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
    return chown_to_owner(c, path);
}

Status initdb(const EmbeddedCluster& c) {
    log::info("Initialising embedded PostgreSQL cluster", {{"data_dir", c.data_dir.string()}});
    auto run =
        run_process(as_owner(c, {(c.bin_dir / "initdb").string(), "-D", c.data_dir.string(), "-U",
                                 std::string(kEmbeddedSuperuser), "-E", "UTF8", "--no-locale",
                                 "--auth-local=trust", "--auth-host=scram-sha-256"}));
    if (!run) return std::unexpected(run.error());
    if (run->exit_code != 0) {
        return std::unexpected(embedded_error(
            fmt::format("initdb failed for {}: {}", c.data_dir.string(),
                        tail_lines(run->output, 5)),
            "check that the data directory is writable by the account running PostgreSQL"));
    }
    std::ofstream conf(c.data_dir / "postgresql.conf", std::ios::app);
    conf << "\n# Settings managed by knowledge-agent (socket, port, memory):\n"
         << "include_if_exists = '" << kManagedConf << "'\n";
    return {};
}

bool is_running(const EmbeddedCluster& c) {
    auto run = run_process(
        as_owner(c, {(c.bin_dir / "pg_ctl").string(), "status", "-D", c.data_dir.string()}));
    return run && run->exit_code == 0;
}

// Holds an exclusive flock for the lifetime of the object.
class FileLock {
  public:
    explicit FileLock(const fs::path& path)
        : fd_(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600)) {
        if (fd_ >= 0) {
            while (flock(fd_, LOCK_EX) != 0 && errno == EINTR) {
            }
        }
    }
    ~FileLock() {
        if (fd_ >= 0) close(fd_);
    }
    FileLock(const FileLock&) = delete;
    FileLock& operator=(const FileLock&) = delete;
    bool locked() const { return fd_ >= 0; }

  private:
    int fd_;
};

Status ensure_database(const EmbeddedCluster& c) {
    auto conn = Connection::open(embedded_target(c, "postgres"), 10);
    if (!conn) return std::unexpected(conn.error());
    auto found = conn->exec("SELECT 1 FROM pg_database WHERE datname = $1",
                            {std::string(kEmbeddedDatabase)});
    if (!found) return std::unexpected(found.error());
    if (found->rows() == 0) {
        if (auto made = conn->exec("CREATE DATABASE " + quote_ident(kEmbeddedDatabase)); !made) {
            return std::unexpected(made.error());
        }
        log::info("Created database", {{"database", std::string(kEmbeddedDatabase)}});
    }
    if (c.port > 0 && !fs::exists(c.data_dir / kPasswordFile)) {
        // TCP clients authenticate with scram; the agent itself uses the private socket.
        unsigned char bytes[24];
        if (RAND_bytes(bytes, sizeof bytes) != 1) {
            return std::unexpected(embedded_error("cannot generate a password: no randomness"));
        }
        std::string password = hex({reinterpret_cast<const char*>(bytes), sizeof bytes});
        auto set = conn->exec(fmt::format(
            "ALTER ROLE {} PASSWORD {}", quote_ident(kEmbeddedSuperuser), quote_literal(password)));
        if (!set) return std::unexpected(set.error());
        if (auto ok = write_owned_file(c, c.data_dir / kPasswordFile, password + "\n"); !ok)
            return ok;
        log::info("Loopback access enabled",
                  {{"port", std::to_string(c.port)},
                   {"password_file", (c.data_dir / kPasswordFile).string()}});
    }
    return {};
}

}  // namespace

Result<EmbeddedCluster> resolve_embedded(const config::Embedded& settings) {
    EmbeddedCluster c;
    bool root = geteuid() == 0;
    c.data_dir = fs::absolute(settings.data_dir.empty() ? default_data_dir(root)
                                                        : fs::path(settings.data_dir))
                     .lexically_normal();
    if (c.data_dir.has_filename() == false) c.data_dir = c.data_dir.parent_path();
    std::string dir = c.data_dir.string();
    if (dir.find_first_of("\"\n\r") != std::string::npos) {
        return fail(ErrorCode::config,
                    "postgres.embedded.data_dir must not contain quotes or newlines");
    }
    if (dir.size() + 1 + std::string_view(".s.PGSQL.65535").size() > kMaxSocketPath) {
        return fail(
            ErrorCode::config,
            fmt::format(
                "postgres.embedded.data_dir is too long for a unix socket path ({} characters)",
                dir.size()),
            "choose a data directory path of at most 90 characters");
    }
    c.port = settings.port;
    if (!settings.bin_dir.empty()) {
        c.bin_dir = settings.bin_dir;
    } else if (auto found = detect_bin_dir()) {
        c.bin_dir = *found;
    } else {
        return fail(ErrorCode::unavailable, "PostgreSQL server programs (initdb, pg_ctl) not found",
                    "install them with scripts/setup.sh (or apt-get install postgresql-15), set "
                    "postgres.embedded.bin_dir, or point postgres.url at an existing server");
    }
    for (const char* program : {"initdb", "pg_ctl", "postgres"}) {
        if (access((c.bin_dir / program).c_str(), X_OK) != 0) {
            return fail(ErrorCode::config,
                        fmt::format("{} not found in postgres.embedded.bin_dir {}", program,
                                    c.bin_dir.string()),
                        "set postgres.embedded.bin_dir to the directory holding initdb, pg_ctl and "
                        "postgres");
        }
    }
    if (root) {
        c.run_as = settings.run_as;
        const passwd* pw = getpwnam(c.run_as.c_str());
        if (!pw || pw->pw_uid == 0) {
            return fail(
                ErrorCode::config,
                fmt::format("postgres.embedded.run_as '{}' is not an unprivileged account",
                            c.run_as),
                "PostgreSQL refuses to run as root; create the account (adduser --system postgres) "
                "or name another one in postgres.embedded.run_as");
        }
    }
    return c;
}

Target embedded_target(const EmbeddedCluster& c, std::string_view database) {
    std::string host;  // conninfo values escape quotes and backslashes with a backslash
    for (char ch : c.data_dir.string()) {
        if (ch == '\'' || ch == '\\') host += '\\';
        host += ch;
    }
    std::string conninfo = fmt::format("host='{}' port={} dbname={} user={}", host, socket_port(c),
                                       database, kEmbeddedSuperuser);
    return Target{conninfo,
                  fmt::format("embedded cluster {} (database {})", c.data_dir.string(), database),
                  true};
}

fs::path embedded_log_file(const EmbeddedCluster& c) {
    return c.data_dir / "postgresql.log";
}

Status start_embedded(const EmbeddedCluster& c) {
    std::error_code ec;
    fs::create_directories(c.data_dir.parent_path(), ec);
    if (ec) {
        return std::unexpected(embedded_error(
            fmt::format("cannot create {}: {}", c.data_dir.parent_path().string(), ec.message()),
            "set postgres.embedded.data_dir to a writable location"));
    }
    FileLock lock(c.data_dir.string() + ".lock");
    if (!lock.locked()) {
        return std::unexpected(
            embedded_error(fmt::format("cannot lock {}.lock", c.data_dir.string())));
    }
    if (auto ok = check_reachable(c); !ok) return ok;
    if (!fs::exists(c.data_dir / "PG_VERSION")) {
        if (fs::exists(c.data_dir) && !fs::is_empty(c.data_dir)) {
            return std::unexpected(embedded_error(
                fmt::format("{} exists, is not empty and is not a PostgreSQL data directory",
                            c.data_dir.string()),
                "point postgres.embedded.data_dir at an empty or new directory"));
        }
        fs::create_directories(c.data_dir, ec);
        fs::permissions(c.data_dir, fs::perms::owner_all, ec);
        if (auto ok = chown_to_owner(c, c.data_dir); !ok) return ok;
        if (auto ok = initdb(c); !ok) return ok;
    }
    std::string data_version = read_file(c.data_dir / "PG_VERSION");
    while (!data_version.empty() && data_version.back() == '\n') data_version.pop_back();
    int bin_version = version_of(c.bin_dir);
    if (bin_version > 0 && data_version != std::to_string(bin_version)) {
        return std::unexpected(embedded_error(
            fmt::format("the embedded cluster {} was created by PostgreSQL {}, but the server "
                        "programs in {} are "
                        "version {}",
                        c.data_dir.string(), data_version, c.bin_dir.string(), bin_version),
            fmt::format("set postgres.embedded.bin_dir to /usr/lib/postgresql/{}/bin, or upgrade "
                        "the cluster with "
                        "pg_upgrade",
                        data_version)));
    }
    if (!is_running(c)) {
        if (auto ok = write_owned_file(c, c.data_dir / kManagedConf, managed_conf(c)); !ok)
            return ok;
        log::info("Starting embedded PostgreSQL", {{"data_dir", c.data_dir.string()}});
        auto run =
            run_process(as_owner(c, {(c.bin_dir / "pg_ctl").string(), "start", "-w", "-s", "-t",
                                     std::to_string(kStartTimeoutSeconds), "-D",
                                     c.data_dir.string(), "-l", embedded_log_file(c).string()}));
        if (!run) return std::unexpected(run.error());
        if (run->exit_code != 0) {
            return std::unexpected(
                embedded_error(fmt::format("the embedded PostgreSQL did not start: {}{}",
                                           tail_lines(run->output, 3),
                                           tail_lines(read_file(embedded_log_file(c)), 5)),
                               fmt::format("see {}", embedded_log_file(c).string())));
        }
    }
    return ensure_database(c);
}

Status stop_embedded(const EmbeddedCluster& c) {
    if (!fs::exists(c.data_dir / "PG_VERSION") || !is_running(c)) return {};
    auto run = run_process(
        as_owner(c, {(c.bin_dir / "pg_ctl").string(), "stop", "-w", "-s", "-m", "fast", "-t",
                     std::to_string(kStartTimeoutSeconds), "-D", c.data_dir.string()}));
    if (!run) return std::unexpected(run.error());
    if (run->exit_code != 0) {
        return std::unexpected(
            embedded_error(fmt::format("pg_ctl stop failed: {}", tail_lines(run->output, 3))));
    }
    log::info("Stopped embedded PostgreSQL", {{"data_dir", c.data_dir.string()}});
    return {};
}

Result<EmbeddedStatus> embedded_status(const EmbeddedCluster& c) {
    EmbeddedStatus s;
    s.initialized = fs::exists(c.data_dir / "PG_VERSION");
    if (!s.initialized) return s;
    s.server_version = read_file(c.data_dir / "PG_VERSION");
    while (!s.server_version.empty() && s.server_version.back() == '\n')
        s.server_version.pop_back();
    s.running = is_running(c);
    if (s.running) {
        std::ifstream pid_file(c.data_dir / "postmaster.pid");
        pid_file >> s.pid;
    }
    return s;
}

}  // namespace ka::db
