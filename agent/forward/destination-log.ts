/**
 * One destination's log, as its forwarder sees it (KEDGE_DESTINATIONS, KEDGE_ROUTE_*).
 *
 * Without routes it is the destination's view of the log: its own cursor per lane, saved on
 * every acknowledgement. With routes, what the forwarder reads are the routes' records, made
 * from the log as it reads: positions are then this object's own (one per record, increasing
 * for the life of the process), and at the end of every batch it keeps a checkpoint: the log
 * position the batch consumed, the routes' state there, records made but not yet handed out,
 * and the first seq an open window holds. When Kafka acknowledges a batch's last record, that
 * checkpoint is saved with the destination's cursor in one transaction: the saved state always
 * matches the saved position, so a restart (or a failed send) goes on from there and makes the
 * same records with the same kedge-ids. Records acknowledged one by one (a batch split to find
 * a refused record) are remembered until the next checkpoint, so a resend skips them.
 *
 * Rows `kedge dead-letters replay` re-appended for one destination (header kedge-replay-for,
 * see agent/log/dead-letter-store.ts) are the very records that destination could not deliver:
 * another destination passes over them (they count as consumed, its cursor moves past them),
 * and their own destination hands them out as they are. With routes they are not routes'
 * input (a routed destination's dead letters are routes' OUTPUT, with their own kedge-ids):
 * they join the records made, in log order, and the routes' state never sees them, so a
 * checkpoint's state still matches its position and a rewind makes the same records again.
 */
import { createHash } from 'node:crypto';
import type {
  DestinationLog,
  EventLog,
  ForwardLog,
  Lane,
  LaneStats,
  LogStats,
  StoredEvent,
} from '../log/types.ts';
import { LANES } from '../log/types.ts';
import { replayedFor } from '../log/dead-letter-store.ts';
import { type FilteredCounts, type RoutedEvent, RoutePipeline } from '../route/pipeline.ts';
import type { RouteDef } from '../route-syntax.ts';

export interface DestinationForwardLogOptions {
  log: EventLog;
  dest: DestinationLog;
  /** This destination's routes; null: every event, unchanged. */
  routes: readonly RouteDef[] | null;
  agentId: string;
  /** The clock the log stamps ingest time with (idle windows close by it). */
  now: () => number;
  /** Events the routes' steps removed, counted once their batch is saved. */
  onFiltered?: (counts: FilteredCounts) => void;
  /** The meta key of this destination's pause setting. */
  pauseKey: string;
}

/** A routed record handed to the forwarder: `seq` is its position here, `origin` the log's. */
interface Handed extends RoutedEvent {
  origin: number;
}

/** Saved with the cursor: the routes' state, and records made but not yet handed out. */
interface SavedState {
  routes: string;
  state: string;
  carry: EncodedRecord[];
}

interface EncodedRecord {
  seq: number;
  topic: string;
  key: string | null;
  value: string;
  headers: Record<string, string> | null;
  ts: number;
  lane: Lane;
  id: string;
  route: string;
}

/**
 * A full checkpoint is taken at most this often while records flow (and whenever the routes
 * go idle): each one is the routes' whole state as JSON, written with the cursor. Between
 * them a crash sends at most this much again, with the same kedge-ids.
 */
const FULL_CHECKPOINT_MS = 1_000;

/** Where a batch ends. `state` null: a light one (acknowledging it only marks its records delivered). */
interface Checkpoint {
  inputPos: number;
  state: string | null;
  carry: RoutedEvent[];
  keep: number | null;
  filtered: FilteredCounts;
}

/** The routes of one destination over one lane. */
class RoutedLane {
  readonly lane: Lane;
  private readonly o: DestinationForwardLogOptions;
  private readonly routes: readonly RouteDef[];
  private readonly fingerprint: string;
  private pipeline: RoutePipeline;
  /** Log position the pipeline consumed through. */
  private inputAt = 0;
  /** Made and not handed out yet (oldest first). */
  private carry: RoutedEvent[] = [];
  /** The last saved checkpoint: where a rewind starts. */
  private base: { inputPos: number; state: string | null; carry: RoutedEvent[] };
  /** Checkpoints of batches handed out and not yet acknowledged, by their last position. */
  private readonly pending = new Map<number, Checkpoint>();
  /** Handed out, not yet acknowledged: position → identity. */
  private readonly handed = new Map<number, string>();
  /** Delivered (acknowledged or dead-lettered) since the saved checkpoint: route|id. */
  private readonly settled = new Set<string>();
  /** Removed by steps since the last checkpoint. */
  private filtered: FilteredCounts = new Map();
  /** Last position handed out, and last acknowledged. */
  private lastHanded = 0;
  cursor = 0;
  private nextPos = 1;
  /** performance.now() of the last full checkpoint taken. */
  private fullAt = Number.NEGATIVE_INFINITY;

  constructor(lane: Lane, o: DestinationForwardLogOptions, routes: readonly RouteDef[]) {
    this.lane = lane;
    this.o = o;
    this.routes = routes;
    this.fingerprint = createHash('sha256')
      .update(JSON.stringify([...routes].map((r) => [r.name, r.source]).sort()))
      .digest('hex')
      .slice(0, 16);
    const saved = o.dest.saved(lane);
    let start = saved.seq;
    let state: string | null = null;
    let carry: RoutedEvent[] = [];
    if (saved.state !== null) {
      const s = JSON.parse(saved.state) as SavedState;
      if (s.routes === this.fingerprint) {
        state = s.state;
        carry = s.carry.map(decode);
      } else if (saved.keep !== null) {
        // The routes changed: start afresh from the first input an open window still kept,
        // so the windows open at the change are rebuilt from their inputs under the new routes.
        start = Math.min(start, saved.keep - 1);
      }
    }
    this.base = { inputPos: start, state, carry };
    this.pipeline = new RoutePipeline(routes, o.agentId, o.dest.name);
    this.rewind();
  }

  /** Back to the saved checkpoint (at start, and after a failed send). */
  private rewind(): void {
    this.pipeline = new RoutePipeline(this.routes, this.o.agentId, this.o.dest.name);
    if (this.base.state !== null) this.pipeline.restore(this.base.state);
    this.inputAt = this.base.inputPos;
    this.carry = [...this.base.carry];
    this.pending.clear();
    this.handed.clear();
    this.filtered = new Map();
    this.lastHanded = this.cursor;
    // The first batch after a rewind carries a full checkpoint: its acknowledgement saves
    // progress, however soon another failure or a restart follows.
    this.fullAt = Number.NEGATIVE_INFINITY;
  }

  /**
   * Something to do: unread log, records made or to send again, progress not saved yet (a read
   * with nothing to hand out saves it), or a window the clock closed.
   */
  hasWork(unread: number): boolean {
    if (this.carry.length > 0 || unread > 0 || this.handed.size > 0) return true;
    if (this.inputAt !== this.base.inputPos || this.settled.size > 0) return true;
    const end = this.pipeline.nextClose();
    return end !== null && this.o.now() >= end;
  }

  read(after: number, maxCount: number, maxBytes: number): StoredEvent[] {
    if (after !== this.lastHanded) {
      this.cursor = after;
      this.rewind();
    }
    let rounds = 0;
    // Read until there is a record to hand out or the log's end: a batch the routes filter
    // out completely moves on to the next one (bounded, so one call stays short).
    while (this.carry.length === 0 && rounds++ < 16) {
      const clock = this.o.now();
      const inputs = this.o.dest.readBatch(this.inputAt, maxCount, maxBytes, this.lane);
      if (inputs.length === 0) {
        // Nothing unread, and the log stamps later commits no earlier than `clock`.
        this.take(this.pipeline.advanceTo(clock, this.inputAt));
        break;
      }
      this.feed(inputs);
      this.inputAt = inputs[inputs.length - 1].seq;
      // The unread part of the log, for status and the forwarder's lane choice (never moves back).
      this.o.dest.ack(this.inputAt, this.lane, null);
    }
    const out: Handed[] = [];
    let bytes = 0;
    while (this.carry.length > 0 && out.length < maxCount) {
      const r = this.carry[0];
      const size = r.value.byteLength + (r.key?.byteLength ?? 0);
      if (out.length > 0 && bytes + size > maxBytes) break;
      this.carry.shift();
      bytes += size;
      const pos = this.nextPos++;
      out.push({ ...r, origin: r.seq, seq: pos });
      this.handed.set(pos, identity(r));
    }
    const idle = out.length === 0 && this.handed.size === 0;
    const full = idle || performance.now() - this.fullAt >= FULL_CHECKPOINT_MS;
    const checkpoint: Checkpoint = {
      inputPos: this.inputAt,
      state: full ? this.pipeline.state() : null,
      carry: full ? [...this.carry] : [],
      keep: full ? this.pipeline.openFrom() : null,
      filtered: this.filtered,
    };
    this.filtered = new Map();
    if (full) this.fullAt = performance.now();
    if (out.length === 0) {
      // All filtered or folded into windows: nothing for Kafka to acknowledge. Saved now when
      // nothing is with Kafka (else its counts go with the next checkpoint).
      if (idle && (this.inputAt !== this.base.inputPos || this.settled.size > 0))
        this.save(checkpoint);
      else for (const [k, n] of checkpoint.filtered) this.filtered.set(k, n);
      return out;
    }
    this.lastHanded = out[out.length - 1].seq;
    this.pending.set(this.lastHanded, checkpoint);
    return out;
  }

  /**
   * Log rows through the routes, in order; a row replayed for this destination joins the
   * records as it is (between the outputs of the rows before and after it), one replayed for
   * another destination is passed over. Neither touches the routes' state.
   */
  private feed(inputs: StoredEvent[]): void {
    const name = this.o.dest.name;
    let from = 0;
    for (let i = 0; i <= inputs.length; i++) {
      const e = inputs[i];
      const forDest = e === undefined ? null : replayedFor(e);
      if (e !== undefined && forDest === null) continue;
      if (i > from) this.take(this.pipeline.process(inputs.slice(from, i), this.o.agentId));
      from = i + 1;
      if (e !== undefined && forDest === name)
        this.take({ events: [replayRecord(e, this.o.agentId)], filtered: new Map() });
    }
  }

  /** Adds a step's output, leaving out records already delivered since the saved checkpoint. */
  private take(b: { events: RoutedEvent[]; filtered: FilteredCounts }): void {
    for (const e of b.events) if (!this.settled.has(identity(e))) this.carry.push(e);
    for (const [k, n] of b.filtered) this.filtered.set(k, (this.filtered.get(k) ?? 0) + n);
  }

  /** Kafka acknowledged everything handed out up to `pos`. */
  ack(pos: number): void {
    if (pos <= this.cursor) return;
    const cp = this.pending.get(pos);
    if (cp && cp.state !== null) {
      this.save(cp);
    } else {
      for (const [p, id] of this.handed) if (p <= pos) this.settled.add(id);
      if (cp && cp.filtered.size > 0) this.o.onFiltered?.(cp.filtered);
    }
    for (const p of [...this.handed.keys()]) if (p <= pos) this.handed.delete(p);
    for (const p of [...this.pending.keys()]) if (p <= pos) this.pending.delete(p);
    this.cursor = pos;
  }

  /** Saves a full checkpoint with the destination's cursor (one transaction). */
  private save(cp: Checkpoint): void {
    const state: SavedState = {
      routes: this.fingerprint,
      state: cp.state ?? '',
      carry: cp.carry.map(encode),
    };
    this.o.dest.ack(cp.inputPos, this.lane, { state: JSON.stringify(state), keep: cp.keep });
    this.base = { inputPos: cp.inputPos, state: cp.state, carry: cp.carry };
    this.settled.clear();
    if (cp.filtered.size > 0) this.o.onFiltered?.(cp.filtered);
  }

  deadLetter(e: Handed, reason: string): void {
    this.o.dest.deadLetter({ ...e, seq: e.origin }, e.id, reason);
    this.ack(e.seq);
  }

  /** Records made and waiting, for status. */
  waiting(): number {
    return this.carry.length;
  }
}

/**
 * A row replayed for this destination, as the record it was: its stored kedge-id, and a route
 * name of its own so that its identity (for records settled before a checkpoint) is this row.
 */
function replayRecord(e: StoredEvent, agentId: string): RoutedEvent {
  return { ...e, id: e.headers?.['kedge-id'] ?? `${agentId}:${e.seq}`, route: `replay@${e.seq}` };
}

function identity(e: RoutedEvent): string {
  return `${e.route}|${e.id}`;
}

function encode(e: RoutedEvent): EncodedRecord {
  return {
    seq: e.seq,
    topic: e.topic,
    key: e.key === null ? null : e.key.toString('base64'),
    value: e.value.toString('base64'),
    headers: e.headers,
    ts: e.ts,
    lane: e.lane,
    id: e.id,
    route: e.route,
  };
}

function decode(e: EncodedRecord): RoutedEvent {
  return {
    ...e,
    key: e.key === null ? null : Buffer.from(e.key, 'base64'),
    value: Buffer.from(e.value, 'base64'),
  };
}

/** The ForwardLog of one destination (see the file comment). */
export class DestinationForwardLog implements ForwardLog {
  private readonly o: DestinationForwardLogOptions;
  private readonly routed: Map<Lane, RoutedLane> | null;

  constructor(o: DestinationForwardLogOptions) {
    this.o = o;
    this.routed =
      o.routes === null
        ? null
        : new Map(LANES.map((lane) => [lane, new RoutedLane(lane, o, o.routes ?? [])]));
  }

  get name(): string {
    return this.o.dest.name;
  }

  readBatch(
    afterSeq: number,
    maxCount: number,
    maxBytes: number,
    lane: Lane = 'bulk',
  ): StoredEvent[] {
    const r = this.routed?.get(lane);
    if (r) return r.read(afterSeq, maxCount, maxBytes);
    const name = this.o.dest.name;
    let after = afterSeq;
    // Bounded: a long run of rows replayed for other destinations is passed over a few
    // batches per call; the forwarder's next turn goes on (its backlog still counts them).
    for (let round = 0; round < 16; round++) {
      const rows = this.o.dest.readBatch(after, maxCount, maxBytes, lane);
      if (!rows.some((e) => replayedFor(e) !== null)) return rows;
      const mine = rows.filter((e) => {
        const f = replayedFor(e);
        return f === null || f === name;
      });
      // The forwarder's ack of the last one sent covers the rows passed over before it.
      if (mine.length > 0) return mine;
      // Only rows for others: nothing to send, so the cursor moves past them here, but only
      // from the saved cursor (a read ahead while a batch is with Kafka must not pass it).
      if (after !== this.o.dest.saved(lane).seq) return [];
      after = rows[rows.length - 1].seq;
      this.o.dest.ack(after, lane, { state: null, keep: null });
    }
    return [];
  }

  ack(seq: number, lane: Lane = 'bulk'): void {
    const r = this.routed?.get(lane);
    if (r) r.ack(seq);
    else this.o.dest.ack(seq, lane, { state: null, keep: null });
  }

  deadLetter(event: StoredEvent, reason: string): void {
    const r = this.routed?.get(event.lane);
    if (r) {
      r.deadLetter(event as Handed, reason);
      return;
    }
    // A replayed row keeps the kedge-id it had (in its headers).
    const id = event.headers?.['kedge-id'] ?? `${this.o.agentId}:${event.seq}`;
    this.o.dest.deadLetter(event, id, reason);
    this.o.dest.ack(event.seq, event.lane, { state: null, keep: null });
  }

  stats(): Pick<LogStats, 'lanes'> {
    const d = this.o.dest.lanes();
    const lanes = {} as Record<Lane, LaneStats>;
    for (const lane of LANES) {
      const s = d[lane];
      const r = this.routed?.get(lane);
      lanes[lane] = r
        ? {
            backlogEvents: r.hasWork(s.unread) ? Math.max(1, s.unread + r.waiting()) : 0,
            backlogBytes: s.backlogBytes,
            oldestTs: s.oldestTs,
            cursor: r.cursor,
          }
        : s;
    }
    return { lanes };
  }

  onAppend(listener: () => void): () => void {
    return this.o.log.onAppend(listener);
  }

  meta(key: string): string | null {
    return this.o.log.meta(key === 'forwarding.paused' ? this.o.pauseKey : key);
  }

  setMeta(key: string, value: string): void {
    this.o.log.setMeta(key === 'forwarding.paused' ? this.o.pauseKey : key, value);
  }
}
