// Disk quota (drop-oldest, reject-new) and retention, at the log level, with
// small quotas and realistic event sizes. The agent-level behaviour (HTTP 507,
// metrics, Kafka) is in test/disk-full.test.ts.
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openLog, LogWriteError, DB_FILE } from '../agent/log/index.ts';
import type {
  DropReport,
  EventInput,
  EventLog,
  Lane,
  LogOptions,
  StorageDriverName,
  StoredEvent,
} from '../agent/log/index.ts';
import { logFilesBytes } from '../agent/log/quota.ts';

const DRIVERS: StorageDriverName[] = ['sqlite', 'wasm'];
const MiB = 1 << 20;
/** What the README promises on top of the quota: one group commit (here < 200 KiB) and WAL growth until the next checkpoint. */
const SLACK = MiB;

function tmpDir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kedge-quota-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A sensor reading of about 1 KiB, numbered so it can be found again. */
function reading(topic: string, n: number, lane: Lane = 'bulk'): EventInput {
  const value = Buffer.from(JSON.stringify({ n, sensor: topic, pad: 'x'.repeat(1000) }));
  return { topic, key: Buffer.from(`k${n % 7}`), value, source: 'http', lane };
}

async function settle(ms = 100): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) await new Promise((r) => setImmediate(r));
}

function readLane(log: EventLog, lane: Lane, after: number): StoredEvent[] {
  const all: StoredEvent[] = [];
  for (let i = 0; i < 100_000; i++) {
    const b = log.readBatch(after, 5000, 64 * MiB, lane);
    if (b.length === 0) return all;
    all.push(...b);
    after = b[b.length - 1].seq;
  }
  throw new Error('readLane did not finish');
}

function collectDrops(log: EventLog): DropReport[] {
  const drops: DropReport[] = [];
  log.onDrop((d) => drops.push(d));
  return drops;
}

const sum = (ds: DropReport[], f: (d: DropReport) => boolean = () => true): number =>
  ds.filter(f).reduce((n, d) => n + d.events, 0);

for (const driver of DRIVERS) {
  const open = (dir: string, o: Partial<LogOptions> = {}) =>
    openLog({ dir, driver, sync: 'normal', ...o });

  t.test(`driver ${driver}`, async (t) => {
    t.test(
      'drop-oldest: files stay under the quota, bulk dropped first, counted exactly, in-flight and priority kept',
      async (t) => {
        const dir = tmpDir(t);
        const quota = 6 * MiB;
        const log = await open(dir, { quotaBytes: quota });
        t.teardown(() => log.close());
        const drops = collectDrops(log);
        const appended = new Map<string, number>();
        const acked = new Map<string, number>();
        const add = (m: Map<string, number>, k: string, n = 1) => m.set(k, (m.get(k) ?? 0) + n);
        let maxDisk = 0;
        let inflight: StoredEvent[] = [];
        let inflightChecked = 0;
        let n = 0;
        // About 40 MiB of events into a 6 MiB quota; a slow "forwarder" holds one bulk batch in flight at a time.
        for (let round = 0; round < 400; round++) {
          const appends: Promise<unknown>[] = [];
          for (let w = 0; w < 4; w++) {
            const batch: EventInput[] = [];
            for (let i = 0; i < 24; i++) batch.push(reading(i % 2 ? 'sensor-a' : 'sensor-b', n++));
            if (w === 0) batch.push(reading('alarm', n++, 'priority'));
            for (const e of batch) add(appended, e.topic);
            appends.push(log.append(batch));
          }
          await Promise.all(appends);
          maxDisk = Math.max(maxDisk, logFilesBytes(dir, DB_FILE));
          if (round % 10 === 0) {
            if (inflight.length > 0) {
              // Everything handed out is still there, untouched by the drops.
              const again = log.readBatch(
                log.stats().lanes.bulk.cursor,
                inflight.length,
                64 * MiB,
                'bulk',
              );
              if (again.map((e) => e.seq).join() === inflight.map((e) => e.seq).join())
                inflightChecked++;
              log.ack(inflight[inflight.length - 1].seq, 'bulk');
              for (const e of inflight) add(acked, e.topic);
            }
            inflight = log.readBatch(log.stats().lanes.bulk.cursor, 300, 64 * MiB, 'bulk');
          }
        }
        await settle(300);
        maxDisk = Math.max(maxDisk, logFilesBytes(dir, DB_FILE));
        t.equal(inflightChecked, 39, 'every in-flight batch was intact when acknowledged');

        const s = log.stats();
        const totalAppended = [...appended.values()].reduce((a, b) => a + b, 0);
        t.equal(s.lastSeq, totalAppended, `${totalAppended} events appended, none refused`);
        t.ok(totalAppended * 1000 > 6 * quota, 'several times the quota');
        t.ok(
          maxDisk <= quota + SLACK,
          `files at most ${maxDisk} bytes (quota ${quota} + slack ${SLACK})`,
        );
        t.ok(
          s.diskBytes <= quota + SLACK && s.diskBytes > quota / 2,
          `stats().diskBytes ${s.diskBytes}`,
        );
        t.equal(s.quotaBytes, quota);
        t.ok(
          drops.length > 0 && drops.every((d) => d.reason === 'quota'),
          'drops reported, reason quota',
        );
        t.equal(
          sum(drops, (d) => d.lane === 'priority'),
          0,
          'no priority event dropped while bulk events were there',
        );
        t.equal(s.droppedEvents, sum(drops), 'stats().droppedEvents agrees with the reports');
        t.equal(
          s.forwardedEvents,
          [...acked.values()].reduce((a, b) => a + b, 0),
        );

        // Exact accounting, per topic: dropped = appended - still in the log - acknowledged.
        const remaining = new Map<string, number>();
        for (const lane of ['bulk', 'priority'] as Lane[])
          for (const e of readLane(log, lane, s.lanes[lane].cursor)) add(remaining, e.topic);
        for (const topic of appended.keys()) {
          const expected =
            appended.get(topic)! - (remaining.get(topic) ?? 0) - (acked.get(topic) ?? 0);
          t.equal(
            sum(drops, (d) => d.topic === topic),
            expected,
            `${topic}: ${expected} dropped, counted exactly`,
          );
        }
        t.equal(remaining.get('alarm'), appended.get('alarm'), 'every priority event survived');
        t.equal(
          s.backlogEvents,
          [...remaining.values()].reduce((a, b) => a + b, 0),
          'backlog counter agrees with the rows',
        );
        const bytes = drops.reduce((a, d) => a + d.bytes, 0);
        t.ok(
          bytes > sum(drops) * 1000 && bytes < sum(drops) * 1100,
          'dropped bytes reported (key + value)',
        );

        // The oldest went first: what is left of the bulk lane is the newest contiguous tail (after the last ack).
        const bulkLeft = readLane(log, 'bulk', s.lanes.bulk.cursor);
        const ns = bulkLeft.map((e) => JSON.parse(e.value.toString()).n as number);
        t.ok(ns.length > 1000, `${ns.length} bulk events left`);
        t.equal(ns[ns.length - 1], n - 1, 'the newest event is kept');
        t.ok(
          ns.every((x, i) => i === 0 || x > ns[i - 1]),
          'in ingest order',
        );
      },
    );

    t.test(
      'drop-oldest with only priority events left drops priority ones (oldest first)',
      async (t) => {
        const dir = tmpDir(t);
        const log = await open(dir, { quotaBytes: 2 * MiB });
        t.teardown(() => log.close());
        const drops = collectDrops(log);
        let n = 0;
        for (let round = 0; round < 100; round++) {
          const batch: EventInput[] = [];
          for (let i = 0; i < 40; i++) batch.push(reading('alarm', n++, 'priority'));
          await log.append(batch);
        }
        await settle(200);
        const left = readLane(log, 'priority', 0).map(
          (e) => JSON.parse(e.value.toString()).n as number,
        );
        t.ok(sum(drops) > 0 && drops.every((d) => d.lane === 'priority'));
        t.equal(sum(drops) + left.length, n, 'dropped + left = appended');
        t.same(
          left,
          [...Array(left.length).keys()].map((i) => n - left.length + i),
          'the newest are left, contiguous',
        );
        t.ok(logFilesBytes(dir, DB_FILE) <= 2 * MiB + SLACK);
      },
    );

    t.test(
      'reject-new: KEDGE_QUOTA_FULL stores nothing; appends work again once forwarding freed space',
      async (t) => {
        const dir = tmpDir(t);
        const quota = 4 * MiB;
        const log = await open(dir, { quotaBytes: quota, whenFull: 'reject-new' });
        t.teardown(() => log.close());
        const drops = collectDrops(log);
        let n = 0;
        let err: unknown;
        let stored = 0;
        for (let i = 0; i < 1000 && !err; i++) {
          const batch: EventInput[] = [];
          for (let j = 0; j < 20; j++) batch.push(reading('sensor', n++));
          err = await log.append(batch).then(
            (r) => {
              stored += r.lastSeq - r.firstSeq + 1;
              return undefined;
            },
            (e: unknown) => e,
          );
        }
        t.type(err, LogWriteError);
        t.equal((err as LogWriteError).code, 'KEDGE_QUOTA_FULL');
        t.match((err as Error).message, /KEDGE_DISK_QUOTA=4194304/);
        t.match((err as Error).message, /until they are forwarded/);
        t.ok(stored * 1000 > quota / 2, `${stored} events stored before the quota was reached`);
        const s = log.stats();
        t.equal(s.lastSeq, stored, 'the refused append took no seq');
        t.equal(readLane(log, 'bulk', 0).length, stored, 'and stored nothing');
        t.ok(
          logFilesBytes(dir, DB_FILE) <= quota + SLACK,
          `files ${logFilesBytes(dir, DB_FILE)} within quota + slack`,
        );
        await t.rejects(
          log.append([reading('sensor', n++)]),
          { code: 'KEDGE_QUOTA_FULL' },
          'still full',
        );
        t.equal(drops.length, 0, 'nothing dropped');

        // The forwarder catches up with half of the backlog.
        log.ack(Math.floor(stored / 2));
        await settle(300);
        const r = await log.append([reading('sensor', n++)]);
        t.equal(r.firstSeq, stored + 1, 'accepted again, next seq');
        t.equal(log.stats().backlogEvents, stored - Math.floor(stored / 2) + 1);
      },
    );

    t.test(
      'retention: exactly the events older than the retention are dropped, counted, in-flight kept',
      async (t) => {
        const dir = tmpDir(t);
        let clock = Date.UTC(2026, 0, 1);
        const now = () => clock;
        const hour = 3600_000;
        let log = await open(dir, { retentionMs: hour, now });
        let drops = collectDrops(log);
        const old: EventInput[] = [];
        for (let i = 0; i < 300; i++)
          old.push(reading(i % 3 === 0 ? 'alarm' : 'sensor', i, i % 3 === 0 ? 'priority' : 'bulk'));
        await log.append(old.slice(0, 150));
        clock += 10 * 60_000;
        await log.append(old.slice(150));
        const inflight = log.readBatch(0, 20, MiB, 'bulk'); // handed to the forwarder, not yet acknowledged
        clock += hour - 5 * 60_000; // the first 150 are now 65 min old, the rest 55 min
        await log.append([reading('sensor', 1000), reading('alarm', 1001, 'priority')]);
        await settle(200);
        const oldBulk = old.slice(0, 150).filter((e) => e.lane === 'bulk').length;
        const oldPrio = 150 - oldBulk;
        t.equal(
          sum(drops, (d) => d.lane === 'bulk'),
          oldBulk - 20,
          'bulk: the 65-minute-old events minus the 20 in flight',
        );
        t.equal(
          sum(drops, (d) => d.lane === 'priority'),
          oldPrio,
          'priority: all its 65-minute-old events',
        );
        t.ok(drops.every((d) => d.reason === 'retention'));
        t.same(new Set(drops.map((d) => d.topic)), new Set(['sensor', 'alarm']));
        t.equal(log.stats().backlogEvents, 302 - (oldBulk - 20) - oldPrio);
        t.equal(log.stats().droppedEvents, sum(drops));
        t.same(
          log.readBatch(0, 20, MiB, 'bulk').map((e) => e.seq),
          inflight.map((e) => e.seq),
          'in-flight events still there',
        );
        log.ack(inflight[inflight.length - 1].seq, 'bulk');
        const oldestLeft = log.stats().oldestTs!;
        t.equal(
          oldestLeft,
          Date.UTC(2026, 0, 1) + 10 * 60_000,
          'the oldest left is from the second commit',
        );
        await log.close();

        // Closed for a while: the check at open drops what aged meanwhile (here everything but the last two).
        clock += 10 * 60_000;
        log = await open(dir, { retentionMs: hour, now });
        drops = collectDrops(log);
        t.teardown(() => log.close());
        await settle(200);
        t.equal(sum(drops), 150, 'the 150 events of the second commit dropped at open');
        t.equal(log.stats().backlogEvents, 2);
        t.same(
          readLane(log, 'bulk', 0).map((e) => JSON.parse(e.value.toString()).n),
          [1000],
        );
      },
    );
  });
}
