/**
 * A batch of records as it crosses to the Kafka thread: every key and value copied
 * back to back into one ArrayBuffer that is transferred (moved, not copied again),
 * with their offsets in a second one. Structured-cloning the records themselves gives
 * each key and each value an ArrayBuffer of its own on the other side: two memory
 * allocations per event, tracked by the garbage collector, which measured as the
 * Kafka thread's largest cost while draining. Unpacked, every key and value is a
 * Buffer view into the one transferred buffer.
 */
import type { OutRecord } from './record-sink.ts';

export interface PackedRecords {
  /** Keys and values of all records, back to back. */
  bytes: ArrayBuffer;
  /** Per record: value offset, value length, key offset, key length (-1: no key). */
  spans: Int32Array;
  topics: string[];
  timestamps: Float64Array;
  headers: Record<string, string>[];
}

/** The batch packed, and the buffers to list in postMessage's transfer list. */
export function pack(records: readonly OutRecord[]): {
  packed: PackedRecords;
  transfer: ArrayBuffer[];
} {
  const n = records.length;
  let size = 0;
  for (const r of records) size += r.value.byteLength + (r.key?.byteLength ?? 0);
  // Never from Buffer's shared pool: the whole ArrayBuffer is handed over.
  const bytes = new Uint8Array(new ArrayBuffer(size));
  const spans = new Int32Array(n * 4);
  const topics = new Array<string>(n);
  const timestamps = new Float64Array(n);
  const headers = new Array<Record<string, string>>(n);
  let at = 0;
  for (let i = 0; i < n; i++) {
    const r = records[i];
    bytes.set(r.value, at);
    spans[i * 4] = at;
    spans[i * 4 + 1] = r.value.byteLength;
    at += r.value.byteLength;
    if (r.key) {
      bytes.set(r.key, at);
      spans[i * 4 + 2] = at;
      spans[i * 4 + 3] = r.key.byteLength;
      at += r.key.byteLength;
    } else {
      spans[i * 4 + 2] = -1;
      spans[i * 4 + 3] = -1;
    }
    topics[i] = r.topic;
    timestamps[i] = r.timestamp;
    headers[i] = r.headers;
  }
  return {
    packed: { bytes: bytes.buffer, spans, topics, timestamps, headers },
    transfer: [bytes.buffer, spans.buffer as ArrayBuffer, timestamps.buffer as ArrayBuffer],
  };
}

/** The records again, their keys and values views into the one buffer (no copy). */
export function unpack(p: PackedRecords): OutRecord[] {
  const n = p.topics.length;
  const out = new Array<OutRecord>(n);
  const { bytes, spans } = p;
  for (let i = 0; i < n; i++) {
    const keyLen = spans[i * 4 + 3];
    out[i] = {
      topic: p.topics[i],
      key: keyLen < 0 ? null : Buffer.from(bytes, spans[i * 4 + 2], keyLen),
      value: Buffer.from(bytes, spans[i * 4], spans[i * 4 + 1]),
      timestamp: p.timestamps[i],
      headers: p.headers[i],
    };
  }
  return out;
}
