/**
 * Issue 2, first figure: durable HTTP ingest of NDJSON (100 events of 200 B per
 * request, 8 keep-alive connections, KEDGE_SYNC=full), forwarding paused so the
 * figure is the ingest path alone. Baselines on the same driver (node:sqlite):
 * kedge's own log appending batches of 100 one after another, and a bare SQLite
 * loop with transactions of 100 (WAL, synchronous=FULL).
 */
import type { Scenario, ScenarioResult, CpuReport, ChartSpec, Figure } from '../lib/types.ts';
import type { SqliteBaselineConfig, SqliteBaselineResult } from '../workers/sqlite-baseline.ts';
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
import type { BenchContext } from '../lib/context.ts';
import { writeFigure, writeWindow } from '../lib/writes.ts';

const PER_REQUEST = 100;
const CONNECTIONS = 8;
const TARGET = 100_000;
const TOPIC = 'bench.ingest';

async function sqliteBaseline(
  ctx: BenchContext,
  kind: SqliteBaselineConfig['kind'],
): Promise<SqliteBaselineResult> {
  const cfg: SqliteBaselineConfig = {
    kind,
    dir: ctx.tmp(`sqlite-${kind}`),
    batch: PER_REQUEST,
    seconds: ctx.n(8, 2),
    warmupSeconds: ctx.n(1, 0.5),
    topic: TOPIC,
  };
  ctx.log(`baseline ${kind}: batches of ${PER_REQUEST} for ${cfg.seconds} s`);
  const r = await ctx.worker<SqliteBaselineResult>('sqlite-baseline.ts', cfg, 120_000).result;
  ctx.log(`baseline ${kind}: ${fmt(r.eventsPerS)} events/s (${fmt(r.commitsPerS)} commits/s)`);
  return r;
}

export const ingestNdjson: Scenario = {
  name: 'ingest-ndjson',
  title: 'Durable ingest: HTTP NDJSON, 100 events per request, 8 connections, KEDGE_SYNC=full',
  description:
    `A load generator in its own process POSTs NDJSON bodies of ${PER_REQUEST} events (200-byte JSON each) over ${CONNECTIONS} keep-alive ` +
    'connections (closed loop: each connection sends its next request when the answer arrives) to `POST /v1/topics/bench.ingest`; every answer ' +
    "comes after the fsync'd commit (KEDGE_SYNC=full). Forwarding is paused, so this is the ingest path alone. Baselines, same driver " +
    "(node:sqlite), same disk, each in its own process: kedge's log (`openLog().append`) with batches of 100 appended one after another, and a bare " +
    'node:sqlite loop of 100 INSERTs per transaction into a table of the same shape (WAL, synchronous=FULL). When Kafka is running, a second ' +
    'run with forwarding on shows ingest while the forwarder competes for the same CPU (no target).',
  needsKafka: false,
  estimateSeconds: (q) => (q ? 20 : 75),
  async run(ctx): Promise<ScenarioResult> {
    const notes: string[] = [];
    const cpu: CpuReport[] = [];
    const openlog = await sqliteBaseline(ctx, 'openlog');
    const bare = await sqliteBaseline(ctx, 'bare');

    const agent = await ctx.startAgent('ingest-ndjson', { paused: true });
    const warmupMs = ctx.ms(3, 1);
    const durationMs = ctx.ms(15, 4);
    const loadCfg = {
      origin: agent.base,
      path: `/v1/topics/${TOPIC}`,
      body: 'ndjson' as const,
      eventsPerRequest: PER_REQUEST,
      connections: CONNECTIONS,
      warmupMs,
      durationMs,
      totalEvents: null,
      keyPerRequest: true,
      requestTimeoutMs: 30_000,
    };
    const s0 = await agent.status();
    const writes = await writeWindow(agent);
    ctx.log(
      `kedge: ${CONNECTIONS} connections × ${PER_REQUEST} events/request, ${warmupMs / 1000} s warm-up + ${durationMs / 1000} s`,
    );
    const tLoad = performance.now();
    const w = ctx.load(loadCfg);
    const win = ctx.cpuAfter(warmupMs, 'kedge ingest, forwarding paused', {
      kedge: agent.pid,
      loadgen: w.pid,
    });
    const r: LoadResult = await w.result;
    ctx.phase(agent, 'ingest', tLoad + warmupMs, performance.now());
    const cpuMain = await win.stop();
    cpu.push(cpuMain);
    const wa = await writes.close();
    ctx.log(
      `kedge: write amplification ${fmt(wa.ratio, 2)}× (${wa.error ?? 'disk bytes ÷ ingested bytes'})`,
    );
    const s1 = await agent.status();
    const commits = s1.log.commits - s0.log.commits;
    const stored = s1.log.last_seq - s0.log.last_seq;
    ctx.log(
      `kedge: ${fmt(r.eventsPerS)} events/s, ${fmt(stored / Math.max(1, commits), 0)} events per commit, request p50 ${fmt(r.latencyMs.p50, 1)} ms p99 ${fmt(r.latencyMs.p99, 1)} ms`,
    );
    if (r.errors || Object.keys(r.statuses).length)
      notes.push(
        `load generator saw errors: ${JSON.stringify(r.statuses)} ${r.errors} thrown (${r.firstError ?? ''})`,
      );

    const figures: Figure[] = [
      figure({
        id: 'events_per_s',
        label: `NDJSON ${PER_REQUEST} ev/req, ${CONNECTIONS} conns, sync=full`,
        value: r.eventsPerS,
        unit: 'ev/s',
        target: atLeast(r.eventsPerS, TARGET, `≥ ${fmt(TARGET)} ev/s`),
        baselines: [
          baselineHigher(
            `openLog().append, batches of ${PER_REQUEST}, sequential`,
            r.eventsPerS,
            openlog.eventsPerS,
            'ev/s',
          ),
          baselineHigher(
            `bare node:sqlite, txns of ${PER_REQUEST}, WAL+FULL`,
            r.eventsPerS,
            bare.eventsPerS,
            'ev/s',
          ),
        ],
      }),
      figure({
        id: 'request_p99_ms',
        label: 'request round trip p99 (same run)',
        value: r.latencyMs.p99,
        unit: 'ms',
        digits: 1,
      }),
      writeFigure('write_amplification', 'write amplification (disk bytes ÷ ingested bytes)', wa),
    ];
    // CPU per event: kedge's process over the measured window; the baselines measure their own.
    const kedgeUs = usPerEvent(
      cpuSecondsOf(cpuMain, 'kedge'),
      r.events * (cpuMain.seconds / Math.max(0.001, r.seconds)),
    );
    figures.push(
      figure({
        id: 'cpu_us_per_event',
        label: 'kedge CPU per event (lower is better)',
        value: kedgeUs,
        unit: 'µs/ev',
        digits: 1,
        baselines: [
          baselineCost(
            'openLog().append ×100',
            kedgeUs,
            (openlog.cpuPctOfCore / 100 / openlog.eventsPerS) * 1e6,
            'µs/ev',
          ),
          baselineCost(
            'bare node:sqlite ×100',
            kedgeUs,
            (bare.cpuPctOfCore / 100 / bare.eventsPerS) * 1e6,
            'µs/ev',
          ),
        ],
        note: 'CPU time of the kedge process ÷ events stored; the HTTP parsing, JSON validation and response are in it, not in the baselines',
      }),
    );
    notes.push(
      `kedge committed ${fmt(commits)} group commits for ${fmt(stored)} events (${fmt(stored / Math.max(1, commits), 0)} events per commit, ` +
        `${fmt(commits / ((durationMs + warmupMs) / 1000))} commits/s); the baselines did ${fmt(openlog.commitsPerS)} (openLog) and ${fmt(bare.commitsPerS)} (bare) commits/s, ` +
        'each commit one fsync.',
      `request round trip: p50 ${fmt(r.latencyMs.p50, 1)} ms, p99 ${fmt(r.latencyMs.p99, 1)} ms, max ${fmt(r.latencyMs.max, 1)} ms.`,
      `CPU of the baselines themselves: openLog ${fmt(openlog.cpuPctOfCore)} %, bare ${fmt(bare.cpuPctOfCore)} % of one core (the rest of their time is fsync).`,
    );

    const lines: { x: number; y: number }[][] = [r.perSecond.map((y, x) => ({ x, y }))];
    let withFwd: LoadResult | null = null;
    if (ctx.kafkaRunning) {
      await ctx.topic(TOPIC);
      await agent.resume();
      const d2 = ctx.ms(15, 4);
      ctx.log(`kedge with forwarding on: ${d2 / 1000} s`);
      const c0 = (await agent.status()).log.cursor;
      const tLoad2 = performance.now();
      const w2 = ctx.load({ ...loadCfg, durationMs: d2 });
      const win2 = ctx.cpuAfter(warmupMs, 'kedge ingest, forwarding on', {
        kedge: agent.pid,
        loadgen: w2.pid,
      });
      withFwd = await w2.result;
      ctx.phase(agent, 'ingest-with-forwarding', tLoad2 + warmupMs, performance.now());
      cpu.push(await win2.stop());
      const st = await agent.status();
      const fwdRate = (st.log.cursor - c0) / ((warmupMs + d2) / 1000);
      ctx.log(
        `kedge with forwarding on: ${fmt(withFwd.eventsPerS)} events/s ingested, ~${fmt(fwdRate)} events/s forwarded meanwhile`,
      );
      figures.push(
        figure({
          id: 'events_per_s_forwarding',
          label: 'same load, forwarding on',
          value: withFwd.eventsPerS,
          unit: 'ev/s',
          note: `~${fmt(fwdRate)} ev/s forwarded meanwhile`,
        }),
        // Issue 13: ≥ 0.5 × bare node:sqlite with the backlog not growing, i.e. both the
        // ingest rate and the forward rate; the smaller of the two is what is sustained.
        figure({
          id: 'sustained_vs_bare',
          label: 'sustained (min of ingest, forward) ÷ bare node:sqlite',
          value: Math.min(withFwd.eventsPerS, fwdRate) / bare.eventsPerS,
          unit: '×',
          digits: 2,
          target: atLeast(Math.min(withFwd.eventsPerS, fwdRate) / bare.eventsPerS, 0.5, '≥ 0.5 ×'),
          note: `ingest ${fmt(withFwd.eventsPerS)}, forward ~${fmt(fwdRate)} ev/s`,
        }),
      );
      notes.push(
        `With forwarding on (resumed with the backlog of the first run still in the log, so the forwarder never idles), the forwarder shipped ~${fmt(fwdRate)} events/s to Kafka during the run while ingest reached ${fmt(withFwd.eventsPerS)} events/s; backlog at the end ${fmt(st.backlog.events)} events.`,
      );
      lines.push(withFwd.perSecond.map((y, x) => ({ x, y })));
    }

    const charts: ChartSpec[] = [
      {
        kind: 'bars',
        id: 'ingest-ndjson-rates',
        title: 'Durable NDJSON ingest vs. raw SQLite inserts (events/s)',
        unit: 'events/s',
        bars: [
          { label: 'kedge HTTP (8 conns, paused fwd)', value: r.eventsPerS },
          ...(withFwd ? [{ label: 'kedge HTTP, forwarding on', value: withFwd.eventsPerS }] : []),
          { label: 'openLog.append ×100 sequential', value: openlog.eventsPerS },
          { label: 'bare node:sqlite txn ×100', value: bare.eventsPerS },
        ],
        refs: [{ label: 'target 100,000', y: TARGET }],
      },
      {
        kind: 'line',
        id: 'ingest-ndjson-timeline',
        title: 'kedge ingest throughput per second (warm-up included)',
        xLabel: 's',
        yLabel: 'events/s',
        series: [
          { label: 'forwarding paused', points: lines[0] },
          ...(lines[1] ? [{ label: 'forwarding on', points: lines[1] }] : []),
        ],
        refs: [{ label: 'target', y: TARGET }],
      },
    ];
    return {
      figures,
      charts,
      cpu,
      notes,
      data: { load: r, loadWithForwarding: withFwd, openlog, bare, commits, stored },
    };
  },
};
