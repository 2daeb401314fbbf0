-- Lets start-up check cheaply that every entry was embedded by the configured model.
CREATE INDEX idx_memory_entries_embedding_model ON memory_entries (embedding_model);
