/**
 * The messages between the agent's main thread (kafka-thread.ts) and the Kafka
 * thread (kafka-worker.ts). Everything here crosses a `postMessage`, so it is plain
 * data: a batch as one transferred buffer (packed-records.ts), errors as their classification and their
 * one-line description (the client's error classes do not survive the copy).
 */
import type { Config } from '../config-types.ts';
import type { ClassifiedFailure } from './classify.ts';
import type { PackedRecords } from './packed-records.ts';

/** What the Kafka thread needs to build one producer (createRecordSink's options, minus what lives on its side). */
export interface SinkSpec {
  kafka: Config['kafka'];
  clientId: string;
  requestTimeoutMs: number;
}

export type SinkOp = 'connect' | 'send' | 'disconnect';

export type ToKafkaThread =
  | { t: 'open'; sink: number; spec: SinkSpec }
  | { t: 'call'; sink: number; req: number; op: SinkOp; records?: PackedRecords };

/** A failed call: what the forwarder needs to decide (retry, shrink, dead-letter) and to tell the operator. */
export type RemoteFailure = ClassifiedFailure;

export type FromKafkaThread =
  | { t: 'done'; req: number; wire: number; failure?: RemoteFailure }
  | { t: 'wire'; wire: number }
  | {
      t: 'log';
      level: 'debug' | 'info' | 'warn' | 'error';
      bindings: Record<string, unknown>;
      obj: unknown;
      msg: string;
    };

/** The log level the Kafka thread forwards at and above (pino's numbers). */
export interface KafkaThreadData {
  logLevel: number;
}
