/**
 * What a scenario gets from the runner: options, durations scaled for --quick,
 * the Kafka broker (started once, on first use), agents with RSS sampling,
 * workers, temp folders, CPU windows, and cleanup that runs after each
 * scenario whatever happens.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTopic, startKafka, type KafkaCluster } from '../../kafka/kafka.ts';
import { BenchAgent, type StartAgentOptions } from './agent.ts';
import { startWorker, type Worker } from './children.ts';
import { CpuWindow } from './procfs.ts';
import type { AgentInfo, CpuReport } from './types.ts';
import type { LoadConfig, LoadResult } from '../workers/loadgen.ts';

export interface BenchOptions {
  quick: boolean;
  only: string[] | null;
  keep: boolean;
}

export interface AgentRecord {
  scenario: string;
  label: string;
  agent: BenchAgent;
}

export class BenchContext {
  readonly opts: BenchOptions;
  readonly agentInfo: AgentInfo;
  /** Results one scenario leaves for a later one (see Scenario.after). */
  readonly shared = new Map<string, unknown>();
  /** Every agent started in this run, with its RSS samples (the rss scenario reads them). */
  readonly agents: AgentRecord[] = [];
  scenario = '';
  /** Phases of an agent's life worth their own profile summary with --cpu-prof (performance.now() ms). */
  readonly phases: {
    pid: number;
    spawnedAt: number;
    scenario: string;
    name: string;
    from: number;
    to: number;
  }[] = [];
  private cluster: KafkaCluster | null = null;
  private kafkaStarting: Promise<KafkaCluster> | null = null;
  private readonly cleanups: (() => unknown)[] = [];
  private readonly dirs: string[] = [];
  kafkaStartSeconds: number | null = null;

  constructor(opts: BenchOptions, agentInfo: AgentInfo) {
    this.opts = opts;
    this.agentInfo = agentInfo;
  }

  log(msg: string): void {
    process.stderr.write(`[bench${this.scenario ? ` ${this.scenario}` : ''}] ${msg}\n`);
  }

  /** Milliseconds: `full` seconds normally, `quick` seconds with --quick. */
  ms(full: number, quick: number): number {
    return 1000 * (this.opts.quick ? quick : full);
  }

  /** A count scaled for --quick. */
  n(full: number, quick: number): number {
    return this.opts.quick ? quick : full;
  }

  get kafkaRunning(): boolean {
    return this.cluster !== null;
  }

  /** The broker, started on first call: one KRaft node, full JIT (the harness's choice for throughput). */
  kafka(): Promise<KafkaCluster> {
    if (this.cluster) return Promise.resolve(this.cluster);
    this.kafkaStarting ??= (async () => {
      const t = performance.now();
      this.log('starting Kafka (one KRaft node, full JIT)...');
      const c = await startKafka({ brokers: 1, jit: 'full' });
      this.kafkaStartSeconds = (performance.now() - t) / 1000;
      this.log(`Kafka ${c.version} up at ${c.bootstrap} in ${this.kafkaStartSeconds.toFixed(1)} s`);
      this.cluster = c;
      return c;
    })();
    return this.kafkaStarting;
  }

  kafkaPid(): number | undefined {
    return this.cluster?.nodes[0]?.pid ?? undefined;
  }

  /** Where an agent finds the broker; a closed port when Kafka is not running (forwarding stays paused then). */
  brokers(): string {
    return this.cluster?.bootstrap ?? '127.0.0.1:1';
  }

  async topic(name: string, partitions = 3, configs?: Record<string, string>): Promise<string> {
    const c = await this.kafka();
    await createTopic(c.bootstrap, name, partitions, 1, configs);
    return name;
  }

  tmp(prefix: string): string {
    const d = mkdtempSync(join(tmpdir(), `kedge-bench-${prefix}-`));
    this.dirs.push(d);
    return d;
  }

  /** Runs after the current scenario (last registered first). */
  defer(fn: () => unknown): void {
    this.cleanups.push(fn);
  }

  async startAgent(
    label: string,
    o: Omit<StartAgentOptions, 'dataDir' | 'brokers'> & { dataDir?: string; brokers?: string } = {},
  ): Promise<BenchAgent> {
    const a = await BenchAgent.start(this.agentInfo, label, {
      dataDir: o.dataDir ?? this.tmp('agent'),
      brokers: o.brokers ?? this.brokers(),
      ...o,
    });
    this.agents.push({ scenario: this.scenario, label, agent: a });
    this.defer(() => a.stop());
    return a;
  }

  /** Starts the load generator (a child process); await `.result`. */
  load(config: LoadConfig): Worker<LoadResult> {
    return this.worker<LoadResult>(
      'loadgen.ts',
      config,
      (config.durationMs ?? 600_000) + config.warmupMs + 120_000,
    );
  }

  /** A CPU window that opens after `delayMs` (e.g. the load's warm-up); `stop()` closes it. */
  cpuAfter(
    delayMs: number,
    label: string,
    pids: Record<string, number | undefined>,
  ): { stop(): Promise<CpuReport> } {
    const w = new Promise<CpuWindow>((r) => setTimeout(() => r(this.cpu(label, pids)), delayMs));
    return { stop: async () => (await w).stop() };
  }

  worker<R>(
    script: string,
    request: unknown,
    timeoutMs: number,
    hooks: { onProgress?: (p: any) => void; onReady?: (i: any) => void; execArgv?: string[] } = {},
  ): Worker<R> {
    const w = startWorker<R>(script, request, { timeoutMs, ...hooks });
    this.defer(() => w.kill());
    return w;
  }

  cpu(label: string, pids: Record<string, number | undefined>): CpuWindow {
    return new CpuWindow(label, { ...pids, kafka: this.kafkaPid() });
  }

  /** Marks a phase of an agent (e.g. the drain) for a separate profile summary. */
  phase(agent: BenchAgent, name: string, from: number, to: number): void {
    this.phases.push({
      pid: agent.pid,
      spawnedAt: agent.spawnedAt,
      scenario: this.scenario,
      name,
      from,
      to,
    });
  }

  async runCleanups(): Promise<void> {
    while (this.cleanups.length) {
      const fn = this.cleanups.pop()!;
      try {
        await fn();
      } catch (e) {
        this.log(`cleanup failed: ${(e as Error).message}`);
      }
    }
  }

  async close(): Promise<void> {
    await this.runCleanups();
    if (this.cluster) await this.cluster.stop().catch(() => {});
    this.cluster = null;
    if (!this.opts.keep) for (const d of this.dirs) rmSync(d, { recursive: true, force: true });
  }
}
