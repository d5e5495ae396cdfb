/**
 * Embedded broker mode keeps ingest order per connection whatever the QoS:
 * PUBLISH packets that arrive in one TCP write, QoS 0, 1 and 2 mixed on one
 * topic, are stored in the order they were sent, and each is acknowledged
 * (PUBACK / PUBREC) only once it is in the log. Raw packets from mqtt-packet
 * on one socket against kedge's aedes listener and the real SQLite log.
 * The mixed sequence comes from a fixed seed (ORDER_SEED=n to change).
 */
import t, { type Test } from 'tap';
import { connect as netConnect, type Socket } from 'node:net';
import mqttPacket from 'mqtt-packet';
import { waitFor } from './helpers/proc.ts';
import { harness, startBroker, type Harness } from './fixtures/mqtt-harness.ts';
import type { MqttBrokerIngest } from '../agent/ingest/mqtt-broker.ts';

const SEED = Number(process.env.ORDER_SEED ?? 115);
t.comment(`order seed ${SEED}`);

type QoS = 0 | 1 | 2;

async function startBrokerFor(
  tt: Test,
  h: Harness,
): Promise<{ b: MqttBrokerIngest; port: number }> {
  const { b, port } = await startBroker(h);
  // Also after a failed assertion, so a broken run ends instead of hanging on open handles.
  tt.teardown(async () => {
    await b.stop();
    await h.cleanup();
  });
  return { b, port };
}

const gen = (p: object): Buffer => mqttPacket.generate(p as mqttPacket.Packet);

/** Small deterministic PRNG (mulberry32), so a failing sequence can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

interface Run {
  /** Payloads in the order the log stored them. */
  stored: string[];
  /** Acknowledgements (PUBACK for QoS 1, PUBREC for QoS 2) that arrived before their message was in the log. */
  ackedBeforeStored: string[];
}

/**
 * One raw connection: every PUBLISH in a single write, with the CONNECT in
 * that write too unless `connectFirst` (aedes closes a connection that sends
 * more than 42 packets before its CONNACK); answers each PUBREC with PUBREL
 * and waits until every QoS 1/2 message is complete and all are in the log.
 */
async function sendInOneWrite(
  tt: Test,
  h: Harness,
  port: number,
  msgs: { payload: string; qos: QoS }[],
  connectFirst = false,
): Promise<Run> {
  const s: Socket = netConnect({ host: '127.0.0.1', port });
  await new Promise<void>((r, j) => s.once('connect', () => r()).once('error', j));
  s.on('error', () => {});
  tt.teardown(() => {
    s.destroy();
  });
  let connacked = false;
  const byId = new Map<number, string>();
  const open = new Set<number>();
  const ackedBeforeStored: string[] = [];
  const inLog = (payload: string) => h.events().some((e) => e.value.toString() === payload);
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  parser.on('packet', (p: mqttPacket.Packet) => {
    if (p.cmd === 'puback' || p.cmd === 'pubrec') {
      const payload = byId.get(p.messageId!)!;
      if (!inLog(payload)) ackedBeforeStored.push(payload);
      if (p.cmd === 'puback') open.delete(p.messageId!);
      else s.write(gen({ cmd: 'pubrel', messageId: p.messageId }));
    } else if (p.cmd === 'connack') {
      connacked = p.returnCode === 0;
    } else if (p.cmd === 'pubcomp') {
      open.delete(p.messageId!);
    }
  });
  s.on('data', (d: Buffer) => parser.parse(d));

  const connect = gen({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 4,
    clean: true,
    clientId: `order-${msgs.length}`,
    keepalive: 60,
  });
  const parts: Buffer[] = [];
  if (connectFirst) {
    s.write(connect);
    await waitFor(() => connacked, { timeoutMs: 5_000, what: 'CONNACK' });
  } else {
    parts.push(connect);
  }
  msgs.forEach((m, i) => {
    const messageId = i + 1;
    if (m.qos > 0) {
      byId.set(messageId, m.payload);
      open.add(messageId);
    }
    parts.push(
      gen({
        cmd: 'publish',
        topic: 't',
        payload: m.payload,
        qos: m.qos,
        messageId: m.qos > 0 ? messageId : undefined,
        retain: false,
        dup: false,
      }),
    );
  });
  s.write(Buffer.concat(parts));

  await waitFor(() => open.size === 0, {
    timeoutMs: 10_000,
    what: 'every QoS 1/2 message acknowledged',
  });
  await waitFor(() => h.events().length >= msgs.length, {
    timeoutMs: 10_000,
    what: `${msgs.length} events in the log`,
  });
  s.end();
  return { stored: h.events().map((e) => e.value.toString()), ackedBeforeStored };
}

t.test(
  'QoS 2 "A" then QoS 1 "B" on one topic, CONNECT and both in one write: stored A, B',
  async (tt) => {
    const h = await harness({ sync: 'normal' });
    const { port } = await startBrokerFor(tt, h);
    const run = await sendInOneWrite(tt, h, port, [
      { payload: 'A', qos: 2 },
      { payload: 'B', qos: 1 },
    ]);
    tt.same(run.stored, ['A', 'B'], 'stored in send order');
    tt.same(run.ackedBeforeStored, [], 'PUBREC / PUBACK only after the commit');
  },
);

function mixed(tt: Test, n: number, seed: number): { payload: string; qos: QoS }[] {
  const rnd = prng(seed);
  const msgs = Array.from({ length: n }, (_, i) => ({
    payload: `m${String(i).padStart(3, '0')}`,
    qos: Math.floor(rnd() * 3) as QoS,
  }));
  tt.comment(`QoS sequence ${msgs.map((m) => m.qos).join('')}`);
  tt.ok(
    msgs.some((m, i) => m.qos === 2 && i + 1 < n && msgs[i + 1].qos !== 2),
    'the sequence has a QoS 2 message followed by a QoS 0/1 one',
  );
  return msgs;
}

for (const [n, connectFirst] of [
  [40, false],
  [50, true],
] as const) {
  const how = connectFirst ? 'after the CONNACK' : 'with the CONNECT';
  t.test(
    `${n} messages with random QoS 0/1/2 on one topic in one write ${how}: stored in send order`,
    async (tt) => {
      const h = await harness({ sync: 'normal' });
      const { b, port } = await startBrokerFor(tt, h);
      const msgs = mixed(tt, n, SEED + n);
      const run = await sendInOneWrite(tt, h, port, msgs, connectFirst);
      tt.same(
        run.stored,
        msgs.map((m) => m.payload),
        'stored in send order',
      );
      tt.same(run.ackedBeforeStored, [], 'every PUBACK / PUBREC only after the commit');
      tt.equal(b.status().ingested, n, 'each message ingested once');
    },
  );
}
