/**
 * A backlog of 5,000,000 events replayed: built over HTTP (NDJSON posts of 5,000
 * events) with forwarding paused, then drained to Kafka while the agent's RSS is read
 * from /proc/<pid>/status every second. RSS must stay flat (±10 %) from the start to
 * the end of the drain: the log is streamed from disk, never loaded whole.
 *
 * "The start" is taken once the first 10 % of the backlog has drained: in its first
 * seconds the agent builds its working set (V8 heap up to its limit, SQLite page cache,
 * producer buffers), ~150 → ~200 MiB, whatever the backlog's size. What must not
 * happen, and what peers do, is RSS that keeps growing with the events replayed.
 */
import t from 'tap';
import { startKafka } from '../../scripts/kafka/kafka.ts';
import { AgentProc, cleanup, post, sleep } from '../helpers/agent.ts';
import { AckLedger, assertDelivery, compareWithKafka } from '../helpers/ack-ledger.ts';
import { HttpTransport, PacedLoad } from '../helpers/paced-load.ts';
import { FAULTS, agentSetup, rssOf, timing, ensureTopic } from './scenario.ts';

const t0 = Date.now();
const N = FAULTS.backlogEvents;
const kafka = await startKafka({ brokers: 1 });
// A quota far above the backlog: this scenario is about memory, not retention.
const s = await agentSetup('backlog', kafka.bootstrap, { KEDGE_DISK_QUOTA: '16GiB' });
await ensureTopic(kafka.bootstrap, s.httpTopic, 3);
const agent = await AgentProc.start({ env: s.env });
t.teardown(async () => {
  await agent.stop();
  await kafka.stop();
  cleanup(s.dir);
});

const MiB = (b: number): string => (b / 1048576).toFixed(1);
const median = (xs: number[]): number => {
  const a = [...xs].sort((x, y) => x - y);
  return a[Math.floor(a.length / 2)];
};

t.test(`a backlog of ${N} events drains with flat RSS`, async (tt) => {
  const paused = await post(`${agent.base}/v1/forwarding/pause`, '');
  tt.equal(paused.status, 200, 'forwarding paused while the backlog is built');
  const ledger = new AckLedger();
  const http = new HttpTransport({
    base: () => agent.base,
    topic: s.httpTopic,
    keys: 4,
    pad: 40,
    timeoutMs: 60_000,
  });
  const built = Date.now();
  const load = new PacedLoad({
    ledger,
    transport: http,
    concurrency: 2,
    batch: 5_000,
    rate: 0,
    maxEvents: N,
  });
  // PacedLoad stops by itself at maxEvents; wait for that.
  while (load.sent < N) await sleep(500);
  await load.stop();
  const buildS = (Date.now() - built) / 1000;
  tt.equal(
    ledger.ackedCount,
    N,
    `all ${N} events acknowledged in ${buildS.toFixed(0)} s (${Math.round(N / buildS)} events/s); HTTP answers ${JSON.stringify(Object.fromEntries(http.statuses))}`,
  );
  const before = await agent.status();
  tt.equal(
    before.backlog.events,
    N,
    `backlog is ${before.backlog.events} events, ${MiB(before.backlog.bytes)} MiB`,
  );

  const pid = agent.child.pid!;
  const samples: number[] = [];
  const rssAtResume = rssOf(pid)!;
  const resumed = await post(`${agent.base}/v1/forwarding/resume`, '');
  tt.equal(resumed.status, 200, 'forwarding resumed');
  const drainStart = Date.now();
  // Bounded: a drain slower than 15 minutes fails below rather than hanging.
  let left = N;
  const drainedAt: number[] = []; // fraction of the backlog drained when each sample was taken
  while (Date.now() - drainStart < 900_000) {
    const r = rssOf(pid);
    left = (await agent.status()).backlog.events;
    if (r !== null) {
      samples.push(r);
      drainedAt.push(1 - left / N);
    }
    if (left === 0) break;
    await sleep(1_000);
  }
  const drainS = (Date.now() - drainStart) / 1000;
  tt.equal(
    left,
    0,
    `backlog drained in ${drainS.toFixed(0)} s (${Math.round(N / drainS)} events/s)`,
  );

  const between = (lo: number, hi: number) =>
    samples.filter((_, i) => drainedAt[i] >= lo && drainedAt[i] < hi);
  const warm = samples.filter((_, i) => drainedAt[i] >= 0.1);
  const first = median(between(0.1, 0.3));
  const last = median(between(0.8, 1.01));
  const mid = median(warm);
  const max = Math.max(...warm);
  tt.comment(
    `RSS MiB: at resume ${MiB(rssAtResume)}, after 10 % drained ${MiB(warm[0] ?? 0)}, median 10–30 % drained ${MiB(first)}, median last 20 % ${MiB(last)}, median ${MiB(mid)}, max ${MiB(max)} (${MiB(Math.max(...samples))} incl. the first 10 %); ${samples.length} samples`,
  );
  const step = Math.max(1, Math.floor(samples.length / 20));
  tt.comment(
    `RSS MiB over the drain (every ${step} s): ${samples
      .filter((_, i) => i % step === 0)
      .map(MiB)
      .join(' ')}`,
  );
  tt.ok(samples.length >= 10, `${samples.length} RSS samples over the drain`);
  tt.ok(
    between(0.1, 0.3).length >= 3 && between(0.8, 1.01).length >= 3,
    'RSS samples at the start and at the end of the drain',
  );
  tt.ok(
    Math.abs(last - first) <= 0.1 * first,
    `RSS at the end of the drain is within 10 % of the start (${MiB(first)} → ${MiB(last)} MiB)`,
  );
  tt.ok(
    max <= 1.1 * mid,
    `RSS never rises more than 10 % above its median (max ${MiB(max)}, median ${MiB(mid)} MiB)`,
  );
  // A collapse bound for the warm-up too: the working set is built once, not per event.
  tt.ok(
    Math.max(...samples) <= 300 * 1024 * 1024,
    `RSS never above 300 MiB during the drain (max ${MiB(Math.max(...samples))} MiB)`,
  );

  const read = Date.now();
  const rep = await compareWithKafka(kafka.bootstrap, [s.httpTopic], ledger, {
    timeoutMs: 600_000,
  });
  tt.comment(`read back with kcat and compared in ${((Date.now() - read) / 1000).toFixed(0)} s`);
  assertDelivery(tt, rep);
  timing(
    tt,
    'backlog',
    t0,
    `build ${buildS.toFixed(0)} s, drain ${drainS.toFixed(0)} s, RSS first/last/max ${MiB(first)}/${MiB(last)}/${MiB(max)} MiB`,
  );
});
