/**
 * Link policy against a real Kafka, read back with kcat:
 * - transfer windows with an injected clock: outside, only priority topics reach Kafka;
 *   inside, everything does, in order;
 * - priority topics overtake a 100,000-event bulk backlog;
 * - pause survives a restart;
 * - a quick check that the rate cap holds on the real wire (the ±10 % over 60 s
 *   test through a throttling proxy is rate-cap.test.ts).
 */
import t from 'tap';
import { Writable } from 'node:stream';
import { createTopic, startKafka } from '../scripts/kafka/kafka.ts';
import { loadConfig } from '../agent/config.ts';
import { Agent } from '../agent/agent.ts';
import { createLogger } from '../agent/observe/logger.ts';
import { consume, type KcatRecord } from './helpers/kcat.ts';
import { AgentProc, cleanup, freeLoopbackPort, post, sleep, tempDir } from './helpers/agent.ts';

const kafka = await startKafka({ brokers: 1 });
t.teardown(() => kafka.stop());
// The broker stamps each record when it stores it: that orders priority vs bulk arrival.
const appendTime = { 'message.timestamp.type': 'LogAppendTime' };

async function status(base: string): Promise<any> {
  return (await fetch(`${base}/v1/status`)).json();
}

/** Polls `check` until it returns a value (not undefined), at most `ms`. */
async function until<T>(what: string, ms: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(250);
  }
}

/** POSTs `n` NDJSON events `{"topic":…,"i":…}` with one key, in requests of `per`. */
async function ingest(
  base: string,
  topic: string,
  key: string,
  n: number,
  per = 1000,
  pad = '',
): Promise<void> {
  for (let i = 0; i < n; i += per) {
    const lines: string[] = [];
    for (let j = i; j < Math.min(n, i + per); j++) lines.push(JSON.stringify({ topic, i: j, pad }));
    const r = await post(
      `${base}/v1/topics/${topic}?key=${key}`,
      lines.join('\n'),
      'application/x-ndjson',
    );
    if (r.status !== 200) throw new Error(`ingest ${topic}: ${r.status} ${JSON.stringify(r.body)}`);
  }
}

function indexes(recs: KcatRecord[]): number[] {
  return recs.map((r) => JSON.parse(r.value.toString()).i);
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

t.test(
  'transfer windows (injected clock): outside only priority flows; inside everything, in order',
  async (t) => {
    await createTopic(kafka.bootstrap, 'win.bulk', 3);
    await createTopic(kafka.bootstrap, 'win.alarms', 1);
    const dir = tempDir();
    const port = await freeLoopbackPort();
    const lines: string[] = [];
    const logSink = new Writable({
      write(chunk, _enc, cb) {
        lines.push(...chunk.toString().split('\n').filter(Boolean));
        cb();
      },
    });
    const noon = new Date();
    noon.setHours(12, 0, 0, 0);
    let fakeNow = noon.getTime();
    const cfg = loadConfig({
      KEDGE_DATA_DIR: dir,
      KEDGE_KAFKA_BROKERS: kafka.bootstrap,
      KEDGE_HTTP_LISTEN: `127.0.0.1:${port}`,
      KEDGE_HEARTBEAT_TOPIC: '',
      KEDGE_FORWARD_WINDOWS: '22:00-06:00',
      KEDGE_PRIORITY_TOPICS: 'win.alarms',
    });
    const agent = new Agent(cfg, createLogger('info', logSink), {
      now: () => fakeNow,
      backoffMaxMs: 1_000,
    });
    await agent.start();
    t.teardown(async () => {
      await agent.stop();
      cleanup(dir);
    });
    const base = `http://127.0.0.1:${port}`;

    await until('outside-window state', 10_000, async () =>
      (await status(base)).link.state === 'outside-window' ? true : undefined,
    );
    await ingest(base, 'win.bulk', 'k', 200, 50);
    await ingest(base, 'win.alarms', 'a', 10, 1);
    const alarms = await consume(kafka.bootstrap, 'win.alarms', { expect: 10, timeoutMs: 30_000 });
    t.same(indexes(alarms), range(10), 'priority events reach Kafka outside the window, in order');
    await sleep(3_000);
    t.equal(
      (await consume(kafka.bootstrap, 'win.bulk', { timeoutMs: 5_000 })).length,
      0,
      'no bulk event reached Kafka outside the window',
    );
    let s = await status(base);
    t.equal(s.link.state, 'outside-window');
    t.equal(s.backlog.events, 200, 'the bulk events wait in the log');
    t.equal(s.link.window.open, false);
    t.ok(
      lines.some((l) => l.includes('transfer window closed')),
      'window close logged',
    );

    fakeNow = noon.getTime() + 11 * 3_600_000; // 23:00
    s = await until('drained', 60_000, async () => {
      const st = await status(base);
      return st.backlog.events === 0 ? st : undefined;
    });
    const bulk = await consume(kafka.bootstrap, 'win.bulk', { expect: 200, timeoutMs: 30_000 });
    t.same(indexes(bulk), range(200), 'inside the window every bulk event arrives, in order');
    t.equal(s.link.state, 'up');
    t.equal(s.link.window.open, true);
    const states = s.link.history.map((h: any) => h.state);
    t.ok(
      states.indexOf('outside-window') >= 0 &&
        states.lastIndexOf('up') > states.indexOf('outside-window'),
      `history shows outside-window, then up (${states.join(' → ')})`,
    );
    t.ok(
      lines.some((l) => l.includes('transfer window opened')),
      'window open logged',
    );
    const m = await (await fetch(`${base}/metrics`)).text();
    t.match(m, /^kedge_link_state\{state="up"\} 1$/m);
    t.match(m, /^kedge_link_state_changes_total\{state="outside-window"\} [1-9]/m);
  },
);

t.test('priority events overtake a 100,000-event bulk backlog', async (t) => {
  await createTopic(kafka.bootstrap, 'prio.bulk', 3, 1, appendTime);
  await createTopic(kafka.bootstrap, 'prio.urgent', 1, 1, appendTime);
  const dir = tempDir();
  const agent = await AgentProc.start({
    env: {
      KEDGE_DATA_DIR: dir,
      KEDGE_KAFKA_BROKERS: kafka.bootstrap,
      KEDGE_PRIORITY_TOPICS: 'prio.urgent',
      KEDGE_SYNC: 'normal',
    },
  });
  t.teardown(async () => {
    await agent.stop();
    cleanup(dir);
  });
  t.equal((await post(`${agent.base}/v1/forwarding/pause`, '')).status, 200);
  const N = 100_000;
  for (let k = 0; k < 4; k++)
    await ingest(agent.base, 'prio.bulk', `k${k}`, N / 4, 1000, 'x'.repeat(60));
  t.equal((await agent.status()).backlog.events, N, 'backlog built while paused');

  t.equal((await post(`${agent.base}/v1/forwarding/resume`, '')).status, 200);
  await ingest(agent.base, 'prio.urgent', 'u', 20, 1);
  const urgent = await consume(kafka.bootstrap, 'prio.urgent', { expect: 20, timeoutMs: 60_000 });
  t.same(indexes(urgent), range(20), 'all priority events in Kafka, in order');
  await agent.waitDrained(180_000);
  const bulk = await consume(kafka.bootstrap, 'prio.bulk', { expect: N, timeoutMs: 120_000 });
  t.equal(bulk.length, N, 'the whole bulk backlog arrives');
  const lastUrgent = Math.max(...urgent.map((r) => r.timestamp));
  const bulkAfter = bulk.filter((r) => r.timestamp > lastUrgent).length;
  t.ok(
    bulkAfter > 0,
    `the bulk backlog was still draining when the last priority event was stored (${bulkAfter} bulk events stored after it)`,
  );
  const perKey = new Map<string, number[]>();
  for (const r of bulk) {
    const k = r.key!.toString();
    perKey.set(k, [...(perKey.get(k) ?? []), JSON.parse(r.value.toString()).i]);
  }
  t.same([...perKey.keys()].sort(), ['k0', 'k1', 'k2', 'k3']);
  t.ok(
    [...perKey.values()].every((v) => v.length === N / 4 && v.every((x, i) => x === i)),
    'bulk order per key kept',
  );
});

t.test('pause survives a restart', async (t) => {
  await createTopic(kafka.bootstrap, 'pause.t', 1);
  const dir = tempDir();
  const env = { KEDGE_DATA_DIR: dir, KEDGE_KAFKA_BROKERS: kafka.bootstrap };
  let agent = await AgentProc.start({ env });
  t.teardown(async () => {
    await agent.stop();
    cleanup(dir);
  });
  t.equal((await post(`${agent.base}/v1/forwarding/pause`, '')).status, 200);
  await agent.stop();
  agent = await AgentProc.start({ env });
  let s = await agent.status();
  t.equal(s.link.state, 'paused', 'paused after the restart');
  t.equal(s.link.paused, true);
  await ingest(agent.base, 'pause.t', 'k', 10, 10);
  await sleep(3_000);
  t.equal(
    (await consume(kafka.bootstrap, 'pause.t', { timeoutMs: 5_000 })).length,
    0,
    'nothing flows while paused',
  );
  t.equal((await agent.status()).backlog.events, 10);
  t.equal((await post(`${agent.base}/v1/forwarding/resume`, '')).status, 200);
  s = await agent.waitDrained(60_000);
  t.not(s.link.state, 'paused');
  t.same(
    indexes(await consume(kafka.bootstrap, 'pause.t', { expect: 10, timeoutMs: 30_000 })),
    range(10),
    'resumed: everything arrives, in order',
  );
});

t.test('rate cap on the real wire (quick check)', async (t) => {
  await createTopic(kafka.bootstrap, 'rate.t', 1);
  const dir = tempDir();
  const rate = 64 * 1024;
  // Incompressible payloads, so the wire bytes are not far below the log bytes.
  const agent = await AgentProc.start({
    env: {
      KEDGE_DATA_DIR: dir,
      KEDGE_KAFKA_BROKERS: kafka.bootstrap,
      KEDGE_FORWARD_RATE: '64KiB/s',
      KEDGE_SYNC: 'normal',
    },
  });
  t.teardown(async () => {
    await agent.stop();
    cleanup(dir);
  });
  const randomPad = () =>
    Buffer.from(Array.from({ length: 300 }, () => Math.floor(Math.random() * 256))).toString(
      'base64',
    );
  // About 3 MB on the wire at 64KiB/s: ~45 s of backlog, the check takes 17 s.
  const codes: number[] = [];
  for (let i = 0; i < 16; i++) {
    const lines = Array.from({ length: 500 }, (_, j) =>
      JSON.stringify({ i: i * 500 + j, pad: randomPad() }),
    );
    codes.push(
      (await post(`${agent.base}/v1/topics/rate.t?key=k`, lines.join('\n'), 'application/x-ndjson'))
        .status,
    );
  }
  t.ok(
    codes.every((c) => c === 200),
    '8,000 events stored',
  );
  const wire = async () =>
    Number(
      /^kedge_wire_bytes_total (\d+)/m.exec(
        await (await fetch(`${agent.base}/metrics`)).text(),
      )?.[1] ?? NaN,
    );
  await sleep(2_000); // past the first batch, which may use the bucket's saved-up credit
  const w0 = await wire();
  const t0 = performance.now();
  await sleep(15_000);
  const bytesPerSecond = ((await wire()) - w0) / ((performance.now() - t0) / 1000);
  const s = await agent.status();
  t.ok(s.backlog.events > 0, 'still backlog: the cap, not the backlog, set the pace');
  t.equal(s.link.rate_cap_bytes_per_second, rate);
  t.ok(
    Math.abs(bytesPerSecond / rate - 1) < 0.25,
    `wire rate ${Math.round(bytesPerSecond)} B/s over 15 s, cap ${rate} B/s`,
  );
  t.ok(
    s.link.wire_bytes_per_second > 0,
    `status shows the measured wire rate (${s.link.wire_bytes_per_second} B/s)`,
  );
});
