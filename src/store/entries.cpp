// Writing and reading entries: add (with race-safe dedup), batches through binary COPY,
// get, update, delete, list, count, stats, model check and reindex.
#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <tuple>

#include <fmt/format.h>

#include "db/startup.h"
#include "log/log.h"
#include "store/internal.h"
#include "store/store.h"

namespace ka::store {
namespace {

using namespace detail;

Error not_found(const std::string& id) {
    return Error{ErrorCode::not_found, fmt::format("no entry {}", id), "", {}};
}

// COPY ... (FORMAT binary) encoding.
class CopyWriter {
  public:
    CopyWriter() { data_.append("PGCOPY\n\377\r\n\0", 11).append(8, '\0'); }
    void row(std::uint16_t fields) { put16(fields); }
    void null() { put32(0xFFFFFFFFu); }
    void bytes(std::string_view v) {
        put32(static_cast<std::uint32_t>(v.size()));
        data_.append(v);
    }
    void optional(const std::optional<std::string>& v) { v ? bytes(*v) : null(); }
    void int4(std::uint32_t v) {
        put32(4);
        put32(v);
    }
    void int8(std::int64_t v) {
        put32(8);
        put32(static_cast<std::uint32_t>(static_cast<std::uint64_t>(v) >> 32));
        put32(static_cast<std::uint32_t>(v));
    }
    void jsonb(std::string_view text) {
        put32(static_cast<std::uint32_t>(text.size() + 1));
        data_.push_back('\1');  // jsonb's binary format: version 1, then the text
        data_.append(text);
    }
    void uuid(std::string_view text) {
        std::string raw;
        for (std::size_t i = 0; i < text.size(); ++i) {
            if (text[i] == '-') continue;
            raw += static_cast<char>(std::stoi(std::string(text.substr(i, 2)), nullptr, 16));
            ++i;
        }
        bytes(raw);
    }
    void text_array(const std::vector<std::string>& items) {
        std::string a;
        auto p32 = [&](std::uint32_t v) {
            v = htonl(v);
            a.append(reinterpret_cast<const char*>(&v), 4);
        };
        p32(items.empty() ? 0 : 1);  // dimensions
        p32(0);                      // no NULLs
        p32(25);                     // element type: text
        if (!items.empty()) {
            p32(static_cast<std::uint32_t>(items.size()));
            p32(1);  // lower bound
            for (const auto& item : items) {
                p32(static_cast<std::uint32_t>(item.size()));
                a.append(item);
            }
        }
        bytes(a);
    }
    std::string finish() {
        put16(0xFFFF);
        return std::move(data_);
    }

  private:
    void put16(std::uint16_t v) {
        v = htons(v);
        data_.append(reinterpret_cast<const char*>(&v), 2);
    }
    void put32(std::uint32_t v) {
        v = htonl(v);
        data_.append(reinterpret_cast<const char*>(&v), 4);
    }
    std::string data_;
};

Status copy_in(db::Connection& conn, const std::string& sql, const std::string& data) {
    PGconn* raw = conn.raw();
    db::PgResult start(PQexec(raw, sql.c_str()));
    if (PQresultStatus(start.raw()) != PGRES_COPY_IN)
        return std::unexpected(db::statement_error(start.raw(), raw));
    if (PQputCopyData(raw, data.data(), static_cast<int>(data.size())) != 1 ||
        PQputCopyEnd(raw, nullptr) != 1) {
        return fail(ErrorCode::unavailable, fmt::format("COPY failed: {}", PQerrorMessage(raw)));
    }
    db::PgResult end(PQgetResult(raw));
    while (PGresult* extra = PQgetResult(raw)) PQclear(extra);
    if (PQresultStatus(end.raw()) != PGRES_COMMAND_OK)
        return std::unexpected(db::statement_error(end.raw(), raw));
    return {};
}

constexpr std::string_view kStageTable =
    "CREATE TEMP TABLE IF NOT EXISTS ka_stage (ord int, id uuid, scope text, content text, "
    "content_hash bytea, metadata jsonb, tags text[], source text, author text, created_at "
    "timestamptz, updated_at timestamptz, embedding vector, embedding_model text) ON COMMIT "
    "DELETE ROWS";

// One statement: the entry and, when it is new, its features' document frequencies.
std::string insert_values_sql() {
    return fmt::format(
        "WITH ins AS (INSERT INTO memory_entries (id, scope, content, content_hash, metadata, "
        "tags, source, "
        "author, embedding, "
        "embedding_model, created_at, updated_at) VALUES ($1::uuid, $2, $3, $4, $5::jsonb, "
        "$6::text[], $7, $8, "
        "$9::vector, $10, coalesce($11::timestamptz, now()), coalesce($12::timestamptz, "
        "$11::timestamptz, now())) "
        "ON CONFLICT DO NOTHING RETURNING {}), "
        "stats AS (INSERT INTO memory_term_stats (feature, df) SELECT f, 1 FROM "
        "unnest($13::bigint[]) AS f "
        "WHERE EXISTS (SELECT 1 FROM ins) ON CONFLICT (feature) DO UPDATE SET df = "
        "memory_term_stats.df + 1) "
        "SELECT * FROM ins",
        kEntryColumns);
}

// Embeddings for the entries that have none; entries that bring one must use the store's model.
Status fill_embeddings(std::vector<NewEntry>& entries, embed::Embedder& embedder, int dimensions) {
    std::vector<std::string> texts;
    std::vector<std::size_t> which;
    for (std::size_t i = 0; i < entries.size(); ++i) {
        auto& e = entries[i];
        if (e.embedding) {
            if (e.embedding_model && *e.embedding_model != embedder.model()) {
                return std::unexpected(
                    Error{ErrorCode::invalid_argument,
                          fmt::format("embedding was made by model {}, but this store uses {}",
                                      *e.embedding_model, embedder.model()),
                          "omit the embedding so the store embeds the text itself, or configure "
                          "the same model",
                          {}});
            }
            continue;
        }
        texts.push_back(e.content);
        which.push_back(i);
    }
    auto vectors = embed_documents(embedder, texts, dimensions);
    if (!vectors) return std::unexpected(vectors.error());
    for (std::size_t j = 0; j < which.size(); ++j)
        entries[which[j]].embedding = std::move((*vectors)[j]);
    return {};
}

// Creates idx_memory_entries_embedding when it is missing (dropped by hand, or by a bulk load
// that was killed before rebuilding it). CONCURRENTLY: writers are not blocked meanwhile.
Result<bool> create_missing_index(db::Connection& c, const config::Config& config) {
    auto params = db::hnsw_index_params(c);
    if (!params) return std::unexpected(params.error());
    if (*params) return false;
    log::warn("HNSW index idx_memory_entries_embedding is missing: building it",
              {{"m", std::to_string(config.index.hnsw.m)},
               {"ef_construction", std::to_string(config.index.hnsw.ef_construction)}});
    auto made = c.exec(fmt::format(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_memory_entries_embedding ON memory_entries "
        "USING hnsw (embedding vector_cosine_ops) WITH (m = {}, ef_construction = {})",
        config.index.hnsw.m, config.index.hnsw.ef_construction));
    if (!made) return std::unexpected(made.error());
    return true;
}

}  // namespace

Store::Store(db::Pool& pool, embed::Embedder& embedder, const config::Config& config)
    : pool_(pool),
      embedder_(embedder),
      config_(config),
      term_stats_(std::make_unique<StoreTermStats>(pool)) {
    embedder_.set_term_stats(term_stats_.get());
}

Store::~Store() {
    embedder_.set_term_stats(nullptr);
}

Status Store::check_model() {
    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    auto other = run(**conn,
                     "SELECT embedding_model, count(*) OVER () FROM memory_entries WHERE "
                     "embedding_model <> $1 LIMIT 1",
                     {embedder_.model()});
    if (!other) return std::unexpected(other.error());
    if (other->rows() == 0) return {};
    std::string stored = other->text(0, 0);
    Error e{
        ErrorCode::config,
        fmt::format("the store holds entries embedded with model '{}', but the configured "
                    "embedding model is '{}'",
                    stored, embedder_.model()),
        fmt::format("set embedding.provider / embedding.model back to the model '{}' was made "
                    "with, or move to "
                    "the new model: `knowledge-agent export --no-embeddings > kb.jsonl`, then "
                    "import kb.jsonl "
                    "into a new database configured with the new model (it re-embeds every entry)",
                    stored),
        {}};
    return std::unexpected(e);
}

Status Store::prepare() {
    if (auto ok = check_model(); !ok) return ok;
    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    auto& c = **conn;
    auto version = c.exec(
        "SELECT string_to_array(extversion, '.')::int[] >= '{0,8}' FROM pg_extension WHERE "
        "extname = 'vector'");
    if (!version) return std::unexpected(version.error());
    iterative_scan_ = version->rows() == 1 && version->boolean(0, 0);
    auto created = create_missing_index(c, config_);
    if (!created) return std::unexpected(created.error());
    // A missing index may mean a bulk import was cut short before it recounted the statistics.
    return recount_term_stats(c, !*created);
}

Status Store::recount_term_stats(db::Connection& c, bool only_if_empty) {
    if (embedder_.term_features("probe").empty()) return {};
    if (only_if_empty) {
        auto needed = c.exec(
            "SELECT NOT EXISTS (SELECT 1 FROM memory_term_stats) AND EXISTS (SELECT 1 FROM "
            "memory_entries)");
        if (!needed) return std::unexpected(needed.error());
        if (!needed->boolean(0, 0)) return {};
    }
    // One transaction that locks the table against writers: a concurrent start waits, then
    // finds it filled; a save waits, then adds its entry on top of the count (reads go on).
    if (auto ok = c.exec("BEGIN"); !ok) return std::unexpected(ok.error());
    auto abort = [&](Error e) -> Status {
        (void)c.exec("ROLLBACK");
        return std::unexpected(std::move(e));
    };
    if (auto ok = c.exec("LOCK TABLE memory_term_stats IN EXCLUSIVE MODE"); !ok)
        return abort(ok.error());
    auto still = c.exec("SELECT NOT EXISTS (SELECT 1 FROM memory_term_stats)");
    if (!still) return abort(still.error());
    if (still->boolean(0, 0) || !only_if_empty) {
        log::info("Counting term statistics over the stored entries");
        if (auto ok = c.exec("DELETE FROM memory_term_stats"); !ok) return abort(ok.error());
        if (auto ok =
                c.exec("DECLARE ka_terms NO SCROLL CURSOR FOR SELECT content FROM memory_entries");
            !ok)
            return abort(ok.error());
        TermDelta delta;
        std::size_t entries = 0;
        while (true) {
            auto rows = c.exec("FETCH 1000 FROM ka_terms");
            if (!rows) return abort(rows.error());
            for (int i = 0; i < rows->rows(); ++i)
                count_terms(delta, embedder_.term_features(rows->get(i, 0)), 1);
            entries += static_cast<std::size_t>(rows->rows());
            if (rows->rows() < 1000) break;
        }
        if (auto ok = c.exec("CLOSE ka_terms"); !ok) return abort(ok.error());
        if (auto ok = apply_term_delta(c, delta); !ok) return abort(ok.error());
        log::info("Term statistics counted", {{"entries", std::to_string(entries)},
                                              {"features", std::to_string(delta.size())}});
    }
    if (auto ok = c.exec("COMMIT"); !ok) return std::unexpected(ok.error());
    return {};
}

Result<Added> Store::add(NewEntry entry) {
    if (auto ok = normalise(entry, config_); !ok) return std::unexpected(ok.error());
    std::string hash = sha256(entry.content);
    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    std::string existing_sql = fmt::format(
        "SELECT {} FROM memory_entries WHERE scope = $1 AND content_hash = $2", kEntryColumns);
    // Dedup before embedding: saving known text again costs no provider call.
    auto existing = run(**conn, existing_sql, {entry.scope, db::Param::bytes(hash)});
    if (!existing) return std::unexpected(existing.error());
    if (existing->rows() == 1) return Added{row_to_entry(*existing, 0), false};

    std::vector<NewEntry> one{std::move(entry)};
    if (auto ok = fill_embeddings(one, embedder_, config_.embedding.dimensions); !ok)
        return std::unexpected(ok.error());
    NewEntry& e = one.front();
    auto inserted =
        run(**conn, insert_values_sql(),
            {e.id.value_or(new_uuid_v7()), e.scope, e.content, db::Param::bytes(hash),
             e.metadata.dump(), text_array_literal(e.tags), e.source, e.author,
             db::Param::bytes(vector_binary(*e.embedding)), embedder_.model(), e.created_at,
             e.updated_at, bigint_array_literal(embedder_.term_features(e.content))});
    if (!inserted) return std::unexpected(inserted.error());
    if (inserted->rows() == 1) return Added{row_to_entry(*inserted, 0), true};
    // Lost a race with a concurrent save of the same text, or the id exists already.
    existing = run(**conn, existing_sql, {e.scope, db::Param::bytes(hash)});
    if (!existing) return std::unexpected(existing.error());
    if (existing->rows() == 1) return Added{row_to_entry(*existing, 0), false};
    return fail(ErrorCode::conflict,
                fmt::format("an entry with id {} already exists", e.id.value_or("?")));
}

Result<std::vector<Saved>> Store::add_batch(std::vector<NewEntry> entries) {
    return add_batch(std::move(entries), true);
}

Result<std::vector<Saved>> Store::add_batch(std::vector<NewEntry> entries, bool term_stats) {
    for (std::size_t i = 0; i < entries.size(); ++i) {
        if (auto ok = normalise(entries[i], config_); !ok) {
            Error e = ok.error();
            e.message = fmt::format("entry {}: {}", i + 1, e.message);
            return std::unexpected(e);
        }
    }
    if (entries.empty()) return std::vector<Saved>{};
    if (auto ok = fill_embeddings(entries, embedder_, config_.embedding.dimensions); !ok)
        return std::unexpected(ok.error());

    std::vector<Saved> out(entries.size());
    std::vector<std::string> hashes, id_list, scope_list, hex_list;
    for (std::size_t i = 0; i < entries.size(); ++i) {
        out[i].id = entries[i].id.value_or(new_uuid_v7());
        hashes.push_back(sha256(entries[i].content));
        id_list.push_back(out[i].id);
        scope_list.push_back(entries[i].scope);
        hex_list.push_back(hex(hashes.back()));
    }
    // Rows go in ordered by the unique key (scope, content hash; bytewise, as the staging insert
    // orders them too), in every batch: two batches written at once that share texts then wait
    // on each other in one order, never in a cycle (a deadlock would abort one of them).
    std::vector<std::size_t> order(entries.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return std::tie(entries[a].scope, hashes[a], a) < std::tie(entries[b].scope, hashes[b], b);
    });
    // Rows in COPY's binary format; with `ord` first for the staging table.
    auto encode = [&](bool staged, std::int64_t now) {
        CopyWriter copy;
        for (std::size_t i : order) {
            const auto& e = entries[i];
            copy.row(staged ? 13 : 12);
            if (staged) copy.int4(static_cast<std::uint32_t>(i));
            copy.uuid(out[i].id);
            copy.bytes(e.scope);
            copy.bytes(e.content);
            copy.bytes(hashes[i]);
            copy.jsonb(e.metadata.dump());
            copy.text_array(e.tags);
            copy.optional(e.source);
            copy.optional(e.author);
            // check_timestamp accepted them, so they convert.
            std::int64_t created = e.created_at ? *timestamp_micros(*e.created_at) : now;
            copy.int8(created);
            copy.int8(e.updated_at ? *timestamp_micros(*e.updated_at) : created);
            copy.bytes(vector_binary(*e.embedding));
            copy.bytes(embedder_.model());
        }
        return copy.finish();
    };
    constexpr std::string_view kColumns =
        "id, scope, content, content_hash, metadata, tags, source, author, created_at, "
        "updated_at, embedding, embedding_model";

    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    auto& c = **conn;
    auto rollback = [&](Error e) -> Result<std::vector<Saved>> {
        (void)c.exec("ROLLBACK");
        return std::unexpected(std::move(e));
    };
    auto commit = [&]() -> Result<std::vector<Saved>> {
        TermDelta delta;
        for (std::size_t i = 0; i < entries.size() && term_stats; ++i)
            if (out[i].created) count_terms(delta, embedder_.term_features(entries[i].content), 1);
        if (auto ok = apply_term_delta(c, delta); !ok) return rollback(ok.error());
        if (auto ok = c.exec("COMMIT"); !ok) return std::unexpected(ok.error());
        return out;
    };
    // The transaction's now(), in COPY's timestamptz format, and whether any id or text of the
    // batch is stored already.
    auto begin = [&]() -> Result<std::pair<std::int64_t, bool>> {
        if (auto ok = c.exec("BEGIN"); !ok) return std::unexpected(ok.error());
        // Planned afresh for each batch (unnamed statement): as a prepared statement, its generic
        // plan was re-made on the first batch after a TRUNCATE or DROP INDEX, for a near-empty
        // table, and then seq-scanned the growing table for every batch; at 1M rows that was
        // 43% of the import's CPU (perf, ka-bench).
        auto probe = c.exec(
            "SELECT (extract(epoch FROM now() - '2000-01-01 00:00:00+00') * 1000000)::int8, "
            "EXISTS (SELECT 1 FROM memory_entries WHERE id = ANY($1::uuid[])) OR EXISTS (SELECT 1 "
            "FROM unnest($2::text[], $3::text[]) AS u(scope, hash) JOIN memory_entries m ON "
            "m.scope = u.scope AND m.content_hash = decode(u.hash, 'hex'))",
            {text_array_literal(id_list), text_array_literal(scope_list),
             text_array_literal(hex_list)});
        if (!probe) {
            (void)c.exec("ROLLBACK");
            return std::unexpected(probe.error());
        }
        return std::pair{probe->integer(0, 0), probe->boolean(0, 1)};
    };

    // A fresh batch (the bulk of any import) goes straight into memory_entries, as fast as a
    // plain COPY; a concurrent save of the same text can still win the race, so a unique
    // violation sends the batch down the staging path below.
    auto started = begin();
    if (!started) return std::unexpected(started.error());
    auto [now, any_stored] = *started;
    // A text or id twice in the batch also needs the staging path (ON CONFLICT keeps the first).
    auto same_key = [&](std::size_t a, std::size_t b) {
        return entries[a].scope == entries[b].scope && hashes[a] == hashes[b];
    };
    bool repeats = std::adjacent_find(order.begin(), order.end(), same_key) != order.end() ||
                   std::set<std::string>(id_list.begin(), id_list.end()).size() != id_list.size();
    if (!any_stored && !repeats) {
        auto copied =
            copy_in(c, fmt::format("COPY memory_entries ({}) FROM STDIN (FORMAT binary)", kColumns),
                    encode(false, now));
        if (copied) {
            for (auto& saved : out) saved.created = true;
            return commit();
        }
        if (copied.error().code != ErrorCode::conflict) return rollback(copied.error());
        (void)c.exec("ROLLBACK");
        started = begin();
        if (!started) return std::unexpected(started.error());
        now = started->first;
    }

    // Staging: ON CONFLICT skips rows whose text is stored or repeated in the batch.
    if (auto ok = c.exec(kStageTable); !ok) return rollback(ok.error());
    if (auto ok = copy_in(c, "COPY ka_stage FROM STDIN (FORMAT binary)", encode(true, now)); !ok)
        return rollback(ok.error());
    auto inserted = c.exec(fmt::format(
        "INSERT INTO memory_entries ({0}) SELECT {0} FROM ka_stage "
        "ORDER BY scope COLLATE \"C\", content_hash, ord ON CONFLICT DO NOTHING RETURNING "
        "id::text",
        kColumns));
    if (!inserted) return rollback(inserted.error());
    std::set<std::string> landed;
    for (int i = 0; i < inserted->rows(); ++i) landed.insert(inserted->text(i, 0));
    // The rows that did not land: the entry each duplicates.
    std::string missing;
    for (std::size_t i = 0; i < out.size(); ++i) {
        out[i].created = landed.contains(out[i].id);
        if (!out[i].created) missing += fmt::format("{}{}", missing.empty() ? "" : ",", i);
    }
    std::vector<bool> found(out.size());
    if (!missing.empty()) {
        auto rows = c.exec(
            "SELECT s.ord, m.id::text FROM ka_stage s JOIN memory_entries m ON "
            "m.scope = s.scope AND m.content_hash = s.content_hash WHERE s.ord = "
            "ANY($1::int[])",
            {"{" + missing + "}"});
        if (!rows) return rollback(rows.error());
        for (int i = 0; i < rows->rows(); ++i) {
            auto ord = static_cast<std::size_t>(rows->integer(i, 0));
            out[ord].id = rows->text(i, 1);
            found[ord] = true;
        }
    }
    // A row that neither landed nor duplicates an entry (its id is taken by other content)
    // fails the whole batch before it commits: a batch is all or nothing.
    for (std::size_t i = 0; i < out.size(); ++i) {
        if (!out[i].created && !found[i]) {
            return rollback(
                Error{ErrorCode::conflict,
                      fmt::format("entry {}: an entry with id {} already exists with other content",
                                  i + 1, entries[i].id.value_or("?")),
                      "",
                      {}});
        }
    }
    return commit();
}

Result<Entry> Store::get(const std::string& id, const Filters& within) {
    if (auto ok = check_id(id); !ok) return std::unexpected(ok.error());
    if (auto ok = check_filters(within); !ok) return std::unexpected(ok.error());
    db::Params params{id};
    std::string sql = fmt::format("SELECT {} FROM memory_entries WHERE id = $1::uuid AND {}",
                                  kEntryColumns, where_sql(within, params));
    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    auto r = run(**conn, sql, params);
    if (!r) return std::unexpected(r.error());
    if (r->rows() == 0) return std::unexpected(not_found(id));
    return row_to_entry(*r, 0);
}

Result<Entry> Store::update(const std::string& id, const Patch& patch, const Filters& within) {
    auto current = get(id, within);
    if (!current) return current;
    NewEntry next;
    next.content = patch.content.value_or(current->content);
    next.scope = current->scope;
    next.metadata = patch.metadata.value_or(current->metadata);
    next.tags = patch.tags.value_or(current->tags);
    next.source = patch.source.value_or(current->source);
    next.author = patch.author.value_or(current->author);
    if (auto ok = normalise(next, config_); !ok) return std::unexpected(ok.error());
    bool reembed = next.content != current->content;
    db::Params params{id, next.metadata.dump(), text_array_literal(next.tags), next.source,
                      next.author};
    std::string set =
        "metadata = $2::jsonb, tags = $3::text[], source = $4, author = $5, updated_at = now()";
    if (reembed) {
        std::vector<NewEntry> one{next};
        if (auto ok = fill_embeddings(one, embedder_, config_.embedding.dimensions); !ok)
            return std::unexpected(ok.error());
        params.push_back(next.content);
        params.push_back(db::Param::bytes(sha256(next.content)));
        params.push_back(db::Param::bytes(vector_binary(*one.front().embedding)));
        params.push_back(embedder_.model());
        set += ", content = $6, content_hash = $7, embedding = $8::vector, embedding_model = $9";
    }
    // The old content comes back too, to move document frequencies from its words to the new ones.
    std::string sql = fmt::format(
        "UPDATE memory_entries SET {} FROM (SELECT id AS old_id, content AS old_content FROM "
        "memory_entries WHERE id = "
        "$1::uuid FOR UPDATE) o WHERE id = o.old_id AND {} RETURNING {}, o.old_content",
        set, where_sql(within, params), kEntryColumns);
    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    auto& c = **conn;
    if (auto ok = c.exec("BEGIN"); !ok) return std::unexpected(ok.error());
    auto r = run(c, sql, params);
    if (!r) {
        (void)c.exec("ROLLBACK");
        if (r.error().code == ErrorCode::conflict) {
            return fail(ErrorCode::conflict, "another entry in this scope already has that content",
                        "search for it and update or delete that entry instead");
        }
        return std::unexpected(r.error());
    }
    if (r->rows() == 0) {
        (void)c.exec("ROLLBACK");
        return std::unexpected(not_found(id));
    }
    Entry updated = row_to_entry(*r, 0);
    std::string old_content = r->text(0, kEntryColumnCount);
    if (old_content != updated.content) {
        TermDelta delta;
        count_terms(delta, embedder_.term_features(old_content), -1);
        count_terms(delta, embedder_.term_features(updated.content), 1);
        if (auto ok = apply_term_delta(c, delta); !ok) {
            (void)c.exec("ROLLBACK");
            return std::unexpected(ok.error());
        }
    }
    if (auto ok = c.exec("COMMIT"); !ok) return std::unexpected(ok.error());
    return updated;
}

Status Store::remove(const std::string& id, const Filters& within) {
    if (auto ok = check_id(id); !ok) return ok;
    if (auto ok = check_filters(within); !ok) return ok;
    db::Params params{id};
    std::string sql = "DELETE FROM memory_entries WHERE id = $1::uuid AND " +
                      where_sql(within, params) + " RETURNING content";
    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    auto& c = **conn;
    if (auto ok = c.exec("BEGIN"); !ok) return std::unexpected(ok.error());
    auto r = run(c, sql, params);
    if (!r || r->rows() == 0) {
        (void)c.exec("ROLLBACK");
        return r ? std::unexpected(not_found(id)) : std::unexpected(r.error());
    }
    TermDelta delta;
    count_terms(delta, embedder_.term_features(r->text(0, 0)), -1);
    if (auto ok = apply_term_delta(c, delta); !ok) {
        (void)c.exec("ROLLBACK");
        return ok;
    }
    if (auto ok = c.exec("COMMIT"); !ok) return std::unexpected(ok.error());
    return {};
}

Result<Page> Store::list(const ListRequest& request) {
    if (auto ok = check_filters(request.filters); !ok) return std::unexpected(ok.error());
    if (request.limit < 1 || request.limit > kMaxListLimit) {
        return fail(ErrorCode::invalid_argument,
                    fmt::format("limit must be between 1 and {}", kMaxListLimit));
    }
    db::Params params;
    std::string where = where_sql(request.filters, params);
    if (!request.cursor.empty()) {
        // Cursor: "<created_at>,<id>" of the last entry of the previous page (newest first).
        auto comma = request.cursor.find(',');
        if (comma == std::string::npos ||
            !check_timestamp("cursor", request.cursor.substr(0, comma)) ||
            !check_id(request.cursor.substr(comma + 1))) {
            return fail(ErrorCode::invalid_argument, "cursor is not valid",
                        "pass next_cursor from the previous page");
        }
        params.push_back(request.cursor.substr(0, comma));
        params.push_back(request.cursor.substr(comma + 1));
        where += fmt::format(" AND (created_at, id) < (${}::timestamptz, ${}::uuid)",
                             params.size() - 1, params.size());
    }
    params.push_back(std::to_string(request.limit + 1));
    std::string sql = fmt::format(
        "SELECT {} FROM memory_entries WHERE {} ORDER BY created_at DESC, id DESC LIMIT ${}",
        kEntryColumns, where, params.size());
    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    auto r = run(**conn, sql, params);
    if (!r) return std::unexpected(r.error());
    Page page;
    for (int i = 0; i < std::min(r->rows(), request.limit); ++i)
        page.entries.push_back(row_to_entry(*r, i));
    if (r->rows() > request.limit)
        page.next_cursor = page.entries.back().created_at + "," + page.entries.back().id;
    return page;
}

Result<long long> Store::count(const Filters& filters) {
    if (auto ok = check_filters(filters); !ok) return std::unexpected(ok.error());
    db::Params params;
    std::string sql = "SELECT count(*) FROM memory_entries WHERE " + where_sql(filters, params);
    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    auto r = run(**conn, sql, params);
    if (!r) return std::unexpected(r.error());
    return r->integer(0, 0);
}

Result<Stats> Store::stats() {
    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    Stats s;
    auto scopes =
        (*conn)->exec("SELECT scope, count(*) FROM memory_entries GROUP BY scope ORDER BY scope");
    if (!scopes) return std::unexpected(scopes.error());
    for (int i = 0; i < scopes->rows(); ++i) {
        s.scopes.push_back({scopes->text(i, 0), scopes->integer(i, 1)});
        s.entries += scopes->integer(i, 1);
    }
    auto sizes = (*conn)->exec(
        "SELECT pg_size_pretty(pg_total_relation_size('memory_entries')), "
        "pg_size_pretty(pg_relation_size('idx_memory_entries_embedding')), "
        "(SELECT embedding_model FROM memory_entries LIMIT 1)");
    if (!sizes) return std::unexpected(sizes.error());
    s.table_size = sizes->text(0, 0);
    s.index_size = sizes->text(0, 1);
    s.embedding_model = sizes->is_null(0, 2) ? embedder_.model() : sizes->text(0, 2);
    return s;
}

Status Store::reindex() {
    auto conn = pool_.acquire();
    if (!conn) return std::unexpected(conn.error());
    auto& c = **conn;
    auto created = create_missing_index(c, config_);
    if (!created) return std::unexpected(created.error());
    if (*created) return {};
    log::info("Rebuilding HNSW index",
              {{"index", "idx_memory_entries_embedding"},
               {"m", std::to_string(config_.index.hnsw.m)},
               {"ef_construction", std::to_string(config_.index.hnsw.ef_construction)}});
    // New parameters first, then a rebuild that keeps the old index serving until it is done.
    auto set = c.exec(
        fmt::format("ALTER INDEX idx_memory_entries_embedding SET (m = {}, ef_construction = {})",
                    config_.index.hnsw.m, config_.index.hnsw.ef_construction));
    if (!set) return std::unexpected(set.error());
    auto rebuilt = c.exec("REINDEX INDEX CONCURRENTLY idx_memory_entries_embedding");
    if (!rebuilt) return std::unexpected(rebuilt.error());
    log::info("HNSW index rebuilt");
    return {};
}

}  // namespace ka::store
