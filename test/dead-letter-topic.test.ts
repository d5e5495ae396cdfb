/**
 * A topic that cannot be created (auto-creation disabled on the broker) must not
 * block the log for ever: after a grace period its events are dead-lettered,
 * counted and logged once; the events of other topics keep their order.
 * The agent runs in-process here only to shorten the grace period (tuning).
 */
import t from 'tap';
import { Writable } from 'node:stream';
import { createTopic, startKafka } from '../scripts/kafka/kafka.ts';
import { loadConfig } from '../agent/config.ts';
import { Agent } from '../agent/agent.ts';
import { createLogger } from '../agent/observe/logger.ts';
import { consume } from './helpers/kcat.ts';
import {
  cleanup,
  freeLoopbackPort,
  post,
  sleep,
  TEST_KAFKA_CLIENT,
  tempDir,
} from './helpers/agent.ts';

const kafka = await startKafka({
  brokers: 1,
  extraProps: { 'auto.create.topics.enable': 'false' },
});
await createTopic(kafka.bootstrap, 'exists', 3);
const dir = tempDir();
const port = await freeLoopbackPort();
const lines: string[] = [];
const sink = new Writable({
  write(chunk, _enc, cb) {
    lines.push(...chunk.toString().split('\n').filter(Boolean));
    cb();
  },
});
const cfg = loadConfig({
  KEDGE_DATA_DIR: dir,
  KEDGE_KAFKA_BROKERS: kafka.bootstrap,
  KEDGE_HTTP_LISTEN: `127.0.0.1:${port}`,
  KEDGE_HEARTBEAT_TOPIC: '',
  ...TEST_KAFKA_CLIENT,
});
const agent = new Agent(cfg, createLogger('info', sink), {
  unknownTopicGraceMs: 3_000,
  backoffMaxMs: 1_000,
});
await agent.start();
t.teardown(async () => {
  await agent.stop();
  await kafka.stop();
  cleanup(dir);
});
const base = `http://127.0.0.1:${port}`;

t.test('events of an uncreatable topic are dead-lettered; the rest flows in order', async (tt) => {
  const sent: string[] = [];
  for (let i = 0; i < 30; i++) {
    const topic = i % 3 === 1 ? 'nope' : 'exists';
    const r = await post(`${base}/v1/topics/${topic}?key=k`, `{"i":${i}}`, 'application/json');
    tt.equal(r.status, 200);
    if (topic === 'exists') sent.push(`{"i":${i}}`);
  }
  const deadline = Date.now() + 120_000;
  let s: any;
  while (Date.now() < deadline) {
    s = await (await fetch(`${base}/v1/status`)).json();
    if (s.backlog.events === 0) break;
    await sleep(500);
  }
  tt.equal(s.backlog.events, 0, 'the log is not blocked');
  tt.equal(s.dead_letters.events, 10, 'the 10 events of the uncreatable topic are dead letters');
  tt.match(s.dead_letters.recent[0].reason, /UNKNOWN_TOPIC_OR_PARTITION/);
  const recs = await consume(kafka.bootstrap, 'exists', { timeoutMs: 30_000 });
  const got = [...new Set(recs.map((r) => r.value.toString()))];
  tt.same(got, sent, 'the other topic got all its events, in order');
  const m = await (await fetch(`${base}/metrics`)).text();
  tt.match(
    m,
    /^kedge_dead_letters_total\{topic="nope",reason="UNKNOWN_TOPIC_OR_PARTITION"\} 10$/m,
    'counted',
  );
  const logged = lines.filter((l) => l.includes('dead-letter'));
  tt.ok(
    logged.length >= 1 && logged.length <= 3,
    `logged once per pass, not per event (${logged.length} lines)`,
  );
});
