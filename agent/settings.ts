/**
 * Every KEDGE_* setting, declared once (like Fluent Bit's `config_map[]`): its group,
 * kind of value, default, one-line doc, whether it is a secret, how it is parsed and
 * how `kedge check-config` prints it back. Parsing (config.ts), check-config,
 * redaction, docs/configuration.md and packaging/kedge.env.example all come from here
 * (`npm run docs:settings` writes the last two; test/settings.test.ts keeps them in step).
 * Rules that span several settings live in config.ts's validate().
 */
import { type Config, KAFKA_CLIENTS, SASL_MECHANISMS } from './config-types.ts';
import { REDACTED, redactIfUrl, redactUrl } from './redact.ts';
import {
  type Field,
  type ListenAddress,
  checkMqttFilter,
  checkTopic,
  formatHostPort,
  formatWindow,
  mqttUrlError,
  orList,
  parseHostPort,
  parseWindow,
  splitList,
  topicError,
} from './setting-values.ts';
import { formatBytes, formatDuration, formatRate, parseDuration, parseRate } from './units.ts';

export type GroupId = 'general' | 'http' | 'kafka' | 'mqtt' | 'link' | 'retention' | 'heartbeat';

export const GROUPS: Record<GroupId, { title: string; intro: string }> = {
  general: { title: 'General', intro: 'Where the log lives, how it is written, what is logged.' },
  http: {
    title: 'Ingest: HTTP',
    intro: 'The HTTP ingest API, also serving /metrics, /v1/status and the control calls.',
  },
  kafka: { title: 'Kafka', intro: 'Where events go, and how kedge connects and authenticates.' },
  mqtt: {
    title: 'Ingest: MQTT',
    intro: 'Client mode subscribes to a broker; the embedded broker accepts publishers directly.',
  },
  link: { title: 'Link', intro: 'When and how fast the backlog is forwarded.' },
  retention: {
    title: 'Retention',
    intro: 'How much the log may hold, and what gives way when full.',
  },
  heartbeat: { title: 'Heartbeat', intro: 'A fleet heartbeat record sent to Kafka.' },
};

export interface Setting<T> {
  group: GroupId;
  /** The kind of value, for the docs. */
  type: string;
  /** What an unset variable means, as the parser reads it ('' = unset / off). */
  default: string;
  /** The default in words, where `default` alone says too little. */
  defaultDoc?: string;
  /** The value the systemd service uses instead (shown in the example env file). */
  serviceDefault?: string;
  /** Never printed: check-config, problems and /v1/status show "[redacted]". */
  secret?: boolean;
  /** One line for the docs and the example env file. */
  doc: string;
  parse(f: Field): T;
  /** The effective value as env-file text (check-config); round-trips through parse. */
  show(cfg: Config): string;
}

/** Lets TypeScript infer each row's value type. */
function setting<T>(s: Setting<T>): Setting<T> {
  return s;
}

const opt = (v: string | null): string => v ?? '';
const maybe = <T>(v: T | null, format: (x: T) => string): string => (v === null ? '' : format(v));
const exactBytes = (n: number): string => formatBytes(n, { exact: true });
const file = (group: GroupId, doc: string, show: (c: Config) => string | null) =>
  setting({
    group,
    type: 'path',
    default: '',
    doc,
    parse: (f) => f.file(),
    show: (c) => opt(show(c)),
  });

/** `host:port`; empty disables. `example` goes into problems. */
const listen = (
  group: GroupId,
  def: string,
  doc: string,
  show: (c: Config) => ListenAddress | null,
  example = def,
) =>
  setting({
    group,
    type: 'host:port',
    default: def,
    doc,
    parse: (f) => f.listen(example),
    show: (c) => maybe(show(c), formatHostPort),
  });

/** One of a few words; `def` is the default. */
const choice = <T extends string>(
  group: GroupId,
  choices: readonly T[],
  def: T,
  doc: string,
  show: (c: Config) => T,
) =>
  setting({
    group,
    type: choices.join(', '),
    default: def,
    doc,
    parse: (f) => f.oneOf(choices),
    show,
  });

/** MQTT's hard limit on a packet (the remaining-length field). */
const MQTT_MAX_PACKET = 268_435_455;
const MIN_DISK_QUOTA = 1024 * 1024;
const MIN_HEARTBEAT_MS = 1000;

/** In the order check-config lists them; the docs group them in this order too. */
export const SETTINGS = {
  KEDGE_DATA_DIR: setting({
    group: 'general',
    type: 'path',
    default: './data',
    serviceDefault: '/var/lib/kedge',
    doc: 'Where the event log lives (`kedge.db`, its WAL, `kedge.lock`). Under the service another folder also needs ReadWritePaths= in a drop-in (systemctl edit kedge).',
    parse: (f) => f.path(),
    show: (c) => c.dataDir,
  }),
  KEDGE_AGENT_ID: setting({
    group: 'general',
    type: 'id: 1-64 of A-Z a-z 0-9 . _ -',
    default: '',
    defaultDoc: 'generated once (`<hostname>-<8 hex>`), kept in the log',
    doc: 'First part of the `kedge-id` header (`<agent-id>:<seq>`) on every Kafka record. A new log (a data dir emptied, replaced or moved aside) counts seqs from 1 again: when this is set, give the new log a new id too, or its `kedge-id`s repeat ones Kafka already has and a consumer that drops repeats drops new events.',
    parse: (f) =>
      f.checked((v) =>
        /^[A-Za-z0-9._-]{1,64}$/.test(v)
          ? null
          : 'is not a valid agent id (expected 1-64 characters of A-Z, a-z, 0-9, ".", "_", "-")',
      ),
    show: (c) => opt(c.agentId),
  }),
  KEDGE_SYNC: choice(
    'general',
    ['full', 'normal'] as const,
    'full',
    '`full`: fsync before every acknowledgement (survives power loss). `normal`: survives a crash of kedge, not a power loss; faster on slow flash.',
    (c) => c.sync,
  ),
  KEDGE_STORAGE: choice(
    'general',
    ['sqlite', 'wasm'] as const,
    'sqlite',
    "`sqlite`: Node's built-in `node:sqlite` (embedded in the executable). `wasm`: node-sqlite3-wasm, for runtimes without `node:sqlite`; slower.",
    (c) => c.storage,
  ),
  KEDGE_LOG_LEVEL: choice(
    'general',
    ['debug', 'info', 'warn', 'error'] as const,
    'info',
    'The least severe level logged. Logs are JSON lines on stdout (the journal under systemd).',
    (c) => c.logLevel,
  ),

  KEDGE_HTTP_LISTEN: listen(
    'http',
    '127.0.0.1:8780',
    'Address of the HTTP ingest API (`[::1]:8780` for IPv6); empty disables HTTP. 0.0.0.0 accepts events from the network: then also set a token. A port below 1024 needs CAP_NET_BIND_SERVICE.',
    (c) => c.http.listen,
  ),
  KEDGE_HTTP_TOKEN: setting({
    group: 'http',
    type: 'printable ASCII, no spaces',
    default: '',
    secret: true,
    doc: 'If set, ingest and control calls need `Authorization: Bearer <token>`.',
    parse: (f) => {
      const token = f.secret();
      if (token !== null && !/^[\x21-\x7e]+$/.test(token))
        f.problem(
          `${f.name} contains spaces, control or non-ASCII characters (expected one word of printable ASCII; value not shown)`,
        );
      return token;
    },
    show: (c) => opt(c.http.token),
  }),
  KEDGE_HTTP_MAX_BODY: setting({
    group: 'http',
    type: 'size',
    default: '1MiB',
    doc: 'Largest request body accepted; larger ones get 413.',
    parse: (f) => f.size(1, Number.MAX_SAFE_INTEGER),
    show: (c) => exactBytes(c.http.maxBody),
  }),
  KEDGE_HTTP_TLS_CERT: file(
    'http',
    'Serve HTTPS: PEM certificate (chain), with KEDGE_HTTP_TLS_KEY (both or neither); readable by the kedge user.',
    (c) => c.http.tlsCert,
  ),
  KEDGE_HTTP_TLS_KEY: file('http', 'PEM private key of KEDGE_HTTP_TLS_CERT.', (c) => c.http.tlsKey),

  KEDGE_KAFKA_BROKERS: setting({
    group: 'kafka',
    type: 'list of host:port',
    default: 'localhost:9092',
    doc: 'Comma-separated bootstrap servers.',
    parse: (f) =>
      f
        .entries(
          (e) => parseHostPort(e, 'kafka1:9092'),
          'lists no brokers (expected host:port, comma-separated)',
        )
        .map(formatHostPort),
    show: (c) => c.kafka.brokers.join(','),
  }),
  KEDGE_DESTINATIONS: setting({
    group: 'kafka',
    type: 'list of names',
    default: '',
    defaultDoc: 'none: one destination, `kafka`, set by the KEDGE_KAFKA_* settings',
    doc: 'Several Kafka clusters, e.g. `site,cloud`: each name N takes KEDGE_N_KAFKA_BROKERS and may override any KEDGE_KAFKA_*, KEDGE_COMPRESSION, KEDGE_FORWARD_RATE or KEDGE_FORWARD_WINDOWS as KEDGE_N_…; KEDGE_ROUTE_<NAME> says what goes where.',
    parse: (f) => {
      const names = f.list();
      const seen = new Set<string>();
      for (const n of names) {
        if (!/^[a-z][a-z0-9_]*$/.test(n))
          f.bad(
            n,
            'is not a destination name (lower-case letters, digits and _, starting with a letter)',
          );
        else if (n === 'route')
          f.bad(n, 'is reserved (KEDGE_ROUTE_* are routes); pick another name');
        else if (seen.has(n)) f.bad(n, 'is listed twice');
        seen.add(n);
      }
      return names;
    },
    show: (c) => (c.destinations === null ? '' : c.destinations.map((d) => d.name).join(',')),
  }),
  KEDGE_KAFKA_TLS: setting({
    group: 'kafka',
    type: 'boolean',
    default: 'false',
    defaultDoc: '`false`; on when a CA file or client certificate is set',
    doc: 'TLS to Kafka (true/false, 1/0, yes/no, on/off).',
    parse: (f) => f.bool(),
    show: (c) => String(c.kafka.tls),
  }),
  KEDGE_KAFKA_CA_FILE: file(
    'kafka',
    "PEM file of the CA(s) that signed the brokers' certificates; turns TLS on.",
    (c) => c.kafka.caFile,
  ),
  KEDGE_KAFKA_CERT_FILE: file(
    'kafka',
    'Client certificate (PEM) for mutual TLS, with KEDGE_KAFKA_KEY_FILE; turns TLS on.',
    (c) => c.kafka.certFile,
  ),
  KEDGE_KAFKA_KEY_FILE: file(
    'kafka',
    'PEM private key of KEDGE_KAFKA_CERT_FILE.',
    (c) => c.kafka.keyFile,
  ),
  KEDGE_KAFKA_SASL_MECHANISM: setting({
    group: 'kafka',
    type: SASL_MECHANISMS.join(', '),
    default: '',
    defaultDoc: 'off',
    doc: 'SASL authentication, with KEDGE_KAFKA_USERNAME and KEDGE_KAFKA_PASSWORD.',
    parse: (f) => {
      if (f.text === undefined) return null;
      const mech = SASL_MECHANISMS.find((m) => m === f.value.toLowerCase());
      if (mech === undefined)
        f.bad(f.value, `is not supported (expected ${orList(SASL_MECHANISMS)})`);
      return mech ?? null;
    },
    show: (c) => c.kafka.sasl?.mechanism ?? '',
  }),
  KEDGE_KAFKA_USERNAME: setting({
    group: 'kafka',
    type: 'string',
    default: '',
    doc: 'SASL username.',
    parse: (f) => f.text ?? null,
    show: (c) => c.kafka.sasl?.username ?? '',
  }),
  KEDGE_KAFKA_PASSWORD: setting({
    group: 'kafka',
    type: 'string',
    default: '',
    secret: true,
    doc: 'SASL password.',
    parse: (f) => f.secret(),
    show: (c) => c.kafka.sasl?.password ?? '',
  }),
  KEDGE_KAFKA_CLIENT: choice(
    'kafka',
    KAFKA_CLIENTS,
    'platformatic',
    'The Kafka client library: `platformatic` (@platformatic/kafka, the default: less CPU per event) or `kafkajs`. Both are idempotent with acks=all, one request in flight and the Java partitioner, so a key lands in the same partition with either.',
    (c) => c.kafka.client,
  ),
  KEDGE_COMPRESSION: choice(
    'kafka',
    ['none', 'gzip', 'snappy', 'lz4', 'zstd'] as const,
    'zstd',
    'Compression of record batches; every codec works without native addons.',
    (c) => c.kafka.compression,
  ),
  KEDGE_TOPIC_PREFIX: setting({
    group: 'kafka',
    type: 'topic prefix',
    default: '',
    defaultDoc: 'empty',
    doc: 'Prepended to every Kafka topic name (e.g. `site42.`).',
    parse: (f) =>
      f.checked((v) =>
        /^[a-zA-Z0-9._-]{1,248}$/.test(v)
          ? null
          : 'is not a valid topic prefix (expected up to 248 characters of a-z, A-Z, 0-9, ".", "_", "-")',
      ) ?? '',
    show: (c) => c.kafka.topicPrefix,
  }),

  KEDGE_MQTT_URL: setting({
    group: 'mqtt',
    type: 'URL',
    default: '',
    doc: 'Client mode: subscribe to this broker (`mqtt://`, `mqtts://`, `ws://`, `wss://`), e.g. `mqtt://127.0.0.1:1883`. Unset: no MQTT client.',
    parse: (f) => {
      if (f.text === undefined) return null;
      const err = mqttUrlError(f.text);
      if (err !== null) f.problem(`${f.name} ${JSON.stringify(redactUrl(f.text))} ${err}`);
      return f.text;
    },
    show: (c) => opt(c.mqtt.url),
  }),
  KEDGE_MQTT_TOPICS: setting({
    group: 'mqtt',
    type: 'list of MQTT filters',
    default: '#',
    doc: 'Comma-separated MQTT topic filters to subscribe to (client mode).',
    parse: (f) =>
      f.entries(checkMqttFilter, 'lists no topic filters (expected e.g. sensors/#,plant/+/temp)'),
    show: (c) => c.mqtt.topics.join(','),
  }),
  KEDGE_MQTT_LISTEN: listen(
    'mqtt',
    '',
    'Embedded broker: accept MQTT 3.1.1 publishers directly on this address, e.g. `127.0.0.1:1883`. Unset: no listener.',
    (c) => c.mqtt.listen,
    '127.0.0.1:1883',
  ),
  KEDGE_MQTT_USERNAME: setting({
    group: 'mqtt',
    type: 'string',
    default: '',
    doc: 'Client mode: the username kedge presents. Embedded broker: the username publishers must present.',
    parse: (f) => f.text ?? null,
    show: (c) => opt(c.mqtt.username),
  }),
  KEDGE_MQTT_PASSWORD: setting({
    group: 'mqtt',
    type: 'string',
    default: '',
    secret: true,
    doc: 'The password that goes with KEDGE_MQTT_USERNAME.',
    parse: (f) => f.secret(),
    show: (c) => opt(c.mqtt.password),
  }),
  KEDGE_MQTT_KAFKA_TOPIC: setting({
    group: 'mqtt',
    type: 'Kafka topic',
    default: '',
    doc: 'Send every MQTT message to this one Kafka topic (the MQTT topic becomes the key). Unset: the MQTT topic with "/" turned into "." is the Kafka topic.',
    parse: (f) => f.checked((v) => topicError(v)),
    show: (c) => opt(c.mqtt.kafkaTopic),
  }),
  KEDGE_MQTT_MAX_PAYLOAD: setting({
    group: 'mqtt',
    type: 'size',
    default: '256KiB',
    doc: 'Larger MQTT payloads are refused and counted.',
    parse: (f) => f.size(1, MQTT_MAX_PACKET),
    show: (c) => exactBytes(c.mqtt.maxPayload),
  }),
  KEDGE_MQTT_RETAINED: choice(
    'mqtt',
    ['skip', 'ingest'] as const,
    'skip',
    '`skip`: ignore retained messages replayed on subscribe. `ingest`: store them too.',
    (c) => c.mqtt.retained,
  ),
  KEDGE_MQTT_TLS_CERT: file(
    'mqtt',
    'TLS for the embedded broker: PEM certificate (chain), with KEDGE_MQTT_TLS_KEY (both or neither).',
    (c) => c.mqtt.tlsCert,
  ),
  KEDGE_MQTT_TLS_KEY: file('mqtt', 'PEM private key of KEDGE_MQTT_TLS_CERT.', (c) => c.mqtt.tlsKey),

  KEDGE_FORWARD_RATE: setting({
    group: 'link',
    type: 'rate, or unlimited',
    default: 'unlimited',
    doc: 'Cap on the bytes put on the wire to Kafka, e.g. `64KiB/s`, `1MB/s`.',
    parse: (f) => {
      if (f.value.toLowerCase() === 'unlimited') return null;
      const parsed = parseRate(f.value);
      if (!parsed.ok) f.bad(f.value, parsed.error.replace(/\)$/, ', or unlimited)'));
      return parsed.ok ? parsed.value : null;
    },
    show: (c) => (c.forward.rate === null ? 'unlimited' : formatRate(c.forward.rate)),
  }),
  KEDGE_FORWARD_WINDOWS: setting({
    group: 'link',
    type: 'list of HH:MM-HH:MM, or always',
    default: 'always',
    doc: 'Local-time windows when topics other than the priority ones are forwarded, e.g. `22:00-06:00,12:00-12:30`.',
    parse: (f) => {
      if (f.value.toLowerCase() === 'always') return [];
      if (splitList(f.value).length === 0)
        f.bad(f.value, 'lists no windows (expected e.g. 22:00-06:00,12:00-12:30 or always)');
      return f.entries(parseWindow);
    },
    show: (c) =>
      c.forward.windows.length === 0 ? 'always' : c.forward.windows.map(formatWindow).join(','),
  }),
  KEDGE_PRIORITY_TOPICS: setting({
    group: 'link',
    type: 'list of Kafka topics',
    default: '',
    defaultDoc: 'none',
    doc: 'Comma-separated topics (without KEDGE_TOPIC_PREFIX) forwarded before any backlog, and also outside the windows.',
    parse: (f) => f.entries(checkTopic),
    show: (c) => c.forward.priorityTopics.join(','),
  }),

  KEDGE_DISK_QUOTA: setting({
    group: 'retention',
    type: 'size, at least 1MiB',
    default: '1GiB',
    doc: 'Most disk the log may use: `kedge.db`, its WAL and `kedge.reserve`.',
    parse: (f) => f.size(MIN_DISK_QUOTA, Number.MAX_SAFE_INTEGER),
    show: (c) => exactBytes(c.retention.diskQuota),
  }),
  KEDGE_RETENTION: setting({
    group: 'retention',
    type: 'duration, or unlimited',
    default: 'unlimited',
    doc: 'Unforwarded events older than this are dropped (counted and logged), e.g. `7d`.',
    parse: (f) => {
      if (f.value.toLowerCase() === 'unlimited') return null;
      const parsed = parseDuration(f.value);
      if (!parsed.ok) f.bad(f.value, parsed.error.replace(/\)$/, '; or unlimited)'));
      else if (parsed.value <= 0)
        f.bad(f.value, 'is zero (expected e.g. 7d, or unlimited to keep events until forwarded)');
      return parsed.ok ? parsed.value : null;
    },
    show: (c) => (c.retention.maxAge === null ? 'unlimited' : formatDuration(c.retention.maxAge)),
  }),
  KEDGE_WHEN_FULL: choice(
    'retention',
    ['drop-oldest', 'reject-new'] as const,
    'drop-oldest',
    'At the quota: `drop-oldest` drops the oldest unforwarded events (counted and logged); `reject-new` refuses new ones (HTTP 507, MQTT publishers get no PUBACK).',
    (c) => c.retention.whenFull,
  ),

  KEDGE_HEARTBEAT_TOPIC: setting({
    group: 'heartbeat',
    type: 'Kafka topic',
    default: 'kedge.heartbeat',
    doc: 'Kafka topic of the fleet heartbeat record (KEDGE_TOPIC_PREFIX applies); empty disables the heartbeat.',
    parse: (f) => {
      const topic = f.offWhenEmpty();
      const err = topic === null ? null : topicError(topic, '; empty disables the heartbeat');
      if (topic !== null && err !== null) f.bad(topic, err);
      return topic;
    },
    show: (c) => opt(c.heartbeat.topic),
  }),
  KEDGE_HEARTBEAT_INTERVAL: setting({
    group: 'heartbeat',
    type: 'duration, at least 1s',
    default: '60s',
    doc: 'How often the heartbeat record is sent.',
    parse: (f) => f.duration(MIN_HEARTBEAT_MS),
    show: (c) => formatDuration(c.heartbeat.intervalMs),
  }),
};

export type EnvVarName = keyof typeof SETTINGS;

/** What each setting parses to. */
export type SettingValues = {
  [K in EnvVarName]: ReturnType<(typeof SETTINGS)[K]['parse']>;
};

/** Every variable kedge reads, in the order check-config lists them. */
export const ENV_VARS = Object.keys(SETTINGS) as EnvVarName[];

export function settingOf(name: EnvVarName): Setting<unknown> {
  return SETTINGS[name];
}

/** Variables whose values never appear in output, problems included. */
export const SECRET_VARS: readonly EnvVarName[] = ENV_VARS.filter((n) => settingOf(n).secret);

/** A value as kedge may show it: secrets hidden, credentials in URLs hidden. */
export function shownValue(name: EnvVarName, value: string): string {
  if (settingOf(name).secret) return value === '' ? '' : REDACTED;
  return redactIfUrl(value);
}
