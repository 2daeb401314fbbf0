// The Node.js peer of ka-bench: the same load and search workload written the way a JavaScript
// user would, with the npm packages `pg` and `pgvector` (pgvector.toSql, multi-row INSERTs,
// pg.Pool). ka-bench writes the data set and runs this script; it prints one JSON object.
//
//   node bench.mjs --data DIR     (connection from the PG* environment variables, as pg reads them)
//
// DIR holds meta.json ({rows, queries, dim, k, ef, clients, contents, truth}) and vectors.f32
// (the load_rows rows, then the queries; float32 little-endian). Load goes into its own table node_items (dropped
// afterwards); searches run against memory_entries, the same rows and HNSW index the product
// and the raw libpq client search, so the figures differ only by the client stack.
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import pgvector from 'pgvector/pg';

const args = process.argv.slice(2);
const dataDir = args[args.indexOf('--data') + 1];
if (!dataDir || args.indexOf('--data') < 0) {
  console.error('usage: node bench.mjs --data DIR');
  process.exit(2);
}
const meta = JSON.parse(fs.readFileSync(path.join(dataDir, 'meta.json'), 'utf8'));
const raw = fs.readFileSync(path.join(dataDir, 'vectors.f32'));
const floats = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
const { rows, queries, dim, k } = meta;
const vector = (i) => Array.from(floats.subarray(i * dim, (i + 1) * dim));
const queryVector = (q) => vector((meta.load_rows ?? rows) + q);

const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;
const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
const indexOf = (id) => parseInt(id.slice(24), 16);

async function load() {
  const client = new pg.Client();
  await client.connect();
  await pgvector.registerTypes(client);
  await client.query('DROP TABLE IF EXISTS node_items');
  await client.query(`CREATE TABLE node_items (id bigint PRIMARY KEY, content text NOT NULL, embedding vector(${dim}) NOT NULL)`);
  const batch = 500;
  const loadRows = meta.load_rows ?? rows;
  const t0 = process.hrtime.bigint();
  for (let start = 0; start < loadRows; start += batch) {
    const end = Math.min(loadRows, start + batch);
    const values = [];
    const params = [];
    for (let i = start; i < end; i++) {
      const n = params.length;
      values.push(`($${n + 1}, $${n + 2}, $${n + 3})`);
      params.push(i, meta.contents[i], pgvector.toSql(vector(i)));
    }
    await client.query(`INSERT INTO node_items (id, content, embedding) VALUES ${values.join(', ')}`, params);
  }
  const seconds = ms(t0) / 1000;
  await client.query('DROP TABLE node_items');
  await client.end();
  return { rows: loadRows, seconds, rows_per_s: loadRows / seconds, method: `multi-row INSERT, ${batch} rows per statement, pgvector.toSql` };
}

async function search(ef, clients) {
  const pool = new pg.Pool({ max: clients });
  pool.on('connect', (client) => {
    client.query(`SET hnsw.ef_search = ${ef}`);
  });
  // Open every connection first (with its type registration), as a warmed-up server would have.
  const opened = await Promise.all(Array.from({ length: clients }, () => pool.connect()));
  for (const c of opened) await pgvector.registerTypes(c);
  opened.forEach((c) => c.release());

  const latencies = new Array(queries);
  let recallSum = 0;
  let next = 0;
  // One untimed pass first on the same connections, as the C++ side does for every path.
  await Promise.all(Array.from({ length: clients }, worker));
  recallSum = 0;
  next = 0;
  const t0 = process.hrtime.bigint();
  async function worker() {
    for (let q = next++; q < queries; q = next++) {
      const s = process.hrtime.bigint();
      const result = await pool.query(
        'SELECT id, content, embedding <=> $1 AS distance FROM memory_entries ORDER BY embedding <=> $1 LIMIT $2',
        [pgvector.toSql(queryVector(q)), k],
      );
      latencies[q] = ms(s);
      const found = new Set(result.rows.map((r) => indexOf(r.id)));
      const truth = meta.truth[q];
      recallSum += truth.length ? truth.filter((t) => found.has(t)).length / truth.length : 1;
    }
  }
  await Promise.all(Array.from({ length: clients }, worker));
  const wall = ms(t0) / 1000;
  await pool.end();
  const sorted = [...latencies].sort((a, b) => a - b);
  return {
    path: 'node', clients, ef_search: ef, queries,
    p50_ms: percentile(sorted, 50), p95_ms: percentile(sorted, 95), p99_ms: percentile(sorted, 99),
    mean_ms: latencies.reduce((a, b) => a + b, 0) / queries,
    qps: queries / wall, 'recall@10': recallSum / queries,
  };
}

const out = { node: process.version, load: await load(), search: [] };
// Warm-up, like the C++ side.
await search(meta.ef[0], meta.clients).catch(() => {});
for (const ef of meta.ef) {
  for (const clients of [...new Set([1, meta.clients])]) out.search.push(await search(ef, clients));
}
process.stdout.write(JSON.stringify(out) + '\n');
