/**
 * The typed boundary between ingest, the durable log and the forwarder.
 * Ingest only calls `append`; the forwarder only reads batches, acknowledges
 * and dead-letters. Nothing outside `agent/log/` touches SQL.
 */
import type { StorageDriverName, SyncMode } from '../storage-modes.ts';
// ---- dead letters as `kedge dead-letters` sees them (agent/log/dead-letter-store.ts) ----

/** Which dead letters a command is about; every field narrows (all absent: every one). */
export interface DeadLetterFilter {
  topic?: string;
  /** Matches the start of the reason, e.g. `UNKNOWN_TOPIC_OR_PARTITION`. */
  reason?: string;
  /** Seq range, both ends included. */
  from?: number;
  to?: number;
  /** Several destinations: only this destination's; one destination: must be absent. */
  destination?: string;
}

/** One dead letter as a list shows it, from either table: no key or value (`show` has them). */
export interface DeadLetterRow {
  /** null: the one-destination table; else the destination that could not deliver it. */
  destination: string | null;
  /** Its seq in the log when it was dead-lettered. */
  seq: number;
  kedgeId: string;
  topic: string;
  headers: Record<string, string> | null;
  /** When it was first ingested (a replayed one keeps it in its `kedge-ingest-ts` header). */
  ts: number;
  size: number;
  reason: string;
  deadAt: number;
  lane: Lane;
}

/** One dead letter with its key and value (`show`). */
export interface DeadLetterEntry extends DeadLetterRow {
  key: Buffer | null;
  value: Buffer;
}

/** Dead letters of one destination, topic and reason kind (the part of the reason before `:`). */
export interface DeadLetterGroup {
  destination: string | null;
  topic: string;
  reason: string;
  count: number;
  bytes: number;
  firstSeq: number;
  lastSeq: number;
  oldestDeadAt: number;
  newestDeadAt: number;
}

export interface ReplayResult {
  replayed: number;
  /** Per topic, for the metric. */
  byTopic: Map<string, number>;
  /** The new seqs the replayed events got (null when none). */
  firstSeq: number | null;
  lastSeq: number | null;
}

export interface PurgeResult {
  purged: number;
  byTopic: Map<string, number>;
  /** Several destinations: per destination, to keep their counters. */
  byDestination: Map<string, number>;
}

/** The dead-letter tables as `kedge dead-letters` uses them (agent/log/dead-letter-store.ts). */
export interface DeadLetterAdmin {
  summary(f: DeadLetterFilter): DeadLetterGroup[];
  /** In seq order, at most `limit`; without key and value. */
  list(f: DeadLetterFilter, limit: number): DeadLetterRow[];
  /** Every dead letter with this seq (several destinations: one per destination), with key and value. */
  show(seq: number): DeadLetterEntry[];
  /**
   * Re-queues the matching dead letters with their original kedge-id (several destinations: each
   * for its own; see dead-letter-store.ts), in chunks, yielding to other work between chunks.
   */
  replay(f: DeadLetterFilter): Promise<ReplayResult>;
  /** Deletes the matching dead letters in chunks, yielding between them. */
  purge(f: DeadLetterFilter): Promise<PurgeResult>;
}

/** Where an event came from; used in metrics and headers. */
export type EventSource = 'http' | 'mqtt';

/**
 * Forwarding class. Each lane has its own cursor: the forwarder reads the
 * priority lane first (and also outside transfer windows), then the bulk lane.
 * A topic is in exactly one lane (KEDGE_PRIORITY_TOPICS), so order per key holds.
 */
export type Lane = 'bulk' | 'priority';
/** In the order the forwarder serves them. */
export const LANES: readonly Lane[] = ['priority', 'bulk'];

/** Why the log dropped unforwarded events (never silently: see EventLog.onDrop). */
export type DropReason = 'quota' | 'retention';

/** One drop decision of the log: `events` events of `topic` in `lane`, removed for `reason`. */
export interface DropReport {
  reason: DropReason;
  lane: Lane;
  topic: string;
  events: number;
  bytes: number;
}

/** One event as ingest hands it to the log. `value` is stored byte for byte. */
export interface EventInput {
  /** Kafka topic without KEDGE_TOPIC_PREFIX (the forwarder adds it). */
  topic: string;
  key: Buffer | null;
  value: Buffer;
  /** Extra Kafka headers (e.g. `mqtt-topic`); `kedge-id`/`kedge-ingest-ts` are added by the forwarder. */
  headers?: Record<string, string>;
  source: EventSource;
  /** Default 'bulk'. */
  lane?: Lane;
}

/** An event as stored: `seq` is the log's monotonically increasing position. */
export interface StoredEvent {
  seq: number;
  topic: string;
  key: Buffer | null;
  value: Buffer;
  headers: Record<string, string> | null;
  /** Ingest time, ms since the epoch (the commit's clock; never before an earlier commit's). */
  ts: number;
  lane: Lane;
  /** kedge-id of the record it becomes, when not `<agent>:<seq>` (a route's aggregate). */
  id?: string;
}

export interface AppendResult {
  firstSeq: number;
  lastSeq: number;
}

export interface DeadLetter extends StoredEvent {
  reason: string;
  deadAt: number;
}

export interface LaneStats {
  backlogEvents: number;
  backlogBytes: number;
  oldestTs: number | null;
  /** Highest seq of this lane acknowledged by Kafka. */
  cursor: number;
}

export interface LogStats {
  /** Events stored and not yet acknowledged by Kafka (both lanes). */
  backlogEvents: number;
  /** Sum of key+value bytes of those events. */
  backlogBytes: number;
  /** Ingest time of the oldest unforwarded event, or null when the backlog is empty. */
  oldestTs: number | null;
  /** The bulk lane's cursor (kept for callers that know one lane only). */
  cursor: number;
  lanes: Record<Lane, LaneStats>;
  /** Events acknowledged by Kafka since open, both lanes (monotonic; rates are measured from it). */
  forwardedEvents: number;
  /** Events dropped (quota, retention) since open, both lanes (monotonic). */
  droppedEvents: number;
  /** kedge.db + kedge.db-wal + kedge.reserve on disk, bytes (what the quota covers). */
  diskBytes: number;
  /** The quota in bytes, null when none. */
  quotaBytes: number | null;
  /** Highest seq ever assigned. */
  lastSeq: number;
  deadLetters: number;
  /** Number of append (group) commits since open; lets tests observe group commit. Ack/trim transactions are not counted. */
  commits: number;
}

// Named in a base module, so config.ts can use them without importing the log.
export type { StorageDriverName, SyncMode };

export interface LogOptions {
  /** Folder that holds the database (created if missing). */
  dir: string;
  driver: StorageDriverName;
  sync: SyncMode;
  /**
   * Test hook: called inside every append commit, before COMMIT (e.g. to make
   * commits slow, or throw to make one fail). `info` is the seq range that
   * commit is about to make durable.
   */
  beforeCommit?: (info: { firstSeq: number; lastSeq: number }) => void;
  /**
   * Test hook: called inside every drop transaction (quota or retention), before its
   * DELETE. Throw from it to make that DELETE fail (an I/O error, a full disk).
   */
  beforeDrop?: (info: { reason: DropReason; lane: Lane; afterSeq: number; toSeq: number }) => void;
  /**
   * Hard cap on the database file size (SQLite `max_page_count`); an append
   * that would grow the file beyond it fails with code KEDGE_DISK_FULL and
   * stores nothing. A last line of defence under the disk quota (retention
   * should keep the log below it); the WAL and the reserve are not counted. Default: no cap.
   */
  maxDbBytes?: number;
  /**
   * Disk space held back in `<dir>/kedge.reserve` and released when the disk is full, so that
   * acks can still delete forwarded events and the log drains instead of wedging. Default 8 MiB; 0 disables.
   */
  reserveBytes?: number;
  /** KEDGE_DISK_QUOTA in bytes: what kedge.db, its WAL and the reserve may use together (plus documented slack). Default: none. */
  quotaBytes?: number;
  /** KEDGE_WHEN_FULL: drop the oldest unforwarded events (bulk lane first), or refuse appends with KEDGE_QUOTA_FULL. Default 'drop-oldest'. */
  whenFull?: 'drop-oldest' | 'reject-new';
  /** KEDGE_RETENTION in ms: unforwarded events older than this are dropped (reason 'retention'). Default: none. */
  retentionMs?: number | null;
  /** Clock for ingest timestamps and retention (tests inject one). Default Date.now. */
  now?: () => number;
  /** wasm driver: path of `node-sqlite3-wasm.wasm` (default: next to the package). */
  wasmPath?: string;
}

/** Saved with a destination's cursor (several destinations): its routes' state there, and the first seq its open windows keep. */
export interface Checkpoint {
  state: string | null;
  keep: number | null;
}

/** One destination's position in one lane (several destinations); the backlog counts after `saved`. */
export interface DestinationLaneStats extends LaneStats {
  /** The cursor as saved (a routed destination saves at batch ends; `cursor` may be ahead). */
  saved: number;
  /** First seq the destination's open windows keep in the log (null: none). */
  keep: number | null;
  /** Events dropped (quota, retention) before this destination had them, since open. */
  dropped: number;
  /** Events it moved past (forwarded, or taken by its routes), since open: its drain rate. */
  consumed: number;
  /** Events after `cursor` (backlogEvents counts after `saved`). */
  unread: number;
}

/**
 * One destination's view of the log (KEDGE_DESTINATIONS): its own cursor per lane. An event
 * leaves the log once every destination has it (acknowledged or dead-lettered).
 */
export interface DestinationLog {
  readonly name: string;
  /** As EventLog.readBatch; the destination's read mark protects what it read from drops until saved. */
  readBatch(afterSeq: number, maxCount: number, maxBytes: number, lane: Lane): StoredEvent[];
  /** Acknowledged up to `seq`: saved with `checkpoint`, or (null) moved in memory only. */
  ack(seq: number, lane: Lane, checkpoint: Checkpoint | null): void;
  /** A record this destination cannot deliver for good: kept as a copy in its dead letters. */
  deadLetter(record: StoredEvent, id: string, reason: string): void;
  /** What was saved last: cursor, routes' state, keep. */
  saved(lane: Lane): { seq: number; state: string | null; keep: number | null };
  lanes(): Record<Lane, DestinationLaneStats>;
  deadLetters(): number;
}

/**
 * What the forwarder needs of the log: the whole log (one destination), or a destination's
 * view of it with its routes applied (agent/forward/destination-log.ts).
 */
export interface ForwardLog {
  readBatch(afterSeq: number, maxCount: number, maxBytes: number, lane?: Lane): StoredEvent[];
  ack(seq: number, lane?: Lane): void;
  deadLetter(event: StoredEvent, reason: string): void;
  stats(): Pick<LogStats, 'lanes'>;
  onAppend(listener: () => void): () => void;
  meta(key: string): string | null;
  setMeta(key: string, value: string): void;
}

/**
 * The durable event log. Appends are group-committed: every append that
 * arrives before the next commit shares its transaction and its fsync; each
 * promise resolves only after that commit returned.
 */
export interface EventLog {
  /**
   * Store `events` (all or none) and resolve with their seqs once committed. Rejects with LogWriteError:
   * KEDGE_INVALID_EVENT for an empty array or a malformed event (nothing queued), KEDGE_DISK_FULL /
   * KEDGE_LOG_WRITE when the commit failed (nothing of it stored), KEDGE_LOG_CLOSED. The log keeps
   * references to the events until the promise settles: do not mutate them before.
   */
  append(events: EventInput[]): Promise<AppendResult>;
  /** Events of `lane` with seq > afterSeq in seq order, bounded by count and bytes (at least one event if any). */
  readBatch(afterSeq: number, maxCount: number, maxBytes: number, lane?: Lane): StoredEvent[];
  /**
   * Kafka acknowledged everything up to and including `seq`: advance the cursor (same transaction as the trim bookkeeping).
   * Forwarded rows are deleted in bounded chunks, the rest on later ticks. An ack at or below the cursor is a no-op;
   * beyond the last appended seq throws RangeError; a disk failure throws LogWriteError.
   */
  ack(seq: number, lane?: Lane): void;
  /**
   * Move one event that Kafka refuses for good out of the way (the stored row is moved, with `reason`), and advance
   * the cursor past it if it is the next one. Throws RangeError if the event is no longer in the log.
   */
  deadLetter(event: StoredEvent, reason: string): void;
  /** Most recent (highest seq) first. */
  listDeadLetters(limit: number): DeadLetter[];
  /**
   * Both dead-letter tables for `kedge dead-letters`: list, group, replay, purge; `agentId`
   * forms their kedge-ids. `destinations`: the configured ones when the log is opened without
   * destinations() (offline) and the configuration has several or routes.
   */
  deadLetterAdmin(agentId: string, destinations?: readonly string[] | null): DeadLetterAdmin;
  stats(): LogStats;
  /** `listener` runs after every drop (quota or retention), once per topic and reason of that step; returns an unsubscribe function. */
  onDrop(listener: (d: DropReport) => void): () => void;
  /** `listener` runs after every successful append commit (used by the forwarder to wait for work); returns an unsubscribe function. */
  onAppend(listener: () => void): () => void;
  /**
   * Switches to several destinations (KEDGE_DESTINATIONS): one view each, in `names` order.
   * Call once, before forwarding; from then on the lanes' cursors are the floor over them.
   */
  destinations(names: readonly string[]): DestinationLog[];
  /** Small persistent settings kept in the log's database (e.g. 'agent_id'); null if unset. */
  meta(key: string): string | null;
  setMeta(key: string, value: string): void;
  close(): Promise<void>;
}

export { LogOpenError, LogWriteError } from '../errors.ts';
