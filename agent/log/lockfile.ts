/**
 * One kedge per data dir. `<dir>/kedge.lock` holds "<pid> <starttime>\n",
 * starttime being field 22 of /proc/<pid>/stat (clock ticks since boot), so a
 * recycled pid after a crash or reboot is not mistaken for the holder.
 *
 * Why not rely on SQLite's own locking: the wasm build's lock is a directory
 * that survives kill -9, and we must know the holder is dead before removing
 * it. A lock whose holder is gone is stale and taken over.
 *
 * Every write of kedge.lock (creating it, or taking over a stale one) happens
 * under a takeover marker, so that of several processes starting at once
 * exactly one writes it; the others then find a live holder and refuse:
 * - The marker `kedge.lock.takeover` is a symlink whose target is the taker's
 *   "<pid> <starttime>". symlink() fails with EEXIST if it exists, so one
 *   process holds it; its short target lives in the inode (no data block: it
 *   works on a full disk); and it names its holder, so a marker left by a
 *   crash is known for one at once (holder dead) rather than after a timeout.
 * - Under the marker the lock is read again: a process that finished its own
 *   takeover before we got the marker holds the lock now, and we refuse.
 * - A stale lock is overwritten in place (write at 0, truncate, fsync): on a
 *   full disk there is no block for a new file, but rewriting the bytes of an
 *   existing one needs none. Readers may see it half-written; they treat that
 *   as torn, go for the marker, and find it held.
 * - A marker whose holder died is never removed (two processes removing "the
 *   dead marker" could each remove the other's fresh one). It is adopted:
 *   whoever creates `kedge.lock.takeover.1` holds it, provided the marker
 *   below still names the dead process it saw (if it does not, a takeover
 *   finished meanwhile: its holder removes the markers bottom first). A dead
 *   `.1` is adopted with `.2`, and so on.
 * - A marker held by a live process is waited for (its holder only reads and
 *   rewrites one small file), at most TAKEOVER_WAIT_MS; then we refuse.
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

/** How long a marker held by a live process is waited for before refusing. */
const TAKEOVER_WAIT_MS = 2000;
const POLL_MS = 10;
/** Markers left by crashes mid-takeover, one per crash; more than this needs a look by hand. */
const MAX_MARKERS = 8;

export function acquireDirLock(dir: string): DirLock {
  const file = path.join(dir, LOCK_FILE);
  const me = `${process.pid} ${processStartTime('self') ?? '-'}`;
  const deadline = performance.now() + TAKEOVER_WAIT_MS;
  for (;;) {
    const wait = tryLock(dir, file, me);
    if (wait === null) return lockHandle(file, `${me}\n`);
    if (performance.now() >= deadline) throw stillBusy(dir, wait);
    sleep(POLL_MS);
  }
}

/** Why an attempt must be repeated: a live (or unknown) process holds a marker, or the files changed under us. */
type Wait = { marker: string; holder: Holder | null } | 'changed';

/** One attempt: null when the lock is ours; throws when a live kedge holds it. */
function tryLock(dir: string, file: string, me: string): Wait | null {
  // Without the marker first: the usual refusal (kedge already running) touches nothing.
  refuseLiveHolder(dir, readLock(file));
  const claim = claimMarker(file, me);
  if (!Array.isArray(claim)) return claim;
  try {
    const text = readLock(file);
    refuseLiveHolder(dir, text);
    return text === null ? createLock(file, me) : overwriteLock(file, me);
  } finally {
    // Bottom first: an adopter checks the markers below its own after creating it, so once the
    // bottom one is gone no late adopter can take this finished chain for a dead one.
    for (const marker of claim) unlinkQuiet(marker);
  }
}

function refuseLiveHolder(dir: string, text: string | null): void {
  const holder = text === null ? null : parse(text);
  if (holder && isAlive(holder)) {
    throw new LogOpenError(
      `data dir ${dir} is in use by kedge pid ${holder.pid}; stop it first`,
      'KEDGE_DATA_DIR_LOCKED',
    );
  }
}

/** The lock file's text, or null if there is none. */
function readLock(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (errCode(err) === 'ENOENT') return null;
    throw new LogOpenError(
      `cannot read lock file ${file}: ${(err as Error).message}`,
      'KEDGE_LOG_OPEN',
      { cause: err },
    );
  }
}

/** No lock yet (we hold the marker). */
function createLock(file: string, me: string): Wait | null {
  let fd: number;
  try {
    fd = fs.openSync(file, 'wx', 0o644);
  } catch (err) {
    if (errCode(err) === 'EEXIST') return 'changed'; // only a kedge that ignores markers (an older version) gets here
    throw cannot('create lock file', file, err);
  }
  try {
    writeAll(fd, `${me}\n`);
  } catch (err) {
    unlinkQuiet(file); // empty: nobody's lock
    throw cannot('write lock file', file, err);
  } finally {
    fs.closeSync(fd);
  }
  return null;
}

/** A stale lock (we hold the marker): rewrite it in place, which needs no new block on a full disk. */
function overwriteLock(file: string, me: string): Wait | null {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r+');
  } catch (err) {
    if (errCode(err) === 'ENOENT') return 'changed'; // removed by hand meanwhile
    throw cannot('open lock file', file, err);
  }
  try {
    writeAll(fd, `${me}\n`);
  } catch (err) {
    throw cannot('take over stale lock file', file, err);
  } finally {
    fs.closeSync(fd);
  }
  return null;
}

/** Write at offset 0, cut what is left of a longer old text, fsync. */
function writeAll(fd: number, text: string): void {
  const buf = Buffer.from(text);
  let off = 0;
  while (off < buf.length) off += fs.writeSync(fd, buf, off, buf.length - off, off);
  fs.ftruncateSync(fd, buf.length);
  fs.fsyncSync(fd);
}

/**
 * Take the takeover marker (see the top of the file). Returns the markers we
 * hold, bottom first, all to be removed when done; or what to wait for.
 */
function claimMarker(file: string, me: string): string[] | Wait {
  const judged: string[] = []; // the dead holders of the markers below, as read
  for (let level = 0; level < MAX_MARKERS; level++) {
    const marker = markerName(file, level);
    if (createMarker(marker, me)) {
      const chain = judged.map((_, i) => markerName(file, i));
      if (chain.every((m, i) => markerText(m) === judged[i])) return [...chain, marker];
      unlinkQuiet(marker); // a takeover finished meanwhile: ours is a leftover
      return 'changed';
    }
    const text = markerText(marker);
    if (text === null) return 'changed'; // its holder just finished
    const holder = parse(text);
    if (!holder || isAlive(holder)) return { marker, holder };
    judged.push(text);
  }
  throw new LogOpenError(
    `${MAX_MARKERS} takeover markers ${file}.takeover* were left by kedge processes that crashed while starting; ` +
      'with no kedge running, remove them and start again',
    'KEDGE_LOG_OPEN',
  );
}

function markerName(file: string, level: number): string {
  return level === 0 ? `${file}.takeover` : `${file}.takeover.${level}`;
}

// symlink() on a file system without symlinks (FAT).
const NO_SYMLINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);

/** Create the marker naming us; false if it exists. */
function createMarker(marker: string, me: string): boolean {
  try {
    fs.symlinkSync(me, marker);
    return true;
  } catch (err) {
    if (errCode(err) === 'EEXIST') return false;
    if (!NO_SYMLINKS.has(errCode(err))) throw cannot('create takeover marker', marker, err);
  }
  // No symlinks here: a small file with the same text (needs a data block; empty while being written, which reads as a live unknown holder).
  let fd: number;
  try {
    fd = fs.openSync(marker, 'wx', 0o644);
  } catch (err) {
    if (errCode(err) === 'EEXIST') return false;
    throw cannot('create takeover marker', marker, err);
  }
  try {
    fs.writeSync(fd, me);
  } catch (err) {
    unlinkQuiet(marker);
    throw cannot('write takeover marker', marker, err);
  } finally {
    fs.closeSync(fd);
  }
  return true;
}

/** Who holds a marker ("<pid> <starttime>"), or null if it is gone. */
function markerText(marker: string): string | null {
  try {
    return fs.readlinkSync(marker);
  } catch (err) {
    if (errCode(err) === 'ENOENT') return null;
    if (errCode(err) !== 'EINVAL') throw cannot('read takeover marker', marker, err);
  }
  try {
    return fs.readFileSync(marker, 'utf8'); // EINVAL: not a symlink, the no-symlink fallback
  } catch (err) {
    if (errCode(err) === 'ENOENT') return null;
    throw cannot('read takeover marker', marker, err);
  }
}

function stillBusy(dir: string, wait: Wait): LogOpenError {
  if (wait === 'changed') {
    return new LogOpenError(
      `data dir ${dir}: the lock kept changing for ${TAKEOVER_WAIT_MS} ms (kedge starting in a loop?); try again`,
      'KEDGE_DATA_DIR_LOCKED',
    );
  }
  if (wait.holder) {
    return new LogOpenError(
      `data dir ${dir} is being taken by kedge pid ${wait.holder.pid}; stop it first`,
      'KEDGE_DATA_DIR_LOCKED',
    );
  }
  return new LogOpenError(
    `data dir ${dir}: ${wait.marker} names no live kedge but stayed for ${TAKEOVER_WAIT_MS} ms; with no kedge running, remove it`,
    'KEDGE_DATA_DIR_LOCKED',
  );
}

function lockHandle(file: string, text: string): DirLock {
  let released = false;
  return {
    path: file,
    release() {
      if (released) return;
      released = true;
      try {
        if (fs.readFileSync(file, 'utf8') === text) fs.unlinkSync(file);
      } catch {
        // Already gone: nothing to release.
      }
    },
  };
}

function cannot(what: string, file: string, err: unknown): LogOpenError {
  return new LogOpenError(`cannot ${what} ${file}: ${(err as Error).message}`, 'KEDGE_LOG_OPEN', {
    cause: err,
  });
}

function unlinkQuiet(file: string): void {
  try {
    fs.unlinkSync(file);
  } catch {
    // Already gone.
  }
}

function errCode(err: unknown): string {
  return String((err as NodeJS.ErrnoException)?.code ?? '');
}

/** Synchronous sleep: the lock is taken before anything else runs, and callers expect it synchronously. */
function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
