/**
 * Issue 11, the forwarder loop against a fake Kafka (Kafka is not what is under
 * test here; test/disk-full-kafka-up.test.ts runs the real thing):
 * - the unknown-topic grace is per topic and restarts after a successful send, so
 *   a transient blip hours after an old one dead-letters nothing; an ACL not yet
 *   propagated (TOPIC_AUTHORIZATION_FAILED) gets the same grace; a topic that stays
 *   unknown past the grace is still dead-lettered while the others flow;
 * - a log write that fails after Kafka acknowledged (disk full) never stops the
 *   loop: the link shows `degraded` with the reason, the ack is retried (not the
 *   send), and once it works the backlog drains with no duplicate.
 */
import t, { type Test } from 'tap';
import { Forwarder } from '../agent/forward/forwarder.ts';
import type { OutRecord, RecordSink } from '../agent/kafka/producer.ts';
import { openLog, LogWriteError } from '../agent/log/index.ts';
import type { EventLog, Lane } from '../agent/log/index.ts';
import { Metrics } from '../agent/observe/metrics.ts';
import { createLogger } from '../agent/observe/logger.ts';
import { cleanup, sleep, tempDir } from './helpers/agent.ts';

/** Shaped like kafkajs' KafkaJSProtocolError (the forwarder classifies by `type`), wrapped as its retry layer does. */
function kafkaError(type: string): Error {
  const inner = Object.assign(
    new Error(`This server does not host this topic-partition (${type})`),
    { name: 'KafkaJSProtocolError', type, retriable: true },
  );
  return Object.assign(new Error(inner.message), {
    name: 'KafkaJSNumberOfRetriesExceeded',
    cause: inner,
  });
}

class FakeKafka implements RecordSink {
  readonly received: OutRecord[] = [];
  sends = 0;
  /** Errors the next sends fail with, one each, in order. */
  readonly failures: Error[] = [];
  /** Topics Kafka refuses on every send that holds one (no such topic). */
  readonly unknownTopics = new Set<string>();
  async connect(): Promise<void> {}
  async disconnect(): Promise<void> {}
  async send(records: OutRecord[]): Promise<void> {
    this.sends++;
    const f = this.failures.shift();
    if (f) throw f;
    if (records.some((r) => this.unknownTopics.has(r.topic)))
      throw kafkaError('UNKNOWN_TOPIC_OR_PARTITION');
    this.received.push(...records);
  }
}

interface Setup {
  log: EventLog;
  fwd: Forwarder;
  metrics: Metrics;
  append(topic: string, n: number): Promise<void>;
  drained(): boolean;
}

let counter = 0;
async function setup(
  t: Test,
  kafka: FakeKafka,
  opts: { graceMs: number; wrapLog?: (log: EventLog) => EventLog },
): Promise<Setup> {
  const dir = tempDir();
  const real = await openLog({ dir, driver: 'sqlite', sync: 'normal' });
  const log = opts.wrapLog ? opts.wrapLog(real) : real;
  const metrics = new Metrics();
  const fwd = new Forwarder({
    log,
    sink: kafka,
    agentId: 'a',
    topicPrefix: '',
    maxBatchEvents: 100,
    maxBatchBytes: 1024 * 1024,
    sendDeadlineMs: 5_000,
    backoffMinMs: 10,
    backoffMaxMs: 50,
    unknownTopicGraceMs: opts.graceMs,
    metrics,
    logger: createLogger('error'),
  });
  fwd.start();
  t.teardown(async () => {
    await fwd.stop();
    await real.close();
    cleanup(dir);
  });
  return {
    log,
    fwd,
    metrics,
    async append(topic, n) {
      await real.append(
        Array.from({ length: n }, () => ({
          topic,
          key: Buffer.from('k'),
          value: Buffer.from(JSON.stringify({ i: counter++ })),
          source: 'http' as const,
        })),
      );
    },
    drained: () => real.stats().backlogEvents === 0,
  };
}

/** `log` with one method replaced (the rest bound to the real log): a disk that fails on cue. */
function withMethod<K extends keyof EventLog>(log: EventLog, name: K, impl: EventLog[K]): EventLog {
  return new Proxy(log, {
    get(target, prop, receiver) {
      if (prop === name) return impl;
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

/** A disk that refuses every ack (full) while `failing`: the log's `ack` throws, and is counted. */
class FailingAcks {
  failing = true;
  attempts = 0;
  readonly wrap = (log: EventLog): EventLog =>
    withMethod(log, 'ack', (seq: number, lane?: Lane) => {
      this.attempts++;
      if (this.failing)
        throw new LogWriteError('cannot acknowledge: disk full (injected)', 'KEDGE_DISK_FULL');
      return log.ack(seq, lane);
    });
}

async function until(cond: () => boolean, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(10);
  return cond();
}

function values(recs: OutRecord[], topic?: string): number[] {
  return recs
    .filter((r) => topic === undefined || r.topic === topic)
    .map((r) => JSON.parse(r.value.toString()).i);
}

for (const type of ['UNKNOWN_TOPIC_OR_PARTITION', 'TOPIC_AUTHORIZATION_FAILED']) {
  t.test(
    `${type}: an old blip, then successes, then a new blip past the grace dead-letters nothing`,
    async (t) => {
      const kafka = new FakeKafka();
      const s = await setup(t, kafka, { graceMs: 300 });
      const first = counter;
      kafka.failures.push(kafkaError(type));
      await s.append('a', 20);
      t.ok(await until(s.drained), 'the first blip healed by itself');
      await s.append('a', 20);
      await s.append('b', 20);
      t.ok(await until(s.drained), 'successes on both topics');
      await sleep(500); // past the grace since the first blip
      // A new blip long after the old one: the batch fails, and so does the next try.
      kafka.failures.push(kafkaError(type), kafkaError(type));
      await s.append('b', 20);
      await s.append('a', 20);
      t.ok(await until(s.drained), 'the new blip healed by itself');
      t.equal(s.log.stats().deadLetters, 0, 'no event dead-lettered');
      t.same(
        values(kafka.received).sort((x, y) => x - y),
        Array.from({ length: 100 }, (_, i) => first + i),
        'every event delivered once',
      );
      t.same(
        values(kafka.received, 'a'),
        [...values(kafka.received, 'a')].sort((x, y) => x - y),
        'in order per topic',
      );
    },
  );
}

t.test(
  'a topic that stays unknown past its grace is dead-lettered; the others flow and keep no stale grace',
  async (t) => {
    const kafka = new FakeKafka();
    const s = await setup(t, kafka, { graceMs: 300 });
    kafka.unknownTopics.add('gone');
    const first = counter;
    await s.append('ok', 10);
    await s.append('gone', 5);
    await s.append('ok', 10);
    t.ok(await until(s.drained), 'drained once the grace of "gone" ran out');
    t.equal(s.log.stats().deadLetters, 5, 'the 5 events of "gone" dead-lettered');
    t.same(
      values(kafka.received, 'ok'),
      [
        ...Array.from({ length: 10 }, (_, i) => first + i),
        ...Array.from({ length: 10 }, (_, i) => first + 15 + i),
      ],
      'the others delivered in order',
    );
    t.same(
      s.log.listDeadLetters(10).map((d) => d.topic),
      ['gone', 'gone', 'gone', 'gone', 'gone'],
    );
    // "ok" had no error of its own: a blip on it now is retried, not dead-lettered.
    kafka.failures.push(
      kafkaError('UNKNOWN_TOPIC_OR_PARTITION'),
      kafkaError('UNKNOWN_TOPIC_OR_PARTITION'),
    );
    await s.append('ok', 10);
    t.ok(await until(s.drained));
    t.equal(s.log.stats().deadLetters, 5, 'no more dead letters');
  },
);

t.test(
  'an ack that cannot be written (disk full): degraded with the reason, ack retried, no resend, no crash',
  async (t) => {
    const kafka = new FakeKafka();
    const disk = new FailingAcks();
    const s = await setup(t, kafka, { graceMs: 60_000, wrapLog: disk.wrap });
    const first = counter;
    await s.append('a', 50);
    t.ok(await until(() => disk.attempts >= 5), 'the ack is retried');
    t.equal(s.fwd.status().state, 'degraded', 'link state degraded');
    t.match(s.fwd.status().lastError, /disk full/, 'with the reason');
    t.equal(kafka.sends, 1, 'the batch was not sent again meanwhile');
    disk.failing = false;
    t.ok(await until(s.drained), 'drained once the ack could be written');
    await s.append('a', 50);
    t.ok(await until(s.drained));
    t.same(
      values(kafka.received),
      Array.from({ length: 100 }, (_, i) => first + i),
      'every event once, in order',
    );
    t.equal(s.fwd.status().state, 'up', 'up again');
  },
);

t.test(
  'an ack that cannot be written while the next batch is with Kafka: both recorded as one, nothing sent twice',
  async (t) => {
    const kafka = new FakeKafka();
    const disk = new FailingAcks();
    const s = await setup(t, kafka, { graceMs: 60_000, wrapLog: disk.wrap });
    const first = counter;
    await s.append('a', 300);
    t.ok(await until(() => disk.attempts >= 5), 'the ack is retried');
    t.equal(s.fwd.status().state, 'degraded', 'link state degraded');
    t.equal(
      kafka.sends,
      2,
      'the batch in flight when the ack failed finished; nothing was sent again',
    );
    disk.failing = false;
    t.ok(await until(s.drained), 'drained once the ack could be written');
    t.same(
      values(kafka.received),
      Array.from({ length: 300 }, (_, i) => first + i),
      'every event once, in order',
    );
    const counted = (await s.metrics.forwardedEvents.get()).values.find(
      (v) => v.labels.topic === 'a',
    );
    t.equal(counted?.value, 300, 'every event counted once in kedge_forwarded_events_total');
  },
);

t.test(
  'the next batch goes to Kafka before the previous ack is written: the log write never stalls a send',
  async (t) => {
    /** What happened, in order: a send began, Kafka acknowledged it, the log recorded an ack. */
    const trace: string[] = [];
    class TracingKafka extends FakeKafka {
      override async send(records: OutRecord[]): Promise<void> {
        const seqs = records.map((r) => Number(r.headers['kedge-id'].split(':')[1]));
        trace.push(`send ${seqs[0]}-${seqs[seqs.length - 1]}`);
        await sleep(5);
        await super.send(records);
        trace.push(`kafka-ack ${seqs[seqs.length - 1]}`);
      }
    }
    const kafka = new TracingKafka();
    const wrapLog = (log: EventLog): EventLog =>
      withMethod(log, 'ack', (seq: number, lane?: Lane) => {
        trace.push(`log-ack ${seq}`);
        return log.ack(seq, lane);
      });
    const s = await setup(t, kafka, { graceMs: 60_000, wrapLog });
    const first = counter;
    await s.append('a', 500);
    t.ok(await until(s.drained), 'drained');
    t.same(
      values(kafka.received),
      Array.from({ length: 500 }, (_, i) => first + i),
      'every event once, in order',
    );
    const sends = trace.filter((x) => x.startsWith('send '));
    const logAcks = trace.filter((x) => x.startsWith('log-ack '));
    t.equal(sends.length, 5, 'five batches of 100');
    t.equal(logAcks.length, 5, 'each recorded once');
    for (let k = 1; k < sends.length; k++) {
      const prevLast = sends[k - 1].split('-')[1];
      t.ok(
        trace.indexOf(sends[k]) < trace.indexOf(`log-ack ${prevLast}`),
        `${sends[k]} began before the log recorded the ack of seq ${prevLast}`,
      );
    }
    for (const a of logAcks) {
      const seq = a.split(' ')[1];
      t.ok(
        trace.indexOf(`kafka-ack ${seq}`) >= 0 &&
          trace.indexOf(`kafka-ack ${seq}`) < trace.indexOf(a),
        `the cursor moved to ${seq} only after Kafka acknowledged it`,
      );
    }
  },
);

t.test('a read that fails (I/O error) never stops the loop', async (t) => {
  const kafka = new FakeKafka();
  let failReads = 3;
  const wrapLog = (log: EventLog): EventLog =>
    withMethod(log, 'readBatch', (...args: Parameters<EventLog['readBatch']>) => {
      if (failReads > 0) {
        failReads--;
        throw new LogWriteError('disk I/O error (injected)', 'KEDGE_LOG_WRITE');
      }
      return log.readBatch(...args);
    });
  const s = await setup(t, kafka, { graceMs: 60_000, wrapLog });
  const first = counter;
  await s.append('a', 30);
  t.ok(await until(s.drained), 'drained after the failing reads');
  t.equal(failReads, 0, 'the reads did fail');
  t.same(
    values(kafka.received),
    Array.from({ length: 30 }, (_, i) => first + i),
  );
});
