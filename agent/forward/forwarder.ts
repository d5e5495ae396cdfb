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
import { LANES, type EventLog, type Lane, type StoredEvent } from '../log/types.ts';
import type { Logger } from '../observe/logger.ts';
import type { LinkState, Metrics } from '../observe/metrics.ts';
import type { TimeWindow } from '../config.ts';
import { Backoff } from '../backoff.ts';
import { waitAtMost, withDeadline } from '../deadline.ts';
import { eventBytes, eventsBytes } from '../event-size.ts';
import type { OutRecord, RecordSink } from '../kafka/producer.ts';
import { classifySendError, describeKafkaError, type SendErrorClass } from '../kafka/classify.ts';
import { TransferWindows } from './windows.ts';
import { TokenBucket } from './token-bucket.ts';
import { WireRate, type WireMeter } from '../kafka/wire-meter.ts';

/** What the last sends say about Kafka; the shown state adds pause and windows on top. */
type Health = Extract<LinkState, 'starting' | 'up' | 'degraded' | 'down'>;

export interface ForwarderOptions {
  log: EventLog;
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
  metrics: Metrics;
  logger: Logger;
  /** KEDGE_FORWARD_WINDOWS; empty: always open. */
  windows?: readonly TimeWindow[];
  /** KEDGE_FORWARD_RATE in wire bytes per second; null/absent: unlimited. Needs `wire`. */
  rateBytesPerSecond?: number | null;
  /** Counts the bytes the sink's sockets write (rate cap, status, metrics). */
  wire?: WireMeter;
  /**
   * Wall clock in ms since the epoch, for transfer windows only (tests inject a
   * fake one). Timeouts, backoff and the rate cap use the real monotonic clock.
   */
  now?: () => number;
  /** After a send timeout halved the batch size, hold it this long before growing ×2 per success again (default 5 min). */
  batchRegrowAfterMs?: number;
}

export interface LinkChange {
  state: LinkState;
  from: LinkState;
  at: string;
  reason: string | null;
}

export interface ForwarderStatus {
  state: LinkState;
  since: string;
  lastError: string | null;
  lastErrorAt: string | null;
  lastForwardAt: string | null;
  paused: boolean;
  consecutiveFailures: number;
  /** Most recent last, at most HISTORY_SIZE. */
  history: LinkChange[];
  rateCapBytesPerSecond: number | null;
  /** Measured over the last minute; null without a wire meter. */
  wireBytesPerSecond: number | null;
  /** null when no windows are configured (always open). */
  window: { open: boolean; nextChangeAt: string | null } | null;
  /** Byte budget of the next batch (shrinks after timeouts, grows back after successes). */
  batchBytes: number;
}

/** Under a rate cap, a batch holds at most this much time of the rate. */
const RATE_BATCH_MS = 2_000;
/** How long batches stay at the size a timeout halved them to before they grow again. */
const BATCH_REGROW_AFTER_MS = 5 * 60_000;
/** Kept in status so an operator sees a flapping link without reading logs. */
const HISTORY_SIZE = 20;
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
  /** Most log bytes per batch (configured); the adaptive budget grows back to it. */
  private readonly maxBytes: number;
  private budget: { events: number; bytes: number };
  /** Under a rate cap: wire bytes one batch may take. */
  private readonly rateBatchWireBytes: number | null;
  /**
   * Wire bytes per log byte of recent batches (compression makes it < 1, headers and
   * framing of small events > 1): turns the wire budget into a log-bytes budget.
   */
  private wirePerLogByte = 1;
  /** After a timeout the batch size does not grow before this (performance.now()). */
  private budgetCeilingUntil = 0;
  private health: Health = 'starting';
  /** Outside every transfer window (bulk waits). */
  private windowClosed = false;
  /** The priority lane had events at the last loop turn. */
  private priorityPending = false;
  private shown: LinkState = 'starting';
  private since = Date.now();
  private readonly history: LinkChange[] = [];
  private readonly stateListeners = new Set<(state: LinkState, atMs: number) => void>();
  private windowOpen: boolean | null = null;
  private wireCharged = 0;
  private lastError: string | null = null;
  private lastErrorAt: number | null = null;
  private lastForwardAt: number | null = null;
  private paused = false;
  private stopping = false;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private wakeOnAppend = false;
  private unsubscribe: (() => void) | null = null;
  /**
   * Per topic: performance.now() when Kafka first refused it with a GRACE_ERRORS type
   * since its last successful send. Monotonic, so an NTP step cannot end a grace early;
   * cleared by any success on that topic, so an old blip cannot shorten a new one's grace.
   */
  private readonly refusedSince = new Map<string, number>();
  /** Kafka acknowledged this batch but the log could not record it (disk full): retried before anything else. */
  private pendingAck: { batch: StoredEvent[]; lane: Lane } | null = null;
  /** A log read or write is failing; logged once per streak. */
  private storageFailing = false;

  constructor(o: ForwarderOptions) {
    this.o = o;
    this.backoff = new Backoff(o.backoffMinMs, o.backoffMaxMs);
    this.windows = new TransferWindows(o.windows ?? []);
    this.now = o.now ?? Date.now;
    const rate = o.rateBytesPerSecond ?? null;
    if (rate !== null && !o.wire)
      throw new TypeError('a rate cap needs a wire meter (ForwarderOptions.wire)');
    this.maxBytes = o.maxBatchBytes;
    this.budget = { events: o.maxBatchEvents, bytes: this.maxBytes };
    // Under a cap, a batch must go out well within the request timeout (a quarter of
    // it at the capped rate), and at most ~2 s of the rate: a batch is also the
    // largest burst, so smaller batches keep the wire rate smooth.
    this.rateBatchWireBytes =
      rate === null
        ? null
        : Math.max(1, Math.floor((rate * Math.min(o.sendDeadlineMs / 4, RATE_BATCH_MS)) / 1000));
    // No credit saved up while idle: a batch is sent, then paid for, so the largest
    // burst above the rate is exactly one batch (a saved-up batch of credit would allow two).
    this.bucket = rate === null ? null : new TokenBucket(rate, 0);
    this.wireRate = o.wire ? new WireRate(o.wire) : null;
    this.wireCharged = o.wire?.total() ?? 0;
    this.paused = o.log.meta('forwarding.paused') === '1';
    if (this.paused) this.shown = 'paused';
  }

  linkState(): LinkState {
    return this.shown;
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
      state: this.shown,
      since: new Date(this.since).toISOString(),
      lastError: this.lastError,
      lastErrorAt: iso(this.lastErrorAt),
      lastForwardAt: iso(this.lastForwardAt),
      paused: this.paused,
      consecutiveFailures: this.backoff.failures,
      history: [...this.history],
      rateCapBytesPerSecond: this.bucket?.rate ?? null,
      wireBytesPerSecond: this.wireRate ? Math.round(this.wireRate.bytesPerSecond()) : null,
      window,
      batchBytes: this.batchBytes(),
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
    if (this.paused !== paused) {
      // In memory first: on a full disk the operator must still be able to resume
      // (that is when a drain is wanted most), even if the setting cannot be saved yet.
      this.paused = paused;
      this.o.logger.info(
        { paused },
        paused ? 'forwarding paused by operator' : 'forwarding resumed by operator',
      );
      this.refresh();
      this.wake?.();
    }
    return { persisted: this.persistPaused() };
  }

  /** Saves the pause setting; on failure (disk full) it is retried each loop turn until it sticks. */
  private persistPaused(): boolean {
    try {
      this.o.log.setMeta('forwarding.paused', this.paused ? '1' : '0');
      this.pausePending = false;
      return true;
    } catch (e) {
      if (!this.pausePending) {
        this.o.logger.warn(
          { err: (e as Error).message },
          `could not save the ${this.paused ? 'pause' : 'resume'} (it holds until a restart); retrying`,
        );
      }
      this.pausePending = true;
      return false;
    }
  }

  /** `listener` runs on every change of the shown link state, with the time it began; returns an unsubscribe function. */
  onStateChange(listener: (state: LinkState, atMs: number) => void): () => void {
    this.stateListeners.add(listener);
    return () => {
      this.stateListeners.delete(listener);
    };
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

  private setHealth(h: Health, err?: string): void {
    if (err) {
      this.lastError = err;
      this.lastErrorAt = Date.now();
    }
    this.health = h;
    this.refresh();
  }

  /** Recomputes the shown state; a change is logged once, counted and kept in the history. */
  private refresh(): void {
    // Outside a window the state stays outside-window while priority events flow
    // fine (no flapping per alarm); a failing link shows, as that needs action.
    const failing = this.health === 'degraded' || this.health === 'down';
    const s: LinkState = this.paused
      ? 'paused'
      : this.windowClosed && !(this.priorityPending && failing)
        ? 'outside-window'
        : this.health;
    if (s === this.shown) return;
    const from = this.shown;
    this.shown = s;
    this.since = Date.now();
    const reason = s === 'degraded' || s === 'down' ? this.lastError : null;
    this.history.push({ state: s, from, at: new Date(this.since).toISOString(), reason });
    if (this.history.length > HISTORY_SIZE) this.history.shift();
    this.o.metrics.linkStateChanges.inc({ state: s });
    for (const l of this.stateListeners) l(s, this.since);
    const log = this.o.logger;
    if (s === 'degraded' || s === 'down') log.warn({ link: s, from, reason }, `kafka link ${s}`);
    else if (s === 'up') log.info({ link: s, from }, 'kafka link up');
    else if (s === 'paused') log.info({ link: s, from }, 'forwarding paused');
    else if (s === 'outside-window')
      log.info(
        { link: s, from },
        'outside the transfer window: only priority topics are forwarded',
      );
    else log.info({ link: s, from }, `kafka link ${s}`);
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

  /** The lane to serve now: priority first; bulk only inside a transfer window. */
  private pickLane(windowOpen: boolean): { lane: Lane; cursor: number } | null {
    const s = this.o.log.stats();
    for (const lane of LANES) {
      if (lane === 'bulk' && !windowOpen) continue;
      const l = s.lanes[lane];
      if (l.backlogEvents > 0) return { lane, cursor: l.cursor };
    }
    return null;
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
    if (this.paused) {
      await this.sleep(60_000);
      return;
    }
    const win = this.checkWindow();
    const pick = this.pickLane(win.open);
    this.windowClosed = !win.open;
    this.priorityPending = pick?.lane === 'priority';
    this.refresh();
    if (pick === null) {
      if (this.windowClosed) {
        // Wakes for appends (a priority event may have arrived) and when the window opens.
        await this.sleep(Math.min(POLICY_RECHECK_MS, win.nextChangeMs ?? POLICY_RECHECK_MS), true);
        return;
      }
      if (this.health === 'starting' || this.health === 'down') await this.probe();
      if (!this.stopping && this.pickLane(this.checkWindow().open) === null) {
        await this.sleep(this.health === 'down' ? this.backoff.next() : 5_000, true);
      }
      return;
    }
    const debtMs = this.bucket?.waitMs() ?? 0;
    if (debtMs > 0) {
      await this.sleep(Math.min(debtMs, POLICY_RECHECK_MS));
      return;
    }
    const batch = o.log.readBatch(pick.cursor, this.budget.events, this.batchBytes(), pick.lane);
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
    this.setHealth('degraded', `log: ${msg}`);
  }

  /** Starts the grace clock of each topic Kafka refused (if not running); true when one of them has run out. */
  private graceOver(topics: Iterable<string>): boolean {
    const now = performance.now();
    let over = false;
    for (const topic of topics) {
      const since = this.refusedSince.get(topic);
      if (since === undefined) this.refusedSince.set(topic, now);
      else if (now - since >= this.o.unknownTopicGraceMs) over = true;
    }
    return over;
  }

  /** With nothing to send, a connect tells status whether Kafka is reachable. */
  private async probe(): Promise<void> {
    try {
      await this.withDeadline(this.o.sink.connect());
      this.setHealth('up');
    } catch (e) {
      this.setHealth('down', describeKafkaError(e));
      await this.o.sink.disconnect();
    }
  }

  private toRecord(e: StoredEvent): OutRecord {
    const headers: Record<string, string> = { ...(e.headers ?? {}) };
    headers['kedge-id'] = `${this.o.agentId}:${e.seq}`;
    headers['kedge-ingest-ts'] = String(e.ts);
    return {
      topic: this.o.topicPrefix + e.topic,
      key: e.key,
      value: e.value,
      timestamp: e.ts,
      headers,
    };
  }

  /** A send or connect that has not finished within the deadline is abandoned (hang outage). */
  private withDeadline<T>(p: Promise<T>): Promise<T> {
    const ms = this.o.sendDeadlineMs;
    return withDeadline(p, ms, `no answer from Kafka within ${ms} ms`);
  }

  private async sendBatch(batch: StoredEvent[], lane: Lane): Promise<void> {
    const o = this.o;
    const started = process.hrtime.bigint();
    const wireBefore = o.wire?.total() ?? 0;
    this.sendStartedAt = performance.now();
    try {
      await this.withDeadline(o.sink.send(batch.map((e) => this.toRecord(e))));
    } catch (e) {
      const c = classifySendError(e);
      if (c.kind === 'timeout') this.shrinkBudget(batch);
      // Which topic a refusal is about is not known for a batch: every topic in it
      // starts its grace, and one run out means sending one by one to find out.
      if (
        c.kind === 'permanent' ||
        (c.kind === 'unknown-topic' && this.graceOver(new Set(batch.map((ev) => ev.topic))))
      )
        return this.isolate(batch, lane);
      await this.onFailure(e, c);
      return;
    }
    o.metrics.sendSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
    o.metrics.batchEvents.observe(batch.length);
    const logBytes = eventsBytes(batch);
    o.metrics.batchBytes.observe(logBytes);
    if (o.wire && logBytes > 0) {
      const ratio = (o.wire.total() - wireBefore) / logBytes;
      if (ratio > 0) this.wirePerLogByte = 0.5 * this.wirePerLogByte + 0.5 * ratio;
    }
    this.growBudget();
    this.acknowledge(batch, lane);
  }

  /**
   * A timeout on a slow link: halve the next batch (down to one event) so that a
   * batch fits within the request timeout. A smaller batch also makes no
   * progress-free retries of a big one.
   */
  private shrinkBudget(batch: StoredEvent[]): void {
    const bytes = eventsBytes(batch);
    this.budget = {
      events: Math.max(1, Math.ceil(Math.min(this.budget.events, batch.length) / 2)),
      bytes: Math.max(1, Math.floor(Math.min(this.budget.bytes, bytes) / 2)),
    };
    // Growing straight back would time out every other batch: hold this size for a while.
    this.budgetCeilingUntil =
      performance.now() + (this.o.batchRegrowAfterMs ?? BATCH_REGROW_AFTER_MS);
    this.o.logger.info(
      { batchBytes: this.budget.bytes, batchEvents: this.budget.events },
      'send timed out: sending smaller batches',
    );
  }

  /** Log bytes for the next batch: the adaptive budget, and under a cap about RATE_BATCH_MS of wire bytes. */
  private batchBytes(): number {
    if (this.rateBatchWireBytes === null) return this.budget.bytes;
    return Math.max(
      1,
      Math.min(this.budget.bytes, Math.floor(this.rateBatchWireBytes / this.wirePerLogByte)),
    );
  }

  /** After a success, back towards the configured size (×2 per batch). */
  private growBudget(): void {
    if (performance.now() < this.budgetCeilingUntil) return;
    this.budget = {
      events: Math.min(this.o.maxBatchEvents, this.budget.events * 2),
      bytes: Math.min(this.maxBytes, this.budget.bytes * 2),
    };
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
      this.refusedSince.delete(topic);
    }
    this.lastForwardAt = Date.now();
    this.backoff.reset();
    this.setHealth('up');
    return true;
  }

  private async onFailure(e: unknown, c: SendErrorClass): Promise<void> {
    const reason = describeKafkaError(e);
    const timeout = c.kind === 'timeout';
    this.o.metrics.sendErrors.inc({ kind: timeout ? 'timeout' : 'error' });
    // A send that got no answer at all is a hang outage (black hole, half-open
    // connection): that is `down`, not `degraded`. The state is set before the
    // disconnect below, which can itself wait on the hung connection.
    const recentlyUp = this.lastForwardAt !== null && Date.now() - this.lastForwardAt < 60_000;
    this.setHealth(
      !timeout && recentlyUp && this.backoff.failures < 3 ? 'degraded' : 'down',
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

  /**
   * Kafka refused something in the batch for good. Send the records one by one,
   * in order, so only the refused ones are dead-lettered and the rest go through.
   */
  private async isolate(batch: StoredEvent[], lane: Lane): Promise<void> {
    const o = this.o;
    // Topics whose grace ran out in this pass: their other events are not sent again one by one.
    const deadTopics = new Map<string, { type: string; detail: string }>();
    const dead = new Map<
      string,
      { topic: string; reason: string; count: number; firstSeq: number; bytes: number }
    >();
    const report = () => {
      // One line per topic and reason for the pass, not one per event.
      for (const d of dead.values()) {
        o.logger.error(
          {
            topic: o.topicPrefix + d.topic,
            reason: d.reason,
            events: d.count,
            firstSeq: d.firstSeq,
            bytes: d.bytes,
          },
          'Kafka refused events for good; moved them to the dead-letter table (see /v1/status)',
        );
      }
    };
    for (const ev of batch) {
      if (this.stopping) return report();
      let refusal = deadTopics.get(ev.topic);
      if (!refusal) {
        try {
          await this.withDeadline(o.sink.send([this.toRecord(ev)]));
          if (!this.acknowledge([ev], lane)) return report(); // retried by the next turn
          continue;
        } catch (e) {
          const c = classifySendError(e);
          const dead =
            c.kind === 'permanent' || (c.kind === 'unknown-topic' && this.graceOver([ev.topic]));
          if (!dead || c.type === null) {
            report();
            await this.onFailure(e, c);
            return;
          }
          refusal = { type: c.type, detail: describeKafkaError(e) };
          if (c.kind === 'unknown-topic') deadTopics.set(ev.topic, refusal);
        }
      }
      {
        const permanent = refusal.type;
        const reason = `${permanent}: ${refusal.detail}`;
        try {
          o.log.deadLetter(ev, reason);
        } catch (e) {
          // Not recorded: the next pass sends it again and finds the same refusal.
          report();
          this.storageFailed('move a refused event to the dead-letter table', e);
          await this.sleep(this.backoff.next());
          return;
        }
        o.metrics.deadLettered.inc({ topic: ev.topic, reason: permanent });
        const k = `${ev.topic}\u0000${permanent}`;
        const d = dead.get(k) ?? {
          topic: ev.topic,
          reason: permanent,
          count: 0,
          firstSeq: ev.seq,
          bytes: 0,
        };
        d.count++;
        d.bytes += ev.value.length;
        dead.set(k, d);
      }
    }
    report();
  }
}

/** How long a failed send waits for the old producer to close before retrying with a new one. */
const DISCONNECT_WAIT_MS = 5_000;
