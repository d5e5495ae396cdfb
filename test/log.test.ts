/**
 * The durable log, against both storage drivers (node:sqlite and the wasm build).
 */
import t from 'tap';
import type { Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { openLog, LogOpenError, LogWriteError, DB_FILE, LOCK_FILE } from '../agent/log/index.ts';
import type {
  EventInput,
  EventLog,
  LogOptions,
  StorageDriverName,
  StoredEvent,
} from '../agent/log/index.ts';
import { processStartTime } from '../agent/log/lockfile.ts';

const DRIVERS: StorageDriverName[] = ['sqlite', 'wasm'];
const FIXTURE = fileURLToPath(new URL('./fixtures/log-appender.ts', import.meta.url));

function tmpDir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kedge-log-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function ev(
  topic: string,
  value: string | Buffer,
  key: string | null = null,
  headers?: Record<string, string>,
): EventInput {
  return {
    topic,
    key: key === null ? null : Buffer.from(key),
    value: Buffer.isBuffer(value) ? value : Buffer.from(value),
    headers,
    source: 'http',
  };
}

/** Let scheduled flushes and trim steps run. */
async function settle(ticks = 50): Promise<void> {
  for (let i = 0; i < ticks; i++) await new Promise((r) => setImmediate(r));
}

function readAll(log: EventLog, after = 0): StoredEvent[] {
  const all: StoredEvent[] = [];
  for (;;) {
    const b = log.readBatch(after, 5000, 64 << 20);
    if (b.length === 0) return all;
    all.push(...b);
    after = b[b.length - 1].seq;
  }
}

function dbBytes(dir: string): number {
  let n = 0;
  for (const f of [DB_FILE, `${DB_FILE}-wal`]) {
    try {
      n += fs.statSync(path.join(dir, f)).size;
    } catch {
      // no WAL right now
    }
  }
  return n;
}

for (const driver of DRIVERS) {
  t.test(`driver ${driver}`, async (t) => {
    const open = (dir: string, extra: Partial<LogOptions> = {}): Promise<EventLog> =>
      openLog({ dir, driver, sync: 'full', ...extra });

    t.test('append, read in order, ack, trim', async (t) => {
      const dir = tmpDir(t);
      const log = await open(dir);
      const r1 = await log.append([ev('a', 'one', 'k1', { h: 'v' }), ev('b', 'two')]);
      const r2 = await log.append([ev('a', 'three')]);
      t.same(r1, { firstSeq: 1, lastSeq: 2 });
      t.same(r2, { firstSeq: 3, lastSeq: 3 });

      const all = log.readBatch(0, 100, 1 << 20);
      t.same(
        all.map((e) => e.seq),
        [1, 2, 3],
      );
      t.same(
        all.map((e) => e.value.toString()),
        ['one', 'two', 'three'],
      );
      t.ok(
        Buffer.isBuffer(all[0].value) && Buffer.isBuffer(all[0].key),
        'blobs come back as Buffers',
      );
      t.equal(all[0].key!.toString(), 'k1');
      t.same(all[0].headers, { h: 'v' });
      t.equal(all[1].key, null);
      t.equal(all[1].headers, null);
      t.equal(all[0].topic, 'a');
      t.ok(Math.abs(all[0].ts - Date.now()) < 10_000, 'ts is the commit time');

      let s = log.stats();
      t.equal(s.backlogEvents, 3);
      t.equal(s.backlogBytes, 2 + 3 + 3 + 5);
      t.equal(s.cursor, 0);
      t.equal(s.lastSeq, 3);
      t.equal(s.oldestTs, all[0].ts);

      t.same(
        log.readBatch(1, 1, 1 << 20).map((e) => e.seq),
        [2],
        'after/count respected',
      );
      t.same(
        log.readBatch(0, 100, 1).map((e) => e.seq),
        [1],
        'at least one event even over maxBytes',
      );
      t.same(
        log.readBatch(0, 100, 5 + 3).map((e) => e.seq),
        [1, 2],
        'stops before exceeding maxBytes',
      );
      t.same(log.readBatch(3, 100, 100), [], 'nothing after the end');

      log.ack(2);
      await settle();
      s = log.stats();
      t.equal(s.cursor, 2);
      t.equal(s.backlogEvents, 1);
      t.equal(s.backlogBytes, 5);
      t.equal(s.oldestTs, all[2].ts);
      t.same(
        log.readBatch(0, 100, 1 << 20).map((e) => e.seq),
        [3],
        'acknowledged rows are deleted',
      );
      log.ack(1); // older ack: no-op
      t.equal(log.stats().cursor, 2);
      t.throws(() => log.ack(4), RangeError, 'cannot ack beyond the last seq');
      log.ack(3);
      s = log.stats();
      t.equal(s.backlogEvents, 0);
      t.equal(s.backlogBytes, 0);
      t.equal(s.oldestTs, null);
      await log.close();
    });

    t.test('empty values, large values and many events in one batch', async (t) => {
      const dir = tmpDir(t);
      const log = await open(dir);
      const big = Buffer.alloc(300_000, 7);
      const events = [ev('t', Buffer.alloc(0)), ev('t', big)];
      for (let i = 0; i < 5000; i++) events.push(ev('t', `v${i}`));
      const r = await log.append(events);
      t.same(r, { firstSeq: 1, lastSeq: 5002 });
      const got = readAll(log);
      t.equal(got.length, 5002);
      t.equal(got[0].value.length, 0);
      t.ok(got[1].value.equals(big));
      t.equal(got[5001].value.toString(), 'v4999');
      // Paging inside readBatch: byte budget honoured without loading everything.
      const b = log.readBatch(2, 10_000, 1000);
      t.ok(b.length > 50 && b.length < 500, `byte-bounded batch (${b.length})`);
      await log.close();
    });

    t.test(
      'seq continues across reopen and is never reused after every row was deleted',
      async (t) => {
        const dir = tmpDir(t);
        let log = await open(dir);
        await log.append([ev('t', 'a'), ev('t', 'b'), ev('t', 'c')]);
        await log.close();
        log = await open(dir);
        t.equal(log.stats().lastSeq, 3);
        t.same(await log.append([ev('t', 'd')]), { firstSeq: 4, lastSeq: 4 });
        log.ack(4);
        await settle();
        t.same(readAll(log), [], 'all rows deleted');
        await log.close();
        log = await open(dir);
        const s = log.stats();
        t.equal(s.lastSeq, 4);
        t.equal(s.cursor, 4);
        t.equal(s.backlogEvents, 0);
        t.same(await log.append([ev('t', 'e')]), { firstSeq: 5, lastSeq: 5 }, 'seq 5, not 1');
        await log.close();
      },
    );

    t.test('invalid input stores nothing and consumes no seq', async (t) => {
      const dir = tmpDir(t);
      const log = await open(dir);
      await log.append([ev('t', 'ok')]);
      const bad: unknown[] = [
        [ev('t', 'x'), { topic: '', key: null, value: Buffer.from('y'), source: 'http' }],
        [ev('t', 'x'), { topic: 't', key: null, value: 'not a buffer', source: 'http' }],
        [ev('t', 'x'), { topic: 't', key: 'str', value: Buffer.from('y'), source: 'http' }],
        [
          ev('t', 'x'),
          { topic: 't', key: null, value: Buffer.from('y'), headers: { n: 1 }, source: 'http' },
        ],
        [],
        'nope',
      ];
      for (const b of bad) {
        await t.rejects(log.append(b as EventInput[]), {
          name: 'LogWriteError',
          code: 'KEDGE_INVALID_EVENT',
        });
      }
      t.same(
        readAll(log).map((e) => e.value.toString()),
        ['ok'],
      );
      t.same(await log.append([ev('t', 'next')]), { firstSeq: 2, lastSeq: 2 });
      await log.close();
    });

    t.test('a failed commit rolls back every append in it and the seq counter', async (t) => {
      const dir = tmpDir(t);
      let fail = false;
      const log = await open(dir, {
        beforeCommit: () => {
          if (fail) throw new Error('injected commit failure');
        },
      });
      await log.append([ev('t', 'a')]);
      fail = true;
      const p1 = log.append([ev('t', 'b'), ev('t', 'c')]);
      const p2 = log.append([ev('t', 'd')]);
      await t.rejects(p1, { name: 'LogWriteError', code: 'KEDGE_LOG_WRITE' });
      t.type(await p2.catch((e: unknown) => e), LogWriteError);
      await t.rejects(p2, { name: 'LogWriteError', code: 'KEDGE_LOG_WRITE' });
      fail = false;
      t.equal(log.stats().lastSeq, 1);
      t.equal(log.stats().backlogEvents, 1);
      t.same(await log.append([ev('t', 'e')]), { firstSeq: 2, lastSeq: 2 });
      t.same(
        readAll(log).map((e) => `${e.seq}:${e.value}`),
        ['1:a', '2:e'],
      );
      await log.close();
    });

    t.test(
      'disk full (database size cap) rejects with KEDGE_DISK_FULL and stores nothing',
      async (t) => {
        const dir = tmpDir(t);
        const log = await open(dir, { maxDbBytes: 256 * 1024 });
        await log.append([ev('t', 'small')]);
        const big: EventInput[] = [];
        for (let i = 0; i < 100; i++) big.push(ev('t', Buffer.alloc(10_000, i)));
        const small = log.append([ev('t', 'same commit')]);
        await t.rejects(log.append(big), { name: 'LogWriteError', code: 'KEDGE_DISK_FULL' });
        await t.rejects(small, { code: 'KEDGE_DISK_FULL' }, 'its commit-mates are rejected too');
        t.equal(log.stats().lastSeq, 1);
        t.same(
          await log.append([ev('t', 'fits')]),
          { firstSeq: 2, lastSeq: 2 },
          'still usable afterwards',
        );
        t.same(
          readAll(log).map((e) => e.value.toString()),
          ['small', 'fits'],
        );
        await log.close();
      },
    );

    t.test('dead letters', async (t) => {
      const dir = tmpDir(t);
      let log = await open(dir);
      await log.append([ev('t', 'a'), ev('t', 'b'), ev('t', 'c'), ev('t', 'd')]);
      const [e1, e2, e3] = log.readBatch(0, 3, 1 << 20);
      log.deadLetter(e3, 'later one'); // not next: cursor stays
      t.equal(log.stats().cursor, 0);
      log.deadLetter(e1, 'record too large');
      t.equal(log.stats().cursor, 1, 'cursor moves past the next event');
      log.deadLetter(e2, 'bad');
      t.equal(log.stats().cursor, 3, 'and past an event already dead-lettered');
      let s = log.stats();
      t.equal(s.deadLetters, 3);
      t.equal(s.backlogEvents, 1);
      t.equal(s.backlogBytes, 1);
      t.same(
        readAll(log).map((e) => e.seq),
        [4],
      );
      t.throws(() => log.deadLetter(e1, 'again'), RangeError);
      const dl = log.listDeadLetters(10);
      t.same(
        dl.map((d) => [d.seq, d.value.toString(), d.reason]),
        [
          [3, 'c', 'later one'],
          [2, 'b', 'bad'],
          [1, 'a', 'record too large'],
        ],
      );
      t.ok(dl[0].deadAt >= dl[0].ts);
      t.equal(log.listDeadLetters(1).length, 1);
      await log.close();
      log = await open(dir);
      s = log.stats();
      t.equal(s.deadLetters, 3);
      t.equal(s.cursor, 3);
      t.equal(s.lastSeq, 4);
      await log.close();
    });

    t.test(
      'group commit: 1000 concurrent appends share few commits, each resolved after its commit',
      async (t) => {
        const dir = tmpDir(t);
        const commitsSeen: { no: number; firstSeq: number; lastSeq: number }[] = [];
        let log!: EventLog;
        log = await open(dir, {
          beforeCommit: (info) => {
            commitsSeen.push({ no: log.stats().commits + 1, ...info });
            const until = Date.now() + 5; // a slow disk
            while (Date.now() < until);
          },
        });
        const resolved: { seq: number; commitsAtResolve: number }[] = [];
        const calls: Promise<void>[] = [];
        const one = (i: number): void => {
          calls.push(
            log.append([ev('g', `e${i}`)]).then((r) => {
              resolved.push({ seq: r.firstSeq, commitsAtResolve: log.stats().commits });
            }),
          );
        };
        for (let i = 0; i < 600; i++) one(i);
        // More arriving on later ticks, while earlier commits are pending.
        for (let w = 0; w < 4; w++) {
          await new Promise((r) => setImmediate(r));
          for (let i = 0; i < 100; i++) one(600 + w * 100 + i);
        }
        await Promise.all(calls);
        const commits = log.stats().commits;
        t.equal(resolved.length, 1000);
        t.ok(commits < 50, `${commits} commits for 1000 appends`);
        t.equal(commitsSeen.length, commits, 'hook ran once per commit');
        for (const r of resolved) {
          const c = commitsSeen.find((c) => r.seq >= c.firstSeq && r.seq <= c.lastSeq);
          if (!c || r.commitsAtResolve < c.no) {
            t.fail(`seq ${r.seq} resolved before its commit`);
            break;
          }
        }
        t.same(new Set(resolved.map((r) => r.seq)).size, 1000, 'distinct seqs');
        t.equal(readAll(log).length, 1000);
        await log.close();
      },
    );

    t.test('onAppend listeners and unsubscribe', async (t) => {
      const dir = tmpDir(t);
      const log = await open(dir);
      let n = 0;
      const off = log.onAppend(() => n++);
      await log.append([ev('t', 'a')]);
      await Promise.all([log.append([ev('t', 'b')]), log.append([ev('t', 'c')])]);
      t.equal(n, 2, 'once per commit');
      off();
      await log.append([ev('t', 'd')]);
      t.equal(n, 2);
      await log.close();
    });

    t.test('meta settings persist', async (t) => {
      const dir = tmpDir(t);
      let log = await open(dir);
      t.equal(log.meta('agent_id'), null);
      log.setMeta('agent_id', 'edge-7');
      log.setMeta('agent_id', 'edge-8');
      await log.close();
      log = await open(dir);
      t.equal(log.meta('agent_id'), 'edge-8');
      await log.close();
    });

    t.test('close commits queued appends; later calls are refused', async (t) => {
      const dir = tmpDir(t);
      let log = await open(dir);
      const p = log.append([ev('t', 'queued')]);
      await log.close();
      t.same(await p, { firstSeq: 1, lastSeq: 1 });
      await t.rejects(log.append([ev('t', 'late')]), { code: 'KEDGE_LOG_CLOSED' });
      t.throws(() => log.ack(1), { code: 'KEDGE_LOG_CLOSED' });
      await log.close(); // idempotent
      t.notOk(fs.existsSync(path.join(dir, LOCK_FILE)), 'lock released');
      log = await open(dir);
      t.equal(readAll(log).length, 1);
      await log.close();
    });

    t.test('file size stays bounded while appending and acking 200k events', async (t) => {
      const dir = tmpDir(t);
      const log = await open(dir, { sync: 'normal' });
      const value = Buffer.alloc(200, 'v');
      const TOTAL = 200_000;
      const BATCH = 1000;
      let maxSize = 0;
      for (let done = 0; done < TOTAL; done += BATCH) {
        const batch: EventInput[] = [];
        for (let i = 0; i < BATCH; i++) batch.push(ev('size', value));
        const r = await log.append(batch);
        log.ack(r.lastSeq);
        await settle(2);
        maxSize = Math.max(maxSize, dbBytes(dir));
      }
      await settle();
      const s = log.stats();
      t.equal(s.lastSeq, TOTAL);
      t.equal(s.backlogEvents, 0);
      t.same(readAll(log), []);
      const size = dbBytes(dir);
      const rawBytes = TOTAL * value.length; // 40 MB of payload alone
      t.ok(
        size < rawBytes / 4,
        `db+wal ${size} bytes after the last ack (payload total ${rawBytes}, max seen ${maxSize})`,
      );
      await log.close();
      t.ok(fs.statSync(path.join(dir, DB_FILE)).size < rawBytes / 20, 'db file small after close');
    });

    t.test('incremental vacuum returns space after a big backlog drains', async (t) => {
      const dir = tmpDir(t);
      const log = await open(dir, { sync: 'normal' });
      const value = Buffer.alloc(1000, 'v');
      let last = 0;
      for (let k = 0; k < 20; k++) {
        const batch: EventInput[] = [];
        for (let i = 0; i < 1000; i++) batch.push(ev('vac', value));
        last = (await log.append(batch)).lastSeq;
      }
      const full = dbBytes(dir);
      t.ok(full > 20_000_000, `${full} bytes with 20 MB of events`);
      for (let seq = 2000; seq <= last; seq += 2000) {
        log.ack(seq); // the forwarder acks batch by batch
        await settle(5);
      }
      await settle(300);
      const after = dbBytes(dir);
      t.ok(after < 2_000_000, `db+wal ${after} bytes after draining, while still open`);
      await log.close();
    });

    t.test('data-dir lock', async (t) => {
      t.test('second open in the same process is refused', async (t) => {
        const dir = tmpDir(t);
        const log = await open(dir);
        await t.rejects(open(dir), {
          name: 'LogOpenError',
          code: 'KEDGE_DATA_DIR_LOCKED',
          message: `data dir ${dir} is in use by kedge pid ${process.pid}; stop it first`,
        });
        await log.close();
        const again = await open(dir);
        await again.close();
      });

      t.test('a stale lock (dead pid) is taken over', async (t) => {
        const dir = tmpDir(t);
        const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
        fs.writeFileSync(path.join(dir, LOCK_FILE), `${dead} 12345\n`);
        const log = await open(dir);
        t.equal(
          fs.readFileSync(path.join(dir, LOCK_FILE), 'utf8'),
          `${process.pid} ${processStartTime('self')}\n`,
        );
        await log.close();
      });

      t.test('a recycled pid (live, other start time) is stale too', async (t) => {
        const dir = tmpDir(t);
        fs.writeFileSync(path.join(dir, LOCK_FILE), `${process.pid} 1\n`);
        const log = await open(dir);
        await log.close();
      });

      t.test('a torn (empty) lock file is stale', async (t) => {
        const dir = tmpDir(t);
        fs.writeFileSync(path.join(dir, LOCK_FILE), '');
        const log = await open(dir);
        await log.close();
      });
    });

    t.test('stale wasm .lock directory left by a crash is recovered', async (t) => {
      const dir = tmpDir(t);
      let log = await open(dir);
      await log.append([ev('t', 'kept')]);
      await log.close();
      fs.mkdirSync(path.join(dir, `${DB_FILE}.lock`));
      log = await open(dir);
      t.same(
        readAll(log).map((e) => e.value.toString()),
        ['kept'],
      );
      await log.append([ev('t', 'more')]);
      await log.close();
    });

    t.test('a damaged database is refused with a clear error, never replaced', async (t) => {
      t.test('garbage file', async (t) => {
        const dir = tmpDir(t);
        const file = path.join(dir, DB_FILE);
        const garbage = Buffer.alloc(16384, 'this is not a database ');
        fs.writeFileSync(file, garbage);
        for (let i = 0; i < 2; i++) {
          const err = await open(dir).then(
            () => null,
            (e: unknown) => e,
          );
          t.type(err, LogOpenError);
          t.equal(
            (err as LogOpenError).code,
            'KEDGE_LOG_DAMAGED',
            'not LOCKED on the second try: lock released',
          );
          t.match((err as Error).message, file);
          t.match((err as Error).message, /move it aside/);
        }
        t.ok(fs.readFileSync(file).equals(garbage), 'file left untouched');
      });

      t.test('corrupted pages', async (t) => {
        const dir = tmpDir(t);
        const file = path.join(dir, DB_FILE);
        const log = await open(dir);
        const batch: EventInput[] = [];
        for (let i = 0; i < 2000; i++) batch.push(ev('t', `value number ${i}`, `k${i}`));
        await log.append(batch);
        await log.close();
        const fd = fs.openSync(file, 'r+');
        const size = fs.fstatSync(fd).size;
        t.ok(size > 8 * 4096);
        // Smash a few b-tree pages (not page 1: the header stays valid).
        for (let p = 3; p < 8; p++) fs.writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, p * 4096);
        fs.closeSync(fd);
        await t.rejects(open(dir), {
          name: 'LogOpenError',
          code: 'KEDGE_LOG_DAMAGED',
          message: new RegExp(file),
        });
      });

      t.test('an emptied (0-byte) database of a data dir that held a log', async (t) => {
        const dir = tmpDir(t);
        const file = path.join(dir, DB_FILE);
        const log = await open(dir);
        await log.append([ev('t', 'kept until forwarded')]);
        await log.close();
        fs.truncateSync(file, 0); // what a power cut can leave on some file systems
        await t.rejects(open(dir), {
          name: 'LogOpenError',
          code: 'KEDGE_LOG_DAMAGED',
          message: /empty \(0 bytes\)/,
        });
        t.equal(fs.statSync(file).size, 0, 'left as it was');
        fs.renameSync(file, `${file}.damaged`); // the fix the message gives
        const fresh = await open(dir);
        t.equal(fresh.stats().backlogEvents, 0, 'after moving it aside: a new, empty log');
        await fresh.close();
      });
    });

    t.test('kill -9 while appending loses no acknowledged event', async (t) => {
      const dir = tmpDir(t);
      const child = spawn(process.execPath, [FIXTURE, dir, driver, 'full', 'append'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      const exited = new Promise<NodeJS.Signals | null>((r) =>
        child.on('exit', (_code, sig) => r(sig)),
      );
      const ready = Date.now();
      while (!stdout.includes('ready') && Date.now() - ready < 20_000) {
        if (child.exitCode !== null) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      t.match(stdout, /^ready /, `child started (stderr: ${stderr})`);

      await new Promise((r) => setTimeout(r, 500));
      // While the child runs, the data dir is held by it.
      await t.rejects(open(dir), {
        code: 'KEDGE_DATA_DIR_LOCKED',
        message: new RegExp(`pid ${child.pid};`),
      });
      await new Promise((r) => setTimeout(r, 500));
      child.kill('SIGKILL');
      t.equal(await exited, 'SIGKILL');
      t.match(
        fs.readFileSync(path.join(dir, LOCK_FILE), 'utf8'),
        new RegExp(`^${child.pid} `),
        'dead child left its lock file',
      );
      if (driver === 'wasm')
        t.ok(
          fs.statSync(path.join(dir, `${DB_FILE}.lock`)).isDirectory(),
          'and the wasm lock directory',
        );

      const acked = stdout
        .split('\n')
        .filter((l) => /^\d+ \d+ \d+ \d+$/.test(l))
        .map((l) => l.split(' ').map(Number));
      t.ok(acked.length > 10, `${acked.length} acknowledged appends before the kill`);

      const log = await open(dir);
      const events = readAll(log);
      const bySeq = new Map(events.map((e) => [e.seq, e]));
      let gaps = 0;
      events.forEach((e, i) => {
        if (e.seq !== i + 1) gaps++;
      });
      t.equal(gaps, 0, `seqs continuous 1..${events.length}`);
      let missing = 0;
      let wrong = 0;
      for (const [first, last, w, b] of acked) {
        for (let s = first; s <= last; s++) {
          const e = bySeq.get(s);
          if (!e) missing++;
          else if (e.value.toString() !== `${w}:${b}:${s - first}`) wrong++;
        }
      }
      t.equal(missing, 0, 'every acknowledged event is present');
      t.equal(wrong, 0, 'with the acknowledged content');
      const maxAcked = Math.max(...acked.map((a) => a[1]));
      t.ok(log.stats().lastSeq >= maxAcked);
      t.same(await log.append([ev('t', 'after crash')]), {
        firstSeq: events.length + 1,
        lastSeq: events.length + 1,
      });
      await log.close();
    });
  });
}

t.test('wasm: the .wasm location can be overridden (wasmPath)', async (t) => {
  const dir = tmpDir(t);
  const require = createRequire(import.meta.url);
  const wasm = path.join(
    path.dirname(require.resolve('node-sqlite3-wasm')),
    'node-sqlite3-wasm.wasm',
  );
  const copy = path.join(dir, 'elsewhere.wasm');
  fs.copyFileSync(wasm, copy);
  const run = (wasmPath: string) =>
    spawnSync(process.execPath, [FIXTURE, path.join(dir, 'data'), 'wasm', 'full', 'once'], {
      env: { ...process.env, TEST_WASM_PATH: wasmPath },
      encoding: 'utf8',
    });
  const ok = run(copy);
  t.equal(ok.status, 0, ok.stderr);
  t.equal(JSON.parse(ok.stdout).lastSeq, 1);
  const bad = run(path.join(dir, 'missing.wasm'));
  t.equal(bad.status, 1);
  t.match(bad.stdout, /^error KEDGE_STORAGE_UNAVAILABLE .*missing\.wasm/);
});

// A file system of its own that really fills up: a tmpfs, which only root can mount.
function mountSmallTmpfs(): string | null {
  if (process.getuid?.() !== 0) return null;
  const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'kedge-full-'));
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=20m', 'tmpfs', mnt]).status === 0) return mnt;
  fs.rmSync(mnt, { recursive: true, force: true });
  return null;
}
const smallFs = mountSmallTmpfs();

t.test(
  'a really full disk: appends refused, acks still drain (reserve), space comes back',
  { skip: smallFs ? false : 'needs root to mount a 20 MiB tmpfs' },
  async (t) => {
    const mnt = smallFs!;
    t.teardown(() => {
      spawnSync('umount', [mnt]);
      fs.rmSync(mnt, { recursive: true, force: true });
    });
    for (const driver of DRIVERS) {
      t.test(driver, async (t) => {
        const dir = path.join(mnt, driver);
        const reserve = path.join(dir, 'kedge.reserve');
        const warnings: string[] = [];
        const onWarning = (w: Error): void => {
          warnings.push(w.message);
        };
        process.on('warning', onWarning);
        const log = await openLog({ dir, driver, sync: 'full', reserveBytes: 4 << 20 });
        t.teardown(async () => {
          process.off('warning', onWarning);
          await log.close();
          fs.rmSync(dir, { recursive: true, force: true });
        });
        t.equal(fs.statSync(reserve).size, 4 << 20, 'reserve created');
        let err: unknown;
        for (let i = 0; i < 10_000 && !err; i++) {
          const batch: EventInput[] = [];
          for (let j = 0; j < 50; j++) batch.push(ev('full', Buffer.alloc(1000, j)));
          err = await log.append(batch).then(
            () => undefined,
            (e: unknown) => e,
          );
        }
        t.type(err, LogWriteError);
        t.equal((err as LogWriteError).code, 'KEDGE_DISK_FULL', (err as Error).message);
        const last = log.stats().lastSeq;
        t.ok(last > 5000, `${last} events stored before the disk filled`);
        t.equal(readAll(log).length, last, 'everything acknowledged is there');

        log.ack(last); // would fail with KEDGE_DISK_FULL without the reserve
        t.notOk(fs.existsSync(reserve), 'reserve given up to let the ack through');
        for (let i = 0; i < 100 && !fs.existsSync(reserve); i++)
          await new Promise((r) => setTimeout(r, 20));
        t.match(warnings.join('\n'), /released the 4194304 byte reserve/, 'and says so');
        t.equal(log.stats().backlogEvents, 0);
        t.ok(
          fs.existsSync(reserve),
          'forwarded events trimmed, space returned, reserve re-created',
        );
        t.same(await log.append([ev('full', Buffer.alloc(1000))]), {
          firstSeq: last + 1,
          lastSeq: last + 1,
        });
      });
    }
  },
);

t.test('open options are checked', async (t) => {
  await t.rejects(openLog({ dir: '', driver: 'sqlite', sync: 'full' }), TypeError);
  await t.rejects(
    openLog({ dir: '/tmp/x', driver: 'nope' as StorageDriverName, sync: 'full' }),
    TypeError,
  );
});
