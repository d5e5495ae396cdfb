/**
 * The data-dir lock (agent/log/lockfile.ts) and the wasm driver's directory fsync:
 * - several processes taking over the same stale lock at the same instant: exactly one wins,
 *   round after round (plain acquireDirLock, and real starts with openLog on the wasm driver);
 * - takeover markers left by crashes are adopted, a live one is waited for, then refused;
 * - a stale lock (kill -9) is taken over on a 100 %-full file system (a tmpfs of its own);
 * - the wasm driver fsyncs the data directory after creating kedge.db-wal, as native SQLite
 *   does (seen with strace, so it is the system calls that are checked, not our own wrappers).
 */
import t from 'tap';
import type { Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { acquireDirLock, processStartTime, LOCK_FILE } from '../agent/log/lockfile.ts';
import { fillDisk, mountTmpfs } from './helpers/disk.ts';

const LOCKFILE_URL = new URL('../agent/log/lockfile.ts', import.meta.url).href;
const LOG_URL = new URL('../agent/log/index.ts', import.meta.url).href;
const ROUNDS = 30;
const CONTENDERS = 8;
const HOLD_MS = 300;

function tmpDir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kedge-lockfile-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A pid that has exited; "<DEAD_PID> <n>" is a process that is gone (and a recycled pid has another start time). */
const DEAD_PID = spawnSync(process.execPath, ['-e', '0']).pid!;

/** The lock a kedge killed with -9 leaves behind. */
function staleLock(dir: string): void {
  fs.writeFileSync(path.join(dir, LOCK_FILE), `${DEAD_PID} 12345\n`);
}

/**
 * What every contender runs at the shared instant `at`: sleep until 5 ms before it, spin
 * the rest (so all leave the wait within a scheduler tick of each other), then try.
 * Prints one JSON line {result, late}: 'won' or the error code, and how many ms after `at` it tried.
 */
const SYNC_START = `
const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Math.max(0, ms));
function startAt(at) {
  sleep(at - Date.now() - 5);
  while (Date.now() < at);
  return Date.now() - at;
}
const report = (result, late) => process.stdout.write(JSON.stringify({ result, late }) + '\\n');
`;

/** A long-lived contender: one round per stdin line {dir, at}; the winner holds the lock HOLD_MS, then releases it. */
const POOL_CHILD = `
import readline from 'node:readline';
import { acquireDirLock } from ${JSON.stringify(LOCKFILE_URL)};
${SYNC_START}
process.stdout.write('ready\\n');
for await (const line of readline.createInterface({ input: process.stdin })) {
  const { dir, at } = JSON.parse(line);
  const late = startAt(at);
  try {
    const lock = acquireDirLock(dir);
    sleep(${HOLD_MS});
    lock.release();
    report('won', late);
  } catch (err) {
    report(err.code ?? String(err), late);
  }
}
`;

/** A real start: a fresh process opening the log on the wasm driver at \`at\`; the winner keeps it open HOLD_MS. */
const OPEN_CHILD = `
import { openLog } from ${JSON.stringify(LOG_URL)};
${SYNC_START}
const [dir, at] = process.argv.slice(1);
const late = startAt(Number(at));
try {
  const log = await openLog({ dir, driver: 'wasm', sync: 'full' });
  await log.append([{ topic: 't', key: null, value: Buffer.from(String(process.pid)), source: 'http' }]);
  sleep(${HOLD_MS});
  await log.close();
  report('won', late);
} catch (err) {
  report(err.code ?? String(err), late);
}
`;

interface Outcome {
  result: string;
  late: number;
}

/** Lines of a child's stdout, one at a time. */
function lineReader(child: ChildProcess): () => Promise<string> {
  const lines: string[] = [];
  const waiting: ((line: string) => void)[] = [];
  readline.createInterface({ input: child.stdout! }).on('line', (line) => {
    const w = waiting.shift();
    if (w) w(line);
    else lines.push(line);
  });
  return () =>
    lines.length > 0
      ? Promise.resolve(lines.shift()!)
      : new Promise((resolve) => waiting.push(resolve));
}

/** "round 4: 2 (won, won, KEDGE_DATA_DIR_LOCKED, …)" for every round without exactly one winner. */
function badRounds(rounds: Outcome[][]): string {
  const bad = rounds
    .map((r, i) => ({
      i,
      wins: r.filter((o) => o.result === 'won').length,
      results: r.map((o) => o.result),
    }))
    .filter((r) => r.wins !== 1);
  return bad.length === 0
    ? 'none'
    : bad.map((r) => `round ${r.i + 1}: ${r.wins} (${r.results.join(', ')})`).join('; ');
}

/** Rounds of CONTENDERS long-lived processes trying acquireDirLock on a fresh dir (set up by `prepare`) at one instant. */
async function contend(
  t: Test,
  rounds: number,
  prepare: (dir: string, round: number) => void,
): Promise<void> {
  const children = Array.from({ length: CONTENDERS }, () =>
    spawn(process.execPath, ['--input-type=module', '-e', POOL_CHILD], {
      stdio: ['pipe', 'pipe', 'inherit'],
    }),
  );
  t.teardown(() => {
    for (const c of children) c.kill();
  });
  const readers = children.map(lineReader);
  for (const next of readers) t.equal(await next(), 'ready', 'contender started');

  const outcomes: Outcome[][] = [];
  for (let r = 0; r < rounds; r++) {
    const dir = tmpDir(t);
    prepare(dir, r);
    const at = Date.now() + 100;
    for (const c of children) c.stdin!.write(JSON.stringify({ dir, at }) + '\n');
    outcomes.push(
      await Promise.all(readers.map(async (next) => JSON.parse(await next()) as Outcome)),
    );
    t.same(
      fs.readdirSync(dir),
      [],
      `round ${r + 1}: the winner released the lock, no marker or temp file left`,
    );
  }
  const wins = outcomes.map((r) => r.filter((o) => o.result === 'won').length);
  t.same(
    wins,
    wins.map(() => 1),
    `exactly one winner in every round; other rounds: ${badRounds(outcomes)}`,
  );
  const others = outcomes.flat().filter((o) => o.result !== 'won');
  t.same(
    [...new Set(others.map((o) => o.result))],
    ['KEDGE_DATA_DIR_LOCKED'],
    'every other contender was refused as locked',
  );
  const lates = outcomes
    .flat()
    .map((o) => o.late)
    .sort((a, b) => a - b);
  const median = lates[Math.floor(lates.length / 2)];
  t.ok(median <= 20, `contenders started together (median ${median} ms after the instant)`);
}

t.test(
  `${CONTENDERS} processes take over one stale lock at the same instant: exactly one wins, ${ROUNDS} rounds`,
  async (t) => {
    await contend(t, ROUNDS, (dir) => staleLock(dir));
  },
);

t.test(
  'real starts: 4 processes open one log (wasm driver) with a stale lock at the same instant: exactly one opens',
  async (t) => {
    const rounds: Outcome[][] = [];
    for (let r = 0; r < 3; r++) {
      const dir = tmpDir(t);
      staleLock(dir);
      const at = Date.now() + 2500; // time for 4 cold starts (node, the log, the wasm module) on a small machine
      const runs = Array.from({ length: 4 }, () => {
        const child = spawn(
          process.execPath,
          ['--input-type=module', '-e', OPEN_CHILD, dir, String(at)],
          { stdio: ['ignore', 'pipe', 'inherit'] },
        );
        return lineReader(child)();
      });
      rounds.push((await Promise.all(runs)).map((line) => JSON.parse(line) as Outcome));
    }
    const wins = rounds.map((r) => r.filter((o) => o.result === 'won').length);
    t.same(
      wins,
      wins.map(() => 1),
      `exactly one opened the log in every round; other rounds: ${badRounds(rounds)}`,
    );
    const others = rounds.flat().filter((o) => o.result !== 'won');
    t.same(
      [...new Set(others.map((o) => o.result))],
      ['KEDGE_DATA_DIR_LOCKED'],
      'the others were refused as locked',
    );
  },
);

/** A takeover marker naming `who`, as a process that crashed mid-takeover leaves it. */
function marker(dir: string, level: number, who: string): void {
  const name = path.join(
    dir,
    level === 0 ? `${LOCK_FILE}.takeover` : `${LOCK_FILE}.takeover.${level}`,
  );
  fs.symlinkSync(who, name);
}

function deadIdentity(n: number): string {
  return `${DEAD_PID} ${20000 + n}`;
}

t.test('takeover markers left by crashes are adopted, never waited for', async (t) => {
  for (const depth of [1, 2, 3]) {
    const dir = tmpDir(t);
    staleLock(dir);
    for (let level = 0; level < depth; level++) marker(dir, level, deadIdentity(level));
    const started = performance.now();
    const lock = acquireDirLock(dir);
    t.ok(performance.now() - started < 500, `${depth} dead marker(s): taken at once`);
    t.equal(
      fs.readFileSync(path.join(dir, LOCK_FILE), 'utf8'),
      `${process.pid} ${processStartTime('self')}\n`,
      'the lock is ours',
    );
    t.same(fs.readdirSync(dir), [LOCK_FILE], 'the dead markers were removed with ours');
    lock.release();
  }
});

t.test('a takeover marker held by a live process is waited for, then refused', async (t) => {
  const dir = tmpDir(t);
  staleLock(dir);
  const live = `${process.pid} ${processStartTime('self')}`;
  marker(dir, 0, live);
  const started = performance.now();
  t.throws(() => acquireDirLock(dir), {
    name: 'LogOpenError',
    code: 'KEDGE_DATA_DIR_LOCKED',
    message: `data dir ${dir} is being taken by kedge pid ${process.pid}; stop it first`,
  });
  const waited = performance.now() - started;
  t.ok(waited >= 1900 && waited < 4000, `waited about 2 s (${Math.round(waited)} ms)`);
  t.equal(fs.readlinkSync(path.join(dir, `${LOCK_FILE}.takeover`)), live, 'its marker left alone');
});

t.test(
  `${CONTENDERS} processes adopt the same dead markers at once: exactly one wins, 10 rounds`,
  async (t) => {
    await contend(t, 10, (dir, round) => {
      staleLock(dir);
      for (let level = 0; level <= round % 3; level++) marker(dir, level, deadIdentity(level));
    });
  },
);

t.test(
  'file systems without symlinks (FAT): the marker is a small file holding the same text',
  async (t) => {
    const symlinkSync = fs.symlinkSync;
    const made: string[] = [];
    fs.symlinkSync = (_target: fs.PathLike, p: fs.PathLike) => {
      made.push(String(p));
      throw Object.assign(new Error(`EPERM: operation not permitted, symlink '${String(p)}'`), {
        code: 'EPERM',
      });
    };
    t.teardown(() => {
      fs.symlinkSync = symlinkSync;
    });
    const dir = tmpDir(t);
    staleLock(dir);
    fs.writeFileSync(path.join(dir, `${LOCK_FILE}.takeover`), deadIdentity(0)); // left by a crash
    const lock = acquireDirLock(dir);
    t.same(
      made.map((p) => path.basename(p)),
      [`${LOCK_FILE}.takeover`, `${LOCK_FILE}.takeover.1`],
      'tried a symlink, fell back to a file',
    );
    t.equal(
      fs.readFileSync(path.join(dir, LOCK_FILE), 'utf8'),
      `${process.pid} ${processStartTime('self')}\n`,
      'the lock is ours',
    );
    t.same(fs.readdirSync(dir), [LOCK_FILE], 'markers removed');
    lock.release();
  },
);

// A file system of its own that really fills up: a tmpfs, which only root can mount (as in test/log.test.ts).
// Not skipped without root: a CI that cannot run it must fail, not pass quietly.
t.test('a stale lock (kill -9) is taken over on a 100 %-full disk', async (t) => {
  const mnt = mountTmpfs(t, '4m', 'kedge-lock-full-');
  const dir = path.join(mnt, 'data');
  fs.mkdirSync(dir);
  staleLock(dir);
  fillDisk(path.join(mnt, 'filler'), 0);
  t.equal(fs.statfsSync(mnt).bavail, 0, 'the file system is 100 % full');
  const probe = path.join(mnt, 'probe');
  t.throws(() => fs.writeFileSync(probe, 'x'), { code: 'ENOSPC' }, 'a new file cannot get a block');
  fs.rmSync(probe, { force: true });

  const lock = acquireDirLock(dir);
  t.equal(
    fs.readFileSync(path.join(dir, LOCK_FILE), 'utf8'),
    `${process.pid} ${processStartTime('self')}\n`,
    'the lock is ours',
  );
  t.same(fs.readdirSync(dir), [LOCK_FILE], 'no marker or temp file left behind');
  lock.release();
  t.same(fs.readdirSync(dir), [], 'released');
});

/** Opens a log on the wasm driver with sync=full in argv[1], appends one event, closes. */
const APPEND_ONE = `
import { openLog } from ${JSON.stringify(LOG_URL)};
const log = await openLog({ dir: process.argv[1], driver: 'wasm', sync: 'full' });
await log.append([{ topic: 't', key: null, value: Buffer.from('x'), source: 'http' }]);
await log.close();
`;

interface Syscall {
  call: string;
  /** The path opened, or the path the fd was opened on. */
  path: string;
  flags: string;
}

/** The open/fsync calls of an strace -o file (main thread only, so no interleaved "<unfinished ...>" lines). */
function parseTrace(text: string): Syscall[] {
  const fds = new Map<number, string>();
  const calls: Syscall[] = [];
  for (const line of text.split('\n')) {
    const open = /^(openat|open)\((?:AT_FDCWD, )?"([^"]*)", ([A-Z_|]+).*\) = (\d+)$/.exec(line);
    if (open) {
      fds.set(Number(open[4]), open[2]);
      calls.push({ call: open[1], path: open[2], flags: open[3] });
      continue;
    }
    const onFd = /^(fsync|fdatasync|close)\((\d+)\)\s+= 0$/.exec(line);
    if (!onFd) continue;
    const fd = Number(onFd[2]);
    if (onFd[1] === 'close') fds.delete(fd);
    else calls.push({ call: onFd[1], path: fds.get(fd) ?? `fd ${fd}`, flags: '' });
  }
  return calls;
}

t.test('wasm driver: the data directory is fsynced after kedge.db-wal is created', async (t) => {
  // Not skipped without strace: .ci/run installs it, and a machine without it must fail here.
  t.equal(spawnSync('strace', ['-V']).status, 0, 'strace is installed (apt-get install -y strace)');
  const base = fs.realpathSync(tmpDir(t));
  const dir = path.join(base, 'data');
  const trace = path.join(base, 'strace.out');
  // Without -f only the main thread is traced: the one that runs JS and the wasm VFS's synchronous fs calls.
  const r = spawnSync(
    'strace',
    [
      '-o',
      trace,
      '-e',
      'trace=open,openat,fsync,fdatasync,close',
      process.execPath,
      '--input-type=module',
      '-e',
      APPEND_ONE,
      dir,
    ],
    {
      encoding: 'utf8',
    },
  );
  t.equal(r.status, 0, `the child appended one event (${r.stderr.slice(-500)})`);
  const calls = parseTrace(fs.readFileSync(trace, 'utf8'));
  const wal = path.join(dir, 'kedge.db-wal');
  const created = calls.findIndex((c) => c.path === wal && c.flags.includes('O_CREAT'));
  t.ok(created >= 0, 'kedge.db-wal was created');
  const dirSyncs = calls
    .slice(created + 1)
    .filter((c) => (c.call === 'fsync' || c.call === 'fdatasync') && c.path === dir);
  const after = calls
    .slice(created + 1)
    .filter((c) => c.path === dir || c.path.startsWith(dir + path.sep));
  t.ok(
    dirSyncs.length > 0,
    `the data directory was fsynced after kedge.db-wal was created (then: ${after.map((c) => `${c.call} ${path.relative(dir, c.path) || '.'}`).join(', ')})`,
  );
});
