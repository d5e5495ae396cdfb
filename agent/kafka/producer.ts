/**
 * The Kafka side of the forwarder: one idempotent kafkajs producer
 * (acks=all, one request in flight, so order per partition holds on retries).
 */
import type { Config } from '../config.ts';
import type { Logger } from '../observe/logger.ts';
import { readFileSync } from 'node:fs';
import type { ISocketFactory, Kafka, Producer, Message, SASLOptions } from 'kafkajs';
// kafkajs is CommonJS: a default import works in Node ESM and bundles with esbuild.
import kafkajs from 'kafkajs';

export interface OutRecord {
  topic: string;
  key: Buffer | null;
  value: Buffer;
  timestamp: number;
  headers: Record<string, string>;
}

/** The forwarder only needs this; tests of the loop can run it against any implementation. */
export interface RecordSink {
  connect(): Promise<void>;
  send(records: OutRecord[]): Promise<void>;
  disconnect(): Promise<void>;
}

export interface KafkaSinkOptions {
  kafka: Config['kafka'];
  clientId: string;
  compression: number;
  requestTimeoutMs: number;
  logger: Logger;
  /** Opens the broker connections (WireMeter.socketFactory() counts wire bytes); default: kafkajs' own. */
  socketFactory?: ISocketFactory;
}

/**
 * Refusals that may heal by themselves, so they get a grace period per topic before
 * they count as permanent: a topic not created yet (auto-creation racing, an operator
 * about to create it), an ACL not yet propagated to every broker.
 */
export const GRACE_ERRORS: ReadonlySet<string> = new Set([
  'UNKNOWN_TOPIC_OR_PARTITION',
  'TOPIC_AUTHORIZATION_FAILED',
]);

/** One link of an error's `cause` chain, as kafkajs and Node build them. */
export interface ErrorLink {
  type?: unknown;
  name?: unknown;
  message?: unknown;
  cause?: unknown;
  errors?: unknown;
}

/** `e`, its cause, the cause's cause…, at most `depth` links. */
export function* causeChain(e: unknown, depth = 8): Generator<ErrorLink> {
  let cur = e as ErrorLink | null | undefined;
  for (let i = 0; cur && i < depth; cur = cur.cause as ErrorLink | null | undefined, i++) yield cur;
}

/** The first GRACE_ERRORS type in a kafkajs error chain, or null. */
export function graceReason(e: unknown): string | null {
  for (const type of errorTypes(e)) if (GRACE_ERRORS.has(type)) return type;
  return null;
}

/** A refusal that retrying will not fix (record too large, invalid topic). */
export function permanentReason(e: unknown): string | null {
  const PERMANENT = new Set([
    'MESSAGE_TOO_LARGE',
    'RECORD_LIST_TOO_LARGE',
    'INVALID_TOPIC_EXCEPTION',
    'INVALID_RECORD',
    'CORRUPT_MESSAGE',
    'INVALID_REQUIRED_ACKS',
    'POLICY_VIOLATION',
    'UNSUPPORTED_FOR_MESSAGE_FORMAT',
  ]);
  for (const cur of causeChain(e)) {
    if (typeof cur.type === 'string' && PERMANENT.has(cur.type)) return cur.type;
    if (Array.isArray(cur.errors))
      for (const sub of cur.errors) {
        const r = permanentReason(sub);
        if (r) return r;
      }
  }
  return null;
}

/** Every Kafka error type (e.g. UNKNOWN_TOPIC_OR_PARTITION) anywhere in a kafkajs error chain. */
export function errorTypes(e: unknown, out = new Set<string>(), depth = 0): Set<string> {
  const cur = e as { type?: unknown; cause?: unknown; errors?: unknown } | null;
  if (!cur || depth > 8) return out;
  if (typeof cur.type === 'string') out.add(cur.type);
  if (Array.isArray(cur.errors)) for (const sub of cur.errors) errorTypes(sub, out, depth + 1);
  return errorTypes(cur.cause, out, depth + 1);
}

/**
 * The kafkajs error chain for status and logs, led by what an operator should check when
 * the cause is a TLS or SASL failure (those never heal by retrying).
 */
export function describeKafkaError(e: unknown): string {
  const parts: string[] = [];
  const seen = new Set<string>();
  for (const cur of causeChain(e, 6)) {
    // Node suggests a Node flag for untrusted certificates; the fix for kedge is KEDGE_KAFKA_CA_FILE.
    const msg = String(cur.message ?? String(cur)).replace(
      /; if the root CA is installed locally, try running Node\.js with --use-system-ca/,
      '',
    );
    if (seen.has(msg)) continue;
    seen.add(msg);
    parts.push(`${cur.type ?? cur.name ?? 'Error'}: ${msg}`);
  }
  const hint = securityHint(e);
  return (hint ? `${hint} [${parts.join(' <- ')}]` : parts.join(' <- ')).slice(0, 600);
}

const TLS_HINTS: [RegExp, string][] = [
  [
    /UNABLE_TO_VERIFY|SELF_SIGNED|UNABLE_TO_GET_ISSUER|CERT_UNTRUSTED|unable to verify|self[- ]signed certificate|unable to get (local )?issuer/i,
    "TLS certificate error: Kafka's certificate is not signed by a CA kedge trusts (check KEDGE_KAFKA_CA_FILE)",
  ],
  [
    /ALTNAME|does not match certificate|Hostname\/IP does not match/i,
    "TLS certificate error: Kafka's certificate does not name the address in KEDGE_KAFKA_BROKERS (use a name or IP the certificate lists)",
  ],
  [
    /CERT_HAS_EXPIRED|CERT_NOT_YET_VALID|certificate has expired|certificate is not yet valid/i,
    "TLS certificate error: Kafka's certificate has expired or is not valid yet",
  ],
  [
    /alert (bad certificate|certificate unknown|certificate required|unknown ca|certificate expired)|ALERT_(BAD_CERTIFICATE|CERTIFICATE_UNKNOWN|CERTIFICATE_REQUIRED|UNKNOWN_CA|CERTIFICATE_EXPIRED)/i,
    "TLS certificate error: Kafka refused kedge's client certificate (check KEDGE_KAFKA_CERT_FILE and KEDGE_KAFKA_KEY_FILE, and that Kafka trusts their CA)",
  ],
  [
    /WRONG_VERSION_NUMBER|wrong version number|packet length too long|unknown protocol/i,
    'TLS error: the broker port does not speak TLS (point KEDGE_KAFKA_BROKERS at the TLS listener, or set KEDGE_KAFKA_TLS=false)',
  ],
];

/** One line naming the thing to fix, for TLS and SASL failures anywhere in a kafkajs error chain; null otherwise. */
export function securityHint(e: unknown, depth = 0): string | null {
  const cur = e as {
    name?: unknown;
    type?: unknown;
    code?: unknown;
    message?: unknown;
    cause?: unknown;
    errors?: unknown;
  } | null;
  if (!cur || typeof cur !== 'object' || depth > 8) return null;
  if (cur.type === 'UNSUPPORTED_SASL_MECHANISM') {
    return 'authentication failed: Kafka does not offer KEDGE_KAFKA_SASL_MECHANISM on this listener (check the mechanism and KEDGE_KAFKA_BROKERS)';
  }
  if (cur.name === 'KafkaJSSASLAuthenticationError' || cur.type === 'SASL_AUTHENTICATION_FAILED') {
    return 'authentication failed: Kafka refused the SASL username or password (check KEDGE_KAFKA_USERNAME, KEDGE_KAFKA_PASSWORD and KEDGE_KAFKA_SASL_MECHANISM)';
  }
  const text = `${String(cur.code ?? '')} ${String(cur.message ?? '')}`;
  for (const [re, hint] of TLS_HINTS) if (re.test(text)) return hint;
  if (Array.isArray(cur.errors)) {
    for (const sub of cur.errors) {
      const h = securityHint(sub, depth + 1);
      if (h) return h;
    }
  }
  return securityHint(cur.cause, depth + 1);
}

export class KafkaSink implements RecordSink {
  private readonly kafka: Kafka;
  private producer: Producer | null = null;
  private readonly opts: KafkaSinkOptions;

  constructor(opts: KafkaSinkOptions) {
    this.opts = opts;
    const k = opts.kafka;
    const log = opts.logger.child({ component: 'kafkajs' });
    let ssl: boolean | { ca?: Buffer; cert?: Buffer; key?: Buffer } = false;
    if (k.tls) {
      ssl = {};
      if (k.caFile) ssl.ca = readFileSync(k.caFile);
      if (k.certFile) ssl.cert = readFileSync(k.certFile);
      if (k.keyFile) ssl.key = readFileSync(k.keyFile);
    }
    this.kafka = new kafkajs.Kafka({
      clientId: opts.clientId,
      brokers: k.brokers,
      ssl,
      ...(opts.socketFactory ? { socketFactory: opts.socketFactory } : {}),
      sasl: k.sasl
        ? ({
            mechanism: k.sasl.mechanism,
            username: k.sasl.username,
            password: k.sasl.password,
          } as SASLOptions)
        : undefined,
      connectionTimeout: 5000,
      authenticationTimeout: 5000,
      requestTimeout: opts.requestTimeoutMs,
      // The forwarder retries for ever with its own backoff; kafkajs only rides out short blips.
      retry: { retries: 3, initialRetryTime: 200, maxRetryTime: 2000 },
      // kafkajs logs every reconnect at error level; the forwarder logs state changes itself.
      logCreator:
        () =>
        ({ level, log: entry }) => {
          const msg = `${entry.message}`;
          if (level <= 2)
            log.debug({ kafkajs: entry.namespace, detail: entry.log?.error ?? undefined }, msg);
        },
    });
  }

  async connect(): Promise<void> {
    if (this.producer) return;
    const p = this.kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: true,
      createPartitioner: kafkajs.Partitioners.DefaultPartitioner,
      retry: { retries: 3, initialRetryTime: 200, maxRetryTime: 2000 },
    });
    try {
      await p.connect();
    } catch (e) {
      await p.disconnect().catch(() => {});
      throw e;
    }
    this.producer = p;
  }

  async send(records: OutRecord[]): Promise<void> {
    if (!this.producer) await this.connect();
    const byTopic = new Map<string, Message[]>();
    for (const r of records) {
      let list = byTopic.get(r.topic);
      if (!list) byTopic.set(r.topic, (list = []));
      list.push({ key: r.key, value: r.value, timestamp: String(r.timestamp), headers: r.headers });
    }
    await this.producer!.sendBatch({
      acks: -1,
      timeout: this.opts.requestTimeoutMs,
      compression: this.opts.compression,
      topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })),
    });
  }

  /** Drops the producer; the next send makes a new one (fresh producer id and sequence numbers). */
  async disconnect(): Promise<void> {
    const p = this.producer;
    this.producer = null;
    if (p) await p.disconnect().catch(() => {});
  }
}
