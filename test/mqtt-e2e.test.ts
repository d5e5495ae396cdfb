/**
 * MQTT → Kafka through the real agent process: a real Mosquitto (client mode),
 * the embedded listener, and kcat reading back what reached Kafka.
 */
import t from 'tap';
import { metricSum } from './faults/scenario.ts';
import mqtt from 'mqtt';
import { startKafka } from '../scripts/kafka/kafka.ts';
import { consume } from './helpers/kcat.ts';
import { Mosquitto } from './helpers/mosquitto.ts';
import { AgentProc, cleanup, freeLoopbackPort, sleep, tempDir } from './helpers/agent.ts';

const kafka = await startKafka({ brokers: 1 });
const mosq = await Mosquitto.start();
const dirs: string[] = [];
t.teardown(async () => {
  await mosq.stop();
  await kafka.stop();
  dirs.forEach(cleanup);
});

/** Each connection publishes whole topics, in order, so order per MQTT topic is defined. */
async function publishAll(
  url: string,
  msgs: { topic: string; payload: Buffer }[],
  opts: mqtt.IClientOptions = {},
  concurrency = 1,
) {
  const byTopic = new Map<string, Buffer[]>();
  for (const m of msgs)
    (byTopic.get(m.topic) ?? byTopic.set(m.topic, []).get(m.topic)!).push(m.payload);
  const topics = [...byTopic.keys()];
  const clients = await Promise.all(
    Array.from({ length: Math.min(concurrency, topics.length) }, () =>
      mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, ...opts }),
    ),
  );
  await Promise.all(
    clients.map(async (c, j) => {
      for (let k = j; k < topics.length; k += clients.length) {
        for (const payload of byTopic.get(topics[k])!)
          await c.publishAsync(topics[k], payload, { qos: 1 });
      }
    }),
  );
  await Promise.all(clients.map((c) => c.endAsync()));
}

/** Per MQTT topic, the payloads in Kafka must be the published ones, in publish order (duplicates tolerated). */
function checkPerTopic(
  tt: any,
  recs: Awaited<ReturnType<typeof consume>>,
  msgs: { topic: string; payload: Buffer }[],
) {
  const want = new Map<string, string[]>();
  for (const m of msgs)
    (want.get(m.topic) ?? want.set(m.topic, []).get(m.topic)!).push(m.payload.toString('hex'));
  const got = new Map<string, string[]>();
  let badKeys = 0;
  for (const r of [...recs].sort((a, b) => a.partition - b.partition || a.offset - b.offset)) {
    const topic = r.headers['mqtt-topic'];
    if (r.key?.toString() !== topic) badKeys++;
    const list = got.get(topic) ?? got.set(topic, []).get(topic)!;
    const hex = r.value.toString('hex');
    if (list[list.length - 1] !== hex && !list.includes(hex)) list.push(hex);
  }
  tt.equal(badKeys, 0, 'key = MQTT topic on every record');
  let bad = 0;
  for (const [topic, payloads] of want)
    if (JSON.stringify(got.get(topic)) !== JSON.stringify(payloads)) bad++;
  tt.equal(bad, 0, `every MQTT topic complete, byte-exact and in order (${want.size} topics)`);
}

const makeMsgs = (n: number, prefix: string, topics = 5) =>
  Array.from({ length: n }, (_, i) => {
    const payload = Buffer.concat([
      Buffer.from(`${prefix}-${i}:`),
      Buffer.from([i % 256, 0, 255, (i >> 8) % 256]),
    ]);
    return { topic: `plant/line-${i % topics}/press`, payload };
  });

t.test(
  'client mode: 5,000 QoS 1 messages via Mosquitto, then a restart and a kill -9',
  async (tt) => {
    const dir = tempDir();
    dirs.push(dir);
    const env = {
      KEDGE_DATA_DIR: dir,
      KEDGE_KAFKA_BROKERS: kafka.bootstrap,
      KEDGE_MQTT_URL: mosq.url,
      KEDGE_MQTT_TOPICS: 'plant/#',
      KEDGE_TOPIC_PREFIX: 'mc.',
      KEDGE_AGENT_ID: 'mqtt-client-agent',
    };
    let agent = await AgentProc.start({ env });
    await sleep(500);
    const first = makeMsgs(5000, 'a');
    await publishAll(mosq.url, first, {}, 4);
    await agent.waitDrained(120_000);

    // Stopped: Mosquitto keeps kedge's persistent session queue.
    await agent.stop();
    const second = makeMsgs(1000, 'b');
    await publishAll(mosq.url, second);
    agent = await AgentProc.start({ env, port: agent.port });
    await sleep(1000);

    // kill -9 while messages flow: Mosquitto redelivers what kedge had not acknowledged.
    // Enough messages that the kill lands while they flow (kedge takes them pipelined).
    const third = makeMsgs(10_000, 'c');
    const pub = publishAll(mosq.url, third);
    await sleep(300);
    await agent.kill9();
    await pub;
    agent = await AgentProc.start({ env, port: agent.port });
    await sleep(1500);
    await agent.waitDrained(120_000);
    // Nothing is published after the kill: whatever the new agent ingests was in flight
    // (or queued in Mosquitto) when the old one died.
    const afterKill = await metricSum(agent.base, 'kedge_ingested_events_total');
    tt.ok(
      afterKill > 0,
      `messages were still in flight at the kill: ${afterKill} of ${third.length} reached the restarted agent`,
    );
    const s = await agent.status();
    tt.equal(s.mqtt.client.state, 'up', 'status shows the MQTT link');
    await agent.stop();

    const all = [...first, ...second, ...third];
    const topics = [...new Set(all.map((m) => `mc.${m.topic.replaceAll('/', '.')}`))];
    const recs = [];
    for (const topic of topics)
      recs.push(...(await consume(kafka.bootstrap, topic, { timeoutMs: 30_000 })));
    tt.ok(recs.length >= all.length, `${recs.length} records for ${all.length} messages`);
    checkPerTopic(tt as any, recs, all);
    tt.ok(
      recs.every((r) => r.headers['kedge-id']?.startsWith('mqtt-client-agent:')),
      'kedge-id on every record',
    );
  },
);

t.test(
  'embedded listener: 16 publishers, 20,000 messages; wrong password and oversize refused',
  async (tt) => {
    const dir = tempDir();
    dirs.push(dir);
    const port = await freeLoopbackPort();
    const env = {
      KEDGE_DATA_DIR: dir,
      KEDGE_KAFKA_BROKERS: kafka.bootstrap,
      KEDGE_MQTT_LISTEN: `127.0.0.1:${port}`,
      KEDGE_MQTT_USERNAME: 'sensor',
      KEDGE_MQTT_PASSWORD: 'pw-123',
      KEDGE_MQTT_MAX_PAYLOAD: '1KiB',
      KEDGE_MQTT_KAFKA_TOPIC: 'embedded-all',
    };
    const agent = await AgentProc.start({ env });
    const url = `mqtt://127.0.0.1:${port}`;
    const msgs = makeMsgs(20_000, 'e', 16);
    await publishAll(url, msgs, { username: 'sensor', password: 'pw-123' }, 16);

    const wrong = await mqtt
      .connectAsync(url, {
        username: 'sensor',
        password: 'nope',
        reconnectPeriod: 0,
        protocolVersion: 4,
      })
      .then(
        () => 'connected',
        (e) => String(e.message ?? e),
      );
    tt.match(wrong, /Not authorized|authoriz/i, 'wrong password: CONNACK not authorized');

    const big = await mqtt.connectAsync(url, {
      username: 'sensor',
      password: 'pw-123',
      reconnectPeriod: 0,
      protocolVersion: 4,
    });
    const closed = new Promise((r) => big.once('close', () => r('closed')));
    big.publish('plant/big', Buffer.alloc(4096, 1), { qos: 1 });
    tt.equal(
      await Promise.race([closed, sleep(5000).then(() => 'still open')]),
      'closed',
      'oversize payload: connection closed',
    );
    big.end(true);

    await agent.waitDrained(120_000);
    const metrics = await (await fetch(`${agent.base}/metrics`)).text();
    tt.match(
      metrics,
      /^kedge_mqtt_refused_total\{mode="broker",reason="oversize"\} 1$/m,
      'oversize counted',
    );
    await agent.stop();
    const recs = await consume(kafka.bootstrap, 'embedded-all', { timeoutMs: 30_000 });
    tt.ok(recs.length >= 20_000, `${recs.length} records`);
    checkPerTopic(tt as any, recs, msgs.length ? msgs : []);
  },
);
