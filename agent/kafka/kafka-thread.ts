/**
 * The main thread's side of the Kafka thread (kafka-worker.ts): `KafkaThread.sink()`
 * gives the forwarder and the heartbeat a RecordSink whose calls run there, and
 * `wire` mirrors the thread's wire byte count (rate cap, kedge_wire_bytes_total).
 *
 * Each call is one message out and one answer back; a send's answer comes only after
 * Kafka's, so the forwarder's promise (cursor moves only after Kafka acknowledged)
 * is unchanged. The wire total arrives with every answer, before the call resolves,
 * so the rate cap charges a batch's bytes exactly as it did in-process.
 *
 * A thread that dies (a bug, its heap limit) fails the calls in flight as transient
 * errors; the next call starts a new thread and reopens the producers in it.
 *
 * In the single executable the thread's code is a SEA asset (KAFKA_WORKER_ASSET,
 * bundled by scripts/build/bundle.ts); from source it is kafka-worker.ts itself.
 */
import { getAsset, isSea } from 'node:sea';
import { setFlagsFromString } from 'node:v8';
import { Worker, type ResourceLimits } from 'node:worker_threads';
import type { Logger } from '../observe/logger.ts';
import { RemoteKafkaError } from './classify.ts';
import { pack } from './packed-records.ts';
import type { OutRecord, RecordSink } from './record-sink.ts';
import type {
  FromKafkaThread,
  KafkaThreadData,
  RemoteFailure,
  SinkOp,
  SinkSpec,
  ToKafkaThread,
} from './thread-protocol.ts';
import type { WireTotal } from './wire-meter.ts';

/** Name of the Kafka thread's bundle among the executable's SEA assets. */
export const KAFKA_WORKER_ASSET = 'kafka-worker.cjs';

export interface KafkaThreadOptions {
  logger: Logger;
  /** V8 heap limits of the thread (agent/runtime-flags.ts KAFKA_THREAD_LIMITS). */
  resourceLimits?: ResourceLimits;
}

interface Pending {
  resolve: () => void;
  reject: (e: Error) => void;
}

export class KafkaThread {
  private readonly o: KafkaThreadOptions;
  private worker: Worker | null = null;
  private readonly specs = new Map<number, SinkSpec>();
  private readonly pending = new Map<number, Pending>();
  private nextSink = 1;
  private nextReq = 1;
  private wireTotal = 0;
  /** Wire bytes of threads that ended: the count stays monotonic across restarts. */
  private wireBase = 0;
  private closed = false;

  /** Bytes the thread's producers wrote to Kafka's sockets (monotonic). */
  readonly wire: WireTotal = { total: () => this.wireBase + this.wireTotal };

  constructor(o: KafkaThreadOptions) {
    this.o = o;
  }

  /** A producer in the Kafka thread; nothing connects before its first call. */
  sink(spec: SinkSpec): RecordSink {
    const id = this.nextSink++;
    this.specs.set(id, spec);
    if (this.worker) this.post({ t: 'open', sink: id, spec });
    const call = (op: SinkOp, records?: OutRecord[]) => this.call(id, op, records);
    return {
      connect: () => call('connect'),
      send: (records) => call('send', records),
      disconnect: () => (this.closed ? Promise.resolve() : call('disconnect')),
    };
  }

  /** Ends the thread (after the forwarder and the heartbeat disconnected their producers). */
  async close(): Promise<void> {
    this.closed = true;
    const w = this.worker;
    this.worker = null;
    this.failAll('the Kafka thread was closed');
    if (w) await w.terminate();
  }

  private call(sink: number, op: SinkOp, records?: OutRecord[]): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the Kafka thread was closed'));
    this.ensureWorker();
    const req = this.nextReq++;
    return new Promise<void>((resolve, reject) => {
      this.pending.set(req, { resolve, reject });
      try {
        if (records) {
          const { packed, transfer } = pack(records);
          this.worker!.postMessage({ t: 'call', sink, req, op, records: packed }, transfer);
        } else this.post({ t: 'call', sink, req, op });
      } catch (e) {
        this.pending.delete(req);
        reject(e as Error);
      }
    });
  }

  private post(m: ToKafkaThread): void {
    this.worker!.postMessage(m);
  }

  private ensureWorker(): void {
    if (this.worker) return;
    const data: KafkaThreadData = { logLevel: levelNumber(this.o.logger) };
    const w = startThread(
      isSea()
        ? { code: getAsset(KAFKA_WORKER_ASSET, 'utf8') }
        : { url: new URL('./kafka-worker.ts', import.meta.url) },
      { workerData: data, resourceLimits: this.o.resourceLimits },
    );
    this.worker = w;
    this.wireBase += this.wireTotal;
    this.wireTotal = 0;
    w.on('message', (m: FromKafkaThread) => this.onMessage(m));
    w.on('error', (e) => {
      this.o.logger.error({ err: e.message }, 'the Kafka thread failed; starting a new one');
    });
    w.on('exit', (code) => {
      if (this.worker !== w) return;
      this.worker = null;
      this.failAll(`the Kafka thread ended (exit code ${code})`);
    });
    for (const [id, spec] of this.specs) this.post({ t: 'open', sink: id, spec });
  }

  private onMessage(m: FromKafkaThread): void {
    if (m.t === 'log') {
      const log = Object.keys(m.bindings).length ? this.o.logger.child(m.bindings) : this.o.logger;
      log[m.level](m.obj as object, m.msg);
      return;
    }
    this.wireTotal = Math.max(this.wireTotal, m.wire);
    if (m.t !== 'done') return;
    const p = this.pending.get(m.req);
    if (!p) return;
    this.pending.delete(m.req);
    if (m.failure) p.reject(new RemoteKafkaError(m.failure));
    else p.resolve();
  }

  private failAll(why: string): void {
    const failure: RemoteFailure = {
      sendClass: { kind: 'transient', type: null },
      description: why,
      message: why,
      name: 'Error',
    };
    for (const p of this.pending.values()) p.reject(new RemoteKafkaError(failure));
    this.pending.clear();
  }
}

function levelNumber(logger: Logger): number {
  const n = (logger as { levelVal?: unknown }).levelVal;
  return typeof n === 'number' ? n : 30;
}

/**
 * Starts a worker thread with its own heap limits. V8's `--max-semi-space-size` and
 * `--max-old-space-size` flags, which the main thread runs with (agent/runtime-flags.ts),
 * are process-wide and win over a worker's `resourceLimits`: left set, the Kafka thread
 * got the main thread's 1 MB semi-space (and its 256 MB old space) whatever its limits
 * said, and spent about a third of its time in scavenges while draining (measured). The
 * flags are read when an isolate is created, so clearing them here changes nothing for
 * the running main thread; every worker kedge starts comes through here with its limits.
 */
export function startThread(
  source: { url: URL } | { code: string },
  opts: { workerData: unknown; resourceLimits?: ResourceLimits },
): Worker {
  const limits = opts.resourceLimits;
  if (limits?.maxYoungGenerationSizeMb) setFlagsFromString('--max-semi-space-size=0');
  if (limits?.maxOldGenerationSizeMb) setFlagsFromString('--max-old-space-size=0');
  return 'code' in source
    ? new Worker(source.code, { ...opts, eval: true })
    : new Worker(source.url, opts);
}
