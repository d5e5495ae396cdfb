/**
 * No configured secret appears in any output: the agent's stdout/stderr at debug level,
 * `kedge check-config` (env and env file, valid and invalid), `kedge status` and `--json`,
 * /v1/status, /metrics and the heartbeat records in Kafka. The agent runs against a real
 * SASL_SSL broker (SCRAM-SHA-512) with an HTTP token and embedded MQTT credentials, and
 * again with a wrong Kafka password and an MQTT URL carrying a password (the error paths).
 */
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { request } from 'undici';
import { AgentProc, REPO, cleanup, freeLoopbackPort, post, tempDir } from './helpers/agent.ts';
import { makeTestCerts } from './helpers/certs.ts';
import { run, waitFor } from './helpers/proc.ts';
import {
  kafkajsConfig,
  kedgeKafkaEnv,
  readTopic,
  startSecureKafka,
  type Access,
} from './helpers/secure-kafka.ts';
import { NODE_FLAGS } from '../agent/runtime-flags.ts';

// Distinctive values: a hit can only be a leak, never a coincidence.
const SECRETS = {
  KEDGE_HTTP_TOKEN: 'httpTOK-Lm4nP7wQ2e',
  KEDGE_KAFKA_PASSWORD: 'kafkaPW-Zq8rT1vXo9',
  KEDGE_MQTT_PASSWORD: 'mqttPW-Hy2kD9sBu3',
  'KEDGE_KAFKA_PASSWORD (wrong one)': 'wrongKafkaPW-Jx5Gv8',
  'password in KEDGE_MQTT_URL': 'urlPW-Rt6Yc3Nn1',
};

const certs = makeTestCerts();
const kafka = await startSecureKafka(certs, {
  scram: [{ mechanism: 'SCRAM-SHA-512', name: 'edge-sec', password: SECRETS.KEDGE_KAFKA_PASSWORD }],
});
const dirs: string[] = [];
t.teardown(async () => {
  await kafka.stop();
  for (const d of dirs) cleanup(d);
  certs.remove();
});
const access: Access = {
  listener: 'SASL_SSL',
  caFile: certs.caFile,
  sasl: {
    mechanism: 'scram-sha-512',
    username: 'edge-sec',
    password: SECRETS.KEDGE_KAFKA_PASSWORD,
  },
};
const CLI = [process.execPath, ...NODE_FLAGS, join(REPO, 'agent/cli.ts')];

/** Every output gathered, by where it came from. */
const outputs: [string, string][] = [];
const collect = (where: string, text: string) => outputs.push([where, text]);

function leaks(text: string): string[] {
  return Object.entries(SECRETS)
    .filter(([, v]) => text.includes(v))
    .map(([k]) => k);
}

async function get(url: string, headers: Record<string, string> = {}): Promise<string> {
  const r = await request(url, { headers });
  return r.body.text();
}

async function cli(env: Record<string, string>, ...args: string[]): Promise<string> {
  const r = await run(CLI[0], [...CLI.slice(1), ...args], {
    env: { PATH: process.env.PATH ?? '', ...env },
    timeoutMs: 30_000,
  });
  return `exit ${r.code}\n${r.output}`;
}

t.test(
  'with the right credentials: forwarding works, debug logs and every output are clean',
  async (t) => {
    const dir = tempDir();
    dirs.push(dir);
    const mqttPort = await freeLoopbackPort();
    const env: Record<string, string> = {
      KEDGE_DATA_DIR: dir,
      KEDGE_AGENT_ID: 'secrets-agent',
      KEDGE_LOG_LEVEL: 'debug',
      KEDGE_HTTP_TOKEN: SECRETS.KEDGE_HTTP_TOKEN,
      KEDGE_MQTT_LISTEN: `127.0.0.1:${mqttPort}`,
      KEDGE_MQTT_USERNAME: 'sensor',
      KEDGE_MQTT_PASSWORD: SECRETS.KEDGE_MQTT_PASSWORD,
      KEDGE_HEARTBEAT_TOPIC: 'kedge.heartbeat',
      KEDGE_HEARTBEAT_INTERVAL: '1s',
      ...kedgeKafkaEnv(kafka, access),
    };
    const agent = await AgentProc.start({ env });
    const cliEnv = { ...env, KEDGE_HTTP_LISTEN: `127.0.0.1:${agent.port}` };
    try {
      const auth = { authorization: `Bearer ${SECRETS.KEDGE_HTTP_TOKEN}` };
      t.equal(
        (await post(`${agent.base}/v1/topics/sec.http`, '{"n":1}', 'application/json', auth))
          .status,
        200,
        'ingest with the token',
      );
      t.equal(
        (
          await post(`${agent.base}/v1/topics/sec.http`, '{"n":2}', 'application/json', {
            authorization: 'Bearer nope',
          })
        ).status,
        401,
        'a wrong token refused',
      );
      const bad = await mqtt
        .connectAsync(`mqtt://127.0.0.1:${mqttPort}`, {
          protocolVersion: 4,
          reconnectPeriod: 0,
          username: 'sensor',
          password: 'nope',
        })
        .then(
          () => null,
          (e: Error) => e,
        );
      t.ok(bad, 'a wrong MQTT password refused');
      const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, {
        protocolVersion: 4,
        reconnectPeriod: 0,
        username: 'sensor',
        password: SECRETS.KEDGE_MQTT_PASSWORD,
      });
      await c.publishAsync('plant/temp', '20.5', { qos: 1 });
      await c.endAsync();
      const s = await agent.waitDrained(90_000);
      t.equal(s.link.state, 'up', 'forwarding over SCRAM-SHA-512 works');

      const beats = await readTopic(kafkajsConfig(kafka, access), 'kedge.heartbeat', 2, 60_000);
      t.ok(beats.length >= 1, `heartbeat records arrived (${beats.length})`);
      collect('heartbeat records', beats.map((b) => JSON.stringify(b)).join('\n'));

      collect('/v1/status', await get(`${agent.base}/v1/status`));
      collect('/metrics', await get(`${agent.base}/metrics`));
      collect('kedge status', await cli(cliEnv, 'status'));
      collect('kedge status --json', await cli(cliEnv, 'status', '--json'));
      t.match(
        outputs.find(([w]) => w === 'kedge status --json')?.[1],
        /"last_error"|"link"/,
        'status --json has content',
      );
    } finally {
      await agent.stop();
    }
    const logs = agent.lines.join('\n');
    t.ok(
      agent.lines.some((l) => l.includes('"level":"debug"')),
      'debug lines were logged',
    );
    collect('agent stdout (debug)', logs);
    collect('agent stderr', agent.stderr.join(''));

    const check = await cli(env, 'check-config');
    t.match(
      check,
      /KEDGE_KAFKA_PASSWORD=\[redacted\]/,
      'check-config shows the password as [redacted]',
    );
    t.match(check, /KEDGE_HTTP_TOKEN=\[redacted\]/);
    t.match(check, /KEDGE_MQTT_PASSWORD=\[redacted\]/);
    collect('kedge check-config', check);

    const envFile = join(dir, 'kedge.env');
    writeFileSync(
      envFile,
      Object.entries(env)
        .map(([k, v]) => `${k}=${v}`)
        .join('\n') + '\n',
      { mode: 0o600 },
    );
    collect('kedge check-config --env-file', await cli({}, 'check-config', '--env-file', envFile));
    const invalid = await cli(
      {
        ...env,
        KEDGE_SYNC: 'sometimes',
        KEDGE_KAFKA_SASL_MECHANISM: 'gssapi',
        KEDGE_HTTP_TOKEN: `${SECRETS.KEDGE_HTTP_TOKEN} x`,
      },
      'check-config',
    );
    t.match(invalid, /^exit [1-9]/, 'an invalid config fails check-config');
    t.match(
      invalid,
      /KEDGE_HTTP_TOKEN contains spaces/,
      'the token problem is named, without the value',
    );
    collect('kedge check-config (invalid config)', invalid);
  },
);

t.test(
  'with a wrong Kafka password and an MQTT URL with a password: the error paths are clean',
  async (t) => {
    const dir = tempDir();
    dirs.push(dir);
    const deadMqtt = await freeLoopbackPort();
    const env: Record<string, string> = {
      KEDGE_DATA_DIR: dir,
      KEDGE_LOG_LEVEL: 'debug',
      KEDGE_HTTP_TOKEN: SECRETS.KEDGE_HTTP_TOKEN,
      KEDGE_MQTT_URL: `mqtt://sensor:${SECRETS['password in KEDGE_MQTT_URL']}@127.0.0.1:${deadMqtt}`,
      KEDGE_HEARTBEAT_TOPIC: 'kedge.heartbeat',
      KEDGE_HEARTBEAT_INTERVAL: '1s',
      ...kedgeKafkaEnv(kafka, {
        ...access,
        sasl: { ...access.sasl!, password: SECRETS['KEDGE_KAFKA_PASSWORD (wrong one)'] },
      }),
    };
    const agent = await AgentProc.start({ env });
    const cliEnv = { ...env, KEDGE_HTTP_LISTEN: `127.0.0.1:${agent.port}` };
    try {
      t.equal(
        (
          await post(`${agent.base}/v1/topics/sec.fail`, '{"n":1}', 'application/json', {
            authorization: `Bearer ${SECRETS.KEDGE_HTTP_TOKEN}`,
          })
        ).status,
        200,
      );
      const s = await waitFor(
        async () => {
          const st = await agent.status();
          return st.link.state === 'down' && st.link.last_error ? st : null;
        },
        { timeoutMs: 60_000, what: 'link down' },
      );
      t.match(s.link.last_error, /authentication failed/, 'down for the wrong password');
      // Let the MQTT client fail to connect a few times and the heartbeat try too.
      await new Promise((r) => setTimeout(r, 3_000));
      collect('/v1/status (failing)', await get(`${agent.base}/v1/status`));
      collect('/metrics (failing)', await get(`${agent.base}/metrics`));
      collect('kedge status (failing)', await cli(cliEnv, 'status'));
      collect('kedge status --json (failing)', await cli(cliEnv, 'status', '--json'));
    } finally {
      await agent.stop();
    }
    collect('agent stdout (debug, failing)', agent.lines.join('\n'));
    collect('agent stderr (failing)', agent.stderr.join(''));
    collect('kedge check-config (failing config)', await cli(env, 'check-config'));
  },
);

t.test('no secret in any output', async (t) => {
  t.equal(outputs.length, 17, 'every output gathered');
  // The check itself finds a secret where there is one.
  t.strictSame(
    leaks(`x ${SECRETS.KEDGE_MQTT_PASSWORD} y`),
    ['KEDGE_MQTT_PASSWORD'],
    'the grep finds a planted secret',
  );
  for (const [where, text] of outputs) {
    if (!where.startsWith('agent stderr')) t.ok(text.length > 0, `${where}: not empty`);
    t.strictSame(leaks(text), [], `${where}: no secret`);
  }
});
