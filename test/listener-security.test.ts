/**
 * Keeping strangers out of the local listeners: the HTTP bearer token (ingest and control),
 * HTTPS, the embedded MQTT broker's credentials and MQTTS, loopback by default, and the
 * warning when a listener faces the network without a token or credentials. The agent runs
 * as a child process; Kafka is an unreachable address (events simply stay in the log).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { Agent as UndiciAgent, request } from 'undici';
import { AgentProc, REPO, cleanup, freeLoopbackPort, post, tempDir } from './helpers/agent.ts';
import { makeTestCerts } from './helpers/certs.ts';
import { run, spawnProc, waitFor } from './helpers/proc.ts';
import { tokenMatches } from '../agent/ingest/token.ts';
import { loadConfig } from '../agent/config.ts';
import { NODE_FLAGS } from '../agent/runtime-flags.ts';

const certs = makeTestCerts();
const dirs: string[] = [];
t.teardown(() => {
  for (const d of dirs) cleanup(d);
  certs.remove();
});
// Nothing listens there: the link stays down and every accepted event stays in the backlog.
const deadKafka = `127.0.0.1:${await freeLoopbackPort()}`;

function dataDir(): string {
  const d = tempDir();
  dirs.push(d);
  return d;
}

const CLI = [process.execPath, ...NODE_FLAGS, join(REPO, 'agent/cli.ts')];
const baseEnv = (): Record<string, string> => ({
  PATH: process.env.PATH ?? '',
  KEDGE_DATA_DIR: dataDir(),
  KEDGE_KAFKA_BROKERS: deadKafka,
  KEDGE_HEARTBEAT_TOPIC: '',
});

const mqttOpts = { protocolVersion: 4 as const, reconnectPeriod: 0, connectTimeout: 5_000 };

/**
 * Connects once: the client, or why not. MQTT.js' connectAsync never settles when the server
 * just closes the connection (no 'error' event), which is what a TLS listener does to plain MQTT.
 */
function tryConnect(
  url: string,
  opts: mqtt.IClientOptions,
): Promise<{ client: mqtt.MqttClient } | { error: Error & { code?: number } }> {
  return new Promise((resolve) => {
    const c = mqtt.connect(url, { ...mqttOpts, ...opts });
    const fail = (error: Error) => {
      clearTimeout(timer);
      c.end(true);
      resolve({ error });
    };
    const timer = setTimeout(() => fail(new Error('no CONNACK within 10 s')), 10_000);
    c.once('connect', () => {
      clearTimeout(timer);
      resolve({ client: c });
    });
    c.once('error', fail);
    c.once('close', () => fail(new Error('connection closed before CONNACK')));
  });
}

/** The refusal of a connect attempt that must fail, or null (after closing the client) when it got in. */
async function refusal(
  url: string,
  opts: mqtt.IClientOptions,
): Promise<(Error & { code?: number }) | null> {
  const r = await tryConnect(url, opts);
  if ('error' in r) return r.error;
  await r.client.endAsync();
  return null;
}

t.test('listeners bind loopback by default', async (t) => {
  const cfg = loadConfig({});
  t.equal(cfg.http.listen?.host, '127.0.0.1', 'HTTP on 127.0.0.1');
  t.equal(
    cfg.mqtt.listen,
    null,
    'the embedded MQTT listener is off unless KEDGE_MQTT_LISTEN is set',
  );
});

t.test(
  'lint (reads the source, measures nothing): the token is compared with timingSafeEqual on digests',
  async (t) => {
    const src = readFileSync(join(REPO, 'agent/ingest/token.ts'), 'utf8');
    t.match(src, /timingSafeEqual\(/, 'token.ts compares with crypto.timingSafeEqual');
    t.match(
      src,
      /createHash\('sha256'\)/,
      'on fixed-length digests (no early exit on a length mismatch)',
    );
    for (const f of ['agent/ingest/http.ts', 'agent/ingest/mqtt-broker.ts']) {
      const code = readFileSync(join(REPO, f), 'utf8');
      t.match(code, /tokenMatches\(/, `${f} uses tokenMatches`);
      t.notMatch(
        code,
        /(token|password)\s*[!=]==(?!\s*(null|undefined)\b)|[!=]==\s*(this\.opts\.|o\.)?(token|password)\b/,
        `${f} never compares a secret with ===`,
      );
    }
    t.equal(tokenMatches('s3cret-token', 's3cret-token'), true);
    t.equal(tokenMatches('s3cret-tokeN', 's3cret-token'), false);
    t.equal(tokenMatches('s3cret', 's3cret-token'), false, 'a prefix does not match');
    t.equal(tokenMatches('', 's3cret-token'), false);
  },
);

t.test('HTTP token: ingest and pause/resume need it, the right one is accepted', async (t) => {
  const token = 'tok-7f3a9c1e5b';
  const agent = await AgentProc.start({ env: { ...baseEnv(), KEDGE_HTTP_TOKEN: token } });
  t.teardown(() => agent.stop());
  const ingest = `${agent.base}/v1/topics/secured`;
  const bearer = (tok: string) => ({ authorization: `Bearer ${tok}` });

  for (const [what, headers] of [
    ['no Authorization header', {}],
    ['a wrong token', bearer('tok-7f3a9c1e5c')],
    ['a prefix of the token', bearer('tok-7f3a')],
    [
      'the token as Basic auth',
      { authorization: `Basic ${Buffer.from(`x:${token}`).toString('base64')}` },
    ],
  ] as const) {
    const res = await post(ingest, '{"a":1}', 'application/json', headers);
    t.equal(res.status, 401, `ingest with ${what}: 401`);
    t.equal(res.body.error, 'unauthorized');
    t.match(res.headers['www-authenticate'], /^Bearer/);
    const rest = await post(
      `${agent.base}/topics/secured`,
      '{"records":[{"value":1}]}',
      'application/vnd.kafka.json.v2+json',
      headers,
    );
    t.equal(rest.status, 401, `REST proxy produce with ${what}: 401`);
    for (const action of ['pause', 'resume']) {
      const r = await post(`${agent.base}/v1/forwarding/${action}`, '', undefined, headers);
      t.equal(r.status, 401, `${action} with ${what}: 401`);
    }
  }
  t.equal((await agent.status()).backlog.events, 0, 'nothing stored by refused requests');
  t.not((await agent.status()).link.state, 'paused', 'not paused by refused requests');

  const ok = await post(ingest, '{"a":1}', 'application/json', bearer(token));
  t.equal(ok.status, 200, 'ingest with the right token: 200');
  t.equal(ok.body.accepted, 1);
  const paused = await post(`${agent.base}/v1/forwarding/pause`, '', undefined, bearer(token));
  t.equal(paused.status, 200, 'pause with the right token');
  t.equal((await agent.status()).link.state, 'paused');
  const resumed = await post(`${agent.base}/v1/forwarding/resume`, '', undefined, bearer(token));
  t.equal(resumed.status, 200, 'resume with the right token');
  t.not((await agent.status()).link.state, 'paused');
  t.equal((await agent.status()).backlog.events, 1, 'exactly the accepted event is in the log');
});

t.test(
  'embedded MQTT broker credentials: wrong → CONNACK not authorized, right → PUBACK',
  async (t) => {
    const mqttPort = await freeLoopbackPort();
    const agent = await AgentProc.start({
      env: {
        ...baseEnv(),
        KEDGE_MQTT_LISTEN: `127.0.0.1:${mqttPort}`,
        KEDGE_MQTT_USERNAME: 'sensor',
        KEDGE_MQTT_PASSWORD: 'mq-pass-91',
      },
    });
    t.teardown(() => agent.stop());
    const url = `mqtt://127.0.0.1:${mqttPort}`;
    for (const [what, creds] of [
      ['a wrong password', { username: 'sensor', password: 'mq-pass-92' }],
      ['a wrong user name', { username: 'sensors', password: 'mq-pass-91' }],
      ['no credentials', {}],
    ] as const) {
      const err = await refusal(url, creds);
      t.ok(err, `connect with ${what} refused`);
      t.equal(err?.code, 5, `CONNACK return code 5 (not authorized) for ${what}`);
    }
    const c = await mqtt.connectAsync(url, {
      ...mqttOpts,
      username: 'sensor',
      password: 'mq-pass-91',
    });
    const ack = await c.publishAsync('plant/line1/temp', '21.5', { qos: 1 });
    t.ok(ack, 'QoS 1 publish acknowledged (PUBACK)');
    await c.endAsync();
    t.equal((await agent.status()).backlog.events, 1, 'the one message is in the log');
    t.ok(
      agent.lines.some((l) =>
        l.includes('MQTT client refused: wrong or missing username/password'),
      ),
      'refusals are logged',
    );
  },
);

t.test('HTTPS and MQTTS listeners', async (t) => {
  const [httpPort, mqttPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
  const env = {
    ...baseEnv(),
    KEDGE_HTTP_LISTEN: `127.0.0.1:${httpPort}`,
    KEDGE_HTTP_TLS_CERT: certs.serverCertFile,
    KEDGE_HTTP_TLS_KEY: certs.serverKeyFile,
    KEDGE_MQTT_LISTEN: `127.0.0.1:${mqttPort}`,
    KEDGE_MQTT_TLS_CERT: certs.serverCertFile,
    KEDGE_MQTT_TLS_KEY: certs.serverKeyFile,
  };
  // AgentProc polls plain http for readiness; here the listener speaks only TLS.
  const agent = spawnProc(CLI[0], [...CLI.slice(1), 'run'], { env, name: 'kedge' });
  t.teardown(() => agent.stop());
  await agent.waitForLine(/embedded MQTT broker listening/, 30_000);
  await agent.waitForLine(/http ingest listening/, 30_000);

  const ca = readFileSync(certs.caFile);
  const trusting = new UndiciAgent({ connect: { ca } });
  t.teardown(() => trusting.close());
  const https = `https://127.0.0.1:${httpPort}`;
  const status = async () =>
    (await (await request(`${https}/v1/status`, { dispatcher: trusting })).body.json()) as any;

  await t.test('HTTPS with the CA: ingest and status work', async (t) => {
    const r = await request(`${https}/v1/topics/tls-in`, {
      method: 'POST',
      body: '{"x":1}',
      headers: { 'content-type': 'application/json' },
      dispatcher: trusting,
    });
    t.equal(r.statusCode, 200);
    t.equal(((await r.body.json()) as any).accepted, 1);
    t.equal((await status()).backlog.events, 1);
  });

  await t.test('HTTPS without trusting the CA fails the certificate check', async (t) => {
    const plainAgent = new UndiciAgent();
    t.teardown(() => plainAgent.close());
    const err = await request(`${https}/healthz`, { dispatcher: plainAgent }).then(
      () => null,
      (e: Error & { code?: string }) => e,
    );
    t.ok(err, 'refused');
    t.match(
      err?.code ?? err?.message,
      /UNABLE_TO_VERIFY|SELF_SIGNED|CERT/i,
      `certificate error: ${err?.code} ${err?.message}`,
    );
  });

  await t.test(
    'kedge status reaches the HTTPS listener by pinning its own certificate',
    async (t) => {
      const env = {
        PATH: process.env.PATH ?? '',
        KEDGE_HTTP_LISTEN: `127.0.0.1:${httpPort}`,
        KEDGE_HTTP_TLS_CERT: certs.serverCertFile,
        KEDGE_HTTP_TLS_KEY: certs.serverKeyFile,
      };
      const ok = spawnSync(process.execPath, [...CLI.slice(1), 'status', '--json'], {
        env,
        encoding: 'utf8',
        timeout: 30_000,
      });
      t.not(ok.status, 3, `reachable (exit ${ok.status}; ${ok.stderr.trim()})`);
      t.equal(JSON.parse(ok.stdout).backlog.events, 1, 'the status of this agent');
      // Another certificate in KEDGE_HTTP_TLS_CERT (the client one, same CA): the pin refuses the listener.
      const wrong = spawnSync(process.execPath, [...CLI.slice(1), 'status'], {
        env: {
          ...env,
          KEDGE_HTTP_TLS_CERT: certs.clientCertFile,
          KEDGE_HTTP_TLS_KEY: certs.clientKeyFile,
        },
        encoding: 'utf8',
        timeout: 30_000,
      });
      t.equal(wrong.status, 3, 'a different certificate: unreachable');
      t.match(wrong.stderr, /not the one in KEDGE_HTTP_TLS_CERT/, wrong.stderr.trim());
    },
  );

  await t.test('plain HTTP to the TLS port is refused, nothing stored', async (t) => {
    const r = await request(`http://127.0.0.1:${httpPort}/v1/topics/tls-in`, {
      method: 'POST',
      body: '{"x":2}',
      headers: { 'content-type': 'application/json' },
      headersTimeout: 5_000,
    }).then(
      async (res) => {
        await res.body.text();
        return res.statusCode;
      },
      (e: Error) => e,
    );
    t.ok(
      r instanceof Error || r >= 400,
      `plain HTTP gets no 2xx (${r instanceof Error ? r.message : r})`,
    );
    t.equal((await status()).backlog.events, 1, 'still one event');
  });

  await t.test('MQTTS with the CA: PUBACK; without the CA or in plain MQTT: refused', async (t) => {
    const c = await mqtt.connectAsync(`mqtts://127.0.0.1:${mqttPort}`, { ...mqttOpts, ca });
    t.ok(
      await c.publishAsync('tls/topic', 'hello', { qos: 1 }),
      'QoS 1 publish over TLS acknowledged',
    );
    await c.endAsync();
    await waitFor(async () => (await status()).backlog.events === 2, {
      timeoutMs: 10_000,
      what: 'two events',
    });

    const untrusted = await refusal(`mqtts://127.0.0.1:${mqttPort}`, {});
    t.ok(untrusted, `mqtts without the CA refused (${untrusted?.message})`);
    const plain = await refusal(`mqtt://127.0.0.1:${mqttPort}`, {});
    t.ok(plain, `plain MQTT to the TLS port refused (${plain?.message})`);
    t.equal((await status()).backlog.events, 2, 'nothing more stored');
  });
});

t.test(
  'listening on all interfaces without a token or credentials: a warning in the log and in status',
  async (t) => {
    const [httpPort, mqttPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
    const open = await AgentProc.start({
      port: httpPort,
      env: {
        ...baseEnv(),
        KEDGE_HTTP_LISTEN: `0.0.0.0:${httpPort}`,
        KEDGE_MQTT_LISTEN: `0.0.0.0:${mqttPort}`,
      },
    });
    const warns = open.lines
      .map((l) => JSON.parse(l))
      .filter((o) => o.level === 'warn' && /not loopback/.test(o.msg));
    const s = await open.status();
    const openEnv = { ...baseEnv(), KEDGE_HTTP_LISTEN: `0.0.0.0:${httpPort}` };
    const openStatus = await run(CLI[0], [...CLI.slice(1), 'status'], {
      env: openEnv,
      timeoutMs: 30_000,
    });
    await open.stop();
    t.match(
      openStatus.stdout,
      /warning +HTTP listens on 0\.0\.0\.0/,
      '`kedge status` shows the warning',
    );
    t.equal(warns.length, 2, 'two warning lines');
    t.match(
      warns.map((w) => w.msg).join('\n'),
      /HTTP listens on 0\.0\.0\.0:\d+ \(not loopback\) without KEDGE_HTTP_TOKEN/,
    );
    t.match(
      warns.map((w) => w.msg).join('\n'),
      /MQTT listens on 0\.0\.0\.0:\d+ \(not loopback\) without KEDGE_MQTT_USERNAME\/KEDGE_MQTT_PASSWORD/,
    );
    t.equal(s.warnings.length, 2, 'both in /v1/status warnings');
    t.match(s.warnings.join('\n'), /HTTP listens on 0\.0\.0\.0.*KEDGE_HTTP_TOKEN/);
    t.match(s.warnings.join('\n'), /MQTT listens on 0\.0\.0\.0.*KEDGE_MQTT_USERNAME/);

    const [httpPort2, mqttPort2] = [await freeLoopbackPort(), await freeLoopbackPort()];
    const env = {
      ...baseEnv(),
      KEDGE_HTTP_LISTEN: `0.0.0.0:${httpPort2}`,
      KEDGE_HTTP_TOKEN: 'tok-open-net',
      KEDGE_MQTT_LISTEN: `0.0.0.0:${mqttPort2}`,
      KEDGE_MQTT_USERNAME: 'sensor',
      KEDGE_MQTT_PASSWORD: 'mq-open-net',
    };
    const locked = await AgentProc.start({ port: httpPort2, env });
    t.teardown(() => locked.stop());
    const s2 = await locked.status();
    t.strictSame(s2.warnings, [], 'with a token and credentials: no warning in status');
    t.notOk(
      locked.lines.some((l) => /not loopback/.test(l)),
      'and none in the log',
    );
    // `kedge status` shows the warnings too (and none here).
    const st = await run(CLI[0], [...CLI.slice(1), 'status'], { env, timeoutMs: 30_000 });
    t.notMatch(st.stdout, /warning/, '`kedge status` shows no warning');
  },
);

/** This machine's first non-loopback IPv4 address (the agent sees it as another host), or null. */
function otherHostAddress(): string | null {
  for (const list of Object.values(networkInterfaces()))
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  return null;
}

/** One request from `from` (the client socket bound there) to `host:port`: status and JSON body. */
function requestFrom(
  from: string,
  host: string,
  port: number,
  method: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host, port, method, path, localAddress: from, headers, timeout: 10_000 },
      (res) => {
        // A tap that is let in streams forever: the status is all this needs.
        if (res.statusCode === 200 && path.startsWith('/v1/tap')) {
          res.destroy();
          resolve({ status: 200, body: null });
          return;
        }
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => {
          text += c;
        });
        res.on('end', () => {
          let body: any = text;
          try {
            body = JSON.parse(text);
          } catch {}
          resolve({ status: res.statusCode ?? 0, body });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer in 10 s`)));
    req.on('error', reject);
    req.end();
  });
}

const otherHost = otherHostAddress();
t.test(
  'without a token, tap and dead letters answer loopback peers only (403 token_required from another host)',
  {
    skip:
      otherHost === null &&
      'no non-loopback address on this machine (test/dead-letters-unit.test.ts covers the rule)',
  },
  async (t) => {
    const other = otherHost as string;
    const port = await freeLoopbackPort();
    const open = await AgentProc.start({
      port,
      env: { ...baseEnv(), KEDGE_HTTP_LISTEN: `0.0.0.0:${port}` },
    });
    t.teardown(() => open.stop());
    const routes: [string, string][] = [
      ['GET', '/v1/dead-letters'],
      ['GET', '/v1/dead-letters/1'],
      ['POST', '/v1/dead-letters/replay?all=1'],
      ['POST', '/v1/dead-letters/purge?all=1'],
      ['GET', '/v1/tap'],
    ];
    for (const [method, path] of routes) {
      const r = await requestFrom(other, other, port, method, path);
      t.equal(r.status, 403, `${method} ${path} from ${other}: 403`);
      t.same(
        r.body,
        {
          error: 'token_required',
          detail: 'set KEDGE_HTTP_TOKEN to use /v1/tap and /v1/dead-letters from another host',
        },
        'with what to do',
      );
    }
    t.equal(
      (await requestFrom(other, other, port, 'GET', '/v1/status')).status,
      200,
      '/v1/status from another host still needs no token',
    );
    const local = await requestFrom('127.0.0.1', '127.0.0.1', port, 'GET', '/v1/dead-letters');
    t.equal(local.status, 200, 'from 127.0.0.1 without a token: 200');
    t.equal(local.body.total, 0);
    t.equal(
      (await requestFrom('127.0.0.1', '127.0.0.1', port, 'GET', '/v1/tap?limit=1')).status,
      200,
      'tap from 127.0.0.1: 200',
    );

    // With a token, the token decides, from anywhere.
    const port2 = await freeLoopbackPort();
    const token = 'tok-remote-ok';
    const locked = await AgentProc.start({
      port: port2,
      env: { ...baseEnv(), KEDGE_HTTP_LISTEN: `0.0.0.0:${port2}`, KEDGE_HTTP_TOKEN: token },
    });
    t.teardown(() => locked.stop());
    const auth = { authorization: `Bearer ${token}` };
    t.equal(
      (await requestFrom(other, other, port2, 'GET', '/v1/dead-letters', auth)).status,
      200,
      `token set: from ${other} with the token: 200`,
    );
    t.equal(
      (await requestFrom(other, other, port2, 'GET', '/v1/dead-letters')).status,
      401,
      'and without it: 401',
    );
  },
);
