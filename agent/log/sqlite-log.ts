/**
 * The durable event log on SQLite: `<dir>/kedge.db`, WAL, one connection held
 * exclusively by this process. This file is the EventLog the rest of kedge
 * sees, and its group commit; the parts live beside it:
 *   setup.ts        options, pragmas, integrity check, open errors
 *   events.ts       checking events, and their row encoding
 *   lanes.ts        the two lanes: tables, cursors, backlog counters, reads
 *   space.ts        quota accounting and admission, the reserve, low-space mode
 *   maintenance.ts  trim, vacuum, checkpoints, quota and retention drops
 *   tx.ts           transactions on the one connection, write errors
 *   listeners.ts    onAppend / onDrop subscribers
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
 * (see maintenance.ts).
 *
 * All SQLite calls are synchronous and each transaction begins and ends
 * within one call, so transactions never interleave.
 */
import { eventBytes } from '../event-size.ts';
import fs from 'node:fs';
import path from 'node:path';
import type { Row, SqlDb, SqlStmt } from './driver.ts';
import { headersJson, toStored, validate } from './events.ts';
import { DeadLetterStore } from './dead-letter-store.ts';
import { Destinations } from './destinations.ts';
import { type LaneState, Lanes } from './lanes.ts';
import { Listeners } from './listeners.ts';
import { acquireDirLock } from './lockfile.ts';
import type { DirLock } from './lockfile.ts';
import { Maintenance } from './maintenance.ts';
import { openDriver } from './open-driver.ts';
import { logFilesBytes } from './quota.ts';
import type { QuotaPlan } from './quota.ts';
import { pragmaInt } from './schema.ts';
import { checkOptions, configure, refuseEmptiedLog, toOpenError } from './setup.ts';
import { Space } from './space.ts';
import { NO_PARAMS, Tx } from './tx.ts';
import type {
  AppendResult,
  DeadLetter,
  DeadLetterAdmin,
  DestinationLog,
  DropReport,
  EventInput,
  EventLog,
  Lane,
  LogOptions,
  LogStats,
  StoredEvent,
} from './types.ts';
import { LogOpenError, LogWriteError } from './types.ts';

export const DB_FILE = 'kedge.db';

/** stats().diskBytes stats the files at most this often. */
const DISK_STAT_EVERY_MS = 500;

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

class SqliteLog implements EventLog {
  readonly #db: SqlDb;
  readonly #lock: DirLock;
  readonly #dir: string;
  readonly #beforeCommit: LogOptions['beforeCommit'];
  readonly #stmts: SqlStmt[] = [];
  readonly #now: () => number;
  readonly #tx: Tx;
  readonly #lanes: Lanes;
  readonly #space: Space;
  readonly #maint: Maintenance;

  // Prepared once, reused, finalized on close.
  readonly #setMeta: SqlStmt;
  readonly #getMeta: SqlStmt;
  readonly #dlList: SqlStmt;

  /** One reusable parameter array for the INSERT: no per-row allocation. */
  readonly #row: unknown[] = [0, '', null, null, null, 0, 0];

  #pending: PendingAppend[] = [];
  #flushHandle: NodeJS.Immediate | null = null;
  readonly #listeners = new Listeners<void>('onAppend');
  readonly #dropListeners = new Listeners<DropReport>('onDrop');
  #closed = false;
  #closing: Promise<void> | null = null;
  /** Set once destinations() switched to several destinations. */
  #dests: Destinations | null = null;

  #nextSeq: number;
  #lastSeq: number;
  #deadLetters: number;
  #commits = 0;
  /** Ingest time of the last commit (see #flush). */
  #lastTs = 0;
  #forwarded = 0;
  #diskBytes = 0;
  #diskStatAt = 0;

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
    this.#beforeCommit = opts.beforeCommit;
    this.#now = opts.now ?? Date.now;
    const p = (sql: string): SqlStmt => {
      const st = db.prepare(sql);
      this.#stmts.push(st);
      return st;
    };
    try {
      this.#tx = new Tx(db, p, { dir, file, syncFull: opts.sync === 'full' });
      this.#setMeta = p(
        'INSERT INTO meta(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v',
      );
      this.#getMeta = p('SELECT v FROM meta WHERE k = ?');
      this.#dlList = p(
        'SELECT seq, topic, key, value, headers, ts, reason, dead_at, lane FROM dead_letters ORDER BY seq DESC LIMIT ?',
      );
      this.#lanes = new Lanes(p);
      this.#space = new Space({
        dir,
        plan,
        pageSize: pragmaInt(db, 'page_size'),
        whenFull: opts.whenFull ?? 'drop-oldest',
        tx: this.#tx,
        prepare: p,
      });
      this.#maint = new Maintenance({
        db,
        tx: this.#tx,
        space: this.#space,
        lanes: this.#lanes,
        now: this.#now,
        retentionMs: opts.retentionMs ?? null,
        beforeDrop: opts.beforeDrop,
        onDrops: (reports) => {
          for (const d of reports) this.#dropListeners.emit(d);
        },
      });

      // Initial state: a handful of indexed/aggregate queries, once.
      const one = (sql: string, params: unknown[] = NO_PARAMS): Row => {
        const st = db.prepare(sql);
        try {
          return st.get(params) ?? {};
        } finally {
          st.finalize();
        }
      };
      const hi = this.#lanes.load(one, file);
      const dl = one('SELECT max(seq) AS hi, count(*) AS n FROM dead_letters');
      const metaLast = one(`SELECT v FROM meta WHERE k = 'last_seq'`);
      this.#lastSeq = Math.max(
        hi,
        Number(dl.hi ?? 0),
        metaLast.v == null ? 0 : Number(metaLast.v) || 0,
      );
      this.#nextSeq = this.#lastSeq + 1;
      this.#deadLetters = Number(dl.n ?? 0);
      const last = one(
        'SELECT max(t) AS t FROM (SELECT (SELECT ts FROM events ORDER BY seq DESC LIMIT 1) AS t UNION ALL SELECT (SELECT ts FROM events_priority ORDER BY seq DESC LIMIT 1))',
      );
      this.#lastTs = Number(last.t ?? 0);
      this.#space.measureUsed();
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
    this.#space.restoreReserve();
    this.#maint.start();
  }

  // ---- append (group commit) ----

  append(events: EventInput[]): Promise<AppendResult> {
    if (this.#closed || this.#closing)
      return Promise.reject(new LogWriteError('the log is closed', 'KEDGE_LOG_CLOSED'));
    const problem = validate(events);
    if (problem) return Promise.reject(new LogWriteError(problem, 'KEDGE_INVALID_EVENT'));
    const est = this.#space.estimate(events);
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
    const refused = this.#space.lowSpaceRefusal(batch);
    if (refused) {
      for (const req of batch) req.reject(refused);
      return;
    }
    if (this.#space.plan.quotaBytes !== null) {
      try {
        batch = this.#space.admit(batch, this.#maint);
      } catch (err) {
        // A drop that could not make room (its DELETE failed: full disk, I/O error)
        // is a full log to the callers. This runs in a setImmediate callback: a throw
        // here would be an uncaught exception, and these promises would never settle.
        const cause = this.#tx.writeError(err, 'make room under the disk quota');
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
    // Never before the last commit's time: a clock stepped back (NTP) must not put events
    // before ones already stored; routes' windows rely on ingest time never going back.
    const ts = Math.max(this.#now(), this.#lastTs);
    const row = this.#row;
    const bulkInsert = this.#lanes.bulk.insert;
    const prioInsert = this.#lanes.priority.insert;
    row[5] = ts;
    try {
      this.#tx.begin();
      for (let b = 0; b < batch.length; b++) {
        const req = batch[b];
        const evs = req.events;
        est += req.est;
        req.firstSeq = seq;
        for (let i = 0; i < evs.length; i++) {
          const ev = evs[i];
          const key = ev.key ?? null;
          const size = eventBytes(ev);
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
      this.#tx.commit();
    } catch (err) {
      this.#tx.rollbackQuietly();
      row[2] = row[3] = null; // do not pin the failed commit's buffers
      // #nextSeq was never advanced: the failed commit's seqs are handed out again.
      const e = this.#tx.writeError(err, 'append');
      for (const req of batch) req.reject(e);
      return;
    }
    row[2] = row[3] = null;

    this.#nextSeq = seq;
    this.#lastSeq = seq - 1;
    this.#lastTs = ts;
    this.#commits++;
    if (bulkN > 0) this.#lanes.bulk.grow(bulkN, bulkBytes, ts);
    if (prioN > 0) this.#lanes.priority.grow(prioN, prioBytes, ts);
    try {
      // After a commit: account for it, and start background drops / re-measure when near the limit.
      if (this.#space.afterCommit(est)) this.#maint.requestQuotaDrop();
      this.#maint.afterAppend(ts);
    } catch (err) {
      // Committed is committed: a failed re-measure must not keep the callers from their answer.
      process.emitWarning(`kedge log: ${(err as Error)?.message ?? err}`);
    }

    for (const req of batch) req.resolve({ firstSeq: req.firstSeq, lastSeq: req.lastSeq });
    this.#listeners.emit();
  };

  // ---- read / ack / dead letters ----

  readBatch(afterSeq: number, maxCount: number, maxBytes: number, laneName?: Lane): StoredEvent[] {
    this.#assertOpen();
    return this.#lanes.get(laneName).readBatch(afterSeq, maxCount, maxBytes);
  }

  ack(seq: number, laneName?: Lane): void {
    this.#assertOpen();
    const lane = this.#lanes.get(laneName);
    if (!Number.isSafeInteger(seq) || seq < 0)
      throw new RangeError(`ack: seq must be a non-negative integer, not ${seq}`);
    if (seq > this.#lastSeq)
      throw new RangeError(`ack: seq ${seq} is beyond the last appended seq ${this.#lastSeq}`);
    if (seq <= lane.cursor) return; // already acknowledged (a resend)
    this.#tx.relaxed(() =>
      this.#space.withReserve('acknowledge', () => {
        this.#forwarded += lane.ack(this.#tx, seq, (l, cursor) => this.#maint.trimChunk(l, cursor));
      }),
    );
    this.#maint.schedule();
  }

  deadLetter(event: StoredEvent, reason: string): void {
    this.#assertOpen();
    const seq = event?.seq;
    if (!Number.isSafeInteger(seq)) throw new TypeError('deadLetter: event.seq must be an integer');
    const lane = this.#lanes.get(event.lane);
    const sizeRow = lane.eventSize.get([seq]);
    if (!sizeRow)
      throw new RangeError(
        `deadLetter: event ${seq} is not in the ${lane.name} lane of the log (already forwarded or dead-lettered)`,
      );
    const size = Number(sizeRow.size);
    this.#tx.relaxed(() => lane.deadLetter(this.#tx, seq, size, String(reason), this.#lastSeq));
    this.#deadLetters += 1;
    this.#maint.schedule();
  }

  listDeadLetters(limit: number): DeadLetter[] {
    this.#assertOpen();
    return this.#dlList.all([Math.max(0, Math.floor(limit))]).map((r) => ({
      ...toStored(r, r.lane === 'priority' ? 'priority' : 'bulk'),
      reason: r.reason as string,
      deadAt: r.dead_at as number,
    }));
  }

  deadLetterAdmin(agentId: string, destinations: readonly string[] | null = null): DeadLetterAdmin {
    this.#assertOpen();
    const store = new DeadLetterStore({
      db: this.#db,
      tx: this.#tx,
      lanes: this.#lanes,
      destinations: () => this.#dests?.names ?? destinations,
      nextSeq: () => this.#nextSeq,
      // As append stamps: never before the last commit's time (see append).
      stamp: () => Math.max(this.#now(), this.#lastTs),
      used: (last, ts) => {
        this.#lastSeq = last;
        this.#nextSeq = last + 1;
        this.#lastTs = ts;
        this.#listeners.emit(); // wakes the forwarder: replayed rows go out while the rest follow
      },
      assertOpen: () => this.#assertOpen(),
    });
    // The dead-letter counters follow the tables, whatever part of a replay committed.
    const recount = () => {
      const st = this.#db.prepare('SELECT count(*) AS n FROM dead_letters');
      try {
        this.#deadLetters = Number(st.get([])?.n ?? 0);
      } finally {
        st.finalize();
      }
      const m = this.#dests?.deadLetters;
      if (!m) return;
      const per = this.#db.prepare(
        'SELECT dest, count(*) AS n FROM dest_dead_letters GROUP BY dest',
      );
      try {
        for (const k of m.keys()) m.set(k, 0);
        for (const r of per.all([]))
          if (m.has(r.dest as string)) m.set(r.dest as string, Number(r.n));
      } finally {
        per.finalize();
      }
    };
    return {
      summary: (f) => {
        this.#assertOpen();
        return store.summary(f);
      },
      list: (f, limit) => {
        this.#assertOpen();
        return store.list(f, limit, agentId);
      },
      show: (seq) => {
        this.#assertOpen();
        return store.show(seq, agentId);
      },
      replay: async (f) => {
        this.#assertOpen();
        try {
          return await store.replay(f, agentId);
        } finally {
          // Closed while the replay yielded: the next open counts the tables anyway.
          if (!this.#closed) recount();
        }
      },
      purge: async (f) => {
        this.#assertOpen();
        try {
          return await store.purge(f);
        } finally {
          if (!this.#closed) {
            recount();
            this.#maint.schedule();
          }
        }
      },
    };
  }

  stats(): LogStats {
    const open = !this.#closed;
    const bulk = this.#lanes.bulk.stats(open);
    const priority = this.#lanes.priority.stats(open);
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
      droppedEvents: this.#maint.dropped,
      diskBytes: this.#diskBytes,
      quotaBytes: this.#space.plan.quotaBytes,
      lastSeq: this.#lastSeq,
      deadLetters: this.#deadLetters,
      commits: this.#commits,
    };
  }

  destinations(names: readonly string[]): DestinationLog[] {
    this.#assertOpen();
    if (this.#dests) throw new Error('destinations() was called already');
    const one = (sql: string, params: unknown[] = NO_PARAMS): Row => {
      const st = this.#db.prepare(sql);
      try {
        return st.get(params) ?? {};
      } finally {
        st.finalize();
      }
    };
    const p = (sql: string): SqlStmt => {
      const st = this.#db.prepare(sql);
      this.#stmts.push(st);
      return st;
    };
    const dests = new Destinations(names, this.#lanes, p, one);
    this.#dests = dests;
    const trim = (l: LaneState, cursor: number) => this.#maint.trimChunk(l, cursor);
    return names.map((name): DestinationLog => {
      const cursor = (lane: Lane) => dests.cursor(name, lane);
      return {
        name,
        readBatch: (after, maxCount, maxBytes, lane) => {
          this.#assertOpen();
          const out = this.#lanes.get(lane).readBatch(after, maxCount, maxBytes, false);
          if (out.length > 0) {
            const c = cursor(lane);
            c.frontier = Math.max(c.frontier, out[out.length - 1].seq);
          }
          return out;
        },
        ack: (seq, lane, checkpoint) => {
          this.#assertOpen();
          if (!Number.isSafeInteger(seq) || seq < 0)
            throw new RangeError(`ack: seq must be a non-negative integer, not ${seq}`);
          if (seq > this.#lastSeq)
            throw new RangeError(
              `ack: seq ${seq} is beyond the last appended seq ${this.#lastSeq}`,
            );
          if (checkpoint === null) {
            dests.ack(this.#tx, name, lane, seq, null, trim);
            return;
          }
          this.#tx.relaxed(() =>
            this.#space.withReserve('acknowledge', () => {
              this.#forwarded += dests.ack(this.#tx, name, lane, seq, checkpoint, trim);
            }),
          );
          this.#maint.schedule();
        },
        deadLetter: (record, id, reason) => {
          this.#assertOpen();
          this.#tx.relaxed(() => dests.deadLetter(this.#tx, name, record, id, String(reason)));
        },
        saved: (lane) => {
          const c = cursor(lane);
          return { seq: c.saved, state: c.state, keep: c.keep };
        },
        lanes: () => {
          const open = !this.#closed;
          const one = (lane: Lane) => {
            const c = cursor(lane);
            return {
              ...c.stats(open),
              saved: c.saved,
              keep: c.keep,
              dropped: c.dropped,
              consumed: c.consumed,
              unread: c.unread,
            };
          };
          return { bulk: one('bulk'), priority: one('priority') };
        },
        deadLetters: () => dests.deadLetters.get(name) ?? 0,
      };
    });
  }

  onAppend(listener: () => void): () => void {
    return this.#listeners.add(listener);
  }

  onDrop(listener: (d: DropReport) => void): () => void {
    return this.#dropListeners.add(listener);
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
      throw this.#tx.writeError(err, 'write setting');
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw new LogWriteError('the log is closed', 'KEDGE_LOG_CLOSED');
  }

  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closing = (async () => {
      // Accepted appends still queued get their commit before we close.
      if (this.#flushHandle !== null) {
        clearImmediate(this.#flushHandle);
        this.#flush();
      }
      this.#maint.stop();
      this.#closed = true;
      this.#listeners.clear();
      this.#dropListeners.clear();
      try {
        for (const st of this.#stmts) st.finalize();
        // Best effort: the WAL is replayed at next open; not worth failing close for.
        this.#tx.checkpoint('TRUNCATE');
        this.#db.close();
      } finally {
        this.#lock.release();
      }
    })();
    return this.#closing;
  }
}
