// Knowledge commands: remember, search, get, forget, list, stats, import, export, reindex.
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "cli/common.h"

namespace ka::cli {
namespace {

using nlohmann::json;

// Exit code of an import that rejected some lines but imported the rest (docs/cli.md).
constexpr int kExitSomeLinesRejected = 14;
constexpr std::size_t kRejectedShown = 50;

struct FilterOptions {
    std::vector<std::string> scopes, tags;
    std::string source, after, before;
    void add_to(CLI::App* cmd) {
        cmd->add_option("--scope", scopes, "only these scopes (repeatable)");
        cmd->add_option("--tag", tags, "only entries with all these tags (repeatable)");
        cmd->add_option("--source", source, "only entries from this source");
        cmd->add_option("--after", after, "created at or after (RFC 3339)");
        cmd->add_option("--before", before, "created before (RFC 3339)");
    }
    store::Filters filters() const {
        store::Filters f{scopes, tags, {}, {}, {}};
        if (!source.empty()) f.source = source;
        if (!after.empty()) f.created_after = after;
        if (!before.empty()) f.created_before = before;
        return f;
    }
};

std::string one_line(std::string_view text, std::size_t width) {
    std::string out;
    for (char c : text) out += (c == '\n' || c == '\r' || c == '\t') ? ' ' : c;
    if (out.size() > width) {
        std::size_t cut = width - 3;
        while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80)
            --cut;  // UTF-8 boundary
        out = out.substr(0, cut) + "...";
    }
    return out;
}

void print_entry_line(const store::Entry& e) {
    std::cout << fmt::format(
        "   {} | scope {}{} | {}\n", e.id, e.scope,
        e.tags.empty() ? "" : fmt::format(" | tags {}", fmt::join(e.tags, ",")),
        e.created_at.substr(0, 10));
}

// Progress on a terminal: bytes read of the file's size, line rate and time left.
class Progress {
  public:
    explicit Progress(std::uint64_t total_bytes)
        : total_(total_bytes), tty_(isatty(STDERR_FILENO) != 0) {}
    void update(std::uint64_t bytes, std::uint64_t lines) {
        if (!tty_) return;
        double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
        double rate = seconds > 0 ? static_cast<double>(lines) / seconds : 0;
        std::string eta = "?";
        if (total_ > 0 && bytes > 0) {
            double left = seconds * static_cast<double>(total_ - std::min(bytes, total_)) /
                          static_cast<double>(bytes);
            eta = fmt::format("{}:{:02}", static_cast<int>(left) / 60, static_cast<int>(left) % 60);
        }
        int pct = total_ ? static_cast<int>(100 * std::min(bytes, total_) / total_) : 0;
        int filled = pct / 4;
        std::cerr << fmt::format("\r[{}{}] {:3}%  {} lines  {:.0f} lines/s  ETA {}   ",
                                 std::string(filled, '#'), std::string(25 - filled, '.'), pct,
                                 lines, rate, eta)
                  << std::flush;
        shown_ = true;
    }
    ~Progress() {
        if (shown_) std::cerr << "\n";
    }

  private:
    std::uint64_t total_;
    bool tty_;
    bool shown_ = false;
    std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace

void add_store_commands(CLI::App& app, const Globals& g, int& exit) {
    // Options outlive parsing: they are read in the callbacks.
    struct State {
        bool json = false;
        std::string text, id, mode, file = "-", cursor;
        std::vector<std::string> tags, meta;
        std::string scope, source, author;
        int k = 0, limit = 20, ef_search = 0, batch_size = 500;
        double min_similarity = -1;
        bool no_embeddings = false, defer_index = false;
        FilterOptions filter;
    };
    auto st = std::make_shared<State>();

    auto* remember = app.add_subcommand("remember", "save a piece of knowledge");
    remember->add_option("text", st->text, "what to remember")->required();
    remember->add_option("--tag", st->tags, "tag (repeatable)");
    remember->add_option("--scope", st->scope,
                         "scope (team or namespace); default store.default_scope");
    remember->add_option("--meta", st->meta, "metadata key=value (repeatable)");
    remember->add_option("--source", st->source, "where it comes from (URL, document, channel)");
    remember->add_option("--author", st->author, "who said it");
    remember->add_flag("--json", st->json, "machine-readable output");
    remember->callback([&g, &exit, st] {
        store::NewEntry e;
        e.content = st->text;
        e.scope = st->scope;
        e.tags = st->tags;
        for (const auto& kv : st->meta) {
            auto eq = kv.find('=');
            if (eq == std::string::npos || eq == 0) {
                exit = report("Invalid argument",
                              Error{ErrorCode::invalid_argument,
                                    fmt::format("--meta '{}' is not key=value", kv),
                                    "",
                                    {}});
                return;
            }
            e.metadata[kv.substr(0, eq)] = kv.substr(eq + 1);
        }
        if (!st->source.empty()) e.source = st->source;
        if (!st->author.empty()) e.author = st->author;
        auto s = open_services(g, exit);
        if (!s) return;
        auto added = s->store->add(std::move(e));
        if (!added) {
            exit = report("Failed to save", added.error());
            return;
        }
        if (st->json) {
            std::cout << json{{"created", added->created}, {"entry", store::to_json(added->entry)}}
                             .dump(2)
                      << "\n";
        } else {
            std::cout << fmt::format("{} {} (scope {})\n",
                                     added->created ? "Saved" : "Already known:", added->entry.id,
                                     added->entry.scope);
        }
    });

    auto* search = app.add_subcommand("search", "find knowledge by meaning");
    search->add_option("query", st->text, "what to look for")->required();
    // Explicit 0 would read as "not given" below (the default k / ef_search): refuse it here.
    search->add_option("-k", st->k, "number of results (default search.default_k)")
        ->check(CLI::Range(1, 10000));
    search->add_option("--mode", st->mode, "vector, text or hybrid (default search.mode)");
    search->add_option("--min-similarity", st->min_similarity, "cosine similarity floor, -1 to 1");
    search->add_option("--ef-search", st->ef_search, "HNSW ef_search for this query")
        ->check(CLI::Range(1, 1000));
    st->filter.add_to(search);
    search->add_flag("--json", st->json, "machine-readable output");
    search->callback([&g, &exit, st] {
        store::SearchRequest r;
        r.query = st->text;
        r.k = st->k;
        r.filters = st->filter.filters();
        r.min_similarity = st->min_similarity;
        if (st->ef_search) r.ef_search = st->ef_search;
        if (!st->mode.empty()) {
            auto mode = store::parse_mode(st->mode);
            if (!mode) {
                exit = report("Invalid argument", mode.error());
                return;
            }
            r.mode = *mode;
        }
        auto s = open_services(g, exit);
        if (!s) return;
        std::string degraded;
        auto hits = s->store->search(r, &degraded);
        if (!hits) {
            exit = report("Search failed", hits.error());
            return;
        }
        if (!degraded.empty()) std::cerr << "Warning: " << degraded << "\n";
        if (st->json) {
            json out = json::array();
            for (const auto& h : *hits) out.push_back(store::to_json(h));
            std::cout << out.dump(2) << "\n";
            return;
        }
        if (hits->empty()) std::cout << "No matching knowledge.\n";
        for (const auto& h : *hits) {
            std::cout << fmt::format("{:2}. [{}] {}\n", h.rank,
                                     h.similarity ? fmt::format("{:.2f}", *h.similarity) : " -- ",
                                     one_line(h.entry.content, 100));
            print_entry_line(h.entry);
        }
    });

    auto* get = app.add_subcommand("get", "show one entry");
    get->add_option("id", st->id, "entry id")->required();
    get->add_flag("--json", st->json, "machine-readable output");
    get->callback([&g, &exit, st] {
        auto s = open_services(g, exit);
        if (!s) return;
        auto e = s->store->get(st->id);
        if (!e) {
            exit = report("Not found", e.error());
            return;
        }
        if (st->json) {
            std::cout << store::to_json(*e).dump(2) << "\n";
            return;
        }
        std::cout << e->content << "\n\n";
        std::cout << fmt::format(
            "id:       {}\nscope:    {}\ntags:     {}\nsource:   {}\nauthor:   {}\n"
            "metadata: {}\nmodel:    {}\ncreated:  {}\nupdated:  {}\n",
            e->id, e->scope, fmt::join(e->tags, ", "), e->source.value_or("-"),
            e->author.value_or("-"), e->metadata.dump(), e->embedding_model, e->created_at,
            e->updated_at);
    });

    auto* forget = app.add_subcommand("forget", "delete an entry");
    forget->add_option("id", st->id, "entry id")->required();
    forget->callback([&g, &exit, st] {
        auto s = open_services(g, exit);
        if (!s) return;
        if (auto ok = s->store->remove(st->id); !ok) {
            exit = report("Failed to delete", ok.error());
            return;
        }
        std::cout << "Deleted " << st->id << "\n";
    });

    auto* list = app.add_subcommand("list", "list entries, newest first");
    st->filter.add_to(list);
    list->add_option("--limit", st->limit, "entries per page (1-1000)");
    list->add_option("--cursor", st->cursor, "next_cursor from the previous page");
    list->add_flag("--json", st->json, "machine-readable output");
    list->callback([&g, &exit, st] {
        auto s = open_services(g, exit);
        if (!s) return;
        auto page = s->store->list({st->filter.filters(), st->limit, st->cursor});
        if (!page) {
            exit = report("Failed to list", page.error());
            return;
        }
        if (st->json) {
            json out = {{"entries", json::array()}, {"next_cursor", page->next_cursor}};
            for (const auto& e : page->entries) out["entries"].push_back(store::to_json(e));
            std::cout << out.dump(2) << "\n";
            return;
        }
        for (const auto& e : page->entries) {
            std::cout << "- " << one_line(e.content, 100) << "\n";
            print_entry_line(e);
        }
        if (!page->next_cursor.empty())
            std::cout << "\nmore: --cursor " << page->next_cursor << "\n";
    });

    auto* stats = app.add_subcommand("stats", "entries per scope, table and index sizes");
    stats->add_flag("--json", st->json, "machine-readable output");
    stats->callback([&g, &exit, st] {
        auto s = open_services(g, exit);
        if (!s) return;
        auto r = s->store->stats();
        if (!r) {
            exit = report("Failed to read statistics", r.error());
            return;
        }
        if (st->json) {
            json scopes = json::object();
            for (const auto& sc : r->scopes) scopes[sc.scope] = sc.entries;
            std::cout << json{{"entries", r->entries},
                              {"scopes", scopes},
                              {"table_size", r->table_size},
                              {"index_size", r->index_size},
                              {"embedding_model", r->embedding_model}}
                             .dump(2)
                      << "\n";
            return;
        }
        std::cout << fmt::format(
            "entries:          {}\nembedding model:  {}\ntable size:       {}\nindex size:       "
            "{}\n",
            r->entries, r->embedding_model, r->table_size, r->index_size);
        for (const auto& sc : r->scopes)
            std::cout << fmt::format("  {:<30} {}\n", sc.scope, sc.entries);
    });

    auto* import = app.add_subcommand(
        "import", "load entries from a JSONL file (re-runnable: duplicates are skipped)");
    import->add_option("file", st->file, "JSONL file, or - for standard input")->required();
    import->add_option("--scope", st->scope, "scope for lines without one");
    import->add_option("--batch-size", st->batch_size, "lines per transaction")
        ->check(CLI::Range(1, 100000));
    import->add_flag("--json", st->json, "machine-readable report");
    import->add_flag("--defer-index", st->defer_index,
                     "drop the HNSW index and rebuild it after the import (bulk loads)");
    import->callback([&g, &exit, st] {
        std::ifstream file;
    std::uint64_t size = 0;
    if (st->file != "-") {
        file.open(st->file, std::ios::binary);
        if (!file) {
            exit = report(
                "Import failed",
                Error{
                    ErrorCode::invalid_argument, fmt::format("cannot read {}", st->file), "", {}});
            return;
        }
        std::error_code ec;
        size = std::filesystem::file_size(st->file, ec);
    }
    auto s = open_services(g, exit);
    if (!s) return;
    Progress progress(size);
    store::ImportOptions options;
    options.default_scope = st->scope;
    options.batch_size = st->batch_size;
    options.defer_index = st->defer_index;
    options.progress = [&](std::uint64_t bytes, std::uint64_t lines) {
        progress.update(bytes, lines);
    };
    auto started = std::chrono::steady_clock::now();
    auto r = s->store->import_jsonl(st->file == "-" ? std::cin : file, options);
    if (!r) {
        exit = report("Import failed", r.error());
        return;
    }
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (st->json) {
        json rejected = json::array();
        for (const auto& x : r->rejected)
            rejected.push_back({{"line", x.line}, {"reason", x.reason}});
        std::cout << json{{"lines", r->lines},
                          {"added", r->added},
                          {"duplicates", r->duplicates},
                          {"rejected", rejected},
                          {"seconds", seconds}}
                         .dump(2)
                  << "\n";
    } else {
        std::cout << fmt::format(
            "{} lines: {} added, {} duplicates skipped, {} rejected ({:.1f} s)\n", r->lines,
            r->added, r->duplicates, r->rejected.size(), seconds);
        for (std::size_t i = 0; i < r->rejected.size() && i < kRejectedShown; ++i) {
            std::cout << fmt::format("  line {}: {}\n", r->rejected[i].line, r->rejected[i].reason);
        }
        if (r->rejected.size() > kRejectedShown) {
            std::cout << fmt::format("  ... and {} more (--json lists all)\n",
                                     r->rejected.size() - kRejectedShown);
        }
    }
    if (!r->rejected.empty()) exit = kExitSomeLinesRejected;
});

auto* exp = app.add_subcommand("export",
                               "write entries as JSONL, with embeddings (import reproduces them)");
exp->add_option("file", st->file, "output file, or - for standard output (default)");
st->filter.add_to(exp);
exp->add_flag("--no-embeddings", st->no_embeddings,
              "leave embeddings out (to re-embed with another model)");
exp->callback([&g, &exit, st] {
    auto s = open_services(g, exit);
    if (!s) return;
    std::ofstream file;
    if (st->file != "-") {
        file.open(st->file, std::ios::binary | std::ios::trunc);
        if (!file) {
            exit = report(
                "Export failed",
                Error{
                    ErrorCode::invalid_argument, fmt::format("cannot write {}", st->file), "", {}});
            return;
        }
    }
    std::ostream& out = st->file == "-" ? std::cout : file;
    auto n = s->store->export_jsonl(out, st->filter.filters(), !st->no_embeddings);
    if (!n) {
        exit = report("Export failed", n.error());
        return;
    }
    out.flush();
    std::cerr << fmt::format("exported {} entries\n", *n);
});

app.add_subcommand("reindex",
                   "rebuild the HNSW index with index.hnsw.m / ef_construction (CONCURRENTLY)")
    ->callback([&g, &exit] {
        auto s = open_services(g, exit);
        if (!s) return;
        if (auto ok = s->store->reindex(); !ok) exit = report("Reindex failed", ok.error());
    });
}  // namespace ka::cli

}  // namespace ka::cli
