/**
 * Embedded broker mode: MQTT.js publishers (and raw sockets for what MQTT.js
 * would never send) against kedge's aedes listener and the real log.
 */
import t from 'tap';
import { connect as netConnect, type Socket } from 'node:net';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { waitFor } from './helpers/proc.ts';
import { harness, startBroker, type Harness } from './fixtures/mqtt-harness.ts';
import { MqttBrokerIngest } from '../agent/ingest/mqtt-broker.ts';
import { LogWriteError } from '../agent/log/index.ts';
import type { StoredEvent } from '../agent/log/index.ts';
import { rawPublish, varint } from './helpers/mqtt-raw.ts';

function pubClient(url: string, opts: mqtt.IClientOptions = {}): Promise<MqttClient> {
  return mqtt.connectAsync(url, {
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: 5_000,
    ...opts,
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

function closed(c: MqttClient): Promise<void> {
  return new Promise((r) => (c.connected ? c.once('close', () => r()) : r()));
}

/** Raw MQTT 3.1.1 CONNECT (clean session, keepalive 60). */
function rawConnect(clientId: string): Buffer {
  const id = Buffer.from(clientId);
  const body = Buffer.concat([
    Buffer.from([0, 4]),
    Buffer.from('MQTT'),
    Buffer.from([4, 0x02, 0, 60]),
    Buffer.from([id.length >> 8, id.length & 255]),
    id,
  ]);
  return Buffer.concat([Buffer.from([0x10]), varint(body.length), body]);
}

/** A raw socket that collects what the broker sends; `ended` resolves when the broker closes it. */
async function rawSocket(
  port: number,
): Promise<{ s: Socket; received: () => Buffer; ended: Promise<void> }> {
  const s = netConnect({ host: '127.0.0.1', port });
  await new Promise<void>((r, j) => s.once('connect', () => r()).once('error', j));
  let buf = Buffer.alloc(0);
  s.on('data', (d: Buffer) => (buf = Buffer.concat([buf, d])));
  s.on('error', () => {});
  const ended = new Promise<void>((r) => s.once('close', () => r()));
  return { s, received: () => buf, ended };
}

t.test(
  '16 concurrent publishers, QoS 1, 20,000 messages: all in the log, in order per publisher',
  async (tt) => {
    const h = await harness({ sync: 'full' });
    const { b, url } = await startBroker(h);
    const N = 16;
    const PER = 1_250;
    const pubs = await Promise.all(
      Array.from({ length: N }, (_, i) => pubClient(url, { clientId: `pub-${i}` })),
    );
    const started = Date.now();
    await Promise.all(
      pubs.map((c, i) =>
        Promise.all(
          Array.from({ length: PER }, (_, j) =>
            c.publishAsync(`plant/line${i % 4}/m${i}`, Buffer.from(`${i}:${j}:\u0000\u00ff`), {
              qos: 1,
            }),
          ),
        ),
      ),
    );
    const ms = Date.now() - started;
    tt.comment(
      `20,000 QoS 1 messages acknowledged in ${ms} ms (${Math.round(20_000 / (ms / 1000))}/s, sync full)`,
    );
    // Every PUBACK came after the commit, so the log must hold everything now, without waiting.
    const evs = h.events();
    tt.equal(evs.length, N * PER, 'all 20,000 stored by the time the last PUBACK arrived');
    const next = new Array<number>(N).fill(0);
    let bad = 0;
    for (const e of evs) {
      const [i, j] = e.value.toString('latin1').split(':').map(Number);
      if (j !== next[i]) bad++;
      next[i] = j + 1;
      if (
        e.topic !== `plant.line${i % 4}.m${i}` ||
        e.key?.toString() !== `plant/line${i % 4}/m${i}` ||
        e.headers?.['mqtt-topic'] !== `plant/line${i % 4}/m${i}`
      )
        bad++;
      if (!e.value.subarray(-3).equals(Buffer.from([0, 0xc3, 0xbf]))) bad++;
    }
    tt.equal(bad, 0, 'in publish order per publisher, mapped, byte-exact');
    tt.ok(
      h.log.stats().commits < (N * PER) / 4,
      `group commit shared (${h.log.stats().commits} commits for ${N * PER} messages)`,
    );
    tt.equal(b.status().ingested, N * PER);
    tt.equal(b.status().clients, N);
    await Promise.all(pubs.map((c) => c.endAsync()));
    await b.stop();
    tt.equal(b.status().state, 'stopped');
    await h.cleanup();
  },
);

t.test('credentials: wrong or missing → CONNACK not authorized; right → accepted', async (tt) => {
  const h = await harness({ sync: 'normal' });
  const { b, url } = await startBroker(h, { username: 'sensor', password: 'p4ss-wörd' });
  const wrong = await pubClient(url, { username: 'sensor', password: 'nope' }).then(
    () => null,
    (e: Error & { code?: number }) => e,
  );
  tt.equal(wrong?.code, 5, 'wrong password: return code 5 (not authorized)');
  const noCreds = await pubClient(url).then(
    () => null,
    (e: Error & { code?: number }) => e,
  );
  tt.equal(noCreds?.code, 5, 'no credentials: not authorized');
  const wrongUser = await pubClient(url, { username: 'other', password: 'p4ss-wörd' }).then(
    () => null,
    (e: Error & { code?: number }) => e,
  );
  tt.equal(wrongUser?.code, 5, 'wrong user name: not authorized');
  const ok = await pubClient(url, { username: 'sensor', password: 'p4ss-wörd' });
  await ok.publishAsync('auth/ok', 'in', { qos: 1 });
  tt.equal(h.events().length, 1, 'authorized publisher stored');
  tt.equal(
    await h.metric('kedge_mqtt_refused_total', { mode: 'broker', reason: 'auth' }),
    3,
    'refusals counted',
  );
  tt.ok(
    h.lines.some((l) => /wrong or missing username/.test(String(l.msg))),
    'refusal logged',
  );
  tt.notOk(JSON.stringify(h.lines).includes('p4ss'), 'the password never appears in the logs');
  await ok.endAsync();
  await b.stop();
  await h.cleanup();
});

t.test(
  'oversize payload: connection closed, nothing stored, counted; announced huge packet refused before it is buffered',
  async (tt) => {
    const h = await harness({ sync: 'normal' });
    const { b, url, port } = await startBroker(h, { maxPayload: 1024 });
    const c = await pubClient(url);
    const gone = closed(c);
    c.publish('big/one', Buffer.alloc(1025, 1), { qos: 1 });
    const outcome = await Promise.race([
      gone.then(() => 'closed'),
      new Promise<string>((r) => setTimeout(() => r('still open after 10 s'), 10_000).unref()),
    ]);
    tt.equal(outcome, 'closed', 'the broker closed the connection');
    tt.equal(h.events().length, 0, 'nothing stored');
    tt.equal(
      await h.metric('kedge_mqtt_refused_total', { mode: 'broker', reason: 'oversize' }),
      1,
      'counted',
    );
    tt.ok(
      h.lines.some((l) => l.mqttTopic === 'big/one' && l.bytes === 1025),
      'logged with topic and size',
    );
    c.end(true);

    const exact = await pubClient(url);
    await exact.publishAsync('big/exact', Buffer.alloc(1024, 2), { qos: 1 });
    tt.equal(h.events().length, 1, 'exactly maxPayload is accepted');
    await exact.endAsync();

    // A 100 MB PUBLISH announced in the fixed header: refused on the header, not after buffering.
    const raw = await rawSocket(port);
    raw.s.write(rawConnect('huge'));
    await waitFor(() => raw.received().length >= 4, { timeoutMs: 5_000, what: 'CONNACK' });
    raw.s.write(Buffer.concat([Buffer.from([0x32]), varint(100_000_000), Buffer.alloc(4096, 3)]));
    await raw.ended;
    tt.equal(
      await h.metric('kedge_mqtt_refused_total', { mode: 'broker', reason: 'oversize' }),
      2,
      'announced oversize counted',
    );
    tt.equal(b.status().refused.oversize, 2);
    await b.stop();
    await h.cleanup();
  },
);

t.test('the PUBACK comes only after the commit that stored the message', async (tt) => {
  let commitDone = 0;
  const committedSeqs: number[] = [];
  const h = await harness({
    sync: 'full',
    beforeCommit: (info) => {
      // A slow disk: every commit takes 200 ms.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
      for (let s = info.firstSeq; s <= info.lastSeq; s++) committedSeqs.push(s);
      commitDone = Date.now();
    },
  });
  const { b, url } = await startBroker(h);
  const c = await pubClient(url);
  const acks: { payload: string; at: number; inLog: boolean; commitDone: number }[] = [];
  const started = Date.now();
  await Promise.all(
    Array.from({ length: 10 }, (_, i) => {
      const payload = `slow-${i}`;
      return c.publishAsync('slow/t', payload, { qos: 1 }).then(() => {
        acks.push({
          payload,
          at: Date.now(),
          inLog: h.events().some((e) => e.value.toString() === payload),
          commitDone,
        });
      });
    }),
  );
  tt.equal(acks.length, 10);
  tt.ok(
    acks.every((a) => a.inLog),
    'each message was in the log when its PUBACK arrived',
  );
  tt.ok(
    acks.every((a) => a.commitDone > 0 && a.at >= a.commitDone),
    'each PUBACK arrived after a commit finished',
  );
  tt.ok(
    acks.every((a) => a.at - started >= 200),
    'no PUBACK before the slow commit could have finished',
  );
  tt.ok(
    h.log.stats().commits <= 3,
    `concurrent packets shared the commit (${h.log.stats().commits} commits)`,
  );
  // QoS 2: PUBREC (and so the publish callback) only after the commit too.
  const t2 = Date.now();
  await c.publishAsync('slow/q2', 'qos2', { qos: 2 });
  tt.ok(Date.now() - t2 >= 190, 'QoS 2 completes after the slow commit');
  tt.equal(h.events().filter((e) => e.value.toString() === 'qos2').length, 1, 'QoS 2 stored once');
  await c.endAsync();
  await b.stop();
  await h.cleanup();
});

t.test(
  'the log refuses: no PUBACK, connection closed; the publisher resends and it is stored once',
  async (tt) => {
    const h = await harness({ sync: 'normal' });
    const { b, url } = await startBroker(h);
    let failures = 0;
    h.setAppend(async (events, real) => {
      if (failures < 2) {
        failures++;
        throw new LogWriteError('injected: quota full', 'KEDGE_QUOTA_FULL');
      }
      return real(events);
    });
    const c = await pubClient(url, { reconnectPeriod: 100, clean: false, clientId: 'resender' });
    const acked = c.publishAsync('full/t', 'keep-me', { qos: 1 });
    await acked;
    tt.equal(failures, 2, 'two refused attempts before the one that was stored');
    const evs = h.events();
    tt.same(
      evs.map((e) => e.value.toString()),
      ['keep-me'],
      'stored exactly once, PUBACK after',
    );
    tt.equal(await h.metric('kedge_mqtt_refused_total', { mode: 'broker', reason: 'log' }), 2);
    tt.match(b.status().last_error, /KEDGE_QUOTA_FULL/);
    await c.endAsync();
    await b.stop();
    await h.cleanup();
  },
);

t.test(
  'malformed input, MQTT 5 clients and $SYS publishes are refused without harm',
  async (tt) => {
    const h = await harness({ sync: 'normal' });
    const { b, url, port } = await startBroker(h);

    const garbage = await rawSocket(port);
    garbage.s.write(Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3]));
    await garbage.ended;
    const badQos = await rawSocket(port);
    badQos.s.write(rawConnect('badqos'));
    await waitFor(() => badQos.received().length >= 4, { timeoutMs: 5_000, what: 'CONNACK' });
    badQos.s.write(Buffer.from([0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01]));
    await badQos.ended;
    tt.ok(
      (await h.metric('kedge_mqtt_refused_total', { mode: 'broker', reason: 'malformed' })) >= 2,
      'malformed packets counted',
    );

    const v5 = await mqtt.connectAsync(url, { protocolVersion: 5, reconnectPeriod: 0 }).then(
      () => null,
      (e: Error & { code?: number }) => e,
    );
    tt.ok(v5, 'MQTT 5 client refused');
    tt.equal(v5?.code, 1, 'CONNACK: unacceptable protocol version');
    tt.equal(await h.metric('kedge_mqtt_refused_total', { mode: 'broker', reason: 'protocol' }), 1);
    tt.ok(
      h.lines.some((l) => /speaks MQTT 3\.1\.1/.test(String(l.msg))),
      'operator told why',
    );

    const sys = await pubClient(url);
    const gone = closed(sys);
    sys.publish('$SYS/fake', 'x', { qos: 1 });
    await gone;
    sys.end(true);
    tt.equal(
      await h.metric('kedge_mqtt_refused_total', { mode: 'broker', reason: 'sys-topic' }),
      1,
      '$SYS publish refused',
    );

    const ok = await pubClient(url);
    await ok.publishAsync('still/alive', 'yes', { qos: 1 });
    tt.same(
      h.events().map((e) => e.value.toString()),
      ['yes'],
      'broker still works; nothing else stored',
    );
    await ok.endAsync();
    await b.stop();
    await h.cleanup();
  },
);

t.test(
  'QoS 0 stored, QoS 2 retransmission stored once, will stored, local fan-out works',
  async (tt) => {
    const h = await harness({ sync: 'normal' });
    const { b, url, port } = await startBroker(h);
    const sub = await pubClient(url, { clientId: 'watcher' });
    const seen: string[] = [];
    sub.on('message', (topic, payload) => seen.push(`${topic}=${payload}`));
    await sub.subscribeAsync('room/#', { qos: 1 });

    const c = await pubClient(url);
    await c.subscribeAsync('room/own', { qos: 0 });
    c.on('message', (topic, payload) => seen.push(`self:${topic}=${payload}`));
    await c.publishAsync('room/q0', 'zero', { qos: 0 });
    await c.publishAsync('room/own', 'mine', { qos: 1 });
    await waitEvents(h, 2);

    // QoS 2 PUBLISH sent twice with the same id before PUBREL (a lost PUBREC): one event.
    const raw = await rawSocket(port);
    raw.s.write(rawConnect('q2'));
    await waitFor(() => raw.received().length >= 4, { timeoutMs: 5_000, what: 'CONNACK' });
    raw.s.write(rawPublish('room/q2', Buffer.from('twice'), 2, 7));
    await waitFor(() => raw.received().length >= 8, { timeoutMs: 5_000, what: 'PUBREC' });
    raw.s.write(rawPublish('room/q2', Buffer.from('twice'), 2, 7, true));
    await waitFor(() => raw.received().length >= 12, { timeoutMs: 5_000, what: 'second PUBREC' });
    raw.s.write(Buffer.from([0x62, 0x02, 0x00, 0x07])); // PUBREL
    await waitFor(() => raw.received().length >= 16, { timeoutMs: 5_000, what: 'PUBCOMP' });
    raw.s.end();

    // A publisher that vanishes without DISCONNECT: its will is an event too.
    const dying = await pubClient(url, {
      will: { topic: 'room/will', payload: Buffer.from('gone'), qos: 1, retain: false },
    });
    dying.stream.destroy();
    await waitEvents(h, 4);
    await waitFor(() => seen.length >= 4, { timeoutMs: 5_000, what: 'fan-out' });
    tt.same(
      h.events().map((e) => e.value.toString()),
      ['zero', 'mine', 'twice', 'gone'],
      'QoS 0, QoS 1, QoS 2 once, will',
    );
    tt.ok(
      seen.includes('room/q0=zero') &&
        seen.includes('room/own=mine') &&
        seen.includes('room/q2=twice') &&
        seen.includes('room/will=gone'),
      'subscriber got everything',
    );
    tt.ok(seen.includes('self:room/own=mine'), 'a publisher that subscribes gets its own message');
    await c.endAsync();
    await sub.endAsync();
    await b.stop();
    await h.cleanup();
  },
);

t.test(
  'no broker-side sessions: memory stays flat when a persistent subscriber never returns',
  async (tt) => {
    const h = await harness({ sync: 'normal' });
    const { b, url } = await startBroker(h);
    const first = await pubClient(url, { clean: false, clientId: 'sticky' });
    await first.subscribeAsync('sess/#', { qos: 1 });
    await first.endAsync();
    const p = await pubClient(url);
    await p.publishAsync('sess/x', 'while-away', { qos: 1 });
    const again = mqtt.connect(url, {
      protocolVersion: 4,
      clean: false,
      clientId: 'sticky',
      reconnectPeriod: 0,
    });
    const got: string[] = [];
    again.on('message', (_t, m) => got.push(m.toString()));
    const connack = await new Promise<{ sessionPresent: boolean }>((r) => again.once('connect', r));
    tt.equal(connack.sessionPresent, false, 'CONNACK: session not present');
    await new Promise((r) => setTimeout(r, 200));
    tt.same(got, [], 'nothing was queued for the absent subscriber');
    tt.equal(h.events().length, 1, 'the message itself is in the log');
    await again.endAsync();
    await p.endAsync();
    await b.stop();
    await h.cleanup();
  },
);

t.test('TLS listener (KEDGE_MQTT_TLS_CERT / KEDGE_MQTT_TLS_KEY)', async (tt) => {
  const h = await harness({ sync: 'normal' });
  const cert = join(h.dir, 'cert.pem');
  const key = join(h.dir, 'key.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '1',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
    ],
    { stdio: 'ignore' },
  );
  const { b, port } = await startBroker(h, { tlsCert: cert, tlsKey: key });
  tt.equal(b.status().tls, true);
  const c = await pubClient(`mqtts://127.0.0.1:${port}`, { rejectUnauthorized: false });
  await c.publishAsync('tls/t', 'secret', { qos: 1 });
  tt.same(
    h.events().map((e) => e.value.toString()),
    ['secret'],
  );
  await c.endAsync();
  // A plain-text client on the TLS port: handshake fails, broker unharmed.
  const plain = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
    reconnectPeriod: 0,
    connectTimeout: 2_000,
  });
  const outcome = await new Promise<string>((r) => {
    plain.once('connect', () => r('connected'));
    plain.once('close', () => r('closed'));
    plain.once('error', () => r('closed'));
  });
  plain.end(true);
  tt.equal(outcome, 'closed', 'plain-text client refused');
  // A TCP connection that never starts the handshake does not hold up stop().
  const idle = netConnect({ host: '127.0.0.1', port });
  idle.on('error', () => {});
  await new Promise((r) => idle.once('connect', r));
  const t0 = Date.now();
  await b.stop();
  tt.ok(Date.now() - t0 < 2_000, 'stop() does not wait for idle connections');
  await h.cleanup();
});

t.test('listen errors are reported in operator terms', async (tt) => {
  const h = await harness({ sync: 'normal' });
  const { b, port } = await startBroker(h);
  const second = new MqttBrokerIngest({
    listen: { host: '127.0.0.1', port },
    username: null,
    password: null,
    kafkaTopic: null,
    topicPrefixLength: 0,
    maxPayload: 1024,
    tlsCert: null,
    tlsKey: null,
    agentId: 'x',
    sink: h.sink,
    metrics: h.metrics,
    logger: h.logger,
  });
  await tt.rejects(second.start(), {
    message: new RegExp(`KEDGE_MQTT_LISTEN 127\\.0\\.0\\.1:${port}: address already in use`),
  });
  await b.stop();
  await h.cleanup();
});
