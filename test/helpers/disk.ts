/**
 * Real full disks for tests: a small tmpfs of a test's own (root only, like CI on
 * this machine) and a filler file that takes its space.
 */
import type { Test } from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const MiB = 1 << 20;

/** Mounts a tmpfs of `size` (e.g. '32m') for the test; unmounted in its teardown. */
export function mountTmpfs(t: Test, size: string, prefix = 'kedge-tmpfs-'): string {
  const mnt = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt], {
    encoding: 'utf8',
  });
  if (r.status !== 0) {
    fs.rmSync(mnt, { recursive: true, force: true });
    throw new Error(`mounting a ${size} tmpfs at ${mnt} needs root: ${r.stderr.trim()}`);
  }
  t.teardown(() => {
    spawnSync('umount', ['-l', mnt]);
    fs.rmSync(mnt, { recursive: true, force: true });
  });
  return mnt;
}

/**
 * Appends to `file` until its file system has `leave` bytes free; with 0, until
 * ENOSPC down to the last byte (a 100 % full disk).
 */
export function fillDisk(file: string, leave: number): void {
  const fd = fs.openSync(file, 'a');
  try {
    if (leave > 0) {
      const st = fs.statfsSync(path.dirname(file));
      const chunk = Buffer.alloc(MiB, 1);
      for (let left = st.bavail * st.bsize - leave; left > 0; left -= chunk.length)
        fs.writeSync(fd, chunk, 0, Math.min(chunk.length, left));
      return;
    }
    for (const size of [MiB, 64 << 10, 4096, 512, 1]) {
      const chunk = Buffer.alloc(size, 2);
      for (let i = 0; i < 100_000; i++) {
        try {
          fs.writeSync(fd, chunk);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw e;
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}
