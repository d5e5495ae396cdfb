/**
 * Several destinations over one log (KEDGE_DESTINATIONS). Each destination has a cursor per
 * lane in `dest_cursors`, saved together with what its routes remember at that position
 * (`state`) and the first seq its open windows still hold (`keep`), in one transaction. A
 * lane's own cursor row (`kafka`, `kafka:priority`) then is the floor: the lowest position
 * some destination still needs, min(saved cursor, keep) over the destinations. Rows up to the
 * floor are trimmed as before; drops (quota, retention) start at the floor and step over the
 * ranges a destination has read and not yet saved (it may be sending them, or need them to
 * rebuild its routes' state after a failed send).
 *
 * A destination's cursor moves in two ways: `ack(…, checkpoint)` saves it (and moves the
 * floor); `ack(…)` without one moves it in memory only (a routed destination acknowledged part
 * of a batch, at a position it has no state for; the saved cursor stays behind and a restart
 * sends that part again, with the same kedge-ids).
 */
import { withoutReplayHeaders } from './dead-letter-store.ts';
import type { SqlStmt } from './driver.ts';
import { headersJson } from './events.ts';
import type { LaneAdvance, LaneState, Lanes, QueryOnce } from './lanes.ts';
import type { Prepare, Tx } from './tx.ts';
import type { Checkpoint, Lane, LaneStats, StoredEvent } from './types.ts';

/** One destination's cursor in one lane. */
export class DestCursor {
  readonly dest: string;
  readonly lane: LaneState;
  /** Acknowledged (in memory; may be ahead of saved). */
  cursor: number;
  /** Saved in dest_cursors. */
  saved: number;
  keep: number | null;
  state: string | null;
  /** Highest seq this destination read in this lane. */
  frontier: number;
  /** Events after `saved`: what this destination has not finished. */
  backlogEvents = 0;
  backlogBytes = 0;
  oldestTs: number | null | undefined = undefined;
  /** Events after `cursor`: what it has not read (routes read ahead of what they saved). */
  unread = 0;
  /** Events dropped (quota, retention) before this destination had them, since open. */
  dropped = 0;
  /** Events this destination moved past (forwarded, routed, filtered), since open. */
  consumed = 0;

  constructor(
    dest: string,
    lane: LaneState,
    saved: number,
    keep: number | null,
    state: string | null,
  ) {
    this.dest = dest;
    this.lane = lane;
    this.cursor = this.saved = this.frontier = saved;
    this.keep = keep;
    this.state = state;
  }

  /** The lowest seq this destination still needs kept. */
  needs(): number {
    return this.keep === null ? this.saved : Math.min(this.saved, this.keep - 1);
  }

  stats(query: boolean): LaneStats {
    if (this.oldestTs === undefined && query) {
      const first = this.lane.firstAfter.get([this.saved]);
      this.oldestTs = first ? (first.ts as number) : null;
    }
    return {
      backlogEvents: this.backlogEvents,
      backlogBytes: this.backlogBytes,
      oldestTs: this.oldestTs ?? null,
      cursor: this.cursor,
    };
  }

  grow(n: number, bytes: number, ts: number): void {
    if (this.backlogEvents <= 0) this.oldestTs = ts;
    this.backlogEvents += n;
    this.backlogBytes += bytes;
    this.unread += n;
  }

  shrink(n: number, bytes: number): void {
    this.backlogEvents -= n;
    this.backlogBytes -= bytes;
    this.oldestTs = this.backlogEvents <= 0 ? null : undefined;
  }
}

export class Destinations {
  readonly names: readonly string[];
  /** Per lane, one cursor per destination (in names order). */
  readonly byLane = new Map<Lane, DestCursor[]>();
  readonly #upsert: SqlStmt;
  readonly #dlInsert: SqlStmt;
  readonly #lanes: Lanes;
  deadLetters = new Map<string, number>();

  constructor(names: readonly string[], lanes: Lanes, p: Prepare, one: QueryOnce) {
    this.names = names;
    this.#lanes = lanes;
    this.#upsert = p(
      'INSERT INTO dest_cursors(dest, lane, seq, keep, state) VALUES (?, ?, ?, ?, ?) ' +
        'ON CONFLICT(dest, lane) DO UPDATE SET seq = excluded.seq, keep = excluded.keep, state = excluded.state',
    );
    this.#dlInsert = p(
      'INSERT INTO dest_dead_letters(dest, seq, kedge_id, topic, key, value, headers, ts, size, reason, dead_at, lane) ' +
        'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    for (const lane of lanes.all) {
      const cursors: DestCursor[] = [];
      for (const dest of names) {
        const row = one('SELECT seq, keep, state FROM dest_cursors WHERE dest = ? AND lane = ?', [
          dest,
          lane.name,
        ]);
        // A new destination starts where forwarding stands: what is not yet forwarded, and what comes.
        const saved = row.seq == null ? lane.cursor : Math.max(Number(row.seq), lane.trimmedUpTo);
        const keep = row.keep == null ? null : Math.max(Number(row.keep), lane.trimmedUpTo + 1);
        const state = row.seq == null ? null : ((row.state as string | null) ?? null);
        const c = new DestCursor(dest, lane, saved, keep, state);
        const b = one(
          `SELECT count(*) AS n, total(size) AS bytes FROM ${lane.table} WHERE seq > ?`,
          [saved],
        );
        c.backlogEvents = c.unread = Number(b.n ?? 0);
        c.backlogBytes = Number(b.bytes ?? 0);
        if (c.backlogEvents === 0) c.oldestTs = null;
        cursors.push(c);
      }
      this.byLane.set(lane.name, cursors);
      // The lane's cursor is the floor from now on (lower when a destination that was away came back).
      const floor = this.floor(lane.name);
      if (floor < lane.cursor) {
        const b = one(
          `SELECT count(*) AS n, total(size) AS bytes FROM ${lane.table} WHERE seq > ?`,
          [floor],
        );
        lane.cursor = floor;
        lane.backlogEvents = Number(b.n ?? 0);
        lane.backlogBytes = Number(b.bytes ?? 0);
        lane.oldestTs = lane.backlogEvents === 0 ? null : undefined;
      }
      lane.onGrow = (n, bytes, ts) => {
        for (const c of cursors) c.grow(n, bytes, ts);
      };
      lane.dropRange = () => this.#dropRange(lane.name);
      lane.onDropRange = (from, to) => this.#dropped(lane.name, from, to);
    }
    for (const n of names) this.deadLetters.set(n, 0);
    const dl = p('SELECT dest, count(*) AS n FROM dest_dead_letters GROUP BY dest');
    for (const r of dl.all([])) {
      if (this.deadLetters.has(r.dest as string))
        this.deadLetters.set(r.dest as string, Number(r.n));
    }
  }

  cursor(dest: string, lane: Lane): DestCursor {
    const c = this.byLane.get(lane)?.find((d) => d.dest === dest);
    if (!c) throw new RangeError(`no destination ${dest} in lane ${lane}`);
    return c;
  }

  /** The lowest seq any destination still needs in `lane`. */
  floor(lane: Lane): number {
    let lo = Number.POSITIVE_INFINITY;
    for (const c of this.byLane.get(lane) ?? []) lo = Math.min(lo, c.needs());
    return lo;
  }

  /** Where drops in `lane` may start, and the last seq they may reach (see the file comment). */
  #dropRange(lane: Lane): { from: number; cap: number } {
    const cursors = this.byLane.get(lane) ?? [];
    let from = this.#lanes.get(lane).cursor;
    for (let moved = true; moved; ) {
      moved = false;
      for (const c of cursors) {
        if (c.saved <= from && from < c.frontier) {
          from = c.frontier;
          moved = true;
        }
      }
    }
    let cap = Number.POSITIVE_INFINITY;
    for (const c of cursors)
      if (c.frontier > c.saved && c.saved >= from) cap = Math.min(cap, c.saved);
    return { from, cap };
  }

  /** Inside a drop transaction, before its DELETE of (from, to]: what each destination loses. */
  #dropped(lane: Lane, from: number, to: number): void {
    const l = this.#lanes.get(lane);
    for (const c of this.byLane.get(lane) ?? []) {
      if (c.saved < to) {
        const r = l.rangeStats.get([Math.max(from, c.saved), to])!;
        c.shrink(Number(r.n), Number(r.bytes));
      }
      if (c.cursor < to) {
        const n = Number(l.rangeStats.get([Math.max(from, c.cursor), to])!.n);
        c.dropped += n;
        c.unread -= n;
      }
    }
  }

  /**
   * `dest` acknowledged up to `seq` in `lane`. With a checkpoint: one transaction saves the
   * cursor, state and keep, and moves the floor (the lane's cursor, trimming). Returns the
   * number of events that left the log's backlog (the floor's move).
   */
  ack(
    tx: Tx,
    dest: string,
    lane: Lane,
    seq: number,
    checkpoint: Checkpoint | null,
    trim: (lane: LaneState, cursor: number) => number,
  ): number {
    const c = this.cursor(dest, lane);
    const l = c.lane;
    // Read: the cursor in memory (and what is unread) moves.
    const read = () => {
      if (seq > c.cursor) {
        const n = Number(l.rangeStats.get([c.cursor, seq])!.n);
        c.cursor = seq;
        c.consumed += n;
        c.unread -= n;
      }
    };
    if (checkpoint === null) {
      read();
      return 0;
    }
    let n = 0;
    let bytes = 0;
    if (seq > c.saved) {
      const agg = l.rangeStats.get([c.saved, seq])!;
      n = Number(agg.n);
      bytes = Number(agg.bytes);
    }
    // Saved exactly at `seq`, where the checkpoint's state belongs (the cursor in memory may be ahead).
    const others = Math.min(
      ...(this.byLane.get(lane) ?? []).filter((d) => d !== c).map((d) => d.needs()),
    );
    const mine = checkpoint.keep === null ? seq : Math.min(seq, checkpoint.keep - 1);
    const floor = Math.min(others, mine);
    const moveFloor = Number.isFinite(floor) && floor > l.cursor;
    let advance: LaneAdvance | null = null;
    try {
      tx.begin();
      this.#upsert.run([dest, lane, seq, checkpoint.keep, checkpoint.state]);
      if (moveFloor) advance = l.advanceInTx(floor, trim);
      tx.commit();
    } catch (err) {
      tx.rollbackQuietly();
      throw tx.writeError(err, 'acknowledge');
    }
    read();
    if (seq > c.saved) c.shrink(n, bytes);
    c.saved = seq;
    c.keep = checkpoint.keep;
    c.state = checkpoint.state;
    if (advance !== null) l.applyAdvance(advance);
    return advance?.n ?? 0;
  }

  /** A record `dest` cannot deliver for good: a copy is kept in dest_dead_letters (the event stays for the others). */
  deadLetter(tx: Tx, dest: string, record: StoredEvent, id: string, reason: string): void {
    const size = record.value.byteLength + (record.key?.byteLength ?? 0);
    try {
      this.#dlInsert.run([
        dest,
        record.seq,
        id,
        record.topic,
        record.key,
        record.value,
        // A replayed record refused again: its kedge-id is in its own column, kedge-replay-for is replay's.
        headersJson(withoutReplayHeaders(record.headers) ?? undefined),
        record.ts,
        size,
        reason,
        Date.now(),
        record.lane,
      ]);
    } catch (err) {
      throw tx.writeError(err, 'dead-letter');
    }
    this.deadLetters.set(dest, (this.deadLetters.get(dest) ?? 0) + 1);
  }
}
