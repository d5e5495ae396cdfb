/**
 * Slow and idle clients against the in-process agent: a body trickled one
 * byte per second, a thousand idle HTTP connections, hundreds of MQTT sockets
 * that never send CONNECT. Timeouts and the connection cap must shed them while
 * a normal client keeps being served. The limits are the production ones
 * (HttpLimits, AgentTuning) shortened so the file runs in well under 2 minutes.
 */
import t from 'tap';
import { Writable } from 'node:stream';
import { connect as netConnect, type Socket } from 'node:net';
import { request as httpRequest } from 'node:http';
import mqtt from 'mqtt';
import { Pool } from 'undici';
import { loadConfig } from '../agent/config.ts';
import { Agent } from '../agent/agent.ts';
import { createLogger } from '../agent/observe/logger.ts';
import { cleanup, freeLoopbackPort, sleep, tempDir } from './helpers/agent.ts';

const LIMITS = {
  headersTimeoutMs: 2_000,
  requestTimeoutMs: 4_000,
  keepAliveTimeoutMs: 2_000,
  maxConnections: 256,
};
const MQTT_CONNECT_TIMEOUT = 2_000;

const dir = tempDir('kedge-slow-clients-');
const httpPort = await freeLoopbackPort();
const mqttPort = await freeLoopbackPort();
const cfg = loadConfig({
  KEDGE_DATA_DIR: dir,
  KEDGE_KAFKA_BROKERS: `127.0.0.1:${await freeLoopbackPort()}`,
  KEDGE_HTTP_LISTEN: `127.0.0.1:${httpPort}`,
  KEDGE_MQTT_LISTEN: `127.0.0.1:${mqttPort}`,
  KEDGE_HEARTBEAT_TOPIC: '',
});
const quiet = new Writable({ write: (_c, _e, cb) => cb() });
const agent = new Agent(cfg, createLogger('warn', quiet), {
  httpLimits: LIMITS,
  mqttConnectTimeoutMs: MQTT_CONNECT_TIMEOUT,
});
await agent.start();
t.teardown(async () => {
  await agent.stop();
  cleanup(dir);
});
const base = `http://127.0.0.1:${httpPort}`;

/** A normal client on one kept-alive connection (opened before any attack). */
const pool = new Pool(base, { connections: 1, pipelining: 1, keepAliveTimeout: 1_000 });
t.teardown(() => pool.close());

async function backlog(): Promise<number> {
  const r = await pool.request({ path: '/v1/status', method: 'GET' });
  return ((await r.body.json()) as any).backlog.events;
}

/** POSTs one event on a fresh connection, retrying refused connections; resolves with the total latency. */
async function postFresh(i: number): Promise<{ ok: boolean; ms: number; tries: number }> {
  const t0 = Date.now();
  for (let tries = 1; tries <= 100; tries++) {
    const status = await new Promise<number>((resolve) => {
      const req = httpRequest(
        {
          host: '127.0.0.1',
          port: httpPort,
          method: 'POST',
          path: '/v1/topics/fresh',
          agent: false,
          headers: { 'content-type': 'application/json' },
          timeout: 5_000,
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('timeout', () => req.destroy());
      req.on('error', () => resolve(0));
      req.end(JSON.stringify({ i }));
    });
    if (status === 200) return { ok: true, ms: Date.now() - t0, tries };
    await sleep(100);
  }
  return { ok: false, ms: Date.now() - t0, tries: 100 };
}

/**
 * Keeps a normal client posting (keep-alive pool) until stopped. A request whose
 * connection was refused is retried, as any real client does; `maxMs` is the
 * worst time to a 200 including retries, `retries` how often that was needed.
 */
function steadyClient() {
  let stop = false;
  const res = { ok: 0, failed: 0, retries: 0, maxMs: 0, errors: [] as string[] };
  const done = (async () => {
    for (let i = 0; !stop && i < 10_000; i++) {
      const t0 = Date.now();
      let ok = false;
      for (let attempt = 0; !ok && attempt < 100; attempt++) {
        if (attempt > 0) {
          res.retries++;
          await sleep(100);
        }
        try {
          const r = await pool.request({
            path: '/v1/topics/steady',
            method: 'POST',
            body: JSON.stringify({ i }),
            headers: { 'content-type': 'application/json' },
            headersTimeout: 10_000,
          });
          await r.body.dump();
          if (r.statusCode === 200) ok = true;
          else res.errors.push(`status ${r.statusCode}`);
        } catch (e) {
          // Refused before the request was read (connection cap): nothing stored, safe to resend.
          res.errors.push((e as Error).message);
        }
      }
      if (ok) res.ok++;
      else res.failed++;
      res.maxMs = Math.max(res.maxMs, Date.now() - t0);
      await sleep(50);
    }
  })();
  return {
    res,
    stop: async () => {
      stop = true;
      await done;
      return res;
    },
  };
}

/** Opens n TCP connections that send nothing; `closed` counts those the server closed. */
async function idleSockets(port: number, n: number) {
  const sockets: Socket[] = [];
  const state = { closed: 0, opened: 0 };
  await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<void>((resolve) => {
          const s = netConnect(port, '127.0.0.1');
          sockets.push(s);
          s.on('error', () => {});
          s.once('connect', () => {
            state.opened++;
            resolve();
          });
          s.once('close', () => {
            state.closed++;
            resolve();
          });
        }),
    ),
  );
  return {
    state,
    destroy: () => {
      for (const s of sockets) s.destroy();
    },
  };
}

async function waitUntil(cond: () => boolean, ms: number): Promise<number> {
  const t0 = Date.now();
  while (!cond() && Date.now() - t0 < ms) await sleep(50);
  return Date.now() - t0;
}

t.test(
  'a body trickled one byte per second is cut off at the request timeout; nothing stored',
  async (tt) => {
    const before = await backlog();
    const steady = steadyClient();
    const t0 = Date.now();
    const s = netConnect(httpPort, '127.0.0.1');
    s.on('error', () => {});
    let reply = '';
    s.on('data', (d) => (reply += d.toString()));
    const closed = new Promise<number>((r) => s.once('close', () => r(Date.now() - t0)));
    s.write(
      'POST /v1/topics/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{',
    );
    const drip = setInterval(() => s.writable && s.write(' '), 1_000);
    const ms = await Promise.race([closed, sleep(LIMITS.requestTimeoutMs + 10_000).then(() => -1)]);
    clearInterval(drip);
    s.destroy();
    tt.ok(ms > 0, `the slow request was closed by the agent after ${ms} ms`);
    tt.ok(
      ms >= LIMITS.requestTimeoutMs - 500 && ms <= LIMITS.requestTimeoutMs + 3_000,
      `... around the request timeout (${LIMITS.requestTimeoutMs} ms)`,
    );
    tt.notMatch(reply, /^HTTP\/1\.1 2/, 'no success answer');
    const r = await steady.stop();
    tt.ok(
      r.failed === 0 && r.retries === 0,
      `the normal client was served meanwhile without a retry (${r.ok} requests, slowest ${r.maxMs} ms)`,
    );
    tt.ok(r.maxMs < 2_000, 'with bounded latency (< 2 s)');
    tt.equal(await backlog(), before + r.ok, 'backlog grew by the normal client only');
  },
);

t.test(
  '1,000 idle HTTP connections: capped and timed out; normal clients keep getting 2xx',
  async (tt) => {
    await backlog(); // the kept-alive connection is open before the attack
    const steady = steadyClient();
    const t0 = Date.now();
    const idle = await idleSockets(httpPort, 1_000);
    const openedMs = Date.now() - t0;
    // Beyond maxConnections the agent closes new sockets at once.
    await sleep(300);
    tt.ok(
      idle.state.closed >= 1_000 - LIMITS.maxConnections - 5,
      `connections past the cap closed at once (${idle.state.closed} of 1000 within ${openedMs + 300} ms)`,
    );

    // A client needing a new connection gets in once idle ones time out (headers timeout), retrying refused connects.
    const fresh = await Promise.all(Array.from({ length: 5 }, (_, i) => postFresh(i)));
    tt.ok(
      fresh.every((f) => f.ok),
      'new-connection clients were all answered 200',
    );
    const worst = Math.max(...fresh.map((f) => f.ms));
    tt.ok(
      worst < LIMITS.headersTimeoutMs + 5_000,
      `new-connection clients: worst latency ${worst} ms incl. retries (bound headers timeout + 5 s)`,
    );

    await waitUntil(() => idle.state.closed >= 1_000, LIMITS.headersTimeoutMs + 5_000);
    tt.equal(
      idle.state.closed,
      1_000,
      `every idle connection closed by the agent (${Date.now() - t0} ms after the attack began)`,
    );
    idle.destroy();
    await sleep(1_000);
    const r = await steady.stop();
    tt.ok(r.ok >= 5, 'the steady client is served again once the silent connections are gone');
    tt.equal(
      r.failed,
      0,
      `the steady client got every event in (${r.ok} requests, ${r.retries} retries after refused connections)`,
      { errors: r.errors.slice(0, 5) },
    );
    tt.ok(
      r.maxMs < LIMITS.headersTimeoutMs + 3_000,
      `steady client: slowest request ${r.maxMs} ms incl. retries (bound headers timeout + 3 s)`,
    );
  },
);

t.test(
  'MQTT: 300 sockets that never send CONNECT are closed after the connect timeout; a publisher is served',
  async (tt) => {
    const good = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, {
      protocolVersion: 4,
      reconnectPeriod: 0,
      clientId: 'good-slow',
    });
    let acked = 0;
    let maxMs = 0;
    let stop = false;
    const pub = (async () => {
      for (let i = 0; !stop && i < 10_000; i++) {
        const t0 = Date.now();
        await good.publishAsync('slow/test', String(i), { qos: 1 });
        maxMs = Math.max(maxMs, Date.now() - t0);
        acked++;
        await sleep(20);
      }
    })();
    const t0 = Date.now();
    const idle = await idleSockets(mqttPort, 300);
    tt.equal(idle.state.opened, 300, '300 idle MQTT connections accepted');
    await waitUntil(() => idle.state.closed >= 300, MQTT_CONNECT_TIMEOUT + 5_000);
    const ms = Date.now() - t0;
    tt.equal(idle.state.closed, 300, `all closed by the agent after ${ms} ms`);
    tt.ok(
      ms >= MQTT_CONNECT_TIMEOUT - 200,
      `... not before the connect timeout (${MQTT_CONNECT_TIMEOUT} ms)`,
    );
    idle.destroy();
    const during = acked;
    await sleep(300);
    stop = true;
    await pub;
    await good.endAsync();
    tt.ok(during >= 20, `publisher got ${during} PUBACKs during the attack`);
    tt.ok(maxMs < 2_000, `slowest PUBACK ${maxMs} ms (bound 2 s)`);
    const m = await agent.metrics.mqttProtocolErrors.get();
    const timeouts = m.values.find((v) => v.labels.kind === 'connect_timeout')?.value ?? 0;
    tt.ok(
      timeouts >= 300,
      `kedge_mqtt_protocol_errors_total{kind="connect_timeout"} = ${timeouts}`,
    );
  },
);
