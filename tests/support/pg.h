// Test support: the shared throwaway cluster, per-test databases, private clusters, and running
// the knowledge-agent binary as a user would.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/process.h"
#include "db/connection.h"
#include "db/embedded.h"

namespace ka::test {

// The cluster the CTest fixture `pg_cluster_start` started.
const db::EmbeddedCluster& shared_cluster();

// A new directory under the test root, unique to this process and hint.
std::filesystem::path unique_dir(const std::string& hint);

// A fresh database on the shared cluster, dropped when the object goes away.
class TestDatabase {
  public:
    TestDatabase();
    ~TestDatabase();
    TestDatabase(const TestDatabase&) = delete;
    TestDatabase& operator=(const TestDatabase&) = delete;

    const std::string& name() const { return name_; }
    // Conninfo for this database as `user` (local trust auth on the private socket).
    std::string url(const std::string& user = "knowledge_agent") const;
    db::Connection connect(const std::string& user = "knowledge_agent") const;
    // Runs SQL as the cluster superuser; fails the test on error.
    db::PgResult sql(const std::string& statement) const;

  private:
    std::string name_;
};

// Configuration pointing at `url` with every other key at its default.
config::Config config_for(const std::string& url);

// Runs the knowledge-agent binary with extra environment (NAME=value) and no config file.
ProcessResult run_agent(const std::vector<std::string>& args,
                        const std::vector<std::string>& env = {});

// A private cluster (own data dir, optional TCP port, optional bin_dir), stopped and removed
// when the object goes away.
class PrivateCluster {
  public:
    explicit PrivateCluster(const std::string& hint, int port = 0, const std::string& bin_dir = "");
    ~PrivateCluster();
    PrivateCluster(const PrivateCluster&) = delete;
    PrivateCluster& operator=(const PrivateCluster&) = delete;

    const db::EmbeddedCluster& cluster() const { return cluster_; }
    // Environment selecting this cluster for run_agent.
    std::vector<std::string> env() const;

  private:
    db::EmbeddedCluster cluster_;
    config::Embedded settings_;
};

// A copy of the PostgreSQL installation whose pgvector files are removed; returns its bin dir.
// With `fake_version`, an extension named vector of that version is installed instead.
std::string relocated_postgres(const std::string& hint, const std::string& fake_version = "");

// A free TCP port on 127.0.0.1.
int free_port();

bool contains(const std::string& haystack, const std::string& needle);

}  // namespace ka::test
