/**
 * Write amplification: bytes this process made the kernel write to storage per byte of
 * events ingested. On an SD card or eMMC it decides how long the device lives (see
 * docs/operations.md, "Write amplification and SD-card life").
 *
 * The disk side comes from /proc/self/io: `write_bytes` minus `cancelled_write_bytes`.
 * The kernel charges `write_bytes` when a page cache page goes from clean to dirty (at
 * write() time, not at writeback), a page at a time, to the process that dirtied it; a
 * page rewritten while still dirty counts once, and pages of a file deleted before
 * writeback come back as `cancelled_write_bytes`. With KEDGE_SYNC=full every commit's
 * fsync cleans the pages, so the next commit's write counts again: the figure follows
 * what reaches the device. It covers every thread (the Kafka threads write nothing to
 * disk) and not the file system's own journal nor the flash controller's internal
 * amplification, so the device writes at least this much.
 *
 * The ingest side is kedge_ingested_bytes_total (key and value bytes committed).
 * Both are sampled every few seconds; the metrics and the status document show the
 * same sample, so they agree.
 */
import { readFileSync } from 'node:fs';
import { Counter, Gauge, type Registry } from 'prom-client';

/** The fields of /proc/<pid>/io that matter here, in bytes. */
export interface ProcIo {
  /** Bytes passed to write() and friends, page cache included (not what reaches the disk). */
  wchar: number;
  /** Bytes of pages this process dirtied (what is sent to the storage layer). */
  writeBytes: number;
  /** Dirty bytes dropped before writeback (file truncated or deleted). */
  cancelledWriteBytes: number;
}

/** /proc/<pid>/io cannot be used; `reason` is one line for people. */
export class ProcIoUnavailableError extends Error {
  readonly reason: string;
  constructor(reason: string, options?: ErrorOptions) {
    super(reason, options);
    this.name = 'ProcIoUnavailableError';
    this.reason = reason;
  }
}

/** Parses the text of /proc/<pid>/io; null when a field we need is missing or not a number. */
export function parseProcIo(text: string): ProcIo | null {
  const fields = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^(\w+):\s*(\d+)\s*$/.exec(line);
    if (m) fields.set(m[1], Number(m[2]));
  }
  const wchar = fields.get('wchar');
  const writeBytes = fields.get('write_bytes');
  const cancelled = fields.get('cancelled_write_bytes');
  if (wchar === undefined || writeBytes === undefined || cancelled === undefined) return null;
  return { wchar, writeBytes, cancelledWriteBytes: cancelled };
}

/** Bytes that reached (or will reach) storage: dirtied minus cancelled. */
export function diskWrittenBytes(io: ProcIo): number {
  return Math.max(0, io.writeBytes - io.cancelledWriteBytes);
}

/** Reads and parses /proc/<pid>/io; throws ProcIoUnavailableError with the reason. */
export function readProcIo(file = '/proc/self/io'): ProcIo {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ProcIoUnavailableError(
      code === 'ENOENT'
        ? `${file} does not exist (not Linux, or a kernel without task I/O accounting)`
        : code === 'EACCES' || code === 'EPERM'
          ? `${file} is not readable (${code}: /proc mounted with hidepid, or a restricted container)`
          : `${file} cannot be read (${code ?? (e as Error).message})`,
      { cause: e },
    );
  }
  const io = parseProcIo(text);
  if (!io) throw new ProcIoUnavailableError(`${file} has no write_bytes/cancelled_write_bytes`);
  return io;
}

/** What the status document and the metrics show: one sample. */
export type WriteAmplification =
  | {
      available: true;
      /** Bytes written to storage since the agent opened its log. */
      writtenBytes: number;
      /** Key and value bytes ingested since start. */
      ingestedBytes: number;
      /** writtenBytes ÷ ingestedBytes; null before anything was ingested. */
      ratio: number | null;
      /** The same over the last `recentWindowMs` (null when nothing was ingested in it). */
      recentRatio: number | null;
      recentWindowMs: number;
      /** When the sample was taken (ms since the epoch). */
      sampledAt: number;
    }
  | { available: false; reason: string };

interface Sample {
  t: number;
  written: number;
  ingested: number;
}

export interface WriteAmplificationOptions {
  /** Key and value bytes ingested so far (kedge_ingested_bytes_total, summed). */
  ingestedBytes: () => number | Promise<number>;
  /** Default: /proc/self/io. */
  readIo?: () => ProcIo;
  /** The recent ratio's window; default 5 minutes. */
  windowMs?: number;
  clock?: () => number;
}

/** Below this many bytes ingested the "recent" window has too little to say. */
const MIN_RECENT_INGEST = 4096;

/**
 * Samples the disk and ingest counters every few seconds. The disk counter is taken
 * relative to the first reading (start()), made after the log is open: opening writes
 * once (the 8 MiB space reserve on a new data dir, WAL recovery), which is not a cost
 * per ingested byte.
 */
export class WriteAmplificationMeter {
  private readonly readIo: () => ProcIo;
  private readonly ingested: () => number | Promise<number>;
  private readonly windowMs: number;
  private readonly clock: () => number;
  private base = 0;
  private unavailable: string | null = null;
  private readonly samples: Sample[] = [];
  private timer: NodeJS.Timeout | null = null;
  private sampling: Promise<void> | null = null;

  constructor(o: WriteAmplificationOptions) {
    this.readIo = o.readIo ?? (() => readProcIo());
    this.ingested = o.ingestedBytes;
    this.windowMs = o.windowMs ?? 300_000;
    this.clock = o.clock ?? Date.now;
  }

  /** False when /proc/self/io cannot be read (the metrics are then not registered). */
  get available(): boolean {
    return this.unavailable === null;
  }

  /** Takes the baseline; then samples every `intervalMs`. Never throws. */
  async start(intervalMs = 5_000): Promise<void> {
    try {
      this.base = diskWrittenBytes(this.readIo());
    } catch (e) {
      this.unavailable =
        e instanceof ProcIoUnavailableError ? e.reason : `/proc/self/io: ${(e as Error).message}`;
      return;
    }
    await this.sample();
    this.timer = setInterval(() => void this.sample(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Takes a sample now (also what the timer does); a sample already under way is shared. */
  sample(): Promise<void> {
    if (this.unavailable !== null) return Promise.resolve();
    this.sampling ??= this.takeSample().finally(() => {
      this.sampling = null;
    });
    return this.sampling;
  }

  private async takeSample(): Promise<void> {
    let written: number;
    try {
      written = Math.max(0, diskWrittenBytes(this.readIo()) - this.base);
    } catch (e) {
      // Readable at start, not now (a remount with hidepid): keep the last sample, say why.
      this.unavailable =
        e instanceof ProcIoUnavailableError ? e.reason : `/proc/self/io: ${(e as Error).message}`;
      return;
    }
    const ingested = await this.ingested();
    const t = this.clock();
    this.samples.push({ t, written, ingested });
    // Keep one sample at or before the window's start, so the window is always covered.
    while (this.samples.length > 2 && t - this.samples[1].t >= this.windowMs) this.samples.shift();
  }

  snapshot(): WriteAmplification {
    const last = this.samples[this.samples.length - 1];
    if (this.unavailable !== null || !last)
      return { available: false, reason: this.unavailable ?? 'not sampled yet' };
    const first = this.samples.find((s) => last.t - s.t <= this.windowMs) ?? last;
    const dIngested = last.ingested - first.ingested;
    return {
      available: true,
      writtenBytes: last.written,
      ingestedBytes: last.ingested,
      ratio: last.ingested > 0 ? round2(last.written / last.ingested) : null,
      recentRatio:
        dIngested >= MIN_RECENT_INGEST ? round2((last.written - first.written) / dIngested) : null,
      recentWindowMs: this.windowMs,
      sampledAt: last.t,
    };
  }
}

function round2(n: number): number {
  return Math.round(n * 100) / 100;
}

/**
 * kedge_disk_written_bytes_total (a counter mirroring the kernel's, the way prom-client's
 * own process_cpu_seconds_total does) and kedge_write_amplification (since start; NaN
 * before anything was ingested). Not registered when /proc/self/io cannot be read: absent
 * rather than a misleading 0. The recent ratio is not a metric: Prometheus computes it
 * over any window from the two counters (see docs/operations.md).
 */
export function registerWriteMetrics(registry: Registry, meter: WriteAmplificationMeter): void {
  if (!meter.available) return;
  let mirrored = 0;
  new Counter({
    name: 'kedge_disk_written_bytes_total',
    help: 'Bytes the agent process wrote to storage since its log opened (/proc/self/io write_bytes - cancelled_write_bytes, sampled every 5 s)',
    registers: [registry],
    collect() {
      const s = meter.snapshot();
      if (s.available && s.writtenBytes > mirrored) {
        this.inc(s.writtenBytes - mirrored);
        mirrored = s.writtenBytes;
      }
    },
  });
  new Gauge({
    name: 'kedge_write_amplification',
    help: 'kedge_disk_written_bytes_total / kedge_ingested_bytes_total since start (NaN before anything was ingested)',
    registers: [registry],
    collect() {
      const s = meter.snapshot();
      this.set(s.available && s.ratio !== null ? s.ratio : Number.NaN);
    },
  });
}

/** The sum of a prom-client counter over all its label sets. */
export async function counterTotal(c: Counter<string>): Promise<number> {
  return (await c.get()).values.reduce((a, v) => a + v.value, 0);
}
