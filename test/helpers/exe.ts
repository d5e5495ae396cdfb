/**
 * The built artifacts for tests: builds dist/ first when anything is missing or
 * older than the sources (scripts/build.ts --if-stale; it takes a lock, so
 * parallel test files wait for one build), and runs an executable the way a
 * device does (arm64 under qemu-user on an x64 machine).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import {
  ARCHES,
  DIST,
  ROOT,
  artifacts,
  packageInfo,
  type Arch,
  type ArchArtifacts,
} from '../../scripts/build/layout.ts';
import { spawnProc, type Proc } from './proc.ts';

export { DIST, ROOT, type Arch };

export const PKG = packageInfo();

let built = false;

/** Builds dist/ when stale; throws with the build's output tail when the build fails. */
export function ensureBuilt(): void {
  if (built) return;
  const t = Date.now();
  const r = spawnSync(process.execPath, [join(ROOT, 'scripts/build.ts'), '--if-stale'], {
    cwd: ROOT,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 20 * 60_000,
  });
  if (r.status !== 0) {
    throw new Error(
      `npm run build failed (${r.status ?? r.signal}):\n${(r.stderr + r.stdout).split('\n').slice(-30).join('\n')}`,
    );
  }
  if (Date.now() - t > 5000)
    process.stderr.write(`# built dist/ in ${((Date.now() - t) / 1000).toFixed(0)} s\n`);
  built = true;
}

export function artifactsFor(arch: Arch): ArchArtifacts {
  return artifacts(PKG.version, arch);
}

export { ARCHES };

/** Whether `cmd` is on PATH. */
export function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

export const QEMU = 'qemu-aarch64-static';
export const ARM64_SYSROOT = '/usr/aarch64-linux-gnu';

/** Why arm64 executables cannot run here, or null when they can. */
export function arm64Unavailable(): string | null {
  if (process.arch === 'arm64') return null;
  const missing: string[] = [];
  if (!hasCommand(QEMU)) missing.push('qemu-user-static');
  if (!existsSync(join(ARM64_SYSROOT, 'lib/ld-linux-aarch64.so.1')))
    missing.push('libc6-arm64-cross');
  if (!existsSync(join(ARM64_SYSROOT, 'lib/libstdc++.so.6')))
    missing.push('libstdc++6-arm64-cross');
  return missing.length ? `apt-get install -y ${missing.join(' ')}` : null;
}

/** argv prefix that runs an executable of `arch` on this machine. */
export function commandFor(arch: Arch, exe: string): string[] {
  return arch === process.arch ? [exe] : [QEMU, '-L', ARM64_SYSROOT, exe];
}

/** Runs an executable of `arch` to completion. */
export function runExe(
  arch: Arch,
  exe: string,
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {},
) {
  const cmd = commandFor(arch, exe);
  return spawnSync(cmd[0], [...cmd.slice(1), ...args], {
    env: { PATH: '/usr/bin:/bin', ...opts.env },
    cwd: opts.cwd,
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 120_000,
  });
}

/** ELF machine of a file: 'x64', 'arm64' or what else the header says. */
export function elfMachine(file: string): string {
  const fd = readFileSync(file).subarray(0, 20);
  if (fd.readUInt32BE(0) !== 0x7f454c46) return 'not-elf';
  const m = fd.readUInt16LE(18);
  return m === 0x3e ? 'x64' : m === 0xb7 ? 'arm64' : `0x${m.toString(16)}`;
}

export interface ExeAgent {
  proc: Proc;
  base: string;
  port: number;
  /** stdout lines parsed as JSON log records (non-JSON lines skipped). */
  logs(): Record<string, unknown>[];
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * `<exe> run` with its own ready timeout (test/helpers/agent.ts waits 20 s,
 * too short for an emulated arm64 start on a busy machine).
 */
export async function startExe(
  arch: Arch,
  exe: string,
  o: { env: Record<string, string>; port: number; readyTimeoutMs?: number; args?: string[] },
): Promise<ExeAgent> {
  const cmd = commandFor(arch, exe);
  const proc = spawnProc(cmd[0], [...cmd.slice(1), 'run', ...(o.args ?? [])], {
    env: {
      PATH: '/usr/bin:/bin',
      KEDGE_HTTP_LISTEN: `127.0.0.1:${o.port}`,
      KEDGE_LOG_LEVEL: 'info',
      KEDGE_HEARTBEAT_TOPIC: '',
      ...o.env,
    },
    name: `kedge-linux-${arch}`,
  });
  const base = `http://127.0.0.1:${o.port}`;
  const deadline = Date.now() + (o.readyTimeoutMs ?? 120_000);
  for (;;) {
    if (proc.exitStatus() !== null)
      throw new Error(
        `kedge exited before ready (${JSON.stringify(proc.exitStatus())}):\n${proc.output().slice(-3000)}`,
      );
    try {
      const r = await request(`${base}/readyz`, { headersTimeout: 2000, bodyTimeout: 2000 });
      await r.body.text();
      if (r.statusCode === 200) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) {
      await proc.kill();
      throw new Error(
        `kedge not ready after ${o.readyTimeoutMs ?? 120_000} ms:\n${proc.output().slice(-3000)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    proc,
    base,
    port: o.port,
    logs: () =>
      proc
        .stdout()
        .split('\n')
        .flatMap((l) => {
          try {
            return [JSON.parse(l) as Record<string, unknown>];
          } catch {
            return [];
          }
        }),
    stop: () => proc.stop(30_000),
  };
}

/** GET a JSON document from a running agent. */
export async function getJson(url: string): Promise<any> {
  const r = await request(url);
  return r.body.json();
}

/** Polls /v1/status until the backlog is empty. */
export async function waitDrained(base: string, timeoutMs: number): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  let s: any;
  while (Date.now() < deadline) {
    s = await getJson(`${base}/v1/status`);
    if (s.backlog.events === 0) return s;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`backlog not drained after ${timeoutMs} ms: ${JSON.stringify(s)}`);
}
