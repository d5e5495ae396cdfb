/**
 * `kedge repair` carries over what is not events: lane cursors, dead letters, destination
 * cursors and dead letters, the agent id and last_seq (docs/repair.md: "cursors and dead
 * letters carried over where readable"). A real log is built in-process with the log API
 * (two lanes, acks, dead letters, then two destinations with their own cursors and dead
 * letters), closed cleanly, and damaged by overwriting pages found by markers in the raw
 * bytes (independently of the salvage code); the real CLI repairs it (a child process), and
 * the repaired file is compared row by row with the pristine one (node:sqlite, read-only),
 * then opened with the log API: backlog, cursors, and the next seq.
 */
import t from 'tap';
import type { Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { closeSync, cpSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { openLog } from '../agent/log/index.ts';
import type { EventInput, EventLog, Lane, StoredEvent } from '../agent/log/index.ts';
import { NODE_FLAGS } from '../agent/runtime-flags.ts';
import { REPO, cleanup, tempDir } from './helpers/agent.ts';
import { run } from './helpers/proc.ts';

const PAGE = 4096;
const MiB = 1 << 20;
const AGENT_ID = 'carry-agent-7';
const root = tempDir('kedge-repair-carry-');
t.teardown(() => cleanup(root));

// The log: 55 batches of 100 events, every 11th batch in the priority lane (seqs are one
// counter across the lanes): bulk 5,000 events, priority 500 (seqs 1001-1100, 2101-2200, …).
const BATCHES = 55;
const laneOfBatch = (b: number): Lane => (b % 11 === 10 ? 'priority' : 'bulk');
/**
 * Dead-lettered seqs, in seq order: 6 bulk, 4 priority. The first ones are refused at the head
 * of their lane, as the forwarder meets them (the cursor moves past them); the others later.
 */
const DEAD = [2001, 2002, 2003, 2151, 2152, 2550, 3250, 3550, 4350, 5050];
const reasonOf = (i: number) =>
  `reason-${String(i).padStart(2, '0')}: ${['UNKNOWN_TOPIC_OR_PARTITION', 'RECORD_TOO_LARGE', 'INVALID_RECORD', 'TOPIC_AUTHORIZATION_FAILED', 'CORRUPT_MESSAGE'][i % 5]} (${i})`;
const marker = (seq: number) => `ev-${String(seq).padStart(5, '0')}-x`;
/** A dead letter's value is big (3 to a page), so the dead letters span several leaf pages. */
const valueFor = (seq: number) => {
  const d = DEAD.indexOf(seq);
  return d < 0
    ? JSON.stringify({ m: marker(seq) })
    : JSON.stringify({
        m: marker(seq),
        dlv: `dlv-${String(d).padStart(2, '0')}`,
        pad: 'p'.repeat(1200),
      });
};

const pristine = join(root, 'pristine');
{
  const log = await openLog({ dir: pristine, driver: 'sqlite', sync: 'normal' });
  log.setMeta('agent_id', AGENT_ID);
  for (let b = 0; b < BATCHES; b++) {
    const lane = laneOfBatch(b);
    const batch: EventInput[] = Array.from({ length: 100 }, (_, j) => {
      const seq = b * 100 + j + 1;
      return {
        topic: lane === 'bulk' ? 'telemetry' : 'alarms',
        key: Buffer.from(`k${seq % 4}`),
        value: Buffer.from(valueFor(seq)),
        headers: { src: `s${seq % 3}` },
        source: 'http',
        lane,
      };
    });
    const r = await log.append(batch);
    if (r.firstSeq !== b * 100 + 1) throw new Error(`batch ${b} got seq ${r.firstSeq}`);
  }
  log.ack(2000, 'bulk');
  log.ack(2150, 'priority');
  for (const [i, seq] of DEAD.entries()) log.deadLetter(eventAt(log, seq), reasonOf(i));
  await log.close();

  // Then two destinations (KEDGE_DESTINATIONS) with their own cursors and dead letters.
  const again = await openLog({ dir: pristine, driver: 'sqlite', sync: 'normal' });
  const [main, archive] = again.destinations(['main', 'archive']);
  main.ack(2050, 'bulk', { state: '{"w":"main-bulk"}', keep: null });
  main.ack(2160, 'priority', { state: null, keep: null });
  archive.ack(2400, 'bulk', { state: '{"w":"archive-bulk"}', keep: 2300 });
  archive.ack(2190, 'priority', { state: '{"w":"archive-prio"}', keep: null });
  archive.deadLetter(eventAt(again, 2450), `${AGENT_ID}:2450`, 'dest-reason-01: too big there');
  archive.deadLetter(eventAt(again, 3260), `${AGENT_ID}:3260`, 'dest-reason-02: refused there');
  await again.close();
}

/** The stored event at `seq` (either lane). */
function eventAt(log: EventLog, seq: number): StoredEvent {
  for (const lane of ['bulk', 'priority'] as const) {
    const [e] = log.readBatch(seq - 1, 1, MiB, lane);
    if (e?.seq === seq) return e;
  }
  throw new Error(`no event ${seq} in the log`);
}

type Row = Record<string, unknown>;
/** Every row of `table` ordered by `order`, blobs as hex (comparable with t.same). */
function rows(file: string, table: string, order: string): Row[] {
  const db = new DatabaseSync(file, { readOnly: true });
  try {
    return db
      .prepare(`SELECT * FROM ${table} ORDER BY ${order}`)
      .all()
      .map((r) =>
        Object.fromEntries(
          Object.entries(r).map(([k, v]) => [
            k,
            v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v,
          ]),
        ),
      );
  } finally {
    db.close();
  }
}
const cursorsOf = (f: string) =>
  Object.fromEntries(rows(f, 'cursors', 'dest').map((r) => [r.dest, Number(r.seq)]));
const metaOf = (f: string) => Object.fromEntries(rows(f, 'meta', 'k').map((r) => [r.k, r.v]));
const eventsOf = (f: string) => ({
  bulk: rows(f, 'events', 'seq'),
  priority: rows(f, 'events_priority', 'seq'),
});

const pristineDb = join(pristine, 'kedge.db');
// Read from a copy: SQLite opening even read-only leaves -wal/-shm beside the file.
const readCopy = join(root, 'pristine-read');
cpSync(pristine, readCopy, { recursive: true });
const readDb = join(readCopy, 'kedge.db');
const before = {
  cursors: cursorsOf(readDb),
  meta: metaOf(readDb),
  deadLetters: rows(readDb, 'dead_letters', 'seq'),
  destCursors: rows(readDb, 'dest_cursors', 'dest, lane'),
  destDeadLetters: rows(readDb, 'dest_dead_letters', 'id'),
  events: eventsOf(readDb),
};
const cursorOf: Record<Lane, number> = {
  bulk: before.cursors.kafka,
  priority: before.cursors['kafka:priority'],
};
/** The events still to forward in the pristine log: above their lane's cursor. */
const unforwarded = {
  bulk: before.events.bulk.filter((r) => Number(r.seq) > cursorOf.bulk),
  priority: before.events.priority.filter((r) => Number(r.seq) > cursorOf.priority),
};

t.test('the pristine log is what the test meant to build', async (tt) => {
  tt.same(
    cursorOf,
    { bulk: 2050, priority: 2160 },
    'lane cursors: the floor over the destinations',
  );
  tt.equal(before.meta.agent_id, AGENT_ID);
  tt.equal(before.meta.last_seq, '5500');
  tt.same(
    before.deadLetters.map((r) => [r.seq, r.reason]),
    DEAD.map((s, i) => [s, reasonOf(i)]),
    '10 dead letters, distinct reasons',
  );
  tt.equal(before.destCursors.length, 4, 'two destinations × two lanes');
  tt.equal(before.destDeadLetters.length, 2);
  // bulk seqs up to 2050: 1-1000, 1101-2050; priority up to 2160: 1001-1100, 2101-2160.
  tt.equal(
    unforwarded.bulk.length,
    5000 - 1950 - 3,
    'bulk backlog: above the cursor, less 3 dead letters',
  );
  tt.equal(unforwarded.priority.length, 500 - 160 - 2, 'priority backlog: less 2 dead letters');
  const below =
    before.events.bulk.length -
    unforwarded.bulk.length +
    before.events.priority.length -
    unforwarded.priority.length;
  tt.comment(`forwarded rows still in the pristine trees (not trimmed yet): ${below}`);
});

/** Page number (1-based) → the marker-like strings in it, from the raw bytes. */
function pageTexts(file: string): string[] {
  const buf = readFileSync(file);
  return Array.from({ length: buf.length / PAGE }, (_, p) =>
    buf.toString('latin1', p * PAGE, (p + 1) * PAGE),
  );
}
const pages = pageTexts(pristineDb); // pages[n - 1] is page n
const markersIn = (text: string) => [...text.matchAll(/ev-(\d{5})-x/g)].map((m) => Number(m[1]));
/** How often each event marker occurs in the file (a moved or deleted row can leave a copy). */
const occurrences = new Map<number, number>();
for (const text of pages)
  for (const s of markersIn(text)) occurrences.set(s, (occurrences.get(s) ?? 0) + 1);
const liveUnforwarded = new Set(
  [...unforwarded.bulk, ...unforwarded.priority].map((r) => Number(r.seq)),
);
/** A table b-tree leaf (page type 0x0d), from the raw header. */
const isLeaf = (page: number) => page > 1 && pages[page - 1].charCodeAt(0) === 0x0d;
/** Anything but events: dead letters (values, reasons), cursors, meta, destinations. */
const NOT_EVENTS = /dlv-|reason-|kafka|last_seq|agent_id|carry-agent|main|archive/;

function overwrite(file: string, page: number): void {
  const fd = openSync(file, 'r+');
  writeSync(fd, randomBytes(PAGE), 0, PAGE, (page - 1) * PAGE);
  closeSync(fd);
}

async function repair(
  dir: string,
  json: boolean,
): Promise<{ code: number | null; output: string; report: any }> {
  const res = await run(
    process.execPath,
    [...NODE_FLAGS, join(REPO, 'agent/cli.ts'), 'repair', ...(json ? ['--json'] : [])],
    { env: { PATH: process.env.PATH ?? '', KEDGE_DATA_DIR: dir }, timeoutMs: 60_000 },
  );
  const start = res.output.indexOf('{');
  const report =
    json && start >= 0
      ? JSON.parse(res.output.slice(start, res.output.lastIndexOf('}') + 1))
      : null;
  return { code: res.code, output: res.output, report };
}

const expand = (ranges: [number, number][]) =>
  ranges.flatMap(([a, b]) => Array.from({ length: b - a + 1 }, (_, k) => a + k));

/** Checks every case shares: cursors, destination rows, meta, events; then the log API on it. */
async function checkCarried(tt: Test, dir: string, lostSeqs: Set<number>): Promise<void> {
  const db = join(dir, 'kedge.db');
  tt.same(
    cursorsOf(db),
    before.cursors,
    `lane cursors exactly as they were (${JSON.stringify(before.cursors)})`,
  );
  tt.same(
    rows(db, 'dest_cursors', 'dest, lane'),
    before.destCursors,
    'destination cursors: seq, keep, state as they were',
  );
  tt.same(
    rows(db, 'dest_dead_letters', 'id'),
    before.destDeadLetters,
    'destination dead letters as they were',
  );
  const meta = metaOf(db);
  tt.equal(meta.agent_id, AGENT_ID, 'agent id carried over');
  tt.equal(meta.last_seq, before.meta.last_seq, 'last_seq carried over');
  const after = eventsOf(db);
  for (const lane of ['bulk', 'priority'] as const) {
    const want = unforwarded[lane].filter((r) => !lostSeqs.has(Number(r.seq)));
    tt.same(
      after[lane],
      want,
      `${lane}: exactly the intact events above the cursor (${want.length}), same rows`,
    );
    tt.notOk(
      after[lane].some((r) => Number(r.seq) <= cursorOf[lane]),
      `${lane}: no event at or below the cursor came back (no resend of forwarded events)`,
    );
  }
  // The log API on the repaired file (a copy: the agent's view, leaving the file as repaired).
  const copy = join(root, `${dir.split('/').at(-1)}-opened`);
  cpSync(dir, copy, { recursive: true });
  const log = await openLog({ dir: copy, driver: 'sqlite', sync: 'normal' });
  try {
    const st = log.stats();
    tt.same(
      { bulk: st.lanes.bulk.cursor, priority: st.lanes.priority.cursor },
      cursorOf,
      'the log opens with the same cursors',
    );
    tt.equal(
      st.backlogEvents,
      after.bulk.length + after.priority.length,
      `backlog ${st.backlogEvents}: the saved events`,
    );
    tt.equal(
      st.deadLetters,
      rows(db, 'dead_letters', 'seq').length,
      'the log counts the dead letters',
    );
    const next = await log.append([
      { topic: 'telemetry', key: null, value: Buffer.from('after'), source: 'http' },
    ]);
    tt.equal(
      next.firstSeq,
      Number(before.meta.last_seq) + 1,
      'the next append gets last_seq + 1: no seq handed out twice',
    );
  } finally {
    await log.close();
  }
}

t.test(
  '3 pages of unforwarded events in the middle damaged: everything else carried over',
  async (tt) => {
    // Pages holding only markers of events that are live, unforwarded and found once in the
    // file (no stale copy elsewhere), and nothing else of kedge's (no dead letter, cursor, meta).
    const candidates: number[] = [];
    pages.forEach((text, i) => {
      const ms = markersIn(text);
      if (
        ms.length > 0 &&
        isLeaf(i + 1) &&
        !NOT_EVENTS.test(text) &&
        ms.every((s) => liveUnforwarded.has(s) && occurrences.get(s) === 1)
      )
        candidates.push(i + 1);
    });
    tt.ok(candidates.length >= 10, `${candidates.length} pages hold only unforwarded events`);
    const mid = Math.floor(candidates.length / 2);
    const damaged = [candidates[mid - 3], candidates[mid], candidates[mid + 3]];
    const lost = new Set(damaged.flatMap((p) => markersIn(pages[p - 1])));
    tt.comment(`damaged pages ${damaged.join(', ')} of ${pages.length}: ${lost.size} events`);

    const dir = join(root, 'events-damaged');
    cpSync(pristine, dir, { recursive: true });
    for (const p of damaged) overwrite(join(dir, 'kedge.db'), p);
    const r = await repair(dir, true);
    tt.equal(r.code, 1, `exit 1: some events lost (${r.report?.damage})`);
    tt.equal(r.report?.deadLetters, DEAD.length, 'the report: 10 dead letters carried over');
    tt.equal(r.report?.destinationDeadLetters, 2, 'and 2 destination dead letters');
    tt.equal(r.report?.destinationCursors, 4, 'and 4 destination cursors');
    tt.same(r.report?.cursors, before.cursors, 'the report names the cursors');
    tt.same(r.report?.cursorsMissing, [], 'no cursor unreadable');
    tt.same(
      [r.report?.deadLettersDamaged, r.report?.destinationDeadLettersDamaged],
      [false, false],
      'neither dead-letter table reported damaged',
    );
    const reported = new Set(expand(r.report?.lost?.ranges ?? []));
    tt.same(
      [...lost].filter((s) => !reported.has(s)),
      [],
      'every lost event is in the lost ranges',
    );
    // By docs/repair.md, a seq between the two lanes' cursors that is in neither lane counts as
    // missing (the repair cannot tell a forwarded event of the lane ahead from a lost one of the
    // lane behind): nothing else may be reported.
    const lo = Math.min(cursorOf.bulk, cursorOf.priority);
    const hi = Math.max(cursorOf.bulk, cursorOf.priority);
    tt.same(
      [...reported].filter((s) => !lost.has(s) && !(s > lo && s <= hi)),
      [],
      'no other seq reported lost',
    );
    tt.same(
      rows(join(dir, 'kedge.db'), 'dead_letters', 'seq'),
      before.deadLetters,
      'all 10 dead letters: same seq, topic, key, value, headers, reason, dead_at, lane',
    );
    await checkCarried(tt, dir, lost);
  },
);

t.test(
  'a page of dead letters damaged: the others carried over, the report says so',
  async (tt) => {
    // Dead-letter reasons are only in dead_letters rows: the pages that hold them are its leaves.
    // A split leaves stale copies in the old page's free space (the old root is an interior
    // page now): a table leaf whose reasons are on no other leaf holds the live rows.
    const reasonsIn = (text: string) =>
      [...text.matchAll(/(?<!dest-)reason-(\d\d): /g)].map((m) => Number(m[1]));
    const seen = new Map<number, number>();
    pages.forEach((text, i) => {
      if (isLeaf(i + 1)) for (const r of reasonsIn(text)) seen.set(r, (seen.get(r) ?? 0) + 1);
    });
    const dlPages = pages
      .map((text, i) => ({ page: i + 1, reasons: reasonsIn(text) }))
      .filter(
        (p) => p.reasons.length > 0 && isLeaf(p.page) && p.reasons.every((i) => seen.get(i) === 1),
      );
    tt.ok(dlPages.length >= 3, `the dead letters span ${dlPages.length} pages`);
    // The page of the first ones: refused at the head of the lane, so at or below the cursor,
    // where no lost range can show them.
    const victim = dlPages.find((p) => p.reasons.includes(0)) ?? dlPages[0];
    const gone = new Set(victim.reasons.map((i) => DEAD[i]));
    tt.ok(
      gone.size > 0 && gone.size < DEAD.length,
      `page ${victim.page} holds dead letters ${[...gone].join(', ')}`,
    );
    tt.notOk(
      /kafka|last_seq|agent_id|dest-reason/.test(pages[victim.page - 1]),
      'and no cursor, meta or destination dead letter',
    );

    const dir = join(root, 'dead-letters-damaged');
    cpSync(pristine, dir, { recursive: true });
    overwrite(join(dir, 'kedge.db'), victim.page);
    const json = await repair(dir, true);
    tt.equal(json.code, 1, 'exit 1: dead letters are lost');
    tt.same(
      rows(join(dir, 'kedge.db'), 'dead_letters', 'seq'),
      before.deadLetters.filter((r) => !gone.has(Number(r.seq))),
      `the other ${DEAD.length - gone.size} dead letters carried over, each row as it was`,
    );
    tt.equal(
      json.report?.deadLetters,
      DEAD.length - gone.size,
      'JSON: deadLetters counts those carried',
    );
    tt.equal(
      json.report?.deadLettersDamaged,
      true,
      'JSON: deadLettersDamaged says some may be lost',
    );
    tt.equal(
      json.report?.destinationDeadLettersDamaged,
      false,
      'JSON: the destination dead letters were intact',
    );
    tt.same(
      json.report?.lost?.ranges,
      [],
      'no event reported missing: the events trees are intact (no false alarm for the priority events forwarded ahead of the bulk cursor)',
    );
    await checkCarried(tt, dir, new Set());

    // The human report of the same repair (on a fresh copy).
    const dir2 = join(root, 'dead-letters-damaged-text');
    cpSync(pristine, dir2, { recursive: true });
    overwrite(join(dir2, 'kedge.db'), victim.page);
    const text = await repair(dir2, false);
    tt.comment(text.output.trim());
    tt.equal(text.code, 1, 'exit 1');
    tt.match(
      text.output,
      new RegExp(
        `dead letters carried over: ${DEAD.length - gone.size} \\(and 2 destination dead letters\\)`,
      ),
      'says how many dead letters were carried over',
    );
    tt.match(
      text.output,
      /the dead-letter table was damaged: some dead letters may be lost/,
      'and that some may be lost',
    );
    tt.notMatch(
      text.output,
      /destinations' dead-letter table was damaged/,
      "not the destinations' (intact)",
    );
  },
);

t.test('the destination dead letters damaged: the report says so', async (tt) => {
  const victim = pages.findIndex((text, i) => isLeaf(i + 1) && /dest-reason-01: /.test(text)) + 1;
  tt.ok(
    victim > 0 && !/kafka|last_seq|agent_id|(?<!dest-)reason-/.test(pages[victim - 1]),
    `page ${victim}: destination dead letters only`,
  );
  const dir = join(root, 'dest-dead-letters-damaged');
  cpSync(pristine, dir, { recursive: true });
  overwrite(join(dir, 'kedge.db'), victim);
  const r = await repair(dir, true);
  tt.equal(r.report?.destinationDeadLettersDamaged, true, 'JSON: destinationDeadLettersDamaged');
  tt.equal(r.report?.deadLettersDamaged, false, 'JSON: the dead letters were intact');
  tt.same(
    rows(join(dir, 'kedge.db'), 'dead_letters', 'seq'),
    before.deadLetters,
    'all 10 dead letters carried over',
  );
  tt.same(cursorsOf(join(dir, 'kedge.db')), before.cursors, 'the lane cursors too');
});
