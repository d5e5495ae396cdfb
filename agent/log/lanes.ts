/**
 * The two lanes. Bulk events live in `events`, priority events in
 * `events_priority` (same columns, one seq counter). Each lane has its own
 * cursor row, trim mark and backlog counters, kept here; one group commit may
 * write both tables.
 */
import type { Row, SqlStmt } from './driver.ts';
import { DEST_KAFKA, DEST_KAFKA_PRIORITY } from './schema.ts';
import type { Prepare, Tx } from './tx.ts';
import type { Lane, LaneStats, StoredEvent } from './types.ts';
import { LogOpenError } from './types.ts';

/** First page size readBatch asks for before it knows the typical event size. */
const READ_FIRST_PAGE = 64;
/** Most rows one readBatch query fetches. */
const READ_MAX_PAGE = 10_000;
/** The keys or values of a page that has none (all keyless, say). */
const EMPTY = Buffer.alloc(0);

/** Runs one query once and returns its first row ({} when none). */
export type QueryOnce = (sql: string, params?: unknown[]) => Row;

/** A cursor move written in a transaction, applied to the counters once it committed. */
export interface LaneAdvance {
  seq: number;
  /** Events and bytes that left the backlog. */
  n: number;
  bytes: number;
  /** The new trimmed-up-to mark. */
  trimmed: number;
}

/** One lane: its table, cursor row, statements and counters. */
export class LaneState {
  readonly name: Lane;
  readonly table: string;
  readonly dest: string;
  readonly insert: SqlStmt;
  readonly read: SqlStmt;
  readonly readBytes: SqlStmt;
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
  /**
   * Where a drop may start and the last seq it may reach. One destination: above the cursor
   * and what is in flight. Several: set by Destinations (destinations.ts).
   */
  dropRange: () => { from: number; cap: number } = () => ({
    from: Math.max(this.cursor, this.inflight),
    cap: Number.POSITIVE_INFINITY,
  });
  /** Inside a drop transaction, before it deletes (from, to]: set by Destinations to count per destination. */
  onDropRange: ((from: number, to: number) => void) | null = null;

  constructor(name: Lane, table: string, dest: string, p: Prepare) {
    this.name = name;
    this.table = table;
    this.dest = dest;
    const t = table;
    this.insert = p(
      `INSERT INTO ${t}(seq, topic, key, value, headers, ts, size) VALUES (?, ?, ?, ?, ?, ?, ?)`,
    );
    // A page of a batch is read in two queries: the rows without their keys and values,
    // then all those keys and values as two concatenated BLOBs (octet_length: bytes, also
    // for a value stored as text). One buffer per page instead of one per key and one per
    // value: those allocations were most of the main thread's garbage while draining.
    this.read = p(
      `SELECT seq, topic, octet_length(key) AS klen, octet_length(value) AS vlen, headers, ts, size FROM ${t} WHERE seq > ? ORDER BY seq LIMIT ?`,
    );
    this.readBytes = p(
      `SELECT CAST(group_concat(value, '' ORDER BY seq) AS BLOB) AS v, CAST(group_concat(key, '' ORDER BY seq) AS BLOB) AS k FROM ${t} WHERE seq > ? AND seq <= ?`,
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

  /** Initial state at open: cursor, trim mark and backlog. Returns the highest seq this lane has seen. */
  load(one: QueryOnce, file: string): number {
    const cursorRow = one(`SELECT seq FROM cursors WHERE dest = '${this.dest}'`);
    if (cursorRow.seq === undefined)
      throw new LogOpenError(`${file}: cursor row ${this.dest} missing`, 'KEDGE_LOG_DAMAGED');
    this.cursor = Number(cursorRow.seq);
    const ev = one(`SELECT max(seq) AS hi, min(seq) AS lo FROM ${this.table}`);
    this.trimmedUpTo = ev.lo == null ? this.cursor : Math.min(Number(ev.lo) - 1, this.cursor);
    const backlog = one(
      `SELECT count(*) AS n, total(size) AS bytes FROM ${this.table} WHERE seq > ?`,
      [this.cursor],
    );
    this.backlogEvents = Number(backlog.n ?? 0);
    this.backlogBytes = Number(backlog.bytes ?? 0);
    if (this.backlogEvents === 0) this.oldestTs = null;
    return Math.max(Number(ev.hi ?? 0), this.cursor);
  }

  /** After a commit that added `n` events of `bytes` at `ts`. */
  grow(n: number, bytes: number, ts: number): void {
    if (this.backlogEvents === 0) this.oldestTs = ts;
    this.backlogEvents += n;
    this.backlogBytes += bytes;
    this.onGrow?.(n, bytes, ts);
  }

  /** Set by Destinations: each destination's backlog grows with the lane's. */
  onGrow: ((n: number, bytes: number, ts: number) => void) | null = null;

  /** After a commit that took `n` events of `bytes` out of the backlog (ack, drop, dead letter). */
  shrink(n: number, bytes: number): void {
    this.backlogEvents -= n;
    this.backlogBytes -= bytes;
    this.oldestTs = this.backlogEvents === 0 ? null : undefined;
  }

  /**
   * Kafka acknowledged up to `seq`: one transaction moves the cursor and
   * deletes a first chunk of forwarded rows (`trim`, see maintenance.ts); the
   * counters follow once it committed. Returns how many events were forwarded.
   */
  ack(tx: Tx, seq: number, trim: (lane: LaneState, cursor: number) => number): number {
    let a: LaneAdvance;
    try {
      tx.begin();
      a = this.advanceInTx(seq, trim);
      tx.commit();
    } catch (err) {
      tx.rollbackQuietly();
      throw tx.writeError(err, 'acknowledge');
    }
    this.applyAdvance(a);
    return a.n;
  }

  /**
   * Inside the caller's transaction: move the cursor row to `seq` and delete a first chunk of
   * forwarded rows. The counters follow with applyAdvance once the transaction committed.
   */
  advanceInTx(seq: number, trim: (lane: LaneState, cursor: number) => number): LaneAdvance {
    const agg = this.rangeStats.get([this.cursor, seq])!;
    this.setCursor.run([seq]);
    return { seq, n: Number(agg.n), bytes: Number(agg.bytes), trimmed: trim(this, seq) };
  }

  applyAdvance(a: LaneAdvance): void {
    this.cursor = a.seq;
    this.trimmedUpTo = a.trimmed;
    this.shrink(a.n, a.bytes);
  }

  /**
   * Move event `seq` (`size` bytes, in this lane) to dead_letters, and the
   * cursor past it if it is the lane's next event. `lastSeq`: the log's last
   * appended seq, where the cursor goes when nothing follows.
   */
  deadLetter(tx: Tx, seq: number, size: number, reason: string, lastSeq: number): void {
    let cursor = this.cursor;
    try {
      tx.begin();
      // Is it the lane's next event? (seqs of a lane have gaps: the other lane, drops.)
      const first = this.firstAfter.get([cursor]);
      const isNext = first !== undefined && (first.seq as number) === seq;
      this.dlInsert.run([reason, Date.now(), seq]);
      this.deleteOne.run([seq]);
      if (isNext) {
        // Past it and past any later seqs already gone (dead-lettered out of order).
        const next = this.firstAfter.get([seq]);
        cursor = next ? (next.seq as number) - 1 : lastSeq;
        this.setCursor.run([cursor]);
      }
      tx.commit();
    } catch (err) {
      tx.rollbackQuietly();
      throw tx.writeError(err, 'dead-letter');
    }
    // Still counted in the backlog only if it was after the cursor.
    if (seq > this.cursor) this.shrink(1, size);
    else this.shrink(0, 0);
    this.cursor = cursor;
  }

  /** `query`: may run the one indexed query for the oldest timestamp (false once the log is closed). */
  stats(query = true): LaneStats {
    if (this.oldestTs === undefined && query) {
      const first = this.firstAfter.get([this.cursor]);
      this.oldestTs = first ? (first.ts as number) : null;
    }
    return {
      backlogEvents: this.backlogEvents,
      backlogBytes: this.backlogBytes,
      oldestTs: this.oldestTs ?? null,
      cursor: this.cursor,
    };
  }

  /**
   * Events with seq > afterSeq in seq order, bounded by count and bytes (at least one event if
   * any). `track`: count them as in flight for drops (false: the caller keeps its own mark).
   */
  readBatch(afterSeq: number, maxCount: number, maxBytes: number, track = true): StoredEvent[] {
    const out: StoredEvent[] = [];
    maxCount = Math.floor(maxCount);
    if (!(maxCount >= 1)) return out;
    let after = afterSeq;
    let bytes = 0;
    // Page through with LIMIT so a batch never pulls more than about maxBytes
    // (plus one page) into memory, even though the driver API returns whole result sets.
    let want = Math.min(maxCount, READ_FIRST_PAGE);
    for (;;) {
      const rows = this.read.all([after, want]);
      let take = 0;
      let full = false;
      for (; take < rows.length; take++) {
        const size = rows[take].size as number;
        if (out.length + take > 0 && bytes + size > maxBytes) {
          full = true;
          break;
        }
        bytes += size;
        if (out.length + take + 1 >= maxCount) {
          take++;
          full = true;
          break;
        }
      }
      if (take > 0) after = this.#collect(rows, take, after, out);
      if (full || rows.length < want || bytes >= maxBytes)
        return track ? this.#handedOut(out) : out;
      const avg = bytes / out.length || 1;
      want = Math.min(
        maxCount - out.length,
        READ_MAX_PAGE,
        Math.max(16, Math.ceil((maxBytes - bytes) / avg) + 1),
      );
    }
  }

  /**
   * Appends the first `take` rows of a page to `out`, their keys and values views into
   * the page's two concatenated BLOBs (the rows are every row with seq in (after, last]).
   * Returns the last seq.
   */
  #collect(rows: Row[], take: number, after: number, out: StoredEvent[]): number {
    const last = rows[take - 1].seq as number;
    const bytes = this.readBytes.get([after, last]) ?? {};
    const values = (bytes.v as Buffer | null) ?? EMPTY;
    const keys = (bytes.k as Buffer | null) ?? EMPTY;
    let vAt = 0;
    let kAt = 0;
    for (let i = 0; i < take; i++) {
      const r = rows[i];
      const vlen = (r.vlen as number | null) ?? 0;
      const klen = r.klen as number | null;
      out.push({
        seq: r.seq as number,
        topic: r.topic as string,
        key: klen === null ? null : keys.subarray(kAt, (kAt += klen)),
        value: values.subarray(vAt, (vAt += vlen)),
        headers:
          r.headers == null ? null : (JSON.parse(r.headers as string) as Record<string, string>),
        ts: r.ts as number,
        lane: this.name,
      });
    }
    if (vAt !== values.byteLength || kAt !== keys.byteLength)
      throw new Error(
        `log read: the keys and values of seq ${after + 1}..${last} do not add up (${vAt}/${values.byteLength} value bytes, ${kAt}/${keys.byteLength} key bytes)`,
      );
    return last;
  }

  #handedOut(out: StoredEvent[]): StoredEvent[] {
    if (out.length > 0) this.inflight = Math.max(this.inflight, out[out.length - 1].seq);
    return out;
  }
}

/** Both lanes, and which is which. */
export class Lanes {
  readonly bulk: LaneState;
  readonly priority: LaneState;
  /** Drop order for the quota: bulk first. */
  readonly all: readonly LaneState[];

  constructor(p: Prepare) {
    this.bulk = new LaneState('bulk', 'events', DEST_KAFKA, p);
    this.priority = new LaneState('priority', 'events_priority', DEST_KAFKA_PRIORITY, p);
    this.all = [this.bulk, this.priority];
  }

  get(name: Lane | undefined): LaneState {
    if (name === undefined || name === 'bulk') return this.bulk;
    if (name === 'priority') return this.priority;
    throw new TypeError(`lane must be 'bulk' or 'priority', not ${String(name)}`);
  }

  /** Initial state of both lanes at open. Returns the highest seq either has seen. */
  load(one: QueryOnce, file: string): number {
    let hi = 0;
    for (const lane of this.all) hi = Math.max(hi, lane.load(one, file));
    return hi;
  }

  /** Forwarded rows are still waiting to be deleted in some lane. */
  trimPending(): boolean {
    return this.all.some((l) => l.trimmedUpTo < l.cursor);
  }
}
