/**
 * Reads a real broker's segment files (record batch format v2) to see what the
 * broker stored: the codec of every batch, its record count and its size.
 * kcat decodes compressed batches transparently, so it cannot tell which codec
 * was on the wire; the segment files can (the broker keeps the producer's
 * batches as sent when the topic's compression.type is `producer`, the default).
 * Kafka 4.4's jars carry no DumpLogSegments (it is in kafka-tools), so this
 * parses the batch headers itself: 61 fixed bytes, documented in
 * https://kafka.apache.org/documentation/#recordbatch.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

export const CODEC_NAMES = ['none', 'gzip', 'snappy', 'lz4', 'zstd'] as const;

export interface BatchInfo {
  partition: number;
  baseOffset: number;
  /** Bytes of the whole batch as stored (= as sent), header included. */
  bytes: number;
  magic: number;
  /** attributes & 7: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd. */
  codec: (typeof CODEC_NAMES)[number] | `unknown-${number}`;
  records: number;
  control: boolean;
}

export class SegmentFormatError extends Error {
  constructor(file: string, at: number, what: string) {
    super(`${file} at byte ${at}: ${what}`);
    this.name = 'SegmentFormatError';
  }
}

/** Every batch of `topic` in a broker's log dir (`<node dir>/data`), by partition and offset. */
export function topicBatches(logDir: string, topic: string): BatchInfo[] {
  const out: BatchInfo[] = [];
  if (!existsSync(logDir)) return out;
  for (const d of readdirSync(logDir)) {
    const m = /^(.*)-(\d+)$/.exec(d);
    if (!m || m[1] !== topic) continue;
    const partition = Number(m[2]);
    for (const f of readdirSync(join(logDir, d))
      .filter((x) => x.endsWith('.log'))
      .sort()) {
      const file = join(logDir, d, f);
      const b = readFileSync(file);
      for (let at = 0; at + 12 <= b.length; ) {
        const len = b.readInt32BE(at + 8);
        if (len <= 0) break; // the unwritten tail of a preallocated segment
        if (at + 12 + len > b.length) break; // a batch being appended right now
        if (len < 49)
          throw new SegmentFormatError(file, at, `batch length ${len} is shorter than a v2 header`);
        const magic = b.readInt8(at + 16);
        if (magic !== 2) throw new SegmentFormatError(file, at, `magic ${magic}, expected 2`);
        const attributes = b.readInt16BE(at + 21);
        const c = attributes & 7;
        out.push({
          partition,
          baseOffset: Number(b.readBigInt64BE(at)),
          bytes: 12 + len,
          magic,
          codec: CODEC_NAMES[c] ?? `unknown-${c}`,
          records: b.readInt32BE(at + 57),
          control: (attributes & 0x20) !== 0,
        });
        at += 12 + len;
      }
    }
  }
  return out.sort((a, b) => a.partition - b.partition || a.baseOffset - b.baseOffset);
}

/** Bytes in `topic`'s segment files (sizes only, nothing read): cheap enough to poll every second. */
export function topicLogBytes(logDir: string, topic: string): number {
  let n = 0;
  if (!existsSync(logDir)) return n;
  for (const d of readdirSync(logDir)) {
    const m = /^(.*)-(\d+)$/.exec(d);
    if (!m || m[1] !== topic) continue;
    for (const f of readdirSync(join(logDir, d)))
      if (f.endsWith('.log')) n += statSync(join(logDir, d, f)).size;
  }
  return n;
}
