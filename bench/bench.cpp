// ka-bench: the product measured against raw pgvector (a minimal libpq program) and a Node.js
// peer (npm `pg` + `pgvector`), side by side in one run, on the same PostgreSQL.
//
//   ka-bench [--rows 100000] [--queries 1000] [--seed 42] [--clients 8] [--ef 40,100,200]
//            [--json bench.json] [--skip-node] [--smoke] [-c config.yaml]
//
// It connects to the configured database (postgres.url / POSTGRES_URL, or the embedded cluster),
// then works only in its own database `ka_bench` (dropped and re-created at the start of every
// run, dropped at the end unless --keep): users' data is never read or written.
//
// Phases: a seeded data set (clustered, L2-normalised vectors plus short texts) -> bulk load
// (raw binary COPY into a minimal and into an identical table; the product's import with a live
// HNSW index and with the index built afterwards; the CREATE INDEX) -> exact top-10 computed
// here by brute force -> search latency / QPS / recall at each ef_search for raw libpq, the
// store API and the HTTP API with 1 and N clients -> filtered search -> embedding and
// `remember` throughput -> the Node.js peer -> a table on stdout and a JSON file.
#include <arpa/inet.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <spanstream>
#include <sstream>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>
#include <httplib.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "core/bytes.h"
#include "db/connection.h"
#include "db/pool.h"
#include "db/startup.h"
#include "embed/builtin.h"
#include "embed/embedder.h"
#include "http/metrics.h"
#include "http/server.h"
#include "log/log.h"
#include "store/internal.h"
#include "store/store.h"

#ifndef KA_BENCH_NODE_DIR
#define KA_BENCH_NODE_DIR "bench/node"
#endif

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
constexpr std::string_view kDatabase = "ka_bench";
constexpr int kK = 10;
constexpr std::string_view kScope = "bench";

double since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The JSON lines file of the run (~10 GB at 1M rows): removed on every way out, Ctrl-C included.
// A plain buffer: unlink() of it is all a signal handler may do.
char g_jsonl_path[4096];

extern "C" void on_signal(int sig) {
    if (g_jsonl_path[0]) ::unlink(g_jsonl_path);
    std::signal(sig, SIG_DFL);
    std::raise(sig);
}

[[noreturn]] void die(const std::string& what) {
    std::cerr << "ka-bench: " << what << "\n";
    if (g_jsonl_path[0]) ::unlink(g_jsonl_path);
    std::exit(1);
}

template <class T>
T check(ka::Result<T> r, const std::string& what) {
    if (!r) die(what + ": " + r.error().message);
    return std::move(*r);
}
void check(const ka::Status& s, const std::string& what) {
    if (!s) die(what + ": " + s.error().message);
}

// ---------------------------------------------------------------------------------------------
// Data set

struct Data {
    int dim = 0;
    std::size_t rows = 0, queries = 0;
    std::vector<float> vectors;  // rows x dim, unit length
    std::vector<float> query_vectors;
    std::vector<std::string> contents, query_texts;
    std::vector<std::vector<std::string>> tags;
    std::vector<std::uint8_t> sel10, sel1;  // row carries tag sel10 / sel1
    const float* row(std::size_t i) const {
        return vectors.data() + i * static_cast<std::size_t>(dim);
    }
    const float* query(std::size_t i) const {
        return query_vectors.data() + i * static_cast<std::size_t>(dim);
    }
    ka::embed::Vector row_vector(std::size_t i) const { return {row(i), row(i) + dim}; }
    ka::embed::Vector query_vector(std::size_t i) const { return {query(i), query(i) + dim}; }
};

std::string row_id(std::size_t i) {
    return fmt::format("00000000-0000-7000-8000-{:012x}", i);
}
long long index_of(std::string_view id) {
    if (id.size() != 36) return -1;
    return std::strtoll(std::string(id.substr(24)).c_str(), nullptr, 16);
}

std::uint64_t mix(std::uint64_t x) {  // splitmix64
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Clustered vectors with a low intrinsic dimension per cluster (like real embeddings):
// x = centre + 0.6 * (subspace of 16 directions) + 0.2 * isotropic noise (norms), normalised.
Data generate(std::size_t rows, std::size_t queries, int dim, std::uint64_t seed) {
    Data d;
    d.dim = dim;
    d.rows = rows;
    d.queries = queries;
    const auto D = static_cast<std::size_t>(dim);
    constexpr std::size_t kSub = 16;
    std::size_t clusters = std::clamp<std::size_t>(rows / 50, 1, 100);
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto normalise = [&](float* v) {
        double n = 0;
        for (std::size_t j = 0; j < D; ++j) n += static_cast<double>(v[j]) * v[j];
        auto inv = static_cast<float>(1.0 / std::sqrt(std::max(n, 1e-30)));
        for (std::size_t j = 0; j < D; ++j) v[j] *= inv;
    };
    std::vector<float> centres(clusters * D), basis(clusters * kSub * D);
    for (auto& x : centres) x = normal(rng);
    for (std::size_t c = 0; c < clusters; ++c) normalise(&centres[c * D]);
    for (auto& x : basis) x = normal(rng);
    for (std::size_t b = 0; b < clusters * kSub; ++b) normalise(&basis[b * D]);

    static const std::vector<std::string> vocabulary = [] {
        std::vector<std::string> v;
        const char* syllables[] = {"ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "po",
                                   "da", "fe", "gi", "ho", "ju", "be", "cy", "wa", "xe", "qu"};
        for (const char* a : syllables)
            for (const char* b : syllables) v.push_back(std::string(a) + b + "n");
        return v;
    }();
    auto text = [&](std::size_t cluster, std::mt19937_64& r, std::string_view prefix) {
        std::string t(prefix);
        std::uniform_int_distribution<std::size_t> len(8, 14), word(0, 39);
        std::size_t n = len(r);
        for (std::size_t w = 0; w < n; ++w) {
            // Each cluster favours 40 words of the 400: texts and vectors agree roughly.
            std::size_t idx = (cluster * 7 + word(r) * 10 + (w % 3)) % vocabulary.size();
            t += " " + vocabulary[idx];
        }
        return t;
    };
    const float noise = 0.2f / std::sqrt(static_cast<float>(dim));
    auto point = [&](float* out, std::size_t c) {
        std::vector<float> g(kSub);
        for (auto& x : g) x = normal(rng);
        const float* centre = &centres[c * D];
        for (std::size_t j = 0; j < D; ++j) {
            float v = centre[j] + noise * normal(rng);
            for (std::size_t s = 0; s < kSub; ++s)
                v += 0.15f * g[s] * basis[(c * kSub + s) * D + j];
            out[j] = v;
        }
        normalise(out);
    };
    std::uniform_int_distribution<std::size_t> pick(0, clusters - 1);
    d.vectors.resize(rows * D);
    d.contents.resize(rows);
    d.tags.resize(rows);
    d.sel10.resize(rows);
    d.sel1.resize(rows);
    for (std::size_t i = 0; i < rows; ++i) {
        std::size_t c = pick(rng);
        point(&d.vectors[i * D], c);
        d.contents[i] = text(c, rng, fmt::format("Note {}:", i));
        std::uint64_t h = mix(seed ^ (i * 0x2545F4914F6CDD1Dull)) % 100;
        d.sel10[i] = h < 10;
        d.sel1[i] = h < 1;
        d.tags[i] = {fmt::format("c{}", c)};
        if (d.sel10[i]) d.tags[i].push_back("sel10");
        if (d.sel1[i]) d.tags[i].push_back("sel1");
    }
    d.query_vectors.resize(queries * D);
    d.query_texts.resize(queries);
    for (std::size_t q = 0; q < queries; ++q) {
        std::size_t c = pick(rng);
        point(&d.query_vectors[q * D], c);
        d.query_texts[q] = text(c, rng, "what about");
    }
    return d;
}

// Exact top-k by brute force (dot product of unit vectors = cosine similarity), on all threads.
using Truth = std::vector<std::vector<std::size_t>>;
Truth exact_topk(const Data& d, const std::vector<std::uint8_t>* only) {
    Truth truth(d.queries);
    unsigned threads = std::max(1u, std::thread::hardware_concurrency());
    std::atomic<std::size_t> next{0};
    auto work = [&] {
        std::vector<std::pair<float, std::size_t>> scored;
        for (std::size_t q; (q = next++) < d.queries;) {
            scored.clear();
            const float* qv = d.query(q);
            for (std::size_t i = 0; i < d.rows; ++i) {
                if (only && !(*only)[i]) continue;
                const float* v = d.row(i);
                float s = 0;
                for (int j = 0; j < d.dim; ++j) s += qv[j] * v[j];
                scored.emplace_back(-s, i);
            }
            std::size_t k = std::min<std::size_t>(kK, scored.size());
            std::partial_sort(scored.begin(), scored.begin() + static_cast<long>(k), scored.end());
            for (std::size_t j = 0; j < k; ++j) truth[q].push_back(scored[j].second);
        }
    };
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) pool.emplace_back(work);
    for (auto& t : pool) t.join();
    return truth;
}

double recall(const std::vector<std::size_t>& truth, const std::vector<long long>& found) {
    if (truth.empty()) return 1.0;
    std::size_t hit = 0;
    for (std::size_t t : truth)
        hit += std::find(found.begin(), found.end(), static_cast<long long>(t)) != found.end();
    return static_cast<double>(hit) / static_cast<double>(truth.size());
}

// ---------------------------------------------------------------------------------------------
// Database plumbing

// The target's conninfo with another database name (URI or key=value alike).
std::string with_database(const std::string& conninfo, std::string_view database) {
    char* err = nullptr;
    PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
    if (!opts) {
        std::string why = err ? err : "unparsable conninfo";
        PQfreemem(err);
        die("cannot parse the database address: " + why);
    }
    auto quote = [](std::string_view v) {
        std::string out = "'";
        for (char ch : v) {
            if (ch == '\'' || ch == '\\') out += '\\';
            out += ch;
        }
        return out + "'";
    };
    std::string out;
    for (PQconninfoOption* o = opts; o->keyword; ++o) {
        if (std::string_view(o->keyword) == "dbname" || !o->val) continue;
        out += fmt::format("{}={} ", o->keyword, quote(o->val));
    }
    PQconninfoFree(opts);
    return out + "dbname=" + quote(database);
}

// libpq connection parameters as PG* environment variables (for the Node.js peer).
void export_pg_env(const std::string& conninfo) {
    PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), nullptr);
    if (!opts) return;
    for (PQconninfoOption* o = opts; o->keyword; ++o) {
        if (o->envvar && o->val && *o->val) setenv(o->envvar, o->val, 1);
    }
    PQconninfoFree(opts);
}

PGconn* raw_connect(const std::string& conninfo) {
    PGconn* c = PQconnectdb(conninfo.c_str());
    if (PQstatus(c) != CONNECTION_OK) die(std::string("connect: ") + PQerrorMessage(c));
    return c;
}

// Every timed load starts with no dirty pages and no WAL pending: otherwise a checkpoint the
// previous load triggered lands in the next one's time (full-page writes after it, too). Best
// effort: CHECKPOINT needs superuser or pg_checkpoint.
void checkpoint(PGconn* c) {
    PQclear(PQexec(c, "CHECKPOINT"));
}

void raw_exec(PGconn* c, const std::string& sql) {
    PGresult* r = PQexec(c, sql.c_str());
    auto st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        std::string why = PQresultErrorMessage(r);
        PQclear(r);
        die("SQL failed: " + sql.substr(0, 120) + ": " + why);
    }
    PQclear(r);
}

std::string raw_scalar(PGconn* c, const std::string& sql) {
    PGresult* r = PQexec(c, sql.c_str());
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        std::string why = PQresultErrorMessage(r);
        PQclear(r);
        die("SQL failed: " + sql.substr(0, 120) + ": " + why);
    }
    std::string v = PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    PQclear(r);
    return v;
}

// COPY ... FROM STDIN (FORMAT binary) encoder, streamed to the server in 1 MiB chunks: the
// minimal program a pgvector user writes for bulk loads.
class BinaryCopy {
  public:
    BinaryCopy(PGconn* c, const std::string& sql) : c_(c) {
        PGresult* r = PQexec(c_, sql.c_str());
        if (PQresultStatus(r) != PGRES_COPY_IN)
            die(std::string("COPY: ") + PQresultErrorMessage(r));
        PQclear(r);
        buf_.append("PGCOPY\n\377\r\n\0", 11).append(8, '\0');
    }
    void row(std::uint16_t fields) {
        if (buf_.size() >= (1u << 20)) flush();
        put16(fields);
    }
    void field(std::string_view v) {
        put32(static_cast<std::uint32_t>(v.size()));
        buf_.append(v);
    }
    void int8(long long v) {
        put32(8);
        auto u = static_cast<std::uint64_t>(v);
        put32(static_cast<std::uint32_t>(u >> 32));
        put32(static_cast<std::uint32_t>(u));
    }
    void vector(const float* v, int dim) {
        put32(static_cast<std::uint32_t>(4 + 4 * dim));
        put16(static_cast<std::uint16_t>(dim));
        put16(0);
        for (int j = 0; j < dim; ++j) {
            std::uint32_t bits;
            std::memcpy(&bits, &v[j], 4);
            put32(bits);
        }
    }
    void finish() {
        put16(0xFFFF);
        flush();
        if (PQputCopyEnd(c_, nullptr) != 1) die(std::string("COPY end: ") + PQerrorMessage(c_));
        PGresult* r = PQgetResult(c_);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            die(std::string("COPY: ") + PQresultErrorMessage(r));
        PQclear(r);
        while (PGresult* extra = PQgetResult(c_)) PQclear(extra);
    }
    void put16(std::uint16_t v) {
        v = htons(v);
        buf_.append(reinterpret_cast<const char*>(&v), 2);
    }
    void put32(std::uint32_t v) {
        v = htonl(v);
        buf_.append(reinterpret_cast<const char*>(&v), 4);
    }

  private:
    void flush() {
        if (PQputCopyData(c_, buf_.data(), static_cast<int>(buf_.size())) != 1)
            die(std::string("COPY data: ") + PQerrorMessage(c_));
        buf_.clear();
    }
    PGconn* c_;
    std::string buf_;
};

std::string text_array_binary(const std::vector<std::string>& items) {
    std::string a;
    auto p32 = [&](std::uint32_t v) {
        v = htonl(v);
        a.append(reinterpret_cast<const char*>(&v), 4);
    };
    p32(items.empty() ? 0 : 1);
    p32(0);
    p32(25);
    if (!items.empty()) {
        p32(static_cast<std::uint32_t>(items.size()));
        p32(1);
        for (const auto& s : items) {
            p32(static_cast<std::uint32_t>(s.size()));
            a += s;
        }
    }
    return a;
}

std::string uuid_binary(std::size_t i) {
    std::string raw(16, '\0');
    raw[6] = 0x70;
    raw[8] = static_cast<char>(0x80);
    for (int b = 0; b < 6; ++b)
        raw[static_cast<std::size_t>(15 - b)] = static_cast<char>((i >> (8 * b)) & 0xFF);
    return raw;
}

// ---------------------------------------------------------------------------------------------
// Measurements

struct Stat {
    std::string path;  // raw | store | http | node
    int clients = 1;
    int ef = 0;
    std::string filter;  // "", "10%", "1%", "text"
    std::size_t n = 0;
    double p50 = 0, p95 = 0, p99 = 0, mean = 0, qps = 0, recall = -1, full = -1;
    json to_json() const {
        json j = {{"path", path},  {"clients", clients}, {"ef_search", ef},
                  {"queries", n},  {"p50_ms", p50},      {"p95_ms", p95},
                  {"p99_ms", p99}, {"mean_ms", mean},    {"qps", qps}};
        if (!filter.empty()) j["filter"] = filter;
        if (recall >= 0) j["recall@10"] = recall;
        if (full >= 0) j["k_returned_share"] = full;
        return j;
    }
};

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    auto idx = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size()))) - 1;
    return v[std::min(idx, v.size() - 1)];
}

// Runs `one(client, query) -> ids` for every query over `clients` threads; latencies in ms.
using QueryFn = std::function<std::vector<long long>(int client, std::size_t q)>;
Stat measure(const std::string& path, int clients, int ef, std::size_t queries, const QueryFn& one,
             const Truth* truth) {
    std::vector<double> lat(queries);
    std::vector<std::vector<long long>> found(queries);
    std::atomic<std::size_t> next{0};
    auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c) {
        threads.emplace_back([&, c] {
            for (std::size_t q; (q = next++) < queries;) {
                auto s = Clock::now();
                found[q] = one(c, q);
                lat[q] = since(s) * 1000.0;
            }
        });
    }
    for (auto& t : threads) t.join();
    double wall = since(t0);
    Stat st;
    st.path = path;
    st.clients = clients;
    st.ef = ef;
    st.n = queries;
    st.p50 = percentile(lat, 50);
    st.p95 = percentile(lat, 95);
    st.p99 = percentile(lat, 99);
    st.mean = std::accumulate(lat.begin(), lat.end(), 0.0) /
              static_cast<double>(std::max<std::size_t>(1, queries));
    st.qps = static_cast<double>(queries) / wall;
    if (truth) {
        double r = 0, full = 0;
        for (std::size_t q = 0; q < queries; ++q) {
            r += recall((*truth)[q], found[q]);
            full += found[q].size() >= std::min<std::size_t>(kK, (*truth)[q].size()) ? 1 : 0;
        }
        st.recall = r / static_cast<double>(queries);
        st.full = full / static_cast<double>(queries);
    }
    return st;
}

// measure() after one untimed pass on the same connections: a fresh backend page-faults on every
// shared-buffer page it touches for the first time, which with 8 new backends on 2 cores cost
// raw and Node.js 2-4x their QPS against the store's already warm pool.
Stat measure_warm(const std::string& path, int clients, int ef, std::size_t queries,
                  const QueryFn& one, const Truth* truth) {
    measure(path, clients, ef, queries, one, nullptr);
    return measure(path, clients, ef, queries, one, truth);
}

// A raw libpq client: one connection, one prepared statement with a binary vector parameter.
class RawClient {
  public:
    RawClient(const std::string& conninfo, int ef, const std::string& filter_tag)
        : c_(raw_connect(conninfo)), filtered_(!filter_tag.empty()) {
        raw_exec(c_, fmt::format("SET hnsw.ef_search = {}", ef));
        raw_exec(c_,
                 std::string("SET hnsw.iterative_scan = ") + (filtered_ ? "relaxed_order" : "off"));
        std::string sql = filtered_
                              ? "SELECT id::text, content, embedding <=> $1 AS distance FROM "
                                "memory_entries WHERE tags @> $2::text[] ORDER BY embedding <=> $1 "
                                "LIMIT 10"
                              : "SELECT id::text, content, embedding <=> $1 AS distance FROM "
                                "memory_entries ORDER BY embedding <=> $1 LIMIT 10";
        PGresult* r = PQprepare(c_, "knn", sql.c_str(), 0, nullptr);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            die(std::string("prepare: ") + PQresultErrorMessage(r));
        PQclear(r);
        tag_ = "{" + filter_tag + "}";
    }
    ~RawClient() { PQfinish(c_); }
    RawClient(const RawClient&) = delete;
    RawClient& operator=(const RawClient&) = delete;

    std::vector<long long> search(const float* v, int dim) {
        param_.clear();
        auto p16 = [&](std::uint16_t x) {
            x = htons(x);
            param_.append(reinterpret_cast<const char*>(&x), 2);
        };
        p16(static_cast<std::uint16_t>(dim));
        p16(0);
        for (int j = 0; j < dim; ++j) {
            std::uint32_t bits;
            std::memcpy(&bits, &v[j], 4);
            bits = htonl(bits);
            param_.append(reinterpret_cast<const char*>(&bits), 4);
        }
        const char* values[2] = {param_.data(), tag_.c_str()};
        int lengths[2] = {static_cast<int>(param_.size()), 0};
        int formats[2] = {1, 0};
        PGresult* r = PQexecPrepared(c_, "knn", filtered_ ? 2 : 1, values, lengths, formats, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            die(std::string("search: ") + PQresultErrorMessage(r));
        std::vector<long long> ids;
        for (int i = 0; i < PQntuples(r); ++i) ids.push_back(index_of(PQgetvalue(r, i, 0)));
        PQclear(r);
        return ids;
    }

  private:
    PGconn* c_;
    bool filtered_;
    std::string tag_, param_;
};

// The store's embedder for the run: query texts "bench-q-<n>" resolve to the generated query
// vectors (so the HTTP API, which takes text, searches the same vectors as raw libpq with no
// embedding cost); anything else goes to the builtin embedder.
class BenchEmbedder : public ka::embed::Embedder {
  public:
    BenchEmbedder(const Data& d, int max_input_chars)
        : data_(d), builtin_(d.dim, max_input_chars) {}
    const std::string& model() const override { return builtin_.model(); }
    int dimensions() const override { return builtin_.dimensions(); }
    ka::Result<std::vector<ka::embed::Vector>> embed(std::span<const std::string> texts,
                                                     ka::embed::Purpose purpose) override {
        if (purpose == ka::embed::Purpose::query && texts.size() == 1 &&
            texts[0].starts_with("bench-q-")) {
            auto q = std::strtoull(texts[0].c_str() + 8, nullptr, 10);
            if (q < data_.queries) return std::vector<ka::embed::Vector>{data_.query_vector(q)};
        }
        return builtin_.embed(texts, purpose);
    }
    std::vector<std::int64_t> term_features(std::string_view text) const override {
        return builtin_.term_features(text);
    }
    void set_term_stats(ka::embed::TermStats* stats) override { builtin_.set_term_stats(stats); }

  private:
    const Data& data_;
    ka::embed::BuiltinEmbedder builtin_;
};

long proc_status_kb(const char* key) {
    std::ifstream f("/proc/self/status");
    for (std::string line; std::getline(f, line);) {
        if (line.starts_with(key))
            return std::strtol(line.c_str() + std::strlen(key) + 1, nullptr, 10);
    }
    return 0;
}

std::string jsonl_line(const Data& d, std::size_t i) {
    std::string line =
        json{{"id", row_id(i)}, {"scope", kScope}, {"content", d.contents[i]}, {"tags", d.tags[i]}}
            .dump();
    line.pop_back();
    line += ",\"embedding\":[";
    for (int j = 0; j < d.dim; ++j) {
        if (j) line += ',';
        fmt::format_to(std::back_inserter(line), "{}", d.row(i)[j]);
    }
    line += "]}\n";
    return line;
}

long build_memory_mb(std::size_t rows) {
    return std::clamp<long>(static_cast<long>(rows / 100), 64, 12288);  // ~1 GB per 100k x 768
}

int build_workers() {
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()) - 1);
}

std::string fmt_ms(double v) {
    return fmt::format("{:.2f}", v);
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"knowledge-agent benchmark: the product vs raw pgvector vs a Node.js peer"};
    std::size_t rows = 100000, queries = 1000;
    std::uint64_t seed = 42;
    int clients = 8;
    std::string ef_arg = "40,100,200", json_out, config_path, node_dir = KA_BENCH_NODE_DIR;
    int batch_size = 1000;
    std::size_t live_rows = 0, remember_n = 500, node_load_rows = 20000;
    bool skip_node = false, smoke = false, keep = false;
    std::string log_level = "warn";
    app.add_option("--rows", rows, "entries in the data set");
    app.add_option("--queries", queries, "search queries per measurement");
    app.add_option("--seed", seed, "data set seed");
    app.add_option("--clients", clients, "concurrent clients for the multi-client runs");
    app.add_option("--ef", ef_arg, "comma-separated hnsw.ef_search values");
    app.add_option("--json", json_out, "also write every figure to this JSON file");
    app.add_option("--live-rows", live_rows,
                   "rows imported into a live HNSW index (default min(rows, 10000))");
    app.add_option("--node-load-rows", node_load_rows,
                   "rows the Node.js peer loads with INSERTs (default min(rows, 20000))");
    app.add_option("--batch-size", batch_size,
                   "entries per import transaction (import --batch-size)")
        ->check(CLI::PositiveNumber);
    app.add_option("--remember", remember_n, "entries saved one by one for remember throughput");
    app.add_option("--node-dir", node_dir, "directory of the Node.js peer (bench/node)");
    app.add_option("-c,--config", config_path, "knowledge-agent config file");
    app.add_option("--log-level", log_level, "product log level during the run");
    app.add_flag("--skip-node", skip_node, "do not run the Node.js peer");
    app.add_flag("--smoke", smoke, "tiny sizes (5,000 rows, 50 queries, one ef) to check the tool");
    app.add_flag("--keep", keep, "keep the ka_bench database afterwards");
    CLI11_PARSE(app, argc, argv);
    if (smoke) {
        rows = 5000;
        queries = 50;
        ef_arg = "40";
        remember_n = 20;
        if (live_rows == 0) live_rows = 500;
        node_load_rows = std::min<std::size_t>(node_load_rows, 1000);
        clients = std::min(clients, 4);
    }
    if (live_rows == 0) live_rows = std::min<std::size_t>(rows, 10000);
    live_rows = std::min(live_rows, rows);
    std::vector<int> efs;
    {
        std::stringstream s(ef_arg);
        for (std::string e; std::getline(s, e, ',');) efs.push_back(std::stoi(e));
    }
    if (rows < 200 || queries < 1 || clients < 1 || efs.empty()) die("sizes too small");

    auto loaded = ka::config::load(
        {config_path.empty() ? std::nullopt : std::optional(config_path), ka::config::process_env});
    if (!loaded) die("config: " + loaded.error().message);
    ka::config::Config config = *loaded;
    ka::log::configure(log_level, "text");
    config.postgres.pool_size = std::max(clients, 2);
    config.server.host = "127.0.0.1";
    config.server.port = 0;
    config.server.workers = std::max(config.server.workers, clients);
    config.rate_limit.requests_per_second = 0;
    config.auth.keys.clear();
    config.search.max_k = std::max(config.search.max_k, kK);
    const int dim = config.embedding.dimensions;

    json report;
    {
        utsname u{};
        uname(&u);
        report["machine"] = {{"cores", std::thread::hardware_concurrency()},
                             {"kernel", std::string(u.release)},
                             {"memory_gib", static_cast<double>(sysconf(_SC_PHYS_PAGES)) *
                                                static_cast<double>(sysconf(_SC_PAGESIZE)) /
                                                (1024.0 * 1024 * 1024)}};
        report["params"] = {{"rows", rows},
                            {"queries", queries},
                            {"seed", seed},
                            {"clients", clients},
                            {"ef_search", efs},
                            {"dimensions", dim},
                            {"k", kK},
                            {"hnsw_m", config.index.hnsw.m},
                            {"hnsw_ef_construction", config.index.hnsw.ef_construction},
                            {"live_rows", live_rows},
                            {"smoke", smoke}};
    }

    // ---- database: our own, fresh
    auto target = check(ka::db::resolve_target(config), "database");
    std::string bench_conninfo = with_database(target.conninfo, kDatabase);
    {
        PGconn* admin = raw_connect(target.conninfo);
        report["postgres"] = raw_scalar(admin, "SELECT current_setting('server_version')");
        raw_exec(admin, fmt::format("DROP DATABASE IF EXISTS {} WITH (FORCE)", kDatabase));
        raw_exec(admin, fmt::format("CREATE DATABASE {}", kDatabase));
        // What docs/sizing.md tells operators to give HNSW builds, for every session in the
        // database (the product's own index build included): ~1 GB per 100k x 768.
        raw_exec(admin, fmt::format("ALTER DATABASE {} SET maintenance_work_mem = '{}MB'",
                                    kDatabase, build_memory_mb(rows)));
        raw_exec(admin, fmt::format("ALTER DATABASE {} SET max_parallel_maintenance_workers = {}",
                                    kDatabase, build_workers()));
        PQfinish(admin);
    }
    ka::db::Target bench_target{bench_conninfo, "database ka_bench on " + target.label, false};
    {
        auto conn = check(ka::db::Connection::open(bench_target, config.postgres.connect_timeout),
                          "connect");
        check(ka::db::prepare_schema(conn, config, true), "migrations");
    }
    PGconn* admin = raw_connect(bench_conninfo);
    report["pgvector"] =
        raw_scalar(admin, "SELECT extversion FROM pg_extension WHERE extname = 'vector'");
    std::cerr << fmt::format(
        "ka-bench: {} rows x {} dims, {} queries, {} clients, ef {}, on {} / PostgreSQL {} / "
        "pgvector {}\n",
        rows, dim, queries, clients, ef_arg, bench_target.label,
        report["postgres"].get<std::string>(), report["pgvector"].get<std::string>());

    // ---- data set and exact answers
    auto t0 = Clock::now();
    Data data = generate(rows, queries, dim, seed);
    report["generate_s"] = since(t0);
    t0 = Clock::now();
    Truth truth = exact_topk(data, nullptr), truth10 = exact_topk(data, &data.sel10),
          truth1 = exact_topk(data, &data.sel1);
    report["brute_force_s"] = since(t0);
    std::cerr << fmt::format("ka-bench: data set {:.1f} s, exact top-10 {:.1f} s\n",
                             report["generate_s"].get<double>(),
                             report["brute_force_s"].get<double>());

    // ---- bulk load
    json load;
    auto rate = [](std::size_t n, double s) { return static_cast<double>(n) / s; };
    // (1) raw: minimal table, binary COPY
    raw_exec(admin,
             "CREATE TABLE raw_min (id bigint PRIMARY KEY, content text NOT NULL, embedding "
             "vector(" +
                 std::to_string(dim) +
                 ") NOT NULL); ALTER TABLE raw_min ALTER COLUMN embedding SET STORAGE PLAIN");
    checkpoint(admin);
    t0 = Clock::now();
    {
        BinaryCopy copy(admin, "COPY raw_min (id, content, embedding) FROM STDIN (FORMAT binary)");
        for (std::size_t i = 0; i < rows; ++i) {
            copy.row(3);
            copy.int8(static_cast<long long>(i));
            copy.field(data.contents[i]);
            copy.vector(data.row(i), dim);
        }
        copy.finish();
    }
    double raw_min_s = since(t0);
    load["raw_copy_minimal"] = {
        {"rows", rows}, {"seconds", raw_min_s}, {"rows_per_s", rate(rows, raw_min_s)}};
    // (2) raw: a table identical to memory_entries (same columns, storage, secondary indexes)
    raw_exec(admin,
             "CREATE TABLE raw_full (LIKE memory_entries INCLUDING DEFAULTS INCLUDING GENERATED "
             "INCLUDING CONSTRAINTS INCLUDING STORAGE); "
             "ALTER TABLE raw_full ADD PRIMARY KEY (id); "
             "CREATE UNIQUE INDEX ON raw_full (scope, content_hash); "
             "CREATE INDEX ON raw_full USING gin (content_tsv); "
             "CREATE INDEX ON raw_full USING gin (tags); "
             "CREATE INDEX ON raw_full USING gin (metadata jsonb_path_ops); "
             "CREATE INDEX ON raw_full (scope, created_at DESC, id); "
             "CREATE INDEX ON raw_full (embedding_model)");
    // LIKE does not copy table storage parameters (memory_entries' toast_tuple_target).
    if (auto options = raw_scalar(admin,
                                  "SELECT coalesce(array_to_string(reloptions, ', '), '') FROM "
                                  "pg_class WHERE oid = 'memory_entries'::regclass");
        !options.empty())
        raw_exec(admin, "ALTER TABLE raw_full SET (" + options + ")");
    checkpoint(admin);
    t0 = Clock::now();
    {
        BinaryCopy copy(admin,
                        "COPY raw_full (id, scope, content, content_hash, metadata, tags, "
                        "embedding, embedding_model) FROM STDIN (FORMAT binary)");
        const std::string model(ka::embed::kBuiltinModel), metadata("\x01{}", 3);
        for (std::size_t i = 0; i < rows; ++i) {
            copy.row(8);
            copy.field(uuid_binary(i));
            copy.field(kScope);
            copy.field(data.contents[i]);
            copy.field(ka::sha256(data.contents[i]));
            copy.field(metadata);
            copy.field(text_array_binary(data.tags[i]));
            copy.vector(data.row(i), dim);
            copy.field(model);
        }
        copy.finish();
    }
    double raw_full_s = since(t0);
    load["raw_copy_identical"] = {
        {"rows", rows}, {"seconds", raw_full_s}, {"rows_per_s", rate(rows, raw_full_s)}};
    std::cerr << fmt::format(
        "ka-bench: raw COPY {:.0f} rows/s (minimal table), {:.0f} rows/s (identical table)\n",
        rate(rows, raw_min_s), rate(rows, raw_full_s));

    BenchEmbedder embedder(data, config.embedding.max_input_chars);
    ka::db::Pool pool(bench_target, config.postgres.pool_size, config.postgres.connect_timeout);
    ka::store::Store store(pool, embedder, config);
    check(store.prepare(), "store");

    // JSONL with precomputed embeddings: what `knowledge-agent import` reads.
    t0 = Clock::now();
    // A file, as users import one: at 1M rows it is ~10 GB, which must not sit in the bench's
    // memory while the product builds its index. The live-index rows are kept in memory.
    const std::filesystem::path jsonl_path =
        std::filesystem::temp_directory_path() / fmt::format("ka-bench-{}.jsonl", getpid());
    if (jsonl_path.native().size() >= sizeof g_jsonl_path) die("temp directory path too long");
    std::strcpy(g_jsonl_path, jsonl_path.c_str());
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::string live_jsonl;
    {
        std::ofstream out(jsonl_path, std::ios::binary | std::ios::trunc);
        for (std::size_t i = 0; i < rows; ++i) {
            std::string line = jsonl_line(data, i);
            if (i < live_rows) live_jsonl += line;
            out << line;
        }
        if (!out.flush()) die("cannot write " + jsonl_path.string());
    }
    // On disk before anything is timed, as a file users import is: otherwise the kernel writes
    // the fresh 9 GiB (at 1M rows) back while the import runs and charges that I/O to it.
    if (int fd = ::open(jsonl_path.c_str(), O_RDONLY); fd < 0 || ::fsync(fd) != 0 || ::close(fd))
        die("cannot sync " + jsonl_path.string());
    report["jsonl_write_s"] = since(t0);
    report["jsonl_bytes"] = std::filesystem::file_size(jsonl_path);
    ka::store::ImportOptions import_options;
    import_options.default_scope = std::string(kScope);
    import_options.batch_size = batch_size;
    // (3) product import into the live HNSW index (what the product does today)
    checkpoint(admin);
    t0 = Clock::now();
    {
        std::ispanstream in(std::span<const char>(live_jsonl.data(), live_jsonl.size()));
        auto r = check(store.import_jsonl(in, import_options), "import (live index)");
        if (r.added != live_rows)
            die(fmt::format("import (live index) added {} of {}", r.added, live_rows));
    }
    double live_s = since(t0);
    load["product_import_live_index"] = {
        {"rows", live_rows}, {"seconds", live_s}, {"rows_per_s", rate(live_rows, live_s)}};
    // The same rows raw into a live index, for the like-for-like ratio.
    raw_exec(admin,
             "CREATE TABLE raw_live (LIKE raw_min INCLUDING ALL); CREATE INDEX ON raw_live USING "
             "hnsw (embedding vector_cosine_ops) WITH (m = " +
                 std::to_string(config.index.hnsw.m) +
                 ", ef_construction = " + std::to_string(config.index.hnsw.ef_construction) + ")");
    checkpoint(admin);
    t0 = Clock::now();
    {
        BinaryCopy copy(admin, "COPY raw_live (id, content, embedding) FROM STDIN (FORMAT binary)");
        for (std::size_t i = 0; i < live_rows; ++i) {
            copy.row(3);
            copy.int8(static_cast<long long>(i));
            copy.field(data.contents[i]);
            copy.vector(data.row(i), dim);
        }
        copy.finish();
    }
    double raw_live_s = since(t0);
    load["raw_copy_live_index"] = {
        {"rows", live_rows}, {"seconds", raw_live_s}, {"rows_per_s", rate(live_rows, raw_live_s)}};
    raw_exec(admin, "DROP TABLE raw_live");
    std::cerr << fmt::format(
        "ka-bench: live HNSW index, {} rows: product {:.0f} rows/s, raw COPY {:.0f} rows/s\n",
        live_rows, rate(live_rows, live_s), rate(live_rows, raw_live_s));

    // Where the import's time goes: parsing and validating the JSON lines alone (no database).
    t0 = Clock::now();
    {
        std::ifstream in(jsonl_path, std::ios::binary);
        std::size_t ok = 0;
        for (std::string line; std::getline(in, line);)
            ok += ka::store::parse_import_line(line, std::string(kScope), config).has_value();
        if (ok != rows) die("parse check failed");
    }
    double parse_s = since(t0);
    load["product_import_parse_only"] = {
        {"rows", rows}, {"seconds", parse_s}, {"rows_per_s", rate(rows, parse_s)}};

    // (4) product import as `knowledge-agent import --defer-index` runs it: drop the HNSW index,
    // load, then build the index and count the term statistics once. The load ends when the last
    // batch commits (its progress report).
    raw_exec(admin, "TRUNCATE memory_entries, memory_term_stats");
    import_options.defer_index = true;
    Clock::time_point last_batch;
    import_options.progress = [&](std::uint64_t, std::uint64_t) { last_batch = Clock::now(); };
    checkpoint(admin);
    t0 = Clock::now();
    {
        std::ifstream in(jsonl_path, std::ios::binary);
        auto r = check(store.import_jsonl(in, import_options), "import");
        if (r.added != rows) die(fmt::format("import added {} of {}", r.added, rows));
    }
    double import_total = since(t0);
    double import_s = std::chrono::duration<double>(last_batch - t0).count();
    load["product_import_then_index"] = {
        {"rows", rows}, {"seconds", import_s}, {"rows_per_s", rate(rows, import_s)}};
    std::filesystem::remove(jsonl_path);
    g_jsonl_path[0] = '\0';
    std::cerr << fmt::format(
        "ka-bench: product import {:.0f} rows/s (no HNSW index; JSON parse alone {:.0f} rows/s), "
        "{:.1f} s with index build and term statistics\n",
        rate(rows, import_s), rate(rows, parse_s), import_total);

    // (5) raw: HNSW build on the identical table with the configured m / ef_construction
    checkpoint(admin);
    t0 = Clock::now();
    raw_exec(admin, fmt::format("CREATE INDEX ON raw_full USING hnsw (embedding vector_cosine_ops) "
                                "WITH (m = {}, ef_construction = {})",
                                config.index.hnsw.m, config.index.hnsw.ef_construction));
    double build_s = since(t0);
    raw_exec(admin, "ANALYZE memory_entries; ANALYZE raw_min; ANALYZE raw_full");
    report["index"] = {{"build_s", build_s},
                       {"product_build_and_term_stats_s", import_total - import_s},
                       {"maintenance_work_mem_mb", build_memory_mb(rows)},
                       {"parallel_workers", build_workers()},
                       {"m", config.index.hnsw.m},
                       {"ef_construction", config.index.hnsw.ef_construction}};
    auto size_of = [&](const std::string& expr) {
        return std::stoll(raw_scalar(admin, "SELECT " + expr));
    };
    report["sizes_bytes"] = {
        {"memory_entries_heap", size_of("pg_table_size('memory_entries')")},
        {"memory_entries_total", size_of("pg_total_relation_size('memory_entries')")},
        {"hnsw_index", size_of("pg_relation_size('idx_memory_entries_embedding')")},
        {"other_indexes", size_of("pg_indexes_size('memory_entries') - "
                                  "pg_relation_size('idx_memory_entries_embedding')")},
        {"term_stats", size_of("pg_total_relation_size('memory_term_stats')")},
        {"raw_min_total", size_of("pg_total_relation_size('raw_min')")},
        {"raw_full_total", size_of("pg_total_relation_size('raw_full')")}};
    raw_exec(admin, "DROP TABLE raw_min; DROP TABLE raw_full");
    double raw_total = raw_full_s + build_s;
    load["product_import_plus_build"] = {{"seconds", import_total},
                                         {"rows_per_s", rate(rows, import_total)}};
    load["raw_copy_identical_plus_build"] = {{"seconds", raw_total},
                                             {"rows_per_s", rate(rows, raw_total)}};
    report["load"] = load;
    std::cerr << fmt::format(
        "ka-bench: raw HNSW build {:.1f} s (maintenance_work_mem {} MB, {} workers)\n", build_s,
        build_memory_mb(rows), build_workers());

    // ---- search
    std::vector<Stat> stats;
    auto add_stat = [&](Stat s) {
        std::cerr << fmt::format(
            "ka-bench:   {:<6} {}c ef {:>3} {:<4} p50 {:>6.2f} ms p99 {:>6.2f} ms {:>7.0f} qps "
            "recall {:.3f}\n",
            s.path, s.clients, s.ef, s.filter, s.p50, s.p99, s.qps, s.recall);
        stats.push_back(std::move(s));
    };
    auto store_query = [&](std::size_t q, int ef, const ka::store::Filters& f) {
        ka::store::SearchRequest r;
        r.k = kK;
        r.mode = ka::store::Mode::vector;
        r.ef_search = ef;
        r.query_vector = data.query_vector(q);
        r.filters = f;
        auto hits = check(store.search(r), "store search");
        std::vector<long long> ids;
        for (const auto& h : hits) ids.push_back(index_of(h.entry.id));
        return ids;
    };
    // Warm-up: the index and heap into the caches, every pool connection opened.
    {
        RawClient warm(bench_conninfo, efs.back(), "");
        for (std::size_t q = 0; q < std::min<std::size_t>(queries, 200); ++q)
            warm.search(data.query(q), dim);
        measure(
            "warm", clients, efs.front(), std::min<std::size_t>(queries, 100),
            [&](int, std::size_t q) { return store_query(q, efs.front(), {}); }, nullptr);
    }

    ka::http::Metrics metrics;
    ka::http::Server server(config, store, pool, metrics);
    int port = check(server.bind(), "HTTP bind");
    std::thread serving([&] { server.run(); });
    std::vector<std::unique_ptr<httplib::Client>> http_clients;
    for (int c = 0; c < clients; ++c) {
        auto cli = std::make_unique<httplib::Client>("127.0.0.1", port);
        cli->set_keep_alive(true);
        cli->set_tcp_nodelay(true);  // as curl and browsers do
        cli->set_read_timeout(60, 0);
        http_clients.push_back(std::move(cli));
    }
    auto http_query = [&](int c, const std::string& query, int ef) {
        json body = {{"query", query}, {"k", kK}, {"mode", "vector"}, {"ef_search", ef}};
        auto res = http_clients[static_cast<std::size_t>(c)]->Post("/api/v1/search", body.dump(),
                                                                   "application/json");
        if (!res || res->status != 200)
            die("HTTP search failed: " + (res ? std::to_string(res->status) + " " + res->body
                                              : httplib::to_string(res.error())));
        std::vector<long long> ids;
        json parsed = json::parse(res->body);
        for (const auto& h : parsed["results"]) ids.push_back(index_of(h["id"].get<std::string>()));
        return ids;
    };
    // Sum and count of the server's latency histograms: the HTTP request, the store search inside
    // it, and every PostgreSQL statement.
    auto server_times = [&] {
        std::map<std::string, std::pair<double, double>> out;
        std::istringstream text(metrics.render(pool.stats(), {}));
        for (std::string line; std::getline(text, line);) {
            for (auto [name, prefix] :
                 {std::pair{"request", "knowledge_agent_http_request_duration_seconds_"},
                  std::pair{"search", "knowledge_agent_search_duration_seconds_"},
                  std::pair{"statement", "knowledge_agent_db_statement_duration_seconds_"}}) {
                if (!line.starts_with(prefix)) continue;
                if (name == std::string("request") &&
                    line.find("/api/v1/search") == std::string::npos)
                    continue;
                auto value = std::strtod(line.c_str() + line.rfind(' ') + 1, nullptr);
                auto rest = std::string_view(line).substr(std::strlen(prefix));
                if (rest.starts_with("sum")) out[name].first = value;
                if (rest.starts_with("count")) out[name].second = value;
            }
        }
        return out;
    };
    // Peak RSS of the process while serving: reset the high-water mark first.
    long rss_before = proc_status_kb("VmRSS:");
    { std::ofstream("/proc/self/clear_refs") << "5"; }
    for (int ef : efs) {
        for (int n : {1, clients}) {
            std::vector<std::unique_ptr<RawClient>> raw;
            for (int c = 0; c < n; ++c)
                raw.push_back(std::make_unique<RawClient>(bench_conninfo, ef, ""));
            auto timed = [&](const std::string& path, const QueryFn& one) {
                add_stat(measure_warm(path, n, ef, queries, one, &truth));
            };
            timed("raw", [&](int c, std::size_t q) {
                return raw[static_cast<std::size_t>(c)]->search(data.query(q), dim);
            });
            // Where an HTTP search's time goes (1 client), from the server's own histograms: the
            // request, the store search inside it, and its PostgreSQL statements, beside the same
            // statement's mean in the store run just before. They cover the untimed pass of
            // measure_warm() too, so they are compared as means.
            auto before_store = server_times();
            timed("store", [&](int, std::size_t q) { return store_query(q, ef, {}); });
            auto before = server_times();
            timed("http", [&](int c, std::size_t q) {
                return http_query(c, fmt::format("bench-q-{}", q), ef);
            });
            if (n == 1) {
                // A histogram appears with its first observation: absent before means zero.
                auto mean_ms = [](auto from, auto to, const std::string& name) {
                    auto [sum0, count0] = from[name];
                    auto [sum1, count1] = to[name];
                    return count1 > count0 ? (sum1 - sum0) / (count1 - count0) * 1e3 : 0.0;
                };
                auto after = server_times();
                json parts{
                    {"ef_search", ef},
                    {"client_mean_ms", stats.back().mean},
                    {"raw_mean_ms", stats[stats.size() - 3].mean},
                    {"store_run_mean_ms", stats[stats.size() - 2].mean},
                    {"store_run_statement_mean_ms", mean_ms(before_store, before, "statement")}};
                for (const char* name : {"request", "search", "statement"})
                    parts[std::string(name) + "_mean_ms"] = mean_ms(before, after, name);
                report["http_time_inside"].push_back(parts);
                std::cerr << fmt::format(
                    "ka-bench:   http 1c ef {:>3} means: client {:.2f} ms, server request {:.2f}, "
                    "store search {:.2f}, SQL statement {:.2f} (in the store run {:.2f}; store "
                    "run {:.2f}, raw {:.2f})\n",
                    ef, parts["client_mean_ms"].get<double>(),
                    parts["request_mean_ms"].get<double>(), parts["search_mean_ms"].get<double>(),
                    parts["statement_mean_ms"].get<double>(),
                    parts["store_run_statement_mean_ms"].get<double>(),
                    parts["store_run_mean_ms"].get<double>(), parts["raw_mean_ms"].get<double>());
            }
            if (n == clients) break;
        }
    }
    long rss_peak = proc_status_kb("VmHWM:");
    report["memory_kb"] = {{"rss_before_http", rss_before}, {"peak_rss_during_http", rss_peak}};

    // Text queries end to end (builtin embedder with query term weighting), store vs HTTP.
    {
        int ef = config.search.ef_search;
        auto text_store = measure_warm(
            "store", 1, ef, queries,
            [&](int, std::size_t q) {
                ka::store::SearchRequest r;
                r.query = data.query_texts[q];
                r.k = kK;
                r.mode = ka::store::Mode::vector;
                r.ef_search = ef;
                auto hits = check(store.search(r), "store text search");
                return std::vector<long long>(hits.size());
            },
            nullptr);
        text_store.filter = "text";
        add_stat(text_store);
        auto text_http = measure_warm(
            "http", 1, ef, queries,
            [&](int c, std::size_t q) { return http_query(c, data.query_texts[q], ef); }, nullptr);
        text_http.filter = "text";
        add_stat(text_http);
    }
    server.stop();
    serving.join();
    http_clients.clear();

    // Filtered search: 10% (iterative scan) and 1% (the store's exact path) of the rows.
    for (int ef : {efs.front()}) {
        for (auto [tag, label, t] :
             {std::tuple{"sel10", "10%", &truth10}, std::tuple{"sel1", "1%", &truth1}}) {
            RawClient raw(bench_conninfo, ef, tag);
            auto s = measure_warm(
                "raw", 1, ef, queries,
                [&](int, std::size_t q) { return raw.search(data.query(q), dim); }, t);
            s.filter = label;
            add_stat(s);
            ka::store::Filters f;
            f.tags = {tag};
            s = measure_warm(
                "store", 1, ef, queries, [&](int, std::size_t q) { return store_query(q, ef, f); },
                t);
            s.filter = label;
            add_stat(s);
        }
    }

    // ---- embedding and remember
    json embedding;
    {
        std::size_t n = std::min<std::size_t>(rows, smoke ? 1000 : 20000);
        std::vector<std::string> texts(data.contents.begin(),
                                       data.contents.begin() + static_cast<long>(n));
        for (unsigned threads : {1u, 2u}) {
            t0 = Clock::now();
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < threads; ++t) {
                ts.emplace_back([&, t] {
                    ka::embed::BuiltinEmbedder e(dim, config.embedding.max_input_chars);
                    std::size_t lo = n * t / threads, hi = n * (t + 1) / threads;
                    for (std::size_t i = lo; i < hi; i += 64) {
                        std::span<const std::string> batch(texts.data() + i,
                                                           std::min<std::size_t>(64, hi - i));
                        (void)e.embed(batch, ka::embed::Purpose::document);
                    }
                });
            }
            for (auto& t : ts) t.join();
            double s = since(t0);
            embedding[fmt::format("builtin_texts_per_s_{}_thread{}", threads,
                                  threads > 1 ? "s" : "")] = rate(n, s);
        }
        t0 = Clock::now();
        for (std::size_t i = 0; i < remember_n; ++i) {
            ka::store::NewEntry e;
            e.content = fmt::format("Remembered fact {}: {}", i, data.query_texts[i % queries]);
            e.scope = "bench-remember";
            auto added = check(store.add(std::move(e)), "remember");
            if (!added.created) die("remember: unexpected duplicate");
        }
        double s = since(t0);
        embedding["remember_entries"] = remember_n;
        embedding["remember_per_s"] = rate(remember_n, s);
        embedding["remember_ms_each"] = 1000.0 * s / static_cast<double>(remember_n);
    }
    report["embedding"] = embedding;

    // ---- the Node.js peer
    json node = {{"ran", false}};
    if (skip_node) {
        node["note"] = "skipped (--skip-node)";
    } else if (std::system("node --version > /dev/null 2>&1") != 0) {
        node["note"] = "skipped: node is not installed";
    } else if (!std::filesystem::exists(std::filesystem::path(node_dir) / "bench.mjs")) {
        node["note"] = "skipped: " + node_dir + "/bench.mjs not found";
    } else {
        bool ready =
            std::filesystem::exists(std::filesystem::path(node_dir) / "node_modules" / "pgvector");
        if (!ready) {
            std::cerr << "ka-bench: npm ci in " << node_dir << "\n";
            ready = std::system(
                        ("cd '" + node_dir + "' && npm ci --no-audit --no-fund >&2").c_str()) == 0;
        }
        if (!ready) {
            node["note"] = "skipped: npm ci failed (npm or the registry unavailable)";
        } else {
            auto dir =
                std::filesystem::temp_directory_path() / fmt::format("ka-bench-{}", getpid());
            std::filesystem::create_directories(dir);
            // Only the rows the peer loads, then the queries: Node's readFileSync stops at 2 GiB
            // (all 1M rows are 3 GiB).
            const std::size_t node_rows = std::min(rows, node_load_rows);
            {
                std::ofstream f(dir / "vectors.f32", std::ios::binary);
                f.write(reinterpret_cast<const char*>(data.vectors.data()),
                        static_cast<std::streamsize>(node_rows * static_cast<std::size_t>(dim) *
                                                     sizeof(float)));
                f.write(reinterpret_cast<const char*>(data.query_vectors.data()),
                        static_cast<std::streamsize>(data.query_vectors.size() * sizeof(float)));
            }
            {
                std::vector<std::string> ids;
                for (std::size_t i = 0; i < rows; ++i) ids.push_back(row_id(i));
                json meta = {{"rows", rows},
                             {"queries", queries},
                             {"dim", dim},
                             {"k", kK},
                             {"ef", efs},
                             {"clients", clients},
                             {"contents", data.contents},
                             {"load_rows", node_rows},
                             {"truth", truth}};
                std::ofstream(dir / "meta.json") << meta.dump();
            }
            export_pg_env(bench_conninfo);
            std::cerr << "ka-bench: running the Node.js peer\n";
            std::string cmd =
                "cd '" + node_dir + "' && node bench.mjs --data '" + dir.string() + "'";
            std::string out;
            if (FILE* p = popen(cmd.c_str(), "r")) {
                char buf[4096];
                while (std::size_t got = fread(buf, 1, sizeof buf, p)) out.append(buf, got);
                int rc = pclose(p);
                auto parsed = json::parse(out, nullptr, false);
                if (rc == 0 && !parsed.is_discarded()) {
                    node = parsed;
                    node["ran"] = true;
                } else {
                    node["note"] = fmt::format("the Node.js peer failed (exit {})", rc);
                }
            }
            std::filesystem::remove_all(dir);
            for (const auto& s : node.value("search", json::array())) {
                Stat st;
                st.path = "node";
                st.clients = s["clients"].get<int>();
                st.ef = s["ef_search"].get<int>();
                st.n = s["queries"].get<std::size_t>();
                st.p50 = s["p50_ms"].get<double>();
                st.p95 = s["p95_ms"].get<double>();
                st.p99 = s["p99_ms"].get<double>();
                st.mean = s["mean_ms"].get<double>();
                st.qps = s["qps"].get<double>();
                st.recall = s["recall@10"].get<double>();
                add_stat(st);
            }
        }
    }
    report["node"] = node;
    json search = json::array();
    for (const auto& s : stats) search.push_back(s.to_json());
    report["search"] = search;

    // ---- ratios and targets
    auto find = [&](const std::string& path, int c, int ef,
                    const std::string& filter = "") -> const Stat* {
        for (const auto& s : stats)
            if (s.path == path && s.clients == c && s.ef == ef && s.filter == filter) return &s;
        return nullptr;
    };
    json targets = json::array();
    auto target_row = [&](std::string name, double value, double limit, bool met,
                          std::string detail) {
        targets.push_back({{"target", std::move(name)},
                           {"value", value},
                           {"limit", limit},
                           {"met", met},
                           {"detail", std::move(detail)}});
    };
    json ratios = json::array();
    for (int ef : efs) {
        for (int c : {1, clients}) {
            const Stat *raw = find("raw", c, ef), *st = find("store", c, ef),
                       *ht = find("http", c, ef), *nd = find("node", c, ef);
            if (!raw || !st || !ht) continue;
            json r = {{"ef_search", ef},
                      {"clients", c},
                      {"store_p50_over_raw", st->p50 / raw->p50},
                      {"http_p50_over_raw", ht->p50 / raw->p50},
                      {"http_p50_minus_raw_ms", ht->p50 - raw->p50},
                      {"store_qps_over_raw", st->qps / raw->qps},
                      {"http_qps_over_raw", ht->qps / raw->qps}};
            if (nd) {
                r["node_p50_over_raw"] = nd->p50 / raw->p50;
                r["node_qps_over_raw"] = nd->qps / raw->qps;
            }
            ratios.push_back(r);
            if (c == 1) {
                target_row(fmt::format("store p50 <= 1.10 x raw (ef {})", ef), st->p50 / raw->p50,
                           1.10, st->p50 <= 1.10 * raw->p50,
                           fmt::format("{} vs {} ms", fmt_ms(st->p50), fmt_ms(raw->p50)));
                target_row(fmt::format("HTTP p50 <= raw + 0.5 ms (ef {})", ef), ht->p50 - raw->p50,
                           0.5, ht->p50 <= raw->p50 + 0.5,
                           fmt::format("{} vs {} ms", fmt_ms(ht->p50), fmt_ms(raw->p50)));
            } else {
                target_row(fmt::format("store {}-client QPS >= 0.9 x raw (ef {})", c, ef),
                           st->qps / raw->qps, 0.9, st->qps >= 0.9 * raw->qps,
                           fmt::format("{:.0f} vs {:.0f} qps", st->qps, raw->qps));
                target_row(fmt::format("HTTP {}-client QPS >= 0.9 x raw (ef {})", c, ef),
                           ht->qps / raw->qps, 0.9, ht->qps >= 0.9 * raw->qps,
                           fmt::format("{:.0f} vs {:.0f} qps", ht->qps, raw->qps));
            }
            if (nd) {
                bool ahead = st->p50 < nd->p50 && ht->p50 < nd->p50 && st->qps > nd->qps &&
                             ht->qps > nd->qps;
                target_row(
                    fmt::format("ahead of Node.js ({} client{}, ef {})", c, c > 1 ? "s" : "", ef),
                    nd->p50 / ht->p50, 1.0, ahead,
                    fmt::format("p50 store {} / HTTP {} / node {} ms; qps {:.0f} / {:.0f} / {:.0f}",
                                fmt_ms(st->p50), fmt_ms(ht->p50), fmt_ms(nd->p50), st->qps, ht->qps,
                                nd->qps));
            }
        }
    }
    double import_ratio = rate(rows, import_s) / rate(rows, raw_full_s);
    target_row("import >= 0.8 x raw binary COPY (identical table, load)", import_ratio, 0.8,
               import_ratio >= 0.8,
               fmt::format("{:.0f} vs {:.0f} rows/s; vs minimal table {:.2f}x; live index {:.2f}x; "
                           "with the index build {:.2f}x",
                           rate(rows, import_s), rate(rows, raw_full_s),
                           rate(rows, import_s) / rate(rows, raw_min_s), raw_live_s / live_s,
                           (raw_full_s + build_s) / import_total));
    if (node.value("ran", false) && node.contains("load")) {
        double node_rate = node["load"]["rows_per_s"].get<double>();
        target_row("import ahead of Node.js load", rate(rows, import_s) / node_rate, 1.0,
                   rate(rows, import_s) > node_rate,
                   fmt::format("{:.0f} vs {:.0f} rows/s", rate(rows, import_s), node_rate));
    }
    for (auto [label, limit] : {std::pair{"10%", 0.95}, std::pair{"1%", 1.0}}) {
        if (const Stat* s = find("store", 1, efs.front(), label)) {
            target_row(fmt::format("filtered recall@10 at {} >= {}", label, limit), s->recall,
                       limit, s->recall >= limit - 1e-9 && s->full >= 1.0,
                       fmt::format("recall {:.3f}, k returned in {:.0f}% of queries", s->recall,
                                   100 * s->full));
        }
    }
    report["ratios"] = ratios;
    report["targets"] = targets;

    // ---- output
    std::cout << fmt::format(
        "\nka-bench: {} rows x {} dims, {} queries, k={}, {} clients; PostgreSQL {}, pgvector "
        "{}\n\n",
        rows, dim, queries, kK, clients, report["postgres"].get<std::string>(),
        report["pgvector"].get<std::string>());
    std::cout << "Bulk load                                   rows      seconds     rows/s\n";
    auto load_row = [&](const char* name, const json& j) {
        std::cout << fmt::format("  {:<40} {:>8} {:>10.2f} {:>10.0f}\n", name,
                                 j.value("rows", rows), j["seconds"].get<double>(),
                                 j["rows_per_s"].get<double>());
    };
    load_row("raw COPY binary, minimal table", load["raw_copy_minimal"]);
    load_row("raw COPY binary, identical table", load["raw_copy_identical"]);
    load_row("product import --defer-index, load", load["product_import_then_index"]);
    load_row("  + its index build and term statistics", load["product_import_plus_build"]);
    load_row("raw COPY identical + CREATE INDEX", load["raw_copy_identical_plus_build"]);
    load_row("  (JSON parse + validation alone)", load["product_import_parse_only"]);
    load_row("raw COPY binary, live HNSW index", load["raw_copy_live_index"]);
    load_row("product import, live HNSW index", load["product_import_live_index"]);
    if (node.value("ran", false) && node.contains("load"))
        load_row("Node.js pg + pgvector INSERTs", node["load"]);
    std::cout << fmt::format(
        "  raw HNSW build (m={}, ef_construction={}): {:.1f} s, index {:.0f} MiB, table {:.0f} "
        "MiB\n\n",
        config.index.hnsw.m, config.index.hnsw.ef_construction, build_s,
        report["sizes_bytes"]["hnsw_index"].get<double>() / 1048576.0,
        report["sizes_bytes"]["memory_entries_heap"].get<double>() / 1048576.0);
    std::cout << "Search (k=10)   path   clients  ef  filter   p50 ms   p95 ms   p99 ms      qps  "
                 "recall@10\n";
    for (const auto& s : stats) {
        std::cout << fmt::format(
            "                {:<6} {:>7} {:>3}  {:<6} {:>8.2f} {:>8.2f} {:>8.2f} {:>8.0f}  {}\n",
            s.path, s.clients, s.ef, s.filter, s.p50, s.p95, s.p99, s.qps,
            s.recall >= 0 ? fmt::format("{:.3f}", s.recall) : "-");
    }
    std::cout << "\nRatios          clients  ef   store/raw p50  http/raw p50  http-raw ms  "
                 "store/raw qps  http/raw qps\n";
    for (const auto& r : ratios) {
        std::cout << fmt::format(
            "                {:>7} {:>3} {:>14.2f} {:>13.2f} {:>12.2f} {:>14.2f} {:>13.2f}\n",
            r["clients"].get<int>(), r["ef_search"].get<int>(),
            r["store_p50_over_raw"].get<double>(), r["http_p50_over_raw"].get<double>(),
            r["http_p50_minus_raw_ms"].get<double>(), r["store_qps_over_raw"].get<double>(),
            r["http_qps_over_raw"].get<double>());
    }
    std::cout << fmt::format(
        "\nEmbedding: builtin {:.0f} texts/s (1 thread), {:.0f} texts/s (2 threads); remember "
        "{:.0f} entries/s ({:.2f} ms each)\n",
        embedding["builtin_texts_per_s_1_thread"].get<double>(),
        embedding["builtin_texts_per_s_2_threads"].get<double>(),
        embedding["remember_per_s"].get<double>(), embedding["remember_ms_each"].get<double>());
    std::cout << fmt::format(
        "Memory: RSS {:.0f} MiB before the HTTP runs, peak {:.0f} MiB during them (the bench's own "
        "data set included)\n",
        static_cast<double>(rss_before) / 1024.0, static_cast<double>(rss_peak) / 1024.0);
    if (!node.value("ran", false))
        std::cout << "Node.js peer: " << node.value("note", std::string("not run")) << "\n";
    std::cout << "\nTargets\n";
    for (const auto& t : targets) {
        std::cout << fmt::format("  [{}] {}: {}\n", t["met"].get<bool>() ? "met    " : "NOT met",
                                 t["target"].get<std::string>(), t["detail"].get<std::string>());
    }
    if (!json_out.empty()) {
        std::ofstream f(json_out);
        f << report.dump(2) << "\n";
        if (!f) die("cannot write " + json_out);
        std::cout << "\nJSON: " << json_out << "\n";
    }
    PQfinish(admin);
    if (!keep) {
        PGconn* a = raw_connect(target.conninfo);
        raw_exec(a, fmt::format("DROP DATABASE IF EXISTS {} WITH (FORCE)", kDatabase));
        PQfinish(a);
    }
    return 0;
}
