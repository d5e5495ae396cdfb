/**
 * Runs kedge for the benchmark: the single executable dist/kedge-linux-x64
 * when it exists (what ships), else the source with the runtime flags kedge
 * ships with (agent/runtime-flags.ts). Each agent gets a fresh data dir, an
 * RSS sampler (every 250 ms) and small helpers for the HTTP API.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { request } from 'undici';
import { NODE_FLAGS } from '../../../agent/runtime-flags.ts';
import { AgentProc, REPO } from '../../../test/helpers/agent.ts';
import { RssSampler } from './procfs.ts';
import type { AgentInfo } from './types.ts';

export interface AgentChoice {
  fromSource: boolean;
  exe: string | null;
  cpuProfDir: string | null;
}

const DEFAULT_EXE = join(REPO, 'dist', `kedge-linux-${process.arch}`);
const SEA_CONFIG = join(REPO, 'dist', '.build', 'sea-config.json');

/** Decides how the agent is run and says why (for the report). */
export async function chooseAgent(c: AgentChoice): Promise<AgentInfo> {
  const notes: string[] = [];
  const source = (why: string): AgentInfo => {
    const prof = c.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${c.cpuProfDir}`] : [];
    notes.push(
      why,
      `node flags: ${[...NODE_FLAGS, ...prof].join(' ')} (agent/runtime-flags.ts${prof.length ? ' + profiling' : ''}), Node ${process.version}`,
    );
    return {
      mode: 'source',
      command: [process.execPath, ...NODE_FLAGS, ...prof, join(REPO, 'agent/cli.ts')],
      nodeFlags: [...NODE_FLAGS],
      notes,
    };
  };
  if (c.cpuProfDir)
    return source(
      'from source because --cpu-prof was given (readable function names in the profile)',
    );
  if (c.fromSource) return source('from source because --from-source was given');
  const exe = c.exe ?? DEFAULT_EXE;
  if (!existsSync(exe))
    return source(`from source: ${relative(REPO, exe)} does not exist (npm run build makes it)`);
  notes.push(
    `the single executable ${relative(REPO, exe)} (${(statSync(exe).size / 1048576).toFixed(1)} MiB, built ${statSync(exe).mtime.toISOString()})`,
  );
  try {
    const { staleness } = await import('../../build/freshness.ts');
    const s = staleness([process.arch === 'arm64' ? 'arm64' : 'x64'], ['exe']);
    if (s.stale)
      notes.push(
        `WARNING: the executable is older than the sources (${s.reasons.join('; ')}); it may not contain the latest agent code`,
      );
    else notes.push('the executable is newer than every source file');
  } catch (e) {
    notes.push(`could not check staleness: ${(e as Error).message}`);
  }
  let nodeFlags: string[] = [];
  try {
    const sea = JSON.parse(readFileSync(SEA_CONFIG, 'utf8')) as { execArgv?: string[] };
    const argv = sea.execArgv ?? [];
    nodeFlags = argv;
    const missing = NODE_FLAGS.filter((f) => !argv.includes(f));
    notes.push(
      `embedded execArgv (dist/.build/sea-config.json): ${JSON.stringify(argv)}` +
        (missing.length
          ? `; WARNING: the runtime flags ${missing.join(' ')} of agent/runtime-flags.ts are not embedded, so the executable runs without them`
          : ''),
    );
  } catch {
    notes.push('embedded execArgv unknown (no dist/.build/sea-config.json)');
  }
  return { mode: 'executable', command: [exe], nodeFlags, notes };
}

export interface StartAgentOptions {
  dataDir: string;
  brokers: string;
  /** Pause forwarding right after start (before any event arrives). */
  paused?: boolean;
  env?: Record<string, string>;
}

export class BenchAgent {
  readonly proc: AgentProc;
  readonly rss: RssSampler;
  readonly label: string;
  readonly startMs: number;
  /** performance.now() just before the process was spawned (a CPU profile's time 0, near enough). */
  readonly spawnedAt: number;

  private constructor(proc: AgentProc, label: string, startMs: number, spawnedAt: number) {
    this.proc = proc;
    this.label = label;
    this.startMs = startMs;
    this.spawnedAt = spawnedAt;
    this.rss = new RssSampler(proc.child.pid!, 250);
  }

  static async start(info: AgentInfo, label: string, o: StartAgentOptions): Promise<BenchAgent> {
    const t = performance.now();
    const proc = await AgentProc.start({
      command: info.command,
      env: {
        KEDGE_DATA_DIR: o.dataDir,
        KEDGE_KAFKA_BROKERS: o.brokers,
        KEDGE_SYNC: 'full',
        KEDGE_STORAGE: 'sqlite',
        KEDGE_COMPRESSION: 'zstd',
        // Far above what any scenario writes: retention must not take part.
        KEDGE_DISK_QUOTA: '16GiB',
        KEDGE_LOG_LEVEL: 'warn',
        ...info.env,
        ...o.env,
      },
    });
    const a = new BenchAgent(proc, label, performance.now() - t, t);
    if (o.paused) await a.pause();
    return a;
  }

  get pid(): number {
    return this.proc.child.pid!;
  }

  get base(): string {
    return this.proc.base;
  }

  async pause(): Promise<void> {
    await this.post('/v1/forwarding/pause');
  }

  async resume(): Promise<void> {
    await this.post('/v1/forwarding/resume');
  }

  private async post(path: string): Promise<void> {
    const r = await request(`${this.base}${path}`, { method: 'POST' });
    const text = await r.body.text();
    if (r.statusCode !== 200) throw new Error(`POST ${path}: ${r.statusCode} ${text}`);
  }

  async status(): Promise<any> {
    return this.proc.status();
  }

  async metricsText(): Promise<string> {
    const r = await request(`${this.base}/metrics`);
    return r.body.text();
  }

  /** Sum of every sample of a metric whose name and labels match, from /metrics. */
  static metric(text: string, name: string, labelFilter?: RegExp): number | null {
    let sum = 0;
    let found = false;
    for (const line of text.split('\n')) {
      if (!line.startsWith(name)) continue;
      const rest = line.slice(name.length);
      if (rest[0] !== ' ' && rest[0] !== '{') continue;
      if (labelFilter && !labelFilter.test(rest)) continue;
      const v = Number(line.slice(line.lastIndexOf(' ') + 1));
      if (Number.isFinite(v)) {
        sum += v;
        found = true;
      }
    }
    return found ? sum : null;
  }

  /** V8 heap and external memory from /metrics, sampled while `heapSampling` runs (for attributing RSS). */
  readonly heap: {
    t: number;
    heapTotal: number;
    heapUsed: number;
    external: number;
    newSpace: number;
  }[] = [];
  private heapTimer: NodeJS.Timeout | null = null;

  /** Samples /metrics every `ms` (each scrape costs the agent ~1-2 ms of CPU). */
  startHeapSampling(ms = 1000): void {
    if (this.heapTimer) return;
    const tick = async () => {
      try {
        const m = await this.metricsText();
        this.heap.push({
          t: performance.now(),
          heapTotal: BenchAgent.metric(m, 'kedge_nodejs_heap_size_total_bytes') ?? 0,
          heapUsed: BenchAgent.metric(m, 'kedge_nodejs_heap_size_used_bytes') ?? 0,
          external: BenchAgent.metric(m, 'kedge_nodejs_external_memory_bytes') ?? 0,
          newSpace:
            BenchAgent.metric(m, 'kedge_nodejs_heap_space_size_total_bytes', /space="new"/) ?? 0,
        });
      } catch {
        /* agent stopping */
      }
    };
    void tick();
    this.heapTimer = setInterval(tick, ms);
    this.heapTimer.unref();
  }

  async stop(): Promise<void> {
    if (this.heapTimer) clearInterval(this.heapTimer);
    this.rss.stop();
    await this.proc.stop();
  }
}
