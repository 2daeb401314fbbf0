-- Keep whole entries inline. A row holds a 768-d embedding (3 KB, STORAGE PLAIN), so every row is
-- over TOAST's default 2 KB target, and PostgreSQL then compressed and moved the content and its
-- tsvector of every entry out to the TOAST table, however short: an extra heap and index insert
-- per column on write, an extra index lookup per column on every read. With the target at its
-- maximum only rows over ~8 KB (long texts) are toasted. Rows stored before keep their
-- out-of-line values until the table is rewritten (VACUUM FULL, which locks it meanwhile).
ALTER TABLE memory_entries SET (toast_tuple_target = 8160);
