// A real Kafka broker with TLS, mutual TLS and SASL (PLAIN, SCRAM-SHA-256/512) listeners, the
// kedge env for each way in, and readers that log in the same way to read back: kafkajs, and
// the Kafka distribution's own console consumer (independent of kedge's code).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kafka, logLevel, type KafkaConfig, type SASLOptions } from 'kafkajs';
import {
  ensureKafkaToolsJars,
  type SECURE_LISTENERS,
  startKafka,
  type KafkaCluster,
  type ScramUser,
} from '../../scripts/kafka/kafka.ts';
import type { TestCerts } from './certs.ts';
import { kafkaCompression } from '../../agent/kafka/codecs.ts';

export type SaslMech = 'plain' | 'scram-sha-256' | 'scram-sha-512';

/** One way to reach the broker: which listener, which trust anchor, which client identity. */
export interface Access {
  listener: (typeof SECURE_LISTENERS)[keyof typeof SECURE_LISTENERS];
  caFile: string;
  /** Client certificate and key (mutual TLS). */
  cert?: { certFile: string; keyFile: string };
  sasl?: { mechanism: SaslMech; username: string; password: string };
}

export interface SecureKafkaUsers {
  plain?: Record<string, string>;
  scram?: ScramUser[];
}

/** One broker: PLAINTEXT (harness), SSL, MTLS (client certificate required) and SASL_SSL. */
export function startSecureKafka(certs: TestCerts, users: SecureKafkaUsers): Promise<KafkaCluster> {
  return startKafka({
    security: {
      tls: { certFile: certs.serverCertFile, keyFile: certs.serverKeyFile, caFile: certs.caFile },
      plainUsers: users.plain,
      scramUsers: users.scram,
    },
  });
}

/** The KEDGE_KAFKA_* variables an operator writes for this access. */
export function kedgeKafkaEnv(cluster: KafkaCluster, a: Access): Record<string, string> {
  const env: Record<string, string> = {
    KEDGE_KAFKA_BROKERS: cluster.bootstrapFor(a.listener),
    KEDGE_KAFKA_TLS: 'true',
    KEDGE_KAFKA_CA_FILE: a.caFile,
  };
  if (a.cert) {
    env.KEDGE_KAFKA_CERT_FILE = a.cert.certFile;
    env.KEDGE_KAFKA_KEY_FILE = a.cert.keyFile;
  }
  if (a.sasl) {
    env.KEDGE_KAFKA_SASL_MECHANISM = a.sasl.mechanism;
    env.KEDGE_KAFKA_USERNAME = a.sasl.username;
    env.KEDGE_KAFKA_PASSWORD = a.sasl.password;
  }
  return env;
}

/** The same access as a kafkajs client config. */
export function kafkajsConfig(cluster: KafkaCluster, a: Access): KafkaConfig {
  return {
    clientId: 'kedge-test-reader',
    brokers: cluster.bootstrapFor(a.listener).split(','),
    logLevel: logLevel.NOTHING,
    ssl: {
      ca: readFileSync(a.caFile),
      ...(a.cert ? { cert: readFileSync(a.cert.certFile), key: readFileSync(a.cert.keyFile) } : {}),
    },
    sasl: a.sasl as SASLOptions | undefined,
    connectionTimeout: 5_000,
    retry: { retries: 5, initialRetryTime: 200 },
  };
}

export interface ReadRecord {
  key: string | null;
  value: string;
  headers: Record<string, string>;
  partition: number;
  offset: string;
}

/**
 * Reads `topic` from the beginning with a fresh consumer group until `n` records are there
 * or `timeoutMs` passes (then resolves with what it has).
 */
export async function readTopic(
  config: KafkaConfig,
  topic: string,
  n: number,
  timeoutMs: number,
): Promise<ReadRecord[]> {
  // kafkajs decodes only gzip by itself; kedge sends zstd by default. Registering kedge's
  // codecs (kafkajs keeps them as module state) lets this consumer read every batch.
  for (const c of ['snappy', 'lz4', 'zstd'] as const) kafkaCompression(c);
  const deadline = Date.now() + timeoutMs;
  // Subscribing to a topic that does not exist yet makes kafkajs fail outside any promise we hold.
  if (!(await waitTopic(config, topic, deadline))) return [];
  const consumer = new Kafka(config).consumer({
    groupId: `kedge-test-${topic}-${Date.now()}-${Math.random().toString(36).slice(2)}`,
  });
  const got: ReadRecord[] = [];
  let done: () => void = () => {};
  const enough = new Promise<void>((r) => (done = r));
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ message, partition }) => {
        const headers: Record<string, string> = {};
        for (const [k, v] of Object.entries(message.headers ?? {})) headers[k] = String(v);
        got.push({
          key: message.key?.toString() ?? null,
          value: message.value?.toString() ?? '',
          headers,
          partition,
          offset: message.offset,
        });
        if (got.length >= n) done();
      },
    });
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      enough,
      new Promise<void>((r) => (timer = setTimeout(r, Math.max(0, deadline - Date.now())))),
    ]);
    clearTimeout(timer);
  } finally {
    await consumer.disconnect().catch(() => {});
  }
  return got;
}

/** True once `topic` exists with a leader for every partition; false if `deadline` passes first. */
async function waitTopic(config: KafkaConfig, topic: string, deadline: number): Promise<boolean> {
  const admin = new Kafka(config).admin();
  await admin.connect();
  try {
    for (;;) {
      try {
        const md = await admin.fetchTopicMetadata({ topics: [topic] });
        const parts = md.topics[0]?.partitions ?? [];
        if (parts.length > 0 && parts.every((p) => p.leader >= 0)) return true;
      } catch {
        /* not there yet */
      }
      if (Date.now() >= deadline) return false;
      await new Promise((r) => setTimeout(r, 250));
    }
  } finally {
    await admin.disconnect().catch(() => {});
  }
}

const JAAS_MODULE: Record<SaslMech, string> = {
  plain: 'org.apache.kafka.common.security.plain.PlainLoginModule',
  'scram-sha-256': 'org.apache.kafka.common.security.scram.ScramLoginModule',
  'scram-sha-512': 'org.apache.kafka.common.security.scram.ScramLoginModule',
};

/**
 * Reads `topic` from the beginning with the Kafka distribution's own console consumer (Java,
 * from the Maven jars of scripts/kafka/tools-pom.xml), logging in as `a` does: an independent
 * client that shares no code with kedge (neither its codecs nor its clients), and that speaks
 * TLS and SCRAM, which Debian's kcat cannot with Kafka 4. Stops at `n` records or `timeoutMs`.
 */
export async function consoleConsume(
  cluster: KafkaCluster,
  a: Access,
  topic: string,
  n: number,
  timeoutMs: number,
): Promise<ReadRecord[]> {
  const tools = await ensureKafkaToolsJars();
  const dir = mkdtempSync(join(tmpdir(), 'kedge-console-'));
  try {
    const props = [
      `security.protocol=${a.sasl ? 'SASL_SSL' : 'SSL'}`,
      'ssl.truststore.type=PEM',
      `ssl.truststore.location=${a.caFile}`,
    ];
    if (a.cert) {
      // A PEM key store is one file: the private key, then the certificate.
      const store = join(dir, 'client.pem');
      writeFileSync(
        store,
        readFileSync(a.cert.keyFile, 'utf8') + '\n' + readFileSync(a.cert.certFile, 'utf8'),
      );
      props.push('ssl.keystore.type=PEM', `ssl.keystore.location=${store}`);
    }
    if (a.sasl) {
      const q = (s: string) => JSON.stringify(s);
      props.push(
        `sasl.mechanism=${a.sasl.mechanism.toUpperCase()}`,
        `sasl.jaas.config=${JAAS_MODULE[a.sasl.mechanism]} required username=${q(a.sasl.username)} password=${q(a.sasl.password)};`,
      );
    }
    const config = join(dir, 'client.properties');
    writeFileSync(config, props.join('\n') + '\n');
    const res = spawnSync(
      'java',
      [
        '-cp',
        `${tools}/*`,
        'org.apache.kafka.tools.consumer.ConsoleConsumer',
        '--bootstrap-server',
        cluster.bootstrapFor(a.listener),
        '--topic',
        topic,
        '--from-beginning',
        '--max-messages',
        String(n),
        '--timeout-ms',
        String(timeoutMs),
        '--command-config',
        config,
        '--formatter-property',
        'print.headers=true',
        '--formatter-property',
        'print.key=true',
        '--formatter-property',
        'key.separator=\t',
        '--formatter-property',
        'headers.separator=,',
        '--formatter-property',
        'headers.key.separator=:',
      ],
      { encoding: 'utf8', timeout: timeoutMs + 30_000, maxBuffer: 64 * 1024 * 1024 },
    );
    if (res.error) throw res.error;
    // It exits non-zero when --timeout-ms ends the read early: the records read so far count.
    // Records are `headers<TAB>key<TAB>value`; the tool may print notices on stdout too.
    const lines = res.stdout.split('\n').filter((l) => l.includes('\t'));
    if (lines.length === 0 && res.status !== 0)
      throw new Error(`console consumer failed (${res.status}): ${res.stderr.slice(-2000)}`);
    return lines.map((line, offset) => {
      const [h, key, ...rest] = line.split('\t');
      const headers: Record<string, string> = {};
      if (h !== 'NO_HEADERS')
        for (const kv of h.split(',')) {
          const i = kv.indexOf(':');
          headers[kv.slice(0, i)] = kv.slice(i + 1);
        }
      return {
        key: key === 'null' ? null : key,
        value: rest.join('\t'),
        headers,
        partition: -1,
        offset: String(offset),
      };
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
