/**
 * The producer interface over @platformatic/kafka (KEDGE_KAFKA_CLIENT=platformatic):
 * the same guarantees as the kafkajs producer in producer.ts, with less CPU per event.
 *
 * - Idempotent, acks=all, one request in flight per connection: `idempotent: true`
 *   makes the client force `maxInflights: 1` and acks=all; kedge sends one batch at
 *   a time on top of that. Neither JS client keeps per-key order with more in flight.
 * - Retries: a few quick ones inside the client (`retries: 3`; with idempotence its
 *   default would be to retry for ever), then the forwarder's own backoff, deadline
 *   and fresh producer take over, exactly as with kafkajs. A retry inside the client
 *   resends the same sequence numbers, so the broker drops a duplicate.
 * - Partitioner: the client's default hashes keys differently from Java's; its
 *   `compatibilityPartitioner` is Java's murmur2 (what kafkajs' DefaultPartitioner
 *   and librdkafka's murmur2_random use), so a key lands in the same partition with
 *   either client. Records without a key go round-robin, as with kafkajs.
 * - Compression: the client's own codecs (zstd and gzip from Node's zlib, snappy and
 *   LZ4 frames from its bundled WebAssembly module); test/codecs.test.ts reads every
 *   one back byte-exact with kcat and checks the codec in the broker's segments.
 * - Wire bytes: the client has no socket factory; every connection's socket is handed
 *   to the WireMeter when the connection is up (bytesWritten is cumulative, so the
 *   TLS and SASL handshakes count too), and a connection that failed is counted too.
 * - Errors are the client's (`ProtocolError.apiId`, `TimeoutError`, `MultipleErrors`);
 *   classify.ts reads them beside kafkajs' ones.
 */
import { readFileSync } from 'node:fs';
import { isIP, type Socket } from 'node:net';
import type { ConnectionOptions as TlsOptions } from 'node:tls';
import {
  compatibilityPartitioner,
  type MessageToProduce,
  Producer,
  ProduceAcks,
  type SASLOptions,
  stringSerializer,
} from '@platformatic/kafka';
import type { KafkaSinkOptions, OutRecord, RecordSink } from './record-sink.ts';

type Message = MessageToProduce<Buffer, Buffer, string, string>;
type KedgeProducer = Producer<Buffer, Buffer, string, string>;

const SASL: Record<string, SASLOptions['mechanism']> = {
  plain: 'PLAIN',
  'scram-sha-256': 'SCRAM-SHA-256',
  'scram-sha-512': 'SCRAM-SHA-512',
};

/**
 * Whether to name the broker in TLS SNI. The client sends no SNI unless told to, and a
 * Kafka behind an SNI-routing proxy (most hosted services) then cannot route the
 * connection; kafkajs names the host by default. `tlsServerName: true` names each
 * connection's host, so it is set only when the bootstrap brokers are names: an address
 * must not be sent in SNI (RFC 6066), and Node warns when it is.
 */
function sniByName(brokers: readonly string[]): boolean {
  return brokers.every((b) => isIP(b.replace(/:\d+$/, '').replace(/^\[|\]$/g, '')) === 0);
}

/** The events the client emits for its broker connections. */
interface ConnectionEvent {
  broker?: { host: string; port: number };
  connection?: {
    socket?: Socket;
    on?(event: 'error', listener: (e: Error) => void): unknown;
  };
}

export class PlatformaticSink implements RecordSink {
  private readonly opts: KafkaSinkOptions;
  private producer: KedgeProducer | null = null;
  /** Round-robin counter for records without a key. */
  private next = 0;
  /**
   * The last error a broker connection reported since the operation in flight began. The
   * client fails the requests of a connection that broke with a bare "Connection closed";
   * the reason (a TLS alert: Kafka refused the client certificate) is only in the
   * connection's own error event, so it is added to the operation's error here.
   */
  private connectionError: Error | null = null;

  constructor(opts: KafkaSinkOptions) {
    this.opts = opts;
  }

  private make(): KedgeProducer {
    const { opts } = this;
    const k = opts.kafka;
    let tls: TlsOptions | undefined;
    if (k.tls) {
      tls = {};
      if (k.caFile) tls.ca = readFileSync(k.caFile);
      if (k.certFile) tls.cert = readFileSync(k.certFile);
      if (k.keyFile) tls.key = readFileSync(k.keyFile);
    }
    const p: KedgeProducer = new Producer<Buffer, Buffer, string, string>({
      clientId: opts.clientId,
      bootstrapBrokers: k.brokers,
      idempotent: true,
      acks: ProduceAcks.ALL,
      maxInflights: 1,
      // The forwarder retries for ever with its own backoff; the client only rides out short blips.
      retries: 3,
      retryDelay: (_client, _op, attempt) => Math.min(2_000, 200 * 2 ** (attempt - 1)),
      connectTimeout: 5_000,
      // `timeout` is what the broker may take (Produce's timeout field), `requestTimeout`
      // how long the client waits for any answer on a connection.
      timeout: opts.requestTimeoutMs,
      requestTimeout: opts.requestTimeoutMs,
      autocreateTopics: true,
      compression: k.compression,
      partitioner: (message, key) =>
        key ? compatibilityPartitioner(message, key) : this.next++ & 0x7fffffff,
      serializers: { headerKey: stringSerializer, headerValue: stringSerializer },
      ...(tls ? { tls, ...(sniByName(k.brokers) ? { tlsServerName: true } : {}) } : {}),
      ...(k.sasl
        ? {
            sasl: {
              mechanism: SASL[k.sasl.mechanism],
              username: k.sasl.username,
              password: k.sasl.password,
            },
          }
        : {}),
    });
    const wire = opts.wire;
    const watch = (e: ConnectionEvent, up: boolean) => {
      const s = e?.connection?.socket;
      if (s && wire) wire.watch(s);
      if (up) e?.connection?.on?.('error', (err) => (this.connectionError = err));
    };
    // Connections at debug level, as kafkajs logs them: what an operator chasing a
    // flapping link wants to see (never the SASL exchange, which carries the secret).
    const log = opts.logger.child({ component: 'platformatic-kafka' });
    const broker = (e: ConnectionEvent) => (e?.broker ? `${e.broker.host}:${e.broker.port}` : null);
    p.on('client:broker:connect', (e: ConnectionEvent) => {
      watch(e, true);
      log.debug({ broker: broker(e) }, 'kafka connection open');
    });
    p.on('client:broker:failed', (e: ConnectionEvent) => {
      watch(e, false);
      log.debug({ broker: broker(e) }, 'kafka connection failed');
    });
    p.on('client:broker:disconnect', (e: ConnectionEvent) =>
      log.debug({ broker: broker(e) }, 'kafka connection closed'),
    );
    return p;
  }

  async connect(): Promise<void> {
    if (this.producer) return;
    const p = this.make();
    this.connectionError = null;
    try {
      // Bootstrap connection, cluster metadata and a producer id: what kafkajs' connect() does.
      await p.initIdempotentProducer({});
    } catch (e) {
      await p.close(true).catch(() => {});
      throw this.explained(e);
    }
    this.producer = p;
  }

  async send(records: OutRecord[]): Promise<void> {
    if (!this.producer) await this.connect();
    const messages: Message[] = new Array(records.length);
    for (let i = 0; i < records.length; i++) {
      const r = records[i];
      messages[i] = {
        topic: r.topic,
        key: r.key ?? undefined,
        value: r.value,
        timestamp: BigInt(r.timestamp),
        headers: r.headers,
      };
    }
    this.connectionError = null;
    try {
      await this.producer!.send({ messages });
    } catch (e) {
      throw this.explained(e);
    }
  }

  /** `e`, with the connection error behind it if one came up meanwhile (classify.ts reads both). */
  private explained(e: unknown): unknown {
    const cause = this.connectionError;
    this.connectionError = null;
    if (!cause) return e;
    return new AggregateError([e, cause], e instanceof Error ? e.message : String(e));
  }

  /** Drops the producer; the next send makes a new one (fresh producer id and sequence numbers). */
  async disconnect(): Promise<void> {
    const p = this.producer;
    this.producer = null;
    if (p) await p.close(true).catch(() => {});
  }
}
