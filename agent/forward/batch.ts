/**
 * What the forwarder reads next and how much of it: the lane to serve, the batch
 * size (adaptive: halved after a send timeout, grown back after successes; under a
 * rate cap, about RATE_BATCH_MS of the rate) and the Kafka record each event becomes.
 */
import { eventsBytes } from '../event-size.ts';
import type { OutRecord } from '../kafka/producer.ts';
import { INGEST_TS_HEADER, ingestTs, REPLAY_FOR_HEADER } from '../log/dead-letter-store.ts';
import { LANES, type ForwardLog, type Lane, type StoredEvent } from '../log/types.ts';
import type { Logger } from '../observe/logger.ts';

/** Under a rate cap, a batch holds at most this much time of the rate. */
const RATE_BATCH_MS = 2_000;
/** How long batches stay at the size a timeout halved them to before they grow again. */
const BATCH_REGROW_AFTER_MS = 5 * 60_000;

/** The lane to serve now: priority first; bulk only inside a transfer window. */
export function pickLane(
  log: ForwardLog,
  windowOpen: boolean,
): { lane: Lane; cursor: number } | null {
  const s = log.stats();
  for (const lane of LANES) {
    if (lane === 'bulk' && !windowOpen) continue;
    const l = s.lanes[lane];
    if (l.backlogEvents > 0) return { lane, cursor: l.cursor };
  }
  return null;
}

/** The Kafka record for a stored event: prefixed topic, its headers plus kedge-id and kedge-ingest-ts. */
export function toRecord(e: StoredEvent, agentId: string, topicPrefix: string): OutRecord {
  const headers: Record<string, string> = { ...(e.headers ?? {}) };
  // A replayed dead letter carries its original kedge-id in its stored headers (ingest refuses
  // kedge-* headers, so only `kedge dead-letters replay` puts one there).
  headers['kedge-id'] = e.id ?? headers['kedge-id'] ?? `${agentId}:${e.seq}`;
  // A replayed dead letter is stored with the replay's ts (retention ages it from then) and its
  // original ingest time in a kedge-ingest-ts header: the record is the one first sent.
  const ts = ingestTs(e);
  headers[INGEST_TS_HEADER] = String(ts);
  // Which destination a replayed row is for is kedge's own business (destination-log.ts).
  delete headers[REPLAY_FOR_HEADER];
  return {
    topic: topicPrefix + e.topic,
    key: e.key,
    value: e.value,
    timestamp: ts,
    headers,
  };
}

export interface BatchBudgetOptions {
  maxEvents: number;
  /** Most log bytes per batch (configured); the adaptive budget grows back to it. */
  maxBytes: number;
  /** KEDGE_FORWARD_RATE in wire bytes per second; null: unlimited. */
  rateBytesPerSecond: number | null;
  sendDeadlineMs: number;
  /** See ForwarderOptions.batchRegrowAfterMs. */
  regrowAfterMs?: number;
  logger: Logger;
}

export class BatchBudget {
  private readonly o: BatchBudgetOptions;
  private budget: { events: number; bytes: number };
  /** Under a rate cap: wire bytes one batch may take. */
  private readonly rateBatchWireBytes: number | null;
  /**
   * Wire bytes per log byte of recent batches (compression makes it < 1, headers and
   * framing of small events > 1): turns the wire budget into a log-bytes budget.
   */
  private wirePerLogByte = 1;
  /** After a timeout the batch size does not grow before this (performance.now()). */
  private ceilingUntil = 0;

  constructor(o: BatchBudgetOptions) {
    this.o = o;
    this.budget = { events: o.maxEvents, bytes: o.maxBytes };
    const rate = o.rateBytesPerSecond;
    // Under a cap, a batch must go out well within the request timeout (a quarter of
    // it at the capped rate), and at most ~2 s of the rate: a batch is also the
    // largest burst, so smaller batches keep the wire rate smooth.
    this.rateBatchWireBytes =
      rate === null
        ? null
        : Math.max(1, Math.floor((rate * Math.min(o.sendDeadlineMs / 4, RATE_BATCH_MS)) / 1000));
  }

  /** The next batch of `lane` from `cursor`, within the budget (empty when there is none). */
  read(log: ForwardLog, lane: Lane, cursor: number): StoredEvent[] {
    return log.readBatch(cursor, this.budget.events, this.bytes(), lane);
  }

  /** Log bytes for the next batch: the adaptive budget, and under a cap about RATE_BATCH_MS of wire bytes. */
  bytes(): number {
    if (this.rateBatchWireBytes === null) return this.budget.bytes;
    return Math.max(
      1,
      Math.min(this.budget.bytes, Math.floor(this.rateBatchWireBytes / this.wirePerLogByte)),
    );
  }

  /** A batch of `logBytes` went out as `wireBytes` on the wire (recent batches' ratio). */
  observeWire(logBytes: number, wireBytes: number): void {
    if (logBytes <= 0) return;
    const ratio = wireBytes / logBytes;
    if (ratio > 0) this.wirePerLogByte = 0.5 * this.wirePerLogByte + 0.5 * ratio;
  }

  /**
   * A timeout on a slow link: halve the next batch (down to one event) so that a
   * batch fits within the request timeout. A smaller batch also makes no
   * progress-free retries of a big one.
   */
  shrink(batch: StoredEvent[]): void {
    const bytes = eventsBytes(batch);
    this.budget = {
      events: Math.max(1, Math.ceil(Math.min(this.budget.events, batch.length) / 2)),
      bytes: Math.max(1, Math.floor(Math.min(this.budget.bytes, bytes) / 2)),
    };
    // Growing straight back would time out every other batch: hold this size for a while.
    this.ceilingUntil = performance.now() + (this.o.regrowAfterMs ?? BATCH_REGROW_AFTER_MS);
    this.o.logger.info(
      { batchBytes: this.budget.bytes, batchEvents: this.budget.events },
      'send timed out: sending smaller batches',
    );
  }

  /** After a success, back towards the configured size (×2 per batch). */
  grow(): void {
    if (performance.now() < this.ceilingUntil) return;
    this.budget = {
      events: Math.min(this.o.maxEvents, this.budget.events * 2),
      bytes: Math.min(this.o.maxBytes, this.budget.bytes * 2),
    };
  }
}
