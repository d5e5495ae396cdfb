/**
 * Issue 2, second figure: one event per POST over 64 keep-alive connections
 * (each answer after its fsync'd commit). Baseline: a bare node:http server
 * that answers 200 without storing, driven by the same load generator.
 */
import type { Scenario, ScenarioResult, CpuReport, ChartSpec } from '../lib/types.ts';
import { writeFigure, writeWindow } from '../lib/writes.ts';
import type { LoadConfig, LoadResult } from '../workers/loadgen.ts';
import {
  atLeast,
  baselineCost,
  baselineHigher,
  cpuSecondsOf,
  figure,
  fmt,
  usPerEvent,
} from '../lib/figures.ts';

const CONNECTIONS = 64;
const TARGET = 8_000;
/** Issue 13: with forwarding live, at least this share of the rate with forwarding paused. */
const LIVE_TARGET_RATIO = 0.7;
const TOPIC = 'bench.single';

export const ingestSingle: Scenario = {
  name: 'ingest-single',
  title: 'Single-event POSTs, 64 keep-alive connections, KEDGE_SYNC=full',
  description:
    `The same load generator sends one 200-byte JSON event per request (\`application/json\`) over ${CONNECTIONS} keep-alive connections, closed loop; ` +
    'kedge answers each after its commit (group commit shares one fsync among the requests that arrive together). Forwarding paused. ' +
    'Baseline: a bare `node:http` server in its own process that reads the body and answers 200 with a small JSON body, storing nothing: ' +
    'the HTTP ceiling of Node plus this load generator on this machine. ' +
    'When a broker runs (any scenario of the run needs one), the backlog of the first run is drained, then the same load ' +
    'runs again with forwarding on (steady state: every event forwarded as it comes) and is compared with the paused run.',
  needsKafka: false,
  estimateSeconds: (q) => (q ? 15 : 45),
  async run(ctx): Promise<ScenarioResult> {
    const cpu: CpuReport[] = [];
    const notes: string[] = [];
    const warmupMs = ctx.ms(3, 1);
    const durationMs = ctx.ms(12, 4);
    const base = (origin: string, path: string): LoadConfig => ({
      origin,
      path,
      body: 'single',
      eventsPerRequest: 1,
      connections: CONNECTIONS,
      warmupMs,
      durationMs,
      totalEvents: null,
      keyPerRequest: false,
      requestTimeoutMs: 30_000,
    });

    // Baseline: bare node:http.
    const server = ctx.worker<{ requests: number }>('bare-http.ts', { port: 0 }, 10 * 60_000, {});
    const port = await new Promise<number>((resolve, reject) => {
      server.child.on('message', (m: any) => m?.ready && resolve(m.ready.port));
      server.result.catch(reject);
    });
    ctx.log(`baseline bare node:http: ${CONNECTIONS} connections, ${durationMs / 1000} s`);
    const wb = ctx.load(base(`http://127.0.0.1:${port}`, '/v1/topics/bench.single'));
    const winB = ctx.cpuAfter(warmupMs, 'bare node:http', {
      'bare server': server.pid,
      loadgen: wb.pid,
    });
    const bare: LoadResult = await wb.result;
    const cpuBare = await winB.stop();
    cpu.push(cpuBare);
    server.child.send('stop');
    await server.result.catch(() => {});
    ctx.log(
      `baseline bare node:http: ${fmt(bare.eventsPerS)} requests/s, p99 ${fmt(bare.latencyMs.p99, 1)} ms`,
    );

    const agent = await ctx.startAgent('ingest-single', { paused: true });
    const s0 = await agent.status();
    const writes = await writeWindow(agent);
    ctx.log(`kedge: ${CONNECTIONS} connections, single events, ${durationMs / 1000} s`);
    const tLoad = performance.now();
    const w = ctx.load(base(agent.base, `/v1/topics/${TOPIC}`));
    const win = ctx.cpuAfter(warmupMs, 'kedge single-event ingest', {
      kedge: agent.pid,
      loadgen: w.pid,
    });
    const r: LoadResult = await w.result;
    ctx.phase(agent, 'ingest', tLoad + warmupMs, performance.now());
    const cpuKedge = await win.stop();
    cpu.push(cpuKedge);
    const wa = await writes.close();
    ctx.log(
      `kedge: write amplification ${fmt(wa.ratio, 2)}× (${wa.error ?? 'disk bytes ÷ ingested bytes'})`,
    );
    const s1 = await agent.status();
    const commits = s1.log.commits - s0.log.commits;
    const stored = s1.log.last_seq - s0.log.last_seq;
    ctx.log(
      `kedge: ${fmt(r.eventsPerS)} events/s, ${fmt(stored / Math.max(1, commits), 1)} events per commit, p99 ${fmt(r.latencyMs.p99, 1)} ms`,
    );
    for (const [name, x] of [
      ['kedge', r],
      ['bare server', bare],
    ] as const) {
      if (x.errors || Object.keys(x.statuses).length)
        notes.push(
          `${name}: load generator saw ${JSON.stringify(x.statuses)} and ${x.errors} errors (${x.firstError ?? ''})`,
        );
    }
    notes.push(
      `kedge: ${fmt(stored / Math.max(1, commits), 1)} events per group commit (${fmt(commits / ((warmupMs + durationMs) / 1000))} commits/s); request round trip p50 ${fmt(r.latencyMs.p50, 1)} ms, p99 ${fmt(r.latencyMs.p99, 1)} ms ` +
        `(bare server: p50 ${fmt(bare.latencyMs.p50, 1)} ms, p99 ${fmt(bare.latencyMs.p99, 1)} ms).`,
      `The load generator used ${fmt(r.cpuPctOfCore)} % of a core against kedge and ${fmt(bare.cpuPctOfCore)} % against the bare server: ` +
        'on 2 cores it competes with the server under test, so the bare figure is the ceiling of this machine, not of node:http.',
    );
    const figures = [
      figure({
        id: 'events_per_s',
        label: `1 event/POST, ${CONNECTIONS} conns, sync=full`,
        value: r.eventsPerS,
        unit: 'ev/s',
        target: atLeast(r.eventsPerS, TARGET, `≥ ${fmt(TARGET)} ev/s`),
        baselines: [
          baselineHigher(
            'bare node:http, answers 200, stores nothing',
            r.eventsPerS,
            bare.eventsPerS,
            'req/s',
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
    const kedgeUs = usPerEvent(
      cpuSecondsOf(cpuKedge, 'kedge'),
      r.events * (cpuKedge.seconds / Math.max(0.001, r.seconds)),
    );
    const bareUs = usPerEvent(
      cpuSecondsOf(cpuBare, 'bare server'),
      bare.events * (cpuBare.seconds / Math.max(0.001, bare.seconds)),
    );
    figures.push(
      figure({
        id: 'cpu_us_per_event',
        label: 'server CPU per request (lower is better)',
        value: kedgeUs,
        unit: 'µs/req',
        digits: 1,
        baselines: [baselineCost('bare node:http', kedgeUs, bareUs, 'µs/req')],
      }),
    );
    let live: LoadResult | null = null;
    if (ctx.kafkaRunning) {
      await ctx.topic(TOPIC);
      await agent.resume();
      // Steady state: the link up and nothing left over, as on a device that keeps up.
      const drainBy = performance.now() + 10 * 60_000;
      while ((await agent.status()).backlog.events > 0 && performance.now() < drainBy)
        await new Promise((r) => setTimeout(r, 250));
      ctx.log(`kedge with forwarding on: ${CONNECTIONS} connections, ${durationMs / 1000} s`);
      const c0 = (await agent.status()).log.cursor;
      const tLoad2 = performance.now();
      const w2 = ctx.load(base(agent.base, `/v1/topics/${TOPIC}`));
      const win2 = ctx.cpuAfter(warmupMs, 'kedge single-event ingest, forwarding on', {
        kedge: agent.pid,
        loadgen: w2.pid,
      });
      live = await w2.result;
      ctx.phase(agent, 'ingest-with-forwarding', tLoad2 + warmupMs, performance.now());
      cpu.push(await win2.stop());
      const st = await agent.status();
      const fwdRate = (st.log.cursor - c0) / ((warmupMs + durationMs) / 1000);
      ctx.log(
        `kedge with forwarding on: ${fmt(live.eventsPerS)} events/s, ~${fmt(fwdRate)} events/s forwarded meanwhile`,
      );
      const ratio = live.eventsPerS / Math.max(1, r.eventsPerS);
      figures.push(
        figure({
          id: 'events_per_s_forwarding',
          label: 'same load, forwarding on',
          value: live.eventsPerS,
          unit: 'ev/s',
          note: `~${fmt(fwdRate)} ev/s forwarded meanwhile`,
        }),
        figure({
          id: 'forwarding_on_vs_paused',
          label: 'forwarding on ÷ forwarding paused',
          value: ratio,
          unit: '×',
          digits: 2,
          target: atLeast(ratio, LIVE_TARGET_RATIO, `≥ ${LIVE_TARGET_RATIO} ×`),
        }),
      );
      notes.push(
        `With forwarding on, the forwarder shipped ~${fmt(fwdRate)} events/s while ingest reached ${fmt(live.eventsPerS)} requests/s (p99 ${fmt(live.latencyMs.p99, 1)} ms); backlog at the end ${fmt(st.backlog.events)} events.`,
      );
    }

    const charts: ChartSpec[] = [
      {
        kind: 'bars',
        id: 'ingest-single-rates',
        title: 'Single-event POSTs, 64 connections (requests/s)',
        unit: 'requests/s',
        bars: [
          { label: 'kedge (commit per answer)', value: r.eventsPerS },
          ...(live ? [{ label: 'kedge, forwarding on', value: live.eventsPerS }] : []),
          { label: 'bare node:http (no storage)', value: bare.eventsPerS },
        ],
        refs: [{ label: 'target 8,000', y: TARGET }],
      },
      {
        kind: 'line',
        id: 'ingest-single-timeline',
        title: 'Requests answered per second (warm-up included)',
        xLabel: 's',
        yLabel: 'requests/s',
        series: [
          { label: 'kedge', points: r.perSecond.map((y, x) => ({ x, y })) },
          {
            label: 'bare node:http',
            points: bare.perSecond.map((y, x) => ({ x, y })),
            dashed: true,
          },
        ],
        refs: [{ label: 'target', y: TARGET }],
      },
    ];
    return { figures, charts, cpu, notes, data: { load: r, live, bare, commits, stored } };
  },
};
