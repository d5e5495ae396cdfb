/**
 * kcat (librdkafka) as the fastest common client: a producer baseline fed
 * from a file, and a live consumer whose lines the bench timestamps.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { valueBytes, keyFor } from './records.ts';

export function kcatVersion(): string {
  const r = spawnSync('kcat', ['-V'], { encoding: 'utf8' });
  const m = /Version (\S+).*librdkafka (\S+)/.exec(r.stdout ?? '');
  return m ? `kcat ${m[1]}, librdkafka ${m[2]}` : 'kcat (version unknown)';
}

/** Writes `count` records as `key<TAB>value\n` lines: the same keys and values as kedge's backlog. */
export async function writeKcatFile(
  file: string,
  count: number,
  perRequest: number,
): Promise<void> {
  const out = createWriteStream(file, { highWaterMark: 1 << 20 });
  const TAB = Buffer.from('\t');
  const NL = Buffer.from('\n');
  let parts: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    parts.push(Buffer.from(keyFor(i, perRequest)), TAB, valueBytes(i), NL);
    if (parts.length >= 4 * 4096) {
      if (!out.write(Buffer.concat(parts))) await once(out, 'drain');
      parts = [];
    }
  }
  if (parts.length) out.write(Buffer.concat(parts));
  out.end();
  await once(out, 'finish');
}

export interface KcatProduceResult {
  seconds: number;
  eventsPerS: number;
  stderr: string;
}

/**
 * `kcat -P -l file` with acks=all, idempotence, zstd, batches of `batch`
 * messages; the same two header names on every record (kcat -P cannot vary
 * them per record). Times the whole process (connect included: ~tens of ms).
 */
export async function kcatProduceFile(o: {
  bootstrap: string;
  topic: string;
  file: string;
  count: number;
  batch: number;
  headers: Record<string, string>;
  timeoutMs: number;
  onStart?: (pid: number) => void;
}): Promise<KcatProduceResult> {
  const args = [
    '-P',
    '-b',
    o.bootstrap,
    '-t',
    o.topic,
    '-K',
    '\t',
    '-z',
    'zstd',
    '-X',
    'acks=all',
    '-X',
    'enable.idempotence=true',
    '-X',
    `batch.num.messages=${o.batch}`,
    ...Object.entries(o.headers).flatMap(([k, v]) => ['-H', `${k}=${v}`]),
    '-l',
    o.file,
  ];
  const t0 = performance.now();
  const child: ChildProcess = spawn('kcat', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  o.onStart?.(child.pid!);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  const seconds = (performance.now() - t0) / 1000;
  if (code !== 0 || /ERROR|Delivery failed/i.test(stderr))
    throw new Error(`kcat -P exited ${code}: ${stderr.trim().slice(-800)}`);
  return { seconds, eventsPerS: o.count / seconds, stderr };
}

/**
 * A live kcat consumer from the end of `topic`, printing each record's
 * timestamp and value on one line. `onLine` gets the value, the record
 * timestamp (ms since the epoch) and performance.now() when its chunk arrived.
 */
export function kcatTail(
  bootstrap: string,
  topic: string,
  onLine: (value: string, timestamp: number, at: number) => void,
): { child: ChildProcess; stop: () => void } {
  const child = spawn(
    'kcat',
    ['-C', '-b', bootstrap, '-t', topic, '-o', 'end', '-u', '-q', '-f', '%T\\t%s\\n'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let buf = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => {
    const at = performance.now();
    buf += d;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      const tab = line.indexOf('\t');
      onLine(line.slice(tab + 1), Number(line.slice(0, tab)), at);
      buf = buf.slice(i + 1);
    }
  });
  child.stderr!.resume();
  return { child, stop: () => child.kill('SIGKILL') };
}
