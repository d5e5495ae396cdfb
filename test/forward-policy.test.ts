/**
 * The forwarding policy's pure parts with an injected clock: transfer windows
 * (local time, midnight crossing, several windows, DST) and the rate cap's token
 * bucket (average over a minute, bursts); and the forwarder loop against a fake
 * Kafka: adaptive batches on a slow link, the cap on written bytes. The real-Kafka side is in
 * windows-priority.test.ts; cap accuracy over a throttled link in rate-cap.test.ts.
 */
import t, { type Test } from 'tap';
import { loadConfig } from '../agent/config.ts';
import { TransferWindows } from '../agent/forward/windows.ts';
import { TokenBucket } from '../agent/forward/token-bucket.ts';
import { Forwarder } from '../agent/forward/forwarder.ts';
import type { OutRecord, RecordSink } from '../agent/kafka/producer.ts';
import type { WireMeter } from '../agent/kafka/wire-meter.ts';
import { openLog } from '../agent/log/index.ts';
import { Metrics } from '../agent/observe/metrics.ts';
import { createLogger } from '../agent/observe/logger.ts';
import { cleanup, sleep, tempDir } from './helpers/agent.ts';

const MIN = 60_000;
const HOUR = 60 * MIN;

/** Windows as an operator writes them in the env file. */
function windows(text: string): TransferWindows {
  return new TransferWindows(loadConfig({ KEDGE_FORWARD_WINDOWS: text }).forward.windows);
}

/** A local time on 2026-06-10 (no DST change near), in the process' TZ. */
function at(h: number, m = 0, day = 10, month = 5): Date {
  return new Date(2026, month, day, h, m, 0, 0);
}

/** Runs `fn` with the process in time zone `tz` (Node re-reads TZ when it is assigned). */
function inZone<T>(tz: string, fn: () => T): T {
  const before = process.env.TZ;
  process.env.TZ = tz;
  try {
    return fn();
  } finally {
    if (before === undefined) delete process.env.TZ;
    else process.env.TZ = before;
  }
}

t.test('no windows: always open, never changes', async (t) => {
  for (const w of [new TransferWindows([]), windows('always')]) {
    t.equal(w.isOpen(at(3)), true);
    t.equal(w.msUntilNextChange(at(3)), null);
  }
});

t.test('a window within a day', async (t) => {
  const w = windows('12:00-12:30');
  t.equal(w.isOpen(at(11, 59)), false);
  t.equal(w.isOpen(at(12, 0)), true, 'start is inside');
  t.equal(w.isOpen(at(12, 29)), true);
  t.equal(w.isOpen(at(12, 30)), false, 'end is outside');
  t.equal(w.msUntilNextChange(at(11, 0)), HOUR);
  t.equal(w.msUntilNextChange(at(12, 10)), 20 * MIN);
  t.equal(w.msUntilNextChange(at(13, 0)), 23 * HOUR, 'opens again tomorrow');
  t.equal(w.msUntilNextChange(new Date(at(11, 59).getTime() + 59_500)), 500, 'to the millisecond');
});

t.test('22:00-06:00 crosses midnight', async (t) => {
  const w = windows('22:00-06:00');
  t.equal(w.isOpen(at(21, 59)), false);
  t.equal(w.isOpen(at(22, 0)), true);
  t.equal(w.isOpen(at(23, 59)), true);
  t.equal(w.isOpen(at(0, 0)), true);
  t.equal(w.isOpen(at(5, 59)), true);
  t.equal(w.isOpen(at(6, 0)), false);
  t.equal(w.isOpen(at(12, 0)), false);
  t.equal(w.msUntilNextChange(at(23, 0)), 7 * HOUR, 'closes at 06:00 the next day');
  t.equal(w.msUntilNextChange(at(3, 0)), 3 * HOUR);
  t.equal(w.msUntilNextChange(at(6, 0)), 16 * HOUR);
});

t.test('a window ending at 24:00', async (t) => {
  const w = windows('18:00-24:00');
  t.equal(w.isOpen(at(17, 59)), false);
  t.equal(w.isOpen(at(23, 59)), true);
  t.equal(w.isOpen(at(0, 0)), false);
  t.equal(w.msUntilNextChange(at(20, 0)), 4 * HOUR);
});

t.test('several windows; adjacent and overlapping ones merge', async (t) => {
  const w = windows('22:00-06:00,12:00-12:30');
  t.same(
    [at(1), at(7), at(12, 15), at(12, 45), at(22, 30)].map((d) => w.isOpen(d)),
    [true, false, true, false, true],
  );
  t.equal(w.msUntilNextChange(at(7)), 5 * HOUR, 'next is the noon window');
  t.equal(w.msUntilNextChange(at(12, 30)), 9.5 * HOUR, 'then the night one');

  const adjacent = windows('08:00-12:00,12:00-14:00');
  t.equal(adjacent.msUntilNextChange(at(9)), 5 * HOUR, 'no change at the shared boundary 12:00');
  const overlapping = windows('08:00-13:00,12:00-14:00');
  t.equal(overlapping.msUntilNextChange(at(12, 30)), 1.5 * HOUR);
  const wholeDay = windows('00:00-12:00,12:00-24:00');
  t.equal(wholeDay.isOpen(at(17)), true);
  t.equal(wholeDay.msUntilNextChange(at(17)), null, 'covers the day: never changes');
});

t.test('local time honours TZ', async (t) => {
  const instant = Date.UTC(2026, 5, 10, 20, 0); // 20:00 UTC
  const w = windows('22:00-06:00');
  t.equal(
    inZone('UTC', () => w.isOpen(new Date(instant))),
    false,
    '20:00 in UTC',
  );
  t.equal(
    inZone('Europe/Berlin', () => w.isOpen(new Date(instant))),
    true,
    '22:00 in Berlin (CEST)',
  );
  t.equal(
    inZone('Asia/Kolkata', () => w.isOpen(new Date(instant))),
    true,
    '01:30 in India',
  );
  t.equal(
    inZone('Asia/Kolkata', () => w.msUntilNextChange(new Date(instant))),
    4.5 * HOUR,
  );
});

t.test('DST: windows follow the wall clock', async (t) => {
  inZone('Europe/Berlin', () => {
    const w = windows('22:00-06:00');
    // 2026-03-29 02:00 CET becomes 03:00 CEST: that night is an hour shorter.
    t.equal(
      w.msUntilNextChange(new Date(2026, 2, 28, 23, 0)),
      6 * HOUR,
      'spring forward: 23:00 to 06:00 is 6 h',
    );
    // 2026-10-25 03:00 CEST becomes 02:00 CET: an hour longer.
    t.equal(
      w.msUntilNextChange(new Date(2026, 9, 24, 23, 0)),
      8 * HOUR,
      'fall back: 23:00 to 06:00 is 8 h',
    );
    t.equal(w.isOpen(new Date(2026, 2, 29, 3, 30)), true);
    // A boundary inside the skipped hour (02:30 does not exist that night) still happens.
    const skipped = windows('02:30-05:00');
    const ms = skipped.msUntilNextChange(new Date(2026, 2, 29, 1, 0));
    t.ok(ms !== null && ms > 0 && ms <= 2 * HOUR, `opens within the night (${ms} ms)`);
  });
});

/**
 * A sender against the bucket with a fake clock: batches of random wire size,
 * a link `linkFactor` times faster than the cap, and late timer wakeups as on
 * a busy device. Returns [time, bytes] of every send.
 */
function simulate(opts: {
  rate: number;
  batch: number;
  seconds: number;
  linkFactor: number;
  idleUntil?: number;
  seed?: number;
  capacity?: number;
}): Array<[number, number]> {
  let now = 0;
  let seed = opts.seed ?? 42;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  // Capacity 0, as the forwarder uses it, unless a test says otherwise.
  const bucket = new TokenBucket(opts.rate, opts.capacity ?? 0, () => now);
  const sends: Array<[number, number]> = [];
  now = opts.idleUntil ?? 0;
  while (now < opts.seconds * 1000) {
    const wait = bucket.waitMs();
    if (wait > 0) {
      now += wait + random() * 20; // timers fire late, never early
      continue;
    }
    const bytes = Math.round(opts.batch * (0.3 + 0.7 * random()));
    const startedAt = now;
    sends.push([now, bytes]);
    now += (bytes / (opts.rate * opts.linkFactor)) * 1000;
    bucket.charge(bytes, startedAt);
  }
  return sends;
}

t.test('token bucket: every 60 s window within ±10 % of the cap', async (t) => {
  for (const [rate, batch] of [
    [256 * 1024, 64 * 1024],
    [1024 * 1024, 512 * 1024],
    [64 * 1024, 16 * 1024],
    [2048, 4096],
  ]) {
    const sends = simulate({ rate, batch, seconds: 600, linkFactor: 8 });
    let worst = 0;
    for (let start = 0; start + 60_000 <= 600_000; start += 1_000) {
      const bytes = sends
        .filter(([ts]) => ts >= start && ts < start + 60_000)
        .reduce((n, [, b]) => n + b, 0);
      worst = Math.max(worst, Math.abs(bytes / 60 / rate - 1));
    }
    t.ok(
      worst <= 0.1,
      `rate ${rate} B/s, batches up to ${batch} B: worst 60 s window off by ${(worst * 100).toFixed(1)} %`,
    );
  }
});

t.test('token bucket: after idle, a burst is at most one batch above the rate', async (t) => {
  const rate = 100_000;
  const batch = 50_000;
  // Bytes on the wire ahead of the rate line, counting each batch as sent at once.
  const ahead = (sends: Array<[number, number]>) => {
    const start = sends[0][0];
    let sent = 0;
    let excess = 0;
    for (const [ts, bytes] of sends) {
      sent += bytes;
      excess = Math.max(excess, sent - ((ts - start) * rate) / 1000);
    }
    return excess;
  };
  const sends = simulate({
    rate,
    batch,
    seconds: 3_600 + 30,
    linkFactor: 1_000,
    idleUntil: 3_600_000,
  });
  const excess = ahead(sends);
  t.ok(excess <= batch, `an hour idle, then at most one batch ahead of the rate (${excess} B)`);
  t.ok(excess > 0, 'the first batch goes out at once');
  // The failure this guards against: a saved-up batch of credit lets two batches out back to back.
  const saved = ahead(
    simulate({
      rate,
      batch,
      seconds: 3_600 + 30,
      linkFactor: 1_000,
      idleUntil: 3_600_000,
      capacity: batch,
    }),
  );
  t.ok(
    saved > batch,
    `with a batch of saved credit the burst would be ${saved} B (> one batch): the forwarder uses none`,
  );
});

t.test(
  'token bucket: a batch larger than the credit leaves a debt that delays the next',
  async (t) => {
    let now = 0;
    const b = new TokenBucket(1000, 500, () => now);
    t.equal(b.waitMs(), 0);
    b.charge(2500);
    t.equal(b.waitMs(), 2000, '2000 B of debt at 1000 B/s');
    now = 1500;
    t.equal(b.waitMs(), 500);
    now = 10_000;
    t.equal(b.balance(), 500, 'refills only up to the capacity');
    // Credit earned just after a debt is paid (a late timer) is kept briefly, then capped.
    const late = new TokenBucket(1000, 0, () => now);
    late.charge(1000);
    now += 1000 + 200;
    t.equal(late.balance(), 200, 'a timer 200 ms late keeps its 200 B of credit');
    now += 5000;
    t.equal(late.balance(), 0, 'after an idle spell no credit is saved up with capacity 0');
    t.throws(() => new TokenBucket(0, 1), RangeError);
  },
);

/**
 * A fake Kafka for the forwarder loop: records what it was sent and "writes"
 * `wireBytesPerEvent` per record to a meter. A batch above `hangAbove` events
 * never gets an answer, like a link too slow for it.
 */
function indexes(recs: OutRecord[]): number[] {
  return recs.map((r) => JSON.parse(r.value.toString()).i);
}

class FakeKafka implements RecordSink {
  readonly batches: number[] = [];
  readonly received: OutRecord[] = [];
  written = 0;
  hangAbove = Infinity;
  wireBytesPerEvent = 100;
  latencyMs = 0;
  readonly meter = { total: () => this.written } as unknown as WireMeter;
  async connect(): Promise<void> {}
  async disconnect(): Promise<void> {}
  async send(records: OutRecord[]): Promise<void> {
    this.batches.push(records.length);
    if (records.length > this.hangAbove) return new Promise<void>(() => {});
    if (this.latencyMs > 0) await sleep(this.latencyMs);
    this.written += records.length * this.wireBytesPerEvent;
    this.received.push(...records);
  }
}

async function withForwarder(
  t: Test,
  kafka: FakeKafka,
  events: number,
  opts: { sendDeadlineMs?: number; rate?: number | null; pad?: number; regrowAfterMs?: number },
): Promise<{ fwd: Forwarder; drained: () => boolean }> {
  const dir = tempDir();
  const log = await openLog({ dir, driver: 'sqlite', sync: 'normal' });
  for (let i = 0; i < events; i += 500) {
    await log.append(
      Array.from({ length: Math.min(500, events - i) }, (_, j) => ({
        topic: 't',
        key: Buffer.from('k'),
        value: Buffer.from(JSON.stringify({ i: i + j, pad: 'x'.repeat(opts.pad ?? 0) })),
        source: 'http' as const,
      })),
    );
  }
  const fwd = new Forwarder({
    log,
    sink: kafka,
    agentId: 'a',
    topicPrefix: '',
    maxBatchEvents: 1_000,
    maxBatchBytes: 1024 * 1024,
    sendDeadlineMs: opts.sendDeadlineMs ?? 5_000,
    backoffMinMs: 10,
    backoffMaxMs: 50,
    unknownTopicGraceMs: 60_000,
    metrics: new Metrics(),
    logger: createLogger('error'),
    wire: kafka.meter,
    rateBytesPerSecond: opts.rate ?? null,
    batchRegrowAfterMs: opts.regrowAfterMs,
  });
  fwd.start();
  t.teardown(async () => {
    await fwd.stop();
    await log.close();
    cleanup(dir);
  });
  return { fwd, drained: () => log.stats().backlogEvents === 0 };
}

t.test(
  'adaptive batches: timeouts halve the batch until it fits, successes grow it back',
  async (t) => {
    const kafka = new FakeKafka();
    kafka.hangAbove = 100; // the "link" only manages 100 events within the deadline
    kafka.latencyMs = 10;
    const { drained } = await withForwarder(t, kafka, 3_000, {
      sendDeadlineMs: 200,
      regrowAfterMs: 300,
    });
    for (let i = 0; i < 300 && !drained(); i++) await sleep(50);
    t.ok(drained(), 'everything acknowledged despite the slow link');
    const b = kafka.batches;
    const fits = b.findIndex((n) => n <= kafka.hangAbove);
    t.ok(
      fits > 0 && b.slice(1, fits + 1).every((n, i) => n <= Math.ceil(b[i] / 2)),
      `halved after each timeout until it fits (${b.slice(0, fits + 1)})`,
    );
    t.same(
      indexes(kafka.received),
      Array.from({ length: 3_000 }, (_, i) => i),
      'every event once, in order',
    );
    const timeouts = b.filter((n) => n > kafka.hangAbove).length;
    t.ok(
      timeouts < b.length / 4,
      `held at the size that fits, not regrown at once (${timeouts} of ${b.length} batches timed out)`,
    );
    // Byte budgets: twice the bytes may be a couple more of these (growing) events.
    t.ok(
      b.slice(fits).some((n, i) => n > kafka.hangAbove && n <= 2 * b[fits + i - 1] + 2),
      `after the hold it tries ×2 again (${b})`,
    );
  },
);

t.test(
  'rate cap in the forwarder loop: written bytes paid for before the next batch',
  async (t) => {
    const kafka = new FakeKafka();
    kafka.wireBytesPerEvent = 1_000; // a little more than the log bytes, like a lightly framed record
    const rate = 100_000;
    // A 1 s deadline makes batches of a quarter second of the rate: fine-grained enough for a 3 s look.
    const { fwd } = await withForwarder(t, kafka, 5_000, { rate, pad: 900, sendDeadlineMs: 1_000 });
    await sleep(500);
    const w0 = kafka.written;
    const t0 = performance.now();
    await sleep(3_000);
    const measured = (kafka.written - w0) / ((performance.now() - t0) / 1000);
    t.ok(
      Math.abs(measured / rate - 1) < 0.15,
      `${Math.round(measured)} B/s against a cap of ${rate} B/s`,
    );
    t.equal(fwd.status().rateCapBytesPerSecond, rate);
    const later = kafka.batches.slice(1); // the first is sized before the wire/log ratio is known
    t.ok(
      Math.max(...later) * kafka.wireBytesPerEvent <= 0.3 * rate,
      `batches hold about a quarter of the deadline at the rate (largest ${Math.max(...later)} events)`,
    );
  },
);
