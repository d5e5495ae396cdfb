/** The machine and the versions a benchmark result depends on. */
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import os from 'node:os';
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { kafkaVersion } from '../../kafka/kafka.ts';
import { KEDGE_VERSION } from '../../../agent/version.ts';
import { kcatVersion } from './kcat.ts';
import { loadavg } from './procfs.ts';
import type { AgentInfo, MachineInfo } from './types.ts';

const require = createRequire(import.meta.url);

export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  let disk = 'unknown';
  const df = spawnSync('df', ['-T', os.tmpdir()], { encoding: 'utf8' });
  const line = df.stdout?.trim().split('\n')[1];
  if (line) {
    const f = line.split(/\s+/);
    disk = `${os.tmpdir()} on ${f[0]} (${f[1]})`;
  }
  let osName = `${os.type()} ${os.release()}`;
  try {
    const rel = spawnSync('sh', ['-c', '. /etc/os-release && echo "$PRETTY_NAME"'], {
      encoding: 'utf8',
    }).stdout.trim();
    if (rel) osName = rel;
  } catch {
    /* keep the kernel name */
  }
  return {
    cores: cpus.length,
    cpuModel: cpus[0]?.model?.trim() ?? 'unknown',
    memoryBytes: os.totalmem(),
    kernel: os.release(),
    os: osName,
    loadavgStart: loadavg(),
    loadavgEnd: [],
    disk,
    fsync: fsyncProbe(),
  };
}

/** How fast this disk makes a small write durable (the floor under every KEDGE_SYNC=full commit). */
export function fsyncProbe(ms = 2000): MachineInfo['fsync'] {
  const dir = mkdtempSync(join(os.tmpdir(), 'kedge-bench-fsync-'));
  try {
    const fd = openSync(join(dir, 'probe'), 'w');
    const buf = Buffer.alloc(40 * 1024, 1);
    const lat: number[] = [];
    const end = performance.now() + ms;
    while (performance.now() < end) {
      const a = performance.now();
      writeSync(fd, buf);
      fdatasyncSync(fd);
      lat.push(performance.now() - a);
    }
    closeSync(fd);
    lat.sort((a, b) => a - b);
    return {
      perS: lat.length / (ms / 1000),
      p50Ms: lat[Math.floor(lat.length / 2)],
      p99Ms: lat[Math.floor(lat.length * 0.99)],
    };
  } catch {
    return null;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function pkgVersion(name: string): string {
  try {
    return (require(`${name}/package.json`) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export function versions(agent: AgentInfo): Record<string, string> {
  const v: Record<string, string> = {
    kedge: KEDGE_VERSION,
    'node (bench, load generator, baselines)': process.version,
    kafka: kafkaVersion(),
    kafkajs: pkgVersion('kafkajs'),
    undici: pkgVersion('undici'),
    kcat: kcatVersion(),
  };
  try {
    const db = new DatabaseSync(':memory:');
    v['sqlite (node:sqlite)'] = String(
      (db.prepare('SELECT sqlite_version() AS v').get() as { v: string }).v,
    );
    db.close();
  } catch {
    v['sqlite (node:sqlite)'] = 'unavailable';
  }
  const java = spawnSync('java', ['-version'], { encoding: 'utf8' });
  v.java = (java.stderr || java.stdout || '').split('\n')[0].trim() || 'unknown';
  if (agent.mode === 'executable') {
    const r = spawnSync(agent.command[0], ['version'], { encoding: 'utf8', timeout: 20_000 });
    const m = /node (v\S+)/.exec(r.stdout ?? '');
    v['node (inside the kedge executable)'] = m ? m[1] : 'unknown';
  } else {
    v['node (kedge from source)'] = process.version;
  }
  return v;
}
