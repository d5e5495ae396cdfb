/**
 * Issue 2, fifth figure: memory. Every agent of the run is sampled every
 * 250 ms (/proc/<pid>/status VmRSS; VmHWM catches a peak between samples).
 * Peak over the whole run ≤ 150 MB, and flat while the 1,000,000-event
 * backlog drains: RSS at 10 % and at 90 % of the drain within ±10 %, and the
 * drain's maximum within +10 % of its median.
 */
import type { Scenario, ScenarioResult, ChartSpec, Figure } from '../lib/types.ts';
import { atMost, figure, fmt } from '../lib/figures.ts';
import { median, timeAtCount } from '../lib/stats.ts';
import type { DrainShare } from './forward-backlog.ts';

const PEAK_TARGET_MB = 150;
const FLAT = 0.1;
const MB = 1_000_000;

export const rss: Scenario = {
  name: 'rss',
  title: 'Agent memory (RSS): peak over the run, flat while draining',
  description:
    "Reads the RSS samples (every 250 ms, /proc/<pid>/status VmRSS) of every kedge process this run started, and the kernel's own peak " +
    '(VmHWM), which also catches a spike between two samples. Flatness while draining the 1,000,000-event backlog of forward-backlog: ' +
    'RSS at 10 % and at 90 % of the drain (median of the samples within ±1 s), and the maximum against the median of the drain. MB = 10^6 bytes.',
  needsKafka: false,
  after: ['forward-backlog'],
  last: true,
  estimateSeconds: () => 1,
  async run(ctx): Promise<ScenarioResult> {
    const notes: string[] = [];
    const figures: Figure[] = [];
    const charts: ChartSpec[] = [];
    const per = ctx.agents.map((a) => ({
      scenario: a.scenario,
      label: a.label,
      maxMb: (a.agent.rss.maxKb() * 1024) / MB,
      hwmMb: (a.agent.rss.hwmKb * 1024) / MB,
      anonMb: (a.agent.rss.maxAnonKb() * 1024) / MB,
      fileMb: (Math.max(0, ...a.agent.rss.samples.map((s) => s.fileKb)) * 1024) / MB,
      idleMb: ((a.agent.rss.samples[0]?.rssKb ?? 0) * 1024) / MB,
      samples: a.agent.rss.samples.length,
    }));
    if (per.length === 0) throw new Error('no agent ran in this benchmark run');
    const peak = Math.max(...per.map((p) => Math.max(p.maxMb, p.hwmMb)));
    const worst = per.find((p) => Math.max(p.maxMb, p.hwmMb) === peak)!;
    figures.push(
      figure({
        id: 'peak_rss_mb',
        label: 'peak RSS, any agent of the run (VmHWM)',
        value: peak,
        unit: 'MB',
        digits: 1,
        target: atMost(peak, PEAK_TARGET_MB, `≤ ${PEAK_TARGET_MB} MB`),
        note: `in ${worst.scenario}`,
      }),
    );
    notes.push(
      `kedge ran as ${ctx.agentInfo.mode === 'executable' ? 'the single executable' : 'source'} with V8 flags: ${ctx.agentInfo.nodeFlags.length ? ctx.agentInfo.nodeFlags.join(' ') : 'none (V8 defaults)'}.`,
    );
    const anonPeak = Math.max(...per.map((p) => p.anonMb));
    figures.push(
      figure({
        id: 'peak_anon_mb',
        label: 'peak anonymous RSS (RssAnon, no target)',
        value: anonPeak,
        unit: 'MB',
        digits: 1,
        note: 'RSS minus the file-backed pages of the executable and libraries: the memory kedge itself allocates',
      }),
    );
    notes.push(
      `Peak RSS per agent: ${per.map((p) => `${p.scenario} ${fmt(p.maxMb, 1)} MB sampled / ${fmt(p.hwmMb, 1)} MB VmHWM (anonymous ${fmt(p.anonMb, 1)} MB, file-backed ${fmt(p.fileMb, 1)} MB; ${fmt(p.idleMb, 1)} MB right after start)`).join('; ')}.`,
    );
    charts.push({
      kind: 'bars',
      id: 'rss-peaks',
      title: 'Peak RSS per agent run (MB)',
      unit: 'MB',
      bars: [
        ...per.map((p) => ({ label: p.scenario, value: p.hwmMb, group: 'RSS (VmHWM)' })),
        ...per.map((p) => ({ label: p.scenario, value: p.anonMb, group: 'anonymous part' })),
        ...per.map((p) => ({ label: p.scenario, value: p.idleMb, group: 'just after start' })),
      ],
      refs: [{ label: 'target 150 MB', y: PEAK_TARGET_MB }],
    });

    const drain = ctx.shared.get('forward-backlog') as DrainShare | undefined;
    const rec = drain && ctx.agents.find((a) => a.label === drain.agentLabel);
    if (!drain || !rec) {
      notes.push('forward-backlog did not run (or failed): no drain to check flatness on.');
      return { figures, charts, cpu: [], notes };
    }
    const samples = rec.agent.rss.between(drain.tResume, drain.tEnd);
    const at = (frac: number): number | null => {
      const t = timeAtCount(drain.progress, frac * drain.total);
      if (t === null) return null;
      const near = samples
        .filter((s) => Math.abs(s.t - t) <= 1000)
        .map((s) => (s.rssKb * 1024) / MB);
      return median(near);
    };
    const r10 = at(0.1);
    const r90 = at(0.9);
    const all = samples.map((s) => (s.rssKb * 1024) / MB);
    const med = median(all);
    const max = all.length ? Math.max(...all) : null;
    const change = r10 !== null && r90 !== null ? (r90 - r10) / r10 : null;
    const overMedian = max !== null && med !== null ? (max - med) / med : null;
    figures.push(
      figure({
        id: 'drain_rss_change',
        label: 'RSS at 90 % vs 10 % of the drain',
        value: change === null ? null : 100 * change,
        unit: '%',
        digits: 1,
        target: { text: 'within ±10 %', pass: change === null ? null : Math.abs(change) <= FLAT },
        note: `${fmt(r10, 1)} → ${fmt(r90, 1)} MB`,
      }),
      figure({
        id: 'drain_rss_max_over_median',
        label: 'drain RSS max vs median',
        value: overMedian === null ? null : 100 * overMedian,
        unit: '%',
        digits: 1,
        target: { text: '≤ +10 %', pass: overMedian === null ? null : overMedian <= FLAT },
        note: `max ${fmt(max, 1)} MB, median ${fmt(med, 1)} MB`,
      }),
    );
    const hd = rec.agent.heap.filter((h) => h.t >= drain.tResume && h.t <= drain.tEnd);
    if (hd.length) {
      const mx = (k: 'heapTotal' | 'heapUsed' | 'external' | 'newSpace') =>
        Math.max(...hd.map((h) => h[k])) / MB;
      const first = hd[0];
      const lastH = hd[hd.length - 1];
      notes.push(
        `While draining, from /metrics: V8 heap total ${fmt(first.heapTotal / MB, 1)} → ${fmt(lastH.heapTotal / MB, 1)} MB (max ${fmt(mx('heapTotal'), 1)}), heap used max ${fmt(mx('heapUsed'), 1)} MB, ` +
          `external (Buffers) max ${fmt(mx('external'), 1)} MB, new space max ${fmt(mx('newSpace'), 1)} MB. RSS minus V8 heap total is native memory ` +
          `(SQLite page cache, zstd contexts, malloc arenas of the libuv threads that compress, code): ${fmt((max ?? 0) - mx('heapTotal'), 1)} MB at the peak.`,
      );
    }
    notes.push(
      `While draining: RSS ${fmt(r10, 1)} MB at 10 %, ${fmt(r90, 1)} MB at 90 %, median ${fmt(med, 1)} MB, max ${fmt(max, 1)} MB over ${samples.length} samples.`,
    );
    const t0 = rec.agent.rss.samples[0]?.t ?? 0;
    const marks = [0.1, 0.9].map((f) => timeAtCount(drain.progress, f * drain.total));
    charts.push({
      kind: 'line',
      id: 'rss-timeline',
      title: 'RSS of the forward-backlog agent (build, baselines, drain)',
      xLabel: 's since agent start',
      yLabel: 'MB',
      series: [
        {
          label: 'RSS',
          points: rec.agent.rss.samples.map((s) => ({
            x: (s.t - t0) / 1000,
            y: (s.rssKb * 1024) / MB,
          })),
        },
        {
          label: 'RSS anonymous',
          points: rec.agent.rss.samples.map((s) => ({
            x: (s.t - t0) / 1000,
            y: (s.anonKb * 1024) / MB,
          })),
        },
        ...(rec.agent.heap.length
          ? [
              {
                label: 'V8 heap total',
                points: rec.agent.heap.map((h) => ({ x: (h.t - t0) / 1000, y: h.heapTotal / MB })),
              },
              {
                label: 'V8 heap used',
                points: rec.agent.heap.map((h) => ({ x: (h.t - t0) / 1000, y: h.heapUsed / MB })),
              },
              {
                label: 'external (Buffers)',
                points: rec.agent.heap.map((h) => ({ x: (h.t - t0) / 1000, y: h.external / MB })),
              },
            ]
          : []),
        {
          label: 'drain (start → end)',
          points: [
            { x: (drain.tResume - t0) / 1000, y: 0 },
            { x: (drain.tResume - t0) / 1000, y: max ?? 0 },
            { x: (drain.tEnd - t0) / 1000, y: max ?? 0 },
            { x: (drain.tEnd - t0) / 1000, y: 0 },
          ],
          dashed: true,
        },
        ...marks
          .filter((m): m is number => m !== null)
          .map((m, i) => ({
            label: i === 0 ? '10 % drained' : '90 % drained',
            points: [
              { x: (m - t0) / 1000, y: 0 },
              { x: (m - t0) / 1000, y: max ?? 0 },
            ],
            dashed: true,
          })),
      ],
      refs: [{ label: 'target 150 MB', y: PEAK_TARGET_MB }],
    });
    return {
      figures,
      charts,
      cpu: [],
      notes,
      data: { perAgent: per, drain: { r10, r90, median: med, max, samples: samples.length } },
    };
  },
};
