import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import t from 'tap';
import type { Test } from 'tap';
import {
  ConfigError,
  ENV_VARS,
  formatConfig,
  isValidTopic,
  loadConfig,
  redactedConfig,
  suggestVariable,
} from '../agent/config.ts';
import type { Config } from '../agent/config.ts';
import { mergeEnv, parseEnvFile, readEnvFile } from '../agent/env-file.ts';
import {
  formatBytes,
  formatDuration,
  formatRate,
  parseDuration,
  parseRate,
  parseSize,
} from '../agent/units.ts';
import type { Parsed } from '../agent/units.ts';

type Env = Record<string, string | undefined>;

function value(p: Parsed<number>): number | string {
  return p.ok ? p.value : `error: ${p.error}`;
}

/** The problems loadConfig reports for env, or a test failure when it accepts it. */
function problemsOf(
  t: { fail(message: string): unknown },
  env: Env,
  opts?: { envFile?: string | null },
): string[] {
  try {
    loadConfig(env, opts);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  t.fail(`expected a ConfigError for ${JSON.stringify(env)}`);
  return [];
}

const tmp = mkdtempSync(join(tmpdir(), 'kedge-config-test-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const certFile = join(tmp, 'cert.pem');
const keyFile = join(tmp, 'key.pem');
const caFile = join(tmp, 'ca.pem');
for (const f of [certFile, keyFile, caFile]) writeFileSync(f, '-----BEGIN X-----\n');

t.test('parseSize', async (t) => {
  t.equal(value(parseSize('1048576')), 1048576);
  t.equal(value(parseSize('0')), 0);
  t.equal(value(parseSize('12B')), 12);
  t.equal(value(parseSize('1KB')), 1000);
  t.equal(value(parseSize('1KiB')), 1024);
  t.equal(value(parseSize('64kib')), 65536);
  t.equal(value(parseSize('1MB')), 1_000_000);
  t.equal(value(parseSize('1MiB')), 1_048_576);
  t.equal(value(parseSize('1mib')), 1_048_576);
  t.equal(value(parseSize('2GB')), 2_000_000_000);
  t.equal(value(parseSize('1GiB')), 1_073_741_824);
  t.equal(value(parseSize(' 1.5 MiB ')), 1_572_864);
  for (const bad of ['', 'fast', '-1', '1.5', '1 2', 'MiB', '1e6']) {
    const p = parseSize(bad);
    t.equal(p.ok, false, `${JSON.stringify(bad)} is rejected`);
  }
  const unit = parseSize('5kbit');
  t.equal(unit.ok, false);
  if (!unit.ok) t.match(unit.error, /unknown size unit "kbit"/);
  // "constructor" must not resolve through Object.prototype
  t.equal(parseSize('1constructor').ok, false);
});

t.test('parseDuration', async (t) => {
  t.equal(value(parseDuration('250ms')), 250);
  t.equal(value(parseDuration('30s')), 30_000);
  t.equal(value(parseDuration('5m')), 300_000);
  t.equal(value(parseDuration('2h')), 7_200_000);
  t.equal(value(parseDuration('7d')), 604_800_000);
  t.equal(value(parseDuration('1w')), 604_800_000);
  t.equal(value(parseDuration('1h30m')), 5_400_000);
  t.equal(value(parseDuration('1h 30m 15s')), 5_415_000);
  t.equal(value(parseDuration('1.5h')), 5_400_000);
  t.equal(value(parseDuration('1m30s500ms')), 90_500);
  for (const bad of ['', '60', 'soon', '1y', '1H', 'h', '1h-30m', '1h30']) {
    t.equal(parseDuration(bad).ok, false, `${JSON.stringify(bad)} is rejected`);
  }
  const bare = parseDuration('60');
  if (!bare.ok) t.match(bare.error, /has no unit/);
});

t.test('parseRate', async (t) => {
  t.equal(value(parseRate('64KiB/s')), 65536);
  t.equal(value(parseRate('1MB/s')), 1_000_000);
  t.equal(value(parseRate('1 mib / s')), 1_048_576);
  t.equal(value(parseRate('500/s')), 500);
  for (const bad of ['fast', '64KiB', '/s', '0/s', '64KiB/h', 'unlimited']) {
    t.equal(parseRate(bad).ok, false, `${JSON.stringify(bad)} is rejected`);
  }
  const p = parseRate('fast');
  if (!p.ok) t.equal(p.error, 'is not a rate (expected e.g. 64KiB/s or 1MB/s)');
});

t.test('formatBytes, formatDuration, formatRate', async (t) => {
  t.equal(formatBytes(65536), '64KiB');
  t.equal(formatBytes(1_048_576), '1MiB');
  t.equal(formatBytes(1_073_741_824), '1GiB');
  t.equal(formatBytes(812), '812B');
  t.equal(formatBytes(1_572_864), '1.5MiB');
  t.equal(formatBytes(1_000_000), '976.6KiB');
  t.equal(formatBytes(1_000_000, { exact: true }), '1MB');
  t.equal(formatBytes(1500, { exact: true }), '1500B');
  t.equal(formatBytes(0, { exact: true }), '0B');
  t.equal(formatDuration(0), '0s');
  t.equal(formatDuration(60_000), '1m');
  t.equal(formatDuration(5_400_000), '1h30m');
  t.equal(formatDuration(1500), '1s500ms');
  t.equal(formatDuration(604_800_000), '1w');
  t.equal(formatRate(65536), '64KiB/s');
  // exact formats read back to the same number
  for (const n of [
    1,
    999,
    1000,
    1024,
    1500,
    65536,
    1_000_000,
    3 * 1_048_576,
    1_073_741_824,
    123_456_789,
  ]) {
    t.equal(value(parseSize(formatBytes(n, { exact: true }))), n, `size ${n} round-trips`);
  }
  for (const ms of [1, 999, 1000, 61_000, 5_400_000, 90_061_001, 1_209_600_000]) {
    t.equal(value(parseDuration(formatDuration(ms))), ms, `duration ${ms} round-trips`);
  }
});

t.test('isValidTopic', async (t) => {
  for (const ok of ['a', 'sensors.temp', 'A_b-c.9', 'x'.repeat(249), '...'])
    t.ok(isValidTopic(ok), ok);
  for (const bad of ['', '.', '..', 'a/b', 'a b', 'ä', 'x'.repeat(250), 'a#'])
    t.notOk(isValidTopic(bad), bad);
});

t.test('defaults', async (t) => {
  const cfg = loadConfig({ PATH: '/usr/bin', HOME: '/root' });
  const expected: Config = {
    dataDir: resolve('./data'),
    agentId: null,
    sync: 'full',
    storage: 'sqlite',
    logLevel: 'info',
    http: {
      listen: { host: '127.0.0.1', port: 8780 },
      token: null,
      maxBody: 1_048_576,
      tlsCert: null,
      tlsKey: null,
    },
    kafka: {
      client: 'platformatic',
      brokers: ['localhost:9092'],
      tls: false,
      caFile: null,
      certFile: null,
      keyFile: null,
      sasl: null,
      compression: 'zstd',
      topicPrefix: '',
    },
    mqtt: {
      url: null,
      topics: ['#'],
      listen: null,
      username: null,
      password: null,
      kafkaTopic: null,
      maxPayload: 262_144,
      retained: 'skip',
      tlsCert: null,
      tlsKey: null,
    },
    forward: { rate: null, windows: [], priorityTopics: [] },
    retention: { diskQuota: 1_073_741_824, maxAge: null, whenFull: 'drop-oldest' },
    destinations: null,
    routes: [],
    heartbeat: { topic: 'kedge.heartbeat', intervalMs: 60_000 },
    envFile: null,
  };
  t.strictSame(cfg, expected);
  t.ok(cfg.dataDir.startsWith('/'), 'data dir is absolute');
});

t.test('empty values mean unset, except where empty disables', async (t) => {
  const cfg = loadConfig({
    KEDGE_SYNC: '',
    KEDGE_KAFKA_BROKERS: '',
    KEDGE_DISK_QUOTA: '  ',
    KEDGE_HTTP_LISTEN: '',
    KEDGE_HEARTBEAT_TOPIC: '',
    KEDGE_HTTP_TOKEN: '',
    KEDGE_MQTT_LISTEN: '',
  });
  t.equal(cfg.sync, 'full');
  t.strictSame(cfg.kafka.brokers, ['localhost:9092']);
  t.equal(cfg.retention.diskQuota, 1_073_741_824);
  t.equal(cfg.http.listen, null, 'empty KEDGE_HTTP_LISTEN disables HTTP');
  t.equal(cfg.heartbeat.topic, null, 'empty KEDGE_HEARTBEAT_TOPIC disables the heartbeat');
  t.equal(cfg.http.token, null);
  t.equal(cfg.mqtt.listen, null);
});

t.test('a full valid configuration', async (t) => {
  const cfg = loadConfig({
    KEDGE_DATA_DIR: '/var/lib/kedge',
    KEDGE_AGENT_ID: 'vessel-07.engine_room',
    KEDGE_SYNC: 'normal',
    KEDGE_STORAGE: 'wasm',
    KEDGE_LOG_LEVEL: 'DEBUG',
    KEDGE_HTTP_LISTEN: '0.0.0.0:8080',
    KEDGE_HTTP_TOKEN: 's3cr3t-token',
    KEDGE_HTTP_MAX_BODY: '4MB',
    KEDGE_HTTP_TLS_CERT: certFile,
    KEDGE_HTTP_TLS_KEY: keyFile,
    KEDGE_KAFKA_BROKERS: ' kafka1:9092, kafka2.example.com:9093 ,[fd00::1]:9094,',
    KEDGE_KAFKA_TLS: 'yes',
    KEDGE_KAFKA_CA_FILE: caFile,
    KEDGE_KAFKA_CERT_FILE: certFile,
    KEDGE_KAFKA_KEY_FILE: keyFile,
    KEDGE_KAFKA_SASL_MECHANISM: 'SCRAM-SHA-512',
    KEDGE_KAFKA_USERNAME: 'edge',
    KEDGE_KAFKA_PASSWORD: ' pass word ',
    KEDGE_KAFKA_CLIENT: 'platformatic',
    KEDGE_COMPRESSION: 'lz4',
    KEDGE_TOPIC_PREFIX: 'site-3.',
    KEDGE_MQTT_URL: 'mqtts://broker.local:8883',
    KEDGE_MQTT_TOPICS: 'sensors/#, plant/+/temp',
    KEDGE_MQTT_LISTEN: '[::1]:1883',
    KEDGE_MQTT_USERNAME: 'sensor',
    KEDGE_MQTT_PASSWORD: 'mqttpw',
    KEDGE_MQTT_KAFKA_TOPIC: 'mqtt.events',
    KEDGE_MQTT_MAX_PAYLOAD: '1KiB',
    KEDGE_MQTT_RETAINED: 'ingest',
    KEDGE_MQTT_TLS_CERT: certFile,
    KEDGE_MQTT_TLS_KEY: keyFile,
    KEDGE_FORWARD_RATE: '64KiB/s',
    KEDGE_FORWARD_WINDOWS: '22:00-06:00, 12:00-12:30,18:00-24:00',
    KEDGE_PRIORITY_TOPICS: 'alarms,heartbeat.x',
    KEDGE_DISK_QUOTA: '2GiB',
    KEDGE_RETENTION: '7d',
    KEDGE_WHEN_FULL: 'reject-new',
    KEDGE_HEARTBEAT_TOPIC: 'fleet.hb',
    KEDGE_HEARTBEAT_INTERVAL: '5m',
  });
  t.equal(cfg.dataDir, '/var/lib/kedge');
  t.equal(cfg.agentId, 'vessel-07.engine_room');
  t.equal(cfg.sync, 'normal');
  t.equal(cfg.storage, 'wasm');
  t.equal(cfg.logLevel, 'debug');
  t.strictSame(cfg.http, {
    listen: { host: '0.0.0.0', port: 8080 },
    token: 's3cr3t-token',
    maxBody: 4_000_000,
    tlsCert: certFile,
    tlsKey: keyFile,
  });
  t.strictSame(cfg.kafka, {
    client: 'platformatic',
    brokers: ['kafka1:9092', 'kafka2.example.com:9093', '[fd00::1]:9094'],
    tls: true,
    caFile,
    certFile,
    keyFile,
    sasl: { mechanism: 'scram-sha-512', username: 'edge', password: ' pass word ' },
    compression: 'lz4',
    topicPrefix: 'site-3.',
  });
  t.strictSame(cfg.mqtt, {
    url: 'mqtts://broker.local:8883',
    topics: ['sensors/#', 'plant/+/temp'],
    listen: { host: '::1', port: 1883 },
    username: 'sensor',
    password: 'mqttpw',
    kafkaTopic: 'mqtt.events',
    maxPayload: 1024,
    retained: 'ingest',
    tlsCert: certFile,
    tlsKey: keyFile,
  });
  t.strictSame(cfg.forward, {
    rate: 65536,
    windows: [
      { startMin: 22 * 60, endMin: 6 * 60 },
      { startMin: 12 * 60, endMin: 12 * 60 + 30 },
      { startMin: 18 * 60, endMin: 0 },
    ],
    priorityTopics: ['alarms', 'heartbeat.x'],
  });
  t.strictSame(cfg.retention, {
    diskQuota: 2 * 1_073_741_824,
    maxAge: 7 * 86_400_000,
    whenFull: 'reject-new',
  });
  t.strictSame(cfg.heartbeat, { topic: 'fleet.hb', intervalMs: 300_000 });
});

t.test('keywords: unlimited, always', async (t) => {
  const cfg = loadConfig({
    KEDGE_FORWARD_RATE: 'Unlimited',
    KEDGE_RETENTION: 'unlimited',
    KEDGE_FORWARD_WINDOWS: 'always',
  });
  t.equal(cfg.forward.rate, null);
  t.equal(cfg.retention.maxAge, null);
  t.strictSame(cfg.forward.windows, []);
});

t.test('every problem is reported at once, each naming its variable', async (t) => {
  const env = {
    KEDGE_SYNC: 'sometimes',
    KEDGE_FORWARD_RATE: 'fast',
    KEDGE_HTTP_LISTEN: 'localhost:99999',
    KEDGE_DISK_QUOTA: '10KiB',
    KEDGE_COMPRESSION: 'brotli',
  };
  const problems = problemsOf(t, env);
  t.equal(problems.length, 5, problems.join('\n'));
  for (const name of Object.keys(env)) {
    t.equal(
      problems.filter((p) => p.startsWith(`${name} `)).length,
      1,
      `one problem names ${name}`,
    );
  }
  t.ok(
    problems.includes(
      'KEDGE_FORWARD_RATE "fast" is not a rate (expected e.g. 64KiB/s or 1MB/s, or unlimited)',
    ),
  );
  t.ok(problems.includes('KEDGE_SYNC "sometimes" is not valid (expected full or normal)'));
  t.ok(
    problems.includes(
      'KEDGE_HTTP_LISTEN "localhost:99999" has an invalid port "99999" (expected a port from 1 to 65535)',
    ),
  );
  t.ok(problems.includes('KEDGE_DISK_QUOTA "10KiB" is too small (expected at least 1MiB)'));
  t.ok(
    problems.includes(
      'KEDGE_COMPRESSION "brotli" is not valid (expected none, gzip, snappy, lz4 or zstd)',
    ),
  );

  const err = t.throws(() => loadConfig(env)) as ConfigError;
  t.equal(err.name, 'ConfigError');
  t.equal(err.code, 'KEDGE_CONFIG');
  t.match(err.message, /^invalid configuration \(5 problems\):\n {2}KEDGE_SYNC/);
});

t.test('value rules', async (t) => {
  const one = (env: Env): string => {
    const p = problemsOf(t, env);
    t.equal(p.length, 1, `exactly one problem for ${JSON.stringify(env)}: ${p.join(' | ')}`);
    return p[0] ?? '';
  };
  t.match(
    one({ KEDGE_STORAGE: 'postgres' }),
    /^KEDGE_STORAGE "postgres" is not valid \(expected sqlite or wasm\)$/,
  );
  t.match(one({ KEDGE_LOG_LEVEL: 'trace' }), /^KEDGE_LOG_LEVEL "trace"/);
  t.match(
    one({ KEDGE_WHEN_FULL: 'block' }),
    /^KEDGE_WHEN_FULL "block" .*drop-oldest or reject-new/,
  );
  t.match(one({ KEDGE_MQTT_RETAINED: 'yes' }), /^KEDGE_MQTT_RETAINED "yes" .*skip or ingest/);
  t.match(one({ KEDGE_HTTP_MAX_BODY: '0' }), /^KEDGE_HTTP_MAX_BODY "0" is zero/);
  t.match(one({ KEDGE_HTTP_MAX_BODY: 'big' }), /^KEDGE_HTTP_MAX_BODY "big" is not a size/);
  t.match(one({ KEDGE_MQTT_MAX_PAYLOAD: '1GiB' }), /^KEDGE_MQTT_MAX_PAYLOAD "1GiB" is too large/);
  t.match(one({ KEDGE_RETENTION: '7' }), /^KEDGE_RETENTION "7" has no unit/);
  t.match(one({ KEDGE_RETENTION: '0s' }), /^KEDGE_RETENTION "0s" is zero/);
  t.match(
    one({ KEDGE_HEARTBEAT_INTERVAL: '500ms' }),
    /^KEDGE_HEARTBEAT_INTERVAL "500ms" is too short \(expected at least 1s\)$/,
  );
  t.match(
    one({ KEDGE_HEARTBEAT_TOPIC: 'fleet/hb' }),
    /^KEDGE_HEARTBEAT_TOPIC "fleet\/hb" is not a valid Kafka topic name/,
  );
  t.match(
    one({ KEDGE_MQTT_KAFKA_TOPIC: '..' }),
    /^KEDGE_MQTT_KAFKA_TOPIC "\.\." is not a valid Kafka topic name/,
  );
  t.match(
    one({ KEDGE_PRIORITY_TOPICS: 'alarms,bad topic' }),
    /^KEDGE_PRIORITY_TOPICS entry "bad topic"/,
  );
  t.match(one({ KEDGE_TOPIC_PREFIX: 'site/3' }), /^KEDGE_TOPIC_PREFIX "site\/3"/);
  t.match(
    one({ KEDGE_AGENT_ID: 'has space' }),
    /^KEDGE_AGENT_ID "has space" is not a valid agent id/,
  );
  t.match(one({ KEDGE_AGENT_ID: 'x'.repeat(65) }), /^KEDGE_AGENT_ID /);
  t.match(one({ KEDGE_KAFKA_TLS: 'maybe' }), /^KEDGE_KAFKA_TLS "maybe" is not a boolean/);
  t.match(
    one({ KEDGE_FORWARD_WINDOWS: '22:00-06:00,25:00-01:00' }),
    /^KEDGE_FORWARD_WINDOWS entry "25:00-01:00" has an invalid start time/,
  );
  t.match(
    one({ KEDGE_FORWARD_WINDOWS: '10:00-10:00' }),
    /^KEDGE_FORWARD_WINDOWS entry "10:00-10:00" starts and ends at the same time/,
  );
  t.match(one({ KEDGE_FORWARD_WINDOWS: '10:00-10:60' }), /invalid end time 10:60/);
  t.match(
    one({ KEDGE_FORWARD_WINDOWS: 'nights' }),
    /^KEDGE_FORWARD_WINDOWS entry "nights" is not a time window/,
  );
  t.match(
    one({ KEDGE_MQTT_TOPICS: 'a/#/b' }),
    /^KEDGE_MQTT_TOPICS entry "a\/#\/b" is not a valid MQTT filter/,
  );
  t.match(one({ KEDGE_MQTT_TOPICS: 'a/b+' }), /"\+" must be a whole level/);
  t.match(
    one({ KEDGE_KAFKA_BROKERS: 'kafka1:9092,kafka2' }),
    /^KEDGE_KAFKA_BROKERS entry "kafka2" has no port/,
  );
  t.match(one({ KEDGE_KAFKA_BROKERS: ',' }), /^KEDGE_KAFKA_BROKERS "," lists no brokers/);
});

t.test('listen addresses', async (t) => {
  const listen = (v: string) => loadConfig({ KEDGE_HTTP_LISTEN: v }).http.listen;
  t.strictSame(listen('127.0.0.1:1'), { host: '127.0.0.1', port: 1 });
  t.strictSame(listen('edge-box.local:65535'), { host: 'edge-box.local', port: 65535 });
  t.strictSame(listen('[::1]:8780'), { host: '::1', port: 8780 });
  t.strictSame(listen('[::]:8780'), { host: '::', port: 8780 });
  t.equal(listen(''), null);
  const bad: Array<[string, RegExp]> = [
    ['8780', /has no port/],
    [':8780', /has no host/],
    ['127.0.0.1:0', /invalid port "0"/],
    ['127.0.0.1:65536', /invalid port "65536"/],
    ['127.0.0.1:http', /invalid port "http"/],
    ['999.1.1.1:80', /invalid host "999.1.1.1"/],
    ['bad_host!:80', /invalid host/],
    ['::1:8780', /IPv6 address without brackets/],
    ['[::g]:80', /invalid IPv6 address/],
    ['[::1]', /has no port/],
  ];
  for (const [v, re] of bad) {
    const p = problemsOf(t, { KEDGE_MQTT_LISTEN: v });
    t.equal(p.length, 1, v);
    t.match(
      p[0],
      new RegExp(`^KEDGE_MQTT_LISTEN ${JSON.stringify(v).replace(/[[\]().*+?^$]/g, '\\$&')} `),
    );
    t.match(p[0], re, v);
  }
});

t.test('TLS and SASL file and pairing rules', async (t) => {
  const missing = join(tmp, 'missing.pem');
  let p = problemsOf(t, { KEDGE_KAFKA_CA_FILE: missing });
  t.strictSame(p, [
    `KEDGE_KAFKA_CA_FILE ${JSON.stringify(missing)} does not exist (expected a readable PEM file)`,
  ]);

  p = problemsOf(t, { KEDGE_HTTP_TLS_CERT: tmp, KEDGE_HTTP_TLS_KEY: keyFile });
  t.strictSame(p, [
    `KEDGE_HTTP_TLS_CERT ${JSON.stringify(tmp)} is not a regular file (expected a readable PEM file)`,
  ]);

  p = problemsOf(t, { KEDGE_KAFKA_CERT_FILE: certFile });
  t.strictSame(p, [
    'KEDGE_KAFKA_CERT_FILE is set but KEDGE_KAFKA_KEY_FILE is not (a certificate needs its private key)',
  ]);
  p = problemsOf(t, { KEDGE_MQTT_TLS_KEY: keyFile });
  t.strictSame(p, [
    'KEDGE_MQTT_TLS_KEY is set but KEDGE_MQTT_TLS_CERT is not (a private key needs its certificate)',
  ]);

  // A CA file alone implies TLS; an explicit "off" contradicts it.
  t.equal(loadConfig({ KEDGE_KAFKA_CA_FILE: caFile }).kafka.tls, true);
  t.equal(loadConfig({ KEDGE_KAFKA_TLS: 'on' }).kafka.tls, true);
  t.equal(loadConfig({ KEDGE_KAFKA_TLS: '0' }).kafka.tls, false);
  p = problemsOf(t, { KEDGE_KAFKA_CA_FILE: caFile, KEDGE_KAFKA_TLS: 'false' });
  t.equal(p.length, 1);
  t.match(p[0], /^KEDGE_KAFKA_CA_FILE is set but KEDGE_KAFKA_TLS is off/);

  // relative paths are checked against the working directory and resolved
  t.equal(
    loadConfig({ KEDGE_KAFKA_CA_FILE: relative(process.cwd(), caFile) }).kafka.caFile,
    caFile,
  );

  p = problemsOf(t, { KEDGE_KAFKA_SASL_MECHANISM: 'plain' });
  t.strictSame(p, [
    'KEDGE_KAFKA_SASL_MECHANISM is "plain" but KEDGE_KAFKA_USERNAME and KEDGE_KAFKA_PASSWORD are not set (SASL needs both)',
  ]);
  p = problemsOf(t, { KEDGE_KAFKA_SASL_MECHANISM: 'plain', KEDGE_KAFKA_USERNAME: 'u' });
  t.strictSame(p, [
    'KEDGE_KAFKA_SASL_MECHANISM is "plain" but KEDGE_KAFKA_PASSWORD is not set (SASL needs both)',
  ]);
  p = problemsOf(t, {
    KEDGE_KAFKA_SASL_MECHANISM: 'gssapi',
    KEDGE_KAFKA_USERNAME: 'u',
    KEDGE_KAFKA_PASSWORD: 'p',
  });
  t.strictSame(p, [
    'KEDGE_KAFKA_SASL_MECHANISM "gssapi" is not supported (expected plain, scram-sha-256 or scram-sha-512)',
  ]);
  p = problemsOf(t, { KEDGE_KAFKA_USERNAME: 'u' });
  t.match(p, [/^KEDGE_KAFKA_USERNAME is set but KEDGE_KAFKA_SASL_MECHANISM is not/]);
  t.strictSame(
    loadConfig({
      KEDGE_KAFKA_SASL_MECHANISM: 'Scram-Sha-256',
      KEDGE_KAFKA_USERNAME: 'u',
      KEDGE_KAFKA_PASSWORD: 'p',
    }).kafka.sasl,
    {
      mechanism: 'scram-sha-256',
      username: 'u',
      password: 'p',
    },
  );

  p = problemsOf(t, { KEDGE_MQTT_PASSWORD: 'p' });
  t.strictSame(p, ['KEDGE_MQTT_PASSWORD is set but KEDGE_MQTT_USERNAME is not (set both)']);
});

/**
 * The unprivileged user must reach agent/cli.ts: a checkout inside a `mktemp -d`
 * folder (mode 0700, as CI's fresh clone is) is closed to it. Adds o+x (search only,
 * no listing) to the folders above `dir` that lack it, restored in teardown.
 */
function traversableByOthers(t: Test, dir: string): void {
  for (let d = resolve(dir); d !== dirname(d); d = dirname(d)) {
    const mode = statSync(d).mode & 0o7777;
    if (mode & 0o001) continue;
    chmodSync(d, mode | 0o001);
    t.teardown(() => chmodSync(d, mode));
  }
}

t.test('unreadable file', async (t) => {
  const locked = join(tmp, 'locked.pem');
  writeFileSync(locked, 'x');
  chmodSync(locked, 0o000);
  if (process.getuid?.() !== 0) {
    t.match(problemsOf(t, { KEDGE_KAFKA_CA_FILE: locked }), [/is not readable by this user/]);
    return;
  }
  // root reads everything: check as an unprivileged user, the way the service runs.
  chmodSync(tmp, 0o755);
  traversableByOthers(t, join(import.meta.dirname, '..'));
  // `env -u NODE_OPTIONS`: tap injects its process-info hook into children, which nobody cannot write.
  const r = spawnSync(
    'env',
    [
      '-u',
      'NODE_OPTIONS',
      'setpriv',
      '--reuid=65534',
      '--regid=65534',
      '--clear-groups',
      process.execPath,
      join(import.meta.dirname, '../agent/cli.ts'),
      '--',
      'check-config',
    ],
    {
      env: { PATH: process.env.PATH ?? '', KEDGE_KAFKA_CA_FILE: locked, KEDGE_DATA_DIR: tmp },
      encoding: 'utf8',
      timeout: 20_000,
    },
  );
  t.equal(r.status, 2, r.stderr);
  t.match(r.stderr, /KEDGE_KAFKA_CA_FILE .*is not readable by this user/);
});

t.test('MQTT URL', async (t) => {
  for (const ok of ['mqtt://localhost', 'mqtts://b:8883', 'ws://b/mqtt', 'wss://b:443/mqtt']) {
    t.equal(loadConfig({ KEDGE_MQTT_URL: ok }).mqtt.url, ok);
  }
  t.strictSame(problemsOf(t, { KEDGE_MQTT_URL: 'http://broker' }), [
    'KEDGE_MQTT_URL "http://broker" has scheme http:// (expected mqtt://, mqtts://, ws:// or wss://)',
  ]);
  t.match(problemsOf(t, { KEDGE_MQTT_URL: 'broker:1883' }), [
    /^KEDGE_MQTT_URL "broker:1883" has scheme broker:\/\//,
  ]);
  t.match(problemsOf(t, { KEDGE_MQTT_URL: 'not a url' }), [
    /^KEDGE_MQTT_URL "not a url" is not a URL/,
  ]);
  // a password in a rejected URL is not echoed
  const p = problemsOf(t, { KEDGE_MQTT_URL: 'tcp://user:hunter2@broker' });
  t.equal(p.length, 1);
  t.notMatch(p[0], /hunter2/);
  t.match(p[0], /tcp:\/\/user:\[redacted\]@broker/);
});

t.test('HTTP token with whitespace is refused without echoing it', async (t) => {
  const p = problemsOf(t, { KEDGE_HTTP_TOKEN: 'abc def\n' });
  t.equal(p.length, 1);
  t.match(p[0], /^KEDGE_HTTP_TOKEN contains spaces/);
  t.notMatch(p[0], /abc/);
});

t.test('unknown variables', async (t) => {
  t.strictSame(problemsOf(t, { KEDGE_SNYC: 'full' }), [
    'KEDGE_SNYC is not a known kedge setting (did you mean KEDGE_SYNC?)',
  ]);
  t.strictSame(problemsOf(t, { KEDGE_KAFKA_BROKER: 'k:9092' }), [
    'KEDGE_KAFKA_BROKER is not a known kedge setting (did you mean KEDGE_KAFKA_BROKERS?)',
  ]);
  t.strictSame(problemsOf(t, { KEDGE_BROKERS: 'k:9092' }), [
    'KEDGE_BROKERS is not a known kedge setting (did you mean KEDGE_KAFKA_BROKERS?)',
  ]);
  t.strictSame(problemsOf(t, { kedge_sync: 'full' }), [
    'kedge_sync is not a known kedge setting (did you mean KEDGE_SYNC? names are case-sensitive)',
  ]);
  t.strictSame(problemsOf(t, { KEDGE_PASSWORD: 'x' }), [
    'KEDGE_PASSWORD is not a known kedge setting (did you mean KEDGE_KAFKA_PASSWORD or KEDGE_MQTT_PASSWORD?)',
  ]);
  t.match(problemsOf(t, { KEDGE_ZZZZZZZZZZ: 'x' }), [
    /^KEDGE_ZZZZZZZZZZ is not a known kedge setting \(check the spelling/,
  ]);
  t.strictSame(suggestVariable('KEDGE_HEARTBEAT_INTERVALL'), ['KEDGE_HEARTBEAT_INTERVAL']);
  // other programs' variables are none of our business
  t.doesNotThrow(() => loadConfig({ KEDGEWOOD: '1', MY_KEDGE_THING: '1', KEDGE_SNYC: undefined }));
  // unknown variables are counted together with bad values
  t.equal(problemsOf(t, { KEDGE_SNYC: 'x', KEDGE_SYNC: 'x' }).length, 2);
});

t.test('parseEnvFile syntax', async (t) => {
  const text = [
    '# kedge settings', //                        1
    '; also a comment', //                         2
    '', //                                         3
    'KEDGE_SYNC=normal', //                        4
    '  KEDGE_LOG_LEVEL = debug   ', //             5
    'export KEDGE_DATA_DIR=/var/lib/kedge', //     6
    'SINGLE=\'a "b" \\n $HOME\'', //              7
    'DOUBLE="say \\"hi\\"\\\\ \\n\\tend"', //      8
    'MULTI="line one', //                          9
    'line two"', //                                10
    'CONT=first \\', //                            11
    'second', //                                   12
    'EMPTY=', //                                   13
    'HASH=a#b', //                                 14
    'EQ=a=b', //                                   15
    'DUP=1', //                                    16
    'DUP=2', //                                    17
    '   \t', //                                    18
    "QUOTED_EMPTY=''", //                          19
  ].join('\n');
  const { vars, problems } = parseEnvFile(text, '/etc/kedge/kedge.env');
  t.strictSame(problems, []);
  t.strictSame(vars, {
    KEDGE_SYNC: 'normal',
    KEDGE_LOG_LEVEL: 'debug',
    KEDGE_DATA_DIR: '/var/lib/kedge',
    SINGLE: 'a "b" \\n $HOME',
    DOUBLE: 'say "hi"\\ \n\tend',
    MULTI: 'line one\nline two',
    CONT: 'first second',
    EMPTY: '',
    HASH: 'a#b',
    EQ: 'a=b',
    DUP: '2',
    QUOTED_EMPTY: '',
  });
});

t.test('parseEnvFile problems carry path and line', async (t) => {
  const text = [
    'KEDGE_SYNC=full', //                 1
    'just some words', //                 2
    'A="quoted', //                       3
    'still quoted"', //                   4
    'BAD KEY=1', //                       5
    '=nothing', //                        6
    'B="x" trailing', //                  7
    'C=ok\r', //                          8 (CRLF tolerated)
    'D="never closed', //                 9
    'E=1', //                            10
  ].join('\n');
  const { vars, problems } = parseEnvFile(text, '/etc/kedge/kedge.env');
  t.strictSame(problems, [
    '/etc/kedge/kedge.env:2: expected KEY=VALUE',
    '/etc/kedge/kedge.env:5: "BAD KEY" before "=" is not a variable name (expected KEY=VALUE, KEY made of letters, digits and _)',
    '/etc/kedge/kedge.env:6: nothing before "=" is not a variable name (expected KEY=VALUE, KEY made of letters, digits and _)',
    '/etc/kedge/kedge.env:7: unexpected text after the closing quote (quote the whole value)',
    '/etc/kedge/kedge.env:9: unterminated double quote (add the closing ")',
  ]);
  t.strictSame(vars, { KEDGE_SYNC: 'full', A: 'quoted\nstill quoted', C: 'ok' });

  t.strictSame(parseEnvFile('\uFEFFX=1\r\nY=2\r\n', 'f').vars, { X: '1', Y: '2' }, 'BOM and CRLF');
  t.strictSame(parseEnvFile("X='open", 'f').problems, [
    "f:1: unterminated single quote (add the closing ')",
  ]);
});

t.test('readEnvFile, mergeEnv and loadConfig with an env file', async (t) => {
  const missing = join(tmp, 'nope.env');
  t.strictSame(readEnvFile(missing), { vars: {}, problems: [`${missing}: env file not found`] });
  t.strictSame(readEnvFile(tmp).problems, [`${tmp}: is a directory, expected an env file`]);

  t.strictSame(mergeEnv({ A: 'proc', B: undefined, C: '' }, { A: 'file', B: 'file', D: 'file' }), {
    A: 'proc',
    B: 'file',
    C: '',
    D: 'file',
  });

  const envPath = join(tmp, 'kedge.env');
  writeFileSync(
    envPath,
    'KEDGE_SYNC=normal\nKEDGE_LOG_LEVEL=warn\nKEDGE_HTTP_LISTEN="0.0.0.0:9000"\n',
  );
  const cfg = loadConfig({ KEDGE_LOG_LEVEL: 'error' }, { envFile: envPath });
  t.equal(cfg.sync, 'normal', 'file fills what the process does not set');
  t.equal(cfg.logLevel, 'error', 'the process environment wins');
  t.strictSame(cfg.http.listen, { host: '0.0.0.0', port: 9000 });
  t.equal(cfg.envFile, envPath);

  const badPath = join(tmp, 'bad.env');
  writeFileSync(badPath, 'KEDGE_SYNC=sometimes\noops\nKEDGE_SNYC=full\n');
  t.strictSame(problemsOf(t, {}, { envFile: badPath }), [
    `${badPath}:2: expected KEY=VALUE`,
    'KEDGE_SYNC "sometimes" is not valid (expected full or normal)',
    'KEDGE_SNYC is not a known kedge setting (did you mean KEDGE_SYNC?)',
  ]);
  t.strictSame(problemsOf(t, { KEDGE_SYNC: 'bad' }, { envFile: missing }), [
    `${missing}: env file not found`,
    'KEDGE_SYNC "bad" is not valid (expected full or normal)',
  ]);
});

t.test('redaction', async (t) => {
  const secrets = ['tok-S3CRET-http', 'kafka-S3CRET-pw', 'mqtt-S3CRET-pw', 'url-S3CRET-pw'];
  const cfg = loadConfig({
    KEDGE_HTTP_TOKEN: secrets[0],
    KEDGE_KAFKA_SASL_MECHANISM: 'plain',
    KEDGE_KAFKA_USERNAME: 'edge',
    KEDGE_KAFKA_PASSWORD: secrets[1],
    KEDGE_MQTT_USERNAME: 'sensor',
    KEDGE_MQTT_PASSWORD: secrets[2],
    KEDGE_MQTT_URL: `mqtt://sensor:${secrets[3]}@broker:1883`,
  });
  t.equal(cfg.http.token, secrets[0], 'the config itself keeps the secret');
  const text = formatConfig(cfg);
  const json = JSON.stringify(redactedConfig(cfg));
  for (const s of secrets) {
    t.notOk(text.includes(s), `formatConfig hides ${s}`);
    t.notOk(json.includes(s), `redactedConfig hides ${s}`);
  }
  t.notOk(text.includes('S3CRET') || json.includes('S3CRET'));
  const red = redactedConfig(cfg) as unknown as Config;
  t.equal(red.http.token, '[redacted]');
  t.equal(red.kafka.sasl?.password, '[redacted]');
  t.equal(red.kafka.sasl?.username, 'edge');
  t.equal(red.mqtt.password, '[redacted]');
  t.equal(red.mqtt.url, 'mqtt://sensor:[redacted]@broker:1883');
  t.match(text, /^KEDGE_HTTP_TOKEN=\[redacted\]$/m);
  t.match(text, /^KEDGE_KAFKA_PASSWORD=\[redacted\]$/m);
  t.match(text, /^KEDGE_MQTT_PASSWORD=\[redacted\]$/m);
  t.equal(cfg.http.token, secrets[0], 'redacting does not modify the config');

  const plain = redactedConfig(loadConfig({}));
  t.strictSame((plain as unknown as Config).http.token, null, 'null stays null');
  t.strictSame((plain as unknown as Config).kafka.sasl, null);
  t.strictSame((plain as unknown as Config).mqtt.password, null);
});

t.test('formatConfig lists every variable and reads back', async (t) => {
  const env: Env = {
    KEDGE_DATA_DIR: '/data/with space',
    KEDGE_AGENT_ID: 'a1',
    KEDGE_HTTP_LISTEN: '',
    KEDGE_HTTP_MAX_BODY: '1500',
    KEDGE_KAFKA_BROKERS: 'k1:9092,[::1]:9093',
    KEDGE_MQTT_LISTEN: '[::1]:1883',
    KEDGE_MQTT_TOPICS: 'a/+/b,c/#',
    KEDGE_FORWARD_RATE: '1MB/s',
    KEDGE_FORWARD_WINDOWS: '22:00-06:00,12:00-24:00',
    KEDGE_PRIORITY_TOPICS: 'alarms',
    KEDGE_RETENTION: '36h',
    KEDGE_HEARTBEAT_TOPIC: '',
    KEDGE_HEARTBEAT_INTERVAL: '90s',
    KEDGE_TOPIC_PREFIX: 'p.',
  };
  const cfg = loadConfig(env);
  const text = formatConfig(cfg);
  const lines = text.split('\n');
  t.strictSame(
    lines.map((l) => l.slice(0, l.indexOf('='))),
    [...ENV_VARS],
    'one line per variable, in order',
  );
  t.ok(lines.includes('KEDGE_DATA_DIR="/data/with space"'));
  t.ok(lines.includes('KEDGE_SYNC=full'), 'defaults are filled in');
  t.ok(lines.includes('KEDGE_HTTP_LISTEN='));
  t.ok(lines.includes('KEDGE_HTTP_MAX_BODY=1500B'));
  t.ok(lines.includes('KEDGE_DISK_QUOTA=1GiB'));
  t.ok(lines.includes('KEDGE_FORWARD_RATE=1MB/s'));
  t.ok(lines.includes('KEDGE_FORWARD_WINDOWS=22:00-06:00,12:00-00:00'));
  t.ok(lines.includes('KEDGE_RETENTION=1d12h'));
  t.ok(lines.includes('KEDGE_HEARTBEAT_INTERVAL=1m30s'));
  t.ok(lines.includes('KEDGE_MQTT_LISTEN=[::1]:1883'));

  const parsed = parseEnvFile(text, 'formatted');
  t.strictSame(parsed.problems, []);
  t.strictSame(loadConfig(parsed.vars), cfg, 'the listing is a valid env file for the same config');

  const defaults = formatConfig(loadConfig({}));
  t.match(defaults, /^KEDGE_FORWARD_RATE=unlimited$/m);
  t.match(defaults, /^KEDGE_FORWARD_WINDOWS=always$/m);
  t.match(defaults, /^KEDGE_RETENTION=unlimited$/m);
  t.match(defaults, /^KEDGE_HEARTBEAT_TOPIC=kedge\.heartbeat$/m);
  t.strictSame(loadConfig(parseEnvFile(defaults, 'd').vars), loadConfig({}));
});
