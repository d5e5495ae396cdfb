/**
 * `kedge repair` on a disk too small for it, on a real full file system (a tmpfs of the
 * test's own): refused up front when there is too little free space, and, when the disk
 * fills while the new log is being written (another program writing to the same disk),
 * one line that names the data dir and the fix, exit 2, nothing changed and nothing of
 * its own left behind; with the space back, the same repair succeeds.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  cpSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  watch,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { AgentProc, REPO, cleanup, post, tempDir } from './helpers/agent.ts';
import { fillDisk, mountTmpfs } from './helpers/disk.ts';
import { run } from './helpers/proc.ts';
import { NODE_FLAGS } from '../agent/runtime-flags.ts';

const PAGE = 4096;
const MiB = 1 << 20;
const EVENTS = 60_000;
const offline = {
  KEDGE_AGENT_ID: 'repair-disk-full',
  KEDGE_KAFKA_BROKERS: '127.0.0.1:1', // refuses: every event stays in the log
  KEDGE_HEARTBEAT_TOPIC: '',
};
const root = tempDir('kedge-repair-full-');
t.teardown(() => cleanup(root));

// A real kedge log, written by the agent, stopped cleanly, then 3 pages overwritten.
const pristine = join(root, 'pristine');
{
  const agent = await AgentProc.start({ env: { ...offline, KEDGE_DATA_DIR: pristine } });
  for (let at = 0; at < EVENTS; at += 1000) {
    const lines = Array.from({ length: 1000 }, (_, j) => JSON.stringify({ n: at + j, pad: 'x' }));
    const res = await post(
      `${agent.base}/v1/topics/full`,
      lines.join('\n'),
      'application/x-ndjson',
    );
    if (res.status !== 200) throw new Error(`ingest answered ${res.status}`);
  }
  const stopped = await agent.stop();
  if (stopped.code !== 0) throw new Error(`kedge exited with ${stopped.code} on SIGTERM`);
  const db = join(pristine, 'kedge.db');
  const pages = statSync(db).size / PAGE;
  const fd = openSync(db, 'r+');
  for (const p of [Math.floor(pages / 4), Math.floor(pages / 2), Math.floor((3 * pages) / 4)])
    writeSync(fd, randomBytes(PAGE), 0, PAGE, (p - 1) * PAGE);
  closeSync(fd);
}
const logBytes = statSync(join(pristine, 'kedge.db')).size;
const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

/** A copy of the damaged data dir on a tmpfs with room for the log, its copy and 24 MiB. */
function onSmallDisk(): { mnt: string; dir: string } {
  const mnt = mountTmpfs(t, `${Math.ceil((2 * logBytes) / MiB) + 24}m`, 'kedge-repair-full-');
  const dir = join(mnt, 'data');
  cpSync(pristine, dir, { recursive: true });
  return { mnt, dir };
}

async function repair(dir: string): Promise<{ code: number | null; output: string }> {
  const res = await run(
    process.execPath,
    [...NODE_FLAGS, join(REPO, 'agent/cli.ts'), 'repair', '--json'],
    { env: { PATH: process.env.PATH ?? '', KEDGE_DATA_DIR: dir }, timeoutMs: 120_000 },
  );
  return { code: res.code, output: res.output };
}

const lines = (s: string) => s.trim().split('\n').filter(Boolean);

t.test(
  'too little free space: refused before anything is written, one line, exit 2',
  async (tt) => {
    const { mnt, dir } = onSmallDisk();
    fillDisk(join(mnt, 'filler'), logBytes + 4 * MiB); // less than the log and its margin
    const before = sha(join(dir, 'kedge.db'));
    const files = readdirSync(dir).sort();
    const r = await repair(dir);
    tt.equal(r.code, 2, `exit 2 (${r.output.trim()})`);
    tt.equal(lines(r.output).length, 1, 'one line');
    tt.match(
      r.output,
      /kedge: repair: needs about \d+ MiB free in .*data, \d+ MiB free; free space/,
    );
    tt.notMatch(r.output, /\n\s+at /, 'no stack trace');
    tt.equal(sha(join(dir, 'kedge.db')), before, 'kedge.db untouched');
    tt.same(readdirSync(dir).sort(), files, 'no file added or removed');
  },
);

t.test(
  'the disk fills while the new log is written: one line, exit 2, nothing changed; with space back the repair succeeds',
  async (tt) => {
    const { mnt, dir } = onSmallDisk();
    const before = sha(join(dir, 'kedge.db'));
    const files = readdirSync(dir).sort();
    // Another program fills the disk as soon as repair starts its new log.
    let filled = false;
    const watcher = watch(dir, (_ev, name) => {
      if (filled || !String(name ?? '').startsWith('kedge.db.repair-')) return;
      filled = true;
      fillDisk(join(mnt, 'filler'), 0);
    });
    let r: { code: number | null; output: string };
    try {
      r = await repair(dir);
    } finally {
      watcher.close();
    }
    tt.ok(filled, 'the disk was filled after repair created its new log');
    tt.equal(r.code, 2, `exit 2 (${r.output.trim()})`);
    tt.equal(lines(r.output).length, 1, `one line: ${r.output.trim()}`);
    tt.match(r.output, /ran out of space in .*data/, 'names the disk that is full');
    tt.match(r.output, /kedge repair again/, 'and the next step');
    tt.notMatch(r.output, /\n\s+at /, 'no stack trace');
    tt.equal(sha(join(dir, 'kedge.db')), before, 'kedge.db untouched');
    tt.same(readdirSync(dir).sort(), files, 'its half-written new log removed: no file added');

    rmSync(join(mnt, 'filler'));
    const again = await repair(dir);
    tt.equal(again.code, 1, 'with the space back: exit 1 (the events of 3 pages lost)');
    const report = JSON.parse(again.output.slice(again.output.indexOf('{')));
    tt.equal(report.events.saved + report.lost.events, EVENTS, 'saved + lost = every event');
    const agent = await AgentProc.start({ env: { ...offline, KEDGE_DATA_DIR: dir } });
    const st = await agent.status();
    await agent.stop();
    tt.equal(st.backlog.events, report.events.saved, 'kedge opens the repaired log');
  },
);
