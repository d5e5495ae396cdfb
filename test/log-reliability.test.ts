/**
 * Issue 11, at the log level, on both drivers:
 * - the space reserve is only ever spent on deleting forwarded rows, never on
 *   appends (a real full tmpfs);
 * - a drop that fails inside the append path rejects the waiting appends with
 *   KEDGE_DISK_FULL instead of crashing the process;
 * - quota admission is FIFO: nothing after the first refused event of a commit is stored.
 */
import t from 'tap';
import type { Test } from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openLog, LogWriteError } from '../agent/log/index.ts';
import type { EventInput, EventLog, StorageDriverName } from '../agent/log/index.ts';

const DRIVERS: StorageDriverName[] = ['sqlite', 'wasm'];
const MiB = 1 << 20;

function tmpDir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kedge-rel-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function ev(n: number, bytes: number): EventInput {
  const pad = Math.max(0, bytes - 20);
  return {
    topic: 'r',
    key: Buffer.from('k'),
    value: Buffer.from(JSON.stringify({ n, p: 'x'.repeat(pad) })),
    source: 'http',
  };
}

/** The append's outcome, or 'never settled' after `ms` (a lost promise is a defect too). */
function outcome(p: Promise<unknown>, ms = 5_000): Promise<unknown> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.then(
      () => 'ok',
      (e: unknown) => e,
    ),
    new Promise((r) => (timer = setTimeout(() => r('never settled'), ms))),
  ]).finally(() => clearTimeout(timer));
}

function code(x: unknown): string {
  return x instanceof LogWriteError ? x.code : String(x);
}

async function settle(ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) await new Promise((r) => setTimeout(r, 5));
}

function storedNs(log: EventLog): number[] {
  const out: number[] = [];
  let after = 0;
  for (let i = 0; i < 10_000; i++) {
    const b = log.readBatch(after, 5000, 64 * MiB);
    if (b.length === 0) return out;
    for (const e of b) out.push(JSON.parse(e.value.toString()).n);
    after = b[b.length - 1].seq;
  }
  throw new Error('readBatch did not finish');
}

for (const driver of DRIVERS) {
  t.test(`driver ${driver}`, async (t) => {
    t.test(
      'a drop that fails in the append path: appends rejected with KEDGE_DISK_FULL, the process lives on',
      async (t) => {
        const dir = tmpDir(t);
        let failDrops = true;
        let dropAttempts = 0;
        const log = await openLog({
          dir,
          driver,
          sync: 'normal',
          quotaBytes: 2 * MiB,
          whenFull: 'drop-oldest',
          beforeDrop: () => {
            dropAttempts++;
            if (failDrops)
              throw Object.assign(new Error('disk I/O error (injected)'), { code: 'EIO' });
          },
        });
        t.teardown(() => log.close());
        let refused: unknown = null;
        let n = 0;
        // ~4 MiB into a 2 MiB quota: the synchronous drop in the append path must run, and fails.
        for (let i = 0; i < 400 && refused === null; i++) {
          const batch = Array.from({ length: 10 }, () => ev(n++, 1000));
          const r = await outcome(log.append(batch));
          if (r !== 'ok') refused = r;
        }
        t.ok(dropAttempts > 0, `the failing DELETE was reached (${dropAttempts} attempts)`);
        t.type(refused, LogWriteError, `the append was refused, not lost (${String(refused)})`);
        t.equal(code(refused), 'KEDGE_DISK_FULL', 'with KEDGE_DISK_FULL (HTTP 507)');
        const lastSeq = log.stats().lastSeq;
        t.equal(
          storedNs(log).length + log.stats().droppedEvents,
          lastSeq,
          'the refused commit stored nothing',
        );
        failDrops = false;
        const again = await outcome(log.append([ev(n++, 1000)]));
        t.equal(again, 'ok', 'appends work again once the DELETE works');
        t.equal(log.stats().lastSeq, lastSeq + 1);
      },
    );

    t.test(
      'quota admission is FIFO: nothing after the first refusal in a commit is stored',
      async (t) => {
        const dir = tmpDir(t);
        const log = await openLog({
          dir,
          driver,
          sync: 'normal',
          quotaBytes: MiB,
          whenFull: 'reject-new',
        });
        t.teardown(() => log.close());
        let n = 0;
        // Fill with ~900 B events until the first refusal.
        for (let i = 0; i < 2000; i++) {
          if ((await outcome(log.append([ev(n++, 900)]))) !== 'ok') break;
        }
        let roundsWithRefusal = 0;
        let violations = 0;
        // Several rounds: each one tick of appends with mixed sizes (big first); the stored ones must be a prefix.
        for (let round = 0; round < 20; round++) {
          const sizes = [900, 60, 60, 60, 2000, 60, 30, 900, 60, 60];
          const results = await Promise.all(sizes.map((s) => outcome(log.append([ev(n++, s)]))));
          const ok = results.map((r) => r === 'ok');
          const firstRefused = ok.indexOf(false);
          if (firstRefused >= 0) {
            roundsWithRefusal++;
            const storedAfter = ok.slice(firstRefused).filter(Boolean).length;
            if (storedAfter > 0) violations++;
            t.equal(
              storedAfter,
              0,
              `round ${round}: accepted ${ok.map((x) => (x ? 'y' : 'n')).join('')} (sizes ${sizes.join(',')})`,
            );
            for (const r of results.slice(firstRefused)) t.equal(code(r), 'KEDGE_QUOTA_FULL');
          }
          // Make a little room for the next round: forward (ack) the two oldest events.
          const head = log.readBatch(log.stats().cursor, 2, 64 * MiB);
          if (head.length > 0) log.ack(head[head.length - 1].seq);
          await settle(20);
        }
        t.ok(roundsWithRefusal >= 5, `${roundsWithRefusal} rounds hit the quota`);
        t.equal(
          violations,
          0,
          'no later event stored after an earlier one of the same commit was refused',
        );
      },
    );
  });
}

// A file system that really fills: a tmpfs of its own (root only, like CI here).
function mountTmpfs(t: Test, size: string): string {
  t.equal(process.getuid?.(), 0, 'runs as root (mounts a tmpfs)');
  const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'kedge-rel-fs-'));
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt], {
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`mount tmpfs: ${r.stderr}`);
  t.teardown(() => {
    spawnSync('umount', ['-l', mnt]);
    fs.rmSync(mnt, { recursive: true, force: true });
  });
  return mnt;
}

t.test('a full disk: the reserve is spent on acks only, never on appends', async (t) => {
  const mnt = mountTmpfs(t, '24m');
  for (const driver of DRIVERS) {
    t.test(driver, async (t) => {
      const dir = path.join(mnt, driver);
      const reserve = path.join(dir, 'kedge.reserve');
      const onWarning = (): void => {};
      process.on('warning', onWarning);
      const log = await openLog({ dir, driver, sync: 'full', reserveBytes: 4 * MiB });
      t.teardown(async () => {
        process.off('warning', onWarning);
        await log.close();
        fs.rmSync(dir, { recursive: true, force: true });
      });
      t.ok(fs.existsSync(reserve), 'reserve created');
      let full: unknown = null;
      let n = 0;
      for (let i = 0; i < 10_000 && full === null; i++) {
        const r = await outcome(log.append(Array.from({ length: 50 }, () => ev(n++, 1000))));
        if (r !== 'ok') full = r;
      }
      t.equal(code(full), 'KEDGE_DISK_FULL', 'the disk filled up');
      const last = log.stats().lastSeq;
      // Forward the oldest events, a batch at a time, until an ack needs the reserve.
      let cursor = 0;
      const ackNext = (count: number): void => {
        const b = log.readBatch(cursor, count, 64 * MiB);
        if (b.length === 0) return;
        log.ack(b[b.length - 1].seq);
        cursor = b[b.length - 1].seq;
      };
      for (let i = 0; i < 200 && fs.existsSync(reserve) && cursor < last; i++) {
        ackNext(100);
        await settle(10);
      }
      t.notOk(
        fs.existsSync(reserve),
        `an ack gave up the reserve (after ${cursor} of ${last} events were forwarded)`,
      );
      t.ok(cursor < last / 2, 'with most of the backlog still to forward');

      // Appends must not take the space the reserve freed: the disk keeps the reserve's size free.
      const free = (): number => {
        const st = fs.statfsSync(dir);
        return st.bavail * st.bsize;
      };
      await settle(300); // the trims the acks scheduled are done: from here on only appends write
      const freeBefore = free();
      let leastFree = freeBefore;
      const refusals = new Set<string>();
      for (let i = 0; i < 200; i++) {
        const r = await outcome(log.append(Array.from({ length: 50 }, () => ev(n++, 1000))));
        if (r !== 'ok') refusals.add(code(r));
        leastFree = Math.min(leastFree, free());
      }
      // The acks' trims may have spent some of it already; appends may only use what lies beyond it.
      const floor = Math.min(freeBefore, 4 * MiB);
      t.ok(
        leastFree >= floor,
        `appends left the reserve's space free (free before ${freeBefore}, least free ${leastFree}, floor ${floor} bytes)`,
      );
      t.same(
        [...refusals],
        ['KEDGE_DISK_FULL'],
        'the rest refused with KEDGE_DISK_FULL (HTTP 507)',
      );

      // So every remaining ack goes through.
      let ackErrors = 0;
      for (let i = 0; i < 10_000 && log.stats().backlogEvents > 0; i++) {
        try {
          ackNext(500);
        } catch {
          ackErrors++;
          break;
        }
        await settle(5);
      }
      t.equal(ackErrors, 0, 'every later ack succeeded');
      t.equal(log.stats().backlogEvents, 0, 'the whole backlog was forwarded');
      for (let i = 0; i < 300 && !fs.existsSync(reserve); i++) await settle(20);
      t.ok(fs.existsSync(reserve), 'forwarded rows trimmed, space returned, reserve re-created');
      let back: unknown = null;
      for (let i = 0; i < 30 && back !== 'ok'; i++) {
        back = await outcome(log.append([ev(n++, 1000)]));
        if (back !== 'ok') await settle(100);
      }
      t.equal(back, 'ok', 'appends accepted again');
    });
  }
});
