/**
 * Baselines for durable ingest, on the same SQLite driver kedge uses (node:sqlite):
 *
 * - `openlog`: kedge's own log (agent/log, openLog) with sync=full, appending
 *   batches of `batch` events one after another (each append waits for its
 *   commit, so one transaction and one fsync per batch; no HTTP, no group commit
 *   across requests).
 * - `bare`: a plain node:sqlite loop, BEGIN; `batch` INSERTs into a table of the
 *   log's shape; COMMIT, with journal_mode=WAL and synchronous=FULL (and
 *   locking_mode=EXCLUSIVE, as kedge opens its database).
 *
 * Runs for `seconds` after a short warm-up and answers events/s.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { openLog, type EventInput } from '../../../agent/log/index.ts';
import { valueBytes, keyFor } from '../lib/records.ts';

export interface SqliteBaselineConfig {
  kind: 'openlog' | 'bare';
  dir: string;
  batch: number;
  seconds: number;
  warmupSeconds: number;
  topic: string;
}

export interface SqliteBaselineResult {
  events: number;
  commits: number;
  seconds: number;
  eventsPerS: number;
  commitsPerS: number;
  cpuPctOfCore: number;
  sqliteVersion: string;
}

async function runOpenLog(c: SqliteBaselineConfig): Promise<SqliteBaselineResult> {
  const log = await openLog({ dir: c.dir, driver: 'sqlite', sync: 'full' });
  const keys = Array.from({ length: 16 }, (_, k) => Buffer.from(`k${k}`));
  let i = 0;
  const batchOf = (): EventInput[] => {
    const key = keys[Number(keyFor(i, c.batch).slice(1))];
    const evs: EventInput[] = new Array(c.batch);
    for (let k = 0; k < c.batch; k++)
      evs[k] = { topic: c.topic, key, value: valueBytes(i + k), source: 'http' };
    i += c.batch;
    return evs;
  };
  const warmEnd = performance.now() + c.warmupSeconds * 1000;
  while (performance.now() < warmEnd) await log.append(batchOf());
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const end = t0 + c.seconds * 1000;
  let events = 0;
  let commits = 0;
  while (performance.now() < end) {
    await log.append(batchOf());
    events += c.batch;
    commits++;
  }
  const s = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  await log.close();
  return {
    events,
    commits,
    seconds: s,
    eventsPerS: events / s,
    commitsPerS: commits / s,
    cpuPctOfCore: (100 * (cpu.user + cpu.system)) / 1e6 / s,
    sqliteVersion: sqliteVersion(),
  };
}

function runBare(c: SqliteBaselineConfig): SqliteBaselineResult {
  mkdirSync(c.dir, { recursive: true });
  const db = new DatabaseSync(join(c.dir, 'bare.db'));
  db.exec('PRAGMA locking_mode = EXCLUSIVE');
  db.exec('PRAGMA journal_mode = WAL');
  db.exec('PRAGMA synchronous = FULL');
  // The same table as agent/log/schema.ts.
  db.exec(
    'CREATE TABLE IF NOT EXISTS events(seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, key BLOB, value BLOB NOT NULL, headers TEXT, ts INTEGER NOT NULL, size INTEGER NOT NULL)',
  );
  const begin = db.prepare('BEGIN IMMEDIATE');
  const commit = db.prepare('COMMIT');
  const insert = db.prepare(
    'INSERT INTO events(seq, topic, key, value, headers, ts, size) VALUES (?, ?, ?, ?, ?, ?, ?)',
  );
  const keys = Array.from({ length: 16 }, (_, k) => Buffer.from(`k${k}`));
  let seq = 0;
  const txn = (): void => {
    const key = keys[Number(keyFor(seq, c.batch).slice(1))];
    const ts = Date.now();
    begin.run();
    for (let k = 0; k < c.batch; k++) {
      const v = valueBytes(seq);
      seq++;
      insert.run(seq, c.topic, key, v, null, ts, v.length + key.length);
    }
    commit.run();
  };
  const warmEnd = performance.now() + c.warmupSeconds * 1000;
  while (performance.now() < warmEnd) txn();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const end = t0 + c.seconds * 1000;
  let commits = 0;
  while (performance.now() < end) {
    txn();
    commits++;
  }
  const s = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  db.close();
  const events = commits * c.batch;
  return {
    events,
    commits,
    seconds: s,
    eventsPerS: events / s,
    commitsPerS: commits / s,
    cpuPctOfCore: (100 * (cpu.user + cpu.system)) / 1e6 / s,
    sqliteVersion: sqliteVersion(),
  };
}

function sqliteVersion(): string {
  const db = new DatabaseSync(':memory:');
  try {
    return String((db.prepare('SELECT sqlite_version() AS v').get() as { v: string }).v);
  } finally {
    db.close();
  }
}

process.once('message', (c: SqliteBaselineConfig) => {
  const p = c.kind === 'openlog' ? runOpenLog(c) : Promise.resolve().then(() => runBare(c));
  p.then(
    (r) => process.send!({ ok: true, result: r }, () => process.exit(0)),
    (e: Error) => process.send!({ ok: false, error: e.stack ?? String(e) }, () => process.exit(1)),
  );
});
