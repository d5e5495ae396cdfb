/**
 * The bare producers the forwarding baselines use: kedge's producer settings
 * (idempotent, acks=all, one request in flight, a Java-compatible partitioner, the
 * same retry policy) without anything of kedge around them, one per Kafka client.
 */
import kafkajs from 'kafkajs';
import type { Producer } from 'kafkajs';
import {
  compatibilityPartitioner,
  Producer as PlatformaticProducer,
  ProduceAcks,
  stringSerializer,
} from '@platformatic/kafka';

export function baselineProducer(clientId: string, bootstrap: string): Producer {
  const kafka = new kafkajs.Kafka({
    clientId,
    brokers: bootstrap.split(','),
    connectionTimeout: 5000,
    requestTimeout: 30_000,
    retry: { retries: 3, initialRetryTime: 200, maxRetryTime: 2000 },
    logLevel: kafkajs.logLevel.NOTHING,
  });
  return kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    allowAutoTopicCreation: true,
    createPartitioner: kafkajs.Partitioners.DefaultPartitioner,
    retry: { retries: 3, initialRetryTime: 200, maxRetryTime: 2000 },
  });
}

/** One record of a baseline batch, in kafkajs' shape (both baselines take it). */
export interface BaselineMessage {
  key: Buffer;
  value: Buffer;
  timestamp: string;
  headers: Record<string, string>;
}

/** A bare producer of either client: connect, send one batch with acks=all and zstd, close. */
export interface BaselineSender {
  connect(): Promise<void>;
  send(topic: string, messages: BaselineMessage[]): Promise<void>;
  close(): Promise<void>;
}

/**
 * The bare @platformatic/kafka producer with the settings agent/kafka/platformatic.ts
 * gives it (idempotent, acks=all, one in flight, compatibilityPartitioner, zstd); the
 * records are converted to the client's shape in the send, as kedge's sink does.
 */
export function baselinePlatformatic(clientId: string, bootstrap: string): BaselineSender {
  const p = new PlatformaticProducer<Buffer, Buffer, string, string>({
    clientId,
    bootstrapBrokers: bootstrap.split(','),
    idempotent: true,
    acks: ProduceAcks.ALL,
    maxInflights: 1,
    retries: 3,
    connectTimeout: 5_000,
    timeout: 30_000,
    requestTimeout: 30_000,
    autocreateTopics: true,
    compression: 'zstd',
    partitioner: (message, key) => compatibilityPartitioner(message, key),
    serializers: { headerKey: stringSerializer, headerValue: stringSerializer },
  });
  return {
    async connect() {
      await p.initIdempotentProducer({});
    },
    async send(topic, messages) {
      const out = new Array(messages.length);
      for (let i = 0; i < messages.length; i++) {
        const m = messages[i];
        out[i] = {
          topic,
          key: m.key,
          value: m.value,
          timestamp: BigInt(m.timestamp),
          headers: m.headers,
        };
      }
      await p.send({ messages: out });
    },
    async close() {
      await p.close(true);
    },
  };
}

/** The bare kafkajs producer behind the same interface. */
export function baselineKafkajs(
  clientId: string,
  bootstrap: string,
  compression: number,
): BaselineSender {
  const producer = baselineProducer(clientId, bootstrap);
  return {
    connect: () => producer.connect(),
    async send(topic, messages) {
      await producer.sendBatch({
        acks: -1,
        timeout: 30_000,
        compression,
        topicMessages: [{ topic, messages }],
      });
    },
    close: () => producer.disconnect(),
  };
}
