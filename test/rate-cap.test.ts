/**
 * KEDGE_FORWARD_RATE accuracy, measured where a metered uplink would bill it:
 * the bytes kedge sends towards Kafka, counted by a TCP proxy the broker
 * advertises (test/helpers/tcp-proxy.ts). With a backlog that lasts longer than
 * the measurement, the average over 60 s should be within ±10 % of the cap (the
 * claim; this test uses ±25 % so a busy CI machine does not make it flaky), and
 * no second carries more than the cap plus one batch.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { createTopic, startKafka } from '../scripts/kafka/kafka.ts';
import { AgentProc, cleanup, post, sleep, tempDir } from './helpers/agent.ts';
import { kafkaBehindProxy } from './helpers/tcp-proxy.ts';

const KIB = 1024;
const CAP = 256 * KIB;
const BATCH_BYTES = 512 * KIB; // DEFAULT_TUNING.maxBatchBytes
const WARMUP_MS = 10_000;
const WINDOW_MS = 60_000;
// More than (warm-up + window) × cap of payload alone; framing only makes it last longer.
const BACKLOG_BYTES = 22 * 1024 * KIB;
const EVENT_PAD = 700; // random bytes per event, base64: ~1 KiB events

const { proxy, kafkaOptions, bootstrap } = await kafkaBehindProxy();
const kafka = await startKafka(kafkaOptions);
const dir = tempDir();
const topic = 'rate-cap';
await createTopic(kafka.bootstrap, topic, 3);
// No compression: what goes on the wire is what we posted, so the backlog's wire time is known.
const agent = await AgentProc.start({
  env: {
    KEDGE_DATA_DIR: dir,
    KEDGE_KAFKA_BROKERS: bootstrap,
    KEDGE_FORWARD_RATE: '256KiB/s',
    KEDGE_COMPRESSION: 'none',
  },
});
t.teardown(async () => {
  await agent.stop();
  await proxy.close();
  await kafka.stop();
  cleanup(dir);
});

/** Plausible telemetry with an incompressible blob, one NDJSON body of about `bytes`. */
function telemetryBody(first: number, bytes: number): { body: string; count: number } {
  const lines: string[] = [];
  let size = 0;
  let i = first;
  while (size < bytes) {
    const line = JSON.stringify({
      id: i,
      sensor: `line-${i % 17}/press-${i % 5}`,
      ts: Date.now(),
      temp_c: 20 + (i % 300) / 10,
      blob: randomBytes(EVENT_PAD).toString('base64'),
    });
    lines.push(line);
    size += line.length + 1;
    i++;
  }
  return { body: lines.join('\n'), count: i - first };
}

const kib = (b: number): string => `${(b / KIB).toFixed(1)} KiB`;

t.test(
  'KEDGE_FORWARD_RATE=256KiB/s: 60 s average near the cap, no burst above one batch',
  async (tt) => {
    tt.equal(
      (await post(`${agent.base}/v1/forwarding/pause`, '')).status,
      200,
      'forwarding paused to build the backlog',
    );
    let posted = 0;
    let events = 0;
    while (posted < BACKLOG_BYTES) {
      const { body, count } = telemetryBody(events, 512 * KIB);
      const r = await post(
        `${agent.base}/v1/topics/${topic}?key=k${events % 8}`,
        body,
        'application/x-ndjson',
      );
      if (r.status !== 200)
        throw new Error(`ingest answered ${r.status}: ${JSON.stringify(r.body)}`);
      posted += body.length;
      events += count;
    }
    tt.comment(`backlog: ${events} events, ${kib(posted)} of payload`);

    const resumed = proxy.now();
    tt.equal(
      (await post(`${agent.base}/v1/forwarding/resume`, '')).status,
      200,
      'forwarding resumed',
    );
    await sleep(WARMUP_MS + WINDOW_MS);
    const t0 = resumed + WARMUP_MS;
    const t1 = t0 + WINDOW_MS;
    const left = (await agent.status()).backlog.events;
    tt.ok(
      left > 0,
      `the backlog outlasted the measurement (${left} events left), so the cap was the limit throughout`,
    );

    const up = proxy.bytes.up;
    const avg = up.between(t0, t1) / (WINDOW_MS / 1000);
    const slices: string[] = [];
    for (let s = t0; s < t1; s += 10_000) slices.push(kib(up.between(s, s + 10_000) / 10));
    const peak = up.peakWindow(1000, resumed, t1);
    const burst = peak.bytes;
    const burstBound = CAP + BATCH_BYTES + 64 * KIB;
    const firstSeconds: string[] = [];
    for (let s = resumed; s < resumed + 6_000; s += 1000)
      firstSeconds.push(kib(up.between(s, s + 1000)));
    tt.comment(
      `rate cap ${kib(CAP)}/s: measured ${kib(avg)}/s over 60 s (${((avg / CAP - 1) * 100).toFixed(1)} %); per 10 s: ${slices.join(', ')}`,
    );
    tt.comment(
      `max bytes in any 1 s since resume: ${kib(burst)} (bound ${kib(burstBound)}), in the second from ${((peak.start - resumed) / 1000).toFixed(2)} s after resume; after warm-up: ${kib(up.maxWindow(1000, t0, t1))}`,
    );
    tt.comment(`first seconds after resume: ${firstSeconds.join(', ')}`);
    tt.ok(
      Math.abs(avg / CAP - 1) <= 0.25,
      `60 s average ${kib(avg)}/s within ±25 % of ${kib(CAP)}/s`,
    );
    tt.ok(
      burst <= burstBound,
      `no 1 s window above cap + one batch + 64 KiB (${kib(burst)} ≤ ${kib(burstBound)})`,
    );
  },
);
