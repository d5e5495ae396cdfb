/**
 * The Kafka thread (agent/kafka/kafka-thread.ts): every producer runs in a worker thread,
 * and what crosses between the threads must arrive whole.
 * - Binary keys and values, headers and timestamps reach Kafka byte for byte with either
 *   client (read back with kcat), and the wire count the rate cap uses grows with them.
 * - A refusal keeps its meaning across the thread boundary (the forwarder dead-letters on it).
 * - A thread that dies (here: its own heap limit) fails the call in flight as a transient
 *   error, which the forwarder retries, and the next call runs on a new thread.
 */
import t from 'tap';
import { Writable } from 'node:stream';
import { startKafka } from '../scripts/kafka/kafka.ts';
import { consume } from './helpers/kcat.ts';
import { KafkaThread } from '../agent/kafka/kafka-thread.ts';
import { classifySendError, describeKafkaError } from '../agent/kafka/classify.ts';
import type { OutRecord } from '../agent/kafka/record-sink.ts';
import type { Config } from '../agent/config.ts';
import { createLogger } from '../agent/observe/logger.ts';

const kafka = await startKafka({ brokers: 1 });
t.teardown(() => kafka.stop());

function kafkaConfig(client: Config['kafka']['client']): Config['kafka'] {
  return {
    client,
    brokers: kafka.bootstrap.split(','),
    tls: false,
    caFile: null,
    certFile: null,
    keyFile: null,
    sasl: null,
    compression: 'zstd',
    topicPrefix: '',
  };
}

function logLines(): { lines: string[]; stream: Writable } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      cb();
    },
  });
  return { lines, stream };
}

/** Every byte value, in a different order per record; keys of several lengths. */
function records(topic: string, n: number, from = 0): OutRecord[] {
  const out: OutRecord[] = [];
  for (let i = from; i < from + n; i++) {
    const value = Buffer.alloc(256 + (i % 7));
    for (let b = 0; b < value.length; b++) value[b] = (b + i) & 0xff;
    out.push({
      topic,
      key: i % 5 === 0 ? null : Buffer.from(`k${i % 3}\u0000${'é'.repeat(i % 4)}`),
      value,
      timestamp: 1_700_000_000_000 + i,
      headers: { 'kedge-id': `thread-test:${i}` },
    });
  }
  return out;
}

for (const client of ['platformatic', 'kafkajs'] as const) {
  t.test(
    `${client}: records cross the thread byte for byte, and the wire count grows`,
    async (tt) => {
      const { stream } = logLines();
      const thread = new KafkaThread({ logger: createLogger('warn', stream) });
      tt.teardown(() => thread.close());
      const sink = thread.sink({
        kafka: kafkaConfig(client),
        clientId: `thread-test-${client}`,
        requestTimeoutMs: 30_000,
      });
      const topic = `thread.${client}`;
      const sent: OutRecord[] = [];
      const wire: number[] = [thread.wire.total()];
      for (let b = 0; b < 3; b++) {
        const batch = records(topic, 400, b * 400);
        sent.push(...records(topic, 400, b * 400));
        await sink.send(batch);
        wire.push(thread.wire.total());
      }
      await sink.disconnect();
      tt.equal(wire[0], 0, 'nothing on the wire before the first call');
      for (let i = 1; i < wire.length; i++)
        tt.ok(
          wire[i] > wire[i - 1],
          `send ${i}: the wire count grew (${wire[i - 1]} → ${wire[i]})`,
        );

      const got = await consume(kafka.bootstrap, topic, { expect: sent.length, timeoutMs: 60_000 });
      tt.equal(got.length, sent.length, 'every record is in Kafka');
      const byId = new Map(got.map((r) => [r.headers['kedge-id'], r]));
      let exact = 0;
      for (const s of sent) {
        const r = byId.get(s.headers['kedge-id']);
        if (!r) continue;
        if (
          r.value.equals(s.value) &&
          (s.key === null ? r.key === null : r.key?.equals(s.key)) &&
          r.timestamp === s.timestamp
        )
          exact++;
      }
      tt.equal(exact, sent.length, 'keys, values, headers and timestamps arrive unchanged');
    },
  );
}

t.test('a refusal keeps its meaning across the thread', async (tt) => {
  const { stream } = logLines();
  const thread = new KafkaThread({ logger: createLogger('warn', stream) });
  tt.teardown(() => thread.close());
  const sink = thread.sink({
    kafka: kafkaConfig('platformatic'),
    clientId: 'thread-test-refusal',
    requestTimeoutMs: 30_000,
  });
  // Over the broker's message.max.bytes (1 MiB by default), even compressed: random bytes.
  const big = Buffer.alloc(3 * 1024 * 1024);
  for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i);
  const err = await sink
    .send([{ topic: 'thread.refusal', key: null, value: big, timestamp: Date.now(), headers: {} }])
    .then(
      () => null,
      (e: unknown) => e,
    );
  tt.ok(err, 'the send fails');
  tt.same(
    classifySendError(err),
    { kind: 'permanent', type: 'MESSAGE_TOO_LARGE' },
    'classified as a permanent refusal: the forwarder dead-letters it',
  );
  tt.match(describeKafkaError(err), /MESSAGE_TOO_LARGE/, 'described with the broker error');
  await sink.disconnect();
});

t.test(
  'a thread that dies fails its call as transient, and the next call runs on a new one',
  async (tt) => {
    const { lines, stream } = logLines();
    // A small heap (room for the client, under tap's loaders too): a batch of 800,000
    // records cannot even be copied into it.
    const thread = new KafkaThread({
      logger: createLogger('warn', stream),
      resourceLimits: { maxOldGenerationSizeMb: 64, maxYoungGenerationSizeMb: 4 },
    });
    tt.teardown(() => thread.close());
    const sink = thread.sink({
      kafka: kafkaConfig('platformatic'),
      clientId: 'thread-test-death',
      requestTimeoutMs: 30_000,
    });
    const topic = 'thread.death';
    await sink.send(records(topic, 10, 0));

    const huge: OutRecord[] = [];
    for (let i = 0; i < 800_000; i++)
      huge.push({
        topic,
        key: null,
        value: Buffer.from(`huge ${i}`),
        timestamp: Date.now(),
        headers: { 'kedge-id': `huge:${i}`, a: 'x'.repeat(40), b: 'y'.repeat(40) },
      });
    const err = await sink.send(huge).then(
      () => null,
      (e: unknown) => e,
    );
    tt.ok(err, 'the call in flight fails');
    tt.same(classifySendError(err), { kind: 'transient', type: null }, 'as a transient error');
    tt.match(describeKafkaError(err), /Kafka thread ended/, 'saying the Kafka thread ended');
    tt.ok(
      lines.some((l) => l.includes('the Kafka thread failed')),
      'the failure is logged',
    );

    const wireBefore = thread.wire.total();
    await sink.send(records(topic, 10, 10));
    tt.ok(thread.wire.total() > wireBefore, 'the wire count goes on from where it was');
    await sink.disconnect();
    const got = await consume(kafka.bootstrap, topic, { expect: 20, timeoutMs: 60_000 });
    const ids = got.map((r) => Number(r.headers['kedge-id'].replace('thread-test:', '')));
    tt.same(
      [...ids].sort((a, b) => a - b),
      Array.from({ length: 20 }, (_, i) => i),
      'the batches before and after are in Kafka, and nothing of the failed one',
    );
    const partitions = new Set(got.map((r) => r.partition));
    for (const p of partitions) {
      const inP = ids.filter((_, i) => got[i].partition === p);
      tt.same(
        inP,
        [...inP].sort((a, b) => a - b),
        `partition ${p}: in the order sent`,
      );
    }
  },
);
