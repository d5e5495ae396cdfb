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
 * Lanes: bulk events live in `events`, priority events in `events_priority`
 * (same columns, one seq counter). Each lane has its own cursor row, trim
 * mark and backlog counters; one group commit may write both tables.
 *
 * Quota and retention (see quota.ts): appends are admitted against an
 * estimate of the live pages, re-measured with two header pragmas when it
 * gets near the limit. Over the limit, 'drop-oldest' deletes the oldest
 * unforwarded events (bulk lane first) and 'reject-new' refuses the append.
 * Retention deletes unforwarded events older than its age on a timer. Drops
 * never touch what the forwarder has in flight (seqs up to the last one
 * readBatch returned in that lane), run in bounded transactions, and are
 * counted per topic inside the deleting transaction, then reported to the
 * onDrop listeners.
 *
 * All SQLite calls are synchronous and each transaction begins and ends
 * within one call, so transactions never interleave.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Row, SqlDb, SqlStmt } from './driver.ts';
import { sqlErrorKind } from './driver.ts';
import { openDriver } from './open-driver.ts';
import { acquireDirLock } from './lockfile.ts';
import type { DirLock } from './lockfile.ts';
import { RESERVE_FILE, SpaceReserve } from './reserve.ts';
import {
  DEST_KAFKA,
  DEST_KAFKA_PRIORITY,
  migrate,
  pragmaInt,
  schemaObjectCount,
} from './schema.ts';
import { estimateRowBytes, logFilesBytes, planQuota } from './quota.ts';
import type { QuotaPlan } from './quota.ts';
import type {
  AppendResult,
  DeadLetter,
  DropReason,
  DropReport,
  EventInput,
  EventLog,
  Lane,
  LaneStats,
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
/** In low-space mode, appends check at most this often whether the reserve can be re-created. */
const LOW_SPACE_RECHECK_MS = 1000;
/** In low-space mode, an append must leave the reserve's size plus this free on the disk. */
const LOW_SPACE_MARGIN = 1 << 20;
/** A disk with less than this free is "full" when the wasm VFS reports only a generic I/O error. */
const DISK_FULL_SLACK = 1 << 20;
/** First page size readBatch asks for before it knows the typical event size. */
const READ_FIRST_PAGE = 64;
/** Most rows one readBatch query fetches. */
const READ_MAX_PAGE = 10_000;

/** Most rows one drop transaction (quota or retention) deletes. */
const DROP_CHUNK = 2000;
/** Least a quota drop step frees (in pages' worth of events). */
const MIN_DROP_PAGES = 16;
/** Retention is checked this often (and at open, and on appends when the clock moved this much). */
const RETENTION_CHECK_MS = 5000;
/** The used-pages estimate is re-measured at least this often while appending. */
const MEASURE_EVERY_MS = 1000;
/** stats().diskBytes stats the files at most this often. */
const DISK_STAT_EVERY_MS = 500;

const NO_PARAMS: unknown[] = [];

interface PendingAppend {
  events: EventInput[];
  resolve: (r: AppendResult) => void;
  reject: (e: Error) => void;
  firstSeq: number;
  lastSeq: number;
  /** Expected bytes in database pages (quota admission); 0 without a quota. */
  est: number;
}

export async function openLog(opts: LogOptions): Promise<EventLog> {
  checkOptions(opts);
  const dir = path.resolve(opts.dir);
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw new LogOpenError(
      `cannot create data dir ${dir}: ${(err as Error).message}`,
      'KEDGE_LOG_OPEN',
      { cause: err },
    );
  }
  const lock = acquireDirLock(dir);
  const file = path.join(dir, DB_FILE);
  let db: SqlDb | undefined;
  try {
    refuseEmptiedLog(dir, file);
    db = await openDriver(opts.driver, { file, wasmPath: opts.wasmPath });
    const plan = configure(db, file, opts);
    return new SqliteLog(db, lock, dir, file, opts, plan);
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

/**
 * SQLite treats a 0-byte file as a new, empty database. kedge.db is only empty
 * before its first commit, and kedge.reserve is created after that; so an empty
 * kedge.db beside a reserve is a log that was emptied (a power cut on some file
 * systems, a bad copy, a stray `> kedge.db`): refuse it rather than start on nothing.
 */
function refuseEmptiedLog(dir: string, file: string): void {
  let size: number;
  try {
    size = fs.statSync(file).size;
  } catch {
    return; // no database yet: a new log
  }
  if (size === 0 && fs.existsSync(path.join(dir, RESERVE_FILE))) {
    throw damaged(file, 'the file is empty (0 bytes) but this data dir held a log before');
  }
}

function checkOptions(opts: LogOptions): void {
  if (!opts || typeof opts.dir !== 'string' || opts.dir === '')
    throw new TypeError('openLog: dir must be a non-empty string');
  if (opts.driver !== 'sqlite' && opts.driver !== 'wasm')
    throw new TypeError(`openLog: driver must be 'sqlite' or 'wasm', not ${String(opts.driver)}`);
  if (opts.sync !== 'full' && opts.sync !== 'normal')
    throw new TypeError(`openLog: sync must be 'full' or 'normal', not ${String(opts.sync)}`);
  if (
    opts.quotaBytes !== undefined &&
    !(Number.isSafeInteger(opts.quotaBytes) && opts.quotaBytes > 0)
  ) {
    throw new TypeError(
      `openLog: quotaBytes must be a positive integer, not ${String(opts.quotaBytes)}`,
    );
  }
  if (
    opts.whenFull !== undefined &&
    opts.whenFull !== 'drop-oldest' &&
    opts.whenFull !== 'reject-new'
  ) {
    throw new TypeError(
      `openLog: whenFull must be 'drop-oldest' or 'reject-new', not ${String(opts.whenFull)}`,
    );
  }
  if (opts.retentionMs != null && !(opts.retentionMs > 0))
    throw new TypeError(
      `openLog: retentionMs must be positive or null, not ${String(opts.retentionMs)}`,
    );
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
    return new LogOpenError(
      `${file} is locked by another program (${msg}); stop it first`,
      'KEDGE_DATA_DIR_LOCKED',
      { cause: err },
    );
  }
  return new LogOpenError(`cannot open the log ${file}: ${msg}`, 'KEDGE_LOG_OPEN', { cause: err });
}

/** Pragmas, integrity check and schema. Order matters (see comments). Returns how the quota is split. */
function configure(db: SqlDb, file: string, opts: LogOptions): QuotaPlan {
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
      if (problems.length > 0)
        throw damaged(file, `quick_check: ${problems.slice(0, 3).join('; ')}`);
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
  if (mode !== 'wal')
    throw new LogOpenError(`${file}: could not switch to WAL mode (got ${mode})`, 'KEDGE_LOG_OPEN');
  db.exec(`PRAGMA synchronous = ${opts.sync === 'full' ? 'FULL' : 'NORMAL'}`);
  db.exec('PRAGMA cache_size = -8192'); // 8 MiB: the working set is the tail and the head of the log
  const pageSize = pragmaInt(db, 'page_size');
  const plan = planQuota(opts.quotaBytes, pageSize, opts.reserveBytes);
  // Truncate the WAL back to its limit after a big transaction, and checkpoint before it grows past it.
  db.exec(`PRAGMA journal_size_limit = ${plan.walLimitBytes}`);
  db.exec(`PRAGMA wal_autocheckpoint = ${plan.autocheckpointPages}`);
  migrate(db, file);
  // Hard last line under the quota: the database file alone never outgrows it.
  const cap = Math.min(opts.maxDbBytes ?? Infinity, opts.quotaBytes ?? Infinity);
  if (cap !== Infinity)
    db.exec(`PRAGMA max_page_count = ${Math.max(1, Math.floor(cap / pageSize))}`);
  return plan;
}

function validate(events: unknown): string | null {
  if (!Array.isArray(events)) return 'append expects an array of events';
  if (events.length === 0) return 'append needs at least one event';
  for (let i = 0; i < events.length; i++) {
    const ev = events[i] as EventInput | null;
    if (ev === null || typeof ev !== 'object') return `event ${i} is not an object`;
    if (typeof ev.topic !== 'string' || ev.topic === '')
      return `event ${i}: topic must be a non-empty string`;
    if (!Buffer.isBuffer(ev.value)) return `event ${i}: value must be a Buffer`;
    if (ev.key != null && !Buffer.isBuffer(ev.key))
      return `event ${i}: key must be a Buffer or null`;
    if (ev.lane != null && ev.lane !== 'bulk' && ev.lane !== 'priority')
      return `event ${i}: lane must be 'bulk' or 'priority'`;
    const h = ev.headers;
    if (h != null) {
      if (typeof h !== 'object' || Array.isArray(h))
        return `event ${i}: headers must be an object of strings`;
      for (const k in h)
        if (typeof h[k] !== 'string')
          return `event ${i}: header ${JSON.stringify(k)} must be a string`;
    }
  }
  return null;
}

function headersJson(h: Record<string, string> | undefined): string | null {
  if (h == null) return null;
  for (const _ in h) return JSON.stringify(h);
  return null; // {} is stored as no headers
}

/** Expected page bytes of a (validated) append, for quota admission. */
function estimateBytes(events: EventInput[]): number {
  let n = 0;
  for (const ev of events) {
    let hl = 0;
    if (ev.headers != null) for (const k in ev.headers) hl += k.length + ev.headers[k].length + 6;
    n += estimateRowBytes(ev.value.length + (ev.key?.length ?? 0), ev.topic.length, hl);
  }
  return n;
}

function toStored(r: Row, lane: Lane): StoredEvent {
  return {
    seq: r.seq as number,
    topic: r.topic as string,
    key: (r.key as Buffer | null) ?? null,
    value: r.value as Buffer,
    headers: r.headers == null ? null : (JSON.parse(r.headers as string) as Record<string, string>),
    ts: r.ts as number,
    lane,
  };
}

/** One lane: its table, cursor row, statements and counters. */
class LaneState {
  readonly name: Lane;
  readonly table: string;
  readonly dest: string;
  readonly insert: SqlStmt;
  readonly read: SqlStmt;
  readonly firstAfter: SqlStmt;
  readonly rangeStats: SqlStmt;
  readonly setCursor: SqlStmt;
  readonly trim: SqlStmt;
  readonly eventSize: SqlStmt;
  readonly dlInsert: SqlStmt;
  readonly deleteOne: SqlStmt;
  readonly head: SqlStmt;
  readonly topicCounts: SqlStmt;

  cursor = 0;
  /** Every row of this lane with seq <= this is deleted. */
  trimmedUpTo = 0;
  backlogEvents = 0;
  backlogBytes = 0;
  /** undefined: unknown (one indexed query away); null: backlog empty. */
  oldestTs: number | null | undefined = undefined;
  /** Highest seq readBatch handed out in this lane: the forwarder may have it in flight, so drops stay above it. */
  inflight = 0;

  constructor(name: Lane, table: string, dest: string, p: (sql: string) => SqlStmt) {
    this.name = name;
    this.table = table;
    this.dest = dest;
    const t = table;
    this.insert = p(
      `INSERT INTO ${t}(seq, topic, key, value, headers, ts, size) VALUES (?, ?, ?, ?, ?, ?, ?)`,
    );
    this.read = p(
      `SELECT seq, topic, key, value, headers, ts, size FROM ${t} WHERE seq > ? ORDER BY seq LIMIT ?`,
    );
    this.firstAfter = p(`SELECT seq, ts FROM ${t} WHERE seq > ? ORDER BY seq LIMIT 1`);
    this.rangeStats = p(
      `SELECT count(*) AS n, total(size) AS bytes FROM ${t} WHERE seq > ? AND seq <= ?`,
    );
    this.setCursor = p(`UPDATE cursors SET seq = ? WHERE dest = '${dest}'`);
    this.trim = p(`DELETE FROM ${t} WHERE seq > ? AND seq <= ?`);
    this.eventSize = p(`SELECT size FROM ${t} WHERE seq = ?`);
    this.dlInsert = p(
      'INSERT INTO dead_letters(seq, topic, key, value, headers, ts, size, reason, dead_at, lane) ' +
        `SELECT seq, topic, key, value, headers, ts, size, ?, ?, '${name}' FROM ${t} WHERE seq = ?`,
    );
    this.deleteOne = p(`DELETE FROM ${t} WHERE seq = ?`);
    this.head = p(`SELECT seq, ts, size FROM ${t} WHERE seq > ? ORDER BY seq LIMIT ?`);
    this.topicCounts = p(
      `SELECT topic, count(*) AS n, total(size) AS bytes FROM ${t} WHERE seq > ? AND seq <= ? GROUP BY topic`,
    );
  }

  stats(): LaneStats {
    if (this.oldestTs === undefined) {
      const first = this.firstAfter.get([this.cursor]);
      this.oldestTs = first ? (first.ts as number) : null;
    }
    return {
      backlogEvents: this.backlogEvents,
      backlogBytes: this.backlogBytes,
      oldestTs: this.oldestTs,
      cursor: this.cursor,
    };
  }
}

class SqliteLog implements EventLog {
  readonly #db: SqlDb;
  readonly #lock: DirLock;
  readonly #dir: string;
  readonly #file: string;
  readonly #beforeCommit: LogOptions['beforeCommit'];
  readonly #beforeDrop: LogOptions['beforeDrop'];
  readonly #reserve: SpaceReserve;
  readonly #stmts: SqlStmt[] = [];
  readonly #now: () => number;
  readonly #plan: QuotaPlan;
  readonly #whenFull: 'drop-oldest' | 'reject-new';
  readonly #retentionMs: number | null;
  readonly #pageSize: number;

  // Prepared once, reused, finalized on close.
  readonly #begin: SqlStmt;
  readonly #commit: SqlStmt;
  readonly #rollback: SqlStmt;
  readonly #setMeta: SqlStmt;
  readonly #getMeta: SqlStmt;
  readonly #dlList: SqlStmt;
  readonly #freelist: SqlStmt;
  readonly #pageCount: SqlStmt;
  /** sync=full: relax to NORMAL around ack/trim/dead-letter transactions (see #relaxed). */
  readonly #syncFull: boolean;

  readonly #bulk: LaneState;
  readonly #priority: LaneState;
  /** Drop order for the quota: bulk first. */
  readonly #lanes: readonly LaneState[];

  /** One reusable parameter array for the INSERT: no per-row allocation. */
  readonly #row: unknown[] = [0, '', null, null, null, 0, 0];

  #pending: PendingAppend[] = [];
  #flushHandle: NodeJS.Immediate | null = null;
  #maintHandle: NodeJS.Immediate | null = null;
  #retentionTimer: NodeJS.Timeout | null = null;
  #listeners = new Set<() => void>();
  #dropListeners = new Set<(d: DropReport) => void>();
  #closed = false;
  #closing: Promise<void> | null = null;

  #nextSeq: number;
  #lastSeq: number;
  #deadLetters: number;
  #commits = 0;
  #forwarded = 0;
  #dropped = 0;
  /** Live database bytes: measured exactly (#measureUsed), plus estimates of what was appended since. */
  #usedEst = 0;
  #measuredAt = 0;
  /** drop-oldest: live pages went above the high watermark; maintenance drops down to the low one. */
  #quotaDropWanted = false;
  #retentionWanted = false;
  #retentionCheckedAt = 0;
  #diskBytes = 0;
  #diskStatAt = 0;
  /**
   * See LOW_SPACE_TRIM_CHUNK. Appends are refused meanwhile (the freed reserve is
   * for deleting forwarded rows). Left once the reserve could be re-created.
   */
  #lowSpace = false;
  #lowSpaceCheckedAt = 0;
  /** Pages were vacuumed since the last checkpoint: the file only shrinks on disk when the WAL is checkpointed. */
  #vacuumed = false;

  constructor(
    db: SqlDb,
    lock: DirLock,
    dir: string,
    file: string,
    opts: LogOptions,
    plan: QuotaPlan,
  ) {
    this.#db = db;
    this.#lock = lock;
    this.#dir = dir;
    this.#file = file;
    this.#beforeCommit = opts.beforeCommit;
    this.#beforeDrop = opts.beforeDrop;
    this.#syncFull = opts.sync === 'full';
    this.#now = opts.now ?? Date.now;
    this.#plan = plan;
    this.#whenFull = opts.whenFull ?? 'drop-oldest';
    this.#retentionMs = opts.retentionMs ?? null;
    this.#reserve = new SpaceReserve(dir, plan.reserveBytes);
    const p = (sql: string): SqlStmt => {
      const st = db.prepare(sql);
      this.#stmts.push(st);
      return st;
    };
    try {
      this.#pageSize = pragmaInt(db, 'page_size');
      this.#begin = p('BEGIN IMMEDIATE');
      this.#commit = p('COMMIT');
      this.#rollback = p('ROLLBACK');
      this.#setMeta = p(
        'INSERT INTO meta(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v',
      );
      this.#getMeta = p('SELECT v FROM meta WHERE k = ?');
      this.#dlList = p(
        'SELECT seq, topic, key, value, headers, ts, reason, dead_at, lane FROM dead_letters ORDER BY seq DESC LIMIT ?',
      );
      this.#freelist = p('PRAGMA freelist_count');
      this.#pageCount = p('PRAGMA page_count');
      this.#bulk = new LaneState('bulk', 'events', DEST_KAFKA, p);
      this.#priority = new LaneState('priority', 'events_priority', DEST_KAFKA_PRIORITY, p);
      this.#lanes = [this.#bulk, this.#priority];

      // Initial state: a handful of indexed/aggregate queries, once.
      const one = (sql: string, params: unknown[] = NO_PARAMS): Row => {
        const st = db.prepare(sql);
        try {
          return st.get(params) ?? {};
        } finally {
          st.finalize();
        }
      };
      let hi = 0;
      for (const lane of this.#lanes) {
        const cursorRow = one(`SELECT seq FROM cursors WHERE dest = '${lane.dest}'`);
        if (cursorRow.seq === undefined)
          throw new LogOpenError(`${file}: cursor row ${lane.dest} missing`, 'KEDGE_LOG_DAMAGED');
        lane.cursor = Number(cursorRow.seq);
        const ev = one(`SELECT max(seq) AS hi, min(seq) AS lo FROM ${lane.table}`);
        lane.trimmedUpTo = ev.lo == null ? lane.cursor : Math.min(Number(ev.lo) - 1, lane.cursor);
        const backlog = one(
          `SELECT count(*) AS n, total(size) AS bytes FROM ${lane.table} WHERE seq > ?`,
          [lane.cursor],
        );
        lane.backlogEvents = Number(backlog.n ?? 0);
        lane.backlogBytes = Number(backlog.bytes ?? 0);
        if (lane.backlogEvents === 0) lane.oldestTs = null;
        hi = Math.max(hi, Number(ev.hi ?? 0), lane.cursor);
      }
      const dl = one('SELECT max(seq) AS hi, count(*) AS n FROM dead_letters');
      const metaLast = one(`SELECT v FROM meta WHERE k = 'last_seq'`);
      this.#lastSeq = Math.max(
        hi,
        Number(dl.hi ?? 0),
        metaLast.v == null ? 0 : Number(metaLast.v) || 0,
      );
      this.#nextSeq = this.#lastSeq + 1;
      this.#deadLetters = Number(dl.n ?? 0);
      this.#measureUsed();
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
    if (this.#lanes.some((l) => l.trimmedUpTo < l.cursor)) this.#scheduleMaintenance();
    // Over the quota already (e.g. it was lowered): drop in the background.
    if (
      this.#plan.quotaBytes !== null &&
      this.#whenFull === 'drop-oldest' &&
      this.#usedEst > this.#plan.highBytes
    ) {
      this.#quotaDropWanted = true;
      this.#scheduleMaintenance();
    }
    if (this.#retentionMs !== null) {
      // Once right after open (listeners are attached by then: they subscribe as soon as openLog resolves), then on a timer.
      this.#retentionWanted = true;
      this.#retentionCheckedAt = this.#now();
      this.#scheduleMaintenance();
      this.#retentionTimer = setInterval(() => {
        this.#retentionCheckedAt = this.#now();
        this.#retentionWanted = true;
        this.#scheduleMaintenance();
      }, RETENTION_CHECK_MS);
      this.#retentionTimer.unref();
    }
  }

  #lane(name: Lane | undefined): LaneState {
    if (name === undefined || name === 'bulk') return this.#bulk;
    if (name === 'priority') return this.#priority;
    throw new TypeError(`lane must be 'bulk' or 'priority', not ${String(name)}`);
  }

  // ---- append (group commit) ----

  append(events: EventInput[]): Promise<AppendResult> {
    if (this.#closed || this.#closing)
      return Promise.reject(new LogWriteError('the log is closed', 'KEDGE_LOG_CLOSED'));
    const problem = validate(events);
    if (problem) return Promise.reject(new LogWriteError(problem, 'KEDGE_INVALID_EVENT'));
    const est = this.#plan.quotaBytes === null ? 0 : estimateBytes(events);
    return new Promise<AppendResult>((resolve, reject) => {
      this.#pending.push({ events, resolve, reject, firstSeq: 0, lastSeq: 0, est });
      if (this.#flushHandle === null) this.#flushHandle = setImmediate(this.#flush);
    });
  }

  readonly #flush = (): void => {
    this.#flushHandle = null;
    let batch = this.#pending;
    if (batch.length === 0) return;
    this.#pending = [];
    // The reserve was given up so forwarded rows can be deleted: that space is for
    // the drain, not for new events (they would take it and wedge the next ack).
    // New events may still use what the disk has beyond the reserve's size, and the
    // pages trimming frees inside the file: with Kafka up, ingest goes on at the drain rate.
    if (this.#lowSpace && !this.#tryLeaveLowSpace() && !this.#roomBesideReserve(batch)) {
      const e = this.#lowSpaceError();
      for (const req of batch) req.reject(e);
      return;
    }
    if (this.#plan.quotaBytes !== null) {
      try {
        batch = this.#admit(batch);
      } catch (err) {
        // A drop that could not make room (its DELETE failed: full disk, I/O error)
        // is a full log to the callers. This runs in a setImmediate callback: a throw
        // here would be an uncaught exception, and these promises would never settle.
        const cause = this.#writeError(err, 'make room under the disk quota');
        const e = new LogWriteError(
          `${cause.message}; new events are refused until it succeeds`,
          'KEDGE_DISK_FULL',
          { cause },
        );
        for (const req of batch) req.reject(e);
        return;
      }
      if (batch.length === 0) return;
    }

    const firstSeq = this.#nextSeq;
    let seq = firstSeq;
    let bulkN = 0;
    let bulkBytes = 0;
    let prioN = 0;
    let prioBytes = 0;
    let est = 0;
    const ts = this.#now();
    const row = this.#row;
    const bulkInsert = this.#bulk.insert;
    const prioInsert = this.#priority.insert;
    row[5] = ts;
    try {
      this.#begin.run(NO_PARAMS);
      for (let b = 0; b < batch.length; b++) {
        const req = batch[b];
        const evs = req.events;
        est += req.est;
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
          if (ev.lane === 'priority') {
            prioInsert.run(row);
            prioN++;
            prioBytes += size;
          } else {
            bulkInsert.run(row);
            bulkN++;
            bulkBytes += size;
          }
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

    this.#nextSeq = seq;
    this.#lastSeq = seq - 1;
    this.#commits++;
    if (bulkN > 0) this.#grow(this.#bulk, bulkN, bulkBytes, ts);
    if (prioN > 0) this.#grow(this.#priority, prioN, prioBytes, ts);
    try {
      if (this.#plan.quotaBytes !== null) this.#afterCommitQuota(est, ts);
      else if (this.#retentionMs !== null) this.#maybeRetention(ts);
    } catch (err) {
      // Committed is committed: a failed re-measure must not keep the callers from their answer.
      process.emitWarning(`kedge log: ${(err as Error)?.message ?? err}`);
    }

    for (const req of batch) req.resolve({ firstSeq: req.firstSeq, lastSeq: req.lastSeq });
    for (const l of this.#listeners) {
      try {
        l();
      } catch (err) {
        process.emitWarning(
          `kedge log: onAppend listener threw: ${(err as Error)?.message ?? err}`,
        );
      }
    }
  };

  #grow(lane: LaneState, n: number, bytes: number, ts: number): void {
    if (lane.backlogEvents === 0) lane.oldestTs = ts;
    lane.backlogEvents += n;
    lane.backlogBytes += bytes;
  }

  // ---- quota ----

  /** Live pages in bytes, exactly (two header reads, no file system call). */
  #measureUsed(): void {
    const pages = Number(Object.values(this.#pageCount.get(NO_PARAMS) ?? {})[0] ?? 0);
    const free = Number(Object.values(this.#freelist.get(NO_PARAMS) ?? {})[0] ?? 0);
    this.#usedEst = (pages - free) * this.#pageSize;
    this.#measuredAt = Date.now();
  }

  /**
   * Which of the queued appends fit under the quota. drop-oldest first makes
   * room by dropping (synchronously: the commit must not push the log over);
   * whatever still does not fit (reject-new, or nothing left that may be
   * dropped) is refused with KEDGE_QUOTA_FULL and stores nothing.
   */
  #admit(batch: PendingAppend[]): PendingAppend[] {
    let incoming = 0;
    for (const req of batch) incoming += req.est;
    const limit = this.#plan.dataLimitBytes;
    if (this.#usedEst + incoming <= limit) return batch;
    this.#measureUsed();
    if (this.#usedEst + incoming > limit && this.#whenFull === 'drop-oldest') {
      // Aim below the high watermark (not just the limit), so the next commits do not each need a synchronous drop.
      this.#dropForQuota(this.#usedEst + incoming - this.#plan.highBytes);
    }
    if (this.#usedEst + incoming <= limit) return batch;
    // FIFO: from the first append that does not fit, every later one is refused too,
    // even a smaller one that would fit. A publisher resends what was refused, and it
    // must not land behind something that came after it (order per key).
    const fits: PendingAppend[] = [];
    let used = this.#usedEst;
    let refusing = false;
    for (const req of batch) {
      if (!refusing && used + req.est <= limit) {
        used += req.est;
        fits.push(req);
      } else {
        refusing = true;
        req.reject(this.#quotaFullError());
      }
    }
    return fits;
  }

  /**
   * In low-space mode: has the disk room for the reserve again (someone freed space,
   * or trimming and vacuuming gave pages back)? Checked at most once a second from
   * the append path, so that ingest resumes even when nothing is being forwarded.
   */
  #tryLeaveLowSpace(): boolean {
    const now = Date.now();
    if (now - this.#lowSpaceCheckedAt < LOW_SPACE_RECHECK_MS) return false;
    this.#lowSpaceCheckedAt = now;
    if (!this.#reserve.ensure()) return false;
    this.#lowSpace = false;
    return true;
  }

  /**
   * Low-space mode: would the disk still have the reserve's size free after this
   * commit? Counted generously (the WAL writes whole pages, the file grows by pages).
   */
  #roomBesideReserve(batch: PendingAppend[]): boolean {
    let bytes = 0;
    for (const req of batch)
      for (const ev of req.events) bytes += ev.value.length + (ev.key?.length ?? 0) + 64;
    try {
      const s = fs.statfsSync(this.#dir);
      return s.bavail * s.bsize >= this.#reserve.bytes + 2 * bytes + LOW_SPACE_MARGIN;
    } catch {
      return false;
    }
  }

  #lowSpaceError(): LogWriteError {
    return new LogWriteError(
      `cannot append: disk full (${this.#dir}); kedge gave up its space reserve (${this.#reserve.file}) to delete ` +
        'forwarded events, and new events may not take that space; they are accepted again as forwarding frees room (free disk space if Kafka is unreachable)',
      'KEDGE_DISK_FULL',
    );
  }

  #quotaFullError(): LogWriteError {
    const q = this.#plan.quotaBytes!;
    const why =
      this.#whenFull === 'reject-new'
        ? 'KEDGE_WHEN_FULL=reject-new keeps stored events until they are forwarded'
        : 'the events that could be dropped are being forwarded right now';
    return new LogWriteError(
      `the log is at its disk quota (KEDGE_DISK_QUOTA=${q} bytes); ${why}, so new events are refused until forwarding frees space; retry later`,
      'KEDGE_QUOTA_FULL',
    );
  }

  /** After a commit: account for it, and start background drops / re-measure when near the limit. */
  #afterCommitQuota(est: number, ts: number): void {
    this.#usedEst += est;
    if (this.#usedEst > this.#plan.highBytes || Date.now() - this.#measuredAt >= MEASURE_EVERY_MS)
      this.#measureUsed();
    if (
      this.#whenFull === 'drop-oldest' &&
      this.#usedEst > this.#plan.highBytes &&
      !this.#quotaDropWanted
    ) {
      this.#quotaDropWanted = true;
      this.#scheduleMaintenance();
    }
    if (this.#retentionMs !== null) this.#maybeRetention(ts);
  }

  /** Injected clocks move in jumps: check retention on appends too once the clock moved far enough. */
  #maybeRetention(now: number): void {
    if (!this.#retentionWanted && Math.abs(now - this.#retentionCheckedAt) >= RETENTION_CHECK_MS) {
      this.#retentionCheckedAt = now;
      this.#retentionWanted = true;
      this.#scheduleMaintenance();
    }
  }

  /** Drop at least `bytes` of the oldest unforwarded events, bulk lane first, in bounded transactions. */
  #dropForQuota(bytes: number): void {
    const target = this.#usedEst - bytes;
    // Bounded: every pass either drops rows or stops; the backlog is finite.
    while (this.#usedEst > target) {
      let n = 0;
      // At least a few pages per transaction: rows only free space once their whole page is empty.
      const want = Math.max(this.#usedEst - target, MIN_DROP_PAGES * this.#pageSize);
      for (const lane of this.#lanes) {
        n = this.#dropStep(lane, 'quota', { wantBytes: want });
        if (n > 0) break;
      }
      if (n === 0) return;
    }
  }

  /**
   * One bounded drop transaction in `lane`: the oldest unforwarded rows after
   * what the forwarder may hold in flight, up to `wantBytes` (quota) or while
   * older than `beforeTs` (retention). Counts per topic in the same
   * transaction, then reports. Returns the number of events dropped.
   */
  #dropStep(
    lane: LaneState,
    reason: DropReason,
    limit: { wantBytes?: number; beforeTs?: number },
  ): number {
    const from = Math.max(lane.cursor, lane.inflight);
    const rows = lane.head.all([from, DROP_CHUNK]);
    let to = from;
    let est = 0;
    for (const r of rows) {
      if (limit.beforeTs !== undefined && (r.ts as number) >= limit.beforeTs) break;
      to = r.seq as number;
      est += estimateRowBytes(r.size as number, 0, 0);
      if (limit.wantBytes !== undefined && est >= limit.wantBytes) break;
    }
    if (to === from) return 0;
    let groups: Row[] = [];
    try {
      this.#begin.run(NO_PARAMS);
      groups = lane.topicCounts.all([from, to]);
      this.#beforeDrop?.({ reason, lane: lane.name, afterSeq: from, toSeq: to });
      lane.trim.run([from, to]);
      this.#commit.run(NO_PARAMS);
    } catch (err) {
      this.#rollbackQuietly();
      throw this.#writeError(err, `drop events (${reason})`);
    }
    let n = 0;
    const reports: DropReport[] = [];
    for (const g of groups) {
      const events = Number(g.n);
      const bytes = Number(g.bytes);
      n += events;
      lane.backlogEvents -= events;
      lane.backlogBytes -= bytes;
      reports.push({ reason, lane: lane.name, topic: g.topic as string, events, bytes });
    }
    this.#dropped += n;
    lane.oldestTs = lane.backlogEvents === 0 ? null : undefined;
    this.#measureUsed();
    for (const d of reports) {
      for (const l of this.#dropListeners) {
        try {
          l(d);
        } catch (err) {
          process.emitWarning(
            `kedge log: onDrop listener threw: ${(err as Error)?.message ?? err}`,
          );
        }
      }
    }
    return n;
  }

  /** One retention step over both lanes (head first). Returns whether old events may remain. */
  #retentionStep(): boolean {
    const before = this.#now() - this.#retentionMs!;
    let more = false;
    for (const lane of this.#lanes) {
      const s = lane.stats();
      if (s.oldestTs === null || s.oldestTs >= before) continue;
      if (this.#dropStep(lane, 'retention', { beforeTs: before }) >= DROP_CHUNK) more = true;
    }
    return more;
  }

  // ---- read / ack / dead letters ----

  readBatch(afterSeq: number, maxCount: number, maxBytes: number, laneName?: Lane): StoredEvent[] {
    this.#assertOpen();
    const lane = this.#lane(laneName);
    const out: StoredEvent[] = [];
    maxCount = Math.floor(maxCount);
    if (!(maxCount >= 1)) return out;
    let after = afterSeq;
    let bytes = 0;
    // Page through with LIMIT so a batch never pulls more than about maxBytes
    // (plus one page) into memory, even though the driver API returns whole result sets.
    let want = Math.min(maxCount, READ_FIRST_PAGE);
    for (;;) {
      const rows = lane.read.all([after, want]);
      for (let i = 0; i < rows.length; i++) {
        const r = rows[i];
        const size = r.size as number;
        if (out.length > 0 && bytes + size > maxBytes) return this.#handedOut(lane, out);
        out.push(toStored(r, lane.name));
        bytes += size;
        after = r.seq as number;
        if (out.length >= maxCount) return this.#handedOut(lane, out);
      }
      if (rows.length < want || bytes >= maxBytes) return this.#handedOut(lane, out);
      const avg = bytes / out.length || 1;
      want = Math.min(
        maxCount - out.length,
        READ_MAX_PAGE,
        Math.max(16, Math.ceil((maxBytes - bytes) / avg) + 1),
      );
    }
  }

  #handedOut(lane: LaneState, out: StoredEvent[]): StoredEvent[] {
    if (out.length > 0) lane.inflight = Math.max(lane.inflight, out[out.length - 1].seq);
    return out;
  }

  ack(seq: number, laneName?: Lane): void {
    this.#assertOpen();
    const lane = this.#lane(laneName);
    if (!Number.isSafeInteger(seq) || seq < 0)
      throw new RangeError(`ack: seq must be a non-negative integer, not ${seq}`);
    if (seq > this.#lastSeq)
      throw new RangeError(`ack: seq ${seq} is beyond the last appended seq ${this.#lastSeq}`);
    if (seq <= lane.cursor) return; // already acknowledged (a resend)
    this.#relaxed(() => this.#withReserve('acknowledge', () => this.#ackTx(lane, seq)));
    this.#scheduleMaintenance();
  }

  #ackTx(lane: LaneState, seq: number): void {
    const from = lane.cursor;
    let n = 0;
    let bytes = 0;
    let trimmed = lane.trimmedUpTo;
    try {
      this.#begin.run(NO_PARAMS);
      const agg = lane.rangeStats.get([from, seq])!;
      n = Number(agg.n);
      bytes = Number(agg.bytes);
      lane.setCursor.run([seq]);
      trimmed = this.#trimChunk(lane, seq);
      this.#commit.run(NO_PARAMS);
    } catch (err) {
      this.#rollbackQuietly();
      throw this.#writeError(err, 'acknowledge');
    }
    lane.cursor = seq;
    lane.trimmedUpTo = trimmed;
    lane.backlogEvents -= n;
    lane.backlogBytes -= bytes;
    lane.oldestTs = lane.backlogEvents === 0 ? null : undefined;
    this.#forwarded += n;
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
            (released
              ? `; released the ${this.#reserve.bytes} byte reserve (${this.#reserve.file})`
              : '') +
            '; deleting forwarded events in small steps until space is back',
        );
      }
      this.#lowSpace = true;
      this.#lowSpaceCheckedAt = Date.now();
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
    if (!this.#syncFull) {
      fn();
      return;
    }
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
    const lane = this.#lane(event.lane);
    const sizeRow = lane.eventSize.get([seq]);
    if (!sizeRow)
      throw new RangeError(
        `deadLetter: event ${seq} is not in the ${lane.name} lane of the log (already forwarded or dead-lettered)`,
      );
    const size = Number(sizeRow.size);
    let cursor = lane.cursor;
    this.#relaxed(() => {
      try {
        this.#begin.run(NO_PARAMS);
        // Is it the lane's next event? (seqs of a lane have gaps: the other lane, drops.)
        const first = lane.firstAfter.get([cursor]);
        const isNext = first !== undefined && (first.seq as number) === seq;
        lane.dlInsert.run([String(reason), Date.now(), seq]);
        lane.deleteOne.run([seq]);
        if (isNext) {
          // Past it and past any later seqs already gone (dead-lettered out of order).
          const next = lane.firstAfter.get([seq]);
          cursor = next ? (next.seq as number) - 1 : this.#lastSeq;
          lane.setCursor.run([cursor]);
        }
        this.#commit.run(NO_PARAMS);
      } catch (err) {
        this.#rollbackQuietly();
        throw this.#writeError(err, 'dead-letter');
      }
    });
    if (seq > lane.cursor) {
      lane.backlogEvents -= 1;
      lane.backlogBytes -= size;
    }
    lane.cursor = cursor;
    this.#deadLetters += 1;
    lane.oldestTs = lane.backlogEvents === 0 ? null : undefined;
    this.#scheduleMaintenance();
  }

  listDeadLetters(limit: number): DeadLetter[] {
    this.#assertOpen();
    return this.#dlList.all([Math.max(0, Math.floor(limit))]).map((r) => ({
      ...toStored(r, r.lane === 'priority' ? 'priority' : 'bulk'),
      reason: r.reason as string,
      deadAt: r.dead_at as number,
    }));
  }

  stats(): LogStats {
    const open = !this.#closed;
    const lane = (l: LaneState): LaneStats =>
      open
        ? l.stats()
        : {
            backlogEvents: l.backlogEvents,
            backlogBytes: l.backlogBytes,
            oldestTs: l.oldestTs ?? null,
            cursor: l.cursor,
          };
    const bulk = lane(this.#bulk);
    const priority = lane(this.#priority);
    let oldestTs = bulk.oldestTs;
    if (priority.oldestTs !== null && (oldestTs === null || priority.oldestTs < oldestTs))
      oldestTs = priority.oldestTs;
    const now = Date.now();
    if (open && now - this.#diskStatAt >= DISK_STAT_EVERY_MS) {
      this.#diskBytes = logFilesBytes(this.#dir, DB_FILE);
      this.#diskStatAt = now;
    }
    return {
      backlogEvents: bulk.backlogEvents + priority.backlogEvents,
      backlogBytes: bulk.backlogBytes + priority.backlogBytes,
      oldestTs,
      cursor: bulk.cursor,
      lanes: { bulk, priority },
      forwardedEvents: this.#forwarded,
      droppedEvents: this.#dropped,
      diskBytes: this.#diskBytes,
      quotaBytes: this.#plan.quotaBytes,
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

  onDrop(listener: (d: DropReport) => void): () => void {
    const l = (d: DropReport): void => listener(d);
    this.#dropListeners.add(l);
    return () => {
      this.#dropListeners.delete(l);
    };
  }

  meta(key: string): string | null {
    this.#assertOpen();
    const row = this.#getMeta.get([key]);
    return row == null || row.v == null ? null : String(row.v);
  }

  setMeta(key: string, value: string): void {
    this.#assertOpen();
    if (typeof key !== 'string' || typeof value !== 'string')
      throw new TypeError('setMeta: key and value must be strings');
    try {
      this.#setMeta.run([key, value]);
    } catch (err) {
      throw this.#writeError(err, 'write setting');
    }
  }

  // ---- trimming and space ----

  /** Inside a transaction: delete up to TRIM_CHUNK forwarded rows of `lane`; returns its new trimmed-up-to mark. */
  #trimChunk(lane: LaneState, cursor: number): number {
    let from = lane.trimmedUpTo;
    if (from >= cursor) return from;
    const chunk = this.#lowSpace ? LOW_SPACE_TRIM_CHUNK : TRIM_CHUNK;
    if (from + chunk < cursor) {
      // The lane's seqs may have long gaps (the other lane's events): jump to its next row.
      const next = lane.firstAfter.get([from]);
      if (next === undefined || (next.seq as number) > cursor) return cursor;
      from = (next.seq as number) - 1;
    }
    const to = Math.min(cursor, from + chunk);
    lane.trim.run([from, to]);
    return to;
  }

  /** Inside a transaction: return free pages when most of the file is free, a bounded number at a time. Returns whether more remain. */
  #maybeVacuum(): boolean {
    const free = Number(Object.values(this.#freelist.get(NO_PARAMS) ?? {})[0] ?? 0);
    if (free < VACUUM_MIN_FREE_PAGES) return false;
    const pages = Number(Object.values(this.#pageCount.get(NO_PARAMS) ?? {})[0] ?? 0);
    if ((pages - free) * VACUUM_USED_RATIO > pages) return false;
    // Vacuumed pages are written to the WAL: stay within its limit under a small quota.
    const maxPages = Math.max(
      16,
      Math.min(VACUUM_MAX_PAGES, Math.floor(this.#plan.walLimitBytes / this.#pageSize / 2)),
    );
    const n = Math.min(free, this.#lowSpace ? LOW_SPACE_VACUUM_PAGES : maxPages);
    this.#db.exec(`PRAGMA incremental_vacuum(${n})`);
    this.#vacuumed = true;
    return free - n >= VACUUM_MIN_FREE_PAGES;
  }

  #scheduleMaintenance(): void {
    if (this.#maintHandle === null && !this.#closed)
      this.#maintHandle = setImmediate(this.#maintain);
  }

  /**
   * One short transaction of trimming and/or vacuuming, then at most one drop
   * step (quota, else retention); reschedules itself while work remains.
   */
  readonly #maintain = (): void => {
    this.#maintHandle = null;
    if (this.#closed) return;
    let more = false;
    try {
      this.#relaxed(() =>
        this.#withReserve('delete forwarded events', () => {
          const trimmed = this.#lanes.map((l) => l.trimmedUpTo);
          try {
            this.#begin.run(NO_PARAMS);
            this.#lanes.forEach((l, i) => {
              trimmed[i] = this.#trimChunk(l, l.cursor);
            });
            more = this.#maybeVacuum();
            this.#commit.run(NO_PARAMS);
          } catch (err) {
            this.#rollbackQuietly();
            throw this.#writeError(err, 'delete forwarded events');
          }
          this.#lanes.forEach((l, i) => {
            l.trimmedUpTo = trimmed[i];
          });
          if (this.#lowSpace) this.#checkpoint();
        }),
      );
      if (this.#plan.quotaBytes !== null) this.#measureUsed();
    } catch (err) {
      // Not fatal: the rows stay until the next ack or open retries.
      process.emitWarning(`kedge log: ${(err as Error)?.message ?? err}`);
      return;
    }
    more = this.#dropWork() || more;
    if (more || this.#lanes.some((l) => l.trimmedUpTo < l.cursor)) {
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

  /** At most one bounded drop step (quota first, then retention). Returns whether more drop work remains. */
  #dropWork(): boolean {
    try {
      if (this.#quotaDropWanted) {
        const excess = this.#usedEst - this.#plan.lowBytes;
        let n = 0;
        if (excess > 0) {
          for (const lane of this.#lanes) {
            n = this.#dropStep(lane, 'quota', { wantBytes: excess });
            if (n > 0) break;
          }
        }
        // Done when below the low watermark, or when nothing may be dropped (all in flight): the next commit retries.
        if (n === 0 || this.#usedEst <= this.#plan.lowBytes) this.#quotaDropWanted = false;
        return this.#quotaDropWanted || this.#retentionWanted;
      }
      if (this.#retentionWanted) {
        this.#retentionWanted = this.#retentionStep();
        return this.#retentionWanted;
      }
    } catch (err) {
      this.#quotaDropWanted = false;
      this.#retentionWanted = false;
      process.emitWarning(`kedge log: ${(err as Error)?.message ?? err}`);
    }
    return false;
  }

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
      return new LogWriteError(
        `cannot ${what}: disk full (${this.#file}: ${msg})`,
        'KEDGE_DISK_FULL',
        { cause: err },
      );
    }
    return new LogWriteError(`cannot ${what}: ${msg} (${this.#file})`, 'KEDGE_LOG_WRITE', {
      cause: err,
    });
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
      if (this.#retentionTimer !== null) clearInterval(this.#retentionTimer);
      this.#closed = true;
      this.#listeners.clear();
      this.#dropListeners.clear();
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
