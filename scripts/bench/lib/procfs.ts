/**
 * Reads /proc (Linux) for what the benchmark reports about processes: resident
 * memory of the agent, and CPU time of every process in a measurement window,
 * so CPU contention on this small machine is stated with numbers, not guessed.
 */
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import type { CpuReport } from './types.ts';

let clkTck = 0;
function ticksPerSecond(): number {
  if (clkTck === 0) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

export interface MemSample {
  rssKb: number;
  /** Anonymous memory (heap, stacks, malloc): what the process itself allocated. */
  anonKb: number;
  /** File-backed pages (the executable's code and data mapped from disk): shared and reclaimable, but counted in RSS. */
  fileKb: number;
  /** Peak RSS the kernel saw over the whole life of the process (catches spikes between samples). */
  hwmKb: number;
}

export function readMem(pid: number): MemSample | null {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = /^VmRSS:\s+(\d+) kB/m.exec(s);
    const hwm = /^VmHWM:\s+(\d+) kB/m.exec(s);
    if (!rss) return null;
    const anon = /^RssAnon:\s+(\d+) kB/m.exec(s);
    const file = /^RssFile:\s+(\d+) kB/m.exec(s);
    return {
      rssKb: Number(rss[1]),
      hwmKb: hwm ? Number(hwm[1]) : Number(rss[1]),
      anonKb: anon ? Number(anon[1]) : 0,
      fileKb: file ? Number(file[1]) : 0,
    };
  } catch {
    return null;
  }
}

/** utime+stime of a process (all its threads), in seconds; null once it is gone. */
export function cpuSeconds(pid: number): number | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    return (Number(rest[11]) + Number(rest[12])) / ticksPerSecond();
  } catch {
    return null;
  }
}

/** Busy and total CPU seconds of the whole machine (all cores) since boot. */
export function machineCpu(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0];
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user.
  const idle = v[3] + (v[4] ?? 0);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: (total - idle) / ticksPerSecond(), total: total / ticksPerSecond() };
}

export function loadavg(): number[] {
  try {
    return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);
  } catch {
    return [];
  }
}

/**
 * CPU use of named processes over a window. `pids` maps a role to a pid (or a
 * function giving the current one, for a broker that may restart). The bench
 * process itself is always counted as "bench (this process)".
 */
export class CpuWindow {
  private readonly t0 = process.hrtime.bigint();
  private readonly self0 = process.cpuUsage();
  private readonly m0 = machineCpu();
  private readonly start = new Map<string, number>();
  /** Last reading per role: a process that exits inside the window is counted up to its last poll. */
  private readonly last = new Map<string, number>();
  private readonly pids: Record<string, number | undefined>;
  private readonly label: string;
  private readonly timer: NodeJS.Timeout;

  constructor(label: string, pids: Record<string, number | undefined>) {
    this.label = label;
    this.pids = pids;
    for (const [role, pid] of Object.entries(pids)) {
      if (pid === undefined) continue;
      const c = cpuSeconds(pid);
      if (c !== null) this.start.set(role, c);
    }
    this.timer = setInterval(() => this.poll(), 200);
    this.timer.unref();
  }

  /** Adds a process that starts inside the window (counted from 0). */
  add(role: string, pid: number): void {
    this.pids[role] = pid;
    this.start.set(role, 0);
  }

  private poll(): void {
    for (const [role, pid] of Object.entries(this.pids)) {
      if (pid === undefined) continue;
      const c = cpuSeconds(pid);
      if (c !== null) this.last.set(role, c);
    }
  }

  /** Ends the window. Processes that exited inside it are reported from what was last readable (best effort). */
  stop(): CpuReport {
    clearInterval(this.timer);
    this.poll();
    const seconds = Number(process.hrtime.bigint() - this.t0) / 1e9;
    const m1 = machineCpu();
    const shares: CpuReport['shares'] = [];
    let ours = 0;
    for (const [role, pid] of Object.entries(this.pids)) {
      const c0 = this.start.get(role);
      if (pid === undefined || c0 === undefined) continue;
      const c1 = this.last.get(role);
      if (c1 === undefined) continue;
      const used = c1 - c0;
      ours += used;
      shares.push({ role, pctOfCore: (100 * used) / seconds });
    }
    const self = process.cpuUsage(this.self0);
    const selfS = (self.user + self.system) / 1e6;
    ours += selfS;
    shares.push({ role: 'bench (this process)', pctOfCore: (100 * selfS) / seconds });
    const busy = m1.busy - this.m0.busy;
    return {
      window: this.label,
      seconds,
      shares,
      machineBusyPctOfCore: (100 * busy) / seconds,
      othersPctOfCore: Math.max(0, (100 * (busy - ours)) / seconds),
    };
  }
}

/** Samples a process's RSS every `intervalMs` until stopped. */
export class RssSampler {
  readonly samples: { t: number; rssKb: number; anonKb: number; fileKb: number }[] = [];
  hwmKb = 0;
  private timer: NodeJS.Timeout | null = null;
  readonly pid: number;
  /** Time origin shared with the scenario's other series (performance.now() ms). */
  readonly t0: number;

  constructor(pid: number, intervalMs = 250) {
    this.pid = pid;
    this.t0 = performance.now();
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  sample(): void {
    const m = readMem(this.pid);
    if (!m) return;
    this.samples.push({ t: performance.now(), rssKb: m.rssKb, anonKb: m.anonKb, fileKb: m.fileKb });
    if (m.hwmKb > this.hwmKb) this.hwmKb = m.hwmKb;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.sample();
  }

  maxKb(): number {
    return this.samples.reduce((m, s) => Math.max(m, s.rssKb), 0);
  }

  maxAnonKb(): number {
    return this.samples.reduce((m, s) => Math.max(m, s.anonKb), 0);
  }

  /** Samples between two performance.now() times. */
  between(a: number, b: number): RssSampler['samples'] {
    return this.samples.filter((s) => s.t >= a && s.t <= b);
  }
}
