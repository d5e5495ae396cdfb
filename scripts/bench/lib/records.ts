/**
 * The events every scenario sends, and the baselines send too ("the same
 * records"): JSON sensor readings of exactly VALUE_BYTES bytes, keys that
 * change per request like a real device fleet's, and the headers kedge adds.
 * Values differ from one another (counter, readings), so compression sees
 * realistic data, not one repeated line.
 */

/** Size of one event value in bytes (the issue asks for ~200 B). */
export const VALUE_BYTES = 200;
/** Distinct keys (device ids) the load rotates through. */
export const KEYS = 16;
/** Fixed epoch for the `ts` field, so a value's size depends only on its index. */
const TS0 = 1_760_000_000_000;

/**
 * Padding is pseudo-random [a-z0-9] (seeded: every run sends the same bytes):
 * a repeated filler would make zstd look far better than on real data. Each
 * event takes the next slice of a 4 MiB pool, larger than any batch Kafka
 * compresses (≤ 512 KiB), so no batch sees a slice twice. zstd gets about
 * 2.5:1 on these values (JSON field names and digits compress, the pad not much).
 */
const POOL_BYTES = 4 * 1024 * 1024;
const SLICE = 128;
let pool: string | null = null;
function padPool(): string {
  if (pool) return pool;
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  const out = Buffer.allocUnsafe(POOL_BYTES + SLICE);
  let x = 0x2545f491;
  for (let k = 0; k < out.length; k++) {
    // xorshift32
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[k] = alphabet.charCodeAt((x >>> 0) % 36);
  }
  pool = out.toString('latin1');
  return pool;
}

/** Event value i: one JSON object of exactly VALUE_BYTES bytes (ASCII). */
export function valueString(i: number): string {
  const head = `{"id":${i},"device":"sensor-${i % 64}","ts":${TS0 + i * 10},"temp":${(18 + (i % 97) / 10).toFixed(1)},"hum":${(35 + (i % 41) / 2).toFixed(1)},"status":"ok","note":"`;
  const tail = '"}';
  const padLen = VALUE_BYTES - head.length - tail.length;
  const at = (i * SLICE) % POOL_BYTES;
  return head + padPool().slice(at, at + Math.max(0, padLen)) + tail;
}

/** The key of event i when `perRequest` events share one request (and so one ?key=). */
export function keyFor(i: number, perRequest: number): string {
  return `k${Math.floor(i / perRequest) % KEYS}`;
}

/**
 * Events repeat after RING (values of events i and i + RING are the same bytes):
 * prebuilt once, so the load generators spend their CPU on HTTP, not on making
 * JSON. A Kafka batch (≤ 2,000 events) never holds the same value twice.
 */
export const RING = 100_000;
let ring: Buffer[] | null = null;

/** The value of event i as bytes (see RING). */
export function valueBytes(i: number): Buffer {
  if (!ring) {
    ring = new Array<Buffer>(RING);
    const all = Buffer.from(
      Array.from({ length: RING }, (_, k) => valueString(k)).join(''),
      'latin1',
    );
    for (let k = 0; k < RING; k++) ring[k] = all.subarray(k * VALUE_BYTES, (k + 1) * VALUE_BYTES);
  }
  return ring[i % RING];
}

const bodies = new Map<string, Buffer>();

/** NDJSON body of events first..first+n-1 (cached while first % RING repeats). */
export function ndjsonBody(first: number, n: number): Buffer {
  const k = `${first % RING}/${n}`;
  let b = bodies.get(k);
  if (!b) {
    const parts: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      if (i) parts.push(NL);
      parts.push(valueBytes(first + i));
    }
    b = Buffer.concat(parts);
    if (bodies.size < 20_000) bodies.set(k, b);
  }
  return b;
}
const NL = Buffer.from('\n');

/** The headers kedge puts on every record (same names and sizes for the baselines). */
export function kedgeHeaders(agentId: string, seq: number, ts: number): Record<string, string> {
  return { 'kedge-id': `${agentId}:${seq}`, 'kedge-ingest-ts': String(ts) };
}
