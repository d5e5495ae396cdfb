/**
 * The Kafka thread (a `worker_threads` worker started by kafka-thread.ts): every
 * producer of the agent lives here — the forwarder's and the heartbeat's — with its
 * client, its compression and its sockets, so encoding, compressing and waiting on
 * Kafka never hold up the thread that parses HTTP and MQTT and commits the log.
 *
 * It keeps no state of its own that matters: the log, the cursors and every
 * decision (retry, dead letter, pause, windows, rate cap) stay on the main thread,
 * which sends one call at a time per producer and gets one answer per call. If this
 * thread dies, the calls in flight fail as transient errors and the main thread
 * starts a new one (nothing was acknowledged for them, so they are sent again).
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { Logger } from '../observe/logger.ts';
import { classifySendError, describeKafkaError } from './classify.ts';
import { unpack } from './packed-records.ts';
import { createRecordSink } from './producer.ts';
import type { RecordSink } from './record-sink.ts';
import type {
  FromKafkaThread,
  KafkaThreadData,
  RemoteFailure,
  SinkSpec,
  ToKafkaThread,
} from './thread-protocol.ts';
import { WireMeter } from './wire-meter.ts';

/** How often the wire total is reported while nothing else is (probes, metadata, idle TLS). */
const WIRE_REPORT_MS = 500;

const LEVELS = { debug: 20, info: 30, warn: 40, error: 50 } as const;
type Level = keyof typeof LEVELS;

function post(m: FromKafkaThread): void {
  parentPort!.postMessage(m);
}

/**
 * The part of a pino logger the clients use (child, debug … error), handing each
 * line to the main thread's logger: one log stream, one format, one level.
 */
function threadLogger(minLevel: number, bindings: Record<string, unknown> = {}): Logger {
  const at =
    (level: Level) =>
    (objOrMsg: unknown, msg?: string): void => {
      if (LEVELS[level] < minLevel) return;
      const [obj, text] = typeof objOrMsg === 'string' ? [{}, objOrMsg] : [objOrMsg, msg ?? ''];
      try {
        post({ t: 'log', level, bindings, obj, msg: text });
      } catch {
        // Something in obj cannot be copied (a socket, a function): the text still goes.
        post({ t: 'log', level, bindings, obj: { detail: String(obj) }, msg: text });
      }
    };
  const logger = {
    level: 'debug',
    child: (more: Record<string, unknown>) => threadLogger(minLevel, { ...bindings, ...more }),
    trace: () => {},
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    fatal: at('error'),
    isLevelEnabled: (l: string) => (LEVELS[l as Level] ?? 0) >= minLevel,
  };
  return logger as unknown as Logger;
}

function failure(e: unknown): RemoteFailure {
  const err = e as { message?: unknown; name?: unknown } | null;
  return {
    sendClass: classifySendError(e),
    description: describeKafkaError(e),
    message: String(err?.message ?? e),
    name: String(err?.name ?? 'Error'),
  };
}

function main(): void {
  const { logLevel } = workerData as KafkaThreadData;
  const logger = threadLogger(logLevel);
  const wire = new WireMeter();
  const sinks = new Map<number, Promise<RecordSink>>();
  let reported = -1;
  const report = setInterval(() => {
    const total = wire.total();
    if (total !== reported) {
      reported = total;
      post({ t: 'wire', wire: total });
    }
  }, WIRE_REPORT_MS);
  report.unref();

  const open = (id: number, spec: SinkSpec): void => {
    sinks.set(
      id,
      createRecordSink({
        kafka: spec.kafka,
        clientId: spec.clientId,
        requestTimeoutMs: spec.requestTimeoutMs,
        logger,
        wire,
      }),
    );
  };

  const call = async (m: Extract<ToKafkaThread, { t: 'call' }>): Promise<void> => {
    let fail: RemoteFailure | undefined;
    try {
      const sinkP = sinks.get(m.sink);
      if (!sinkP) throw new Error(`no producer ${m.sink} in the Kafka thread`);
      const sink = await sinkP;
      if (m.op === 'connect') await sink.connect();
      else if (m.op === 'disconnect') await sink.disconnect();
      else {
        await sink.send(m.records ? unpack(m.records) : []);
      }
    } catch (e) {
      fail = failure(e);
    }
    const total = wire.total();
    reported = total;
    post(
      fail
        ? { t: 'done', req: m.req, wire: total, failure: fail }
        : { t: 'done', req: m.req, wire: total },
    );
  };

  parentPort!.on('message', (m: ToKafkaThread) => {
    if (m.t === 'open') open(m.sink, m.spec);
    else void call(m);
  });
}

main();
