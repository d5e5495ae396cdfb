/**
 * The shapes every benchmark scenario returns. A scenario is a module in
 * scripts/bench/scenarios/ that exports a `Scenario`; run.ts runs the selected
 * ones in order, collects their `ScenarioResult`s into bench/results/<date>.json
 * and renders bench/RESULTS.md from that JSON alone (so a report can be
 * re-rendered later with `--render <json>`).
 */
import type { BenchContext } from './context.ts';

/** A figure's target: `pass` is null when the figure could not be measured. */
export interface Target {
  /** Shown in the table, e.g. "≥ 100,000 ev/s" or "≥ 0.8 × kafkajs". */
  text: string;
  pass: boolean | null;
}

export interface Baseline {
  label: string;
  value: number | null;
  unit: string;
  /** figure / baseline (higher-is-better figures) or baseline / figure (lower-is-better); null when either is missing. */
  ratio: number | null;
  /** How the ratio is read, e.g. "kedge / baseline". */
  ratioText?: string;
}

export interface Figure {
  /** Stable id inside the scenario, e.g. "events_per_s". */
  id: string;
  label: string;
  value: number | null;
  unit: string;
  /** Digits after the decimal point when shown. */
  digits?: number;
  target: Target | null;
  baselines: Baseline[];
  /** A short remark shown under the table (e.g. how it was measured). */
  note?: string;
}

export interface XY {
  x: number;
  y: number;
}

export interface LineSeries {
  label: string;
  points: XY[];
  dashed?: boolean;
}

/** Chart descriptions, rendered to hand-written SVG by lib/svg.ts. */
export type ChartSpec =
  | {
      kind: 'line';
      id: string;
      title: string;
      xLabel: string;
      yLabel: string;
      series: LineSeries[];
      /** Horizontal reference lines (targets). */
      refs?: { label: string; y: number }[];
    }
  | {
      kind: 'bars';
      id: string;
      title: string;
      unit: string;
      bars: { label: string; value: number; group?: string }[];
      refs?: { label: string; y: number }[];
    };

/** CPU use of one process (or group) over a measurement window, in % of one core. */
export interface CpuShare {
  role: string;
  pctOfCore: number;
}

export interface CpuReport {
  /** Which window, e.g. "kedge ingest". */
  window: string;
  seconds: number;
  shares: CpuShare[];
  /** Busy share of the whole machine (all cores), % of one core. */
  machineBusyPctOfCore: number;
  /** machine busy minus every process of this bench: other users of the machine. */
  othersPctOfCore: number;
}

export interface ScenarioResult {
  figures: Figure[];
  charts: ChartSpec[];
  cpu: CpuReport[];
  notes: string[];
  /** Anything else worth keeping in the JSON (raw numbers for later analysis). */
  data?: Record<string, unknown>;
}

export interface ScenarioReport extends ScenarioResult {
  name: string;
  title: string;
  description: string;
  seconds: number;
  error: string | null;
}

export interface Scenario {
  /** Used by `--only`, file names and chart ids: lower-case, dashes. */
  name: string;
  title: string;
  /** One paragraph for RESULTS.md: what is measured and against what. */
  description: string;
  /** Needs the Kafka broker (started once, before the first scenario that needs it). */
  needsKafka: boolean;
  /** Scenarios whose results this one reads (ctx.shared); `--only` pulls them in. */
  after?: string[];
  /** Summaries over the whole run (e.g. peak RSS of every agent): run after every other scenario. */
  last?: boolean;
  /** Rough wall time in seconds, for the plan printed at the start. */
  estimateSeconds(quick: boolean): number;
  run(ctx: BenchContext): Promise<ScenarioResult>;
}

export interface MachineInfo {
  cores: number;
  cpuModel: string;
  memoryBytes: number;
  kernel: string;
  os: string;
  loadavgStart: number[];
  loadavgEnd: number[];
  disk: string;
  /** write + fdatasync of 40 KiB in the temp dir, in a loop for ~2 s at the start: what one durable commit costs at least. */
  fsync: { perS: number; p50Ms: number; p99Ms: number } | null;
  /** --wait-quiet: how long the run waited for a quiet machine, and how busy it was when it started. */
  quietWait?: { waitedS: number; busyPct: number };
}

export interface AgentInfo {
  mode: 'executable' | 'source';
  command: string[];
  /** V8/Node flags kedge runs with (source: agent/runtime-flags.ts; executable: its embedded execArgv, when known). */
  nodeFlags: string[];
  /** Extra environment for every agent (--agent-env), for experiments. */
  env?: Record<string, string>;
  /** Why the executable was or was not used, staleness, flags. */
  notes: string[];
}

export interface BenchReport {
  kind: 'kedge-bench';
  schema: 1;
  date: string;
  startedAt: string;
  finishedAt: string;
  seconds: number;
  quick: boolean;
  only: string[] | null;
  machine: MachineInfo;
  versions: Record<string, string>;
  agent: AgentInfo;
  scenarios: ScenarioReport[];
}
