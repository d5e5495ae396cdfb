/**
 * MQTT client mode keeps up with a burst (issue 13, item 4): a stock Mosquitto
 * (max_queued_messages 1000) in front of kedge, one publisher sending 2,000
 * QoS 1 messages with `mosquitto_pub -l`, KEDGE_SYNC=full. Every message must
 * reach Kafka (read back with kcat), in publish order: when kedge consumes one
 * message per fsync, Mosquitto's queue for kedge's session overflows and it
 * drops the rest ("Outgoing messages are being dropped for client kedge-…").
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { startKafka } from '../scripts/kafka/kafka.ts';
import { consume } from './helpers/kcat.ts';
import { Mosquitto } from './helpers/mosquitto.ts';
import { AgentProc, cleanup, sleep, tempDir } from './helpers/agent.ts';

const kafka = await startKafka({ brokers: 1 });
const dirs: string[] = [];
t.teardown(async () => {
  await kafka.stop();
  dirs.forEach(cleanup);
});

/** `mosquitto_pub -l`: one connection, one message per stdin line, QoS 1. */
function mosquittoPubLines(port: number, topic: string, lines: string[]): Promise<void> {
  const child = spawn(
    'mosquitto_pub',
    ['-h', '127.0.0.1', '-p', String(port), '-q', '1', '-t', topic, '-l', '-i', 'burst-pub'],
    { stdio: ['pipe', 'ignore', 'pipe'] },
  );
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  child.stdin.end(lines.join('\n') + '\n');
  return new Promise((resolve, reject) =>
    child.once('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`mosquitto_pub exit ${code}: ${err}`)),
    ),
  );
}

/** kedge in client mode on `mosq`, a fresh data dir, KEDGE_SYNC=full, everything to one Kafka topic. */
function clientEnv(mosq: Mosquitto, kafkaTopic: string, agentId: string): Record<string, string> {
  const dataDir = tempDir();
  dirs.push(dataDir);
  return {
    KEDGE_DATA_DIR: dataDir,
    KEDGE_SYNC: 'full',
    KEDGE_KAFKA_BROKERS: kafka.bootstrap,
    KEDGE_MQTT_URL: mosq.url,
    KEDGE_MQTT_KAFKA_TOPIC: kafkaTopic,
    KEDGE_AGENT_ID: agentId,
  };
}

/** Polls kedge's status until `ingested` stops moving for `quietMs` (or reaches `want`). */
async function waitIngestSettled(agent: AgentProc, want: number, quietMs: number) {
  let last = -1;
  let since = Date.now();
  for (;;) {
    const n = (await agent.status()).mqtt.client.ingested as number;
    if (n >= want) return n;
    if (n !== last) {
      last = n;
      since = Date.now();
    } else if (Date.now() - since > quietMs) return n;
    await sleep(100);
  }
}

t.test(
  'a 2,000-message QoS 1 burst via a stock Mosquitto reaches Kafka whole and in order (sync full)',
  async (tt) => {
    const mosq = await Mosquitto.start({ stockQueue: true });
    tt.teardown(() => mosq.cleanup());
    const agent = await AgentProc.start({
      env: { ...clientEnv(mosq, 'burst-all', 'burst-agent'), KEDGE_MQTT_TOPICS: 'burst/#' },
    });
    tt.teardown(() => agent.stop());
    for (let i = 0; i < 100 && !(await agent.status()).mqtt.client.subscribed; i++)
      await sleep(100);

    const N = 2000;
    const lines = Array.from({ length: N }, (_, i) => `{"n":${i},"pad":"${'x'.repeat(150)}"}`);
    const t0 = performance.now();
    await mosquittoPubLines(mosq.port, 'burst/one', lines);
    const ingested = await waitIngestSettled(agent, N, 3_000);
    const ms = performance.now() - t0;
    await agent.waitDrained(60_000);
    const recs = await consume(kafka.bootstrap, 'burst-all', { expect: N, timeoutMs: 20_000 });
    // At-least-once: a redelivery after a reconnect may repeat a message; drop exact repeats.
    const got: number[] = [];
    for (const r of recs.sort((a, b) => a.partition - b.partition || a.offset - b.offset)) {
      const n = JSON.parse(r.value.toString()).n as number;
      if (!got.includes(n)) got.push(n);
    }
    const drops = (mosq.output().match(/Outgoing messages are being dropped/g) ?? []).length;
    tt.comment(
      `burst: ${got.length} of ${N} distinct messages in Kafka (${recs.length} records), ` +
        `kedge ingested ${ingested} in ${ms.toFixed(0)} ms; Mosquitto drop warnings: ${drops}`,
    );
    tt.equal(got.length, N, 'all 2,000 messages reached Kafka');
    tt.same(
      got,
      Array.from({ length: N }, (_, i) => i),
      'in publish order',
    );
    tt.equal(drops, 0, 'Mosquitto dropped nothing');
  },
);

t.test("Mosquitto's drop counter: a metric and a warning, never an event", async (tt) => {
  const mosq = await Mosquitto.start({ stockQueue: true, extraConfig: ['sys_interval 1'] });
  tt.teardown(() => mosq.cleanup());
  // The default filter, '#': it does not match $SYS/ topics, the drop counter's own subscription does.
  const env = clientEnv(mosq, 'drops-all', 'drops-agent');
  let agent = await AgentProc.start({ env });
  for (let i = 0; i < 100 && !(await agent.status()).mqtt.client.subscribed; i++) await sleep(100);
  await agent.stop();
  // kedge is away: its session queue (max_queued_messages 1000) overflows.
  const N = 1500;
  await mosquittoPubLines(
    mosq.port,
    'drop/x',
    Array.from({ length: N }, (_, i) => `d-${i}`),
  );
  agent = await AgentProc.start({ env, port: agent.port });
  tt.teardown(() => agent.stop());
  const metric = async () => {
    const text = await (await fetch(`${agent.base}/metrics`)).text();
    return Number(/^kedge_mqtt_broker_dropped_messages (\d+)/m.exec(text)?.[1] ?? -1);
  };
  let dropped = 0;
  for (let i = 0; i < 50 && dropped <= 0; i++) {
    dropped = await metric();
    await sleep(200);
  }
  const ingested = await waitIngestSettled(agent, N, 3_000);
  tt.comment(`Mosquitto dropped ${dropped}; kedge stored ${ingested} of ${N}`);
  tt.ok(dropped > 0, 'kedge_mqtt_broker_dropped_messages shows the drops');
  tt.equal(ingested + dropped, N, 'what was not dropped was stored (the counter is exact here)');
  tt.ok(
    agent.lines.some((l) => l.includes('the MQTT broker is dropping messages')),
    'a warning was logged',
  );
  await agent.waitDrained(60_000);
  const recs = await consume(kafka.bootstrap, 'drops-all', { expect: ingested, timeoutMs: 20_000 });
  tt.equal(recs.length, ingested, 'every record in Kafka is a published message');
  tt.ok(
    recs.every((r) => r.headers['mqtt-topic'] === 'drop/x'),
    'no $SYS message became an event',
  );
});
