/**
 * One build at a time per checkout: several test files (or people) may ask for
 * a build at once, and two builds writing dist/ together corrupt it. The lock
 * is a directory (mkdir is atomic) holding the owner's pid; a lock whose
 * process is gone is taken over.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Waits for the lock (polling), then holds it until the returned release() or process exit. */
export async function acquireLock(
  dir: string,
  onWait: (pid: number) => void,
  timeoutMs = 30 * 60_000,
): Promise<() => void> {
  const deadline = Date.now() + timeoutMs;
  let told = false;
  for (;;) {
    try {
      mkdirSync(dir);
      writeFileSync(join(dir, 'pid'), String(process.pid));
      const release = (): void => rmSync(dir, { recursive: true, force: true });
      process.once('exit', release);
      return () => {
        process.removeListener('exit', release);
        release();
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let pid = NaN;
    try {
      pid = Number(readFileSync(join(dir, 'pid'), 'utf8'));
    } catch {
      /* being created or removed */
    }
    if (Number.isInteger(pid) && pid > 0 && !alive(pid)) {
      rmSync(dir, { recursive: true, force: true });
      continue;
    }
    if (!told && Number.isInteger(pid)) {
      onWait(pid);
      told = true;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for the build lock ${dir}`);
    await sleep(500);
  }
}
