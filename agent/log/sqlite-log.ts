/**
 * The durable event log on SQLite: `<dir>/kedge.db`, WAL, one connection held
 * exclusively by this process.
 *
 * Write path (group commit): append() only validates and queues; one
 * setImmediate later a single transaction inserts every queued batch with one
 * reused prepared INSERT, and one COMMIT (one fsync with sync=full) makes them
 * all durable. Only then is each caller's promise resolved. A failed commit is
 * rolled back whole and every caller in it rejected; the seq counter only
 * advances after a successful COMMIT, so nothing of a failed commit remains.
 *
 * seq is assigned here, not by SQLite: a counter initialised at open from the
 * highest seq ever seen (events, cursor, dead letters, and meta 'last_seq',
 * which every commit persists), so seqs are never reused even after every
 * row was forwarded and deleted: `kedge-id` stays unique.
 *
 * Read/trim path: the forwarder reads bounded batches after its cursor and
 * acks; ack moves the cursor and deletes forwarded rows in bounded chunks
 * (TRIM_CHUNK rows per transaction, the rest on later ticks) and now and then
 * returns free pages to the file system with incremental_vacuum.
 *
 * All SQLite calls are synchronous and each transaction begins and ends
 * within one call, so transactions never interleave.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Row, SqlDb, SqlStmt } from './driver.ts';
import { openDriver, sqlErrorKind } from './driver.ts';
import { acquireDirLock } from './lockfile.ts';
import type { DirLock } from './lockfile.ts';
import { DEFAULT_RESERVE_BYTES, SpaceReserve } from './reserve.ts';
import { DEST_KAFKA, migrate, pragmaInt, schemaObjectCount } from './schema.ts';
import type {
  AppendResult,
  DeadLetter,
  EventInput,
  EventLog,
  LogOptions,
  LogStats,
  StoredEvent,
} from './types.ts';
import { LogOpenError, LogWriteError } from './types.ts';

export const DB_FILE = 'kedge.db';

/** Most rows one trim transaction deletes: keeps every transaction short (milliseconds, not seconds). */
const TRIM_CHUNK = 5000;
/** Free pages tolerated before returning space to the file system (1 MiB of 4 KiB pages)... */
const VACUUM_MIN_FREE_PAGES = 256;
/**
 * ...and only once pages in use are at most 1/VACUUM_USED_RATIO of the file.
 * incremental_vacuum moves live pages from the end of the file into the holes
 * at the front (~0.5 ms a page): in a FIFO log the live tail is exactly what
 * would move. While a big backlog drains, free pages are left to be reused by
 * new events; once little is live, moving it is cheap and the space goes back.
 */
const VACUUM_USED_RATIO = 4;
/** Most pages vacuumed per transaction (bounded work per event-loop turn). */
const VACUUM_MAX_PAGES = 512;
/**
 * Low-space mode (entered when a space-freeing write hit a full disk): smaller
 * steps, each followed by a RESTART checkpoint so the WAL is rewritten from its
 * start (reusing the space it already has) instead of growing.
 */
const LOW_SPACE_TRIM_CHUNK = 250;
const LOW_SPACE_VACUUM_PAGES = 128;
/** A disk with less than this free is "full" when the wasm VFS reports only a generic I/O error. */
const DISK_FULL_SLACK = 1 << 20;
/** First page size readBatch asks for before it knows the typical event size. */
const READ_FIRST_PAGE = 64;
/** Most rows one readBatch query fetches. */
const READ_MAX_PAGE = 10_000;

const NO_PARAMS: unknown[] = [];

interface PendingAppend {
  events: EventInput[];
  resolve: (r: AppendResult) => void;
  reject: (e: Error) => void;
  firstSeq: number;
  lastSeq: number;
}

export async function openLog(opts: LogOptions): Promise<EventLog> {
  checkOptions(opts);
  const dir = path.resolve(opts.dir);
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw new LogOpenError(`cannot create data dir ${dir}: ${(err as Error).message}`, 'KEDGE_LOG_OPEN', { cause: err });
  }
  const lock = acquireDirLock(dir);
  const file = path.join(dir, DB_FILE);
  let db: SqlDb | undefined;
  try {
    db = await openDriver(opts.driver, { file, wasmPath: opts.wasmPath, wasmBinary: opts.wasmBinary });
    configure(db, file, opts);
    return new SqliteLog(db, lock, dir, file, opts);
  } catch (err) {
    try {
      db?.close();
    } catch {
      // Already failing; the open error below is what matters.
    }
    lock.release();
    throw toOpenError(err, file);
  }
}

function checkOptions(opts: LogOptions): void {
  if (!opts || typeof opts.dir !== 'string' || opts.dir === '') throw new TypeError('openLog: dir must be a non-empty string');
  if (opts.driver !== 'sqlite' && opts.driver !== 'wasm') throw new TypeError(`openLog: driver must be 'sqlite' or 'wasm', not ${String(opts.driver)}`);
  if (opts.sync !== 'full' && opts.sync !== 'normal') throw new TypeError(`openLog: sync must be 'full' or 'normal', not ${String(opts.sync)}`);
}

function damaged(file: string, detail: string, cause?: unknown): LogOpenError {
  return new LogOpenError(
    `${file} is damaged or not a kedge database (${detail}). Stop kedge, move it aside ` +
      `(mv ${file} ${file}.damaged, and ${file}-wal if present) and start again: kedge then creates a new, empty log. ` +
      `Events still in the damaged file are not forwarded.`,
    'KEDGE_LOG_DAMAGED',
    { cause },
  );
}

function toOpenError(err: unknown, file: string): LogOpenError {
  if (err instanceof LogOpenError) return err;
  const kind = sqlErrorKind(err);
  const msg = (err as Error)?.message ?? String(err);
  if (kind === 'notadb' || kind === 'corrupt') return damaged(file, msg, err);
  if (kind === 'busy') {
    return new LogOpenError(`${file} is locked by another program (${msg}); stop it first`, 'KEDGE_DATA_DIR_LOCKED', { cause: err });
  }
  return new LogOpenError(`cannot open the log ${file}: ${msg}`, 'KEDGE_LOG_OPEN', { cause: err });
}

/** Pragmas, integrity check and schema. Order matters (see comments). */
function configure(db: SqlDb, file: string, opts: LogOptions): void {
  // Exclusive: required for WAL by the wasm build (no shared-memory index);
  // used for node:sqlite too so both behave alike: no -shm file, and no other
  // process can write the database while we hold it.
  db.exec('PRAGMA locking_mode = EXCLUSIVE');
  db.exec('PRAGMA busy_timeout = 5000');
  // First real read: a file that is not a database fails here.
  const fresh = schemaObjectCount(db) === 0;
  if (fresh) {
    // Must precede the first table; lets freed pages be returned with incremental_vacuum.
    db.exec('PRAGMA auto_vacuum = INCREMENTAL');
  } else {
    const st = db.prepare('PRAGMA quick_check');
    try {
      const rows = st.all(NO_PARAMS);
      const problems = rows.map((r) => String(Object.values(r)[0])).filter((s) => s !== 'ok');
      if (problems.length > 0) throw damaged(file, `quick_check: ${problems.slice(0, 3).join('; ')}`);
    } finally {
      st.finalize();
    }
  }
  const modeStmt = db.prepare('PRAGMA journal_mode = WAL');
  let mode: string;
  try {
    mode = String(Object.values(modeStmt.get(NO_PARAMS) ?? {})[0]).toLowerCase();
  } finally {
    modeStmt.finalize();
  }
  if (mode !== 'wal') throw new LogOpenError(`${file}: could not switch to WAL mode (got ${mode})`, 'KEDGE_LOG_OPEN');
  db.exec(`PRAGMA synchronous = ${opts.sync === 'full' ? 'FULL' : 'NORMAL'}`);
  db.exec('PRAGMA cache_size = -8192'); // 8 MiB: the working set is the tail and the head of the log
  db.exec('PRAGMA journal_size_limit = 8388608'); // truncate the WAL back to 8 MiB after a big transaction
  migrate(db, file);
  if (opts.maxDbBytes !== undefined) {
    const pageSize = pragmaInt(db, 'page_size');
    db.exec(`PRAGMA max_page_count = ${Math.max(1, Math.floor(opts.maxDbBytes / pageSize))}`);
  }
}

function validate(events: unknown): string | null {
  if (!Array.isArray(events)) return 'append expects an array of events';
  if (events.length === 0) return 'append needs at least one event';
  for (let i = 0; i < events.length; i++) {
    const ev = events[i] as EventInput | null;
    if (ev === null || typeof ev !== 'object') return `event ${i} is not an object`;
    if (typeof ev.topic !== 'string' || ev.topic === '') return `event ${i}: topic must be a non-empty string`;
    if (!Buffer.isBuffer(ev.value)) return `event ${i}: value must be a Buffer`;
    if (ev.key != null && !Buffer.isBuffer(ev.key)) return `event ${i}: key must be a Buffer or null`;
    const h = ev.headers;
    if (h != null) {
      if (typeof h !== 'object' || Array.isArray(h)) return `event ${i}: headers must be an object of strings`;
      for (const k in h) if (typeof h[k] !== 'string') return `event ${i}: header ${JSON.stringify(k)} must be a string`;
    }
  }
  return null;
}

function headersJson(h: Record<string, string> | undefined): string | null {
  if (h == null) return null;
  for (const _ in h) return JSON.stringify(h);
  return null; // {} is stored as no headers
}

function toStored(r: Row): StoredEvent {
  return {
    seq: r.seq as number,
    topic: r.topic as string,
    key: (r.key as Buffer | null) ?? null,
    value: r.value as Buffer,
    headers: r.headers == null ? null : (JSON.parse(r.headers as string) as Record<string, string>),
    ts: r.ts as number,
  };
}

class SqliteLog implements EventLog {
  readonly #db: SqlDb;
  readonly #lock: DirLock;
  readonly #dir: string;
  readonly #file: string;
  readonly #beforeCommit: LogOptions['beforeCommit'];
  readonly #reserve: SpaceReserve;
  readonly #stmts: SqlStmt[] = [];

  // Prepared once, reused, finalized on close.
  readonly #begin: SqlStmt;
  readonly #commit: SqlStmt;
  readonly #rollback: SqlStmt;
  readonly #insert: SqlStmt;
  readonly #setMeta: SqlStmt;
  readonly #getMeta: SqlStmt;
  readonly #read: SqlStmt;
  readonly #firstAfter: SqlStmt;
  readonly #rangeStats: SqlStmt;
  readonly #setCursor: SqlStmt;
  readonly #trim: SqlStmt;
  readonly #eventSize: SqlStmt;
  readonly #dlInsert: SqlStmt;
  readonly #deleteOne: SqlStmt;
  readonly #dlList: SqlStmt;
  readonly #freelist: SqlStmt;
  readonly #pageCount: SqlStmt;
  /** sync=full: relax to NORMAL around ack/trim/dead-letter transactions (see #relaxed). */
  readonly #syncFull: boolean;

  /** One reusable parameter array for the INSERT: no per-row allocation. */
  readonly #row: unknown[] = [0, '', null, null, null, 0, 0];

  #pending: PendingAppend[] = [];
  #flushHandle: NodeJS.Immediate | null = null;
  #maintHandle: NodeJS.Immediate | null = null;
  #listeners = new Set<() => void>();
  #closed = false;
  #closing: Promise<void> | null = null;

  #nextSeq: number;
  #lastSeq: number;
  #cursor: number;
  /** Every row with seq <= this is deleted. */
  #trimmedUpTo: number;
  #backlogEvents: number;
  #backlogBytes: number;
  /** undefined: unknown (one indexed query away); null: backlog empty. */
  #oldestTs: number | null | undefined = undefined;
  #deadLetters: number;
  #commits = 0;
  /** See LOW_SPACE_TRIM_CHUNK. Left once the reserve could be re-created. */
  #lowSpace = false;
  /** Pages were vacuumed since the last checkpoint: the file only shrinks on disk when the WAL is checkpointed. */
  #vacuumed = false;

  constructor(db: SqlDb, lock: DirLock, dir: string, file: string, opts: LogOptions) {
    this.#db = db;
    this.#lock = lock;
    this.#dir = dir;
    this.#file = file;
    this.#beforeCommit = opts.beforeCommit;
    this.#syncFull = opts.sync === 'full';
    this.#reserve = new SpaceReserve(dir, opts.reserveBytes ?? DEFAULT_RESERVE_BYTES);
    const p = (sql: string): SqlStmt => {
      const st = db.prepare(sql);
      this.#stmts.push(st);
      return st;
    };
    try {
      this.#begin = p('BEGIN IMMEDIATE');
      this.#commit = p('COMMIT');
      this.#rollback = p('ROLLBACK');
      this.#insert = p('INSERT INTO events(seq, topic, key, value, headers, ts, size) VALUES (?, ?, ?, ?, ?, ?, ?)');
      this.#setMeta = p('INSERT INTO meta(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v');
      this.#getMeta = p('SELECT v FROM meta WHERE k = ?');
      this.#read = p('SELECT seq, topic, key, value, headers, ts, size FROM events WHERE seq > ? ORDER BY seq LIMIT ?');
      this.#firstAfter = p('SELECT seq, ts FROM events WHERE seq > ? ORDER BY seq LIMIT 1');
      this.#rangeStats = p('SELECT count(*) AS n, total(size) AS bytes FROM events WHERE seq > ? AND seq <= ?');
      this.#setCursor = p(`UPDATE cursors SET seq = ? WHERE dest = '${DEST_KAFKA}'`);
      this.#trim = p('DELETE FROM events WHERE seq > ? AND seq <= ?');
      this.#eventSize = p('SELECT size FROM events WHERE seq = ?');
      this.#dlInsert = p(
        'INSERT INTO dead_letters(seq, topic, key, value, headers, ts, size, reason, dead_at) ' +
          'SELECT seq, topic, key, value, headers, ts, size, ?, ? FROM events WHERE seq = ?',
      );
      this.#deleteOne = p('DELETE FROM events WHERE seq = ?');
      this.#dlList = p('SELECT seq, topic, key, value, headers, ts, reason, dead_at FROM dead_letters ORDER BY seq DESC LIMIT ?');
      this.#freelist = p('PRAGMA freelist_count');
      this.#pageCount = p('PRAGMA page_count');

      // Initial state: a handful of indexed/aggregate queries, once.
      const one = (sql: string, params: unknown[] = NO_PARAMS): Row => {
        const st = db.prepare(sql);
        try {
          return st.get(params) ?? {};
        } finally {
          st.finalize();
        }
      };
      const cursorRow = one(`SELECT seq FROM cursors WHERE dest = '${DEST_KAFKA}'`);
      if (cursorRow.seq === undefined) throw new LogOpenError(`${file}: cursor row missing`, 'KEDGE_LOG_DAMAGED');
      this.#cursor = Number(cursorRow.seq);
      const ev = one('SELECT max(seq) AS hi, min(seq) AS lo FROM events');
      const dl = one('SELECT max(seq) AS hi, count(*) AS n FROM dead_letters');
      const metaLast = one(`SELECT v FROM meta WHERE k = 'last_seq'`);
      this.#lastSeq = Math.max(
        Number(ev.hi ?? 0),
        this.#cursor,
        Number(dl.hi ?? 0),
        metaLast.v == null ? 0 : Number(metaLast.v) || 0,
      );
      this.#nextSeq = this.#lastSeq + 1;
      this.#deadLetters = Number(dl.n ?? 0);
      this.#trimmedUpTo = ev.lo == null ? this.#cursor : Math.min(Number(ev.lo) - 1, this.#cursor);
      const backlog = one('SELECT count(*) AS n, total(size) AS bytes FROM events WHERE seq > ?', [this.#cursor]);
      this.#backlogEvents = Number(backlog.n ?? 0);
      this.#backlogBytes = Number(backlog.bytes ?? 0);
      if (this.#backlogEvents === 0) this.#oldestTs = null;
    } catch (err) {
      for (const st of this.#stmts) {
        try {
          st.finalize();
        } catch {
          // best effort
        }
      }
      throw err;
    }
    this.#reserve.ensure();
    // Rows forwarded before a crash but not yet deleted: trim them soon.
    if (this.#trimmedUpTo < this.#cursor) this.#scheduleMaintenance();
  }

  // ---- append (group commit) ----

  append(events: EventInput[]): Promise<AppendResult> {
    if (this.#closed || this.#closing) return Promise.reject(new LogWriteError('the log is closed', 'KEDGE_LOG_CLOSED'));
    const problem = validate(events);
    if (problem) return Promise.reject(new LogWriteError(problem, 'KEDGE_INVALID_EVENT'));
    return new Promise<AppendResult>((resolve, reject) => {
      this.#pending.push({ events, resolve, reject, firstSeq: 0, lastSeq: 0 });
      if (this.#flushHandle === null) this.#flushHandle = setImmediate(this.#flush);
    });
  }

  readonly #flush = (): void => {
    this.#flushHandle = null;
    const batch = this.#pending;
    if (batch.length === 0) return;
    this.#pending = [];

    const firstSeq = this.#nextSeq;
    let seq = firstSeq;
    let bytes = 0;
    const ts = Date.now();
    const row = this.#row;
    const insert = this.#insert;
    row[5] = ts;
    try {
      this.#begin.run(NO_PARAMS);
      for (let b = 0; b < batch.length; b++) {
        const req = batch[b];
        const evs = req.events;
        req.firstSeq = seq;
        for (let i = 0; i < evs.length; i++) {
          const ev = evs[i];
          const key = ev.key ?? null;
          const size = ev.value.length + (key === null ? 0 : key.length);
          row[0] = seq++;
          row[1] = ev.topic;
          row[2] = key;
          row[3] = ev.value;
          row[4] = headersJson(ev.headers);
          row[6] = size;
          insert.run(row);
          bytes += size;
        }
        req.lastSeq = seq - 1;
      }
      this.#setMeta.run(['last_seq', String(seq - 1)]);
      this.#beforeCommit?.({ firstSeq, lastSeq: seq - 1 });
      this.#commit.run(NO_PARAMS);
    } catch (err) {
      this.#rollbackQuietly();
      row[2] = row[3] = null; // do not pin the failed commit's buffers
      // #nextSeq was never advanced: the failed commit's seqs are handed out again.
      const e = this.#writeError(err, 'append');
      for (const req of batch) req.reject(e);
      return;
    }
    row[2] = row[3] = null;

    const count = seq - firstSeq;
    this.#nextSeq = seq;
    this.#lastSeq = seq - 1;
    this.#commits++;
    if (this.#backlogEvents === 0) this.#oldestTs = ts;
    this.#backlogEvents += count;
    this.#backlogBytes += bytes;

    for (const req of batch) req.resolve({ firstSeq: req.firstSeq, lastSeq: req.lastSeq });
    for (const l of this.#listeners) {
      try {
        l();
      } catch (err) {
        process.emitWarning(`kedge log: onAppend listener threw: ${(err as Error)?.message ?? err}`);
      }
    }
  };

  // ---- read / ack / dead letters ----

  readBatch(afterSeq: number, maxCount: number, maxBytes: number): StoredEvent[] {
    this.#assertOpen();
    const out: StoredEvent[] = [];
    maxCount = Math.floor(maxCount);
    if (!(maxCount >= 1)) return out;
    let after = afterSeq;
    let bytes = 0;
    // Page through with LIMIT so a batch never pulls more than about maxBytes
    // (plus one page) into memory, even though the driver API returns whole result sets.
    let want = Math.min(maxCount, READ_FIRST_PAGE);
    for (;;) {
      const rows = this.#read.all([after, want]);
      for (let i = 0; i < rows.length; i++) {
        const r = rows[i];
        const size = r.size as number;
        if (out.length > 0 && bytes + size > maxBytes) return out;
        out.push(toStored(r));
        bytes += size;
        after = r.seq as number;
        if (out.length >= maxCount) return out;
      }
      if (rows.length < want || bytes >= maxBytes) return out;
      const avg = bytes / out.length || 1;
      want = Math.min(maxCount - out.length, READ_MAX_PAGE, Math.max(16, Math.ceil((maxBytes - bytes) / avg) + 1));
    }
  }

  ack(seq: number): void {
    this.#assertOpen();
    if (!Number.isSafeInteger(seq) || seq < 0) throw new RangeError(`ack: seq must be a non-negative integer, not ${seq}`);
    if (seq > this.#lastSeq) throw new RangeError(`ack: seq ${seq} is beyond the last appended seq ${this.#lastSeq}`);
    if (seq <= this.#cursor) return; // already acknowledged (a resend)
    this.#relaxed(() => this.#withReserve('acknowledge', () => this.#ackTx(seq)));
    this.#scheduleMaintenance();
  }

  #ackTx(seq: number): void {
    const from = this.#cursor;
    let n = 0;
    let bytes = 0;
    let trimmed = this.#trimmedUpTo;
    try {
      this.#begin.run(NO_PARAMS);
      const agg = this.#rangeStats.get([from, seq])!;
      n = Number(agg.n);
      bytes = Number(agg.bytes);
      this.#setCursor.run([seq]);
      trimmed = this.#trimChunk(seq);
      this.#commit.run(NO_PARAMS);
    } catch (err) {
      this.#rollbackQuietly();
      throw this.#writeError(err, 'acknowledge');
    }
    this.#cursor = seq;
    this.#trimmedUpTo = trimmed;
    this.#backlogEvents -= n;
    this.#backlogBytes -= bytes;
    this.#oldestTs = this.#backlogEvents === 0 ? null : undefined;
  }

  /**
   * Run a space-freeing write (ack, trim). If the disk is full: give up the
   * reserve, checkpoint so the WAL restarts from its beginning, switch to small
   * steps, and try once more, so the log drains rather than wedges.
   */
  #withReserve(what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      if ((err as LogWriteError).code !== 'KEDGE_DISK_FULL') throw err;
      const released = this.#reserve.release();
      if (!this.#lowSpace || released) {
        process.emitWarning(
          `kedge log: disk full while trying to ${what}` +
            (released ? `; released the ${this.#reserve.bytes} byte reserve (${this.#reserve.file})` : '') +
            '; deleting forwarded events in small steps until space is back',
        );
      }
      this.#lowSpace = true;
      this.#checkpoint();
      fn();
    }
  }

  /**
   * Run transactions that only remove forwarded data or move the cursor with
   * synchronous=NORMAL even under sync=full: they need no fsync of their own.
   * Losing one to a power cut only means events already in Kafka are sent
   * again (at-least-once, deduplicated by kedge-id), and the WAL being
   * sequential, the next append's fsync makes them durable anyway. This keeps
   * the fsync budget for appends while a backlog drains.
   */
  #relaxed(fn: () => void): void {
    if (!this.#syncFull) return fn();
    // exec, not a reused prepared statement: this pragma acts when compiled, not when stepped.
    this.#db.exec('PRAGMA synchronous = NORMAL');
    try {
      fn();
    } finally {
      this.#db.exec('PRAGMA synchronous = FULL');
    }
  }

  /** RESTART checkpoint: copy the WAL into the database and have the next write start the WAL over. Best effort. */
  #checkpoint(): void {
    try {
      this.#db.exec('PRAGMA wal_checkpoint(RESTART)');
    } catch {
      // Not enough room even for that: the next step retries.
    }
  }

  deadLetter(event: StoredEvent, reason: string): void {
    this.#assertOpen();
    const seq = event?.seq;
    if (!Number.isSafeInteger(seq)) throw new TypeError('deadLetter: event.seq must be an integer');
    const sizeRow = this.#eventSize.get([seq]);
    if (!sizeRow) throw new RangeError(`deadLetter: event ${seq} is not in the log (already forwarded or dead-lettered)`);
    const size = Number(sizeRow.size);
    let cursor = this.#cursor;
    this.#relaxed(() => {
      try {
        this.#begin.run(NO_PARAMS);
        this.#dlInsert.run([String(reason), Date.now(), seq]);
        this.#deleteOne.run([seq]);
        if (seq === cursor + 1) {
          // Past it and past any later seqs already gone (dead-lettered out of order).
          const next = this.#firstAfter.get([seq]);
          cursor = next ? (next.seq as number) - 1 : this.#lastSeq;
          this.#setCursor.run([cursor]);
        }
        this.#commit.run(NO_PARAMS);
      } catch (err) {
        this.#rollbackQuietly();
        throw this.#writeError(err, 'dead-letter');
      }
    });
    if (seq > this.#cursor) {
      this.#backlogEvents -= 1;
      this.#backlogBytes -= size;
    }
    this.#cursor = cursor;
    this.#deadLetters += 1;
    this.#oldestTs = this.#backlogEvents === 0 ? null : undefined;
    this.#scheduleMaintenance();
  }

  listDeadLetters(limit: number): DeadLetter[] {
    this.#assertOpen();
    return this.#dlList.all([Math.max(0, Math.floor(limit))]).map((r) => ({
      ...toStored(r),
      reason: r.reason as string,
      deadAt: r.dead_at as number,
    }));
  }

  stats(): LogStats {
    if (this.#oldestTs === undefined && !this.#closed) {
      const first = this.#firstAfter.get([this.#cursor]);
      this.#oldestTs = first ? (first.ts as number) : null;
    }
    return {
      backlogEvents: this.#backlogEvents,
      backlogBytes: this.#backlogBytes,
      oldestTs: this.#oldestTs ?? null,
      cursor: this.#cursor,
      lastSeq: this.#lastSeq,
      deadLetters: this.#deadLetters,
      commits: this.#commits,
    };
  }

  onAppend(listener: () => void): () => void {
    const l = (): void => listener();
    this.#listeners.add(l);
    return () => {
      this.#listeners.delete(l);
    };
  }

  meta(key: string): string | null {
    this.#assertOpen();
    const row = this.#getMeta.get([key]);
    return row == null || row.v == null ? null : String(row.v);
  }

  setMeta(key: string, value: string): void {
    this.#assertOpen();
    if (typeof key !== 'string' || typeof value !== 'string') throw new TypeError('setMeta: key and value must be strings');
    try {
      this.#setMeta.run([key, value]);
    } catch (err) {
      throw this.#writeError(err, 'write setting');
    }
  }

  // ---- trimming and space ----

  /** Inside a transaction: delete up to TRIM_CHUNK forwarded rows; returns the new trimmed-up-to mark. */
  #trimChunk(cursor: number): number {
    const from = this.#trimmedUpTo;
    if (from >= cursor) return from;
    const to = Math.min(cursor, from + (this.#lowSpace ? LOW_SPACE_TRIM_CHUNK : TRIM_CHUNK));
    this.#trim.run([from, to]);
    return to;
  }

  /** Inside a transaction: return free pages when most of the file is free, a bounded number at a time. Returns whether more remain. */
  #maybeVacuum(): boolean {
    const free = Number(Object.values(this.#freelist.get(NO_PARAMS) ?? {})[0] ?? 0);
    if (free < VACUUM_MIN_FREE_PAGES) return false;
    const pages = Number(Object.values(this.#pageCount.get(NO_PARAMS) ?? {})[0] ?? 0);
    if ((pages - free) * VACUUM_USED_RATIO > pages) return false;
    const n = Math.min(free, this.#lowSpace ? LOW_SPACE_VACUUM_PAGES : VACUUM_MAX_PAGES);
    this.#db.exec(`PRAGMA incremental_vacuum(${n})`);
    this.#vacuumed = true;
    return free - n >= VACUUM_MIN_FREE_PAGES;
  }

  #scheduleMaintenance(): void {
    if (this.#maintHandle === null && !this.#closed) this.#maintHandle = setImmediate(this.#maintain);
  }

  /** One short transaction of trimming and/or vacuuming; reschedules itself while work remains. */
  readonly #maintain = (): void => {
    this.#maintHandle = null;
    if (this.#closed) return;
    let more = false;
    try {
      this.#relaxed(() => this.#withReserve('delete forwarded events', () => {
        let trimmed = this.#trimmedUpTo;
        try {
          this.#begin.run(NO_PARAMS);
          trimmed = this.#trimChunk(this.#cursor);
          more = this.#maybeVacuum();
          this.#commit.run(NO_PARAMS);
        } catch (err) {
          this.#rollbackQuietly();
          throw this.#writeError(err, 'delete forwarded events');
        }
        this.#trimmedUpTo = trimmed;
        if (this.#lowSpace) this.#checkpoint();
      }));
    } catch (err) {
      // Not fatal: the rows stay until the next ack or open retries.
      process.emitWarning(`kedge log: ${(err as Error)?.message ?? err}`);
      return;
    }
    if (more || this.#trimmedUpTo < this.#cursor) {
      this.#scheduleMaintenance();
      return;
    }
    if (this.#vacuumed) {
      // Done returning pages: checkpoint now so the truncation reaches the
      // file (and the WAL is emptied) instead of waiting for the next append.
      this.#vacuumed = false;
      try {
        this.#db.exec('PRAGMA wal_checkpoint(TRUNCATE)');
      } catch {
        // best effort; the next autocheckpoint does it
      }
    }
    if (!this.#reserve.held || this.#lowSpace) {
      if (this.#reserve.ensure()) this.#lowSpace = false;
    }
  };

  // ---- helpers ----

  #assertOpen(): void {
    if (this.#closed) throw new LogWriteError('the log is closed', 'KEDGE_LOG_CLOSED');
  }

  #rollbackQuietly(): void {
    try {
      this.#rollback.run(NO_PARAMS);
    } catch {
      // SQLite rolls back by itself on some errors (e.g. SQLITE_FULL); then there is nothing to undo.
    }
  }

  #writeError(err: unknown, what: string): LogWriteError {
    if (err instanceof LogWriteError) return err;
    const kind = sqlErrorKind(err);
    const msg = (err as Error)?.message ?? String(err);
    if (kind === 'full' || (kind === 'io' && diskNearlyFull(this.#dir))) {
      return new LogWriteError(`cannot ${what}: disk full (${this.#file}: ${msg})`, 'KEDGE_DISK_FULL', { cause: err });
    }
    return new LogWriteError(`cannot ${what}: ${msg} (${this.#file})`, 'KEDGE_LOG_WRITE', { cause: err });
  }

  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closing = (async () => {
      // Accepted appends still queued get their commit before we close.
      if (this.#flushHandle !== null) {
        clearImmediate(this.#flushHandle);
        this.#flush();
      }
      if (this.#maintHandle !== null) {
        clearImmediate(this.#maintHandle);
        this.#maintHandle = null;
      }
      this.#closed = true;
      this.#listeners.clear();
      try {
        for (const st of this.#stmts) st.finalize();
        try {
          this.#db.exec('PRAGMA wal_checkpoint(TRUNCATE)');
        } catch {
          // The WAL is replayed at next open; not worth failing close for.
        }
        this.#db.close();
      } finally {
        this.#lock.release();
      }
    })();
    return this.#closing;
  }
}

function diskNearlyFull(dir: string): boolean {
  try {
    const s = fs.statfsSync(dir);
    return s.bavail * s.bsize < DISK_FULL_SLACK;
  } catch {
    return false;
  }
}
