/**
 * Disk space: quota accounting and admission, the reserve, and low-space mode.
 *
 * Quota (the split is planned in quota.ts): appends are admitted against an
 * estimate of the live pages, re-measured with two header pragmas when it
 * gets near the limit. Over the limit, 'drop-oldest' has maintenance.ts drop
 * the oldest unforwarded events (bulk lane first) and 'reject-new' refuses
 * the append.
 *
 * Reserve and low-space mode (the reserve file is reserve.ts): a
 * space-freeing write that hits a full disk gives up the reserve and retries
 * in low-space mode, in which appends are refused unless the disk keeps the
 * reserve's size free, until the reserve could be re-created.
 */
import { eventBytes } from '../event-size.ts';
import fs from 'node:fs';
import type { SqlStmt } from './driver.ts';
import { estimateRowBytes } from './quota.ts';
import type { QuotaPlan } from './quota.ts';
import { SpaceReserve } from './reserve.ts';
import { NO_PARAMS } from './tx.ts';
import type { Prepare, Tx } from './tx.ts';
import type { EventInput } from './types.ts';
import { LogWriteError } from './types.ts';

/** In low-space mode, appends check at most this often whether the reserve can be re-created. */
const LOW_SPACE_RECHECK_MS = 1000;
/** In low-space mode, an append must leave the reserve's size plus this free on the disk. */
const LOW_SPACE_MARGIN = 1 << 20;
/** The used-pages estimate is re-measured at least this often while appending. */
const MEASURE_EVERY_MS = 1000;

/** What admission needs of a queued append. */
export interface Queued {
  events: EventInput[];
  /** Expected bytes in database pages (quota admission); 0 without a quota. */
  est: number;
  reject: (e: Error) => void;
}

/** Makes room under the quota by dropping the oldest unforwarded events (maintenance.ts). */
export interface QuotaDropper {
  /** Drop at least `bytes` of the oldest unforwarded events; may drop less when the rest is in flight. */
  dropForQuota(bytes: number): void;
}

export interface SpaceOptions {
  dir: string;
  plan: QuotaPlan;
  pageSize: number;
  whenFull: 'drop-oldest' | 'reject-new';
  tx: Tx;
  prepare: Prepare;
}

export class Space {
  readonly plan: QuotaPlan;
  readonly pageSize: number;
  readonly #dir: string;
  readonly #whenFull: 'drop-oldest' | 'reject-new';
  readonly #tx: Tx;
  readonly #reserve: SpaceReserve;
  readonly #freelist: SqlStmt;
  readonly #pageCount: SqlStmt;

  /** Live database bytes: measured exactly (measureUsed), plus estimates of what was appended since. */
  #usedEst = 0;
  #measuredAt = 0;
  /**
   * Low-space mode (entered when a space-freeing write hit a full disk): smaller
   * steps, each followed by a RESTART checkpoint so the WAL is rewritten from its
   * start (reusing the space it already has) instead of growing (maintenance.ts).
   * Appends are refused meanwhile (the freed reserve is for deleting forwarded
   * rows). Left once the reserve could be re-created.
   */
  #lowSpace = false;
  #lowSpaceCheckedAt = 0;

  constructor(opts: SpaceOptions) {
    this.plan = opts.plan;
    this.pageSize = opts.pageSize;
    this.#dir = opts.dir;
    this.#whenFull = opts.whenFull;
    this.#tx = opts.tx;
    this.#reserve = new SpaceReserve(opts.dir, opts.plan.reserveBytes);
    this.#freelist = opts.prepare('PRAGMA freelist_count');
    this.#pageCount = opts.prepare('PRAGMA page_count');
  }

  get lowSpace(): boolean {
    return this.#lowSpace;
  }

  /** Live database bytes (estimate; exact right after measureUsed). */
  get usedBytes(): number {
    return this.#usedEst;
  }

  /** Pages in the database file, and how many of them are free (two header reads). */
  pages(): { pages: number; free: number } {
    return {
      pages: Number(Object.values(this.#pageCount.get(NO_PARAMS) ?? {})[0] ?? 0),
      free: Number(Object.values(this.#freelist.get(NO_PARAMS) ?? {})[0] ?? 0),
    };
  }

  /** Live pages in bytes, exactly (two header reads, no file system call). */
  measureUsed(): void {
    const { pages, free } = this.pages();
    this.#usedEst = (pages - free) * this.pageSize;
    this.#measuredAt = Date.now();
  }

  /** Expected page bytes of a (validated) append, for quota admission; 0 without a quota. */
  estimate(events: EventInput[]): number {
    if (this.plan.quotaBytes === null) return 0;
    let n = 0;
    for (const ev of events) {
      let hl = 0;
      if (ev.headers != null) for (const k in ev.headers) hl += k.length + ev.headers[k].length + 6;
      n += estimateRowBytes(eventBytes(ev), ev.topic.length, hl);
    }
    return n;
  }

  /**
   * Which of the queued appends fit under the quota. drop-oldest first makes
   * room by dropping (synchronously: the commit must not push the log over);
   * whatever still does not fit (reject-new, or nothing left that may be
   * dropped) is refused with KEDGE_QUOTA_FULL and stores nothing.
   */
  admit<T extends Queued>(batch: T[], dropper: QuotaDropper): T[] {
    let incoming = 0;
    for (const req of batch) incoming += req.est;
    const limit = this.plan.dataLimitBytes;
    if (this.#usedEst + incoming <= limit) return batch;
    this.measureUsed();
    if (this.#usedEst + incoming > limit && this.#whenFull === 'drop-oldest') {
      // Aim below the high watermark (not just the limit), so the next commits do not each need a synchronous drop.
      dropper.dropForQuota(this.#usedEst + incoming - this.plan.highBytes);
    }
    if (this.#usedEst + incoming <= limit) return batch;
    // FIFO: from the first append that does not fit, every later one is refused too,
    // even a smaller one that would fit. A publisher resends what was refused, and it
    // must not land behind something that came after it (order per key).
    const fits: T[] = [];
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
   * After a commit of `est` bytes: account for it, and re-measure when near the
   * limit. True when the log is over the high watermark under drop-oldest: then
   * oldest events are to be dropped in the background.
   */
  afterCommit(est: number): boolean {
    if (this.plan.quotaBytes === null) return false;
    this.#usedEst += est;
    if (this.#usedEst > this.plan.highBytes || Date.now() - this.#measuredAt >= MEASURE_EVERY_MS)
      this.measureUsed();
    return this.overHighWatermark();
  }

  /** drop-oldest under a quota, and live pages above its high watermark. */
  overHighWatermark(): boolean {
    return (
      this.plan.quotaBytes !== null &&
      this.#whenFull === 'drop-oldest' &&
      this.#usedEst > this.plan.highBytes
    );
  }

  /**
   * The reserve was given up so forwarded rows can be deleted: that space is for
   * the drain, not for new events (they would take it and wedge the next ack).
   * New events may still use what the disk has beyond the reserve's size, and the
   * pages trimming frees inside the file: with Kafka up, ingest goes on at the drain rate.
   * Returns the error to refuse `batch` with, or null to go on.
   */
  lowSpaceRefusal(batch: readonly Queued[]): LogWriteError | null {
    if (!this.#lowSpace || this.#tryLeaveLowSpace() || this.#roomBesideReserve(batch)) return null;
    return new LogWriteError(
      `cannot append: disk full (${this.#dir}); kedge gave up its space reserve (${this.#reserve.file}) to delete ` +
        'forwarded events, and new events may not take that space; they are accepted again as forwarding frees room (free disk space if Kafka is unreachable)',
      'KEDGE_DISK_FULL',
    );
  }

  /**
   * Run a space-freeing write (ack, trim). If the disk is full: give up the
   * reserve, checkpoint so the WAL restarts from its beginning, switch to small
   * steps, and try once more, so the log drains rather than wedges.
   */
  withReserve(what: string, fn: () => void): void {
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
      // Not enough room even for that checkpoint: the next step retries.
      this.#tx.checkpoint('RESTART');
      fn();
    }
  }

  /** Re-create the reserve if it is missing (never throws); leave low-space mode once it is back. */
  restoreReserve(): void {
    if (!this.#reserve.held || this.#lowSpace) {
      if (this.#reserve.ensure()) this.#lowSpace = false;
    }
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
  #roomBesideReserve(batch: readonly Queued[]): boolean {
    let bytes = 0;
    for (const req of batch) for (const ev of req.events) bytes += eventBytes(ev) + 64;
    try {
      const s = fs.statfsSync(this.#dir);
      return s.bavail * s.bsize >= this.#reserve.bytes + 2 * bytes + LOW_SPACE_MARGIN;
    } catch {
      return false;
    }
  }

  #quotaFullError(): LogWriteError {
    const q = this.plan.quotaBytes!;
    const why =
      this.#whenFull === 'reject-new'
        ? 'KEDGE_WHEN_FULL=reject-new keeps stored events until they are forwarded'
        : 'the events that could be dropped are being forwarded right now';
    return new LogWriteError(
      `the log is at its disk quota (KEDGE_DISK_QUOTA=${q} bytes); ${why}, so new events are refused until forwarding frees space; retry later`,
      'KEDGE_QUOTA_FULL',
    );
  }
}
