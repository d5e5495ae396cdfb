/**
 * Turns a BenchReport (the JSON) into the console table and bench/RESULTS.md
 * with one SVG file per chart. Everything here reads the JSON only, so an old
 * result can be re-rendered with `npm run bench -- --render <json>`.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import type { BenchReport, Figure, ScenarioReport } from './types.ts';
import { fmt } from './figures.ts';
import { renderChart } from './svg.ts';

export interface Row {
  scenario: string;
  figure: string;
  measured: string;
  target: string;
  baseline: string;
  ratio: string;
  result: string;
}

function value(f: Figure): string {
  return f.value === null ? 'n/a' : `${fmt(f.value, f.digits ?? 0)} ${f.unit}`;
}

function result(f: Figure): string {
  if (!f.target) return '—';
  if (f.target.pass === null) return 'n/a';
  return f.target.pass ? 'pass' : 'MISS';
}

export function rows(r: BenchReport): Row[] {
  const out: Row[] = [];
  for (const s of r.scenarios) {
    if (s.error && s.figures.length === 0) {
      out.push({
        scenario: s.name,
        figure: 'FAILED',
        measured: s.error.split('\n')[0].slice(0, 100),
        target: '',
        baseline: '',
        ratio: '',
        result: 'n/a',
      });
      continue;
    }
    for (const f of s.figures) {
      const b = f.baselines;
      const first: Row = {
        scenario: s.name,
        figure: f.label,
        measured: value(f),
        target: f.target?.text ?? '—',
        baseline: b[0]
          ? `${b[0].label}: ${b[0].value === null ? 'n/a' : `${fmt(b[0].value, f.digits ?? 0)} ${b[0].unit}`}`
          : '—',
        ratio: b[0]?.ratio != null ? `${b[0].ratio.toFixed(2)}×` : '—',
        result: result(f),
      };
      out.push(first);
      for (const x of b.slice(1)) {
        out.push({
          scenario: '',
          figure: '',
          measured: '',
          target: '',
          baseline: `${x.label}: ${x.value === null ? 'n/a' : `${fmt(x.value, f.digits ?? 0)} ${x.unit}`}`,
          ratio: x.ratio != null ? `${x.ratio.toFixed(2)}×` : '—',
          result: '',
        });
      }
    }
  }
  return out;
}

const HEAD: Row = {
  scenario: 'scenario',
  figure: 'figure',
  measured: 'measured',
  target: 'target',
  baseline: 'baseline (same run)',
  ratio: 'ratio',
  result: 'result',
};
const COLS = Object.keys(HEAD) as (keyof Row)[];

export function consoleTable(r: BenchReport): string {
  const all = [HEAD, ...rows(r)];
  const width = Object.fromEntries(
    COLS.map((c) => [c, Math.max(...all.map((x) => x[c].length))]),
  ) as Record<keyof Row, number>;
  const line = (x: Row) => COLS.map((c) => x[c].padEnd(width[c])).join(' | ');
  const sep = COLS.map((c) => '-'.repeat(width[c])).join('-+-');
  return [line(HEAD), sep, ...all.slice(1).map(line)].join('\n');
}

function mdEscape(s: string): string {
  return s.replace(/\|/g, '\\|');
}

function mdTable(r: BenchReport): string {
  const body = rows(r).map(
    (x) =>
      `| ${COLS.map((c) => mdEscape(c === 'result' && x.result === 'MISS' ? '**MISS**' : x[c])).join(' | ')} |`,
  );
  return [
    `| ${COLS.map((c) => HEAD[c]).join(' | ')} |`,
    `|${COLS.map(() => '---').join('|')}|`,
    ...body,
  ].join('\n');
}

function cpuTables(s: ScenarioReport): string {
  if (!s.cpu.length) return '';
  const out = [
    'CPU during the measured windows (% of one core; the machine has 200 % on 2 cores):',
    '',
  ];
  out.push(
    '| window | s | ' + 'processes | machine busy | other users of the machine |',
    '|---|---|---|---|---|',
  );
  for (const c of s.cpu) {
    const shares = c.shares
      .filter((x) => x.pctOfCore >= 0.5)
      .map((x) => `${x.role} ${fmt(x.pctOfCore)} %`)
      .join(', ');
    out.push(
      `| ${mdEscape(c.window)} | ${c.seconds.toFixed(1)} | ${mdEscape(shares)} | ${fmt(c.machineBusyPctOfCore)} % | ${fmt(c.othersPctOfCore)} % |`,
    );
  }
  return out.join('\n') + '\n';
}

export interface Written {
  json: string;
  markdown: string;
  charts: string[];
}

/**
 * Writes `<name>.json` and the charts into `resultsDir/<name>/`, and the
 * markdown report to `markdownFile` (links relative to it).
 */
export function writeReport(
  r: BenchReport,
  resultsDir: string,
  name: string,
  markdownFile: string,
  jsonAlreadyAt?: string,
): Written {
  mkdirSync(resultsDir, { recursive: true });
  const json = jsonAlreadyAt ?? join(resultsDir, `${name}.json`);
  if (!jsonAlreadyAt) writeFileSync(json, JSON.stringify(r, null, 1) + '\n');
  const chartDir = join(resultsDir, name);
  mkdirSync(chartDir, { recursive: true });
  const charts: string[] = [];
  const mdDir = dirname(markdownFile);
  const chartLinks = new Map<string, string>();
  for (const s of r.scenarios) {
    for (const c of s.charts) {
      const f = join(chartDir, `${c.id}.svg`);
      writeFileSync(f, renderChart(c) + '\n');
      charts.push(f);
      chartLinks.set(c.id, relative(mdDir, f));
    }
  }
  writeFileSync(
    markdownFile,
    markdown(r, chartLinks, relative(mdDir, json), mdDir, relative(REPO, json)),
  );
  return { json, markdown: markdownFile, charts };
}

const REPO = join(import.meta.dirname, '..', '..', '..');

function markdown(
  r: BenchReport,
  chartLinks: Map<string, string>,
  jsonLink: string,
  mdDir: string,
  jsonFromRepo: string,
): string {
  const m = r.machine;
  const misses = r.scenarios.flatMap((s) =>
    s.figures
      .filter((f) => f.target?.pass === false)
      .map((f) => `${s.name}: ${f.label} = ${value(f)} (target ${f.target!.text})`),
  );
  const failed = r.scenarios.filter((s) => s.error);
  const allCpu = r.scenarios.flatMap((s) => s.cpu);
  const others = allCpu.map((c) => c.othersPctOfCore);
  const out: string[] = [];
  out.push(`# kedge benchmark results`, '');
  out.push(
    `Generated by \`npm run bench\`${r.quick ? ' --quick (a smoke run: short durations, 100,000-event backlog; not the real figures)' : ''}${r.only ? ` --only ${r.only.join(',')}` : ''} on ${r.date}; ` +
      `${(r.seconds / 60).toFixed(1)} minutes. Raw figures: [${jsonLink}](${jsonLink}). Re-render: \`npm run bench -- --render ${jsonFromRepo}\`.`,
    '',
  );
  const diag = join(mdDir, 'DIAGNOSIS.md');
  if (existsSync(diag))
    out.push(`Why the misses miss, with profiles: [DIAGNOSIS.md](DIAGNOSIS.md).`, '');
  out.push('## Machine and versions', '');
  out.push(`- **CPU**: ${m.cores} cores, ${m.cpuModel}`);
  out.push(
    `- **Memory**: ${(m.memoryBytes / 2 ** 30).toFixed(1)} GiB; **disk** (data dirs): ${m.disk}`,
  );
  if (m.fsync)
    out.push(
      `- **fsync**: ${fmt(m.fsync.perS)} write+fdatasync/s of 40 KiB in the data dir's file system (p50 ${m.fsync.p50Ms.toFixed(1)} ms, p99 ${m.fsync.p99Ms.toFixed(1)} ms): the floor under every KEDGE_SYNC=full commit`,
    );
  out.push(`- **OS**: ${m.os}, kernel ${m.kernel}`);
  if (m.quietWait)
    out.push(
      `- **Waited ${m.quietWait.waitedS.toFixed(0)} s for a quiet machine** (--wait-quiet); other processes used ${m.quietWait.busyPct.toFixed(0)} % of one core just before the start`,
    );
  out.push(
    `- **Load average** at start ${m.loadavgStart.map((x) => x.toFixed(2)).join(' / ')}, at end ${m.loadavgEnd.map((x) => x.toFixed(2)).join(' / ')}`,
  );
  for (const [k, v] of Object.entries(r.versions)) out.push(`- **${k}**: ${v}`);
  out.push(
    `- **kedge ran as**: ${r.agent.mode === 'executable' ? 'the single executable' : 'source'} — \`${r.agent.command.join(' ')}\``,
  );
  for (const n of r.agent.notes) out.push(`  - ${n}`);
  out.push('');
  out.push(
    'Everything runs on this one machine: the Kafka broker (a JVM), kedge, the load generator and the baselines share its cores, so every ' +
      'figure is "on this 2-core box with the broker beside it", not a property of kedge alone. Each scenario lists the CPU each process used ' +
      'while it was measured, and how much went to processes that are not part of the benchmark (other work on the machine).' +
      (others.length
        ? ` Across the measured windows, other users of the machine took ${fmt(Math.min(...others))}–${fmt(Math.max(...others))} % of one core.`
        : ''),
    '',
  );
  out.push('## Summary', '');
  out.push(mdTable(r), '');
  const contended = r.scenarios.filter((s) => s.cpu.length);
  if (contended.length) {
    out.push(
      'How busy the machine was with work that is not part of the benchmark, per scenario (CPU of other processes during the measured windows, % of one core; the machine has 200 %). Above ~30 % a figure is pulled down by a neighbour, not only by what it measures:',
      '',
    );
    out.push('| scenario | other processes, per measured window |', '|---|---|');
    for (const s of contended)
      out.push(
        `| ${s.name} | ${s.cpu.map((c) => `${mdEscape(c.window)}: ${fmt(c.othersPctOfCore)} %`).join('; ')} |`,
      );
    out.push('');
  }
  if (misses.length) {
    out.push('**Targets missed:**', '');
    for (const x of misses) out.push(`- ${x}`);
    out.push('');
  }
  if (failed.length) {
    out.push('**Scenarios that failed:**', '');
    for (const s of failed) out.push(`- ${s.name}: \`${s.error!.split('\n')[0]}\``);
    out.push('');
  }
  for (const s of r.scenarios) {
    out.push(`## ${s.name}: ${s.title}`, '');
    if (s.description) out.push(s.description, '');
    if (s.error) out.push(`**Failed**: \`${s.error.split('\n')[0]}\``, '');
    for (const c of s.charts) {
      const link = chartLinks.get(c.id);
      if (link) out.push(`![${c.title}](${link})`, '');
    }
    const cpu = cpuTables(s);
    if (cpu) out.push(cpu);
    if (s.notes.length) {
      for (const n of s.notes) out.push(`- ${n}`);
      out.push('');
    }
    const fnotes = s.figures.filter((f) => f.note).map((f) => `- ${f.label}: ${f.note}`);
    if (fnotes.length) out.push(...fnotes, '');
    out.push(`_${s.seconds.toFixed(0)} s._`, '');
  }
  return out.join('\n');
}
