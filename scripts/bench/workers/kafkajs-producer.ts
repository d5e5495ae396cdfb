/**
 * Baseline for forwarding: a bare producer of one Kafka client (kafkajs, or
 * @platformatic/kafka with `client: 'platformatic'`) with kedge's settings
 * (idempotent, acks=all, one request in flight, a Java-compatible partitioner,
 * zstd) sending the same records as kedge's backlog (same values, keys and header
 * names/sizes) in batches of `batch`, one send after another, as kedge's forwarder
 * does. What it does not do: read SQLite, advance a cursor, delete forwarded rows.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { kafkaCompression } from '../../../agent/kafka/codecs.ts';
import {
  baselineKafkajs,
  baselinePlatformatic,
  type BaselineMessage,
} from '../lib/baseline-producer.ts';
import { valueBytes, keyFor, kedgeHeaders } from '../lib/records.ts';

export interface KafkajsProducerConfig {
  bootstrap: string;
  topic: string;
  count: number;
  batch: number;
  /** Events per request when the backlog was built (keys change per request). */
  perRequest: number;
  agentId: string;
  progressMs: number;
  /** Which client; kafkajs when absent. */
  client?: 'kafkajs' | 'platformatic';
}

export interface KafkajsProducerResult {
  events: number;
  seconds: number;
  eventsPerS: number;
  connectMs: number;
  batches: number;
  cpuPctOfCore: number;
  /** Version of the client that ran. */
  clientVersion: string;
}

async function run(c: KafkajsProducerConfig): Promise<KafkajsProducerResult> {
  const producer =
    c.client === 'platformatic'
      ? baselinePlatformatic('kedge-bench-baseline', c.bootstrap)
      : baselineKafkajs('kedge-bench-baseline', c.bootstrap, kafkaCompression('zstd'));
  const tc = performance.now();
  await producer.connect();
  const connectMs = performance.now() - tc;
  const keys = Array.from({ length: 16 }, (_, k) => Buffer.from(`k${k}`));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let sent = 0;
  let batches = 0;
  const progress = setInterval(
    () => process.send!({ progress: { t: performance.now() - t0, sent } }),
    c.progressMs,
  );
  while (sent < c.count) {
    const n = Math.min(c.batch, c.count - sent);
    const ts = Date.now();
    const messages: BaselineMessage[] = new Array(n);
    for (let k = 0; k < n; k++) {
      const i = sent + k;
      messages[k] = {
        key: keys[Number(keyFor(i, c.perRequest).slice(1))],
        value: valueBytes(i),
        timestamp: String(ts),
        headers: kedgeHeaders(c.agentId, i + 1, ts),
      };
    }
    await producer.send(c.topic, messages);
    sent += n;
    batches++;
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  clearInterval(progress);
  process.send!({ progress: { t: performance.now() - t0, sent } });
  await producer.close();
  // @platformatic/kafka exports only its entry point: its package.json is found beside it.
  const req = createRequire(import.meta.url);
  const pkgJson =
    c.client === 'platformatic'
      ? join(dirname(req.resolve('@platformatic/kafka')), '..', 'package.json')
      : 'kafkajs/package.json';
  const version = (req(pkgJson) as { version: string }).version;
  return {
    events: sent,
    seconds,
    eventsPerS: sent / seconds,
    connectMs,
    batches,
    cpuPctOfCore: (100 * (cpu.user + cpu.system)) / 1e6 / seconds,
    clientVersion: version,
  };
}

process.once('message', (c: KafkajsProducerConfig) => {
  run(c).then(
    (r) => process.send!({ ok: true, result: r }, () => process.exit(0)),
    (e: Error) => process.send!({ ok: false, error: e.stack ?? String(e) }, () => process.exit(1)),
  );
});
