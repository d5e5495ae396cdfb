/**
 * Malformed MQTT to the embedded listener of the real agent process, over raw
 * sockets: random bytes, truncated CONNECT and PUBLISH, an oversized remaining
 * length, PUBLISH before CONNECT, an ill-formed UTF-8 topic, wrong protocol
 * levels. Each bad connection is closed by the agent and counted in
 * kedge_mqtt_protocol_errors_total, nothing of it is stored, and a well-behaved
 * MQTT.js publisher (QoS 1) keeps getting its PUBACKs all along.
 * Random cases come from fast-check with a fixed seed (FUZZ_SEED=n to change).
 */
import t from 'tap';
import fc from 'fast-check';
import { connect as netConnect } from 'node:net';
import mqtt from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { request } from 'undici';
import { AgentProc, cleanup, freeLoopbackPort, sleep, tempDir } from './helpers/agent.ts';

const SEED = Number(process.env.FUZZ_SEED ?? 7_2024_11);
t.comment(`fast-check seed ${SEED}`);

const dir = tempDir('kedge-mqtt-malformed-');
const mqttPort = await freeLoopbackPort();
const agent = await AgentProc.start({
  env: {
    KEDGE_DATA_DIR: dir,
    KEDGE_KAFKA_BROKERS: `127.0.0.1:${await freeLoopbackPort()}`,
    KEDGE_MQTT_LISTEN: `127.0.0.1:${mqttPort}`,
    KEDGE_LOG_LEVEL: 'warn',
  },
});
t.teardown(async () => {
  await agent.stop();
  cleanup(dir);
});

const gen = (p: object): Buffer => mqttPacket.generate(p as mqttPacket.Packet);
// Each bad connection its own client id: a second CONNECT with the same id would take the first one over (a clean close, no error).
let ids = 0;
const connect = (over: object = {}) =>
  gen({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 4,
    clean: true,
    clientId: `bad-${ids++}`,
    keepalive: 60,
    ...over,
  });
const publish = (topic: string | Buffer, payload = 'x', qos: 0 | 1 = 1) =>
  gen({ cmd: 'publish', topic, payload, qos, messageId: 1, retain: false, dup: false });
/** A PUBLISH whose topic bytes are given raw (mqtt-packet would encode a string as valid UTF-8). */
function publishRawTopic(topic: Buffer): Buffer {
  const body = Buffer.concat([
    Buffer.from([topic.length >> 8, topic.length & 255]),
    topic,
    Buffer.from([0, 1]),
    Buffer.from('x'),
  ]);
  return Buffer.concat([Buffer.from([0x32, body.length]), body]);
}
/** The protocol level byte of a CONNECT sits right after the "MQTT" protocol name. */
function withLevel(level: number): Buffer {
  const b = connect();
  b[b.indexOf('MQTT') + 4] = level;
  return b;
}

async function metricSum(name: string): Promise<number> {
  const r = await request(`${agent.base}/metrics`);
  const text = await r.body.text();
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm')))
    sum += Number(m[1]);
  return sum;
}

interface Outcome {
  name: string;
  closedByAgent: boolean;
  ms: number;
}

/** Sends the bytes and keeps the socket open; resolves when the agent closes it (or after waitMs). */
function badConnection(name: string, bytes: Buffer, waitMs: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const started = Date.now();
    const s = netConnect(mqttPort, '127.0.0.1');
    let timer: NodeJS.Timeout;
    s.on('error', () => {});
    s.on('data', () => {}); // a CONNACK may come first (e.g. for a refused protocol level)
    s.on('connect', () => s.write(bytes));
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ name, closedByAgent: Date.now() - started < waitMs, ms: Date.now() - started });
    });
    timer = setTimeout(() => s.destroy(), waitMs);
  });
}

t.test(
  'malformed connections are closed and counted; a good publisher keeps getting PUBACKs',
  async (tt) => {
    const backlogBefore = (await agent.status()).backlog.events as number;
    const errorsBefore = await metricSum('kedge_mqtt_protocol_errors_total');

    // The well-behaved publisher runs during the whole attack.
    const good = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, {
      protocolVersion: 4,
      reconnectPeriod: 0,
      clientId: 'good',
    });
    let acked = 0;
    let maxLatency = 0;
    let stop = false;
    const publisher = (async () => {
      for (let i = 0; !stop && i < 100_000; i++) {
        const t0 = Date.now();
        await good.publishAsync('plant/line1/temp', JSON.stringify({ i }), { qos: 1 });
        maxLatency = Math.max(maxLatency, Date.now() - t0);
        acked++;
        await sleep(20);
      }
    })();

    const connectBytes = connect();
    const fixed: Array<[string, Buffer]> = [
      ['oversized remaining length', Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f])],
      [
        'oversized remaining length after CONNECT',
        Buffer.concat([connect(), Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f])]),
      ],
      ['PUBLISH before CONNECT', publish('a/b')],
      ['PINGREQ before CONNECT', Buffer.from([0xc0, 0x00])],
      ['second CONNECT', Buffer.concat([connect(), connect()])],
      [
        'ill-formed UTF-8 topic',
        Buffer.concat([connect(), publishRawTopic(Buffer.from([0x61, 0x2f, 0xc3, 0x28, 0xff]))]),
      ],
      ['NUL in topic', Buffer.concat([connect(), publishRawTopic(Buffer.from('a\u0000b'))])],
      ['wildcard in PUBLISH topic', Buffer.concat([connect(), publish('a/#')])],
      ['protocol level 7', withLevel(7)],
      ['protocol level 5 (MQTT 5)', withLevel(5)],
      ['protocol level 0', withLevel(0)],
      [
        'protocol name XQTT',
        Buffer.from(connectBytes.toString('latin1').replace('MQTT', 'XQTT'), 'latin1'),
      ],
      ['reserved packet type 0', Buffer.from([0x00, 0x00])],
      ['reserved packet type 15', Buffer.from([0xf0, 0x00])],
      ['truncated CONNECT', connectBytes.subarray(0, connectBytes.length - 3)],
      ['fixed header only', Buffer.from([0x10])],
      // keepalive 1 s: the truncated PUBLISH is never completed, the keep-alive timer (1.5 s) closes it.
      [
        'truncated PUBLISH after CONNECT',
        Buffer.concat([connect({ keepalive: 1 }), publish('a/b', 'y'.repeat(100)).subarray(0, 20)]),
      ],
    ];
    const random = fc
      .sample(fc.uint8Array({ minLength: 1, maxLength: 64 }), { seed: SEED, numRuns: 30 })
      .map((b, i) => [`random bytes #${i}`, Buffer.from(b)] as [string, Buffer]);
    // Truncations of a valid CONNECT+PUBLISH at random points.
    const full = () => Buffer.concat([connect({ keepalive: 1 }), publish('t/x', 'z'.repeat(50))]);
    const fullLength = full().length;
    const cuts = fc
      .sample(fc.integer({ min: 1, max: fullLength - 1 }), { seed: SEED, numRuns: 10 })
      .map((n) => [`cut at ${n}/${fullLength}`, full().subarray(0, n)] as [string, Buffer]);
    const cases = [...fixed, ...random, ...cuts];

    // The agent's CONNECT timeout is 10 s: every bad connection must be gone well within 20 s.
    const outcomes = await Promise.all(cases.map(([n, b]) => badConnection(n, b, 20_000)));
    for (const o of outcomes) tt.ok(o.closedByAgent, `${o.name}: closed by the agent (${o.ms} ms)`);
    const slowest = Math.max(...outcomes.map((o) => o.ms));
    tt.comment(`${cases.length} bad connections, all closed within ${slowest} ms`);

    const ackedDuringAttack = acked;
    await sleep(500);
    stop = true;
    await publisher;
    tt.ok(
      ackedDuringAttack >= 50,
      `good publisher: ${ackedDuringAttack} PUBACKs during the attack`,
    );
    tt.ok(acked > ackedDuringAttack, 'and still after it');
    tt.ok(maxLatency < 5_000, `good publisher: slowest PUBACK ${maxLatency} ms (bound 5 s)`);
    await good.endAsync();

    const errors = (await metricSum('kedge_mqtt_protocol_errors_total')) - errorsBefore;
    const r = await request(`${agent.base}/metrics`);
    tt.comment(
      (await r.body.text())
        .split('\n')
        .filter((l) => /^kedge_mqtt_(protocol_errors|refused)/.test(l))
        .join('; '),
    );
    // A cut right at a packet boundary (a complete CONNECT, nothing more) is a legal idle client: it is closed by
    // the keep-alive timeout, counted as keepalive_timeout. Every case breaks the protocol somehow, so each counts.
    tt.ok(
      errors >= cases.length,
      `kedge_mqtt_protocol_errors_total grew by ${errors} (>= ${cases.length} bad connections)`,
    );
    const backlogAfter = (await agent.status()).backlog.events as number;
    tt.equal(
      backlogAfter - backlogBefore,
      acked,
      'the backlog grew by exactly the acknowledged good messages: nothing from bad connections',
    );
    const h = await request(`${agent.base}/healthz`);
    await h.body.dump();
    tt.equal(h.statusCode, 200, 'agent healthy');
    tt.equal(agent.child.exitCode, null, 'agent process alive');
  },
);
