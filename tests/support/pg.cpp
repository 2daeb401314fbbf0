#include "support/pg.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace ka::test {
namespace fs = std::filesystem;

const db::EmbeddedCluster& shared_cluster() {
    static const db::EmbeddedCluster cluster = [] {
        config::Embedded settings;
        settings.data_dir = std::string(KA_TEST_PG_DIR) + "/shared";
        settings.run_as = "postgres";
        auto c = db::resolve_embedded(settings);
        if (!c) throw std::runtime_error(c.error().message);
        return *c;
    }();
    return cluster;
}

fs::path unique_dir(const std::string& hint) {
    static std::atomic<int> counter{0};
    fs::path dir = fs::path(KA_TEST_PG_DIR) / fmt::format("{}-{}-{}", hint, getpid(), counter++);
    fs::remove_all(dir);
    return dir;
}

TestDatabase::TestDatabase() {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string base = info ? std::string(info->name()) : "db";
    for (auto& c : base)
        c = static_cast<char>(std::isalnum(static_cast<unsigned char>(c)) ? std::tolower(c) : '_');
    name_ = fmt::format("t_{}_{}_{}", base.substr(0, 30), getpid(), counter++);
    auto admin = db::Connection::open(db::embedded_target(shared_cluster(), "postgres"), 10);
    if (!admin)
        throw std::runtime_error("shared test cluster unavailable: " + admin.error().message);
    auto made = admin->exec("CREATE DATABASE " + db::quote_ident(name_));
    if (!made) throw std::runtime_error(made.error().message);
}

TestDatabase::~TestDatabase() {
    auto admin = db::Connection::open(db::embedded_target(shared_cluster(), "postgres"), 10);
    if (admin)
        (void)admin->exec("DROP DATABASE IF EXISTS " + db::quote_ident(name_) + " WITH (FORCE)");
}

std::string TestDatabase::url(const std::string& user) const {
    return fmt::format("host={} port={} dbname={} user={}", shared_cluster().data_dir.string(),
                       db::kEmbeddedSocketPort, name_, user);
}

db::Connection TestDatabase::connect(const std::string& user) const {
    auto conn = db::Connection::open(db::Target{url(user), name_, false}, 10);
    if (!conn) throw std::runtime_error(conn.error().message);
    return std::move(*conn);
}

db::PgResult TestDatabase::sql(const std::string& statement) const {
    auto conn = connect();
    auto r = conn.exec(statement);
    if (!r) throw std::runtime_error(statement + ": " + r.error().message);
    return std::move(*r);
}

config::Config config_for(const std::string& url) {
    auto config =
        config::load_from_string("", [&](const std::string& name) -> std::optional<std::string> {
            if (name == "POSTGRES_URL") return url;
            return std::nullopt;
        });
    if (!config) throw std::runtime_error(config.error().message);
    return *config;
}

ProcessResult run_agent(const std::vector<std::string>& args, const std::vector<std::string>& env) {
    std::vector<std::string> argv = {"env", "-u",           "KNOWLEDGE_AGENT_CONFIG",
                                     "-u",  "POSTGRES_URL", "XDG_CONFIG_HOME=/nonexistent"};
    argv.insert(argv.end(), env.begin(), env.end());
    argv.push_back(KA_BINARY);
    argv.insert(argv.end(), args.begin(), args.end());
    auto result = run_process(argv);
    if (!result) throw std::runtime_error(result.error().message);
    return *result;
}

PrivateCluster::PrivateCluster(const std::string& hint, int port, const std::string& bin_dir) {
    settings_.data_dir = unique_dir(hint).string();
    settings_.port = port;
    settings_.bin_dir = bin_dir;
    settings_.run_as = "postgres";
    auto c = db::resolve_embedded(settings_);
    if (!c) throw std::runtime_error(c.error().message);
    cluster_ = *c;
    if (auto ok = db::start_embedded(cluster_); !ok) throw std::runtime_error(ok.error().message);
}

PrivateCluster::~PrivateCluster() {
    (void)db::stop_embedded(cluster_);
    std::error_code ec;
    fs::remove_all(cluster_.data_dir, ec);
    fs::remove(cluster_.data_dir.string() + ".lock", ec);
}

std::vector<std::string> PrivateCluster::env() const {
    std::vector<std::string> out = {
        "KNOWLEDGE_AGENT_POSTGRES_EMBEDDED_DATA_DIR=" + cluster_.data_dir.string(),
        "KNOWLEDGE_AGENT_POSTGRES_EMBEDDED_PORT=" + std::to_string(cluster_.port)};
    if (!settings_.bin_dir.empty())
        out.push_back("KNOWLEDGE_AGENT_POSTGRES_EMBEDDED_BIN_DIR=" + settings_.bin_dir);
    return out;
}

std::string relocated_postgres(const std::string& hint, const std::string& fake_version) {
    const std::string major = shared_cluster().bin_dir.parent_path().filename().string();
    fs::path root = unique_dir(hint);
    fs::path lib = root / "usr/lib/postgresql" / major;
    fs::path share = root / "usr/share/postgresql" / major;
    fs::create_directories(lib.parent_path());
    fs::create_directories(share.parent_path());
    // Real copies: postgres finds its share and lib directories relative to its own resolved path.
    fs::copy(shared_cluster().bin_dir.parent_path(), lib, fs::copy_options::recursive);
    fs::copy(fs::path("/usr/share/postgresql") / major, share, fs::copy_options::recursive);
    for (const auto& dir : {share / "extension", lib / "lib"}) {
        for (const auto& entry : fs::directory_iterator(dir)) {
            if (entry.path().filename().string().starts_with("vector")) fs::remove(entry.path());
        }
    }
    if (!fake_version.empty()) {
        std::ofstream(share / "extension/vector.control")
            << "comment = 'stand-in for an old pgvector'\ndefault_version = '" << fake_version
            << "'\nrelocatable = true\n";
        std::ofstream(share / "extension" / ("vector--" + fake_version + ".sql"))
            << "CREATE FUNCTION vector_stand_in() RETURNS int LANGUAGE sql AS 'SELECT 1';\n";
    }
    return (lib / "bin").string();
}

int free_port() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    close(fd);
    return ntohs(addr.sin_port);
}

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

}  // namespace ka::test
