/**
 * The bare kafkajs producer the forwarding baselines use: kedge's producer
 * settings (idempotent, acks=all at send time, one request in flight, the
 * default partitioner, the same retry policy) without anything of kedge around it.
 */
import kafkajs from 'kafkajs';
import type { Producer } from 'kafkajs';

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
