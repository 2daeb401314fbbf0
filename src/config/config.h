// Typed configuration: loaded from config.yaml, ${VAR} expansion, env overrides, validated.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"

namespace ka::config {

struct Embedded {
    std::string data_dir;  // empty: per-user default, see db/embedded.h
    int port = 0;          // 0: unix socket only
    std::string bin_dir;   // empty: auto-detect the PostgreSQL server binaries
    std::string run_as;    // account running the server when we are root
};

struct Postgres {
    std::string url;  // empty: embedded cluster
    int pool_size = 0;
    int connect_timeout = 0;  // seconds
    Embedded embedded;
};

// An HTTP API key: the secret itself or its SHA-256 (hex), a role, and optionally the only
// scopes it may read and write.
struct ApiKey {
    std::string name;
    std::string key;                  // plaintext; empty when key_sha256 is given
    std::string key_sha256;           // lower-case hex digest of the key
    std::string role;                 // read | write | admin
    std::vector<std::string> scopes;  // empty: every scope
};

struct Config {
    Postgres postgres;
    struct {
        std::string provider;
        std::string model;     // empty: the provider's default model
        std::string base_url;  // empty: the provider's default endpoint
        std::string api_key;
        bool send_dimensions = false;
        int dimensions = 0;
        int batch_size = 0;
        int timeout = 0;  // seconds per request
        int max_retries = 0;
        int max_input_chars = 0;
    } embedding;
    struct {
        int max_content_bytes = 0;
        std::string default_scope;
    } store;
    struct {
        struct {
            int m = 0;
            int ef_construction = 0;
        } hnsw;
    } index;
    struct {
        int ef_search = 0;
        std::string mode;
        int default_k = 0;
        int max_k = 0;
        std::string iterative_scan;
        int exact_max_rows = 0;
        int exact_max_percent = 0;
        int rrf_k = 0;
        bool text_fallback = true;
    } search;
    struct {
        std::string level;
        std::string format;
    } log;
    struct {
        bool auto_apply = true;
    } migrations;
    struct {
        std::string host;
        int port = 0;
        int workers = 0;
        int max_body_bytes = 0;
        int max_import_bytes = 0;
        int request_timeout = 0;  // seconds
        int shutdown_grace = 0;   // seconds
    } server;
    struct {
        std::vector<ApiKey> keys;
        bool allow_anonymous = false;
    } auth;
    struct {
        std::string provider;  // none | anthropic | openai
        std::string model;     // empty: the provider's default
        std::string base_url;  // empty: the provider's default endpoint
        std::string api_key;   // empty: ANTHROPIC_API_KEY / OPENAI_API_KEY
        std::string anthropic_version;
        int max_tokens = 0;
        int timeout = 0;  // seconds
        int max_retries = 0;
    } llm;
    struct {
        std::string name;
        std::string prompt;       // base prompt, inline
        std::string prompt_file;  // or from a file (wins when set)
        int max_tool_rounds = 0;
        int context_k = 0;  // entries searched up front and put in the context
    } agent;
    struct {
        int requests_per_second = 0;  // per key, or per client address without a key; 0: off
        int burst = 0;
    } rate_limit;

    std::string source;  // the file it was read from, empty when none

    bool embedded() const { return postgres.url.empty(); }
};

// Reads an environment variable; injectable for tests.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
std::optional<std::string> process_env(const std::string& name);

struct LoadOptions {
    std::optional<std::string>
        path;  // --config; else KNOWLEDGE_AGENT_CONFIG; else the XDG default if present
    EnvLookup env = process_env;
};

// Loads defaults, then the YAML file, then environment overrides, then validates.
Result<Config> load(const LoadOptions& options);

// Same, from YAML text (no file): for tests and `config check -`.
Result<Config> load_from_string(const std::string& yaml, const EnvLookup& env,
                                const std::string& source_name = "<string>");

// Expands ${VAR}, ${VAR:-default} and $$ in one configuration value.
Result<std::string> expand_variables(const std::string& value, const EnvLookup& env);

// The documented example file, generated from the settings schema.
std::string example_yaml();

// The effective configuration as YAML with secrets redacted.
std::string dump_yaml(const Config& config);

}  // namespace ka::config
