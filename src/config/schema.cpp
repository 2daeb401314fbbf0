#include "config/schema.h"

#include <algorithm>
#include <array>
#include <cctype>

#include <fmt/format.h>

namespace ka::config {
namespace {

constexpr std::array<std::string_view, 4> kLogLevels = {"debug", "info", "warn", "error"};
constexpr std::array<std::string_view, 2> kLogFormats = {"console", "json"};
constexpr std::array<std::string_view, 3> kProviders = {"builtin", "ollama", "openai"};
constexpr std::array<std::string_view, 3> kLlmProviders = {"none", "anthropic", "openai"};
constexpr std::array<std::string_view, 3> kSearchModes = {"vector", "text", "hybrid"};
constexpr std::array<std::string_view, 3> kIterativeScans = {"off", "relaxed_order",
                                                             "strict_order"};

#define KA_FIELD(member) [](Config& c) -> FieldRef { return &c.member; }

// Defaults and ranges follow the production guide and pgvector's own limits
// (HNSW m 2..100, ef_construction 4..1000, ef_search 1..1000, at most 2,000 dimensions).
// clang-format off
const std::array kSettings = {
    Setting{"postgres.url", Type::string, "", 0, 0, {},
            "libpq connection URI or key=value string (sslmode, sslrootcert, connect_timeout... "
            "pass through untouched). Empty: use the embedded cluster managed by knowledge-agent.",
            "POSTGRES_URL", true, KA_FIELD(postgres.url)},
    Setting{"postgres.pool_size", Type::integer, "10", 1, 1000, {},
            "Connections the agent keeps open to PostgreSQL.", "", false, KA_FIELD(postgres.pool_size)},
    Setting{"postgres.connect_timeout", Type::integer, "10", 1, 3600, {},
            "Seconds to wait for a connection (a connect_timeout in postgres.url wins).", "", false,
            KA_FIELD(postgres.connect_timeout)},
    Setting{"postgres.embedded.data_dir", Type::string, "", 0, 0, {},
            "Data directory of the embedded cluster. Empty: ~/.local/share/knowledge-agent/postgres "
            "($XDG_DATA_HOME honoured), or /var/lib/knowledge-agent/postgres when run as root.",
            "", false, KA_FIELD(postgres.embedded.data_dir)},
    Setting{"postgres.embedded.port", Type::integer, "0", 0, 65535, {},
            "Also listen on 127.0.0.1 at this port (password auth). 0: private unix socket only.",
            "", false, KA_FIELD(postgres.embedded.port)},
    Setting{"postgres.embedded.bin_dir", Type::string, "", 0, 0, {},
            "Directory holding initdb, pg_ctl and postgres. Empty: the newest "
            "/usr/lib/postgresql/*/bin, else PATH.",
            "", false, KA_FIELD(postgres.embedded.bin_dir)},
    Setting{"postgres.embedded.run_as", Type::string, "postgres", 0, 0, {},
            "Unprivileged account that runs the embedded server when knowledge-agent runs as root "
            "(PostgreSQL refuses to run as root).",
            "", false, KA_FIELD(postgres.embedded.run_as)},
    Setting{"embedding.provider", Type::choice, "builtin", 0, 0, kProviders,
            "builtin: in-process lexical embedder (no service, no download); ollama: POST "
            "{base_url}/api/embed; openai: any OpenAI-compatible POST {base_url}/v1/embeddings.",
            "", false, KA_FIELD(embedding.provider)},
    Setting{"embedding.model", Type::string, "", 0, 0, {},
            "Embedding model. Empty: builtin-lexical-v1, nomic-embed-text (ollama), "
            "text-embedding-3-small (openai). Recorded with every entry.",
            "", false, KA_FIELD(embedding.model)},
    Setting{"embedding.base_url", Type::string, "", 0, 0, {},
            "Provider endpoint. Empty: http://127.0.0.1:11434 (ollama), https://api.openai.com (openai).",
            "", false, KA_FIELD(embedding.base_url)},
    Setting{"embedding.api_key", Type::string, "", 0, 0, {},
            "Bearer token for the openai provider (never logged).", "OPENAI_API_KEY", true,
            KA_FIELD(embedding.api_key)},
    Setting{"embedding.send_dimensions", Type::boolean, "false", 0, 0, {},
            "openai: send `dimensions` = embedding.dimensions (for models that can shorten their "
            "output, e.g. text-embedding-3-*).",
            "", false, KA_FIELD(embedding.send_dimensions)},
    Setting{"embedding.dimensions", Type::integer, "768", 1, 2000, {},
            "Dimensions of every embedding; the memory_entries.embedding column is created with it.",
            "", false, KA_FIELD(embedding.dimensions)},
    Setting{"embedding.batch_size", Type::integer, "32", 1, 2048, {},
            "Texts per provider request.", "", false, KA_FIELD(embedding.batch_size)},
    Setting{"embedding.timeout", Type::integer, "30", 1, 600, {},
            "Seconds per provider request before it is retried or fails.", "", false,
            KA_FIELD(embedding.timeout)},
    Setting{"embedding.max_retries", Type::integer, "3", 0, 10, {},
            "Retries (exponential backoff, Retry-After honoured) on 429, 5xx and timeouts.", "",
            false, KA_FIELD(embedding.max_retries)},
    Setting{"embedding.max_input_chars", Type::integer, "8000", 64, 1000000, {},
            "Longer texts are embedded from their first max_input_chars characters (cut at a UTF-8 "
            "boundary); the full text is always stored and searchable by text.",
            "", false, KA_FIELD(embedding.max_input_chars)},
    Setting{"store.max_content_bytes", Type::integer, "65536", 1, 10485760, {},
            "Largest entry accepted, in bytes of UTF-8.", "", false, KA_FIELD(store.max_content_bytes)},
    Setting{"store.default_scope", Type::string, "default", 0, 0, {},
            "Scope (team or namespace) of entries saved without one.", "", false,
            KA_FIELD(store.default_scope)},
    Setting{"index.hnsw.m", Type::integer, "16", 2, 100, {},
            "HNSW m: links per node (16-32; higher = better recall, more memory).", "", false,
            KA_FIELD(index.hnsw.m)},
    Setting{"index.hnsw.ef_construction", Type::integer, "128", 4, 1000, {},
            "HNSW ef_construction: candidate list while building (64-128; at least 2 x m).", "",
            false, KA_FIELD(index.hnsw.ef_construction)},
    Setting{"search.ef_search", Type::integer, "40", 1, 1000, {},
            "hnsw.ef_search for queries (higher = better recall, slower).", "", false,
            KA_FIELD(search.ef_search)},
    Setting{"search.mode", Type::choice, "hybrid", 0, 0, kSearchModes,
            "Default search mode: vector (HNSW cosine), text (PostgreSQL full-text), hybrid "
            "(reciprocal-rank fusion of both).",
            "", false, KA_FIELD(search.mode)},
    Setting{"search.default_k", Type::integer, "10", 1, 10000, {},
            "Results returned when k is not given.", "", false, KA_FIELD(search.default_k)},
    Setting{"search.max_k", Type::integer, "100", 1, 10000, {},
            "Largest k a caller may ask for.", "", false, KA_FIELD(search.max_k)},
    Setting{"search.iterative_scan", Type::choice, "relaxed_order", 0, 0, kIterativeScans,
            "pgvector 0.8 hnsw.iterative_scan for filtered vector search, so filters do not starve "
            "results.",
            "", false, KA_FIELD(search.iterative_scan)},
    Setting{"search.exact_max_rows", Type::integer, "8000", 0, 10000000, {},
            "A filter matching at most this many rows is searched exactly, without the index: "
            "faster and exact for selective filters.",
            "", false, KA_FIELD(search.exact_max_rows)},
    Setting{"search.exact_max_percent", Type::integer, "2", 0, 100, {},
            "A filter matching at most this percentage of all entries is also searched exactly "
            "(at 1M entries, 2% is 20,000 rows; above 1% because the planner's estimate of a 1% "
            "filter can come out just over 1%). 0: only search.exact_max_rows applies.",
            "", false, KA_FIELD(search.exact_max_percent)},
    Setting{"search.rrf_k", Type::integer, "60", 1, 1000, {},
            "Reciprocal-rank fusion constant for hybrid search.", "", false, KA_FIELD(search.rrf_k)},
    Setting{"search.text_fallback", Type::boolean, "true", 0, 0, {},
            "When the embedding provider is down, slow or answers garbage, text and hybrid "
            "searches answer from full-text search alone and say so (\"degraded\"); false: they "
            "fail like vector searches do.",
            "", false, KA_FIELD(search.text_fallback)},
    Setting{"log.level", Type::choice, "info", 0, 0, kLogLevels, "Lowest level logged.", "", false,
            KA_FIELD(log.level)},
    Setting{"log.format", Type::choice, "console", 0, 0, kLogFormats,
            "console: `INFO  message key=value`; json: one JSON object per line.", "", false,
            KA_FIELD(log.format)},
    Setting{"migrations.auto", Type::boolean, "true", 0, 0, {},
            "Apply pending schema migrations at start. false: refuse to start while any is pending "
            "(apply them with `knowledge-agent migrate up`).",
            "", false, KA_FIELD(migrations.auto_apply)},
    Setting{"server.host", Type::string, "127.0.0.1", 0, 0, {},
            "Address `serve` listens on. Anything but loopback needs auth.keys (or "
            "auth.allow_anonymous: true).", "", false, KA_FIELD(server.host)},
    Setting{"server.port", Type::integer, "8080", 0, 65535, {},
            "TCP port of the HTTP API (0: any free port, logged at start).", "", false,
            KA_FIELD(server.port)},
    Setting{"server.workers", Type::integer, "8", 1, 256, {},
            "Threads serving requests; each holds a database connection only while it needs one.",
            "", false, KA_FIELD(server.workers)},
    Setting{"server.max_body_bytes", Type::integer, "1048576", 1024, 104857600, {},
            "Largest JSON request body; larger ones get 413.", "", false,
            KA_FIELD(server.max_body_bytes)},
    Setting{"server.max_import_bytes", Type::integer, "268435456", 1024, 2147483647, {},
            "Largest NDJSON body for POST /api/v1/memories:import.", "", false,
            KA_FIELD(server.max_import_bytes)},
    Setting{"server.request_timeout", Type::integer, "30", 1, 3600, {},
            "Seconds to read a request or write a response before the connection is dropped.", "",
            false, KA_FIELD(server.request_timeout)},
    Setting{"server.shutdown_grace", Type::integer, "10", 0, 3600, {},
            "On SIGTERM/SIGINT: seconds in-flight requests get to finish before the process exits.",
            "", false, KA_FIELD(server.shutdown_grace)},
    Setting{"auth.keys", Type::key_list, "[]", 0, 0, {},
            "API keys, e.g. [{name: ci, key_sha256: <hex>, role: write, scopes: [team-a]}]. In the "
            "environment: the same as JSON. Keys go in `Authorization: Bearer` or `X-API-Key`.",
            "", true, KA_FIELD(auth.keys)},
    Setting{"auth.allow_anonymous", Type::boolean, "false", 0, 0, {},
            "Serve without keys on a non-loopback address (every caller is admin).", "", false,
            KA_FIELD(auth.allow_anonymous)},
    Setting{"llm.provider", Type::choice, "none", 0, 0, kLlmProviders,
            "none: retrieval-only answers (no model); anthropic: Messages API; openai: any "
            "OpenAI-compatible chat completions server (OpenAI, Ollama /v1, vLLM, llama.cpp).",
            "", false, KA_FIELD(llm.provider)},
    Setting{"llm.model", Type::string, "", 0, 0, {},
            "Chat model. Empty: claude-sonnet-4-5 (anthropic), gpt-4o-mini (openai).", "", false,
            KA_FIELD(llm.model)},
    Setting{"llm.base_url", Type::string, "", 0, 0, {},
            "Endpoint. Empty: https://api.anthropic.com, https://api.openai.com.", "", false,
            KA_FIELD(llm.base_url)},
    Setting{"llm.api_key", Type::string, "", 0, 0, {},
            "API key (never logged). Empty: ANTHROPIC_API_KEY or OPENAI_API_KEY by provider.", "",
            true, KA_FIELD(llm.api_key)},
    Setting{"llm.anthropic_version", Type::string, "2023-06-01", 0, 0, {},
            "anthropic-version header.", "", false, KA_FIELD(llm.anthropic_version)},
    Setting{"llm.max_tokens", Type::integer, "1024", 1, 200000, {},
            "Longest answer per model turn, in tokens.", "", false, KA_FIELD(llm.max_tokens)},
    Setting{"llm.timeout", Type::integer, "60", 1, 3600, {},
            "Seconds per model request (streaming: the longest silence).", "", false,
            KA_FIELD(llm.timeout)},
    Setting{"llm.max_retries", Type::integer, "3", 0, 10, {},
            "Retries with backoff on 429, 5xx, 529 (overloaded) and timeouts.", "", false,
            KA_FIELD(llm.max_retries)},
    Setting{"agent.name", Type::string, "Knowledge Agent", 0, 0, {},
            "The agent's name in its system prompt.", "", false, KA_FIELD(agent.name)},
    Setting{"agent.prompt", Type::string, "", 0, 0, {},
            "Base instructions added to the system prompt.", "", false, KA_FIELD(agent.prompt)},
    Setting{"agent.prompt_file", Type::string, "", 0, 0, {},
            "Read the base instructions from this file instead.", "", false,
            KA_FIELD(agent.prompt_file)},
    Setting{"agent.max_tool_rounds", Type::integer, "4", 0, 20, {},
            "Tool calls rounds per question before the model must answer.", "", false,
            KA_FIELD(agent.max_tool_rounds)},
    Setting{"agent.context_k", Type::integer, "5", 0, 50, {},
            "Entries searched with the question up front and given to the model (0: none).", "",
            false, KA_FIELD(agent.context_k)},
    Setting{"rate_limit.requests_per_second", Type::integer, "50", 0, 1000000, {},
            "Sustained requests per second per API key (or client address without one); 0: off.",
            "", false, KA_FIELD(rate_limit.requests_per_second)},
    Setting{"rate_limit.burst", Type::integer, "100", 1, 1000000, {},
            "Requests a caller may make at once before the rate applies.", "", false,
            KA_FIELD(rate_limit.burst)},
};
// clang-format on
#undef KA_FIELD

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
        case Type::key_list:
            return "a list of {name, key or key_sha256, role: read|write|admin, scopes: [...]}";
    }
    return {};
}

}  // namespace ka::config
