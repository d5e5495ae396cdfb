/**
 * Baseline for the `codecs` scenario: a bare kafkajs producer with kedge's
 * producer settings (idempotent, acks=all, one request in flight) and the
 * codec under test, registered through kedge's own agent/kafka/codecs.ts,
 * sending the same telemetry events (same seed: same keys, values and headers,
 * plus kedge's two headers) in batches bounded like kedge's forwarder's
 * (2,000 events or 512 KiB of values), one sendBatch after another.
 * What it does not do: read SQLite, advance a cursor, delete forwarded rows.
 */
import type kafkajs from 'kafkajs';
import { kafkaCompression } from '../../../agent/kafka/codecs.ts';
import { baselineProducer } from '../lib/baseline-producer.ts';
import type { Compression } from '../../../agent/config.ts';
import { TelemetryGenerator } from '../telemetry.ts';
import { kedgeHeaders } from '../lib/records.ts';

export interface CodecProducerConfig {
  bootstrap: string;
  topic: string;
  compression: Compression;
  count: number;
  seed: number;
  maxBatchEvents: number;
  maxBatchBytes: number;
}

export interface CodecProducerResult {
  events: number;
  valueBytes: number;
  seconds: number;
  eventsPerS: number;
  batches: number;
  cpuPctOfCore: number;
}

async function run(c: CodecProducerConfig): Promise<CodecProducerResult> {
  const compression = kafkaCompression(c.compression);
  const producer = baselineProducer('kedge-bench-codec-baseline', c.bootstrap);
  await producer.connect();
  // Made before the clock starts: kedge's events are in its log before its drain starts, too.
  const events = new TelemetryGenerator({ seed: c.seed })
    .take(c.count)
    .map((e) => ({ key: Buffer.from(e.key), value: Buffer.from(e.value), headers: e.headers }));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let sent = 0;
  let batches = 0;
  let valueBytes = 0;
  while (sent < c.count) {
    const ts = Date.now();
    const messages: kafkajs.Message[] = [];
    let bytes = 0;
    while (
      sent + messages.length < c.count &&
      messages.length < c.maxBatchEvents &&
      bytes < c.maxBatchBytes
    ) {
      const i = sent + messages.length;
      const e = events[i];
      bytes += e.value.length;
      messages.push({
        key: e.key,
        value: e.value,
        timestamp: String(ts),
        headers: { ...e.headers, ...kedgeHeaders('bench-baseline', i + 1, ts) },
      });
    }
    await producer.sendBatch({
      acks: -1,
      timeout: 30_000,
      compression,
      topicMessages: [{ topic: c.topic, messages }],
    });
    sent += messages.length;
    valueBytes += bytes;
    batches++;
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  await producer.disconnect();
  return {
    events: sent,
    valueBytes,
    seconds,
    eventsPerS: sent / seconds,
    batches,
    cpuPctOfCore: (100 * (cpu.user + cpu.system)) / 1e6 / seconds,
  };
}

process.once('message', (c: CodecProducerConfig) => {
  run(c).then(
    (r) => process.send!({ ok: true, result: r }, () => process.exit(0)),
    (e: Error) => process.send!({ ok: false, error: e.stack ?? String(e) }, () => process.exit(1)),
  );
});
