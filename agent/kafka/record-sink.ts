/**
 * The producer interface the forwarder and the heartbeat use, whatever the client
 * behind it (producer.ts: kafkajs and the factory; platformatic.ts).
 */
import type { Config } from '../config.ts';
import type { Logger } from '../observe/logger.ts';
import type { WireMeter } from './wire-meter.ts';

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
  requestTimeoutMs: number;
  logger: Logger;
  /** Counts what the producer's connections write (the rate cap, kedge_wire_bytes_total). */
  wire?: WireMeter;
}
