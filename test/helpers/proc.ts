// Child processes for tests: spawn with captured output, wait for a line, stop or kill,
// and make sure nothing outlives the test process.
import { spawn } from 'node:child_process';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Proc {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly name: string;
  /** stdout and stderr interleaved as they arrived. */
  output(): string;
  stdout(): string;
  stderr(): string;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<ExitStatus>;
  /** null while running. */
  exitStatus(): ExitStatus | null;
  /**
   * Resolves with the first match of `re` against a line of output (stdout or stderr),
   * looking at lines already printed too. Rejects on timeout or if the process exits
   * first, with the tail of its output in the message.
   */
  waitForLine(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  /** Sends `signal` (default SIGKILL) and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<ExitStatus>;
  /** SIGTERM, then SIGKILL after `graceMs` (default 10 s) if it is still running. */
  stop(graceMs?: number): Promise<ExitStatus>;
}

export interface SpawnProcOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Label used in error messages; default: the command's base name. */
  name?: string;
  /** Keep at most this many characters of output (the newest); default 1 MiB. */
  maxOutput?: number;
  /** What to connect to the child's stdin; default 'ignore'. */
  stdin?: 'ignore' | 'pipe';
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' handlers must be synchronous: a plain SIGKILL is all we can do there.
  process.on('exit', () => {
    for (const c of live) {
      try {
        c.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
  });
}

/** Spawns `cmd args`, capturing its output; the process is SIGKILLed if the test process exits. */
export function spawnProc(cmd: string, args: readonly string[], opts: SpawnProcOptions = {}): Proc {
  installExitHook();
  const name = opts.name ?? cmd.split('/').pop() ?? cmd;
  const maxOutput = opts.maxOutput ?? 1 << 20;
  const spawnOpts: SpawnOptions = {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: [opts.stdin ?? 'ignore', 'pipe', 'pipe'],
  };
  const child = spawn(cmd, args, spawnOpts);
  let all = '';
  let out = '';
  let err = '';
  let status: ExitStatus | null = null;
  const lineWaiters = new Set<() => void>();
  const trim = (s: string): string => (s.length > maxOutput ? s.slice(s.length - maxOutput) : s);

  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stdout?.on('data', (d: string) => {
    out = trim(out + d);
    all = trim(all + d);
    for (const w of lineWaiters) w();
  });
  child.stderr?.on('data', (d: string) => {
    err = trim(err + d);
    all = trim(all + d);
    for (const w of lineWaiters) w();
  });

  let spawnError: Error | null = null;
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once('error', (e) => {
      // ENOENT and friends: the process never ran.
      spawnError = e;
      live.delete(child);
      status = { code: null, signal: null };
      resolve(status);
    });
    child.once('close', (code, signal) => {
      live.delete(child);
      status = { code, signal };
      resolve(status);
    });
  });
  if (child.pid !== undefined) live.add(child);

  const tail = (): string => all.split('\n').slice(-30).join('\n');

  const proc: Proc = {
    child,
    get pid() {
      return child.pid ?? -1;
    },
    name,
    output: () => all,
    stdout: () => out,
    stderr: () => err,
    exited,
    exitStatus: () => status,
    waitForLine(re, timeoutMs) {
      return new Promise((resolve, reject) => {
        const check = (): boolean => {
          for (const line of all.split('\n')) {
            const m = line.match(re);
            if (m) {
              done();
              resolve(m);
              return true;
            }
          }
          return false;
        };
        const timer = setTimeout(() => {
          done();
          reject(
            new Error(
              `${name}: no output line matching ${re} within ${timeoutMs} ms; output tail:\n${tail()}`,
            ),
          );
        }, timeoutMs);
        const done = (): void => {
          clearTimeout(timer);
          lineWaiters.delete(check);
        };
        if (check()) return;
        lineWaiters.add(check);
        void exited.then((st) => {
          if (!lineWaiters.has(check)) return;
          if (check()) return;
          done();
          const why = spawnError
            ? `failed to start: ${spawnError.message}`
            : `exited (code ${st.code}, signal ${st.signal})`;
          reject(
            new Error(
              `${name} ${why} before printing a line matching ${re}; output tail:\n${tail()}`,
            ),
          );
        });
      });
    },
    async kill(signal = 'SIGKILL') {
      if (status === null) child.kill(signal);
      return exited;
    },
    async stop(graceMs = 10_000) {
      if (status !== null) return status;
      child.kill('SIGTERM');
      const timer = setTimeout(() => {
        if (status === null) child.kill('SIGKILL');
      }, graceMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
  return proc;
}

/** Runs a command to completion; resolves with its output and exit status (never rejects on a non-zero exit). */
export async function run(
  cmd: string,
  args: readonly string[],
  opts: SpawnProcOptions & { timeoutMs?: number } = {},
): Promise<ExitStatus & { stdout: string; stderr: string; output: string }> {
  const p = spawnProc(cmd, args, opts);
  const timer = opts.timeoutMs
    ? setTimeout(() => void p.kill('SIGKILL'), opts.timeoutMs)
    : undefined;
  const st = await p.exited;
  if (timer) clearTimeout(timer);
  return { ...st, stdout: p.stdout(), stderr: p.stderr(), output: p.output() };
}

/** Polls `fn` until it returns a truthy value (returned), or rejects after `timeoutMs`. */
export async function waitFor<T>(
  fn: () => T | Promise<T>,
  opts: { timeoutMs: number; intervalMs?: number; what?: string },
): Promise<NonNullable<T>> {
  const deadline = Date.now() + opts.timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() >= deadline) {
      const why = lastErr instanceof Error ? `; last error: ${lastErr.message}` : '';
      throw new Error(
        `timed out after ${opts.timeoutMs} ms waiting for ${opts.what ?? 'condition'}${why}`,
      );
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 100));
  }
}

/** True if a process with this pid exists (and is not a zombie). */
export function pidAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 3 (after the parenthesised command name) is the state; Z = zombie, X = dead.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** Live processes whose command line contains `needle` (Linux /proc), e.g. a Kafka node's directory. */
export function findProcesses(needle: string | RegExp): { pid: number; cmdline: string }[] {
  const found: { pid: number; cmdline: string }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' ').trim();
    } catch {
      continue;
    }
    const hit = typeof needle === 'string' ? cmdline.includes(needle) : needle.test(cmdline);
    if (hit && pidAlive(pid)) found.push({ pid, cmdline });
  }
  return found;
}
