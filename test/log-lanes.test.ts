// The log's two lanes (bulk, priority): one seq counter, a cursor each, both
// durable across reopen and kill -9, and a schema-1 log upgraded in place.
import t from 'tap';
import type { Test } from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openLog, DB_FILE, LANES } from '../agent/log/index.ts';
import type {
  EventInput,
  EventLog,
  Lane,
  StorageDriverName,
  StoredEvent,
} from '../agent/log/index.ts';
import { openDriver } from '../agent/log/open-driver.ts';
import { MIGRATIONS } from '../agent/log/schema.ts';

const DRIVERS: StorageDriverName[] = ['sqlite', 'wasm'];
const FIXTURE = fileURLToPath(new URL('./fixtures/lanes-appender.ts', import.meta.url));

function tmpDir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kedge-lanes-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function ev(topic: string, value: string, lane?: Lane): EventInput {
  return { topic, key: null, value: Buffer.from(value), source: 'http', lane };
}

/** Everything of `lane` after `after`, in the order the log hands it out. */
function readLane(log: EventLog, lane: Lane, after = 0): StoredEvent[] {
  const all: StoredEvent[] = [];
  for (let i = 0; i < 10_000; i++) {
    const b = log.readBatch(after, 7, 1 << 20, lane);
    if (b.length === 0) return all;
    all.push(...b);
    after = b[b.length - 1].seq;
  }
  throw new Error('readLane did not finish');
}

for (const driver of DRIVERS) {
  const open = (dir: string) => openLog({ dir, driver, sync: 'full' });

  t.test(`driver ${driver}`, async (t) => {
    t.test(
      'interleaved lanes: one seq counter, order and cursors per lane, kept across reopen',
      async (t) => {
        const dir = tmpDir(t);
        let log = await open(dir);
        // One group commit holding both lanes, then single appends alternating.
        const [a, b] = await Promise.all([
          log.append([
            ev('alarm', 'p1', 'priority'),
            ev('telemetry', 'b1'),
            ev('alarm', 'p2', 'priority'),
          ]),
          log.append([ev('telemetry', 'b2', 'bulk')]),
        ]);
        t.same(a, { firstSeq: 1, lastSeq: 3 });
        t.same(b, { firstSeq: 4, lastSeq: 4 });
        t.equal(log.stats().commits, 1, 'both lanes in one commit');
        for (let i = 3; i <= 10; i++)
          await log.append([
            ev(
              i % 2 ? 'alarm' : 'telemetry',
              `${i % 2 ? 'p' : 'b'}${i}`,
              i % 2 ? 'priority' : 'bulk',
            ),
          ]);

        const prio = readLane(log, 'priority');
        const bulk = readLane(log, 'bulk');
        t.same(
          prio.map((e) => e.value.toString()),
          ['p1', 'p2', 'p3', 'p5', 'p7', 'p9'],
          'priority lane in ingest order',
        );
        t.same(
          bulk.map((e) => e.value.toString()),
          ['b1', 'b2', 'b4', 'b6', 'b8', 'b10'],
          'bulk lane in ingest order',
        );
        t.ok(
          prio.every((e) => e.lane === 'priority') && bulk.every((e) => e.lane === 'bulk'),
          'StoredEvent.lane filled',
        );
        t.same(
          [...prio, ...bulk].map((e) => e.seq).sort((x, y) => x - y),
          [...Array(12).keys()].map((i) => i + 1),
          'seqs 1..12 shared, none reused',
        );
        t.same(
          readLane(log, 'bulk', 0).map((e) => e.seq),
          bulk.map((e) => e.seq),
          'default lane is bulk',
        );
        t.same(
          log.readBatch(0, 100, 1 << 20).map((e) => e.seq),
          bulk.map((e) => e.seq),
          'readBatch without a lane reads bulk',
        );

        let s = log.stats();
        t.equal(s.backlogEvents, 12);
        t.equal(s.lanes.priority.backlogEvents, 6);
        t.equal(s.lanes.bulk.backlogEvents, 6);
        t.equal(s.lanes.priority.backlogBytes, 12);
        t.equal(s.lanes.bulk.backlogBytes, 2 * 5 + 3);
        t.same(Object.keys(s.lanes).sort(), [...LANES].sort());

        // Acknowledge the priority lane up to its 4th event (seq of p5), the bulk lane up to b2.
        log.ack(prio[3].seq, 'priority');
        log.ack(bulk[1].seq);
        s = log.stats();
        t.equal(s.lanes.priority.cursor, prio[3].seq);
        t.equal(s.lanes.bulk.cursor, bulk[1].seq);
        t.equal(s.cursor, bulk[1].seq, 'stats().cursor is the bulk cursor');
        t.equal(s.lanes.priority.backlogEvents, 2);
        t.equal(s.lanes.bulk.backlogEvents, 4);
        t.equal(s.forwardedEvents, 6, 'forwardedEvents counts both lanes');
        t.equal(s.lanes.priority.oldestTs !== null && s.lanes.bulk.oldestTs !== null, true);
        // An ack of one lane does not touch the other lane's events.
        t.same(
          readLane(log, 'bulk', s.lanes.bulk.cursor).map((e) => e.value.toString()),
          ['b4', 'b6', 'b8', 'b10'],
        );
        t.same(
          readLane(log, 'priority', s.lanes.priority.cursor).map((e) => e.value.toString()),
          ['p7', 'p9'],
        );
        log.ack(bulk[1].seq, 'bulk'); // a resend: no-op
        t.equal(log.stats().forwardedEvents, 6);
        t.throws(() => log.ack(99, 'priority'), RangeError);
        t.throws(() => log.readBatch(0, 1, 1, 'express' as Lane), TypeError);
        await t.rejects(log.append([ev('x', 'y', 'express' as Lane)]), {
          code: 'KEDGE_INVALID_EVENT',
        });
        await log.close();

        log = await open(dir);
        s = log.stats();
        t.equal(s.lanes.priority.cursor, prio[3].seq, 'priority cursor durable');
        t.equal(s.lanes.bulk.cursor, bulk[1].seq, 'bulk cursor durable');
        t.equal(s.lanes.priority.backlogEvents, 2);
        t.equal(s.lanes.bulk.backlogEvents, 4);
        t.equal(s.lastSeq, 12);
        t.equal(s.forwardedEvents, 0, 'forwardedEvents counts since open');
        t.same(
          readLane(log, 'priority', s.lanes.priority.cursor).map((e) => e.value.toString()),
          ['p7', 'p9'],
        );
        t.same(await log.append([ev('alarm', 'p13', 'priority')]), { firstSeq: 13, lastSeq: 13 });

        // Drain both lanes completely, reopen: seqs still never go back.
        log.ack(13, 'priority');
        log.ack(12, 'bulk');
        t.equal(log.stats().backlogEvents, 0);
        await log.close();
        log = await open(dir);
        t.equal(log.stats().lastSeq, 13);
        t.same(await log.append([ev('telemetry', 'b14')]), { firstSeq: 14, lastSeq: 14 });
        t.equal(readLane(log, 'priority').length, 0, 'forwarded priority rows deleted');
        await log.close();
      },
    );

    t.test("dead letters keep their lane and move that lane's cursor", async (t) => {
      const dir = tmpDir(t);
      const log = await open(dir);
      t.teardown(() => log.close());
      await log.append([
        ev('a', 'p1', 'priority'),
        ev('b', 'b1'),
        ev('a', 'p2', 'priority'),
        ev('b', 'b2'),
      ]);
      const [p1] = log.readBatch(0, 1, 1 << 20, 'priority');
      log.deadLetter(p1, 'too large');
      const s = log.stats();
      t.equal(
        s.lanes.priority.cursor,
        2,
        'priority cursor past p1 (and past the bulk seq 2 between)',
      );
      t.equal(s.lanes.bulk.cursor, 0, 'bulk cursor untouched');
      t.equal(s.lanes.priority.backlogEvents, 1);
      const [dl] = log.listDeadLetters(5);
      t.equal(dl.lane, 'priority');
      t.equal(dl.value.toString(), 'p1');
      t.throws(
        () => log.deadLetter({ ...p1, lane: 'bulk' }, 'x'),
        RangeError,
        'looked up in the lane it names',
      );
    });

    t.test('kill -9 while appending both lanes loses no acknowledged event or ack', async (t) => {
      const dir = tmpDir(t);
      const child = spawn(process.execPath, [FIXTURE, dir, driver], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      const exited = new Promise<NodeJS.Signals | null>((r) =>
        child.on('exit', (_code, sig) => r(sig)),
      );
      const started = Date.now();
      while (
        !stdout.includes('ready') &&
        Date.now() - started < 20_000 &&
        child.exitCode === null
      ) {
        await new Promise((r) => setTimeout(r, 20));
      }
      t.match(stdout, /^ready /, `child started (stderr: ${stderr})`);
      await new Promise((r) => setTimeout(r, 1000));
      child.kill('SIGKILL');
      t.equal(await exited, 'SIGKILL');

      const lines = stdout.split('\n');
      const appended = lines
        .filter((l) => /^\d+ \d+ \d+ \d+$/.test(l))
        .map((l) => l.split(' ').map(Number));
      const acks = lines.filter((l) => /^ack \w+ \d+$/.test(l)).map((l) => l.split(' '));
      t.ok(appended.length > 10, `${appended.length} acknowledged appends before the kill`);
      const ackedTo: Record<Lane, number> = { bulk: 0, priority: 0 };
      for (const [, lane, seq] of acks)
        ackedTo[lane as Lane] = Math.max(ackedTo[lane as Lane], Number(seq));
      t.ok(
        ackedTo.bulk > 0 && ackedTo.priority > 0,
        `cursors moved before the kill (${JSON.stringify(ackedTo)})`,
      );

      const log = await open(dir);
      t.teardown(() => log.close());
      const s = log.stats();
      t.ok(s.lanes.bulk.cursor >= ackedTo.bulk, 'bulk cursor not behind the last returned ack');
      t.ok(
        s.lanes.priority.cursor >= ackedTo.priority,
        'priority cursor not behind the last returned ack',
      );
      const byLane: Record<Lane, Map<number, StoredEvent>> = {
        bulk: new Map(),
        priority: new Map(),
      };
      for (const lane of LANES)
        for (const e of readLane(log, lane, s.lanes[lane].cursor)) byLane[lane].set(e.seq, e);
      let missing = 0;
      let wrong = 0;
      for (const [first, last, w, b] of appended) {
        const lane: Lane = w % 2 === 0 ? 'bulk' : 'priority';
        for (let seq = first; seq <= last; seq++) {
          if (seq <= s.lanes[lane].cursor) continue; // acknowledged by "Kafka": may be trimmed
          const e = byLane[lane].get(seq);
          if (!e) missing++;
          else if (e.value.toString() !== `${w}:${b}:${seq - first}`) wrong++;
        }
      }
      t.equal(missing, 0, 'every acknowledged, unforwarded event is present in its lane');
      t.equal(wrong, 0, 'with the acknowledged content');
      const maxSeq = Math.max(...appended.map((a) => a[1]));
      t.ok(s.lastSeq >= maxSeq, 'seq counter not behind');
      const next = await log.append([ev('after', 'crash', 'priority')]);
      t.equal(next.firstSeq, s.lastSeq + 1, 'no seq reused after the crash');
    });

    t.test(
      'a schema-1 log from the previous version opens with its events in the bulk lane',
      async (t) => {
        const dir = tmpDir(t);
        const file = path.join(dir, DB_FILE);
        // Built the way the previous version did: its one migration, user_version 1, rows.
        const db = await openDriver(driver, { file });
        db.exec('PRAGMA locking_mode = EXCLUSIVE');
        db.exec('PRAGMA auto_vacuum = INCREMENTAL');
        db.exec('PRAGMA journal_mode = WAL');
        db.exec('BEGIN IMMEDIATE');
        MIGRATIONS[0](db);
        db.exec('PRAGMA user_version = 1');
        db.exec('COMMIT');
        const ins = db.prepare(
          'INSERT INTO events(seq, topic, key, value, headers, ts, size) VALUES (?, ?, ?, ?, ?, ?, ?)',
        );
        for (let seq = 1; seq <= 5; seq++)
          ins.run([seq, 'old', null, Buffer.from(`v${seq}`), null, 1_700_000_000_000 + seq, 2]);
        ins.finalize();
        const misc = db.prepare(
          "INSERT INTO dead_letters(seq, topic, key, value, headers, ts, size, reason, dead_at) VALUES (6, 'old', NULL, x'00', NULL, 1, 1, 'refused', 2)",
        );
        misc.run([]);
        misc.finalize();
        const cur = db.prepare("UPDATE cursors SET seq = 2 WHERE dest = 'kafka'");
        cur.run([]);
        cur.finalize();
        const meta = db.prepare(
          "INSERT INTO meta(k, v) VALUES ('last_seq', '6'), ('agent_id', 'edge-7')",
        );
        meta.run([]);
        meta.finalize();
        db.exec('PRAGMA wal_checkpoint(TRUNCATE)');
        db.close();

        const log = await open(dir);
        t.teardown(() => log.close());
        const s = log.stats();
        t.equal(s.lanes.bulk.cursor, 2, 'bulk cursor is the old cursor');
        t.equal(s.lanes.priority.cursor, 0);
        t.equal(s.lanes.bulk.backlogEvents, 3);
        t.equal(s.lanes.priority.backlogEvents, 0);
        t.equal(s.lastSeq, 6);
        t.same(
          readLane(log, 'bulk', 2).map((e) => [e.seq, e.value.toString(), e.lane]),
          [
            [3, 'v3', 'bulk'],
            [4, 'v4', 'bulk'],
            [5, 'v5', 'bulk'],
          ],
        );
        t.same(readLane(log, 'priority'), []);
        t.equal(log.meta('agent_id'), 'edge-7');
        t.equal(log.listDeadLetters(1)[0].lane, 'bulk', 'old dead letters are bulk');
        t.same(await log.append([ev('new', 'p', 'priority')]), { firstSeq: 7, lastSeq: 7 });
        t.same(
          readLane(log, 'priority').map((e) => e.seq),
          [7],
        );
      },
    );
  });
}
