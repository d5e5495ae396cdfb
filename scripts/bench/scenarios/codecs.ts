/**
 * Issue 4: KEDGE_COMPRESSION. For each codec (none, gzip, snappy, lz4, zstd)
 * on plausible sensor telemetry (scripts/bench/telemetry.ts):
 * - compression ratio: kafkajs' own record-batch encoder (the bytes a produce
 *   request carries) with and without the codec, on batches shaped like the
 *   forwarder's (2,000 events); and the codec's speed on them;
 * - forward throughput: a backlog of N events drained by kedge to the real
 *   broker, beside a bare kafkajs producer with the same codec and events;
 * - the bytes the broker stored per topic (segment files): the ratio on the
 *   batches kedge really sent.
 */
import { createRequire } from 'node:module';
import { join } from 'node:path';
import type { Compression } from '../../../agent/config.ts';
import { kafkaCompression } from '../../../agent/kafka/codecs.ts';
import { post } from '../../../test/helpers/agent.ts';
import { topicLogBytes } from '../../../test/helpers/segments.ts';
import { BenchAgent } from '../lib/agent.ts';
import type { BenchContext } from '../lib/context.ts';
import { baselineHigher, figure, fmt } from '../lib/figures.ts';
import type { ChartSpec, CpuReport, Figure, Scenario, ScenarioResult } from '../lib/types.ts';
import { envelopeBody, TelemetryGenerator, type TelemetryEvent } from '../telemetry.ts';
import type { CodecProducerConfig, CodecProducerResult } from '../workers/codec-producer.ts';

const CODECS: Compression[] = ['none', 'gzip', 'snappy', 'lz4', 'zstd'];
const SEED = 2026;
const BATCH_EVENTS = 2_000;
const BATCH_BYTES = 512 * 1024;
const PER_REQUEST = 1_000;
const MiB = 1024 * 1024;

// kafkajs' record-batch encoder, the one its producer uses (not part of its public API).
const require = createRequire(import.meta.url);
type Encoder = { buffer: Buffer };
const { RecordBatch } = require('kafkajs/src/protocol/recordBatch/v0/index.js') as {
  RecordBatch: (o: {
    compression: number;
    records: Encoder[];
    firstTimestamp?: number;
    maxTimestamp?: number;
  }) => Promise<Encoder>;
};
const KafkaRecord = require('kafkajs/src/protocol/recordBatch/record/v0/index.js') as (o: {
  offsetDelta: number;
  timestampDelta: number;
  key: Buffer;
  value: Buffer;
  headers: Record<string, string>;
}) => Encoder;

interface RatioResult {
  rawBytes: number;
  compressedBytes: number;
  ratio: number;
  /** MiB of uncompressed batch per second of encode (compress included), one core. */
  encodeMiBps: number;
}

/** Encodes `events` in forwarder-sized batches with and without `compression`; kafkajs' encoder, kedge's codecs. */
async function measureRatio(
  events: TelemetryEvent[],
  compression: Compression,
): Promise<RatioResult> {
  const type = kafkaCompression(compression);
  let raw = 0;
  let comp = 0;
  let ms = 0;
  const ts = Date.now();
  for (let i = 0; i < events.length; i += BATCH_EVENTS) {
    const records = events.slice(i, i + BATCH_EVENTS).map((e, k) =>
      KafkaRecord({
        offsetDelta: k,
        timestampDelta: 0,
        key: Buffer.from(e.key),
        value: Buffer.from(e.value),
        headers: {
          ...e.headers,
          'kedge-id': `bench-agent:${i + k + 1}`,
          'kedge-ingest-ts': String(ts),
        },
      }),
    );
    raw += (await RecordBatch({ compression: 0, records, firstTimestamp: ts, maxTimestamp: ts }))
      .buffer.length;
    const t = performance.now();
    comp += (
      await RecordBatch({ compression: type, records, firstTimestamp: ts, maxTimestamp: ts })
    ).buffer.length;
    ms += performance.now() - t;
  }
  return {
    rawBytes: raw,
    compressedBytes: comp,
    ratio: raw / comp,
    encodeMiBps: raw / MiB / (ms / 1000),
  };
}

interface DrainResult {
  events: number;
  seconds: number;
  eventsPerS: number;
  valueMiBps: number;
  storedBytes: number;
  wireBytes: number | null;
  cpu: CpuReport;
}

async function postAll(agent: BenchAgent, topic: string, bodies: string[]): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (next < bodies.length) {
        const b = bodies[next++];
        const r = await post(`${agent.base}/v1/topics/${topic}`, b, 'application/json');
        if (r.status !== 200)
          throw new Error(`POST /v1/topics/${topic}: ${r.status} ${JSON.stringify(r.body)}`);
      }
    }),
  );
}

async function drain(
  ctx: BenchContext,
  agent: BenchAgent,
  total: number,
  valueBytes: number,
  logDir: string,
  topic: string,
  compression: Compression,
): Promise<DrainResult> {
  const m0 = await agent.metricsText();
  const cpu = ctx.cpu(`kedge draining, ${compression}`, { kedge: agent.pid });
  const t0 = performance.now();
  await agent.resume();
  const deadline = t0 + ctx.ms(300, 120);
  let done = false;
  while (performance.now() < deadline) {
    const s = await agent.status();
    if (s.backlog.events === 0) {
      done = true;
      break;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const seconds = (performance.now() - t0) / 1000;
  const c = cpu.stop();
  if (!done)
    throw new Error(
      `${compression}: the backlog of ${fmt(total)} events was not drained in ${seconds.toFixed(0)} s`,
    );
  const m1 = await agent.metricsText();
  const w0 = BenchAgent.metric(m0, 'kedge_wire_bytes_total');
  const w1 = BenchAgent.metric(m1, 'kedge_wire_bytes_total');
  return {
    events: total,
    seconds,
    eventsPerS: total / seconds,
    valueMiBps: valueBytes / MiB / seconds,
    storedBytes: topicLogBytes(logDir, topic),
    wireBytes: w0 !== null && w1 !== null ? w1 - w0 : null,
    cpu: c,
  };
}

export const codecs: Scenario = {
  name: 'codecs',
  title: 'Compression codecs: ratio and forward throughput on sensor telemetry',
  description:
    'Events from scripts/bench/telemetry.ts: JSON readings of a 200-device fleet on six sites (device id as key; ISO timestamps with clock jitter; ' +
    'three float readings per device as a random walk with noise; status, unit and firmware strings; occasional alarms; ~255 bytes each) with three headers. ' +
    "Ratio: kafkajs' own record-batch encoder on batches of 2,000 events (the forwarder's batch), uncompressed bytes ÷ compressed bytes, with kedge's codec " +
    'registration (gzip: kafkajs/zlib, zstd: Node zlib, snappy: snappyjs, lz4: lz4js blocks in an LZ4 frame); encode speed is that encoder on one core. ' +
    'Throughput: per codec, a fresh kedge with `KEDGE_COMPRESSION=<codec>` gets the backlog over HTTP (records envelopes of 1,000, forwarding paused), ' +
    "then `POST /v1/forwarding/resume` and the time until the backlog is 0. Baseline: a bare kafkajs producer (own process, kedge's producer settings and " +
    "codec registration, batches of ≤ 2,000 events / 512 KiB) sending the same events into its own topic. Stored bytes are the sizes of the topic's " +
    'segment files on the broker (record batches as sent).',
  needsKafka: true,
  estimateSeconds: (q) => (q ? 90 : 300),
  async run(ctx): Promise<ScenarioResult> {
    const total = ctx.n(200_000, 20_000);
    const kafka = await ctx.kafka();
    const logDir = join(kafka.nodes[0].dir, 'data');
    const notes: string[] = [];
    const cpu: CpuReport[] = [];
    const figures: Figure[] = [];

    ctx.log(`generating ${fmt(total)} telemetry events...`);
    const events = new TelemetryGenerator({ seed: SEED }).take(total);
    const valueBytes = events.reduce((s, e) => s + Buffer.byteLength(e.value), 0);
    const bodies: string[] = [];
    for (let i = 0; i < events.length; i += PER_REQUEST)
      bodies.push(envelopeBody(events.slice(i, i + PER_REQUEST)));
    notes.push(
      `${fmt(total)} events, ${(valueBytes / MiB).toFixed(1)} MiB of values (${fmt(valueBytes / total)} bytes each on average). Example: \`${events[0].value}\``,
    );

    const ratioEvents = events.slice(0, ctx.n(40_000, 10_000));
    const ratios = new Map<Compression, RatioResult>();
    for (const c of CODECS) {
      ratios.set(c, await measureRatio(ratioEvents, c));
      ctx.log(
        `${c}: ratio ${ratios.get(c)!.ratio.toFixed(2)}, encode ${ratios.get(c)!.encodeMiBps.toFixed(0)} MiB/s`,
      );
    }

    const drains = new Map<Compression, DrainResult>();
    const baselines = new Map<Compression, CodecProducerResult>();
    for (const c of CODECS) {
      const topic = await ctx.topic(`bench.codecs.${c}`, 3);
      const baseTopic = await ctx.topic(`bench.codecs.${c}.kafkajs`, 3);
      const agent = await ctx.startAgent(`codecs-${c}`, {
        paused: true,
        env: { KEDGE_COMPRESSION: c },
      });
      ctx.log(`${c}: building a backlog of ${fmt(total)} events...`);
      await postAll(agent, topic, bodies);
      const d = await drain(ctx, agent, total, valueBytes, logDir, topic, c);
      drains.set(c, d);
      cpu.push(d.cpu);
      ctx.log(
        `${c}: kedge drained ${fmt(total)} events in ${d.seconds.toFixed(1)} s: ${fmt(d.eventsPerS)} events/s, ${d.valueMiBps.toFixed(1)} MiB/s of values, ${(d.storedBytes / MiB).toFixed(1)} MiB stored`,
      );
      await agent.stop();

      const cfg: CodecProducerConfig = {
        bootstrap: kafka.bootstrap,
        topic: baseTopic,
        compression: c,
        count: total,
        seed: SEED,
        maxBatchEvents: BATCH_EVENTS,
        maxBatchBytes: BATCH_BYTES,
      };
      const w = ctx.worker<CodecProducerResult>('codec-producer.ts', cfg, 10 * 60_000);
      const b = await w.result;
      baselines.set(c, b);
      ctx.log(`${c}: bare kafkajs ${fmt(b.eventsPerS)} events/s`);
    }

    const stored0 = drains.get('none')!.storedBytes;
    for (const c of CODECS) {
      const r = ratios.get(c)!;
      const d = drains.get(c)!;
      const b = baselines.get(c)!;
      if (c !== 'none') {
        figures.push(
          figure({
            id: `ratio_${c}`,
            label: `${c}: compression ratio (record batches of ${fmt(BATCH_EVENTS)})`,
            value: r.ratio,
            unit: '×',
            digits: 2,
            note:
              `${c}: ${(r.rawBytes / MiB).toFixed(1)} MiB of record batches → ${(r.compressedBytes / MiB).toFixed(2)} MiB; encoder with ${c} ${r.encodeMiBps.toFixed(0)} MiB/s on one core; ` +
              `on the broker, kedge's batches took ${(d.storedBytes / MiB).toFixed(2)} MiB (${(stored0 / d.storedBytes).toFixed(2)} × less than uncompressed)`,
          }),
        );
      }
      figures.push(
        figure({
          id: `drain_${c}`,
          label: `${c}: drain ${fmt(total)} events`,
          value: d.eventsPerS,
          unit: 'ev/s',
          baselines: [baselineHigher(`bare kafkajs, ${c}`, d.eventsPerS, b.eventsPerS, 'ev/s')],
        }),
      );
      figures.push(
        figure({
          id: `drain_mib_${c}`,
          label: `${c}: drain, MiB/s of event values`,
          value: d.valueMiBps,
          unit: 'MiB/s',
          digits: 1,
          baselines: [
            baselineHigher(
              `bare kafkajs, ${c}`,
              d.valueMiBps,
              b.valueBytes / MiB / b.seconds,
              'MiB/s',
            ),
          ],
          note: `${c}: ${((d.wireBytes ?? d.storedBytes) / MiB / d.seconds).toFixed(2)} MiB/s on the wire (${d.wireBytes !== null ? 'kedge_wire_bytes_total' : 'stored bytes'})`,
        }),
      );
    }

    const charts: ChartSpec[] = [
      {
        kind: 'bars',
        id: 'codecs-ratio',
        title: 'Compression ratio on sensor telemetry (record batches of 2,000)',
        unit: '×',
        bars: CODECS.filter((c) => c !== 'none').map((c) => ({
          label: c,
          value: ratios.get(c)!.ratio,
        })),
      },
      {
        kind: 'bars',
        id: 'codecs-throughput',
        title: `Draining ${fmt(total)} events per codec (events/s)`,
        unit: 'ev/s',
        bars: CODECS.flatMap((c) => [
          { label: `${c} kedge`, value: drains.get(c)!.eventsPerS, group: c },
          { label: `${c} kafkajs`, value: baselines.get(c)!.eventsPerS, group: c },
        ]),
      },
    ];
    notes.push(
      "Snappy and LZ4 are pure JavaScript (no native addons, so the single executable carries them); gzip and zstd run in Node's zlib (C), off the main thread.",
    );
    return {
      figures,
      charts,
      cpu,
      notes,
      data: {
        total,
        valueBytes,
        ratios: Object.fromEntries(ratios),
        drains: Object.fromEntries([...drains].map(([k, v]) => [k, { ...v, cpu: undefined }])),
        baselines: Object.fromEntries(baselines),
      },
    };
  },
};
