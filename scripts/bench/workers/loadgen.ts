/**
 * HTTP load generator, run as a child process (fork) so it does not share an
 * event loop with the bench or the server under test. Closed loop: each of
 * `connections` clients sends a request, waits for the answer, sends the next,
 * over one undici Pool with exactly that many keep-alive connections.
 *
 * Protocol: the parent sends one LoadConfig message; the child answers with one
 * LoadResult message and exits.
 */
import { Pool } from 'undici';
import { ndjsonBody, valueBytes, keyFor } from '../lib/records.ts';
import { Samples, percentiles, type Percentiles } from '../lib/stats.ts';

export interface LoadConfig {
  origin: string;
  /** e.g. /v1/topics/bench.ingest */
  path: string;
  /** ndjson: `eventsPerRequest` lines per request; single: one JSON event per request. */
  body: 'ndjson' | 'single';
  eventsPerRequest: number;
  connections: number;
  /** Answers during the warm-up are not counted. */
  warmupMs: number;
  /** Measured time after the warm-up; null: run until totalEvents were sent. */
  durationMs: number | null;
  /** Stop after this many events (all acknowledged or failed); null: run for durationMs. */
  totalEvents: number | null;
  /** Add ?key=k<n> (a device id) per request. */
  keyPerRequest: boolean;
  /** Give up on one request after this long. */
  requestTimeoutMs: number;
}

export interface LoadResult {
  /** Events acknowledged (HTTP 200) inside the measured window (or the whole run with totalEvents). */
  events: number;
  requests: number;
  seconds: number;
  eventsPerS: number;
  requestsPerS: number;
  /** Request round trip in ms (inside the window). */
  latencyMs: Percentiles;
  /** Non-200 answers by status, and thrown errors. */
  statuses: Record<string, number>;
  errors: number;
  firstError: string | null;
  /** Acknowledged events per second of the whole run (index 0 = first second, warm-up included). */
  perSecond: number[];
  warmupS: number;
  /** CPU this process used inside the window, % of one core. */
  cpuPctOfCore: number;
  totalEventsAcked: number;
  totalSeconds: number;
}

async function run(c: LoadConfig): Promise<LoadResult> {
  const pool = new Pool(c.origin, {
    connections: c.connections,
    pipelining: 1,
    keepAliveTimeout: 60_000,
    keepAliveMaxTimeout: 600_000,
    headersTimeout: c.requestTimeoutMs,
    bodyTimeout: c.requestTimeoutMs,
  });
  const per = c.body === 'single' ? 1 : c.eventsPerRequest;
  const contentType = c.body === 'single' ? 'application/json' : 'application/x-ndjson';
  const t0 = performance.now();
  const wStart = t0 + c.warmupMs;
  const wEnd = c.durationMs === null ? Infinity : wStart + c.durationMs;
  let next = 0;
  let stop = false;
  let events = 0;
  let requests = 0;
  let errors = 0;
  let firstError: string | null = null;
  let totalAcked = 0;
  const statuses: Record<string, number> = {};
  const lat = new Samples();
  const perSecond: number[] = [];
  // Held in an object: TypeScript does not see the assignments made inside the client closures.
  const cpuAt: { start: NodeJS.CpuUsage | null; end: NodeJS.CpuUsage | null } = {
    start: c.warmupMs === 0 ? process.cpuUsage() : null,
    end: null,
  };
  let lastAnswer = t0;

  const client = async (): Promise<void> => {
    while (!stop) {
      const now = performance.now();
      if (now >= wEnd) break;
      if (cpuAt.start === null && now >= wStart) cpuAt.start = process.cpuUsage();
      if (c.totalEvents !== null && next >= c.totalEvents) break;
      const first = next;
      const n = c.totalEvents === null ? per : Math.min(per, c.totalEvents - next);
      next += n;
      const body = c.body === 'single' ? valueBytes(first) : ndjsonBody(first, n);
      const path = c.keyPerRequest ? `${c.path}?key=${keyFor(first, per)}` : c.path;
      const sent = performance.now();
      try {
        const r = await pool.request({
          path,
          method: 'POST',
          body,
          headers: { 'content-type': contentType },
        });
        await r.body.dump();
        const done = performance.now();
        lastAnswer = done;
        if (r.statusCode === 200) {
          totalAcked += n;
          const sec = Math.floor((done - t0) / 1000);
          while (perSecond.length <= sec) perSecond.push(0);
          perSecond[sec] += n;
          if (done >= wStart && done <= wEnd) {
            events += n;
            requests++;
            lat.push(done - sent);
          }
        } else {
          statuses[r.statusCode] = (statuses[r.statusCode] ?? 0) + 1;
        }
      } catch (e) {
        errors++;
        firstError ??= (e as Error).message;
        if (errors > 1000) stop = true;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    if (cpuAt.end === null && performance.now() >= wEnd) cpuAt.end = process.cpuUsage();
  };

  await Promise.all(Array.from({ length: c.connections }, client));
  const end = c.durationMs === null ? lastAnswer : Math.min(wEnd, performance.now());
  const seconds = (end - (c.durationMs === null ? t0 : wStart)) / 1000;
  const a = cpuAt.start ?? { user: 0, system: 0 };
  const b = cpuAt.end ?? process.cpuUsage();
  const cpuUsed = (b.user - a.user + b.system - a.system) / 1e6;
  await pool.close();
  return {
    events,
    requests,
    seconds,
    eventsPerS: events / seconds,
    requestsPerS: requests / seconds,
    latencyMs: percentiles(lat.values()),
    statuses,
    errors,
    firstError,
    // The last second is partial (the run ends inside it): leave it out of the series.
    perSecond: perSecond.slice(0, Math.max(1, Math.floor((lastAnswer - t0) / 1000))),
    warmupS: c.warmupMs / 1000,
    cpuPctOfCore: (100 * cpuUsed) / seconds,
    totalEventsAcked: totalAcked,
    totalSeconds: (lastAnswer - t0) / 1000,
  };
}

process.once('message', (msg: LoadConfig) => {
  run(msg).then(
    (r) => process.send!({ ok: true, result: r }, () => process.exit(0)),
    (e: Error) => process.send!({ ok: false, error: e.stack ?? String(e) }, () => process.exit(1)),
  );
});
