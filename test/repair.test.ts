/**
 * `kedge repair` on real kedge logs (written by the real agent), damaged the ways disks do:
 * random 4 KiB pages overwritten (page 1 spared, and page 1 hit too), a zeroed range, a
 * torn WAL. Which events are intact is worked out here independently of the salvage code:
 * each event carries a unique marker, and the pristine file's raw pages are searched for
 * them. Then the real CLI repairs, and a restarted agent forwards to a real Kafka, read
 * back with kcat. Also: refusal while kedge runs, an intact log, nothing readable.
 */
import t from 'tap';
import type { Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  cpSync,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  truncateSync,
  linkSync,
  renameSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { createTopic, startKafka } from '../scripts/kafka/kafka.ts';
import { AgentProc, REPO, cleanup, freeLoopbackPort, post, tempDir } from './helpers/agent.ts';
import { consume } from './helpers/kcat.ts';
import { run } from './helpers/proc.ts';
import { NODE_FLAGS } from '../agent/runtime-flags.ts';

const PAGE = 4096;
const EVENTS = 100_000;
const AGENT_ID = 'repair-test';
const TOPIC = 'repair';
const root = tempDir('kedge-repair-');
const pristine = join(root, 'pristine');
const offline = {
  KEDGE_AGENT_ID: AGENT_ID,
  KEDGE_KAFKA_BROKERS: '127.0.0.1:1', // refuses: every event stays in the log
  KEDGE_HEARTBEAT_TOPIC: '',
};
t.teardown(() => cleanup(root));

const marker = (i: number) => `ev-${String(i).padStart(7, '0')}-x`;
/** marker index → seq, and seq → value, as the agent acknowledged them. */
const seqOf: number[] = [];
const valueAt = new Map<number, string>();

async function ingest(agent: AgentProc, from: number, count: number): Promise<void> {
  for (let at = from; at < from + count; at += 1000) {
    const lines = Array.from({ length: 1000 }, (_, j) => JSON.stringify({ m: marker(at + j) }));
    const res = await post(
      `${agent.base}/v1/topics/${TOPIC}?key=k${at % 4}`,
      lines.join('\n'),
      'application/x-ndjson',
    );
    if (res.status !== 200) throw new Error(`ingest answered ${res.status}`);
    const first = (res.body as { first_seq: number }).first_seq;
    lines.forEach((l, j) => {
      seqOf[at + j] = first + j;
      valueAt.set(first + j, l);
    });
  }
}

{
  const agent = await AgentProc.start({ env: { ...offline, KEDGE_DATA_DIR: pristine } });
  await ingest(agent, 0, EVENTS);
  const stopped = await agent.stop();
  if (stopped.code !== 0) throw new Error(`kedge exited with ${stopped.code} on SIGTERM`);
  if (existsSync(join(pristine, 'kedge.db-wal')))
    throw new Error('a WAL was left after a clean stop');
}

/** Marker index → page number (1-based), from the raw bytes of a database file. */
function markerPages(file: string): Map<number, number> {
  const buf = readFileSync(file);
  const at = new Map<number, number>();
  for (let p = 0; p * PAGE < buf.length; p++) {
    const text = buf.toString('latin1', p * PAGE, (p + 1) * PAGE);
    for (const m of text.matchAll(/ev-(\d{7})-x/g)) {
      const i = Number(m[1]);
      if (at.has(i)) throw new Error(`marker ${i} found twice (pages ${at.get(i)} and ${p + 1})`);
      at.set(i, p + 1);
    }
  }
  return at;
}

const pristineFile = join(pristine, 'kedge.db');
const pagesOfMarker = markerPages(pristineFile);
const pageCount = statSync(pristineFile).size / PAGE;
t.equal(pagesOfMarker.size, EVENTS, `every one of the ${EVENTS} markers is on exactly one page`);

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
function overwrite(file: string, page: number, bytes: Buffer): void {
  const fd = openSync(file, 'r+');
  writeSync(fd, bytes, 0, bytes.length, (page - 1) * PAGE);
  closeSync(fd);
}
function pickPages(n: number, from: number): Set<number> {
  const s = new Set<number>();
  while (s.size < n) s.add(from + Math.floor(Math.random() * (pageCount - from + 1)));
  return s;
}
function copyOf(name: string): string {
  const dir = join(root, name);
  cpSync(pristine, dir, { recursive: true });
  return dir;
}

interface Repaired {
  code: number | null;
  output: string;
  report: any;
}
async function repair(
  dir: string,
  json = true,
  env: Record<string, string> = {},
): Promise<Repaired> {
  const res = await run(
    process.execPath,
    [...NODE_FLAGS, join(REPO, 'agent/cli.ts'), 'repair', ...(json ? ['--json'] : [])],
    { env: { PATH: process.env.PATH ?? '', KEDGE_DATA_DIR: dir, ...env }, timeoutMs: 120_000 },
  );
  let report: any = null;
  if (json) {
    const start = res.output.indexOf('{');
    if (start >= 0) report = JSON.parse(res.output.slice(start, res.output.lastIndexOf('}') + 1));
  }
  return { code: res.code, output: res.output, report };
}

/** seq → value of every event in a log file (both lanes), read with SQLite. */
function eventsIn(file: string): Map<number, string> {
  const db = new DatabaseSync(file, { readOnly: true });
  try {
    const out = new Map<number, string>();
    for (const table of ['events', 'events_priority']) {
      for (const r of db.prepare(`SELECT seq, value FROM ${table}`).all())
        out.set(Number(r.seq), Buffer.from(r.value as Uint8Array).toString());
    }
    return out;
  } finally {
    db.close();
  }
}

function metaOf(file: string, k: string): string | null {
  const db = new DatabaseSync(file, { readOnly: true });
  try {
    return (db.prepare('SELECT v FROM meta WHERE k = ?').get(k)?.v as string) ?? null;
  } finally {
    db.close();
  }
}

/** The seqs expected back after damaging `pages`: those of markers on any other page. */
function intactSeqs(pages: Set<number>): { kept: number[]; lost: number[] } {
  const kept: number[] = [];
  const lost: number[] = [];
  for (let i = 0; i < EVENTS; i++) (pages.has(pagesOfMarker.get(i)!) ? lost : kept).push(seqOf[i]);
  return { kept, lost };
}

const expand = (ranges: [number, number][]) =>
  ranges.flatMap(([a, b]) => Array.from({ length: b - a + 1 }, (_, k) => a + k));

/** The checks every page-damage case shares. */
async function checkPageDamage(
  tt: Test,
  dir: string,
  damaged: Set<number>,
): Promise<Map<number, string>> {
  const db = join(dir, 'kedge.db');
  const damagedSha = sha(db);
  const { kept, lost } = intactSeqs(damaged);
  const r = await repair(dir);
  tt.equal(
    r.code,
    lost.length > 0 ? 1 : 0,
    `exit ${lost.length > 0 ? 1 : 0} (${lost.length} events lost)`,
  );
  tt.equal(r.report?.events?.saved, kept.length, `the report says ${kept.length} events saved`);
  tt.same(
    expand(r.report?.lost?.ranges ?? []),
    lost,
    'the lost ranges are exactly the seqs of the damaged pages',
  );
  const got = eventsIn(db);
  tt.equal(got.size, kept.length, 'the new log holds exactly the intact events');
  let same = 0;
  for (const s of kept) if (got.get(s) === valueAt.get(s)) same++;
  tt.equal(same, kept.length, 'every intact event is there with its seq and its exact value');
  tt.equal(metaOf(db, 'agent_id'), AGENT_ID, 'the agent id is carried over (same kedge-ids)');
  const aside = readdirSync(dir).filter((f) => f.startsWith('kedge.db.damaged-'));
  tt.equal(aside.length, 1, `the damaged file is kept aside (${aside.join(', ')})`);
  tt.equal(aside[0] && sha(join(dir, aside[0])), damagedSha, 'byte for byte as it was');
  return got;
}

t.test(
  '30 random 4 KiB pages (not page 1) overwritten: intact events saved, then forwarded in order',
  async (tt) => {
    const dir = copyOf('pages');
    const damaged = pickPages(30, 2);
    for (const p of damaged) overwrite(join(dir, 'kedge.db'), p, randomBytes(PAGE));
    const got = await checkPageDamage(tt, dir, damaged);

    const kafka = await startKafka({ brokers: 1 });
    tt.teardown(() => kafka.stop());
    await createTopic(kafka.bootstrap, TOPIC, 1);
    const agent = await AgentProc.start({
      env: { ...offline, KEDGE_DATA_DIR: dir, KEDGE_KAFKA_BROKERS: kafka.bootstrap },
    });
    tt.teardown(() => agent.stop());
    await agent.waitDrained(120_000);
    const recs = await consume(kafka.bootstrap, TOPIC, { expect: got.size, timeoutMs: 60_000 });
    const seqs = recs.map((r) => Number(r.headers['kedge-id']?.split(':')[1]));
    const want = [...got.keys()].sort((a, b) => a - b);
    tt.equal(recs.length, want.length, `kcat reads ${want.length} records, each once`);
    tt.same(seqs, want, 'in seq order');
    tt.ok(
      recs.every(
        (r) =>
          r.headers['kedge-id'] === `${AGENT_ID}:${Number(r.headers['kedge-id'].split(':')[1])}` &&
          r.value.toString() === valueAt.get(Number(r.headers['kedge-id'].split(':')[1])),
      ),
      'each with its original kedge-id and value',
    );
  },
);

t.test('page 1 and 10 random pages overwritten: saved by record shape', async (tt) => {
  const dir = copyOf('page1');
  const damaged = pickPages(10, 2);
  damaged.add(1);
  for (const p of damaged) overwrite(join(dir, 'kedge.db'), p, randomBytes(PAGE));
  await checkPageDamage(tt, dir, damaged);
});

t.test('a zeroed 64 KiB range: the events around it are saved', async (tt) => {
  const dir = copyOf('zeroed');
  const first = Math.floor(pageCount / 2);
  const damaged = new Set(Array.from({ length: 16 }, (_, k) => first + k));
  for (const p of damaged) overwrite(join(dir, 'kedge.db'), p, Buffer.alloc(PAGE));
  const r = await checkPageDamage(tt, dir, damaged);
  tt.ok(r.size > EVENTS / 2, 'most of the log is saved around the zeroed range');
});

t.test(
  'a torn WAL and garbage pages the WAL does not cover: the committed WAL frames are saved',
  async (tt) => {
    const dir = copyOf('wal');
    const agent = await AgentProc.start({ env: { ...offline, KEDGE_DATA_DIR: dir } });
    await ingest(agent, EVENTS, 3000);
    await agent.kill9(); // leaves kedge.db-wal
    const wal = join(dir, 'kedge.db-wal');
    tt.ok(existsSync(wal), 'kill -9 left a WAL');
    truncateSync(wal, statSync(wal).size - 1000); // the last frame torn
    // What SQLite itself makes of the torn pair: the reference (its WAL recovery, not ours).
    const ref = join(root, 'wal-ref');
    cpSync(dir, ref, { recursive: true });
    const want = eventsIn(join(ref, 'kedge.db'));
    tt.ok(want.size > EVENTS, `SQLite reads ${want.size} events from the torn pair`);
    // Damage main-file pages the WAL does not replace (frame headers name their page), so
    // SQLite cannot read past them and the salvage must lay the WAL over the file itself.
    const walBuf = readFileSync(wal);
    const inWal = new Set<number>();
    for (let at = 32; at + 24 + PAGE <= walBuf.length; at += 24 + PAGE)
      inWal.add(walBuf.readUInt32BE(at));
    const onPage = markerPages(join(dir, 'kedge.db'));
    const victims = new Set(
      [...new Set(onPage.values())].filter((p) => !inWal.has(p)).slice(100, 103),
    );
    const lost = [...onPage]
      .filter(([, p]) => victims.has(p))
      .map(([i]) => seqOf[i])
      .sort((a, b) => a - b);
    for (const p of victims) overwrite(join(dir, 'kedge.db'), p, randomBytes(PAGE));
    const r = await repair(dir);
    tt.equal(r.code, 1, `exit 1 (${lost.length} events on ${victims.size} garbage pages lost)`);
    tt.ok(r.report?.wal?.committedFrames > 0, `${r.report?.wal?.committedFrames} WAL frames used`);
    tt.match(r.report?.wal?.stoppedBecause ?? '', /torn/, 'the report names the torn frame');
    tt.same(
      expand(r.report?.lost?.ranges ?? []),
      lost,
      "the lost ranges are the garbage pages' events",
    );
    const got = eventsIn(join(dir, 'kedge.db'));
    const expected = [...want.keys()].filter((s) => !lost.includes(s)).sort((a, b) => a - b);
    tt.ok(
      expected.some((s) => s > seqOf[EVENTS - 1]),
      'events written after the copy (in the WAL) are among them',
    );
    tt.same(
      [...got.keys()].sort((a, b) => a - b),
      expected,
      'every event SQLite sees in the torn pair, but those of the garbage pages',
    );
    tt.ok(
      [...got].every(([s, v]) => want.get(s) === v),
      'with the same values',
    );
    const keptWal = readdirSync(dir).find((f) => /^kedge\.db\.damaged-.*-wal$/.test(f));
    tt.ok(keptWal, `the torn WAL is kept aside (files: ${readdirSync(dir).join(', ')})`);
  },
);

t.test('kedge running: repair refuses in one line, exit 2', async (tt) => {
  const dir = copyOf('running');
  const before = sha(join(dir, 'kedge.db'));
  const agent = await AgentProc.start({ env: { ...offline, KEDGE_DATA_DIR: dir } });
  const r = await repair(dir, false);
  await agent.stop();
  tt.equal(r.code, 2, 'exit 2');
  tt.match(r.output, /in use by kedge pid \d+; stop it first/, 'says kedge runs and to stop it');
  tt.equal(r.output.trim().split('\n').length, 1, 'one line');
  tt.notOk(
    readdirSync(dir).some((f) => f.includes('damaged')),
    'nothing moved',
  );
  tt.equal(sha(join(dir, 'kedge.db')), before, 'kedge.db untouched by repair');
});

t.test('an intact log: nothing to repair, nothing changed, exit 0', async (tt) => {
  const before = sha(pristineFile);
  const files = readdirSync(pristine).sort();
  const r = await repair(pristine, false);
  tt.equal(r.code, 0, 'exit 0');
  tt.match(r.output, /intact: nothing to repair/, 'says there is nothing to repair');
  tt.equal(sha(pristineFile), before, 'kedge.db byte for byte the same');
  tt.same(readdirSync(pristine).sort(), files, 'no file added or removed');
});

t.test('nothing readable: exit 3, the files left as they were', async (tt) => {
  const dir = copyOf('garbage');
  const db = join(dir, 'kedge.db');
  const fd = openSync(db, 'r+');
  writeSync(fd, randomBytes(statSync(db).size), 0, statSync(db).size, 0);
  closeSync(fd);
  const before = sha(db);
  const files = readdirSync(dir).sort();
  const r = await repair(dir, false);
  tt.equal(r.code, 3, 'exit 3');
  tt.match(r.output, /Nothing readable/, 'says nothing was readable');
  tt.match(
    r.output,
    /With KEDGE_AGENT_ID set, change it too: the new log counts seqs from 1 again/,
    'warns that a new log under a fixed agent id would repeat kedge-ids',
  );
  tt.equal(sha(db), before, 'kedge.db untouched');
  tt.same(readdirSync(dir).sort(), files, 'no file added or removed');
});

t.test(
  'the wasm storage driver: an intact log is left alone, a damaged one is salvaged',
  async (tt) => {
    const wasm = { KEDGE_STORAGE: 'wasm' };
    const WASM_EVENTS = 20_000;
    const dir = join(root, 'wasm');
    const agent = await AgentProc.start({ env: { ...offline, ...wasm, KEDGE_DATA_DIR: dir } });
    for (let at = 0; at < WASM_EVENTS; at += 1000) {
      const lines = Array.from({ length: 1000 }, (_, j) => JSON.stringify({ w: at + j }));
      const res = await post(
        `${agent.base}/v1/topics/${TOPIC}`,
        lines.join('\n'),
        'application/x-ndjson',
      );
      if (res.status !== 200) throw new Error(`ingest answered ${res.status}`);
    }
    const stopped = await agent.stop();
    tt.equal(stopped.code, 0, 'the wasm agent stopped cleanly');

    const db = join(dir, 'kedge.db');
    const before = sha(db);
    const files = readdirSync(dir).sort();
    const intact = await repair(dir, false, wasm);
    tt.equal(intact.code, 0, `intact wasm log: exit 0 (${intact.output.trim()})`);
    tt.match(intact.output, /intact: nothing to repair/, 'says there is nothing to repair');
    tt.equal(sha(db), before, 'kedge.db byte for byte the same');
    tt.same(readdirSync(dir).sort(), files, 'no file added or removed');

    const pages = statSync(db).size / PAGE;
    for (const p of [Math.floor(pages / 3), Math.floor(pages / 2), Math.floor((2 * pages) / 3)])
      overwrite(db, p, randomBytes(PAGE));
    const r = await repair(dir, true, wasm);
    tt.equal(r.code, 1, 'damaged wasm log: exit 1 (the events of 3 pages lost)');
    tt.ok(
      r.report?.events?.saved > WASM_EVENTS / 2 && r.report?.events?.saved < WASM_EVENTS,
      `${r.report?.events?.saved} events saved, ${r.report?.lost?.events} lost`,
    );
    tt.equal(
      r.report?.events?.saved + r.report?.lost?.events,
      WASM_EVENTS,
      'saved + lost = every event',
    );
    const again = await AgentProc.start({ env: { ...offline, ...wasm, KEDGE_DATA_DIR: dir } });
    const st = await again.status();
    await again.stop();
    tt.equal(
      st.backlog.events,
      r.report?.events?.saved,
      'a wasm agent opens the repaired log: backlog = saved',
    );
  },
);

t.test(
  'a swap interrupted after the WAL was moved aside: kedge refuses, repair completes it',
  async (tt) => {
    const dir = copyOf('half-swapped');
    const agent = await AgentProc.start({ env: { ...offline, KEDGE_DATA_DIR: dir } });
    const res = await post(
      `${agent.base}/v1/topics/${TOPIC}`,
      Array.from({ length: 3000 }, (_, j) => JSON.stringify({ late: j })).join('\n'),
      'application/x-ndjson',
    );
    tt.equal(res.status, 200, '3000 more events acknowledged');
    const lateLast = (res.body as { last_seq: number }).last_seq;
    await agent.kill9(); // they are in kedge.db-wal only
    const db = join(dir, 'kedge.db');
    tt.ok(existsSync(`${db}-wal`), 'kill -9 left a WAL');
    const total = EVENTS + 3000;
    // The new log repair would have written: here SQLite's own standalone copy of the pair.
    const scratch = join(root, 'half-swapped-scratch');
    cpSync(dir, scratch, { recursive: true });
    const stamp = '20990101T000000Z';
    const fresh = `${db}.repair-${stamp}`;
    const src = new DatabaseSync(join(scratch, 'kedge.db'));
    src.exec(`VACUUM INTO '${fresh}'`);
    src.close();
    tt.equal(eventsIn(fresh).size, total, `the new file holds all ${total} events`);
    // What repair does, stopped between moving the WAL aside and renaming the new file in.
    const aside = `${db}.damaged-${stamp}`;
    writeFileSync(
      join(dir, 'kedge.repair-swap'),
      JSON.stringify({ fresh: `kedge.db.repair-${stamp}`, aside: `kedge.db.damaged-${stamp}` }),
    );
    linkSync(db, aside);
    renameSync(`${db}-wal`, `${aside}-wal`);

    const port = await freeLoopbackPort();
    const start = await run(process.execPath, [...NODE_FLAGS, join(REPO, 'agent/cli.ts'), 'run'], {
      env: {
        PATH: process.env.PATH ?? '',
        ...offline,
        KEDGE_DATA_DIR: dir,
        KEDGE_HTTP_LISTEN: `127.0.0.1:${port}`,
      },
      timeoutMs: 20_000,
    });
    tt.ok(start.code !== 0 && start.signal === null, `kedge refuses to start (exit ${start.code})`);
    tt.match(start.output, /interrupted.*kedge repair/, 'and names kedge repair');
    tt.notMatch(start.output, /kedge running/, 'kedge never reported running');

    const r = await repair(dir, false);
    tt.equal(r.code, 0, 'kedge repair: exit 0');
    tt.match(r.output, /interrupted kedge repair was completed/, `says it completed the swap`);
    tt.comment(r.output.trim());
    tt.notOk(existsSync(join(dir, 'kedge.repair-swap')), 'the marker is gone');
    tt.notOk(existsSync(fresh), 'the new file took the name kedge.db');
    tt.ok(existsSync(aside) && existsSync(`${aside}-wal`), 'the damaged pair is kept aside');

    const again = await AgentProc.start({ env: { ...offline, KEDGE_DATA_DIR: dir } });
    tt.teardown(() => again.stop());
    const st = await again.status();
    tt.equal(st.backlog.events, total, `kedge starts with all ${total} events, the WAL's too`);
    const next = await post(`${again.base}/v1/topics/${TOPIC}`, '{"after":1}', 'application/json');
    tt.equal(
      (next.body as { first_seq: number }).first_seq,
      lateLast + 1,
      'the next event gets the next seq: none handed out twice',
    );
  },
);
