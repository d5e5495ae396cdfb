/**
 * The Kafka side of the forwarder: the producer interface (`RecordSink`) and its
 * kafkajs implementation. Every client behind it is idempotent with acks=all, one
 * request in flight (so order per partition holds on retries) and the Java client's
 * murmur2 partitioner (so a key lands in the same partition whichever client sent
 * it). `createRecordSink` picks the client (KEDGE_KAFKA_CLIENT); @platformatic/kafka
 * is in platformatic.ts, loaded only when chosen.
 */
import type { KafkaClientName } from '../config.ts';
import { IncompleteSendError } from '../errors.ts';
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
  /**
   * The partition each message of a send went to, kept across kafkajs' own retries
   * of that send (see send()). Keyed by the message object, so it lives as long as the send.
   */
  private readonly partitionOf = new WeakMap<Message, number>();
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
      createPartitioner: () => {
        const partition = kafkajs.Partitioners.DefaultPartitioner();
        // A retry must not move a keyless message to another partition (round robin):
        // send() checks that every partition a message went to was answered for.
        return (args) => {
          const pinned = this.partitionOf.get(args.message);
          if (pinned !== undefined && pinned < args.partitionMetadata.length) return pinned;
          const p = partition(args);
          this.partitionOf.set(args.message, p);
          return p;
        };
      },
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
    const answered = await this.producer!.sendBatch({
      acks: -1,
      timeout: this.opts.requestTimeoutMs,
      compression: this.compression,
      topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })),
    });
    // kafkajs 2.2.4 (producer/sendMessages.js) keeps each broker's answer across its
    // retries of one send and only asks brokers without one. When a partition's leader
    // dies and the new leader already answered for other partitions of this send, the
    // retry never sends that partition, yet send() resolves: those records are not in
    // Kafka. So every partition written to must have an answer, or the batch is
    // refused (the forwarder sends it again with a new producer).
    const got = new Set(answered.map((r) => `${r.topicName}\u0000${r.partition}`));
    for (const [topic, messages] of byTopic) {
      for (const m of messages) {
        const p = this.partitionOf.get(m);
        if (p === undefined || !got.has(`${topic}\u0000${p}`))
          throw new IncompleteSendError(topic, p ?? -1);
      }
    }
  }

  /** Drops the producer; the next send makes a new one (fresh producer id and sequence numbers). */
  async disconnect(): Promise<void> {
    const p = this.producer;
    this.producer = null;
    if (p) await p.disconnect().catch(() => {});
  }
}
