/**
 * The forwarder: reads the log from the cursor in seq order, one bounded batch
 * at a time, sends it, and advances the cursor only after Kafka acknowledged.
 * Errors never drop data: transient ones are retried for ever with backoff,
 * records Kafka refuses for good go to the dead-letter table (counted, logged).
 */
import type { EventLog, StoredEvent } from '../log/types.ts';
import type { Logger } from '../observe/logger.ts';
import type { Metrics } from '../observe/metrics.ts';
import { Backoff } from '../backoff.ts';
import { describeKafkaError, errorTypes, permanentReason, type OutRecord, type RecordSink } from './kafka-producer.ts';

export type LinkState = 'starting' | 'up' | 'degraded' | 'down' | 'paused';

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
   * A topic Kafka keeps calling unknown (auto-creation disabled, no such topic) for
   * this long, while the link otherwise works, is treated as one that cannot be
   * created: its events are dead-lettered instead of blocking the log for ever.
   */
  unknownTopicGraceMs: number;
  metrics: Metrics;
  logger: Logger;
}

export interface ForwarderStatus {
  state: LinkState;
  since: string;
  lastError: string | null;
  lastErrorAt: string | null;
  lastForwardAt: string | null;
  paused: boolean;
  consecutiveFailures: number;
}

class SendDeadlineError extends Error {
  constructor(ms: number) {
    super(`no answer from Kafka within ${ms} ms`);
    this.name = 'SendDeadlineError';
  }
}

export class Forwarder {
  private readonly o: ForwarderOptions;
  private readonly backoff: Backoff;
  private state: LinkState = 'starting';
  private since = Date.now();
  private lastError: string | null = null;
  private lastErrorAt: number | null = null;
  private lastForwardAt: number | null = null;
  private paused = false;
  private stopping = false;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private unsubscribe: (() => void) | null = null;
  private unknownTopicSince: number | null = null;

  constructor(o: ForwarderOptions) {
    this.o = o;
    this.backoff = new Backoff(o.backoffMinMs, o.backoffMaxMs);
    this.paused = o.log.meta('forwarding.paused') === '1';
  }

  linkState(): LinkState {
    return this.paused ? 'paused' : this.state;
  }

  status(): ForwarderStatus {
    const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
    return {
      state: this.linkState(),
      since: new Date(this.since).toISOString(),
      lastError: this.lastError,
      lastErrorAt: iso(this.lastErrorAt),
      lastForwardAt: iso(this.lastForwardAt),
      paused: this.paused,
      consecutiveFailures: this.backoff.failures,
    };
  }

  start(): void {
    this.unsubscribe = this.o.log.onAppend(() => this.wake?.());
    this.loop = this.run().catch((e) => {
      this.o.logger.fatal({ err: e }, 'forwarder stopped unexpectedly');
      throw e;
    });
  }

  /** Pausing is kept in the log's meta table, so it survives a restart. */
  async setPaused(paused: boolean): Promise<void> {
    if (this.paused === paused) return;
    this.paused = paused;
    this.o.log.setMeta('forwarding.paused', paused ? '1' : '0');
    this.o.logger.info({ paused }, paused ? 'forwarding paused by operator' : 'forwarding resumed by operator');
    this.since = Date.now();
    this.wake?.();
  }

  /** Finishes the send in flight (bounded by its deadline), then disconnects. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.unsubscribe?.();
    this.wake?.();
    await this.loop?.catch(() => {});
    await this.o.sink.disconnect();
  }

  private setState(s: LinkState, err?: string): void {
    if (err) {
      this.lastError = err;
      this.lastErrorAt = Date.now();
    }
    if (s === this.state) return;
    const prev = this.state;
    this.state = s;
    this.since = Date.now();
    const log = this.o.logger;
    if (s === 'up') log.info({ link: s, from: prev }, 'kafka link up');
    else log.warn({ link: s, from: prev, reason: this.lastError }, `kafka link ${s}`);
  }

  private sleep(ms: number): Promise<void> {
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

  private async run(): Promise<void> {
    const o = this.o;
    while (!this.stopping) {
      if (this.paused) {
        await this.sleep(60_000);
        continue;
      }
      const batch = o.log.readBatch(o.log.stats().cursor, o.maxBatchEvents, o.maxBatchBytes);
      if (batch.length === 0) {
        if (this.state === 'starting' || this.state === 'down') await this.probe();
        if (!this.stopping && o.log.stats().backlogEvents === 0) await this.sleep(this.state === 'down' ? this.backoff.next() : 5_000);
        continue;
      }
      await this.sendBatch(batch);
    }
  }

  /** With nothing to send, a connect tells status whether Kafka is reachable. */
  private async probe(): Promise<void> {
    try {
      await this.withDeadline(this.o.sink.connect());
      this.setState('up');
    } catch (e) {
      this.setState('down', describeKafkaError(e));
      await this.o.sink.disconnect();
    }
  }

  private toRecord(e: StoredEvent): OutRecord {
    const headers: Record<string, string> = { ...(e.headers ?? {}) };
    headers['kedge-id'] = `${this.o.agentId}:${e.seq}`;
    headers['kedge-ingest-ts'] = String(e.ts);
    return { topic: this.o.topicPrefix + e.topic, key: e.key, value: e.value, timestamp: e.ts, headers };
  }

  private withDeadline<T>(p: Promise<T>): Promise<T> {
    const ms = this.o.sendDeadlineMs;
    let timer: NodeJS.Timeout;
    return Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new SendDeadlineError(ms)), ms);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  private async sendBatch(batch: StoredEvent[]): Promise<void> {
    const o = this.o;
    const started = process.hrtime.bigint();
    try {
      await this.withDeadline(o.sink.send(batch.map((e) => this.toRecord(e))));
    } catch (e) {
      const permanent = permanentReason(e);
      if (permanent) return this.isolate(batch, false);
      if (errorTypes(e).has('UNKNOWN_TOPIC_OR_PARTITION')) {
        this.unknownTopicSince ??= Date.now();
        if (Date.now() - this.unknownTopicSince >= o.unknownTopicGraceMs) {
          this.unknownTopicSince = null;
          return this.isolate(batch, true);
        }
      } else this.unknownTopicSince = null;
      await this.onFailure(e);
      return;
    }
    o.metrics.sendSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
    o.metrics.batchEvents.observe(batch.length);
    this.acknowledge(batch);
  }

  private acknowledge(batch: StoredEvent[]): void {
    const o = this.o;
    o.log.ack(batch[batch.length - 1].seq);
    const perTopic = new Map<string, [number, number]>();
    for (const e of batch) {
      const c = perTopic.get(e.topic) ?? [0, 0];
      c[0]++;
      c[1] += e.value.length + (e.key?.length ?? 0);
      perTopic.set(e.topic, c);
    }
    for (const [topic, [n, bytes]] of perTopic) {
      o.metrics.forwardedEvents.inc({ topic }, n);
      o.metrics.forwardedBytes.inc({ topic }, bytes);
    }
    this.lastForwardAt = Date.now();
    this.backoff.reset();
    this.setState('up');
  }

  private async onFailure(e: unknown): Promise<void> {
    const reason = describeKafkaError(e);
    this.o.metrics.sendErrors.inc({ kind: e instanceof SendDeadlineError ? 'timeout' : 'error' });
    // A fresh producer after a failure: kafkajs' idempotent sequence state can be
    // out of step with the broker after a timeout, which would fail every later send.
    await this.o.sink.disconnect();
    const recentlyUp = this.lastForwardAt !== null && Date.now() - this.lastForwardAt < 60_000;
    this.setState(recentlyUp && this.backoff.failures < 3 ? 'degraded' : 'down', reason);
    const wait = this.backoff.next();
    this.o.logger.debug({ reason, retryInMs: wait }, 'send failed; will retry');
    await this.sleep(wait);
  }

  /**
   * Kafka refused something in the batch for good. Send the records one by one,
   * in order, so only the refused ones are dead-lettered and the rest go through.
   */
  private async isolate(batch: StoredEvent[], unknownTopicIsPermanent: boolean): Promise<void> {
    const o = this.o;
    // Topics found uncreatable in this pass: their other events are not sent again one by one.
    const deadTopics = new Map<string, string>();
    const dead = new Map<string, { topic: string; reason: string; count: number; firstSeq: number; bytes: number }>();
    const report = () => {
      // One line per topic and reason for the pass, not one per event.
      for (const d of dead.values()) {
        o.logger.error({ topic: o.topicPrefix + d.topic, reason: d.reason, events: d.count, firstSeq: d.firstSeq, bytes: d.bytes },
          'Kafka refused events for good; moved them to the dead-letter table (see /v1/status)');
      }
    };
    for (const ev of batch) {
      if (this.stopping) return report();
      let permanent: string | null = null;
      let detail = deadTopics.get(ev.topic) ?? '';
      if (deadTopics.has(ev.topic)) permanent = 'UNKNOWN_TOPIC_OR_PARTITION';
      else {
        try {
          await this.withDeadline(o.sink.send([this.toRecord(ev)]));
          this.acknowledge([ev]);
          continue;
        } catch (e) {
          permanent = permanentReason(e);
          if (!permanent && unknownTopicIsPermanent && errorTypes(e).has('UNKNOWN_TOPIC_OR_PARTITION')) {
            permanent = 'UNKNOWN_TOPIC_OR_PARTITION';
            deadTopics.set(ev.topic, describeKafkaError(e));
          }
          if (!permanent) {
            report();
            await this.onFailure(e);
            return;
          }
          detail = describeKafkaError(e);
        }
      }
      {
        const reason = `${permanent}: ${detail}`;
        o.log.deadLetter(ev, reason);
        o.metrics.deadLettered.inc({ topic: ev.topic, reason: permanent });
        const k = `${ev.topic}\u0000${permanent}`;
        const d = dead.get(k) ?? { topic: ev.topic, reason: permanent, count: 0, firstSeq: ev.seq, bytes: 0 };
        d.count++;
        d.bytes += ev.value.length;
        dead.set(k, d);
      }
    }
    report();
  }
}
