#include "config/schema.h"

#include <algorithm>
#include <array>
#include <cctype>

#include <fmt/format.h>

namespace ka::config {
namespace {

constexpr std::array<std::string_view, 4> kLogLevels = {"debug", "info", "warn", "error"};
constexpr std::array<std::string_view, 2> kLogFormats = {"console", "json"};

// Defaults and ranges follow the production guide and pgvector's own limits
// (HNSW m 2..100, ef_construction 4..1000, ef_search 1..1000, at most 2,000 dimensions).
const std::array kSettings = {
    Setting{
        "postgres.url",
        Type::string,
        "",
        0,
        0,
        {},
        "libpq connection URI or key=value string (sslmode, sslrootcert, connect_timeout... pass "
        "through untouched). Empty: use the embedded cluster managed by knowledge-agent.",
        "POSTGRES_URL",
        true,
        [](Config& c) -> FieldRef { return &c.postgres.url; }},
    Setting{"postgres.pool_size",
            Type::integer,
            "10",
            1,
            1000,
            {},
            "Connections the agent keeps open to PostgreSQL.",
            "",
            false,
            [](Config& c) -> FieldRef { return &c.postgres.pool_size; }},
    Setting{"postgres.connect_timeout",
            Type::integer,
            "10",
            1,
            3600,
            {},
            "Seconds to wait for a connection (a connect_timeout in postgres.url wins).",
            "",
            false,
            [](Config& c) -> FieldRef { return &c.postgres.connect_timeout; }},
    Setting{
        "postgres.embedded.data_dir",
        Type::string,
        "",
        0,
        0,
        {},
        "Data directory of the embedded cluster. Empty: ~/.local/share/knowledge-agent/postgres "
        "($XDG_DATA_HOME honoured), or /var/lib/knowledge-agent/postgres when run as root.",
        "",
        false,
        [](Config& c) -> FieldRef { return &c.postgres.embedded.data_dir; }},
    Setting{"postgres.embedded.port",
            Type::integer,
            "0",
            0,
            65535,
            {},
            "Also listen on 127.0.0.1 at this port (password auth). 0: private unix socket only.",
            "",
            false,
            [](Config& c) -> FieldRef { return &c.postgres.embedded.port; }},
    Setting{"postgres.embedded.bin_dir",
            Type::string,
            "",
            0,
            0,
            {},
            "Directory holding initdb, pg_ctl and postgres. Empty: the newest "
            "/usr/lib/postgresql/*/bin, else PATH.",
            "",
            false,
            [](Config& c) -> FieldRef { return &c.postgres.embedded.bin_dir; }},
    Setting{"postgres.embedded.run_as",
            Type::string,
            "postgres",
            0,
            0,
            {},
            "Unprivileged account that runs the embedded server when knowledge-agent runs as root "
            "(PostgreSQL refuses to run as root).",
            "",
            false,
            [](Config& c) -> FieldRef { return &c.postgres.embedded.run_as; }},
    Setting{
        "embedding.dimensions",
        Type::integer,
        "768",
        1,
        2000,
        {},
        "Dimensions of every embedding; the memory_entries.embedding column is created with it.",
        "",
        false,
        [](Config& c) -> FieldRef { return &c.embedding.dimensions; }},
    Setting{"index.hnsw.m",
            Type::integer,
            "16",
            2,
            100,
            {},
            "HNSW m: links per node (16-32; higher = better recall, more memory).",
            "",
            false,
            [](Config& c) -> FieldRef { return &c.index.hnsw.m; }},
    Setting{"index.hnsw.ef_construction",
            Type::integer,
            "64",
            4,
            1000,
            {},
            "HNSW ef_construction: candidate list while building (64-128; at least 2 x m).",
            "",
            false,
            [](Config& c) -> FieldRef { return &c.index.hnsw.ef_construction; }},
    Setting{"search.ef_search",
            Type::integer,
            "40",
            1,
            1000,
            {},
            "hnsw.ef_search for queries (higher = better recall, slower).",
            "",
            false,
            [](Config& c) -> FieldRef { return &c.search.ef_search; }},
    Setting{"log.level", Type::choice, "info", 0, 0, kLogLevels, "Lowest level logged.", "", false,
            [](Config& c) -> FieldRef { return &c.log.level; }},
    Setting{"log.format", Type::choice, "console", 0, 0, kLogFormats,
            "console: `INFO  message key=value`; json: one JSON object per line.", "", false,
            [](Config& c) -> FieldRef { return &c.log.format; }},
    Setting{"migrations.auto",
            Type::boolean,
            "true",
            0,
            0,
            {},
            "Apply pending schema migrations at start. false: refuse to start while any is pending "
            "(apply them with `knowledge-agent migrate up`).",
            "",
            false,
            [](Config& c) -> FieldRef { return &c.migrations.auto_apply; }},
};

}  // namespace

std::span<const Setting> settings() {
    return kSettings;
}

const Setting* find_setting(std::string_view key) {
    auto it = std::find_if(kSettings.begin(), kSettings.end(),
                           [&](const Setting& s) { return s.key == key; });
    return it == kSettings.end() ? nullptr : &*it;
}

std::string env_name(std::string_view key) {
    std::string name = "KNOWLEDGE_AGENT_";
    for (char c : key) {
        name += c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    return name;
}

std::string allowed_values(const Setting& setting) {
    switch (setting.type) {
        case Type::boolean:
            return "true or false";
        case Type::integer:
            return fmt::format("an integer from {} to {}", setting.min, setting.max);
        case Type::string:
            return "a string";
        case Type::choice:
            return fmt::format("one of: {}", fmt::join(setting.choices, ", "));
    }
    return {};
}

}  // namespace ka::config
