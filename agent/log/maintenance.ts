/**
 * Background upkeep of the log, one short transaction per event-loop turn:
 * deleting forwarded rows (trim), returning free pages to the file system
 * (vacuum, then a checkpoint so the file really shrinks), and dropping
 * unforwarded events for the quota (drop-oldest) or for retention.
 *
 * Trim: ack moves the cursor and deletes forwarded rows in bounded chunks
 * (TRIM_CHUNK rows per transaction, the rest on later ticks) and now and then
 * free pages go back to the file system with incremental_vacuum.
 *
 * Drops: retention deletes unforwarded events older than its age on a timer.
 * Drops never touch what the forwarder has in flight (seqs up to the last one
 * readBatch returned in that lane), run in bounded transactions, and are
 * counted per topic inside the deleting transaction, then reported to the
 * onDrop listeners.
 */
import type { Row, SqlDb } from './driver.ts';
import type { LaneState, Lanes } from './lanes.ts';
import { estimateRowBytes } from './quota.ts';
import type { QuotaDropper, Space } from './space.ts';
import type { Tx } from './tx.ts';
import type { DropReason, DropReport, LogOptions } from './types.ts';

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
 * Low-space mode (entered when a space-freeing write hit a full disk, see
 * space.ts): smaller steps, each followed by a RESTART checkpoint so the WAL is
 * rewritten from its start (reusing the space it already has) instead of growing.
 */
const LOW_SPACE_TRIM_CHUNK = 250;
const LOW_SPACE_VACUUM_PAGES = 128;

/** Most rows one drop transaction (quota or retention) deletes. */
const DROP_CHUNK = 2000;
/** Least a quota drop step frees (in pages' worth of events). */
const MIN_DROP_PAGES = 16;
/** Retention is checked this often (and at open, and on appends when the clock moved this much). */
const RETENTION_CHECK_MS = 5000;

export interface MaintenanceOptions {
  db: SqlDb;
  tx: Tx;
  space: Space;
  lanes: Lanes;
  /** Clock for retention. */
  now: () => number;
  retentionMs: number | null;
  beforeDrop: LogOptions['beforeDrop'];
  /** Told about every committed drop step, one report per topic. */
  onDrops: (reports: DropReport[]) => void;
}

export class Maintenance implements QuotaDropper {
  readonly #db: SqlDb;
  readonly #tx: Tx;
  readonly #space: Space;
  readonly #lanes: Lanes;
  readonly #now: () => number;
  readonly #retentionMs: number | null;
  readonly #beforeDrop: LogOptions['beforeDrop'];
  readonly #onDrops: (reports: DropReport[]) => void;

  #handle: NodeJS.Immediate | null = null;
  #retentionTimer: NodeJS.Timeout | null = null;
  #stopped = false;
  #dropped = 0;
  /** drop-oldest: live pages went above the high watermark; maintenance drops down to the low one. */
  #quotaDropWanted = false;
  #retentionWanted = false;
  #retentionCheckedAt = 0;
  /** Pages were vacuumed since the last checkpoint: the file only shrinks on disk when the WAL is checkpointed. */
  #vacuumed = false;

  constructor(opts: MaintenanceOptions) {
    this.#db = opts.db;
    this.#tx = opts.tx;
    this.#space = opts.space;
    this.#lanes = opts.lanes;
    this.#now = opts.now;
    this.#retentionMs = opts.retentionMs;
    this.#beforeDrop = opts.beforeDrop;
    this.#onDrops = opts.onDrops;
  }

  /** Events dropped (quota or retention) since open. */
  get dropped(): number {
    return this.#dropped;
  }

  /** At open: trim what a crash left, drop what is over the quota, start the retention timer. */
  start(): void {
    // Rows forwarded before a crash but not yet deleted: trim them soon.
    if (this.#lanes.trimPending()) this.schedule();
    // Over the quota already (e.g. it was lowered): drop in the background.
    if (this.#space.overHighWatermark()) this.requestQuotaDrop();
    if (this.#retentionMs !== null) {
      // Once right after open (listeners are attached by then: they subscribe as soon as openLog resolves), then on a timer.
      this.#retentionWanted = true;
      this.#retentionCheckedAt = this.#now();
      this.schedule();
      this.#retentionTimer = setInterval(() => {
        this.#retentionCheckedAt = this.#now();
        this.#retentionWanted = true;
        this.schedule();
      }, RETENTION_CHECK_MS);
      this.#retentionTimer.unref();
    }
  }

  /** At close: nothing runs after this. */
  stop(): void {
    if (this.#handle !== null) {
      clearImmediate(this.#handle);
      this.#handle = null;
    }
    if (this.#retentionTimer !== null) clearInterval(this.#retentionTimer);
    this.#stopped = true;
  }

  schedule(): void {
    if (this.#handle === null && !this.#stopped) this.#handle = setImmediate(this.#maintain);
  }

  /** Live pages went above the high watermark: drop down to the low one in the background. */
  requestQuotaDrop(): void {
    if (this.#quotaDropWanted) return;
    this.#quotaDropWanted = true;
    this.schedule();
  }

  /** Injected clocks move in jumps: check retention on appends too once the clock moved far enough. */
  afterAppend(now: number): void {
    if (this.#retentionMs === null) return;
    if (!this.#retentionWanted && Math.abs(now - this.#retentionCheckedAt) >= RETENTION_CHECK_MS) {
      this.#retentionCheckedAt = now;
      this.#retentionWanted = true;
      this.schedule();
    }
  }

  // ---- trimming and vacuum ----

  /** Inside a transaction: delete up to TRIM_CHUNK forwarded rows of `lane`; returns its new trimmed-up-to mark. */
  trimChunk(lane: LaneState, cursor: number): number {
    let from = lane.trimmedUpTo;
    if (from >= cursor) return from;
    const chunk = this.#space.lowSpace ? LOW_SPACE_TRIM_CHUNK : TRIM_CHUNK;
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
    const { pages, free } = this.#space.pages();
    if (free < VACUUM_MIN_FREE_PAGES) return false;
    if ((pages - free) * VACUUM_USED_RATIO > pages) return false;
    // Vacuumed pages are written to the WAL: stay within its limit under a small quota.
    const maxPages = Math.max(
      16,
      Math.min(
        VACUUM_MAX_PAGES,
        Math.floor(this.#space.plan.walLimitBytes / this.#space.pageSize / 2),
      ),
    );
    const n = Math.min(free, this.#space.lowSpace ? LOW_SPACE_VACUUM_PAGES : maxPages);
    this.#db.exec(`PRAGMA incremental_vacuum(${n})`);
    this.#vacuumed = true;
    return free - n >= VACUUM_MIN_FREE_PAGES;
  }

  /**
   * One short transaction of trimming and/or vacuuming, then at most one drop
   * step (quota, else retention); reschedules itself while work remains.
   */
  readonly #maintain = (): void => {
    this.#handle = null;
    if (this.#stopped) return;
    let more = false;
    const lanes = this.#lanes.all;
    try {
      this.#tx.relaxed(() =>
        this.#space.withReserve('delete forwarded events', () => {
          const trimmed = lanes.map((l) => l.trimmedUpTo);
          try {
            this.#tx.begin();
            lanes.forEach((l, i) => {
              trimmed[i] = this.trimChunk(l, l.cursor);
            });
            more = this.#maybeVacuum();
            this.#tx.commit();
          } catch (err) {
            this.#tx.rollbackQuietly();
            throw this.#tx.writeError(err, 'delete forwarded events');
          }
          lanes.forEach((l, i) => {
            l.trimmedUpTo = trimmed[i];
          });
          if (this.#space.lowSpace) this.#tx.checkpoint('RESTART');
        }),
      );
      if (this.#space.plan.quotaBytes !== null) this.#space.measureUsed();
    } catch (err) {
      // Not fatal: the rows stay until the next ack or open retries.
      process.emitWarning(`kedge log: ${(err as Error)?.message ?? err}`);
      return;
    }
    more = this.#dropWork() || more;
    if (more || this.#lanes.trimPending()) {
      this.schedule();
      return;
    }
    if (this.#vacuumed) {
      // Done returning pages: checkpoint now so the truncation reaches the
      // file (and the WAL is emptied) instead of waiting for the next append.
      // Best effort; the next autocheckpoint does it.
      this.#vacuumed = false;
      this.#tx.checkpoint('TRUNCATE');
    }
    this.#space.restoreReserve();
  };

  // ---- drops (quota, retention) ----

  /** At most one bounded drop step (quota first, then retention). Returns whether more drop work remains. */
  #dropWork(): boolean {
    try {
      if (this.#quotaDropWanted) {
        const low = this.#space.plan.lowBytes;
        const excess = this.#space.usedBytes - low;
        let n = 0;
        if (excess > 0) {
          for (const lane of this.#lanes.all) {
            n = this.#dropStep(lane, 'quota', { wantBytes: excess });
            if (n > 0) break;
          }
        }
        // Done when below the low watermark, or when nothing may be dropped (all in flight): the next commit retries.
        if (n === 0 || this.#space.usedBytes <= low) this.#quotaDropWanted = false;
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

  /** Drop at least `bytes` of the oldest unforwarded events, bulk lane first, in bounded transactions. */
  dropForQuota(bytes: number): void {
    const space = this.#space;
    const target = space.usedBytes - bytes;
    // Bounded: every pass either drops rows or stops; the backlog is finite.
    while (space.usedBytes > target) {
      let n = 0;
      // At least a few pages per transaction: rows only free space once their whole page is empty.
      const want = Math.max(space.usedBytes - target, MIN_DROP_PAGES * space.pageSize);
      for (const lane of this.#lanes.all) {
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
    const { from, cap } = lane.dropRange();
    const rows = lane.head.all([from, DROP_CHUNK]);
    let to = from;
    let est = 0;
    for (const r of rows) {
      if ((r.seq as number) > cap) break;
      if (limit.beforeTs !== undefined && (r.ts as number) >= limit.beforeTs) break;
      to = r.seq as number;
      est += estimateRowBytes(r.size as number, 0, 0);
      if (limit.wantBytes !== undefined && est >= limit.wantBytes) break;
    }
    if (to === from) return 0;
    let groups: Row[] = [];
    try {
      this.#tx.begin();
      groups = lane.topicCounts.all([from, to]);
      this.#beforeDrop?.({ reason, lane: lane.name, afterSeq: from, toSeq: to });
      lane.onDropRange?.(from, to);
      lane.trim.run([from, to]);
      this.#tx.commit();
    } catch (err) {
      this.#tx.rollbackQuietly();
      throw this.#tx.writeError(err, `drop events (${reason})`);
    }
    let n = 0;
    let dropped = 0;
    const reports: DropReport[] = [];
    for (const g of groups) {
      const events = Number(g.n);
      const bytes = Number(g.bytes);
      n += events;
      dropped += bytes;
      reports.push({ reason, lane: lane.name, topic: g.topic as string, events, bytes });
    }
    lane.shrink(n, dropped);
    this.#dropped += n;
    this.#space.measureUsed();
    this.#onDrops(reports);
    return n;
  }

  /** One retention step over both lanes (head first). Returns whether old events may remain. */
  #retentionStep(): boolean {
    const before = this.#now() - this.#retentionMs!;
    let more = false;
    for (const lane of this.#lanes.all) {
      const s = lane.stats();
      if (s.oldestTs === null || s.oldestTs >= before) continue;
      if (this.#dropStep(lane, 'retention', { beforeTs: before }) >= DROP_CHUNK) more = true;
    }
    return more;
  }
}
