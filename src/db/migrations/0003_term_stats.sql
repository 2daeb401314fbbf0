-- Document frequencies of the builtin embedder's word and word-pair features (64-bit hashes),
-- kept by the store as entries come and go, to weight query words by how rare they are.
CREATE TABLE memory_term_stats (
    feature bigint PRIMARY KEY,
    df      integer NOT NULL  -- kept at 0 or more by the store
);
