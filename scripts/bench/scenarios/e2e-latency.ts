/**
 * Issue 2, fourth figure: end-to-end latency with the link up, at 1,000
 * events/s: from the moment the HTTP answer (the commit) reaches the client
 * to the moment an independent consumer (kcat, librdkafka) receives the
 * record. Sender and consumer timestamps are taken in this one process with
 * performance.now(), so no clocks are compared across processes.
 */
import { Pool } from 'undici';
import type { Scenario, ScenarioResult, CpuReport, ChartSpec, Figure } from '../lib/types.ts';
import { atMost, figure, fmt } from '../lib/figures.ts';
import { kcatTail } from '../lib/kcat.ts';
import { percentiles, Samples } from '../lib/stats.ts';
import { valueString, KEYS } from '../lib/records.ts';
import { BenchAgent } from '../lib/agent.ts';

const RATE = 1_000;
const P50_TARGET = 10;
const P99_TARGET = 50;
const WARM_ID = 1_000_000_000;

export const e2eLatency: Scenario = {
  name: 'e2e-latency',
  title: 'End-to-end latency at 1,000 events/s, link up',
  description:
    `The bench sends ${fmt(RATE)} single-event POSTs per second (open loop, paced every millisecond, 16 keys) to a kedge with forwarding on, ` +
    'and runs `kcat -C -o end -u` on the topic (librdkafka consumer, default fetch settings). Latency of an event = time its record ' +
    'line arrives from kcat − time its HTTP answer arrived (both `performance.now()` in the bench process). Also shown: request → consumer ' +
    'and the HTTP round trip. A warm-up at the same rate runs until the consumer sees records.',
  needsKafka: true,
  estimateSeconds: (q) => (q ? 20 : 50),
  async run(ctx): Promise<ScenarioResult> {
    const notes: string[] = [];
    const cpu: CpuReport[] = [];
    const kafka = await ctx.kafka();
    // LogAppendTime: the record timestamp becomes the broker's append time, which splits the
    // latency into kedge → broker and broker → consumer (ms resolution, same machine clock).
    const topic = await ctx.topic('bench.latency', 3, {
      'message.timestamp.type': 'LogAppendTime',
    });
    const agent = await ctx.startAgent('e2e-latency');

    const recvAt = new Map<number, number>();
    const appendAt = new Map<number, number>();
    let warmSeen = 0;
    const tail = kcatTail(kafka.bootstrap, topic, (value, ts, at) => {
      const m = /"id":(\d+)/.exec(value);
      if (!m) return;
      const id = Number(m[1]);
      if (id >= WARM_ID) warmSeen++;
      else if (!recvAt.has(id)) {
        recvAt.set(id, at);
        appendAt.set(id, ts);
      }
    });
    ctx.defer(() => tail.stop());

    const pool = new Pool(agent.base, { connections: 64, pipelining: 1, keepAliveTimeout: 60_000 });
    ctx.defer(() => pool.close());
    const sentAt = new Float64Array(RATE * 120);
    const ackAt = new Float64Array(RATE * 120);
    let errors = 0;
    let inflight = 0;
    const post = (id: number, slot: number | null): void => {
      inflight++;
      const t = performance.now();
      if (slot !== null) sentAt[slot] = t;
      pool
        .request({
          path: `/v1/topics/${topic}?key=k${id % KEYS}`,
          method: 'POST',
          body: valueString(id),
          headers: { 'content-type': 'application/json' },
        })
        .then(async (r) => {
          await r.body.dump();
          const done = performance.now();
          if (r.statusCode !== 200) errors++;
          else if (slot !== null) ackAt[slot] = done;
        })
        .catch(() => errors++)
        .finally(() => inflight--);
    };

    /** Sends `rate` events/s for `ms`; ids from `first`; returns how many were sent. */
    const pace = async (
      ms: number,
      first: number,
      record: boolean,
      until?: () => boolean,
    ): Promise<number> => {
      const t0 = performance.now();
      let sent = 0;
      for (;;) {
        const el = performance.now() - t0;
        if (el >= ms || until?.()) break;
        const due = Math.floor((el / 1000) * RATE);
        while (sent < due && inflight < 512) {
          post(first + sent, record ? first + sent : null);
          sent++;
        }
        await new Promise((r) => setTimeout(r, 1));
      }
      return sent;
    };

    ctx.log('warm-up until the consumer sees records...');
    let warmId = WARM_ID;
    warmId += await pace(30_000, warmId, false, () => warmSeen > 0);
    if (warmSeen === 0) throw new Error('the kcat consumer saw no record within 30 s of warm-up');
    warmId += await pace(ctx.ms(3, 1), warmId, false);

    const durationMs = ctx.ms(30, 5);
    ctx.log(`measuring: ${fmt(RATE)} events/s for ${durationMs / 1000} s`);
    const m0 = await agent.metricsText();
    const win = ctx.cpu(`kedge at ${RATE} events/s, forwarding on`, {
      kedge: agent.pid,
      kcat: tail.child.pid,
    });
    const tStart = performance.now();
    const n = await pace(durationMs, 0, true);
    const sendSeconds = (performance.now() - tStart) / 1000;
    // Stragglers: wait until every acknowledged event was consumed (or 15 s).
    const waitEnd = performance.now() + 15_000;
    const allIn = () => {
      for (let i = 0; i < n; i++) if (ackAt[i] > 0 && !recvAt.has(i)) return false;
      return inflight === 0;
    };
    while (performance.now() < waitEnd && !allIn()) await new Promise((r) => setTimeout(r, 50));
    cpu.push(win.stop());
    ctx.phase(agent, 'measure', tStart, tStart + sendSeconds * 1000);
    const m1 = await agent.metricsText();
    const d = (name: string) =>
      (BenchAgent.metric(m1, name) ?? 0) - (BenchAgent.metric(m0, name) ?? 0);
    const sends = d('kedge_send_duration_seconds_count');
    const sendMs = sends ? (1000 * d('kedge_send_duration_seconds_sum')) / sends : null;
    const perBatch =
      d('kedge_send_batch_events_sum') / Math.max(1, d('kedge_send_batch_events_count'));
    const commitMs =
      (1000 * d('kedge_commit_duration_seconds_sum')) /
      Math.max(1, d('kedge_commit_duration_seconds_count'));

    const e2e = new Samples();
    const toBroker = new Samples();
    const fromBroker = new Samples();
    const origin = performance.timeOrigin;
    const fromSend = new Samples();
    const rtt = new Samples();
    let missing = 0;
    let negative = 0;
    const perSecond: { p50: number[]; p99: number[] } = { p50: [], p99: [] };
    const buckets: number[][] = [];
    for (let i = 0; i < n; i++) {
      if (!(ackAt[i] > 0)) continue;
      rtt.push(ackAt[i] - sentAt[i]);
      const r = recvAt.get(i);
      if (r === undefined) {
        missing++;
        continue;
      }
      const l = r - ackAt[i];
      if (l < 0) negative++;
      e2e.push(l);
      fromSend.push(r - sentAt[i]);
      const appended = appendAt.get(i)!;
      toBroker.push(appended - (origin + ackAt[i]));
      fromBroker.push(origin + r - appended);
      const sec = Math.floor((sentAt[i] - tStart) / 1000);
      (buckets[sec] ??= []).push(l);
    }
    for (const b of buckets) {
      const p = percentiles(b ?? []);
      perSecond.p50.push(p.p50 ?? 0);
      perSecond.p99.push(p.p99 ?? 0);
    }
    const p = percentiles(e2e.values());
    const ps = percentiles(fromSend.values());
    const pr = percentiles(rtt.values());
    const pb = percentiles(toBroker.values());
    const pc = percentiles(fromBroker.values());
    const acked = rtt.length;
    ctx.log(
      `answer → consumer: p50 ${fmt(p.p50, 1)} ms, p90 ${fmt(p.p90, 1)}, p99 ${fmt(p.p99, 1)}, max ${fmt(p.max, 1)} (${fmt(p.count)} events, ${missing} not seen)`,
    );
    notes.push(
      `${fmt(n)} events sent in ${sendSeconds.toFixed(1)} s (${fmt(n / sendSeconds)} events/s), ${fmt(acked)} acknowledged, ${errors} failed, ` +
        `${fmt(p.count)} seen by the consumer, ${missing} acknowledged but not seen within 15 s.`,
      `HTTP round trip (request → answer, includes the fsync'd commit): p50 ${fmt(pr.p50, 1)} ms, p99 ${fmt(pr.p99, 1)} ms, max ${fmt(pr.max, 1)} ms. ` +
        `Request → consumer: p50 ${fmt(ps.p50, 1)} ms, p99 ${fmt(ps.p99, 1)} ms.`,
    );
    notes.push(
      `Split by the broker's append time (LogAppendTime, ms resolution): answer → appended in Kafka p50 ${fmt(pb.p50, 1)} ms, p99 ${fmt(pb.p99, 1)} ms ` +
        `(kedge's forwarder: wait for the send in flight, read, encode, produce with acks=all); appended → consumer p50 ${fmt(pc.p50, 1)} ms, p99 ${fmt(pc.p99, 1)} ms (kcat's fetch).`,
      `kedge during the run: ${fmt(sends)} sends of ${fmt(perBatch, 1)} events on average, ${fmt(sendMs, 1)} ms per send (until acks=all); commits took ${fmt(commitMs, 1)} ms on average.`,
    );
    if (negative)
      notes.push(
        `${negative} events reached the consumer before their HTTP answer reached the bench (counted as negative latencies).`,
      );
    const figures: Figure[] = [
      figure({
        id: 'p50_ms',
        label: 'answer → consumer p50',
        value: p.p50,
        unit: 'ms',
        digits: 1,
        target: atMost(p.p50, P50_TARGET, `≤ ${P50_TARGET} ms`),
      }),
      figure({ id: 'p90_ms', label: 'answer → consumer p90', value: p.p90, unit: 'ms', digits: 1 }),
      figure({
        id: 'p99_ms',
        label: 'answer → consumer p99',
        value: p.p99,
        unit: 'ms',
        digits: 1,
        target: atMost(p.p99, P99_TARGET, `≤ ${P99_TARGET} ms`),
      }),
      figure({ id: 'max_ms', label: 'answer → consumer max', value: p.max, unit: 'ms', digits: 1 }),
    ];
    if (missing > 0)
      figures.push(
        figure({
          id: 'missing',
          label: 'acknowledged but never consumed',
          value: missing,
          unit: 'events',
          target: atMost(missing, 0, '0'),
        }),
      );
    const charts: ChartSpec[] = [
      {
        kind: 'bars',
        id: 'e2e-latency-percentiles',
        title: `Latency percentiles at ${fmt(RATE)} events/s (ms)`,
        unit: 'ms',
        bars: [
          ...(['p50', 'p90', 'p99', 'p999', 'max'] as const).map((k) => ({
            label: `${k === 'p999' ? 'p99.9' : k}`,
            value: p[k] ?? 0,
            group: 'answer → consumer',
          })),
          ...(['p50', 'p90', 'p99', 'p999', 'max'] as const).map((k) => ({
            label: `${k === 'p999' ? 'p99.9' : k}`,
            value: pb[k] ?? 0,
            group: 'answer → in Kafka',
          })),
          ...(['p50', 'p90', 'p99', 'p999', 'max'] as const).map((k) => ({
            label: `${k === 'p999' ? 'p99.9' : k}`,
            value: pr[k] ?? 0,
            group: 'HTTP round trip',
          })),
        ],
        refs: [
          { label: 'p50 target', y: P50_TARGET },
          { label: 'p99 target', y: P99_TARGET },
        ],
      },
      {
        kind: 'line',
        id: 'e2e-latency-timeline',
        title: 'Answer → consumer latency per second of the run',
        xLabel: 's',
        yLabel: 'ms',
        series: [
          { label: 'p50', points: perSecond.p50.map((y, x) => ({ x, y })) },
          { label: 'p99', points: perSecond.p99.map((y, x) => ({ x, y })) },
        ],
        refs: [{ label: 'p99 target', y: P99_TARGET }],
      },
    ];
    return {
      figures,
      charts,
      cpu,
      notes,
      data: {
        sent: n,
        acked,
        errors,
        missing,
        negative,
        e2e: p,
        requestToConsumer: ps,
        rtt: pr,
        answerToBroker: pb,
        brokerToConsumer: pc,
        sends,
        sendMs,
        perBatch,
        commitMs,
        perSecond,
      },
    };
  },
};
