/**
 * Environment (plus an optional systemd EnvironmentFile) → typed, validated config.
 * Each variable is parsed as its row in settings.ts says; rules that span several
 * variables live in validate(). Every problem is collected and reported at once;
 * nothing here exits the process.
 */
import {
  destinationVar,
  effectiveDestinations,
  isDestinationVariable,
  PER_DESTINATION,
  parseDestinationValues,
  parseRoutes,
  toDestination,
} from './destinations-config.ts';
import { mergeEnv, readEnvFile } from './env-file.ts';
import { ConfigError } from './errors.ts';
import { REDACTED, redactIfUrl, redactUrl } from './redact.ts';
import { Field, type ListenAddress, orList, type TimeWindow } from './setting-values.ts';
import {
  type Compression,
  type Config,
  type KafkaClientName,
  type LogLevel,
  SASL_MECHANISMS,
  type SaslMechanism,
} from './config-types.ts';
import {
  ENV_VARS,
  type EnvVarName,
  SECRET_VARS,
  type SettingValues,
  settingOf,
  shownValue,
} from './settings.ts';

export { ConfigError, ENV_VARS, type EnvVarName, REDACTED, redactUrl, SECRET_VARS };
export { isValidTopic } from './setting-values.ts';
export type { ListenAddress, TimeWindow };

const KNOWN = new Set<string>(ENV_VARS);

export type { Compression, Config, KafkaClientName, LogLevel, SaslMechanism };

export interface LoadConfigOptions {
  /** systemd EnvironmentFile to read; the process environment wins over it. */
  envFile?: string | null;
}

/** The trimmed value of a variable; undefined when unset or empty. */
type Given = (name: EnvVarName) => string | undefined;

/**
 * Reads every KEDGE_* variable (defaults filled in) and validates all of them.
 * Throws ConfigError listing every problem; never exits, never logs.
 * Empty values count as unset, except where empty means "off": KEDGE_HTTP_LISTEN,
 * KEDGE_HEARTBEAT_TOPIC (and KEDGE_HTTP_TOKEN / KEDGE_TOPIC_PREFIX, whose default is empty).
 */
export function loadConfig(
  env: Record<string, string | undefined>,
  opts: LoadConfigOptions = {},
): Config {
  const problems: string[] = [];
  const envFile = opts.envFile ? opts.envFile : null;
  let vars = env;
  if (envFile !== null) {
    const file = readEnvFile(envFile);
    problems.push(...file.problems);
    vars = mergeEnv(env, file.vars);
  }
  const values: Record<string, unknown> = {};
  for (const name of ENV_VARS) {
    const s = settingOf(name);
    values[name] = s.parse(new Field(name, vars[name], s.default, problems));
  }
  const v = values as SettingValues;
  const given: Given = (name) => vars[name]?.trim() || undefined;
  problems.push(...validate(v, given));
  // Several destinations: each one's settings are the unprefixed ones with its own laid over.
  const names = v.KEDGE_DESTINATIONS;
  const perDest: { name: string; values: Record<string, unknown>; given: Given }[] = [];
  for (const name of names) {
    const d = parseDestinationValues(vars, name, problems);
    const dGiven: Given = (n) => d.env[n]?.trim() || undefined;
    const merged = { ...v, ...d.values } as SettingValues;
    for (const p of validate(merged, dGiven)) problems.push(`destination ${name}: ${p}`);
    perDest.push({ name, values: d.values, given: dGiven });
  }
  const routes = parseRoutes(vars, names.length > 0 ? names : ['kafka'], problems);
  problems.push(...unknownVariableProblems(vars, names));
  if (problems.length > 0) throw new ConfigError(problems);
  const cfg = toConfig(v, given, envFile);
  cfg.routes = routes;
  cfg.destinations =
    names.length === 0
      ? null
      : perDest.map((d) =>
          toDestination(
            d.name,
            d.values,
            cfg.kafka,
            KAFKA_TLS_FILES.some((n) => d.given(n)),
          ),
        );
  return cfg;
}

const CERT_PAIRS = [
  ['KEDGE_HTTP_TLS_CERT', 'KEDGE_HTTP_TLS_KEY'],
  ['KEDGE_KAFKA_CERT_FILE', 'KEDGE_KAFKA_KEY_FILE'],
  ['KEDGE_MQTT_TLS_CERT', 'KEDGE_MQTT_TLS_KEY'],
] as const;
const KAFKA_TLS_FILES: readonly EnvVarName[] = [
  'KEDGE_KAFKA_CA_FILE',
  'KEDGE_KAFKA_CERT_FILE',
  'KEDGE_KAFKA_KEY_FILE',
];
const SASL_PARTS = ['KEDGE_KAFKA_USERNAME', 'KEDGE_KAFKA_PASSWORD'] as const;

const isAre = (names: readonly string[]): string => (names.length === 1 ? 'is' : 'are');

/** The rules that span several variables, one problem line each. */
function validate(v: SettingValues, given: Given): string[] {
  const out: string[] = [];
  for (const [cert, key] of CERT_PAIRS) {
    if (given(cert) && !given(key))
      out.push(`${cert} is set but ${key} is not (a certificate needs its private key)`);
    if (given(key) && !given(cert))
      out.push(`${key} is set but ${cert} is not (a private key needs its certificate)`);
  }
  // A CA or client certificate means TLS; only an explicit "off" contradicts it.
  const tlsFiles = KAFKA_TLS_FILES.filter((n) => given(n));
  if (v.KEDGE_KAFKA_TLS === false && tlsFiles.length > 0)
    out.push(
      `${tlsFiles.join(', ')} ${isAre(tlsFiles)} set but KEDGE_KAFKA_TLS is off (set KEDGE_KAFKA_TLS=true, or remove the file settings)`,
    );
  const mechanism = given('KEDGE_KAFKA_SASL_MECHANISM');
  const missing = SASL_PARTS.filter((n) => v[n] === null);
  if (mechanism !== undefined && missing.length > 0)
    out.push(
      `KEDGE_KAFKA_SASL_MECHANISM is ${JSON.stringify(mechanism)} but ${missing.join(' and ')} ${isAre(missing)} not set (SASL needs both)`,
    );
  if (mechanism === undefined && missing.length < SASL_PARTS.length) {
    const set = SASL_PARTS.find((n) => v[n] !== null);
    out.push(
      `${set} is set but KEDGE_KAFKA_SASL_MECHANISM is not (expected ${orList(SASL_MECHANISMS)})`,
    );
  }
  if (v.KEDGE_MQTT_PASSWORD !== null && v.KEDGE_MQTT_USERNAME === null)
    out.push('KEDGE_MQTT_PASSWORD is set but KEDGE_MQTT_USERNAME is not (set both)');
  return out;
}

/** The parsed values in the shape the agent uses (only called when there are no problems). */
function toConfig(v: SettingValues, given: Given, envFile: string | null): Config {
  const mechanism = v.KEDGE_KAFKA_SASL_MECHANISM;
  const user = v.KEDGE_KAFKA_USERNAME;
  const password = v.KEDGE_KAFKA_PASSWORD;
  return {
    dataDir: v.KEDGE_DATA_DIR,
    agentId: v.KEDGE_AGENT_ID,
    sync: v.KEDGE_SYNC,
    storage: v.KEDGE_STORAGE,
    logLevel: v.KEDGE_LOG_LEVEL,
    http: {
      listen: v.KEDGE_HTTP_LISTEN,
      token: v.KEDGE_HTTP_TOKEN,
      maxBody: v.KEDGE_HTTP_MAX_BODY,
      tlsCert: v.KEDGE_HTTP_TLS_CERT,
      tlsKey: v.KEDGE_HTTP_TLS_KEY,
    },
    kafka: {
      client: v.KEDGE_KAFKA_CLIENT,
      brokers: v.KEDGE_KAFKA_BROKERS,
      tls: v.KEDGE_KAFKA_TLS ?? KAFKA_TLS_FILES.some((n) => given(n)),
      caFile: v.KEDGE_KAFKA_CA_FILE,
      certFile: v.KEDGE_KAFKA_CERT_FILE,
      keyFile: v.KEDGE_KAFKA_KEY_FILE,
      sasl:
        mechanism !== null && user !== null && password !== null
          ? { mechanism, username: user, password }
          : null,
      compression: v.KEDGE_COMPRESSION,
      topicPrefix: v.KEDGE_TOPIC_PREFIX,
    },
    mqtt: {
      url: v.KEDGE_MQTT_URL,
      topics: v.KEDGE_MQTT_TOPICS,
      listen: v.KEDGE_MQTT_LISTEN,
      username: v.KEDGE_MQTT_USERNAME,
      password: v.KEDGE_MQTT_PASSWORD,
      kafkaTopic: v.KEDGE_MQTT_KAFKA_TOPIC,
      maxPayload: v.KEDGE_MQTT_MAX_PAYLOAD,
      retained: v.KEDGE_MQTT_RETAINED,
      tlsCert: v.KEDGE_MQTT_TLS_CERT,
      tlsKey: v.KEDGE_MQTT_TLS_KEY,
    },
    forward: {
      rate: v.KEDGE_FORWARD_RATE,
      windows: v.KEDGE_FORWARD_WINDOWS,
      priorityTopics: v.KEDGE_PRIORITY_TOPICS,
    },
    retention: {
      diskQuota: v.KEDGE_DISK_QUOTA,
      maxAge: v.KEDGE_RETENTION,
      whenFull: v.KEDGE_WHEN_FULL,
    },
    destinations: null,
    routes: [],
    heartbeat: { topic: v.KEDGE_HEARTBEAT_TOPIC, intervalMs: v.KEDGE_HEARTBEAT_INTERVAL },
    envFile,
  };
}

/** Edit distance counting a swap of neighbours as one edit (SNYC → SYNC is one typo). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/** Known names close to an unknown one: typos (KEDGE_SNYC) and missing sections (KEDGE_BROKERS). */
export function suggestVariable(name: string): string[] {
  const upper = name.toUpperCase();
  if (KNOWN.has(upper)) return [upper];
  const tail = upper.replace(/^KEDGE_/, '');
  let best = Number.POSITIVE_INFINITY;
  let closest: string[] = [];
  for (const known of ENV_VARS) {
    const d = editDistance(tail, known.slice('KEDGE_'.length));
    if (d < best) {
      best = d;
      closest = [known];
    } else if (d === best) {
      closest.push(known);
    }
  }
  if (best <= Math.max(1, Math.floor(tail.length / 3))) return closest;
  if (tail.length >= 3) return ENV_VARS.filter((k) => k.endsWith(`_${tail}`));
  return [];
}

function unknownVariableProblems(
  vars: Record<string, string | undefined>,
  destinations: readonly string[],
): string[] {
  const out: string[] = [];
  for (const [name, value] of Object.entries(vars)) {
    if (value === undefined || KNOWN.has(name) || !name.toUpperCase().startsWith('KEDGE_'))
      continue;
    if (isDestinationVariable(name, destinations)) continue;
    // KEDGE_<N>_KAFKA_BROKERS and friends of a destination that is not listed.
    const base = PER_DESTINATION.find((b) => name.endsWith(`_${b.slice('KEDGE_'.length)}`));
    const dest = base
      ? name.slice('KEDGE_'.length, name.length - base.length + 'KEDGE_'.length - 1)
      : '';
    if (base && /^[A-Z][A-Z0-9_]*$/.test(dest)) {
      const lower = dest.toLowerCase();
      out.push(
        `${name} is for a destination ${JSON.stringify(lower)}, which KEDGE_DESTINATIONS does not list (${destinations.length === 0 ? `set KEDGE_DESTINATIONS=${lower}` : `add ${lower} to KEDGE_DESTINATIONS=${destinations.join(',')}`}, or remove the variable)`,
      );
      continue;
    }
    const suggestions = suggestVariable(name);
    let hint: string;
    if (suggestions.length === 1 && suggestions[0] === name.toUpperCase()) {
      hint = `did you mean ${suggestions[0]}? names are case-sensitive`;
    } else if (suggestions.length > 0) {
      hint = `did you mean ${orList(suggestions)}?`;
    } else {
      hint = 'check the spelling; docs/configuration.md lists every KEDGE_ variable';
    }
    out.push(`${name} is not a known kedge setting (${hint})`);
  }
  return out;
}

/**
 * The effective config as plain data (for `kedge check-config --json` and
 * `/v1/status`): same shape as Config, secrets replaced by "[redacted]", credentials
 * in URLs hidden, null kept.
 */
export function redactedConfig(cfg: Config): Record<string, unknown> {
  const secrets = new Set(
    effectiveDestinations(cfg)
      .flatMap((d) => SECRET_VARS.map((n) => settingOf(n).show({ ...cfg, kafka: d.kafka })))
      .concat(SECRET_VARS.map((n) => settingOf(n).show(cfg)))
      .filter((s) => s !== ''),
  );
  return JSON.parse(
    JSON.stringify(cfg, (_key, value: unknown) => {
      if (typeof value !== 'string') return value;
      return secrets.has(value) ? REDACTED : redactIfUrl(value);
    }),
  );
}

/**
 * The effective config as env-file text: every variable, defaults filled in, secrets
 * redacted, one `NAME=value` per line. Apart from secrets it reads back (via
 * parseEnvFile + loadConfig) to the same Config.
 */
export function formatConfig(cfg: Config): string {
  const lines = ENV_VARS.map(
    (name) => `${name}=${quoteEnvValue(shownValue(name, settingOf(name).show(cfg)))}`,
  );
  // Each destination's own settings in full (what it uses, its own or the default).
  for (const d of cfg.destinations ?? []) {
    const view: Config = { ...cfg, kafka: d.kafka, forward: { ...cfg.forward, ...d.forward } };
    for (const base of PER_DESTINATION)
      lines.push(
        `${destinationVar(d.name, base)}=${quoteEnvValue(shownValue(base, settingOf(base).show(view)))}`,
      );
  }
  for (const r of cfg.routes)
    lines.push(`KEDGE_ROUTE_${r.name.toUpperCase()}=${quoteEnvValue(r.source)}`);
  return lines.join('\n');
}

/** Quotes a value only when the env-file parser would otherwise change it. */
function quoteEnvValue(value: string): string {
  if (/^[A-Za-z0-9_.:/,@%+=[\]#*-]*$/.test(value)) return value;
  return `"${value
    .replace(/[\\"$`]/g, (c) => `\\${c}`)
    .replace(/\n/g, '\\n')
    .replace(/\t/g, '\\t')
    .replace(/\r/g, '\\r')}"`;
}
