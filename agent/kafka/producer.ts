/**
 * The Kafka side of the forwarder: the producer interface (`RecordSink`) and its
 * kafkajs implementation. Every client behind it is idempotent with acks=all, one
 * request in flight (so order per partition holds on retries) and the Java client's
 * murmur2 partitioner (so a key lands in the same partition whichever client sent
 * it). `createRecordSink` picks the client (KEDGE_KAFKA_CLIENT); @platformatic/kafka
 * is in platformatic.ts, loaded only when chosen.
 */
import type { KafkaClientName } from '../config.ts';
import { readFileSync } from 'node:fs';
import type { Kafka, Producer, Message, SASLOptions } from 'kafkajs';
// kafkajs is CommonJS: a default import works in Node ESM and bundles with esbuild.
import kafkajs from 'kafkajs';
import { kafkaCompression } from './codecs.ts';
import type { KafkaSinkOptions, OutRecord, RecordSink } from './record-sink.ts';

export type { KafkaSinkOptions, OutRecord, RecordSink } from './record-sink.ts';

/** The producer of the configured client (`opts.kafka.client`). */
export async function createRecordSink(opts: KafkaSinkOptions): Promise<RecordSink> {
  const client: KafkaClientName = opts.kafka.client;
  if (client === 'platformatic') {
    const { PlatformaticSink } = await import('./platformatic.ts');
    return new PlatformaticSink(opts);
  }
  return new KafkaSink(opts);
}

/** The kafkajs producer. */
export class KafkaSink implements RecordSink {
  private readonly kafka: Kafka;
  private producer: Producer | null = null;
  private readonly opts: KafkaSinkOptions;
  /** kafkajs' codec id of KEDGE_COMPRESSION (its codec registered). */
  private readonly compression: number;

  constructor(opts: KafkaSinkOptions) {
    this.opts = opts;
    this.compression = kafkaCompression(opts.kafka.compression);
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
      ...(opts.wire ? { socketFactory: opts.wire.socketFactory() } : {}),
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
      compression: this.compression,
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
