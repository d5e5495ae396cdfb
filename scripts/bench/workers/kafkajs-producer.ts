/**
 * Baseline for forwarding: a bare kafkajs producer with kedge's settings
 * (idempotent, acks=all, one request in flight, the default partitioner, zstd
 * through kedge's own codec registration) sending the same records as kedge's
 * backlog (same values, keys and header names/sizes) in batches of `batch`,
 * one sendBatch after another, as kedge's forwarder does. What it does not do:
 * read SQLite, advance a cursor, delete forwarded rows.
 */
import { kafkaCompression } from '../../../agent/kafka/codecs.ts';
import { baselineProducer } from '../lib/baseline-producer.ts';
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
}

export interface KafkajsProducerResult {
  events: number;
  seconds: number;
  eventsPerS: number;
  connectMs: number;
  batches: number;
  cpuPctOfCore: number;
  kafkajsVersion: string;
}

async function run(c: KafkajsProducerConfig): Promise<KafkajsProducerResult> {
  const compression = kafkaCompression('zstd');
  const producer = baselineProducer('kedge-bench-baseline', c.bootstrap);
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
    const messages = new Array(n);
    for (let k = 0; k < n; k++) {
      const i = sent + k;
      messages[k] = {
        key: keys[Number(keyFor(i, c.perRequest).slice(1))],
        value: valueBytes(i),
        timestamp: String(ts),
        headers: kedgeHeaders(c.agentId, i + 1, ts),
      };
    }
    await producer.sendBatch({
      acks: -1,
      timeout: 30_000,
      compression,
      topicMessages: [{ topic: c.topic, messages }],
    });
    sent += n;
    batches++;
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  clearInterval(progress);
  process.send!({ progress: { t: performance.now() - t0, sent } });
  await producer.disconnect();
  const { createRequire } = await import('node:module');
  const version = (createRequire(import.meta.url)('kafkajs/package.json') as { version: string })
    .version;
  return {
    events: sent,
    seconds,
    eventsPerS: sent / seconds,
    connectMs,
    batches,
    cpuPctOfCore: (100 * (cpu.user + cpu.system)) / 1e6 / seconds,
    kafkajsVersion: version,
  };
}

process.once('message', (c: KafkajsProducerConfig) => {
  run(c).then(
    (r) => process.send!({ ok: true, result: r }, () => process.exit(0)),
    (e: Error) => process.send!({ ok: false, error: e.stack ?? String(e) }, () => process.exit(1)),
  );
});
