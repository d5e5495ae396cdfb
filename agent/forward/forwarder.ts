/**
 * The forwarder: reads the log from each lane's cursor in seq order, one bounded
 * batch at a time, sends it, and advances that lane's cursor only after Kafka
 * acknowledged. Errors never drop data: transient ones are retried for ever with
 * backoff, records Kafka refuses for good go to the dead-letter table (counted, logged).
 *
 * Link policy, checked every loop turn: pause (operator) stops everything; the
 * priority lane is served before the bulk lane and also outside transfer windows;
 * a rate cap makes the next batch wait until the wire bytes of the previous ones
 * are paid for.
 */
import type { ForwardLog, Lane, StoredEvent } from '../log/types.ts';
import type { Logger } from '../observe/logger.ts';
import type { ForwardMetrics, LinkState } from '../observe/metrics.ts';
import type { TimeWindow } from '../config.ts';
import { Backoff } from '../backoff.ts';
import { waitAtMost, withDeadline } from '../deadline.ts';
import { eventBytes, eventsBytes } from '../event-size.ts';
import type { RecordSink } from '../kafka/producer.ts';
import { classifySendError, describeKafkaError, type SendErrorClass } from '../kafka/classify.ts';
import { WireRate, type WireTotal } from '../kafka/wire-meter.ts';
import { BatchBudget, pickLane, toRecord } from './batch.ts';
import { DeadLetters } from './dead-letters.ts';
import { Link, type LinkStatus } from './link.ts';
import { TransferWindows } from './windows.ts';
import { TokenBucket } from './token-bucket.ts';

export interface ForwarderOptions {
  log: ForwardLog;
  sink: RecordSink;
  agentId: string;
  topicPrefix: string;
  maxBatchEvents: number;
  maxBatchBytes: number;
  /** A send that has not finished by then is abandoned and retried (hang outage). */
  sendDeadlineMs: number;
  backoffMinMs: number;
  backoffMaxMs: number;
  /**
   * A topic Kafka keeps calling unknown (auto-creation disabled, no such topic) or
   * not authorised (an ACL missing) for this long since its last successful send
   * is treated as one that cannot be written: its events are dead-lettered instead
   * of blocking the log for ever. Per topic, on the monotonic clock.
   */
  unknownTopicGraceMs: number;
  metrics: ForwardMetrics;
  logger: Logger;
  /** KEDGE_FORWARD_WINDOWS; empty: always open. */
  windows?: readonly TimeWindow[];
  /** KEDGE_FORWARD_RATE in wire bytes per second; null/absent: unlimited. Needs `wire`. */
  rateBytesPerSecond?: number | null;
  /** Counts the bytes the sink's sockets write (rate cap, status, metrics). */
  wire?: WireTotal;
  /**
   * Wall clock in ms since the epoch, for transfer windows only (tests inject a
   * fake one). Timeouts, backoff and the rate cap use the real monotonic clock.
   */
  now?: () => number;
  /** After a send timeout halved the batch size, hold it this long before growing ×2 per success again (default 5 min). */
  batchRegrowAfterMs?: number;
}

export interface ForwarderStatus extends LinkStatus {
  consecutiveFailures: number;
  rateCapBytesPerSecond: number | null;
  /** Measured over the last minute; null without a wire meter. */
  wireBytesPerSecond: number | null;
  /** null when no windows are configured (always open). */
  window: { open: boolean; nextChangeAt: string | null } | null;
  /** Byte budget of the next batch (shrinks after timeouts, grows back after successes). */
  batchBytes: number;
}

/**
 * Longest sleep before the policy is evaluated again: the wall clock can jump
 * (NTP, a test's fake clock), so a window change is never missed by more than this.
 */
const POLICY_RECHECK_MS = 1_000;

export class Forwarder {
  private readonly o: ForwarderOptions;
  private readonly backoff: Backoff;
  private readonly windows: TransferWindows;
  private readonly bucket: TokenBucket | null;
  /** The pause setting changed but could not be saved yet (see persistPaused). */
  private pausePending = false;
  /** performance.now() when the last batch send began (see chargeWire). */
  private sendStartedAt: number | null = null;
  private readonly wireRate: WireRate | null;
  private readonly now: () => number;
  private readonly link: Link;
  private readonly batches: BatchBudget;
  private readonly deadLetters: DeadLetters;
  private windowOpen: boolean | null = null;
  private wireCharged = 0;
  private stopping = false;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private wakeOnAppend = false;
  private unsubscribe: (() => void) | null = null;
  /** Kafka acknowledged this batch but the log could not record it (disk full): retried before anything else. */
  private pendingAck: { batch: StoredEvent[]; lane: Lane } | null = null;
  /** A log read or write is failing; logged once per streak. */
  private storageFailing = false;
  /**
   * The next batch of a lane, read while the previous one was with Kafka (the Kafka
   * thread encodes and sends; this thread reads meanwhile). Used only if the next turn
   * serves the same lane from the same cursor; dropped after any failure.
   */
  private prefetched: { lane: Lane; after: number; batch: StoredEvent[] } | null = null;

  constructor(o: ForwarderOptions) {
    this.o = o;
    this.backoff = new Backoff(o.backoffMinMs, o.backoffMaxMs);
    this.windows = new TransferWindows(o.windows ?? []);
    this.now = o.now ?? Date.now;
    const rate = o.rateBytesPerSecond ?? null;
    if (rate !== null && !o.wire)
      throw new TypeError('a rate cap needs a wire meter (ForwarderOptions.wire)');
    this.batches = new BatchBudget({
      maxEvents: o.maxBatchEvents,
      maxBytes: o.maxBatchBytes,
      rateBytesPerSecond: rate,
      sendDeadlineMs: o.sendDeadlineMs,
      regrowAfterMs: o.batchRegrowAfterMs,
      logger: o.logger,
    });
    // No credit saved up while idle: a batch is sent, then paid for, so the largest
    // burst above the rate is exactly one batch (a saved-up batch of credit would allow two).
    this.bucket = rate === null ? null : new TokenBucket(rate, 0);
    this.wireRate = o.wire ? new WireRate(o.wire) : null;
    this.wireCharged = o.wire?.total() ?? 0;
    this.link = new Link(o.metrics, o.logger, o.log.meta('forwarding.paused') === '1');
    this.deadLetters = new DeadLetters({
      log: o.log,
      metrics: o.metrics,
      logger: o.logger,
      topicPrefix: o.topicPrefix,
      graceMs: o.unknownTopicGraceMs,
      send: (ev) => this.withDeadline(o.sink.send([toRecord(ev, o.agentId, o.topicPrefix)])),
      acknowledge: (batch, lane) => this.acknowledge(batch, lane),
      failed: (e, c) => this.onFailure(e, c),
      storageFailed: async (what, e) => {
        this.storageFailed(what, e);
        await this.sleep(this.backoff.next());
      },
      stopping: () => this.stopping,
    });
  }

  linkState(): LinkState {
    return this.link.state;
  }

  status(): ForwarderStatus {
    const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
    let window: ForwarderStatus['window'] = null;
    if (!this.windows.always) {
      const now = this.now();
      const ms = this.windows.msUntilNextChange(new Date(now));
      window = {
        open: this.windows.isOpen(new Date(now)),
        nextChangeAt: ms === null ? null : iso(now + ms),
      };
    }
    return {
      ...this.link.status(),
      consecutiveFailures: this.backoff.failures,
      rateCapBytesPerSecond: this.bucket?.rate ?? null,
      wireBytesPerSecond: this.wireRate ? Math.round(this.wireRate.bytesPerSecond()) : null,
      window,
      batchBytes: this.batches.bytes(),
    };
  }

  start(): void {
    this.unsubscribe = this.o.log.onAppend(() => {
      if (this.wakeOnAppend) this.wake?.();
    });
    this.wireRate?.start();
    // run() handles every error of a turn itself; this only guards against a bug
    // there. Rethrowing would be an unhandled rejection, which ends the process.
    this.loop = this.run().catch((e) => {
      this.o.logger.fatal({ err: e }, 'forwarder stopped unexpectedly');
    });
  }

  /** Pausing is kept in the log's meta table, so it survives a restart. */
  async setPaused(paused: boolean): Promise<{ persisted: boolean }> {
    if (this.link.paused !== paused) {
      // In memory first: on a full disk the operator must still be able to resume
      // (that is when a drain is wanted most), even if the setting cannot be saved yet.
      this.o.logger.info(
        { paused },
        paused ? 'forwarding paused by operator' : 'forwarding resumed by operator',
      );
      this.link.setPaused(paused);
      this.wake?.();
    }
    return { persisted: this.persistPaused() };
  }

  /** Saves the pause setting; on failure (disk full) it is retried each loop turn until it sticks. */
  private persistPaused(): boolean {
    try {
      this.o.log.setMeta('forwarding.paused', this.link.paused ? '1' : '0');
      this.pausePending = false;
      return true;
    } catch (e) {
      if (!this.pausePending) {
        this.o.logger.warn(
          { err: (e as Error).message },
          `could not save the ${this.link.paused ? 'pause' : 'resume'} (it holds until a restart); retrying`,
        );
      }
      this.pausePending = true;
      return false;
    }
  }

  /** `listener` runs on every change of the shown link state, with the time it began; returns an unsubscribe function. */
  onStateChange(listener: (state: LinkState, atMs: number) => void): () => void {
    return this.link.onChange(listener);
  }

  /** Finishes the send in flight (bounded by its deadline), then disconnects. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.unsubscribe?.();
    this.wake?.();
    await this.loop?.catch(() => {});
    this.wireRate?.stop();
    await this.o.sink.disconnect();
  }

  /**
   * Sleeps `ms`; pause/resume or stop ends it early, and so does an append when
   * `untilAppend` (waiting for work) — not during backoff or a rate-cap wait,
   * which busy ingest would otherwise cut short.
   */
  private sleep(ms: number, untilAppend = false): Promise<void> {
    this.wakeOnAppend = untilAppend;
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.wake = () => {
        this.wake = null;
        done();
      };
    });
  }

  /** Evaluates the transfer windows at the (injectable) wall clock; logs when one opens or closes. */
  private checkWindow(): { open: boolean; nextChangeMs: number | null } {
    if (this.windows.always) return { open: true, nextChangeMs: null };
    const now = new Date(this.now());
    const open = this.windows.isOpen(now);
    const nextChangeMs = this.windows.msUntilNextChange(now);
    if (open !== this.windowOpen) {
      const next =
        nextChangeMs === null ? null : new Date(now.getTime() + nextChangeMs).toISOString();
      if (open)
        this.o.logger.info(
          { window: 'open', closesAt: next },
          'transfer window opened: all topics are forwarded',
        );
      else
        this.o.logger.info(
          { window: 'closed', opensAt: next },
          'transfer window closed: only priority topics are forwarded',
        );
      this.windowOpen = open;
    }
    return { open, nextChangeMs };
  }

  /** Charges the rate cap with every byte written since the last call (sends, probes, metadata). */
  private chargeWire(): void {
    const w = this.o.wire;
    if (!w) return;
    const total = w.total();
    const delta = total - this.wireCharged;
    this.wireCharged = total;
    if (delta > 0) {
      // As of the start of the last send: the time the send itself took is not lost credit.
      this.bucket?.charge(delta, this.sendStartedAt ?? undefined);
      this.o.metrics.wireBytes.inc(delta);
    }
  }

  /**
   * The loop never ends before stop(): a turn that throws (the log cannot be read,
   * a bug) shows as `degraded` with the reason and is retried after a backoff.
   */
  private async run(): Promise<void> {
    while (!this.stopping) {
      try {
        await this.turn();
      } catch (e) {
        this.storageFailed('read the log', e);
        await this.sleep(this.backoff.next());
      }
    }
  }

  private async turn(): Promise<void> {
    const o = this.o;
    if (this.pendingAck) {
      // Only the log write is retried: resending would make duplicates for nothing.
      if (!this.acknowledge(this.pendingAck.batch, this.pendingAck.lane))
        await this.sleep(this.backoff.next());
      return;
    }
    this.chargeWire();
    if (this.pausePending) this.persistPaused();
    if (this.link.paused) {
      await this.sleep(60_000);
      return;
    }
    const win = this.checkWindow();
    const pick = pickLane(o.log, win.open);
    this.link.setPolicy(!win.open, pick?.lane === 'priority');
    if (pick === null) {
      if (!win.open) {
        // Wakes for appends (a priority event may have arrived) and when the window opens.
        await this.sleep(Math.min(POLICY_RECHECK_MS, win.nextChangeMs ?? POLICY_RECHECK_MS), true);
        return;
      }
      const health = this.link.health;
      if (health === 'starting' || health === 'down') await this.probe();
      if (!this.stopping && pickLane(o.log, this.checkWindow().open) === null) {
        await this.sleep(this.link.health === 'down' ? this.backoff.next() : 5_000, true);
      }
      return;
    }
    const debtMs = this.bucket?.waitMs() ?? 0;
    if (debtMs > 0) {
      await this.sleep(Math.min(debtMs, POLICY_RECHECK_MS));
      return;
    }
    const batch =
      this.takePrefetched(pick.lane, pick.cursor) ??
      this.batches.read(o.log, pick.lane, pick.cursor);
    if (batch.length === 0) {
      // Stats said there is backlog but the read found none (e.g. a retention trim in between).
      await this.sleep(100);
      return;
    }
    await this.sendBatch(batch, pick.lane);
  }

  /** The log failed under the forwarder (disk full, I/O error): visible in status, logged once per streak. */
  private storageFailed(what: string, e: unknown): void {
    const msg = (e as Error)?.message ?? String(e);
    if (!this.storageFailing) {
      this.o.logger.error(
        { err: msg },
        `cannot ${what}; forwarding retries with backoff (the events stay in the log)`,
      );
    }
    this.storageFailing = true;
    this.link.setHealth('degraded', `log: ${msg}`);
  }

  /** With nothing to send, a connect tells status whether Kafka is reachable. */
  private async probe(): Promise<void> {
    try {
      await this.withDeadline(this.o.sink.connect());
      this.link.setHealth('up');
    } catch (e) {
      this.link.setHealth('down', describeKafkaError(e));
      await this.o.sink.disconnect();
    }
  }

  /** A send or connect that has not finished within the deadline is abandoned (hang outage). */
  private withDeadline<T>(p: Promise<T>): Promise<T> {
    const ms = this.o.sendDeadlineMs;
    return withDeadline(p, ms, `no answer from Kafka within ${ms} ms`);
  }

  /**
   * Sends `first`, then, while the policy lets this lane go on, the batches after it:
   * each next batch (read while the previous one was with Kafka) is handed to the Kafka
   * thread as soon as the previous one is acknowledged, and only then is that
   * acknowledgement written to the log (cursor, trim). The log write overlaps the next
   * send instead of stalling it; the cursor still never passes what Kafka acknowledged.
   */
  private async sendBatch(first: StoredEvent[], lane: Lane): Promise<void> {
    let batch = first;
    let sending = this.dispatch(batch);
    for (;;) {
      this.prefetch(lane, batch[batch.length - 1].seq);
      try {
        await sending.done;
      } catch (e) {
        return this.sendFailed(e, batch, lane);
      }
      this.sent(batch, sending);
      const next = this.nextInLane(lane, batch[batch.length - 1].seq);
      if (next) sending = this.dispatch(next);
      if (this.acknowledge(batch, lane)) {
        if (!next) return;
        batch = next;
        continue;
      }
      // The log could not record the ack (disk full); the batch is pendingAck. The next
      // one is already with Kafka: once it is acknowledged too, both are recorded as one
      // (no resend, so no duplicate); if it fails, the next turn retries the pending ack
      // and then sends it again from the log.
      if (!next) return;
      try {
        await sending.done;
      } catch (e) {
        this.prefetched = null;
        return this.onFailure(e, classifySendError(e));
      }
      this.sent(next, sending);
      this.acknowledge(batch.concat(next), lane);
      return;
    }
  }

  /** Hands a batch to the sink; one is in flight at a time. */
  private dispatch(batch: StoredEvent[]): InFlight {
    const o = this.o;
    const started = process.hrtime.bigint();
    const wireBefore = o.wire?.total() ?? 0;
    this.sendStartedAt = performance.now();
    const done = this.withDeadline(
      o.sink.send(batch.map((e) => toRecord(e, o.agentId, o.topicPrefix))),
    );
    return { done, started, wireBefore };
  }

  /** A send Kafka acknowledged: its figures, and the batch budget grows back. */
  private sent(batch: StoredEvent[], f: InFlight): void {
    const o = this.o;
    o.metrics.sendSeconds.observe(Number(process.hrtime.bigint() - f.started) / 1e9);
    o.metrics.batchEvents.observe(batch.length);
    const logBytes = eventsBytes(batch);
    o.metrics.batchBytes.observe(logBytes);
    if (o.wire) this.batches.observeWire(logBytes, o.wire.total() - f.wireBefore);
    this.batches.grow();
  }

  private async sendFailed(e: unknown, batch: StoredEvent[], lane: Lane): Promise<void> {
    this.prefetched = null;
    const c = classifySendError(e);
    if (c.kind === 'timeout') this.batches.shrink(batch);
    // Which topic a refusal is about is not known for a batch: every topic in it
    // starts its grace, and one run out means sending one by one to find out.
    if (
      c.kind === 'permanent' ||
      (c.kind === 'unknown-topic' &&
        this.deadLetters.graceOver(new Set(batch.map((ev) => ev.topic))))
    )
      return this.deadLetters.isolate(batch, lane);
    await this.onFailure(e, c);
  }

  /**
   * The batch to send right after the one Kafka just acknowledged, if the policy a turn
   * would apply lets this lane go on at once: not stopping or paused, no rate-cap debt,
   * the window still allows the lane, no priority event waiting while the bulk lane
   * runs, and the batch after `after` already read. Otherwise null: the loop's next
   * turn decides (and waits) as usual.
   */
  private nextInLane(lane: Lane, after: number): StoredEvent[] | null {
    if (this.stopping || this.link.paused || this.pausePending || !this.prefetched) return null;
    this.chargeWire();
    if ((this.bucket?.waitMs() ?? 0) > 0) return null;
    const win = this.checkWindow();
    const pick = pickLane(this.o.log, win.open);
    if (pick?.lane !== lane) return null;
    this.link.setPolicy(!win.open, lane === 'priority');
    return this.takePrefetched(lane, after);
  }

  /** Reads the batch after `after` while the one before it is with Kafka; a failed read is simply not used. */
  private prefetch(lane: Lane, after: number): void {
    try {
      const next = this.batches.read(this.o.log, lane, after);
      this.prefetched = next.length > 0 ? { lane, after, batch: next } : null;
    } catch {
      // The turn that needs it reads again and reports a failing log there.
      this.prefetched = null;
    }
  }

  private takePrefetched(lane: Lane, cursor: number): StoredEvent[] | null {
    const p = this.prefetched;
    this.prefetched = null;
    return p && p.lane === lane && p.after === cursor ? p.batch : null;
  }

  /**
   * Records in the log what Kafka acknowledged. False when the log could not (disk
   * full): the batch is kept as pending and only the ack is retried, with backoff.
   */
  private acknowledge(batch: StoredEvent[], lane: Lane): boolean {
    const o = this.o;
    try {
      o.log.ack(batch[batch.length - 1].seq, lane);
    } catch (e) {
      this.pendingAck = { batch, lane };
      this.storageFailed('record what Kafka acknowledged', e);
      return false;
    }
    this.pendingAck = null;
    if (this.storageFailing) {
      this.storageFailing = false;
      o.logger.info('the log accepts writes again; forwarding goes on');
    }
    const perTopic = new Map<string, [number, number]>();
    for (const e of batch) {
      const c = perTopic.get(e.topic) ?? [0, 0];
      c[0]++;
      c[1] += eventBytes(e);
      perTopic.set(e.topic, c);
    }
    for (const [topic, [n, bytes]] of perTopic) {
      o.metrics.forwardedEvents.inc({ topic }, n);
      o.metrics.forwardedBytes.inc({ topic }, bytes);
      this.deadLetters.accepted(topic);
    }
    this.backoff.reset();
    this.link.forwarded();
    return true;
  }

  private async onFailure(e: unknown, c: SendErrorClass): Promise<void> {
    const reason = describeKafkaError(e);
    const timeout = c.kind === 'timeout';
    this.o.metrics.sendErrors.inc({ kind: timeout ? 'timeout' : 'error' });
    // A send that got no answer at all is a hang outage (black hole, half-open
    // connection): that is `down`, not `degraded`. The state is set before the
    // disconnect below, which can itself wait on the hung connection.
    this.link.setHealth(
      !timeout && this.link.recentlyUp() && this.backoff.failures < 3 ? 'degraded' : 'down',
      reason,
    );
    // A fresh producer after a failure: kafkajs' idempotent sequence state can be
    // out of step with the broker after a timeout, which would fail every later send.
    // kafkajs' disconnect waits for requests in flight; on a hung link that is another
    // request timeout, so it is bounded here (the old producer finishes on its own).
    await waitAtMost(this.o.sink.disconnect(), DISCONNECT_WAIT_MS, { ignoreErrors: true });
    const wait = this.backoff.next();
    this.o.logger.debug({ reason, retryInMs: wait }, 'send failed; will retry');
    await this.sleep(wait);
  }
}

/** A batch handed to the sink: its outcome, and where its send began (time, wire bytes). */
interface InFlight {
  done: Promise<void>;
  started: bigint;
  wireBefore: number;
}

/** How long a failed send waits for the old producer to close before retrying with a new one. */
const DISCONNECT_WAIT_MS = 5_000;
