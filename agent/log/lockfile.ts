/**
 * One kedge per data dir. `<dir>/kedge.lock` holds "<pid> <starttime>\n",
 * starttime being field 22 of /proc/<pid>/stat (clock ticks since boot), so a
 * recycled pid after a crash or reboot is not mistaken for the holder.
 *
 * Why not rely on SQLite's own locking: the wasm build's lock is a directory
 * that survives kill -9, and we must know the holder is dead before removing
 * it. A lock whose holder is gone is stale and taken over.
 */
import fs from 'node:fs';
import path from 'node:path';
import { LogOpenError } from './types.ts';

export const LOCK_FILE = 'kedge.lock';

export interface DirLock {
  readonly path: string;
  /** Remove the lock file if it is still ours. Idempotent. */
  release(): void;
}

/** Field 22 (starttime) of /proc/<pid>/stat, or null if unreadable (no such process, or no /proc). */
export function processStartTime(pid: number | 'self'): string | null {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // Field 2 (comm) is in parentheses and may contain spaces and ')': split after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state), so field 22 is rest[19].
  return rest[19] ?? null;
}

interface Holder {
  pid: number;
  start: string;
}

function parse(text: string): Holder | null {
  const m = /^(\d+) (\S+)\s*$/.exec(text);
  if (!m) return null;
  return { pid: Number(m[1]), start: m[2] };
}

const hasProc = fs.existsSync('/proc/self/stat');

function isAlive(h: Holder): boolean {
  if (hasProc) {
    const start = processStartTime(h.pid);
    return start !== null && start === h.start;
  }
  // No /proc (not Linux): pid liveness only; a recycled pid looks alive.
  try {
    process.kill(h.pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function acquireDirLock(dir: string): DirLock {
  const file = path.join(dir, LOCK_FILE);
  const me = `${process.pid} ${processStartTime('self') ?? '-'}\n`;

  let created = false;
  try {
    const fd = fs.openSync(file, 'wx', 0o644);
    try {
      fs.writeSync(fd, me);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    created = true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new LogOpenError(`cannot create lock file ${file}: ${(err as Error).message}`, 'KEDGE_LOG_OPEN', { cause: err });
    }
  }

  if (!created) {
    let text = '';
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      // Vanished between open and read: treat as stale.
    }
    const holder = parse(text);
    if (holder && isAlive(holder)) {
      throw new LogOpenError(`data dir ${dir} is in use by kedge pid ${holder.pid}; stop it first`, 'KEDGE_DATA_DIR_LOCKED');
    }
    // Stale (holder dead, pid recycled, or a torn write): take it over atomically.
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, me, { mode: 0o644 });
    fs.renameSync(tmp, file);
    // Two processes taking over the same stale lock at once: the last rename wins; the other sees it here.
    const now = parse(fs.readFileSync(file, 'utf8'));
    if (!now || `${now.pid} ${now.start}\n` !== me) {
      throw new LogOpenError(`data dir ${dir} is in use by kedge pid ${now?.pid ?? '?'}; stop it first`, 'KEDGE_DATA_DIR_LOCKED');
    }
  }

  let released = false;
  return {
    path: file,
    release() {
      if (released) return;
      released = true;
      try {
        if (fs.readFileSync(file, 'utf8') === me) fs.unlinkSync(file);
      } catch {
        // Already gone: nothing to release.
      }
    },
  };
}
