/**
 * kafkajs 2.2.4's send() can resolve without writing a partition: when the partition's
 * leader dies mid-send and, by kafkajs' own retry, the new leader is a broker that
 * already answered for other partitions of the same send, that partition is never sent
 * again (producer/sendMessages.js keeps answers per broker across retries). KafkaSink
 * must refuse such a send so the forwarder sends the batch again.
 */
import t from 'tap';
import { createRequire } from 'node:module';
import { KafkaSink, type OutRecord } from '../agent/kafka/producer.ts';
import { IncompleteSendError } from '../agent/errors.ts';

const require = createRequire(import.meta.url);
const createSendMessages = require('kafkajs/src/producer/sendMessages');
const createRetry = require('kafkajs/src/retry');
const { KafkaJSConnectionError } = require('kafkajs/src/errors');

/** A fake 3-broker cluster driven through kafkajs' real sendMessages; broker 1 leads partition 0 and dies on its first produce. */
function failoverProducer(opts: { createPartitioner: () => (a: unknown) => number }) {
  let leaders: Record<number, number> = { 0: 1, 1: 2, 2: 3 };
  const written: Record<number, string[]> = { 0: [], 1: [], 2: [] };
  const broker = (nodeId: number) => ({
    nodeId,
    async produce({ topicData }: any) {
      if (nodeId === 1) {
        leaders = { 0: 2, 1: 2, 2: 3 }; // the election is over by kafkajs' next retry
        throw new KafkaJSConnectionError('Connection error: ECONNREFUSED', { host: 'b1', port: 1 });
      }
      const partitions = [];
      for (const td of topicData)
        for (const p of td.partitions) {
          written[p.partition].push(...p.messages.map((m: any) => String(m.value)));
          partitions.push({ partition: p.partition, errorCode: 0, baseOffset: '0' });
        }
      return { topics: [{ topicName: topicData[0].topic, partitions }] };
    },
  });
  const brokers: Record<number, unknown> = { 1: broker(1), 2: broker(2), 3: broker(3) };
  const cluster = {
    async refreshMetadataIfNecessary() {},
    async refreshMetadata() {},
    async addMultipleTargetTopics() {},
    isConnected: () => true,
    removeBroker() {},
    targetTopics: new Set(),
    findTopicPartitionMetadata: () =>
      [0, 1, 2].map((partitionId) => ({ partitionId, leader: leaders[partitionId] })),
    findLeaderForPartitions(_topic: string, partitions: string[]) {
      const out: Record<number, number[]> = {};
      for (const p of partitions) (out[leaders[Number(p)]] ??= []).push(Number(p));
      return out;
    },
    async findBroker({ nodeId }: { nodeId: number }) {
      return brokers[nodeId];
    },
  };
  const seq: Record<number, number> = {};
  const eosManager = {
    isTransactional: () => false,
    acquireBrokerLock: async () => {},
    releaseBrokerLock: async () => {},
    getSequence: (_t: string, p: number) => seq[p] ?? 0,
    updateSequence: (_t: string, p: number, n: number) => {
      seq[p] = (seq[p] ?? 0) + n;
    },
    getProducerId: () => 1,
    getProducerEpoch: () => 0,
  };
  const logger = { debug() {}, error() {}, info() {}, warn() {} };
  const send = createSendMessages({
    logger,
    cluster,
    partitioner: opts.createPartitioner(),
    eosManager,
    retrier: createRetry({ retries: 3, initialRetryTime: 20 }),
  });
  return {
    written,
    async connect() {},
    async disconnect() {},
    sendBatch: (b: any) => send(b),
  };
}

function sinkWithFailover() {
  const noop = () => {};
  const logger: any = { debug: noop, info: noop, warn: noop, error: noop, child: () => logger };
  const sink = new KafkaSink({
    kafka: { brokers: ['127.0.0.1:1'], tls: false, compression: 'none' } as any,
    clientId: 't',
    requestTimeoutMs: 1000,
    logger,
  });
  let fake: ReturnType<typeof failoverProducer> | null = null;
  (sink as any).kafka = {
    producer: (o: any) => (fake = failoverProducer(o)),
  };
  return { sink, written: () => fake!.written };
}

const rec = (key: string | null, v: string): OutRecord => ({
  topic: 't',
  key: key === null ? null : Buffer.from(key),
  value: Buffer.from(v),
  timestamp: 0,
  headers: {},
});

t.test('a send kafkajs resolves without writing a partition is refused', async (t) => {
  const { sink, written } = sinkWithFailover();
  const keys = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', null, null, null, null];
  await t.rejects(
    sink.send(keys.map((k, i) => rec(k, `ev${i}`))),
    IncompleteSendError,
    'not acknowledged: partition 0 was never written',
  );
  t.same(written()[0], [], 'kafkajs really skipped partition 0 (the bug this guards against)');
  t.ok(written()[1].length + written()[2].length > 0, 'other partitions were written');
});
