-- Knowledge entries: the text, its embedding, and everything the store filters and dedups on.
-- {{placeholders}} are filled from the configuration when the migration is applied; the
-- checksum covers this template, so changing the configuration later does not alter it.
CREATE TABLE memory_entries (
    id              uuid PRIMARY KEY,
    scope           text NOT NULL DEFAULT 'default',
    content         text NOT NULL,
    content_hash    bytea NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    tags            text[] NOT NULL DEFAULT '{}',
    source          text,
    author          text,
    embedding       vector({{dimensions}}) NOT NULL,
    embedding_model text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    content_tsv     tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    CONSTRAINT memory_entries_scope_check CHECK (char_length(scope) BETWEEN 1 AND 128),
    CONSTRAINT memory_entries_hash_check CHECK (octet_length(content_hash) = 32),
    CONSTRAINT memory_entries_metadata_check CHECK (jsonb_typeof(metadata) = 'object')
);

-- Keep vectors inline in the heap row (no TOAST lookups or compression attempts on read).
ALTER TABLE memory_entries ALTER COLUMN embedding SET STORAGE {{embedding_storage}};

-- Dedup: the same text saved twice in one scope is one entry, even under concurrent saves.
CREATE UNIQUE INDEX idx_memory_entries_scope_hash ON memory_entries (scope, content_hash);

CREATE INDEX idx_memory_entries_embedding ON memory_entries
    USING hnsw (embedding vector_cosine_ops)
    WITH (m = {{hnsw_m}}, ef_construction = {{hnsw_ef_construction}});

CREATE INDEX idx_memory_entries_content_tsv ON memory_entries USING gin (content_tsv);
CREATE INDEX idx_memory_entries_tags ON memory_entries USING gin (tags);
CREATE INDEX idx_memory_entries_metadata ON memory_entries USING gin (metadata jsonb_path_ops);
CREATE INDEX idx_memory_entries_scope_created ON memory_entries (scope, created_at DESC, id);
