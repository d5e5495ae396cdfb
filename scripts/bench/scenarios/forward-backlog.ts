/**
 * Issue 2, third figure: draining a 1,000,000-event backlog to Kafka. The
 * backlog is built over HTTP with forwarding paused; then forwarding resumes
 * and the time until the backlog is 0 is measured, with the cursor sampled
 * for a throughput-over-time chart. Baselines on the same broker, same
 * records, same batch size and codec: a bare kafkajs producer with kedge's
 * settings, and kcat (librdkafka) producing from a file. The Kafka client is a
 * dimension: one agent per KEDGE_KAFKA_CLIENT, each with the same backlog, drained
 * one after the other.
 */
import { join } from 'node:path';
import { rmSync } from 'node:fs';
import kafkajs from 'kafkajs';
import type { Scenario, ScenarioResult, CpuReport, ChartSpec, Figure } from '../lib/types.ts';
import type { KafkajsProducerConfig, KafkajsProducerResult } from '../workers/kafkajs-producer.ts';
import type { LoadResult } from '../workers/loadgen.ts';
import {
  atLeast,
  baselineCost,
  baselineHigher,
  cpuSecondsOf,
  figure,
  fmt,
  usPerEvent,
} from '../lib/figures.ts';
import { kcatProduceFile, writeKcatFile } from '../lib/kcat.ts';
import { rateSeries } from '../lib/stats.ts';
import { BenchAgent } from '../lib/agent.ts';
import type { BenchContext } from '../lib/context.ts';
import type { BenchAgent as Agent } from '../lib/agent.ts';
import { KAFKA_CLIENTS, type KafkaClientName } from '../../../agent/config-types.ts';

const PER_REQUEST = 1_000;
const BATCH = 2_000;
const TARGET = 50_000;
const TARGET_RATIO = 0.8;
/** Issue 13: drain ≥ 0.35× kcat with the same events and guarantees. */
const KCAT_TARGET_RATIO = 0.35;

/** What the rss scenario reads: the drain window and its progress. */
export interface DrainShare {
  agentLabel: string;
  total: number;
  /** performance.now() ms */
  tResume: number;
  tEnd: number;
  /** cumulative events forwarded since resume */
  progress: { t: number; c: number }[];
}

async function topicCount(bootstrap: string, topic: string): Promise<number> {
  const admin = new kafkajs.Kafka({
    clientId: 'kedge-bench',
    brokers: bootstrap.split(','),
    logLevel: kafkajs.logLevel.NOTHING,
  }).admin();
  await admin.connect();
  try {
    const offs = await admin.fetchTopicOffsets(topic);
    return offs.reduce((s, p) => s + Number(p.high) - Number(p.low), 0);
  } finally {
    await admin.disconnect();
  }
}

function kafkajsRun(
  ctx: BenchContext,
  cfg: KafkajsProducerConfig,
  progress?: { t: number; c: number }[],
  execArgv: string[] = [],
) {
  return ctx.worker<KafkajsProducerResult>('kafkajs-producer.ts', cfg, 15 * 60_000, {
    onProgress: (p: { t: number; sent: number }) => progress?.push({ t: p.t, c: p.sent }),
    execArgv,
  });
}

export const forwardBacklog: Scenario = {
  name: 'forward-backlog',
  title: 'Forwarding a 1,000,000-event backlog to Kafka',
  description:
    'kedge starts with forwarding paused; the load generator POSTs 1,000,000 events (NDJSON, 1,000 per request, 16 keys, 8 connections) ' +
    'into its log. Then `POST /v1/forwarding/resume`, and the bench polls `/v1/status` every 250 ms until the backlog is 0 ' +
    '(batches of ≤ 2,000 events / 512 KiB, zstd, idempotent producer, acks=all, one request in flight). Baselines, same broker, ' +
    'same values, keys and header names, each into its own empty 3-partition topic: a bare kafkajs producer with the same settings ' +
    'and codec sending batches of 2,000 one after another (no SQLite, no cursor), the same with a bare @platformatic/kafka producer (the default client, with the settings kedge gives it), and `kcat -P -l file` (librdkafka) with acks=all, ' +
    "idempotence, zstd and batch.num.messages=2000 (kcat -P puts the same two headers on every record; their sizes match kedge's). " +
    'The drain runs once per Kafka client (KEDGE_KAFKA_CLIENT=kafkajs, platformatic): one agent each, the same backlog built into each, ' +
    'drained one after the other (the other agent idle, paused). ' +
    'When kedge runs with extra V8 flags (agent/runtime-flags.ts), the kafkajs baseline also runs a second time under those flags, to separate ' +
    "the cost of the flags from the cost of kedge's own work. The broker is warmed up with a short kafkajs run first.",
  needsKafka: true,
  estimateSeconds: (q) => (q ? 60 : 240),
  async run(ctx): Promise<ScenarioResult> {
    const total = ctx.n(1_000_000, 100_000);
    const notes: string[] = [];
    const cpu: CpuReport[] = [];
    const kafka = await ctx.kafka();
    const topics = {
      kedge: 'bench.fwd.kedge',
      kedgePlatformatic: 'bench.fwd.kedge-platformatic',
      kafkajs: 'bench.fwd.kafkajs',
      kafkajsFlags: 'bench.fwd.kafkajs-flags',
      platformatic: 'bench.fwd.platformatic',
      kcat: 'bench.fwd.kcat',
      warm: 'bench.fwd.warmup',
    };
    for (const t of Object.values(topics)) await ctx.topic(t, 3);

    // 1. The backlog, over HTTP, forwarding paused: the same events into one agent per client.
    const topicOf: Record<KafkaClientName, string> = {
      kafkajs: topics.kedge,
      platformatic: topics.kedgePlatformatic,
    };
    const agents = {} as Record<KafkaClientName, Agent>;
    let build: LoadResult | null = null;
    for (const client of KAFKA_CLIENTS) {
      const a = await ctx.startAgent(
        client === 'kafkajs' ? 'forward-backlog' : `forward-backlog-${client}`,
        {
          paused: true,
          env: { KEDGE_KAFKA_CLIENT: client },
        },
      );
      agents[client] = a;
      const b = await buildBacklog(a, topicOf[client]);
      build ??= b;
    }
    const agent = agents.kafkajs;
    agent.startHeapSampling(1000);
    const agentId = (await agent.status()).agent_id as string;
    if (!build) throw new Error('no backlog built');

    async function buildBacklog(agent: Agent, topic: string): Promise<LoadResult> {
      ctx.log(
        `building a backlog of ${fmt(total)} events for ${agent.label} (forwarding paused)...`,
      );
      const tBuild = performance.now();
      const build: LoadResult = await ctx.load({
        origin: agent.base,
        path: `/v1/topics/${topic}`,
        body: 'ndjson',
        eventsPerRequest: PER_REQUEST,
        connections: 8,
        warmupMs: 0,
        durationMs: null,
        totalEvents: total,
        keyPerRequest: true,
        requestTimeoutMs: 60_000,
      }).result;
      ctx.phase(agent, 'build', tBuild, performance.now());
      const st = await agent.status();
      if (st.backlog.events !== total)
        throw new Error(
          `backlog is ${st.backlog.events} events after ingesting ${total} (${build.errors} errors, ${JSON.stringify(build.statuses)})`,
        );
      ctx.log(
        `backlog built: ${fmt(total)} events, ${(st.backlog.bytes / 1048576).toFixed(0)} MiB, in ${build.totalSeconds.toFixed(1)} s (${fmt(build.totalEventsAcked / build.totalSeconds)} events/s)`,
      );
      return build;
    }

    // 2. Warm the broker (JIT, page cache) so the first measured producer is not penalised.
    const warmCount = ctx.n(100_000, 20_000);
    ctx.log(`warming Kafka up with ${fmt(warmCount)} records...`);
    await kafkajsRun(ctx, {
      bootstrap: kafka.bootstrap,
      topic: topics.warm,
      count: warmCount,
      batch: BATCH,
      perRequest: PER_REQUEST,
      agentId,
      progressMs: 1000,
    }).result;

    // 3. Baseline: bare kafkajs.
    ctx.log(`baseline kafkajs: ${fmt(total)} records in batches of ${BATCH}...`);
    const kjProgress: { t: number; c: number }[] = [{ t: 0, c: 0 }];
    const kw = kafkajsRun(
      ctx,
      {
        bootstrap: kafka.bootstrap,
        topic: topics.kafkajs,
        count: total,
        batch: BATCH,
        perRequest: PER_REQUEST,
        agentId,
        progressMs: 250,
      },
      kjProgress,
    );
    const kcpu = ctx.cpu('bare kafkajs producer', { 'kafkajs baseline': kw.pid, kedge: agent.pid });
    const kj = await kw.result;
    cpu.push(kcpu.stop());
    ctx.log(`baseline kafkajs: ${fmt(kj.eventsPerS)} events/s (${kj.seconds.toFixed(1)} s)`);

    // 3b. The same, under the V8 flags kedge runs with (they shrink the young generation: more GC).
    let kjFlags: KafkajsProducerResult | null = null;
    const flags = ctx.agentInfo.nodeFlags;
    if (flags.length) {
      ctx.log(`baseline kafkajs with kedge's node flags (${flags.join(' ')})...`);
      const kw2 = kafkajsRun(
        ctx,
        {
          bootstrap: kafka.bootstrap,
          topic: topics.kafkajsFlags,
          count: total,
          batch: BATCH,
          perRequest: PER_REQUEST,
          agentId,
          progressMs: 1000,
        },
        undefined,
        flags,
      );
      const kcpu2 = ctx.cpu(`bare kafkajs producer, ${flags.join(' ')}`, {
        'kafkajs baseline': kw2.pid,
        kedge: agent.pid,
      });
      kjFlags = await kw2.result;
      cpu.push(kcpu2.stop());
      ctx.log(`baseline kafkajs with kedge's flags: ${fmt(kjFlags.eventsPerS)} events/s`);
    }

    // 3c. Baseline: bare @platformatic/kafka (the default client), default V8 flags: the
    // client's own ceiling on this machine, which kedge's drain cannot exceed.
    ctx.log(`baseline @platformatic/kafka: ${fmt(total)} records in batches of ${BATCH}...`);
    const pw = kafkajsRun(ctx, {
      bootstrap: kafka.bootstrap,
      topic: topics.platformatic,
      count: total,
      batch: BATCH,
      perRequest: PER_REQUEST,
      agentId,
      progressMs: 1000,
      client: 'platformatic',
    });
    const pcpu = ctx.cpu('bare @platformatic/kafka producer', {
      'platformatic baseline': pw.pid,
      kedge: agent.pid,
    });
    const pf = await pw.result;
    cpu.push(pcpu.stop());
    ctx.log(`baseline @platformatic/kafka: ${fmt(pf.eventsPerS)} events/s`);

    // 4. Baseline: kcat from a file.
    const file = join(ctx.tmp('kcat'), 'records.tsv');
    await writeKcatFile(file, total, PER_REQUEST);
    ctx.log(`baseline kcat: ${fmt(total)} records from a file...`);
    const ccpu = ctx.cpu('kcat -P producer', { kedge: agent.pid });
    let kc: { seconds: number; eventsPerS: number } | null = null;
    try {
      kc = await kcatProduceFile({
        bootstrap: kafka.bootstrap,
        topic: topics.kcat,
        file,
        count: total,
        batch: BATCH,
        headers: { 'kedge-id': `${agentId}:${total}`, 'kedge-ingest-ts': String(Date.now()) },
        timeoutMs: 10 * 60_000,
        onStart: (pid) => ccpu.add('kcat', pid),
      });
      ctx.log(`baseline kcat: ${fmt(kc.eventsPerS)} events/s (${kc.seconds.toFixed(1)} s)`);
    } catch (e) {
      notes.push(`kcat baseline failed: ${(e as Error).message}`);
    }
    const cpuKcat = ccpu.stop();
    cpu.push(cpuKcat);
    rmSync(file, { force: true });

    // 5. kedge drains, once per client.
    interface Drain {
      client: KafkaClientName;
      rate: number | null;
      drained: number;
      drainSeconds: number;
      progress: { t: number; c: number }[];
      cpu: CpuReport;
      m0: string;
      m1: string;
    }
    async function drain(client: KafkaClientName): Promise<Drain> {
      const agent = agents[client];
      const m0 = await agent.metricsText();
      const c0 = (await agent.status()).log.cursor as number;
      const progress: { t: number; c: number }[] = [];
      const dcpu = ctx.cpu(`kedge draining (${client})`, { kedge: agent.pid });
      const tResume = performance.now();
      await agent.resume();
      const deadline = tResume + ctx.ms(420, 120);
      let tEnd: number | null = null;
      let last = 0;
      while (performance.now() < deadline) {
        const s = await agent.status();
        const t = performance.now();
        progress.push({ t: t - tResume, c: s.log.cursor - c0 });
        if (s.backlog.events === 0) {
          tEnd = t;
          break;
        }
        if (t - last > 5000) {
          last = t;
          ctx.log(`draining (${client}): ${fmt(s.backlog.events)} left`);
        }
        await new Promise((r) => setTimeout(r, 250));
      }
      const cpuDrain = dcpu.stop();
      cpu.push(cpuDrain);
      const m1 = await agent.metricsText();
      const drained = progress.at(-1)?.c ?? 0;
      const drainSeconds = ((tEnd ?? performance.now()) - tResume) / 1000;
      const rate = tEnd === null ? null : total / drainSeconds;
      if (tEnd === null)
        notes.push(
          `${client}: the backlog was not drained within the time limit: ${fmt(drained)} of ${fmt(total)} forwarded in ${drainSeconds.toFixed(0)} s (${fmt(drained / drainSeconds)} events/s)`,
        );
      ctx.log(
        `kedge (${client}) drained ${fmt(drained)} events in ${drainSeconds.toFixed(1)} s: ${fmt(rate ?? drained / drainSeconds)} events/s`,
      );
      if (client === 'kafkajs') {
        const share: DrainShare = {
          agentLabel: agent.label,
          total,
          tResume,
          tEnd: tEnd ?? performance.now(),
          progress: progress.map((p) => ({ t: p.t + tResume, c: p.c })),
        };
        ctx.shared.set('forward-backlog', share);
      }
      ctx.phase(agent, 'drain', tResume, tEnd ?? performance.now());
      return { client, rate, drained, drainSeconds, progress, cpu: cpuDrain, m0, m1 };
    }
    const drains = {} as Record<KafkaClientName, Drain>;
    for (const client of KAFKA_CLIENTS) drains[client] = await drain(client);
    const { rate, drained, drainSeconds, progress, cpu: cpuDrain } = drains.kafkajs;

    // What the forwarder spent its time on.
    let sends = 0;
    let sendS = 0;
    let batchEvents = 0;
    for (const dr of Object.values(drains)) {
      const d = (name: string) =>
        (BenchAgent.metric(dr.m1, name) ?? 0) - (BenchAgent.metric(dr.m0, name) ?? 0);
      const n = d('kedge_send_duration_seconds_count');
      const secs = d('kedge_send_duration_seconds_sum');
      const per =
        d('kedge_send_batch_events_sum') / Math.max(1, d('kedge_send_batch_events_count'));
      if (dr.client === 'kafkajs') [sends, sendS, batchEvents] = [n, secs, per];
      if (n > 0) {
        notes.push(
          `${dr.client}: kedge sent ${fmt(n)} batches of ${fmt(per)} events on average; time inside the client's send (until acks=all) ` +
            `${secs.toFixed(1)} s of the ${dr.drainSeconds.toFixed(1)} s drain (${fmt((100 * secs) / dr.drainSeconds)} %), ${((1000 * secs) / n).toFixed(1)} ms per batch. ` +
            `The rest, ${((1000 * (dr.drainSeconds - secs)) / n).toFixed(1)} ms per batch, is kedge's own work between sends ` +
            `(SQLite read of the batch, record building, cursor update and trim) while nothing is in flight.`,
        );
      }
    }
    notes.push(
      `Backlog build over HTTP (NDJSON, ${fmt(PER_REQUEST)} events/request, 8 connections): ${fmt(build.totalEventsAcked / build.totalSeconds)} events/s.`,
    );

    // Sanity: every record is in its topic.
    const counts: Record<string, number> = {};
    for (const [k, t] of Object.entries(topics))
      if (k !== 'warm' && (k !== 'kafkajsFlags' || kjFlags))
        counts[k] = await topicCount(kafka.bootstrap, t);
    notes.push(
      `Records in Kafka after the runs: ${Object.entries(counts)
        .map(([k, n]) => `${k} ${fmt(n)}`)
        .join(', ')} (expected ${fmt(total)} each).`,
    );
    for (const [k, n] of Object.entries(counts))
      if (n !== total && !(k === 'kcat' && !kc))
        notes.push(`WARNING: topic of ${k} holds ${fmt(n)} records, expected ${fmt(total)}.`);

    const ratioKj = rate === null ? null : rate / kj.eventsPerS;
    const figures: Figure[] = [
      figure({
        id: 'drain_events_per_s',
        label: `drain ${fmt(total)}-event backlog`,
        value: rate,
        unit: 'ev/s',
        target: atLeast(rate, TARGET, `≥ ${fmt(TARGET)} ev/s`),
        baselines: [
          baselineHigher(
            `bare kafkajs, batches of ${fmt(BATCH)}, zstd, idempotent`,
            rate,
            kj.eventsPerS,
            'ev/s',
          ),
          ...(kjFlags
            ? [
                baselineHigher(
                  `same, with kedge's flags ${flags.join(' ')}`,
                  rate,
                  kjFlags.eventsPerS,
                  'ev/s',
                ),
              ]
            : []),
          baselineHigher(
            'kcat -P (librdkafka), zstd, acks=all',
            rate,
            kc?.eventsPerS ?? null,
            'ev/s',
          ),
        ],
      }),
      ...KAFKA_CLIENTS.filter((c) => c !== 'kafkajs').map((c) =>
        figure({
          id: `drain_${c}_events_per_s`,
          label: `drain ${fmt(total)}-event backlog, KEDGE_KAFKA_CLIENT=${c}`,
          value: drains[c].rate,
          unit: 'ev/s',
          target: atLeast(drains[c].rate, TARGET, `≥ ${fmt(TARGET)} ev/s`),
          baselines: [
            baselineHigher('kedge with kafkajs, same run', drains[c].rate, rate, 'ev/s'),
            ...(c === 'platformatic'
              ? [
                  baselineHigher(
                    `bare @platformatic/kafka ${pf.clientVersion}, batches of ${fmt(BATCH)}, zstd, idempotent`,
                    drains[c].rate,
                    pf.eventsPerS,
                    'ev/s',
                  ),
                ]
              : []),
            baselineHigher(
              'kcat -P (librdkafka), zstd, acks=all',
              drains[c].rate,
              kc?.eventsPerS ?? null,
              'ev/s',
            ),
          ],
        }),
      ),
      ...KAFKA_CLIENTS.map((c) => {
        const r = drains[c].rate === null || !kc ? null : drains[c].rate! / kc.eventsPerS;
        return figure({
          id: `drain_${c}_vs_kcat`,
          label: `drain rate (${c}) ÷ kcat`,
          value: r,
          unit: '×',
          digits: 2,
          target: atLeast(r, KCAT_TARGET_RATIO, `≥ ${KCAT_TARGET_RATIO} ×`),
        });
      }),
      figure({
        id: 'bare_platformatic_vs_kcat',
        label: 'bare @platformatic/kafka ÷ kcat (the client alone, no kedge; no target)',
        value: kc ? pf.eventsPerS / kc.eventsPerS : null,
        unit: '×',
        digits: 2,
        note: `the ceiling of a drain through this client on this machine: kedge's drain adds SQLite reads, the cursor and trims to the client's work`,
      }),
      ...KAFKA_CLIENTS.filter((c) => c !== 'kafkajs').map((c) =>
        figure({
          id: `cpu_us_per_event_${c}`,
          label: `CPU per forwarded event, ${c} (lower is better)`,
          value: usPerEvent(cpuSecondsOf(drains[c].cpu, 'kedge'), drains[c].drained),
          unit: 'µs/ev',
          digits: 1,
          baselines:
            c === 'platformatic'
              ? [
                  baselineCost(
                    'bare @platformatic/kafka',
                    usPerEvent(cpuSecondsOf(drains[c].cpu, 'kedge'), drains[c].drained),
                    usPerEvent((pf.cpuPctOfCore / 100) * pf.seconds, pf.events),
                    'µs/ev',
                  ),
                ]
              : [],
        }),
      ),
      figure({
        id: 'drain_vs_kafkajs',
        label: 'drain rate ÷ bare kafkajs',
        value: ratioKj,
        unit: '×',
        digits: 2,
        target: atLeast(ratioKj, TARGET_RATIO, `≥ ${TARGET_RATIO} ×`),
      }),
      (() => {
        const kedgeUs = usPerEvent(cpuSecondsOf(cpuDrain, 'kedge'), drained);
        return figure({
          id: 'cpu_us_per_event',
          label: 'CPU per forwarded event (lower is better)',
          value: kedgeUs,
          unit: 'µs/ev',
          digits: 1,
          baselines: [
            baselineCost(
              'bare kafkajs',
              kedgeUs,
              usPerEvent((kj.cpuPctOfCore / 100) * kj.seconds, kj.events),
              'µs/ev',
            ),
            ...(kc
              ? [
                  baselineCost(
                    'kcat',
                    kedgeUs,
                    usPerEvent(cpuSecondsOf(cpuKcat, 'kcat'), total),
                    'µs/ev',
                  ),
                ]
              : []),
          ],
          note: "CPU time of the producing process ÷ records; kedge's includes reading SQLite, the cursor and the trim; the broker's CPU is not in any of them",
        });
      })(),
      figure({
        id: 'backlog_build_events_per_s',
        label: `backlog build, NDJSON ${fmt(PER_REQUEST)} ev/req (no target)`,
        value: build.totalEventsAcked / build.totalSeconds,
        unit: 'ev/s',
      }),
    ];

    const kedgeSeries = rateSeries([{ t: 0, c: 0 }, ...progress], 1000);
    const kjSeries = rateSeries(kjProgress, 1000);
    const charts: ChartSpec[] = [
      {
        kind: 'line',
        id: 'forward-backlog-throughput',
        title: `Throughput while draining ${fmt(total)} events (1 s windows)`,
        xLabel: 's since start',
        yLabel: 'events/s',
        series: [
          { label: 'kedge, kafkajs (log → Kafka)', points: kedgeSeries },
          ...KAFKA_CLIENTS.filter((c) => c !== 'kafkajs').map((c) => ({
            label: `kedge, ${c}`,
            points: rateSeries([{ t: 0, c: 0 }, ...drains[c].progress], 1000),
          })),
          { label: 'bare kafkajs', points: kjSeries, dashed: true },
          ...(kc
            ? [
                {
                  label: `kcat (average over ${kc.seconds.toFixed(1)} s)`,
                  points: [
                    { x: 0, y: kc.eventsPerS },
                    { x: kc.seconds, y: kc.eventsPerS },
                  ],
                  dashed: true,
                },
              ]
            : []),
        ],
        refs: [{ label: 'target 50,000', y: TARGET }],
      },
    ];
    return {
      figures,
      charts,
      cpu,
      notes,
      data: {
        total,
        build,
        kafkajs: kj,
        kafkajsWithFlags: kjFlags,
        kcat: kc,
        drainSeconds,
        rate,
        drains: Object.fromEntries(
          Object.values(drains).map((d) => [
            d.client,
            { rate: d.rate, drained: d.drained, seconds: d.drainSeconds, progress: d.progress },
          ]),
        ),
        progress,
        kafkajsProgress: kjProgress,
        counts,
        sends,
        sendSeconds: sendS,
        batchEvents,
      },
    };
  },
};
