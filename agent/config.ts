/**
 * Environment (plus an optional systemd EnvironmentFile) → typed, validated config.
 * Every problem is collected and reported at once; nothing here exits the process.
 */
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import { mergeEnv, readEnvFile } from './env-file.ts';
import type { StorageDriverName, SyncMode } from './storage-modes.ts';
import {
  formatBytes,
  formatDuration,
  formatRate,
  parseDuration,
  parseRate,
  parseSize,
} from './units.ts';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type Compression = 'none' | 'gzip' | 'snappy' | 'lz4' | 'zstd';
export type SaslMechanism = 'plain' | 'scram-sha-256' | 'scram-sha-512';

export interface ListenAddress {
  host: string;
  port: number;
}

/** A local-time window, minutes since midnight; `end < start` crosses midnight. */
export interface TimeWindow {
  startMin: number;
  endMin: number;
}

export interface Config {
  dataDir: string;
  /** null: generate once and keep in the data dir. */
  agentId: string | null;
  sync: SyncMode;
  storage: StorageDriverName;
  logLevel: LogLevel;

  http: {
    /** null: HTTP disabled (KEDGE_HTTP_LISTEN empty). */
    listen: ListenAddress | null;
    token: string | null;
    maxBody: number;
    tlsCert: string | null;
    tlsKey: string | null;
  };

  kafka: {
    brokers: string[];
    tls: boolean;
    caFile: string | null;
    certFile: string | null;
    keyFile: string | null;
    sasl: { mechanism: SaslMechanism; username: string; password: string } | null;
    compression: Compression;
    topicPrefix: string;
  };

  mqtt: {
    url: string | null;
    topics: string[];
    listen: ListenAddress | null;
    username: string | null;
    password: string | null;
    kafkaTopic: string | null;
    maxPayload: number;
    retained: 'skip' | 'ingest';
    tlsCert: string | null;
    tlsKey: string | null;
  };

  forward: {
    /** bytes per second; null = unlimited */
    rate: number | null;
    /** empty = always */
    windows: TimeWindow[];
    priorityTopics: string[];
  };

  retention: {
    diskQuota: number;
    /** ms; null = unlimited */
    maxAge: number | null;
    whenFull: 'drop-oldest' | 'reject-new';
  };

  heartbeat: {
    /** null = disabled (empty topic) */
    topic: string | null;
    intervalMs: number;
  };

  /** Path of the env file the config was read from, if any (for the permission warning). */
  envFile: string | null;
}

/** Every variable kedge reads, in the order `formatConfig` lists them. */
export const ENV_VARS = [
  'KEDGE_DATA_DIR',
  'KEDGE_AGENT_ID',
  'KEDGE_SYNC',
  'KEDGE_STORAGE',
  'KEDGE_LOG_LEVEL',
  'KEDGE_HTTP_LISTEN',
  'KEDGE_HTTP_TOKEN',
  'KEDGE_HTTP_MAX_BODY',
  'KEDGE_HTTP_TLS_CERT',
  'KEDGE_HTTP_TLS_KEY',
  'KEDGE_KAFKA_BROKERS',
  'KEDGE_KAFKA_TLS',
  'KEDGE_KAFKA_CA_FILE',
  'KEDGE_KAFKA_CERT_FILE',
  'KEDGE_KAFKA_KEY_FILE',
  'KEDGE_KAFKA_SASL_MECHANISM',
  'KEDGE_KAFKA_USERNAME',
  'KEDGE_KAFKA_PASSWORD',
  'KEDGE_COMPRESSION',
  'KEDGE_TOPIC_PREFIX',
  'KEDGE_MQTT_URL',
  'KEDGE_MQTT_TOPICS',
  'KEDGE_MQTT_LISTEN',
  'KEDGE_MQTT_USERNAME',
  'KEDGE_MQTT_PASSWORD',
  'KEDGE_MQTT_KAFKA_TOPIC',
  'KEDGE_MQTT_MAX_PAYLOAD',
  'KEDGE_MQTT_RETAINED',
  'KEDGE_MQTT_TLS_CERT',
  'KEDGE_MQTT_TLS_KEY',
  'KEDGE_FORWARD_RATE',
  'KEDGE_FORWARD_WINDOWS',
  'KEDGE_PRIORITY_TOPICS',
  'KEDGE_DISK_QUOTA',
  'KEDGE_RETENTION',
  'KEDGE_WHEN_FULL',
  'KEDGE_HEARTBEAT_TOPIC',
  'KEDGE_HEARTBEAT_INTERVAL',
] as const;

export type EnvVarName = (typeof ENV_VARS)[number];

/** Variables whose values never appear in output, problems included. */
export const SECRET_VARS: readonly EnvVarName[] = [
  'KEDGE_HTTP_TOKEN',
  'KEDGE_KAFKA_PASSWORD',
  'KEDGE_MQTT_PASSWORD',
];

export const REDACTED = '[redacted]';

const KNOWN = new Set<string>(ENV_VARS);

/** A bad configuration; `problems` lists every one, one actionable line each. */
export class ConfigError extends Error {
  readonly code = 'ERR_KEDGE_CONFIG';
  problems: string[];

  constructor(problems: string[]) {
    const n = problems.length;
    super(
      `invalid configuration (${n} problem${n === 1 ? '' : 's'}):\n${problems.map((p) => `  ${p}`).join('\n')}`,
    );
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** Kafka's own rule for topic names (legal characters, 1-249 long, not `.` or `..`). */
export function isValidTopic(name: string): boolean {
  return /^[a-zA-Z0-9._-]{1,249}$/.test(name) && name !== '.' && name !== '..';
}

const TOPIC_EXPECTED = 'expected 1-249 characters of a-z, A-Z, 0-9, ".", "_", "-"';

export const DEFAULTS = {
  dataDir: './data',
  sync: 'full',
  storage: 'sqlite',
  logLevel: 'info',
  httpListen: { host: '127.0.0.1', port: 8780 },
  httpMaxBody: 1024 * 1024,
  kafkaBrokers: ['localhost:9092'],
  compression: 'zstd',
  mqttTopics: ['#'],
  mqttMaxPayload: 256 * 1024,
  mqttRetained: 'skip',
  diskQuota: 1024 * 1024 * 1024,
  whenFull: 'drop-oldest',
  heartbeatTopic: 'kedge.heartbeat',
  heartbeatIntervalMs: 60_000,
} as const;

/** MQTT's hard limit on a packet (the remaining-length field). */
const MQTT_MAX_PACKET = 268_435_455;
const MIN_DISK_QUOTA = 1024 * 1024;
const MIN_HEARTBEAT_MS = 1000;

export interface LoadConfigOptions {
  /** systemd EnvironmentFile to read; the process environment wins over it. */
  envFile?: string | null;
}

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
  const r = new Reader(vars, problems);

  const dataDir = resolvePath(r.get('KEDGE_DATA_DIR') ?? DEFAULTS.dataDir);

  let agentId: string | null = null;
  const agentIdText = r.get('KEDGE_AGENT_ID');
  if (agentIdText !== undefined) {
    if (/^[A-Za-z0-9._-]{1,64}$/.test(agentIdText)) agentId = agentIdText;
    else
      r.bad(
        'KEDGE_AGENT_ID',
        agentIdText,
        'is not a valid agent id (expected 1-64 characters of A-Z, a-z, 0-9, ".", "_", "-")',
      );
  }

  const sync = r.oneOf('KEDGE_SYNC', ['full', 'normal'] as const, DEFAULTS.sync);
  const storage = r.oneOf('KEDGE_STORAGE', ['sqlite', 'wasm'] as const, DEFAULTS.storage);
  const logLevel = r.oneOf(
    'KEDGE_LOG_LEVEL',
    ['debug', 'info', 'warn', 'error'] as const,
    DEFAULTS.logLevel,
  );

  // --- HTTP
  const httpListen = r.listen('KEDGE_HTTP_LISTEN', { ...DEFAULTS.httpListen }, '127.0.0.1:8780');
  const httpToken = r.secret('KEDGE_HTTP_TOKEN');
  if (httpToken !== null && !/^[\x21-\x7e]+$/.test(httpToken)) {
    r.problem(
      'KEDGE_HTTP_TOKEN contains spaces, control or non-ASCII characters (expected one word of printable ASCII; value not shown)',
    );
  }
  const httpMaxBody = r.size(
    'KEDGE_HTTP_MAX_BODY',
    DEFAULTS.httpMaxBody,
    1,
    Number.MAX_SAFE_INTEGER,
  );
  const [httpTlsCert, httpTlsKey] = r.certPair('KEDGE_HTTP_TLS_CERT', 'KEDGE_HTTP_TLS_KEY');

  // --- Kafka
  const brokers: string[] = [];
  const brokerList = r.list('KEDGE_KAFKA_BROKERS');
  if (brokerList === undefined) {
    brokers.push(...DEFAULTS.kafkaBrokers);
  } else if (brokerList.length === 0) {
    r.bad(
      'KEDGE_KAFKA_BROKERS',
      r.raw('KEDGE_KAFKA_BROKERS') ?? '',
      'lists no brokers (expected host:port, comma-separated)',
    );
  } else {
    for (const entry of brokerList) {
      const hp = parseHostPort(entry, 'kafka1:9092');
      if (hp.ok) brokers.push(formatHostPort(hp.value));
      else r.problem(`KEDGE_KAFKA_BROKERS entry ${JSON.stringify(entry)} ${hp.error}`);
    }
  }

  const tlsFlag = r.bool('KEDGE_KAFKA_TLS');
  const caFile = r.file('KEDGE_KAFKA_CA_FILE');
  const [certFile, keyFile] = r.certPair('KEDGE_KAFKA_CERT_FILE', 'KEDGE_KAFKA_KEY_FILE');
  const tlsFileVars = (
    ['KEDGE_KAFKA_CA_FILE', 'KEDGE_KAFKA_CERT_FILE', 'KEDGE_KAFKA_KEY_FILE'] as const
  ).filter((name) => r.get(name) !== undefined);
  // Giving a CA or client certificate means TLS; only an explicit "off" contradicts it.
  const kafkaTls = tlsFlag ?? tlsFileVars.length > 0;
  if (tlsFlag === false && tlsFileVars.length > 0) {
    r.problem(
      `${tlsFileVars.join(', ')} ${tlsFileVars.length === 1 ? 'is' : 'are'} set but KEDGE_KAFKA_TLS is off (set KEDGE_KAFKA_TLS=true, or remove the file settings)`,
    );
  }

  let sasl: Config['kafka']['sasl'] = null;
  const mechText = r.get('KEDGE_KAFKA_SASL_MECHANISM');
  const kafkaUser = r.get('KEDGE_KAFKA_USERNAME');
  const kafkaPassword = r.secret('KEDGE_KAFKA_PASSWORD');
  const mechanisms = ['plain', 'scram-sha-256', 'scram-sha-512'] as const;
  if (mechText !== undefined) {
    const mech = mechanisms.find((m) => m === mechText.toLowerCase());
    if (mech === undefined) {
      r.bad(
        'KEDGE_KAFKA_SASL_MECHANISM',
        mechText,
        `is not supported (expected ${orList(mechanisms)})`,
      );
    }
    const missing = [
      kafkaUser === undefined ? 'KEDGE_KAFKA_USERNAME' : null,
      kafkaPassword === null ? 'KEDGE_KAFKA_PASSWORD' : null,
    ].filter((x) => x !== null);
    if (missing.length > 0) {
      r.problem(
        `KEDGE_KAFKA_SASL_MECHANISM is ${JSON.stringify(mechText)} but ${missing.join(' and ')} ${missing.length === 1 ? 'is' : 'are'} not set (SASL needs both)`,
      );
    }
    if (mech !== undefined && kafkaUser !== undefined && kafkaPassword !== null) {
      sasl = { mechanism: mech, username: kafkaUser, password: kafkaPassword };
    }
  } else if (kafkaUser !== undefined || kafkaPassword !== null) {
    const given = kafkaUser !== undefined ? 'KEDGE_KAFKA_USERNAME' : 'KEDGE_KAFKA_PASSWORD';
    r.problem(
      `${given} is set but KEDGE_KAFKA_SASL_MECHANISM is not (expected ${orList(mechanisms)})`,
    );
  }

  const compression = r.oneOf(
    'KEDGE_COMPRESSION',
    ['none', 'gzip', 'snappy', 'lz4', 'zstd'] as const,
    DEFAULTS.compression,
  );

  let topicPrefix = '';
  const prefixText = r.get('KEDGE_TOPIC_PREFIX');
  if (prefixText !== undefined) {
    if (/^[a-zA-Z0-9._-]{1,248}$/.test(prefixText)) topicPrefix = prefixText;
    else
      r.bad(
        'KEDGE_TOPIC_PREFIX',
        prefixText,
        'is not a valid topic prefix (expected up to 248 characters of a-z, A-Z, 0-9, ".", "_", "-")',
      );
  }

  // --- MQTT
  let mqttUrl: string | null = null;
  const urlText = r.get('KEDGE_MQTT_URL');
  if (urlText !== undefined) {
    const err = mqttUrlError(urlText);
    if (err === null) mqttUrl = urlText;
    else r.problem(`KEDGE_MQTT_URL ${JSON.stringify(redactUrl(urlText))} ${err}`);
  }
  let mqttTopics: string[] = [...DEFAULTS.mqttTopics];
  const topicList = r.list('KEDGE_MQTT_TOPICS');
  if (topicList !== undefined) {
    if (topicList.length === 0) {
      r.bad(
        'KEDGE_MQTT_TOPICS',
        r.raw('KEDGE_MQTT_TOPICS') ?? '',
        'lists no topic filters (expected e.g. sensors/#,plant/+/temp)',
      );
    }
    mqttTopics = [];
    for (const filter of topicList) {
      const err = mqttFilterError(filter);
      if (err === null) mqttTopics.push(filter);
      else r.problem(`KEDGE_MQTT_TOPICS entry ${JSON.stringify(filter)} ${err}`);
    }
  }
  const mqttListen = r.listen('KEDGE_MQTT_LISTEN', null, '127.0.0.1:1883');
  const mqttUser = r.get('KEDGE_MQTT_USERNAME') ?? null;
  const mqttPassword = r.secret('KEDGE_MQTT_PASSWORD');
  if (mqttPassword !== null && mqttUser === null) {
    r.problem('KEDGE_MQTT_PASSWORD is set but KEDGE_MQTT_USERNAME is not (set both)');
  }
  let mqttKafkaTopic: string | null = null;
  const mqttKafkaTopicText = r.get('KEDGE_MQTT_KAFKA_TOPIC');
  if (mqttKafkaTopicText !== undefined) {
    if (isValidTopic(mqttKafkaTopicText)) mqttKafkaTopic = mqttKafkaTopicText;
    else
      r.bad(
        'KEDGE_MQTT_KAFKA_TOPIC',
        mqttKafkaTopicText,
        `is not a valid Kafka topic name (${TOPIC_EXPECTED})`,
      );
  }
  const mqttMaxPayload = r.size(
    'KEDGE_MQTT_MAX_PAYLOAD',
    DEFAULTS.mqttMaxPayload,
    1,
    MQTT_MAX_PACKET,
  );
  const mqttRetained = r.oneOf(
    'KEDGE_MQTT_RETAINED',
    ['skip', 'ingest'] as const,
    DEFAULTS.mqttRetained,
  );
  const [mqttTlsCert, mqttTlsKey] = r.certPair('KEDGE_MQTT_TLS_CERT', 'KEDGE_MQTT_TLS_KEY');

  // --- forwarding policy
  let rate: number | null = null;
  const rateText = r.get('KEDGE_FORWARD_RATE');
  if (rateText !== undefined && rateText.toLowerCase() !== 'unlimited') {
    const parsed = parseRate(rateText);
    if (parsed.ok) rate = parsed.value;
    else r.bad('KEDGE_FORWARD_RATE', rateText, parsed.error.replace(/\)$/, ', or unlimited)'));
  }

  const windows: TimeWindow[] = [];
  const windowsText = r.get('KEDGE_FORWARD_WINDOWS');
  if (windowsText !== undefined && windowsText.toLowerCase() !== 'always') {
    const entries = splitList(windowsText);
    if (entries.length === 0) {
      r.bad(
        'KEDGE_FORWARD_WINDOWS',
        windowsText,
        'lists no windows (expected e.g. 22:00-06:00,12:00-12:30 or always)',
      );
    }
    for (const entry of entries) {
      const w = parseWindow(entry);
      if (w.ok) windows.push(w.value);
      else r.problem(`KEDGE_FORWARD_WINDOWS entry ${JSON.stringify(entry)} ${w.error}`);
    }
  }

  const priorityTopics: string[] = [];
  for (const topic of r.list('KEDGE_PRIORITY_TOPICS') ?? []) {
    if (isValidTopic(topic)) priorityTopics.push(topic);
    else
      r.problem(
        `KEDGE_PRIORITY_TOPICS entry ${JSON.stringify(topic)} is not a valid Kafka topic name (${TOPIC_EXPECTED})`,
      );
  }

  // --- retention
  const diskQuota = r.size(
    'KEDGE_DISK_QUOTA',
    DEFAULTS.diskQuota,
    MIN_DISK_QUOTA,
    Number.MAX_SAFE_INTEGER,
  );
  let maxAge: number | null = null;
  const retentionText = r.get('KEDGE_RETENTION');
  if (retentionText !== undefined && retentionText.toLowerCase() !== 'unlimited') {
    const parsed = parseDuration(retentionText);
    if (!parsed.ok)
      r.bad('KEDGE_RETENTION', retentionText, parsed.error.replace(/\)$/, '; or unlimited)'));
    else if (parsed.value <= 0)
      r.bad(
        'KEDGE_RETENTION',
        retentionText,
        'is zero (expected e.g. 7d, or unlimited to keep events until forwarded)',
      );
    else maxAge = parsed.value;
  }
  const whenFull = r.oneOf(
    'KEDGE_WHEN_FULL',
    ['drop-oldest', 'reject-new'] as const,
    DEFAULTS.whenFull,
  );

  // --- heartbeat
  let heartbeatTopic: string | null = DEFAULTS.heartbeatTopic;
  const hbRaw = r.raw('KEDGE_HEARTBEAT_TOPIC');
  if (hbRaw !== undefined) {
    const hb = hbRaw.trim();
    if (hb === '') heartbeatTopic = null;
    else if (isValidTopic(hb)) heartbeatTopic = hb;
    else
      r.bad(
        'KEDGE_HEARTBEAT_TOPIC',
        hb,
        `is not a valid Kafka topic name (${TOPIC_EXPECTED}; empty disables the heartbeat)`,
      );
  }
  const heartbeatIntervalMs = r.duration(
    'KEDGE_HEARTBEAT_INTERVAL',
    DEFAULTS.heartbeatIntervalMs,
    MIN_HEARTBEAT_MS,
  );

  problems.push(...unknownVariableProblems(vars));
  if (problems.length > 0) throw new ConfigError(problems);

  return {
    dataDir,
    agentId,
    sync,
    storage,
    logLevel,
    http: {
      listen: httpListen,
      token: httpToken,
      maxBody: httpMaxBody,
      tlsCert: httpTlsCert,
      tlsKey: httpTlsKey,
    },
    kafka: { brokers, tls: kafkaTls, caFile, certFile, keyFile, sasl, compression, topicPrefix },
    mqtt: {
      url: mqttUrl,
      topics: mqttTopics,
      listen: mqttListen,
      username: mqttUser,
      password: mqttPassword,
      kafkaTopic: mqttKafkaTopic,
      maxPayload: mqttMaxPayload,
      retained: mqttRetained,
      tlsCert: mqttTlsCert,
      tlsKey: mqttTlsKey,
    },
    forward: { rate, windows, priorityTopics },
    retention: { diskQuota, maxAge, whenFull },
    heartbeat: { topic: heartbeatTopic, intervalMs: heartbeatIntervalMs },
    envFile,
  };
}

/** Reads variables and records problems; each method returns a usable value even on error. */
class Reader {
  private readonly vars: Record<string, string | undefined>;
  private readonly problems: string[];

  constructor(vars: Record<string, string | undefined>, problems: string[]) {
    this.vars = vars;
    this.problems = problems;
  }

  raw(name: EnvVarName): string | undefined {
    return this.vars[name];
  }

  /** Trimmed value; unset and empty are both `undefined`. */
  get(name: EnvVarName): string | undefined {
    const v = this.vars[name]?.trim();
    return v === undefined || v === '' ? undefined : v;
  }

  /** Secrets are taken byte for byte (no trimming); empty is null. */
  secret(name: EnvVarName): string | null {
    const v = this.vars[name];
    return v === undefined || v === '' ? null : v;
  }

  problem(text: string): void {
    this.problems.push(text);
  }

  bad(name: EnvVarName, value: string, predicate: string): void {
    this.problems.push(`${name} ${JSON.stringify(value)} ${predicate}`);
  }

  oneOf<T extends string>(name: EnvVarName, allowed: readonly T[], def: T): T {
    const v = this.get(name);
    if (v === undefined) return def;
    const found = allowed.find((a) => a === v.toLowerCase());
    if (found !== undefined) return found;
    this.bad(name, v, `is not valid (expected ${orList(allowed)})`);
    return def;
  }

  bool(name: EnvVarName): boolean | undefined {
    const v = this.get(name);
    if (v === undefined) return undefined;
    const lower = v.toLowerCase();
    if (['true', '1', 'yes', 'on'].includes(lower)) return true;
    if (['false', '0', 'no', 'off'].includes(lower)) return false;
    this.bad(name, v, 'is not a boolean (expected true or false; also 1/0, yes/no, on/off)');
    return undefined;
  }

  size(name: EnvVarName, def: number, min: number, max: number): number {
    const v = this.get(name);
    if (v === undefined) return def;
    const parsed = parseSize(v);
    if (!parsed.ok) {
      this.bad(name, v, parsed.error);
      return def;
    }
    if (parsed.value < min) {
      this.bad(
        name,
        v,
        min <= 1
          ? 'is zero (expected a size above 0, e.g. 1MiB)'
          : `is too small (expected at least ${formatBytes(min, { exact: true })})`,
      );
      return def;
    }
    if (parsed.value > max) {
      this.bad(name, v, `is too large (expected at most ${formatBytes(max)}, ${max} bytes)`);
      return def;
    }
    return parsed.value;
  }

  duration(name: EnvVarName, def: number, min: number): number {
    const v = this.get(name);
    if (v === undefined) return def;
    const parsed = parseDuration(v);
    if (!parsed.ok) {
      this.bad(name, v, parsed.error);
      return def;
    }
    if (parsed.value < min) {
      this.bad(name, v, `is too short (expected at least ${formatDuration(min)})`);
      return def;
    }
    return parsed.value;
  }

  /** `host:port`; empty means disabled (null), unset means `def`. */
  listen(name: EnvVarName, def: ListenAddress | null, example: string): ListenAddress | null {
    const raw = this.raw(name);
    if (raw === undefined) return def;
    const v = raw.trim();
    if (v === '') return null;
    const hp = parseHostPort(v, example);
    if (hp.ok) return hp.value;
    this.bad(name, v, hp.error);
    return def;
  }

  /** Comma-separated, entries trimmed, empty entries dropped; undefined when unset. */
  list(name: EnvVarName): string[] | undefined {
    const v = this.get(name);
    return v === undefined ? undefined : splitList(v);
  }

  /** A file the agent must be able to read at start; returned as an absolute path. */
  file(name: EnvVarName): string | null {
    const v = this.get(name);
    if (v === undefined) return null;
    const abs = resolvePath(v);
    const err = unreadableFileError(abs);
    if (err !== null) this.bad(name, v, err);
    return abs;
  }

  /** Certificate and key: both or neither, both readable. */
  certPair(certName: EnvVarName, keyName: EnvVarName): [string | null, string | null] {
    const cert = this.file(certName);
    const key = this.file(keyName);
    if (cert !== null && key === null)
      this.problem(
        `${certName} is set but ${keyName} is not (a certificate needs its private key)`,
      );
    if (key !== null && cert === null)
      this.problem(
        `${keyName} is set but ${certName} is not (a private key needs its certificate)`,
      );
    return [cert, key];
  }
}

function splitList(text: string): string[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function orList(items: readonly string[]): string {
  if (items.length <= 1) return items.join('');
  return `${items.slice(0, -1).join(', ')} or ${items[items.length - 1]}`;
}

function unreadableFileError(path: string): string | null {
  try {
    if (!statSync(path).isFile()) return 'is not a regular file (expected a readable PEM file)';
    accessSync(path, fsConstants.R_OK);
    return null;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return 'does not exist (expected a readable PEM file)';
    if (code === 'EACCES' || code === 'EPERM')
      return 'is not readable by this user (check its owner and permissions)';
    return `cannot be read (${(err as Error).message})`;
  }
}

type Result<T> = { ok: true; value: T } | { ok: false; error: string };

const HOSTNAME_RE =
  /^(?=.{1,253}$)[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?(\.[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?)*\.?$/;

/** `host:port` with an IPv4 address, a hostname or a bracketed IPv6 address (`[::1]:1883`). */
export function parseHostPort(text: string, example = '127.0.0.1:8780'): Result<ListenAddress> {
  const expected = `expected host:port, e.g. ${example}`;
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const m = /^\[([^\]]*)\](?::(.*))?$/.exec(text);
    if (!m)
      return {
        ok: false,
        error: `is not a valid address (${expected} or [::1]:${example.split(':').pop()})`,
      };
    if (m[2] === undefined) return { ok: false, error: `has no port (${expected})` };
    host = m[1];
    portText = m[2];
    if (!isIPv6(host))
      return { ok: false, error: `has an invalid IPv6 address "${host}" (${expected})` };
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) return { ok: false, error: `has no port (${expected})` };
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) {
      return {
        ok: false,
        error: `looks like an IPv6 address without brackets (expected e.g. [::1]:${portText || '8780'})`,
      };
    }
    if (host === '')
      return { ok: false, error: `has no host (${expected}; 0.0.0.0 listens on all interfaces)` };
    if (/^[0-9.]+$/.test(host) ? !isIPv4(host) : !HOSTNAME_RE.test(host)) {
      return { ok: false, error: `has an invalid host "${host}" (${expected})` };
    }
  }
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
  if (!(port >= 1 && port <= 65535)) {
    return {
      ok: false,
      error: `has an invalid port "${portText}" (expected a port from 1 to 65535)`,
    };
  }
  return { ok: true, value: { host, port } };
}

export function formatHostPort(addr: ListenAddress): string {
  return addr.host.includes(':') ? `[${addr.host}]:${addr.port}` : `${addr.host}:${addr.port}`;
}

const WINDOW_EXPECTED = 'expected HH:MM-HH:MM on a 24-hour clock, e.g. 22:00-06:00';

function parseWindow(text: string): Result<TimeWindow> {
  const m = /^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$/.exec(text);
  if (!m) return { ok: false, error: `is not a time window (${WINDOW_EXPECTED})` };
  const toMin = (h: string, mm: string, isEnd: boolean): number | null => {
    const hour = Number(h);
    const min = Number(mm);
    if (isEnd && hour === 24 && min === 0) return 0; // 24:00 = midnight at the end of the day
    if (hour > 23 || min > 59) return null;
    return hour * 60 + min;
  };
  const startMin = toMin(m[1], m[2], false);
  const endMin = toMin(m[3], m[4], true);
  if (startMin === null)
    return { ok: false, error: `has an invalid start time ${m[1]}:${m[2]} (${WINDOW_EXPECTED})` };
  if (endMin === null)
    return { ok: false, error: `has an invalid end time ${m[3]}:${m[4]} (${WINDOW_EXPECTED})` };
  if (startMin === endMin) {
    return {
      ok: false,
      error:
        'starts and ends at the same time (for no restriction leave KEDGE_FORWARD_WINDOWS unset or use always)',
    };
  }
  return { ok: true, value: { startMin, endMin } };
}

function formatWindow(w: TimeWindow): string {
  const hhmm = (min: number): string =>
    `${String(Math.floor(min / 60)).padStart(2, '0')}:${String(min % 60).padStart(2, '0')}`;
  return `${hhmm(w.startMin)}-${hhmm(w.endMin)}`;
}

const MQTT_SCHEMES = ['mqtt:', 'mqtts:', 'ws:', 'wss:'];

function mqttUrlError(text: string): string | null {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return 'is not a URL (expected e.g. mqtt://broker.local:1883)';
  }
  if (!MQTT_SCHEMES.includes(url.protocol)) {
    return `has scheme ${url.protocol.replace(/:$/, '')}:// (expected mqtt://, mqtts://, ws:// or wss://)`;
  }
  if (url.hostname === '') return 'has no host (expected e.g. mqtt://broker.local:1883)';
  return null;
}

/** MQTT subscription filter rules: `#` only as the whole last level, `+` only as a whole level. */
function mqttFilterError(filter: string): string | null {
  if (filter.includes('\u0000')) return 'contains a NUL character';
  if (Buffer.byteLength(filter) > 65535) return 'is longer than 65535 bytes';
  const levels = filter.split('/');
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i];
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) {
      return 'is not a valid MQTT filter ("#" must be the last level on its own, e.g. sensors/#)';
    }
    if (level.includes('+') && level !== '+') {
      return 'is not a valid MQTT filter ("+" must be a whole level, e.g. plant/+/temp)';
    }
  }
  return null;
}

/** Replaces the password part of `scheme://user:password@host` (parsable or not). */
export function redactUrl(url: string): string {
  const m = /^([a-z][a-z0-9+.-]*:\/\/)([^/?#]*)(.*)$/is.exec(url);
  if (!m) return url;
  const at = m[2].lastIndexOf('@');
  if (at < 0) return url;
  const colon = m[2].indexOf(':');
  if (colon < 0 || colon > at) return url;
  return `${m[1]}${m[2].slice(0, colon + 1)}${REDACTED}${m[2].slice(at)}${m[3]}`;
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

function unknownVariableProblems(vars: Record<string, string | undefined>): string[] {
  const out: string[] = [];
  for (const [name, value] of Object.entries(vars)) {
    if (value === undefined || KNOWN.has(name) || !name.toUpperCase().startsWith('KEDGE_'))
      continue;
    const suggestions = suggestVariable(name);
    let hint: string;
    if (suggestions.length === 1 && suggestions[0] === name.toUpperCase()) {
      hint = `did you mean ${suggestions[0]}? names are case-sensitive`;
    } else if (suggestions.length > 0) {
      hint = `did you mean ${orList(suggestions)}?`;
    } else {
      hint = 'check the spelling; the README lists every KEDGE_ variable';
    }
    out.push(`${name} is not a known kedge setting (${hint})`);
  }
  return out;
}

/**
 * The effective config as plain data (for `kedge check-config --json` and
 * `/v1/status`): same shape as Config, secrets replaced by "[redacted]", null kept.
 */
export function redactedConfig(cfg: Config): Record<string, unknown> {
  const copy = structuredClone(cfg);
  const out = copy as unknown as Record<string, unknown>;
  if (copy.http.token !== null) copy.http.token = REDACTED;
  if (copy.kafka.sasl !== null) copy.kafka.sasl.password = REDACTED;
  if (copy.mqtt.password !== null) copy.mqtt.password = REDACTED;
  if (copy.mqtt.url !== null) copy.mqtt.url = redactUrl(copy.mqtt.url);
  return out;
}

/**
 * The effective config as env-file text: every variable, defaults filled in, secrets
 * redacted, one `KEDGE_X=value` per line. Apart from secrets it reads back (via
 * parseEnvFile + loadConfig) to the same Config.
 */
export function formatConfig(cfg: Config): string {
  const values = configToEnv(cfg);
  return ENV_VARS.map((name) => `${name}=${quoteEnvValue(values[name])}`).join('\n');
}

/** Typed as a full record so that a new variable cannot be forgotten here. */
function configToEnv(cfg: Config): Record<EnvVarName, string> {
  const opt = (v: string | null): string => v ?? '';
  const secret = (v: string | null): string => (v === null ? '' : REDACTED);
  return {
    KEDGE_DATA_DIR: cfg.dataDir,
    KEDGE_AGENT_ID: opt(cfg.agentId),
    KEDGE_SYNC: cfg.sync,
    KEDGE_STORAGE: cfg.storage,
    KEDGE_LOG_LEVEL: cfg.logLevel,
    KEDGE_HTTP_LISTEN: cfg.http.listen === null ? '' : formatHostPort(cfg.http.listen),
    KEDGE_HTTP_TOKEN: secret(cfg.http.token),
    KEDGE_HTTP_MAX_BODY: formatBytes(cfg.http.maxBody, { exact: true }),
    KEDGE_HTTP_TLS_CERT: opt(cfg.http.tlsCert),
    KEDGE_HTTP_TLS_KEY: opt(cfg.http.tlsKey),
    KEDGE_KAFKA_BROKERS: cfg.kafka.brokers.join(','),
    KEDGE_KAFKA_TLS: String(cfg.kafka.tls),
    KEDGE_KAFKA_CA_FILE: opt(cfg.kafka.caFile),
    KEDGE_KAFKA_CERT_FILE: opt(cfg.kafka.certFile),
    KEDGE_KAFKA_KEY_FILE: opt(cfg.kafka.keyFile),
    KEDGE_KAFKA_SASL_MECHANISM: cfg.kafka.sasl?.mechanism ?? '',
    KEDGE_KAFKA_USERNAME: cfg.kafka.sasl?.username ?? '',
    KEDGE_KAFKA_PASSWORD: secret(cfg.kafka.sasl?.password ?? null),
    KEDGE_COMPRESSION: cfg.kafka.compression,
    KEDGE_TOPIC_PREFIX: cfg.kafka.topicPrefix,
    KEDGE_MQTT_URL: cfg.mqtt.url === null ? '' : redactUrl(cfg.mqtt.url),
    KEDGE_MQTT_TOPICS: cfg.mqtt.topics.join(','),
    KEDGE_MQTT_LISTEN: cfg.mqtt.listen === null ? '' : formatHostPort(cfg.mqtt.listen),
    KEDGE_MQTT_USERNAME: opt(cfg.mqtt.username),
    KEDGE_MQTT_PASSWORD: secret(cfg.mqtt.password),
    KEDGE_MQTT_KAFKA_TOPIC: opt(cfg.mqtt.kafkaTopic),
    KEDGE_MQTT_MAX_PAYLOAD: formatBytes(cfg.mqtt.maxPayload, { exact: true }),
    KEDGE_MQTT_RETAINED: cfg.mqtt.retained,
    KEDGE_MQTT_TLS_CERT: opt(cfg.mqtt.tlsCert),
    KEDGE_MQTT_TLS_KEY: opt(cfg.mqtt.tlsKey),
    KEDGE_FORWARD_RATE: cfg.forward.rate === null ? 'unlimited' : formatRate(cfg.forward.rate),
    KEDGE_FORWARD_WINDOWS:
      cfg.forward.windows.length === 0 ? 'always' : cfg.forward.windows.map(formatWindow).join(','),
    KEDGE_PRIORITY_TOPICS: cfg.forward.priorityTopics.join(','),
    KEDGE_DISK_QUOTA: formatBytes(cfg.retention.diskQuota, { exact: true }),
    KEDGE_RETENTION:
      cfg.retention.maxAge === null ? 'unlimited' : formatDuration(cfg.retention.maxAge),
    KEDGE_WHEN_FULL: cfg.retention.whenFull,
    KEDGE_HEARTBEAT_TOPIC: opt(cfg.heartbeat.topic),
    KEDGE_HEARTBEAT_INTERVAL: formatDuration(cfg.heartbeat.intervalMs),
  };
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
