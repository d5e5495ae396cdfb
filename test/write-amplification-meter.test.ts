/**
 * The pure parts of the write-amplification figure: parsing /proc/<pid>/io, the reasons
 * given when it cannot be read, the meter's since-start and recent ratios (on a given
 * clock and kernel readings), and what the metrics and the status section show.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import {
  diskWrittenBytes,
  parseProcIo,
  type ProcIo,
  ProcIoUnavailableError,
  readProcIo,
  registerWriteMetrics,
  WriteAmplificationMeter,
} from '../agent/observe/write-amplification.ts';
import { writeSection } from '../agent/status/document.ts';

const SAMPLE = `rchar: 323934931
wchar: 323929600
syscr: 632687
syscw: 632675
read_bytes: 0
write_bytes: 323932160
cancelled_write_bytes: 4096
`;

t.test('parses /proc/<pid>/io', async (tt) => {
  const io = parseProcIo(SAMPLE);
  tt.same(io, { wchar: 323929600, writeBytes: 323932160, cancelledWriteBytes: 4096 });
  tt.equal(diskWrittenBytes(io!), 323932160 - 4096, 'written = write_bytes - cancelled');
  tt.equal(
    diskWrittenBytes({ wchar: 0, writeBytes: 10, cancelledWriteBytes: 4096 }),
    0,
    'never negative',
  );
  tt.equal(parseProcIo(''), null, 'empty: null');
  tt.equal(parseProcIo('rchar: 1\nwchar: 2\n'), null, 'no write_bytes: null');
  tt.equal(parseProcIo(SAMPLE.replace('write_bytes: 323932160', 'write_bytes: lots')), null);
});

t.test('the live /proc/self/io of this process (Linux)', async (tt) => {
  const io = readProcIo();
  tt.type(io.writeBytes, 'number');
  tt.ok(io.writeBytes >= 0 && io.cancelledWriteBytes >= 0);
});

/** The reason readProcIo gives for `file`, or null when it reads it. */
function reasonFor(file: string): string | null {
  try {
    readProcIo(file);
    return null;
  } catch (e) {
    return e instanceof ProcIoUnavailableError ? e.reason : `not a ProcIoUnavailableError: ${e}`;
  }
}

t.test('missing or unreadable: ProcIoUnavailableError with a reason, never a crash', async (tt) => {
  const dir = mkdtempSync(join(tmpdir(), 'kedge-procio-'));
  tt.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const missing = join(dir, 'io');
  tt.throws(() => readProcIo(missing), ProcIoUnavailableError);
  try {
    readProcIo(missing);
  } catch (e) {
    tt.match((e as ProcIoUnavailableError).reason, /does not exist \(not Linux/);
  }
  const garbled = join(dir, 'garbled');
  writeFileSync(garbled, 'rchar: 1\n');
  tt.match(reasonFor(garbled), /has no write_bytes/);
  // A directory in place of the file: read fails (EISDIR); it is a reason, never a crash.
  tt.match(reasonFor(dir), /not readable|EISDIR/);

  const meter = new WriteAmplificationMeter({
    ingestedBytes: () => 0,
    readIo: () => readProcIo(missing),
  });
  await meter.start(60_000);
  meter.stop();
  tt.equal(meter.available, false);
  const snap = meter.snapshot();
  tt.same(snap, {
    available: false,
    reason: `${missing} does not exist (not Linux, or a kernel without task I/O accounting)`,
  });
  const reg = new Registry();
  registerWriteMetrics(reg, meter);
  tt.notMatch(
    await reg.metrics(),
    /kedge_disk_written_bytes_total|kedge_write_amplification/,
    'metrics absent',
  );
  const section = writeSection(snap);
  tt.equal(section.write_amplification, null);
  tt.equal(section.written_bytes, null);
  tt.match(section.write_amplification_reason, /does not exist/);
});

t.test('since-start and recent ratios, from the baseline taken at start', async (tt) => {
  let now = 1_000_000;
  let io: ProcIo = { wchar: 0, writeBytes: 50_000_000, cancelledWriteBytes: 0 };
  let ingested = 0;
  const meter = new WriteAmplificationMeter({
    ingestedBytes: async () => ingested,
    readIo: () => io,
    windowMs: 300_000,
    clock: () => now,
  });
  await meter.start(60_000);
  meter.stop();
  let s = meter.snapshot();
  tt.same(
    s.available && [s.writtenBytes, s.ratio, s.recentRatio],
    [0, null, null],
    'writes before start (log open, the reserve) are not counted; nothing ingested: no ratio',
  );
  tt.match(writeSection(s), {
    written_bytes: 0,
    write_amplification_reason: 'nothing ingested yet',
  });

  // 10 minutes at 3× (1 MB ingested, 3 MB written per minute) ...
  for (let m = 1; m <= 10; m++) {
    now += 60_000;
    ingested += 1_000_000;
    io = { ...io, writeBytes: io.writeBytes + 3_000_000 };
    await meter.sample();
  }
  s = meter.snapshot();
  tt.match(s, {
    available: true,
    writtenBytes: 30_000_000,
    ingestedBytes: 10_000_000,
    ratio: 3,
    recentRatio: 3,
  });
  // ... then 5 minutes at 8× (small batches): the recent ratio shows it at once, the since-start one drifts.
  for (let m = 1; m <= 5; m++) {
    now += 60_000;
    ingested += 1_000_000;
    io = { ...io, writeBytes: io.writeBytes + 8_000_000 };
    await meter.sample();
  }
  s = meter.snapshot();
  tt.match(s, {
    ratio: Math.round((70 / 15) * 100) / 100,
    recentRatio: 8,
    recentWindowMs: 300_000,
  });
  // Nothing ingested for 5 minutes (only forwarding writes): recent is null, since-start stays.
  for (let m = 1; m <= 5; m++) {
    now += 60_000;
    io = {
      ...io,
      writeBytes: io.writeBytes + 100_000,
      cancelledWriteBytes: io.cancelledWriteBytes + 50_000,
    };
    await meter.sample();
  }
  s = meter.snapshot();
  tt.match(s, { recentRatio: null, writtenBytes: 70_250_000 });
  tt.match(writeSection(s), {
    written_bytes: 70_250_000,
    ingested_bytes: 15_000_000,
    write_amplification: 4.68,
    write_amplification_recent: null,
    write_amplification_window_seconds: 300,
    write_amplification_reason: null,
  });

  const reg = new Registry();
  registerWriteMetrics(reg, meter);
  const text = await reg.metrics();
  tt.match(
    text,
    /^# TYPE kedge_disk_written_bytes_total counter\nkedge_disk_written_bytes_total 70250000$/m,
  );
  tt.match(text, /^kedge_write_amplification 4\.68$/m);
  // The counter mirrors the sample: scraped twice, it does not double.
  tt.match(await reg.metrics(), /^kedge_disk_written_bytes_total 70250000$/m);
});

t.test(
  '/proc/self/io becomes unreadable later: the last figures stay out, with the reason',
  async (tt) => {
    let fail = false;
    const meter = new WriteAmplificationMeter({
      ingestedBytes: () => 1000,
      readIo: () => {
        if (fail) throw new ProcIoUnavailableError('/proc/self/io is not readable (EACCES)');
        return { wchar: 0, writeBytes: 0, cancelledWriteBytes: 0 };
      },
    });
    await meter.start(60_000);
    meter.stop();
    tt.equal(meter.snapshot().available, true);
    fail = true;
    await meter.sample();
    tt.same(meter.snapshot(), {
      available: false,
      reason: '/proc/self/io is not readable (EACCES)',
    });
  },
);
