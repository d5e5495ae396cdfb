/**
 * Client mode against a real Mosquitto started here (own port, own config,
 * own persistence) and the real log: every message Mosquitto hands kedge ends
 * up in the log byte for byte and in per-topic order, the PUBACK waits for the
 * commit, a failed append is redelivered, the persistent session carries
 * messages across a kedge restart, retained replays are skipped.
 */
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import mqtt, { type MqttClient, type Packet } from 'mqtt';
import { Mosquitto } from './helpers/mosquitto.ts';
import { spawnProc, waitFor, type Proc } from './helpers/proc.ts';
import { clientIngest, harness, startBroker, type Harness } from './fixtures/mqtt-harness.ts';
import {
  type MqttClientIngest,
  RECEIVE_MAXIMUM,
  type MqttClientIngestOptions,
} from '../agent/ingest/mqtt-client.ts';
import { kafkaTopicName } from '../agent/ingest/mqtt-topic.ts';
import { LogWriteError } from '../agent/log/index.ts';
import type { StoredEvent } from '../agent/log/index.ts';

const mosq = await Mosquitto.start();
t.teardown(() => mosq.cleanup());

let idn = 0;
function ingest(h: Harness, over: Partial<MqttClientIngestOptions> = {}): MqttClientIngest {
  return clientIngest(h, {
    url: mosq.url,
    agentId: `test-${process.pid}-${++idn}`,
    reconnectMinMs: 100,
    reconnectMaxMs: 1_000,
    ...over,
  });
}

async function publisher(url = mosq.url, opts: mqtt.IClientOptions = {}): Promise<MqttClient> {
  return mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 200, ...opts });
}

/** Publishes all messages at QoS 1 without waiting for each PUBACK; resolves when all are acknowledged. */
async function publishAll(
  c: MqttClient,
  msgs: { topic: string; payload: Buffer }[],
  opts: mqtt.IClientPublishOptions = { qos: 1 },
): Promise<void> {
  await Promise.all(msgs.map((m) => c.publishAsync(m.topic, m.payload, opts)));
}

function makeMessages(
  n: number,
  topics: string[],
  tag: string,
): { topic: string; payload: Buffer }[] {
  return Array.from({ length: n }, (_, i) => {
    const topic = topics[i % topics.length];
    // Binary payload with a readable prefix: index for order checks, random bytes (NUL, 0xff, ...) for byte-exactness.
    const payload = Buffer.concat([
      Buffer.from(`${tag}:${i}:`),
      randomBytes(20 + (i % 50)),
      Buffer.from([0, 255, 10, 13]),
    ]);
    return { topic, payload };
  });
}

async function waitEvents(h: Harness, n: number, timeoutMs = 60_000): Promise<StoredEvent[]> {
  let evs: StoredEvent[] = [];
  await waitFor(() => (evs = h.events()).length >= n, {
    timeoutMs,
    intervalMs: 50,
    what: `${n} events in the log (have ${evs.length})`,
  });
  return evs;
}

/** Every sent message is in `evs` exactly as sent, and each MQTT topic's messages are in publish order. */
function checkExactAndOrdered(
  tt: Test,
  evs: StoredEvent[],
  sent: { topic: string; payload: Buffer }[],
  allowDuplicates = false,
): void {
  const byValue = new Map<string, StoredEvent[]>();
  for (const e of evs) {
    const k = e.value.toString('base64');
    byValue.set(k, [...(byValue.get(k) ?? []), e]);
  }
  let missing = 0;
  let bad = 0;
  let dups = 0;
  for (const m of sent) {
    const hits = byValue.get(m.payload.toString('base64'));
    if (!hits) {
      missing++;
      continue;
    }
    if (hits.length > 1) dups++;
    const e = hits[0];
    if (
      e.topic !== kafkaTopicName(m.topic) ||
      e.key?.toString() !== m.topic ||
      e.headers?.['mqtt-topic'] !== m.topic
    )
      bad++;
  }
  tt.equal(missing, 0, 'no message missing');
  tt.equal(bad, 0, 'topic mapped, key = MQTT topic, header mqtt-topic set');
  if (!allowDuplicates) tt.equal(dups, 0, 'no duplicates');
  // Per MQTT topic, the first occurrence of each message must come in publish order.
  const sentOrder = new Map<string, string[]>();
  for (const m of sent)
    sentOrder.set(m.topic, [...(sentOrder.get(m.topic) ?? []), m.payload.toString('base64')]);
  const seen = new Set<string>();
  const logOrder = new Map<string, string[]>();
  for (const e of evs) {
    const k = e.value.toString('base64');
    if (seen.has(k)) continue;
    seen.add(k);
    const topic = e.headers?.['mqtt-topic'] ?? '';
    logOrder.set(topic, [...(logOrder.get(topic) ?? []), k]);
  }
  let outOfOrder = 0;
  for (const [topic, order] of sentOrder) {
    const got = (logOrder.get(topic) ?? []).filter((k) => order.includes(k));
    if (got.join() !== order.join()) outOfOrder++;
  }
  tt.equal(outOfOrder, 0, 'per-topic order kept');
}

t.test('5,000 QoS 1 messages: all in the log, byte-exact, in order per topic', async (tt) => {
  const h = await harness({ sync: 'normal' });
  const k = ingest(h);
  await k.start();
  tt.equal(k.status().state, 'up');
  tt.equal(k.status().protocol, 5, 'Mosquitto 2 speaks MQTT 5');
  tt.equal(await h.metric('kedge_mqtt_link_up'), 1, 'link gauge up');
  const pub = await publisher();
  const sent = makeMessages(5_000, ['dev/a/temp', 'dev/b/temp', 'dev/c/hum', 'dev/d e/ü'], 'bulk');
  await publishAll(pub, sent);
  const evs = await waitEvents(h, sent.length);
  tt.equal(evs.length, sent.length, 'exactly as many events as messages');
  checkExactAndOrdered(tt, evs, sent);
  tt.equal(
    evs.find((e) => e.headers?.['mqtt-topic'] === 'dev/d e/ü')?.topic,
    'dev.d_e._',
    'characters Kafka refuses become _',
  );
  tt.equal(
    await h.metric('kedge_ingested_events_total', { source: 'mqtt', topic: 'dev.a.temp' }),
    1_250,
    'sink counts MQTT events',
  );
  tt.equal(k.status().ingested, 5_000);
  await pub.endAsync();
  await k.stop();
  tt.equal(k.status().state, 'stopped');
  tt.equal(await h.metric('kedge_mqtt_link_up'), 0, 'link gauge down after stop');
  await h.cleanup();
});

t.test(
  'persistent session: messages published while kedge is stopped arrive after its restart',
  async (tt) => {
    const h = await harness({ sync: 'normal' });
    const clientId = `kedge-restart-${process.pid}`;
    const k1 = ingest(h, { clientId });
    await k1.start();
    const pub = await publisher();
    const before = makeMessages(200, ['dev/r/1', 'dev/r/2'], 'before');
    await publishAll(pub, before);
    await waitEvents(h, 200);
    await k1.stop();
    const during = makeMessages(1_000, ['dev/r/1', 'dev/r/2', 'dev/r/3'], 'during');
    await publishAll(pub, during);
    tt.equal(h.events().length, 200, 'nothing ingested while stopped');
    const k2 = ingest(h, { clientId });
    await k2.start();
    const evs = await waitEvents(h, 1_200);
    await new Promise((r) => setTimeout(r, 300));
    tt.equal(h.events().length, 1_200, 'no duplicates after a clean stop');
    checkExactAndOrdered(tt, evs, [...before, ...during]);
    await pub.endAsync();
    await k2.stop();
    await h.cleanup();
  },
);

t.test('failed append: no PUBACK, reconnect, the message is redelivered and stored', async (tt) => {
  const h = await harness({ sync: 'normal' });
  const k = ingest(h, { clientId: `kedge-fail-${process.pid}` });
  await k.start();
  // Watch what kedge sends to Mosquitto on every connection.
  const pubacks: number[] = [];
  const inner = (k as unknown as { client: MqttClient }).client;
  inner.on('packetsend', (p: Packet) => {
    if (p.cmd === 'puback') pubacks.push(p.messageId ?? -1);
  });
  let failures = 0;
  h.setAppend(async () => {
    failures++;
    throw new LogWriteError('injected: disk full', 'KEDGE_DISK_FULL');
  });
  const pub = await publisher();
  const sent = makeMessages(20, ['dev/f/1', 'dev/f/2'], 'fail');
  await publishAll(pub, sent);
  await waitFor(() => failures >= 3, {
    timeoutMs: 10_000,
    what: 'redelivered appends to fail again',
  });
  tt.equal(pubacks.length, 0, 'no PUBACK while the log refuses');
  tt.equal(h.events().length, 0, 'nothing stored');
  tt.ok(k.status().append_failures >= 3, 'failures counted in status');
  tt.ok(
    (await h.metric('kedge_mqtt_refused_total', { mode: 'client', reason: 'log' })) >= 3,
    'failures counted in metrics',
  );
  tt.match(k.status().last_error, /KEDGE_DISK_FULL/);
  h.setAppend(null);
  const evs = await waitEvents(h, 20, 20_000);
  checkExactAndOrdered(tt, evs, sent);
  tt.equal(evs.length, 20, 'each message stored once');
  await waitFor(() => pubacks.length >= 20, {
    timeoutMs: 5_000,
    what: 'PUBACKs after the commits',
  });
  tt.equal(k.status().state, 'up');
  await pub.endAsync();
  await k.stop();
  await h.cleanup();
});

t.test('PUBACK is sent only after the commit', async (tt) => {
  const committed = new Set<number>();
  let commitEnd = 0;
  const h = await harness({
    sync: 'normal',
    beforeCommit: (info) => {
      // A slow disk: the commit takes 150 ms.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 150);
      for (let s = info.firstSeq; s <= info.lastSeq; s++) committed.add(s);
      commitEnd = Date.now();
    },
  });
  const k = ingest(h);
  await k.start();
  const inner = (k as unknown as { client: MqttClient }).client;
  const checks: { logHad: number; afterCommit: boolean }[] = [];
  inner.on('packetsend', (p: Packet) => {
    if (p.cmd === 'puback')
      checks.push({
        logHad: h.events().length,
        afterCommit: Date.now() >= commitEnd && committed.size > 0,
      });
  });
  const pub = await publisher();
  await publishAll(pub, makeMessages(5, ['dev/slow'], 'slow'));
  await waitFor(() => checks.length >= 5, { timeoutMs: 10_000, what: '5 PUBACKs' });
  // Pipelined: the five may share one commit, so the n-th PUBACK goes out once at least n are durable.
  tt.ok(
    checks.every((c, i) => c.logHad >= i + 1),
    `the n-th PUBACK goes out only when n messages are durable in the log (${checks.map((c) => c.logHad).join(',')})`,
  );
  tt.ok(checks.every((c) => c.afterCommit));
  await pub.endAsync();
  await k.stop();
  await h.cleanup();
});

t.test(
  'retained messages replayed on subscribe are skipped, live retained ones stored; retained=ingest stores replays',
  async (tt) => {
    const pub = await publisher();
    await pub.publishAsync('dev/ret/a', 'old-retained', { qos: 1, retain: true });
    for (const protocolVersion of [5, 4] as const) {
      const h = await harness({ sync: 'normal' });
      const k = ingest(h, { protocolVersion, topics: ['dev/ret/#'] });
      await k.start();
      await pub.publishAsync('dev/ret/a', 'live-retained', { qos: 1, retain: true });
      await pub.publishAsync('dev/ret/a', 'live', { qos: 1 });
      const evs = await waitEvents(h, 2);
      await new Promise((r) => setTimeout(r, 300));
      tt.same(
        h.events().map((e) => e.value.toString()),
        ['live-retained', 'live'],
        `MQTT ${protocolVersion}: replay skipped, live messages stored`,
      );
      tt.equal(evs.length, 2);
      tt.equal(k.status().retained_skipped, 1, `MQTT ${protocolVersion}: skip counted`);
      await k.stop();
      await h.cleanup();
      // Put the old value back for the next round.
      await pub.publishAsync('dev/ret/a', 'old-retained', { qos: 1, retain: true });
    }
    const h = await harness({ sync: 'normal' });
    const k = ingest(h, { retained: 'ingest', topics: ['dev/ret/#'] });
    await k.start();
    await waitEvents(h, 1);
    tt.same(
      h.events().map((e) => e.value.toString()),
      ['old-retained'],
      'retained=ingest stores the replay',
    );
    await k.stop();
    await h.cleanup();
    await pub.publishAsync('dev/ret/a', '', { qos: 1, retain: true });
    await pub.endAsync();
  },
);

t.test(
  'oversize payload: acknowledged, not stored, counted and logged with the topic; the session goes on',
  async (tt) => {
    const h = await harness({ sync: 'normal' });
    const clientId = `kedge-oversize-${process.pid}`;
    const k = ingest(h, { clientId, maxPayload: 1024 });
    await k.start();
    const pub = await publisher();
    await pub.publishAsync('dev/big', Buffer.alloc(1025, 7), { qos: 1 });
    await pub.publishAsync('dev/big', Buffer.alloc(1024, 8), { qos: 1 });
    const evs = await waitEvents(h, 1);
    tt.equal(evs[0].value.length, 1024, 'a payload of exactly maxPayload is stored');
    tt.equal(
      await h.metric('kedge_mqtt_refused_total', { mode: 'client', reason: 'oversize' }),
      1,
      'counted',
    );
    tt.equal(k.status().refused_oversize, 1);
    const line = h.lines.find((l) => l.mqttTopic === 'dev/big' && l.bytes === 1025);
    tt.ok(line, 'logged with the topic and size');
    await k.stop();
    // Acknowledged: it is not redelivered to the next run.
    const k2 = ingest(h, { clientId, maxPayload: 1024 });
    await k2.start();
    await new Promise((r) => setTimeout(r, 500));
    tt.equal(k2.status().received, 0, 'not redelivered after restart');
    tt.equal(h.events().length, 1);
    await k2.stop();
    await pub.endAsync();
    await h.cleanup();
  },
);

t.test(
  'broker restart: link goes down, kedge reconnects on its own, the session survives',
  async (tt) => {
    const h = await harness({ sync: 'normal' });
    const k = ingest(h, { clientId: `kedge-brokerdown-${process.pid}` });
    await k.start();
    const connectsBefore = h.lines.filter((l) => l.msg === 'connected to MQTT broker').length;
    await mosq.stop();
    await waitFor(() => k.status().state === 'down', { timeoutMs: 5_000, what: 'link down' });
    tt.equal(await h.metric('kedge_mqtt_link_up'), 0, 'gauge shows the link down');
    tt.ok(k.status().last_error, 'last error recorded');
    await new Promise((r) => setTimeout(r, 1_500)); // a few failed attempts
    await mosq.restart();
    await waitFor(() => k.status().state === 'up', { timeoutMs: 10_000, what: 'link up again' });
    tt.equal(await h.metric('kedge_mqtt_link_up'), 1);
    tt.ok((await h.metric('kedge_mqtt_reconnects_total')) >= 2, 'reconnects counted');
    const connects = h.lines.filter((l) => l.msg === 'connected to MQTT broker');
    tt.equal(connects.length, connectsBefore + 1);
    tt.equal(
      connects.at(-1)?.sessionPresent,
      true,
      'Mosquitto kept the session across its restart',
    );
    const pub = await publisher();
    await pub.publishAsync('dev/after', 'after-restart', { qos: 1 });
    await waitEvents(h, 1);
    tt.equal(h.events()[0].value.toString(), 'after-restart');
    await pub.endAsync();
    await k.stop();
    await h.cleanup();
  },
);

t.test('MQTT 3.1.1-only broker: kedge falls back from MQTT 5', async (tt) => {
  const h = await harness({ sync: 'normal' });
  const { b: broker, url } = await startBroker(h, { maxPayload: 1024, agentId: 'fallback' });
  // A second log would be cleaner, but one is enough: the broker stores what the
  // publisher sends, the client stores what the broker forwards to it.
  const k = ingest(h, { url, topics: ['fb/#'] });
  await k.start();
  tt.equal(k.status().state, 'up');
  tt.equal(k.status().protocol, 4, 'fell back to 3.1.1');
  tt.ok(
    h.lines.some((l) => /does not speak MQTT 5/.test(String(l.msg))),
    'fallback logged',
  );
  const pub = await publisher(url);
  await pub.publishAsync('fb/x', 'hello', { qos: 1 });
  await waitEvents(h, 2);
  tt.same(
    h.events().map((e) => e.value.toString()),
    ['hello', 'hello'],
    'stored by the broker, then by the subscribing client',
  );
  await pub.endAsync();
  await k.stop();
  await broker.stop();
  await h.cleanup();
});

t.test(
  'kill -9 while messages flow: every message Mosquitto accepted ends up in the log',
  async (tt) => {
    const h = await harness({ sync: 'full' });
    await h.closeLog(); // the child owns the data dir
    const clientId = `kedge-crash-${process.pid}`;
    const fixture = new URL('./fixtures/mqtt-kedge-proc.ts', import.meta.url).pathname;
    const launch = async (): Promise<Proc> => {
      const p = spawnProc(
        process.execPath,
        [fixture, h.dir, mosq.url, clientId, 'dev/crash/#', 'full'],
        { name: 'kedge-mqtt' },
      );
      await p.waitForLine(/^ready$/, 15_000);
      return p;
    };
    const lastStatus = (p: Proc): [number, number] => {
      const m = [...p.stdout().matchAll(/^status (\d+) (\d+)$/gm)].pop();
      return m ? [Number(m[1]), Number(m[2])] : [0, 0];
    };
    const first = await launch();
    const pub = await publisher();
    // Enough that the kill lands while messages flow: pipelined, the child takes a few
    // thousand a second, about as fast as the publisher sends.
    const sent = makeMessages(10_000, ['dev/crash/a', 'dev/crash/b', 'dev/crash/c'], 'crash');
    const publishing = publishAll(pub, sent);
    await waitFor(() => lastStatus(first)[1] >= 200, {
      timeoutMs: 30_000,
      intervalMs: 10,
      what: 'the child to ingest 200 messages',
    });
    await first.kill('SIGKILL');
    tt.comment(`killed after ${lastStatus(first)[1]} acknowledged`);
    await publishing; // Mosquitto accepted all of them (PUBACK to the publisher)
    const second = await launch();
    // Done when nothing new has arrived for 3 s (the session may hold nothing to redeliver
    // when the kill came after the last message).
    let prev = -1;
    let still = 0;
    await waitFor(
      () => {
        const [, ingested] = lastStatus(second);
        still = ingested === prev ? still + 1 : 0;
        prev = ingested;
        return still >= 3;
      },
      { timeoutMs: 60_000, intervalMs: 1_000, what: 'the restarted child to drain the session' },
    );
    tt.equal((await second.stop()).code, 0, 'clean stop');
    await h.reopen();
    const evs = h.events();
    tt.ok(evs.length >= sent.length, `${evs.length} events for ${sent.length} messages`);
    checkExactAndOrdered(tt, evs, sent, true);
    // Committed but not yet PUBACKed at the kill (or PUBACKs lost with the socket): at most the window.
    tt.ok(
      evs.length - sent.length <= RECEIVE_MAXIMUM,
      `duplicates only for the ack window at the kill (${evs.length - sent.length} ≤ ${RECEIVE_MAXIMUM})`,
    );
    await pub.endAsync();
    await h.cleanup();
  },
);

t.test('status() and stop() are safe before the broker was ever reached', async (tt) => {
  const h = await harness({ sync: 'normal' });
  const k = ingest(h, { url: 'mqtt://127.0.0.1:1', startWaitMs: 300 });
  await k.start();
  tt.not(k.status().state, 'up');
  tt.equal(k.status().protocol, null);
  await k.stop();
  tt.equal(k.status().state, 'stopped');
  await h.cleanup();
});
