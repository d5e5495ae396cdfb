// kcat (librdkafka) as an independent Kafka client: what kedge wrote must read back byte for
// byte with a client nobody here wrote, compression included.
import { spawn } from 'node:child_process';

export interface KcatRecord {
  topic: string;
  partition: number;
  offset: number;
  /** Record timestamp in ms since the epoch (-1 if the broker has none). */
  timestamp: number;
  /** null when the record has no key. */
  key: Buffer | null;
  /** The payload bytes; a null payload (tombstone) reads as an empty buffer with `valueNull` true. */
  value: Buffer;
  valueNull: boolean;
  /** Headers by name (UTF-8; a repeated name keeps the last value). See `headerList`. */
  headers: Record<string, string>;
  /** Headers in record order. */
  headerList: [string, string][];
  /**
   * kcat's `%h` text ("n=v,n=v"), which is all kcat offers and is ambiguous when a value
   * contains ","; the parser treats a ","-piece without "=" as part of the previous value.
   */
  headersRaw: string;
}

export interface ConsumeOptions {
  /** Keep reading until at least this many records are there; without it, one pass to the end of every partition. */
  expect?: number;
  /** Give up after this long and return what was read (the topic may never appear: []). */
  timeoutMs: number;
  /** Only this partition. */
  partition?: number;
  /** Extra kcat arguments, e.g. ['-X', 'security.protocol=SASL_SSL', ...]. */
  kcatArgs?: string[];
}

// One record: a text line with the fixed fields and the key/payload lengths, then the raw key
// and payload bytes, then the %h text, then a terminator. Lengths make keys and payloads exact
// whatever bytes they hold; only the headers need the terminator.
const START = 0x1e;
const END = Buffer.from([0x1f, 0x1d, 0x0a]);
const FORMAT = '\\x1e%t %p %o %T %K %S\\n%k%s%h\\x1f\\x1d\\n';

export class KcatError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'KcatError';
    this.code = code;
  }
}

/** Parses kcat's %h text; see KcatRecord.headersRaw for the one ambiguity. */
export function parseKcatHeaders(raw: string): [string, string][] {
  const list: [string, string][] = [];
  if (raw === '') return list;
  for (const piece of raw.split(',')) {
    const eq = piece.indexOf('=');
    if (eq < 0 && list.length > 0) list[list.length - 1][1] += ',' + piece;
    else if (eq < 0) list.push([piece, '']);
    else list.push([piece.slice(0, eq), piece.slice(eq + 1)]);
  }
  return list;
}

/** Incremental parser for the FORMAT output; returns the records complete so far. */
class Parser {
  private buf: Buffer = Buffer.alloc(0);
  readonly records: KcatRecord[] = [];

  push(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    let pos = 0;
    for (;;) {
      if (pos >= this.buf.length) break;
      if (this.buf[pos] !== START) {
        throw new KcatError(
          'KCAT_PARSE',
          `kcat output out of step at byte ${pos}: ${JSON.stringify(this.buf.subarray(pos, pos + 60).toString('latin1'))}`,
        );
      }
      const nl = this.buf.indexOf(0x0a, pos);
      if (nl < 0) break;
      const fields = this.buf
        .subarray(pos + 1, nl)
        .toString('utf8')
        .split(' ');
      if (fields.length !== 6)
        throw new KcatError(
          'KCAT_PARSE',
          `bad kcat record line: ${JSON.stringify(fields.join(' '))}`,
        );
      const [topic, p, o, ts, k, s] = fields;
      const klen = Number(k);
      const slen = Number(s);
      const keyStart = nl + 1;
      const valStart = keyStart + Math.max(klen, 0);
      const hdrStart = valStart + Math.max(slen, 0);
      if (this.buf.length < hdrStart) break;
      const end = this.buf.indexOf(END, hdrStart);
      if (end < 0) break;
      const headersRaw = this.buf.subarray(hdrStart, end).toString('utf8');
      const headerList = parseKcatHeaders(headersRaw);
      this.records.push({
        topic,
        partition: Number(p),
        offset: Number(o),
        timestamp: Number(ts),
        // Views into kcat's output chunk, not copies: reading 300k records stays fast.
        key: klen < 0 ? null : this.buf.subarray(keyStart, valStart),
        value: this.buf.subarray(valStart, hdrStart),
        valueNull: slen < 0,
        headers: Object.fromEntries(headerList),
        headerList,
        headersRaw,
      });
      pos = end + END.length;
    }
    this.buf = this.buf.subarray(pos);
  }

  leftover(): number {
    return this.buf.length;
  }
}

/** Parses a complete kcat output made with this module's format (exported for tests). */
export function parseKcatOutput(out: Buffer): KcatRecord[] {
  const p = new Parser();
  p.push(out);
  if (p.leftover() > 0)
    throw new KcatError(
      'KCAT_PARSE',
      `kcat output ends inside a record (${p.leftover()} bytes left)`,
    );
  return p.records;
}

interface RunResult {
  records: KcatRecord[];
  code: number | null;
  stderr: string;
}

function runOnce(args: string[], deadline: number): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('kcat', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const parser = new Parser();
    let stderr = '';
    let failed: Error | null = null;
    const timer = setTimeout(() => child.kill('SIGKILL'), Math.max(0, deadline - Date.now()));
    child.stdout.on('data', (d: Buffer) => {
      if (failed) return;
      try {
        parser.push(d);
      } catch (e) {
        failed = e as Error;
        child.kill('SIGKILL');
      }
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-8192);
    });
    child.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        e.code === 'ENOENT'
          ? new KcatError('KCAT_MISSING', 'kcat is not installed (apt-get install -y kcat)')
          : e,
      );
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      if (failed) reject(failed);
      else resolve({ records: parser.records, code, stderr });
    });
  });
}

const unknownTopic = (stderr: string): boolean =>
  /Unknown topic or partition|UNKNOWN_TOPIC|Unknown partition/i.test(stderr);

/**
 * Reads `topic` from the beginning with kcat, all partitions (or opts.partition), to the end
 * of every partition (kcat -e); with `expect`, reads again (from the beginning) until at least
 * that many records are there. Retries while the topic does not exist yet. On timeout, resolves
 * with what it has. Records come sorted by partition, then offset.
 */
export async function consume(
  bootstrap: string,
  topic: string,
  opts: ConsumeOptions,
): Promise<KcatRecord[]> {
  const deadline = Date.now() + opts.timeoutMs;
  // -e and block-buffered stdout: kcat -u (unbuffered) is ~6x slower, and a continuous
  // consumer's buffered output would sit in kcat until it exits.
  const args = ['-C', '-b', bootstrap, '-t', topic, '-o', 'beginning', '-e', '-q', '-f', FORMAT];
  if (opts.partition !== undefined) args.push('-p', String(opts.partition));
  args.push(...(opts.kcatArgs ?? []));
  let best: KcatRecord[] = [];
  for (;;) {
    const res = await runOnce(args, deadline);
    // Each run starts from the beginning, so the longest run is the answer so far.
    if (res.records.length >= best.length) best = res.records;
    const done = res.code === 0 && (opts.expect === undefined || best.length >= opts.expect);
    if (done || Date.now() >= deadline) {
      if (
        !done &&
        best.length === 0 &&
        res.code !== 0 &&
        res.code !== null &&
        !unknownTopic(res.stderr)
      ) {
        throw new KcatError(
          'KCAT_FAILED',
          `kcat exited with ${res.code} reading ${topic}:\n${res.stderr.trim()}`,
        );
      }
      break;
    }
    // Not there yet (topic missing, fewer records than expected, or a broker error): again shortly.
    await new Promise((r) => setTimeout(r, 250));
  }
  return [...best].sort((a, b) => a.partition - b.partition || a.offset - b.offset);
}

export interface KcatProduceRecord {
  /** null or missing: no key. */
  key?: string | Buffer | null;
  value: string | Buffer;
}

export interface KcatProduceOptions {
  /** librdkafka codec: none, gzip, snappy, lz4, zstd. */
  compression?: 'none' | 'gzip' | 'snappy' | 'lz4' | 'zstd';
  /** Default 'all' with idempotence on, like kedge. */
  acks?: 'all' | '1' | '0';
  /** Headers put on every record. */
  headers?: Record<string, string>;
  partition?: number;
  kcatArgs?: string[];
  timeoutMs?: number;
}

// Delimiters for kcat -P; records must not contain them (checked).
const MSG_DELIM = '\x1e';
const KEY_DELIM = '\x1f';

/**
 * Produces records with kcat (the librdkafka baseline for benchmarks). Keys and values must not
 * contain the bytes 0x1e or 0x1f. Resolves with the wall time kcat took, in ms.
 */
export function kcatProduce(
  bootstrap: string,
  topic: string,
  records: Iterable<KcatProduceRecord | string | Buffer>,
  opts: KcatProduceOptions = {},
): Promise<{ ms: number; count: number }> {
  const acks = opts.acks ?? 'all';
  const args = [
    '-P',
    '-b',
    bootstrap,
    '-t',
    topic,
    '-D',
    MSG_DELIM,
    '-K',
    KEY_DELIM,
    '-z',
    opts.compression ?? 'none',
    '-X',
    `acks=${acks}`,
    '-X',
    `enable.idempotence=${acks === 'all'}`,
  ];
  if (opts.partition !== undefined) args.push('-p', String(opts.partition));
  for (const [k, v] of Object.entries(opts.headers ?? {})) args.push('-H', `${k}=${v}`);
  args.push(...(opts.kcatArgs ?? []));
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn('kcat', args, { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    let count = 0;
    const timer = opts.timeoutMs
      ? setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs)
      : undefined;
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8192)));
    child.once('error', (e: NodeJS.ErrnoException) => {
      if (timer) clearTimeout(timer);
      reject(
        e.code === 'ENOENT'
          ? new KcatError('KCAT_MISSING', 'kcat is not installed (apt-get install -y kcat)')
          : e,
      );
    });
    child.once('close', (code) => {
      if (timer) clearTimeout(timer);
      if (code !== 0 || /Delivery failed|ERROR/.test(stderr)) {
        reject(
          new KcatError('KCAT_FAILED', `kcat producer exited with ${code}:\n${stderr.trim()}`),
        );
      } else resolve({ ms: Date.now() - started, count });
    });
    child.stdin.on('error', () => {}); // reported through 'close'
    const write = async (): Promise<void> => {
      for (const r of records) {
        const rec: KcatProduceRecord =
          typeof r === 'string' || Buffer.isBuffer(r) ? { value: r } : r;
        const value = typeof rec.value === 'string' ? Buffer.from(rec.value) : rec.value;
        const key =
          rec.key == null ? null : typeof rec.key === 'string' ? Buffer.from(rec.key) : rec.key;
        for (const b of key ? [key, value] : [value]) {
          if (b.includes(0x1e) || b.includes(0x1f))
            throw new KcatError('KCAT_DELIM', 'kcatProduce: record contains byte 0x1e or 0x1f');
        }
        // No key delimiter at all means a null key to kcat; an empty key before it, an empty key.
        const parts = key
          ? [key, Buffer.from(KEY_DELIM), value, Buffer.from(MSG_DELIM)]
          : [value, Buffer.from(MSG_DELIM)];
        const ok = child.stdin.write(Buffer.concat(parts));
        count++;
        if (!ok) await new Promise((r) => child.stdin.once('drain', r));
      }
      child.stdin.end();
    };
    write().catch((e: unknown) => {
      child.kill('SIGKILL');
      reject(e);
    });
  });
}
