/**
 * A key lands in the same partition whichever Kafka client kedge runs
 * (KEDGE_KAFKA_CLIENT=kafkajs|platformatic), and the same one librdkafka's Java-compatible
 * partitioner (murmur2_random, what a Java producer uses) picks: the same keyed events go
 * through an agent with each client, and kcat produces them too, each into its own
 * 12-partition topic; kcat reads every topic back and the key → partition maps must agree.
 * Keys of every length modulo 4 (murmur2's tail), non-ASCII and binary-looking ones.
 */
import t, { type Test } from 'tap';
import { Admin } from '@platformatic/kafka';
import { startKafka } from '../scripts/kafka/kafka.ts';
import { consume, kcatProduce } from './helpers/kcat.ts';
import { AgentProc, cleanup, post, tempDir } from './helpers/agent.ts';

const PARTITIONS = 12;
const CLIENTS = ['kafkajs', 'platformatic'] as const;

const kafka = await startKafka({ brokers: 1 });
t.teardown(() => kafka.stop());

const keys: string[] = [];
for (let i = 0; i < 200; i++) keys.push(`k${'x'.repeat(i % 9)}${i}`);
keys.push('a', 'ab', 'abc', 'abcd', 'sensor/ünïcødé/✓', 'site42.line3.press7', '0', '-1', ' ');

// (kafkajs' admin, in createTopic, crashed here on an unhandled rejection while waiting for the leaders)
const admin = new Admin({ clientId: 'kedge-test', bootstrapBrokers: kafka.bootstrap.split(',') });
await admin.createTopics({
  topics: [...CLIENTS.map((c) => `${c}.keys`), 'kcat.keys'],
  partitions: PARTITIONS,
  replicas: 1,
});
await admin.close();

/** key → partition of every record in `topic`, checking no key sits in two partitions. */
async function partitionsOf(tt: Test, topic: string, expect: number): Promise<Map<string, number>> {
  const recs = await consume(kafka.bootstrap, topic, { expect, timeoutMs: 60_000 });
  tt.equal(recs.length, expect, `${topic}: every record`);
  const map = new Map<string, number>();
  for (const r of recs) {
    if (r.key === null) continue; // no key: round-robin
    const key = r.key.toString();
    const before = map.get(key);
    if (before !== undefined && before !== r.partition)
      tt.fail(`${topic}: key ${JSON.stringify(key)} in partitions ${before} and ${r.partition}`);
    map.set(key, r.partition);
  }
  return map;
}

t.test(
  'the same key lands in the same partition with either client, as with librdkafka',
  async (tt) => {
    await kcatProduce(
      kafka.bootstrap,
      'kcat.keys',
      keys.map((key, i) => ({ key, value: `v${i}` })),
      { kcatArgs: ['-X', 'partitioner=murmur2_random'], timeoutMs: 60_000 },
    );
    const reference = await partitionsOf(tt, 'kcat.keys', keys.length);
    tt.ok(
      new Set(reference.values()).size >= PARTITIONS - 1,
      'the keys spread over the partitions',
    );

    for (const client of CLIENTS) {
      const dir = tempDir();
      const agent = await AgentProc.start({
        env: {
          KEDGE_DATA_DIR: dir,
          KEDGE_KAFKA_BROKERS: kafka.bootstrap,
          KEDGE_KAFKA_CLIENT: client,
          KEDGE_TOPIC_PREFIX: `${client}.`,
        },
      });
      try {
        tt.ok(
          agent.lines.some((l) => l.includes('"forwarding to Kafka"') && l.includes(`"${client}"`)),
          `the agent runs ${client}`,
        );
        // Two events per key, in two requests, and a few without a key (round-robin, any partition).
        for (let round = 0; round < 2; round++) {
          const body = JSON.stringify({
            records: keys.map((key, i) => ({ key, value: { i, round } })),
          });
          const res = await post(`${agent.base}/v1/topics/keys`, body, 'application/json');
          tt.equal(res.status, 200, `${client}: round ${round} accepted`);
        }
        const nokey = JSON.stringify({ records: [{ value: 1 }, { value: 2 }, { value: 3 }] });
        tt.equal(
          (await post(`${agent.base}/v1/topics/keys`, nokey, 'application/json')).status,
          200,
        );
        await agent.waitDrained(60_000);
        const got = await partitionsOf(tt, `${client}.keys`, 2 * keys.length + 3);
        const moved = keys.filter((k) => got.get(k) !== reference.get(k));
        tt.same(moved, [], `${client}: every key in librdkafka's (Java's) partition`);
      } finally {
        await agent.stop();
        cleanup(dir);
      }
    }
  },
);
