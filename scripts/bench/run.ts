/**
 * `npm run bench`: kedge's benchmark. Runs every scenario of
 * scripts/bench/scenarios/ (each figure beside its baseline, measured in the
 * same run on the same machine), prints the table, writes
 * bench/results/<date>.json and renders bench/RESULTS.md with SVG charts.
 *
 *   npm run bench                      the full run (~10-15 minutes on 2 cores)
 *   npm run bench -- --quick           a short smoke run (~3 minutes; not the real figures)
 *   npm run bench -- --only forward-backlog,rss
 *   npm run bench -- --from-source --cpu-prof --only ingest-single
 *   npm run bench -- --render bench/results/2026-11-24.json
 *
 * See scripts/bench/README.md.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { chooseAgent } from './lib/agent.ts';
import { BenchContext } from './lib/context.ts';
import { machineInfo, versions } from './lib/machine.ts';
import { loadavg, machineCpu } from './lib/procfs.ts';
import { consoleTable, writeReport } from './lib/report.ts';
import type { BenchReport, Scenario, ScenarioReport, ScenarioResult } from './lib/types.ts';
import { SCENARIOS } from './scenarios/index.ts';
import { formatSummary, summarize } from './profile-summary.ts';

const REPO = resolve(import.meta.dirname, '../..');
const BENCH = join(REPO, 'bench');

const USAGE = `usage: npm run bench [-- options]

  --quick              short smoke run (a few minutes; figures are not the real ones)
  --only a,b           run only these scenarios (plus the ones they read from)
  --list               list the scenarios and exit
  --from-source        run kedge from source (node + agent/runtime-flags.ts) even if dist/kedge-linux-x64 exists
  --exe PATH           run this kedge executable
  --cpu-prof           profile every kedge process (implies --from-source); summaries next to the results
  --agent-env K=V      extra environment for every kedge process (repeatable; for experiments such as
                       MALLOC_ARENA_MAX=2; recorded in the report)
  --keep               keep the temporary data directories
  --out DIR            results directory (default bench/results)
  --max-minutes N      start no new scenario after N minutes (default 25)
  --wait-quiet MIN     first wait (at most MIN minutes) until other processes use < 25 % of one core
                       over 10 s: on a shared machine, a busy neighbour changes every figure
  --render JSON        only re-render the report of an earlier results file
`;

/** Waits until the machine's busy CPU (nothing of the bench runs yet) is below `pct` % of one core over 10 s. */
async function waitQuiet(
  maxMinutes: number,
  pct = 25,
): Promise<{ waitedS: number; busyPct: number }> {
  const t0 = performance.now();
  let busy = Infinity;
  for (;;) {
    const a = machineCpu();
    await new Promise((r) => setTimeout(r, 10_000));
    const b = machineCpu();
    busy = (100 * (b.busy - a.busy)) / 10;
    const waited = (performance.now() - t0) / 1000;
    process.stderr.write(
      `machine busy ${busy.toFixed(0)} % of one core (waited ${waited.toFixed(0)} s)\n`,
    );
    if (busy < pct || waited > maxMinutes * 60) return { waitedS: waited, busyPct: busy };
  }
}

function fail(msg: string): never {
  process.stderr.write(`bench: ${msg}\n`);
  process.exit(2);
}

function select(only: string[] | null): Scenario[] {
  if (!only) return order([...SCENARIOS]);
  const want = new Set<string>();
  const add = (name: string): void => {
    const s = SCENARIOS.find((x) => x.name === name);
    if (!s) fail(`no scenario "${name}" (have: ${SCENARIOS.map((x) => x.name).join(', ')})`);
    if (want.has(name)) return;
    want.add(name);
    for (const dep of s.after ?? []) add(dep);
  };
  for (const n of only) add(n);
  return order(SCENARIOS.filter((s) => want.has(s.name)));
}

/** Registry order, with the `last` (whole-run summary) scenarios moved to the end. */
function order(list: Scenario[]): Scenario[] {
  return [...list.filter((s) => !s.last), ...list.filter((s) => s.last)];
}

function today(): string {
  const d = new Date();
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<never>(
      (_, rej) =>
        (t = setTimeout(
          () => rej(new Error(`${what} did not finish within ${Math.round(ms / 1000)} s`)),
          ms,
        )),
    ),
  ]).finally(() => clearTimeout(t));
}

/** Where a run's files go: a full run is the report of record; partial runs do not overwrite it. */
function outputNames(
  date: string,
  quick: boolean,
  only: string[] | null,
  profiling: boolean,
  agentEnv: boolean,
  resultsDir: string,
): { name: string; markdown: string } {
  const tags = [
    quick ? 'quick' : '',
    only ? `only-${only.join('+')}` : '',
    profiling ? 'profile' : '',
    agentEnv ? 'env' : '',
  ].filter(Boolean);
  if (tags.length === 0) return { name: date, markdown: join(BENCH, 'RESULTS.md') };
  const name = `${date}-${tags.join('-')}`;
  return { name, markdown: join(resultsDir, `${name}.md`) };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      list: { type: 'boolean', default: false },
      'from-source': { type: 'boolean', default: false },
      exe: { type: 'string' },
      'cpu-prof': { type: 'boolean', default: false },
      keep: { type: 'boolean', default: false },
      out: { type: 'string' },
      'max-minutes': { type: 'string' },
      render: { type: 'string' },
      'wait-quiet': { type: 'string' },
      'agent-env': { type: 'string', multiple: true },
      help: { type: 'boolean', short: 'h', default: false },
    },
    allowPositionals: false,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  if (values.list) {
    for (const s of SCENARIOS)
      process.stdout.write(
        `${s.name.padEnd(18)} ${s.title} (~${s.estimateSeconds(false)} s, quick ~${s.estimateSeconds(true)} s)\n`,
      );
    return;
  }
  const resultsDir = resolve(values.out ?? join(BENCH, 'results'));

  if (values.render) {
    const file = resolve(values.render);
    const report = JSON.parse(readFileSync(file, 'utf8')) as BenchReport;
    const name = basename(file, '.json');
    const markdown =
      name === report.date ? join(BENCH, 'RESULTS.md') : join(resultsDir, `${name}.md`);
    const w = writeReport(report, resultsDir, name, markdown, file);
    process.stdout.write(consoleTable(report) + '\n');
    process.stdout.write(
      `\nrendered ${relative(REPO, w.markdown)} and ${w.charts.length} charts\n`,
    );
    return;
  }

  const quick = values.quick!;
  const only = values.only
    ? values.only
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean)
    : null;
  const scenarios = select(only);
  const maxMinutes = values['max-minutes'] ? Number(values['max-minutes']) : 25;
  if (!(maxMinutes > 0)) fail('--max-minutes needs a positive number');
  const date = today();
  const names = outputNames(
    date,
    quick,
    only,
    values['cpu-prof']!,
    (values['agent-env'] ?? []).length > 0,
    resultsDir,
  );
  const profDir = values['cpu-prof'] ? join(resultsDir, names.name, 'profiles') : null;
  if (profDir) mkdirSync(profDir, { recursive: true });

  let quiet: { waitedS: number; busyPct: number } | null = null;
  if (values['wait-quiet'] !== undefined) {
    const m = Number(values['wait-quiet']);
    if (!(m >= 0)) fail('--wait-quiet needs a number of minutes');
    quiet = await waitQuiet(m);
  }
  const agentInfo = await chooseAgent({
    fromSource: values['from-source']!,
    exe: values.exe ? resolve(values.exe) : null,
    cpuProfDir: profDir,
  });
  for (const kv of values['agent-env'] ?? []) {
    const eq = kv.indexOf('=');
    if (eq <= 0) fail(`--agent-env needs NAME=VALUE, not "${kv}"`);
    (agentInfo.env ??= {})[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  if (agentInfo.env)
    agentInfo.notes.push(
      `extra environment (--agent-env): ${Object.entries(agentInfo.env)
        .map(([k, v]) => `${k}=${v}`)
        .join(' ')}`,
    );
  const ctx = new BenchContext({ quick, only, keep: values.keep! }, agentInfo);
  const machine = machineInfo();
  if (quiet) machine.quietWait = quiet;
  const vers = versions(agentInfo);
  const startedAt = new Date();
  const t0 = performance.now();

  process.stderr.write(
    `kedge bench${quick ? ' (quick)' : ''}: ${scenarios.map((s) => s.name).join(', ')}\n`,
  );
  process.stderr.write(
    `machine: ${machine.cores} cores, ${machine.cpuModel}, ${(machine.memoryBytes / 2 ** 30).toFixed(1)} GiB, load ${machine.loadavgStart.join(' ')}, ${machine.fsync ? `${machine.fsync.perS.toFixed(0)} fsync/s` : ''}\n`,
  );
  process.stderr.write(
    `kedge runs as ${agentInfo.mode}: ${agentInfo.command.join(' ')}\n${agentInfo.notes.map((n) => `  - ${n}\n`).join('')}`,
  );
  const est =
    scenarios.reduce((s, x) => s + x.estimateSeconds(quick), 0) +
    (scenarios.some((s) => s.needsKafka) ? 40 : 0);
  process.stderr.write(`estimated ${Math.ceil(est / 60)} minutes\n`);

  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\nbench: ${sig}, cleaning up...\n`);
    ctx.close().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const reports: ScenarioReport[] = [];
  try {
    // The broker first, when any scenario needs it: its start-up (JIT, log recovery) must not overlap a measurement.
    if (scenarios.some((s) => s.needsKafka)) {
      await ctx.kafka();
      await new Promise((r) => setTimeout(r, quick ? 2000 : 5000));
    }
    for (const s of scenarios) {
      if ((performance.now() - t0) / 60_000 > maxMinutes) {
        reports.push({
          name: s.name,
          title: s.title,
          description: s.description,
          seconds: 0,
          error: `skipped: the run passed --max-minutes ${maxMinutes}`,
          figures: [],
          charts: [],
          cpu: [],
          notes: [],
        });
        continue;
      }
      ctx.scenario = s.name;
      const ts = performance.now();
      let res: ScenarioResult | null = null;
      let error: string | null = null;
      ctx.log(`--- ${s.title}`);
      try {
        res = await withTimeout(s.run(ctx), 1000 * (s.estimateSeconds(quick) * 4 + 180), s.name);
      } catch (e) {
        error = (e as Error)?.stack ?? String(e);
        ctx.log(`FAILED: ${error}`);
      } finally {
        await ctx.runCleanups();
      }
      reports.push({
        name: s.name,
        title: s.title,
        description: s.description,
        seconds: (performance.now() - ts) / 1000,
        error,
        ...(res ?? { figures: [], charts: [], cpu: [], notes: [] }),
      });
      ctx.scenario = '';
    }
  } finally {
    await ctx.close();
  }
  machine.loadavgEnd = loadavg();

  if (profDir) {
    const byPid = new Map(ctx.agents.map((a) => [a.agent.pid, a.scenario]));
    for (const f of readdirSync(profDir).filter((x) => x.endsWith('.cpuprofile'))) {
      const pid = Number(f.split('.')[3]); // CPU.<date>.<time>.<pid>.<tid>.<seq>.cpuprofile
      const txt = join(profDir, f.replace(/\.cpuprofile$/, `.${byPid.get(pid) ?? 'unknown'}.txt`));
      try {
        writeFileSync(txt, formatSummary(summarize(join(profDir, f), 40)) + '\n');
        process.stderr.write(
          `profile of ${byPid.get(pid) ?? `pid ${pid}`}: ${relative(REPO, txt)}\n`,
        );
        for (const ph of ctx.phases.filter((x) => x.pid === pid)) {
          const w = { fromMs: ph.from - ph.spawnedAt, toMs: ph.to - ph.spawnedAt };
          const ptxt = join(profDir, f.replace(/\.cpuprofile$/, `.${ph.scenario}.${ph.name}.txt`));
          writeFileSync(
            ptxt,
            `phase "${ph.name}" of ${ph.scenario}: ${(w.fromMs / 1000).toFixed(1)}-${(w.toMs / 1000).toFixed(1)} s after spawn\n` +
              formatSummary(summarize(join(profDir, f), 40, w)) +
              '\n',
          );
          process.stderr.write(`  phase ${ph.name}: ${relative(REPO, ptxt)}\n`);
        }
      } catch (e) {
        process.stderr.write(`could not summarise ${f}: ${(e as Error).message}\n`);
      }
    }
  }

  const report: BenchReport = {
    kind: 'kedge-bench',
    schema: 1,
    date,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    seconds: (performance.now() - t0) / 1000,
    quick,
    only,
    machine,
    versions: vers,
    agent: agentInfo,
    scenarios: reports,
  };
  if (!existsSync(resultsDir)) mkdirSync(resultsDir, { recursive: true });
  const w = writeReport(report, resultsDir, names.name, names.markdown);
  process.stdout.write('\n' + consoleTable(report) + '\n\n');
  for (const s of reports)
    if (s.error) process.stdout.write(`${s.name} FAILED: ${s.error.split('\n')[0]}\n`);
  process.stdout.write(
    `wrote ${relative(REPO, w.json)}, ${relative(REPO, w.markdown)} and ${w.charts.length} charts in ${(report.seconds / 60).toFixed(1)} minutes\n`,
  );
  process.exitCode = reports.some((s) => s.error) ? 1 : 0;
}

main().catch((e) => {
  process.stderr.write(`bench: ${(e as Error)?.stack ?? e}\n`);
  process.exit(1);
});
