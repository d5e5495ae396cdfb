/**
 * Power loss for tests: test/tools/powercut-fs.py mounted over a backing folder. Data
 * written into the mount reaches the backing folder only when its file is fsync'd;
 * `cut()` throws the rest away and unmounts, `remount()` mounts a new instance over
 * what the backing folder holds, as a disk would after the power came back.
 * Needs root, /dev/fuse, fusermount and Debian's python3-fusepy (installed by .ci/run).
 */
import type { Test } from 'tap';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const TOOL = path.resolve(import.meta.dirname, '../tools/powercut-fs.py');
/** Debian's python3 (python3-fusepy lives in its dist-packages, not in a pyenv python). */
const PYTHON = '/usr/bin/python3';

export interface PowerCutMount {
  /** Where the program under test writes. */
  mnt: string;
  /** What survives: the backing folder. */
  backing: string;
  /** Discards every unsynced write and unmounts; resolves once unmounted. */
  cut(): Promise<void>;
  /** Mounts a new instance over the backing folder (after a cut). */
  remount(): Promise<void>;
}

function mounted(dir: string): boolean {
  return spawnSync('mountpoint', ['-q', dir]).status === 0;
}

export async function mountPowerCut(t: Test, prefix = 'kedge-powercut-'): Promise<PowerCutMount> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const backing = path.join(root, 'backing');
  const mnt = path.join(root, 'mnt');
  fs.mkdirSync(backing);
  fs.mkdirSync(mnt);
  let proc: ChildProcess | null = null;
  const output: string[] = [];

  const start = async (): Promise<void> => {
    const p = spawn(PYTHON, [TOOL, backing, mnt], { stdio: ['ignore', 'pipe', 'pipe'] });
    proc = p;
    p.stderr!.on('data', (d) => output.push(String(d)));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`powercut-fs did not mount in 10 s: ${output.join('')}`)),
        10_000,
      );
      p.stdout!.on('data', (d) => {
        const s = String(d);
        output.push(s);
        if (s.includes('ready')) {
          clearTimeout(timer);
          resolve();
        }
        if (s.includes('not mounted')) reject(new Error(`powercut-fs: ${output.join('')}`));
      });
      p.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`powercut-fs exited (${code}) before mounting: ${output.join('')}`));
      });
    });
  };

  const stop = async (): Promise<void> => {
    const p = proc;
    proc = null;
    if (!p) return;
    if (p.exitCode === null) {
      const exited = new Promise<void>((r) => p.once('exit', () => r()));
      // After a cut the mount is detached, but the file system process only ends once the
      // last descriptor into it closes (the agent under test may still hold some): the
      // power is off, so it is killed, which fails those descriptors with ENOTCONN.
      const timer = setTimeout(() => p.kill('SIGKILL'), 1_000);
      await exited;
      clearTimeout(timer);
    }
    // A process that died without unmounting leaves a dead mount behind.
    if (mounted(mnt)) spawnSync('fusermount', ['-u', '-z', mnt]);
  };

  await start();
  t.teardown(async () => {
    if (mounted(mnt)) spawnSync('fusermount', ['-u', '-z', mnt]);
    await stop();
    fs.rmSync(root, { recursive: true, force: true });
  });
  return {
    mnt,
    backing,
    async cut() {
      try {
        fs.writeFileSync(path.join(mnt, '.powercut'), '');
      } catch {
        // EIO is the answer to the cut itself.
      }
      await stop();
    },
    async remount() {
      await stop();
      await start();
    },
  };
}
