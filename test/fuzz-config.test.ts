/**
 * Property-based fuzzing of the config parser (in-process): random KEDGE_*
 * environments with valid-looking and garbage values, and random env-file text.
 *   - loadConfig returns a Config or throws ConfigError, nothing else;
 *   - every problem names the variable it is about, and never shows a secret;
 *   - a config that loads round-trips through formatConfig → parseEnvFile →
 *     loadConfig to the same config (secrets read back as "[redacted]");
 *   - parseEnvFile never throws, and reads back what an env file writer meant.
 * The seed is fixed (override with FUZZ_SEED=n) and printed.
 */
import t from 'tap';
import fc from 'fast-check';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  ConfigError,
  ENV_VARS,
  REDACTED,
  SECRET_VARS,
  formatConfig,
  loadConfig,
  redactUrl,
  redactedConfig,
  type Config,
  type EnvVarName,
} from '../agent/config.ts';
import { parseEnvFile } from '../agent/env-file.ts';
import { cleanup, tempDir } from './helpers/agent.ts';

const SEED = Number(process.env.FUZZ_SEED ?? 7_2024_11);
t.comment(`fast-check seed ${SEED} (FUZZ_SEED=${SEED} replays)`);

const dir = tempDir('kedge-fuzz-config-');
t.teardown(() => cleanup(dir));
const pem = join(dir, 'x.pem');
writeFileSync(pem, '-----BEGIN X-----\n');
mkdirSync(join(dir, 'a-dir'));

type Env = Record<string, string>;

// ------------------------------------------------------------- arbitraries --

/** Anything at all: unicode, control characters, lone surrogates. */
const garbage = fc.oneof(
  fc.string({ maxLength: 24 }),
  fc.string({ unit: 'binary', maxLength: 24 }),
  fc.constantFrom(
    '',
    ' ',
    '\t',
    '\r\n',
    '"',
    "'",
    '\\',
    '$HOME',
    '`x`',
    '#',
    '0',
    '-1',
    'NaN',
    'Infinity',
    '1e309',
    'constructor',
    '__proto__',
  ),
);
const pad = (a: fc.Arbitrary<string>) =>
  fc
    .tuple(fc.constantFrom('', ' ', '  ', '\t'), a, fc.constantFrom('', ' ', '\t'))
    .map(([l, v, r]) => l + v + r);
const num = fc
  .oneof(
    fc.nat({ max: 5000 }),
    fc.constantFrom(0, 1, 1023, 1024, 268_435_455, 268_435_456, 2 ** 53, 2 ** 60),
  )
  .map(String);
const frac = fc.oneof(
  num,
  fc.tuple(fc.nat({ max: 99 }), fc.nat({ max: 999 })).map(([a, b]) => `${a}.${b}`),
  fc.constantFrom('.5', '1.', '1e3', '-2'),
);
const size = fc
  .tuple(
    frac,
    fc.constantFrom(
      '',
      'B',
      'KB',
      'KiB',
      'kib',
      'MB',
      'MiB',
      'mIb',
      'GB',
      'GiB',
      'TB',
      'TiB',
      'kbit',
      'M',
      ' MiB',
      'iB',
    ),
  )
  .map(([n, u]) => n + u);
const durationPart = fc.tuple(
  frac,
  fc.constantFrom('ms', 's', 'm', 'h', 'd', 'w', 'H', 'y', '', ' s'),
);
const duration = fc
  .array(durationPart, { minLength: 1, maxLength: 3 })
  .map((ps) => ps.map(([n, u]) => n + u).join(''));
const host = fc.constantFrom(
  '127.0.0.1',
  '0.0.0.0',
  'localhost',
  '::1',
  '[::1]',
  '[fe80::1%eth0]',
  'kafka-1.local',
  '256.1.1.1',
  'bad host',
  '',
  '-x',
  'a..b',
  'ü.example',
  '1.2.3',
);
const port = fc.oneof(
  fc.integer({ min: 0, max: 70_000 }).map(String),
  fc.constantFrom('', 'http', '01883', '-1'),
);
const hostPort = fc.oneof(
  fc.tuple(host, port).map(([h, p]) => `${h}:${p}`),
  host,
);
const list = (a: fc.Arbitrary<string>) =>
  fc
    .array(a, { maxLength: 4 })
    .chain((xs) => fc.constantFrom(',', ', ', ' ,', ',,').map((sep) => xs.join(sep)));
const topicName = fc.oneof(
  fc.stringMatching(/^[a-zA-Z0-9._-]{1,12}$/),
  fc.constantFrom('.', '..', 'a b', 'x'.repeat(249), 'y'.repeat(250), 'ü'),
);
const mqttFilter = fc.stringMatching(/^[a-z+#/]{1,10}$/);
const hhmm = fc
  .tuple(fc.integer({ min: 0, max: 25 }), fc.integer({ min: 0, max: 61 }))
  .map(([h, m]) => `${h}:${String(m).padStart(2, '0')}`);
const window = fc
  .tuple(hhmm, fc.constantFrom('-', ' - ', '–', '..'), hhmm)
  .map(([a, s, b]) => a + s + b);
const oneOfCase = (...xs: string[]) =>
  fc
    .constantFrom(...xs)
    .chain((x) => fc.constantFrom(x, x.toUpperCase(), x[0].toUpperCase() + x.slice(1)));
const file = fc.constantFrom(
  pem,
  join(dir, 'missing.pem'),
  join(dir, 'a-dir'),
  'relative.pem',
  '/dev/null',
);
const secret = fc.oneof(
  fc.stringMatching(/^[\x21-\x7e]{1,16}$/).map((s) => `Sec-${s}`),
  fc.constantFrom('Sec has space', 'Sec\u00e9t', 'Sec\ttab'),
);

const VALUES: Record<EnvVarName, fc.Arbitrary<string>> = {
  KEDGE_DATA_DIR: fc.oneof(
    fc.constantFrom(
      '/var/lib/kedge',
      './data',
      'with space',
      'quo"te',
      'dollar$x',
      'tick`s',
      'back\\slash',
      'new\nline',
      'cr\rdir',
      'tab\tdir',
      '#hash',
      "it's",
    ),
    fc.string({ maxLength: 12 }),
  ),
  KEDGE_AGENT_ID: fc.oneof(
    fc.stringMatching(/^[A-Za-z0-9._-]{1,64}$/),
    fc.constantFrom('a'.repeat(65), 'id with space', 'ü'),
  ),
  KEDGE_SYNC: oneOfCase('full', 'normal', 'fsync'),
  KEDGE_STORAGE: oneOfCase('sqlite', 'wasm', 'memory'),
  KEDGE_LOG_LEVEL: oneOfCase('debug', 'info', 'warn', 'error', 'trace'),
  KEDGE_HTTP_LISTEN: fc.oneof(hostPort, fc.constant('')),
  KEDGE_HTTP_TOKEN: secret,
  KEDGE_HTTP_MAX_BODY: size,
  KEDGE_HTTP_TLS_CERT: file,
  KEDGE_HTTP_TLS_KEY: file,
  KEDGE_KAFKA_BROKERS: list(hostPort),
  // Valid names need KEDGE_<N>_KAFKA_BROKERS too (test/routes-config.test.ts fuzzes those).
  KEDGE_DESTINATIONS: fc.constantFrom('', 'Site', 'a,a', 'route', '9x', ' '),
  KEDGE_KAFKA_TLS: oneOfCase('true', 'false', '1', '0', 'yes', 'no', 'on', 'off', 'maybe'),
  KEDGE_KAFKA_CA_FILE: file,
  KEDGE_KAFKA_CERT_FILE: file,
  KEDGE_KAFKA_KEY_FILE: file,
  KEDGE_KAFKA_SASL_MECHANISM: oneOfCase('plain', 'scram-sha-256', 'scram-sha-512', 'gssapi'),
  KEDGE_KAFKA_USERNAME: fc.oneof(
    fc.stringMatching(/^[a-z]{1,8}$/),
    fc.constantFrom('user name', 'ü', '"q"'),
  ),
  KEDGE_KAFKA_PASSWORD: secret,
  KEDGE_KAFKA_CLIENT: oneOfCase('kafkajs', 'platformatic', 'librdkafka'),
  KEDGE_COMPRESSION: oneOfCase('none', 'gzip', 'snappy', 'lz4', 'zstd', 'brotli'),
  KEDGE_TOPIC_PREFIX: fc.oneof(
    fc.stringMatching(/^[a-z._-]{1,10}$/),
    fc.constantFrom('bad prefix', 'x'.repeat(249)),
  ),
  KEDGE_MQTT_URL: fc.oneof(
    fc
      .tuple(
        fc.constantFrom('mqtt', 'mqtts', 'ws', 'wss', 'http', 'tcp'),
        fc.constantFrom('', 'u@', 'u:Sec-pw@', 'u:Sec-p@ss@', ':Sec-only@'),
        host,
        fc.constantFrom('', ':1883', ':x', '/path?q=1'),
      )
      .map(([s, u, h, p]) => `${s}://${u}${h}${p}`),
    fc.constantFrom('broker:1883', 'mqtt://', 'mqtt:///x'),
  ),
  KEDGE_MQTT_TOPICS: list(mqttFilter),
  KEDGE_MQTT_LISTEN: fc.oneof(hostPort, fc.constant('')),
  KEDGE_MQTT_USERNAME: fc.oneof(
    fc.stringMatching(/^[a-z]{1,8}$/),
    fc.constantFrom('with space', 'ü', 'a"b', 'x\ry'),
  ),
  KEDGE_MQTT_PASSWORD: secret,
  KEDGE_MQTT_KAFKA_TOPIC: topicName,
  KEDGE_MQTT_MAX_PAYLOAD: size,
  KEDGE_MQTT_RETAINED: oneOfCase('skip', 'ingest', 'keep'),
  KEDGE_MQTT_TLS_CERT: file,
  KEDGE_MQTT_TLS_KEY: file,
  KEDGE_FORWARD_RATE: fc.oneof(
    size.chain((s) => fc.constantFrom(`${s}/s`, `${s} / sec`, `${s}/second`, `${s}/m`, s)),
    oneOfCase('unlimited'),
  ),
  KEDGE_FORWARD_WINDOWS: fc.oneof(list(window), oneOfCase('always')),
  KEDGE_PRIORITY_TOPICS: list(topicName),
  KEDGE_DISK_QUOTA: size,
  KEDGE_RETENTION: fc.oneof(duration, oneOfCase('unlimited')),
  KEDGE_WHEN_FULL: oneOfCase('drop-oldest', 'reject-new', 'block'),
  KEDGE_HEARTBEAT_TOPIC: fc.oneof(topicName, fc.constant('')),
  KEDGE_HEARTBEAT_INTERVAL: duration,
};

const valueFor = (name: EnvVarName) =>
  fc.oneof(
    { weight: 6, arbitrary: VALUES[name] },
    { weight: 1, arbitrary: pad(VALUES[name]) },
    { weight: 1, arbitrary: garbage },
  );
const unknownName = fc.oneof(
  fc.constantFrom(
    'KEDGE_SNYC',
    'KEDGE_BROKERS',
    'kedge_sync',
    'KEDGE_',
    'KEDGE_X',
    'Kedge_Http_Listen',
  ),
  fc.stringMatching(/^KEDGE_[A-Z_]{0,12}$/),
);

/** A random environment: a few known variables (mostly valid-looking values), sometimes an unknown KEDGE_ name. */
const envArb: fc.Arbitrary<Env> = fc
  .tuple(
    fc
      .subarray([...ENV_VARS], { maxLength: 8 })
      .chain((names) => fc.tuple(...names.map((n) => valueFor(n).map((v) => [n, v] as const)))),
    fc.option(fc.tuple(unknownName, garbage), { freq: 5 }),
  )
  .map(([pairs, unknown]) => {
    const env: Env = Object.fromEntries(pairs);
    if (unknown) env[unknown[0]] = unknown[1];
    return env;
  });
/** Valid-looking values only, so a good share loads and the round-trip is exercised. */
const plausibleEnvArb: fc.Arbitrary<Env> = fc
  .subarray([...ENV_VARS], { maxLength: 6 })
  .chain((names) => fc.tuple(...names.map((n) => VALUES[n].map((v) => [n, v] as const))))
  .map((pairs) => Object.fromEntries(pairs));

/** cfg as formatConfig writes it back: secrets redacted. */
function redacted(cfg: Config): Config {
  const c = structuredClone(cfg);
  if (c.http.token !== null) c.http.token = REDACTED;
  if (c.kafka.sasl !== null) c.kafka.sasl.password = REDACTED;
  if (c.mqtt.password !== null) c.mqtt.password = REDACTED;
  if (c.mqtt.url !== null) c.mqtt.url = redactUrl(c.mqtt.url);
  return c;
}

function load(env: Env): { cfg: Config } | { problems: string[] } {
  try {
    return { cfg: loadConfig(env) };
  } catch (e) {
    if (e instanceof ConfigError) return { problems: e.problems };
    throw new Error(
      `loadConfig threw ${(e as Error)?.name}: ${(e as Error)?.message} for ${JSON.stringify(env)}`,
    );
  }
}

const secretsOf = (env: Env): string[] =>
  SECRET_VARS.map((n) => env[n]).filter((v): v is string => v !== undefined && v.length >= 4);

// ------------------------------------------------------------------ tests --

t.test(
  'loadConfig: a Config or a ConfigError; problems name a variable and never show a secret; configs round-trip',
  async (tt) => {
    let loaded = 0;
    let refused = 0;
    fc.assert(
      fc.property(fc.oneof(envArb, plausibleEnvArb), (env) => {
        const r = load(env);
        if ('problems' in r) {
          refused++;
          if (r.problems.length === 0) throw new Error('ConfigError without problems');
          for (const p of r.problems) {
            if (!/KEDGE_[A-Z0-9_]*/i.test(p)) throw new Error(`problem names no variable: ${p}`);
            if (/\n/.test(p.replace(/"(?:[^"\\]|\\.)*"/g, '')))
              throw new Error(`problem is not one line: ${JSON.stringify(p)}`);
            for (const s of secretsOf(env))
              if (p.includes(s)) throw new Error(`problem shows a secret: ${p}`);
          }
          return;
        }
        loaded++;
        const cfg = r.cfg;
        const json = JSON.stringify(redactedConfig(cfg));
        for (const s of secretsOf(env))
          if (json.includes(s) && s !== REDACTED)
            throw new Error(`redactedConfig shows a secret: ${json}`);
        const text = formatConfig(cfg);
        const file = parseEnvFile(text, 'formatted');
        if (file.problems.length)
          throw new Error(
            `formatConfig output is not a valid env file: ${file.problems.join('; ')}\n${text}`,
          );
        const back = load(file.vars);
        if ('problems' in back)
          throw new Error(
            `formatConfig output does not load: ${back.problems.join('; ')}\n${text}`,
          );
        const a = JSON.stringify(back.cfg);
        const b = JSON.stringify(redacted(cfg));
        if (a !== b)
          throw new Error(
            `round-trip changed the config for ${JSON.stringify(env)}:\n got  ${a}\n want ${b}\n text ${JSON.stringify(text)}`,
          );
      }),
      { seed: SEED, numRuns: 3_000, endOnFailure: true },
    );
    tt.comment(`${loaded} environments loaded, ${refused} refused`);
    tt.ok(loaded > 100 && refused > 100, 'both valid and invalid environments were generated');
  },
);

t.test('one bad variable: every problem names that variable', async (tt) => {
  const single = fc.constantFrom(...ENV_VARS).chain((n) => valueFor(n).map((v) => [n, v] as const));
  let refused = 0;
  fc.assert(
    fc.property(single, ([name, value]) => {
      const r = load({ [name]: value });
      if (!('problems' in r)) return;
      refused++;
      for (const p of r.problems)
        if (!p.includes(name))
          throw new Error(`${name}=${JSON.stringify(value)}: problem does not name ${name}: ${p}`);
    }),
    { seed: SEED, numRuns: 2_000, endOnFailure: true },
  );
  tt.ok(refused > 100, `${refused} single bad variables refused, each problem naming it`);
});

// ---------------------------------------------------------------- env file --

/** A value that survives an env file only when quoted (or not at all, unquoted). */
const anyValue = fc.oneof(
  fc.stringMatching(/^[A-Za-z0-9_.:/,@%+=-]{0,12}$/),
  fc.string({ maxLength: 12 }),
  fc.constantFrom(
    'a b',
    ' lead',
    'trail ',
    'q"uote',
    "s'ingle",
    'back\\slash',
    'nl\nx',
    'cr\rx',
    'tab\tx',
    '$var',
    '`cmd`',
    '#not comment',
    ';semi',
    '\uFEFFbom',
    'é',
    '\u2028',
  ),
);
const keyName = fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,10}$/);

/** Writes a double-quoted value the way the env-file format documents it. */
function dq(v: string): string {
  return `"${v
    .replace(/[\\"$`]/g, (c) => `\\${c}`)
    .replace(/\n/g, '\\n')
    .replace(/\t/g, '\\t')
    .replace(/\r/g, '\\r')}"`;
}

t.test(
  'env file: written assignments read back exactly (quotes, comments, CRLF, BOM, export)',
  async (tt) => {
    const entry = fc.tuple(
      keyName,
      anyValue,
      fc.boolean(),
      fc.constantFrom('', ' ', '\t'),
      fc.constantFrom('', ' ', '  '),
    );
    const fileArb = fc.tuple(
      fc.uniqueArray(entry, { selector: (e) => e[0], maxLength: 8 }),
      fc.constantFrom('\n', '\r\n'),
      fc.boolean(),
      fc.array(
        fc.constantFrom(
          '# comment "unterminated',
          '; semi comment',
          '',
          '   ',
          '\t# indented comment',
        ),
        { maxLength: 3 },
      ),
    );
    fc.assert(
      fc.property(fileArb, ([entries, nl, bom, comments]) => {
        const lines: string[] = [];
        const want: Record<string, string> = {};
        entries.forEach(([k, v, exported, before, around], i) => {
          // Single quotes when the value allows (literal), otherwise double quotes with escapes.
          const quoted = !v.includes("'") && !v.includes('\r') && i % 2 === 0 ? `'${v}'` : dq(v);
          lines.push(
            `${before}${exported ? 'export ' : ''}${k}${around}=${around}${quoted}${around}`,
          );
          if (comments[i]) lines.push(comments[i]);
          want[k] = v;
        });
        const text = (bom ? '\uFEFF' : '') + lines.join(nl) + nl;
        const got = parseEnvFile(text, 'f.env');
        if (got.problems.length)
          throw new Error(`problems: ${got.problems.join('; ')}\n${JSON.stringify(text)}`);
        if (JSON.stringify(got.vars) !== JSON.stringify(want))
          throw new Error(
            `mismatch for ${JSON.stringify(text)}:\n got  ${JSON.stringify(got.vars)}\n want ${JSON.stringify(want)}`,
          );
      }),
      { seed: SEED, numRuns: 1_000, endOnFailure: true },
    );
    tt.pass('1,000 generated env files read back exactly');
  },
);

t.test(
  'regression: a carriage return in a value survives formatConfig (written \\r)',
  async (tt) => {
    const cfg = loadConfig({ KEDGE_DATA_DIR: '/srv/odd\rname', KEDGE_MQTT_USERNAME: 'x\ry' });
    const text = formatConfig(cfg);
    tt.match(text, /^KEDGE_DATA_DIR="\/srv\/odd\\rname"$/m);
    tt.strictSame(loadConfig(parseEnvFile(text, 'f').vars), cfg);
  },
);

t.test(
  'env file: arbitrary text never throws; every problem names the file and a line',
  async (tt) => {
    const chunk = fc.oneof(
      fc.string({ maxLength: 10 }),
      fc.constantFrom(
        '=',
        '"',
        "'",
        '\\',
        '\n',
        '\r\n',
        '\r',
        '#',
        'export ',
        'KEDGE_SYNC=',
        '\uFEFF',
        ' ',
        '\\\n',
      ),
    );
    let withProblems = 0;
    fc.assert(
      fc.property(
        fc.array(chunk, { maxLength: 30 }).map((c) => c.join('')),
        (text) => {
          const r = parseEnvFile(text, '/etc/kedge/kedge.env');
          for (const p of r.problems)
            if (!/^\/etc\/kedge\/kedge\.env:\d+: /.test(p))
              throw new Error(`problem without file:line: ${p}`);
          for (const k of Object.keys(r.vars))
            if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
              throw new Error(`bad key accepted: ${JSON.stringify(k)}`);
          if (r.problems.length) withProblems++;
          // Whatever the file says, loading it gives a config or a ConfigError.
          load(Object.fromEntries(Object.entries(r.vars).filter(([k]) => k.startsWith('KEDGE_'))));
        },
      ),
      { seed: SEED, numRuns: 3_000, endOnFailure: true },
    );
    tt.ok(withProblems > 0, `${withProblems} broken files reported`);
  },
);
