/**
 * Fleet heartbeat: JSON status records in Kafka, keyed by agent id, on the prefixed topic,
 * arriving while a 200,000-event backlog is still draining (its own producer), with a
 * backlog figure that falls from one record to the next. A send that fails or hangs never
 * blocks and is logged once per interval of the rate limit.
 */
import t from 'tap';
import { PassThrough } from 'node:stream';
import { request } from 'undici';
import { startKafka } from '../scripts/kafka/kafka.ts';
import { consume } from './helpers/kcat.ts';
import { AgentProc, cleanup, post, sleep, tempDir } from './helpers/agent.ts';
import { waitFor } from './helpers/proc.ts';
import type { AgentStatus } from '../agent/status/document.ts';
import { Heartbeat, LinkHistory } from '../agent/status/heartbeat.ts';
import { createLogger } from '../agent/observe/logger.ts';
import type { OutRecord, RecordSink } from '../agent/kafka/producer.ts';

const AGENT_ID = 'hb-agent-1';
const TOKEN = 'hb-token-5d1e0b77';
const TOPIC = 'site1.fleet.heartbeat';
const kafka = await startKafka({ brokers: 1 });
const dir = tempDir();
const agent = await AgentProc.start({
  env: {
    KEDGE_DATA_DIR: dir,
    KEDGE_KAFKA_BROKERS: kafka.bootstrap,
    KEDGE_AGENT_ID: AGENT_ID,
    KEDGE_HTTP_TOKEN: TOKEN,
    KEDGE_TOPIC_PREFIX: 'site1.',
    KEDGE_HEARTBEAT_TOPIC: 'fleet.heartbeat',
    KEDGE_HEARTBEAT_INTERVAL: '1s',
  },
});
t.teardown(async () => {
  await agent.stop();
  await kafka.stop();
  cleanup(dir);
});
const auth = { authorization: `Bearer ${TOKEN}` };

interface Beat {
  offset: number;
  key: string;
  raw: string;
  v: any;
}

async function beats(): Promise<Beat[]> {
  const recs = await consume(kafka.bootstrap, TOPIC, { timeoutMs: 10_000 });
  return recs.map((r) => ({
    offset: r.offset,
    key: r.key?.toString() ?? '',
    raw: r.value.toString(),
    v: JSON.parse(r.value.toString()),
  }));
}

async function control(action: 'pause' | 'resume'): Promise<void> {
  const r = await request(`${agent.base}/v1/forwarding/${action}`, {
    method: 'POST',
    headers: auth,
  });
  await r.body.dump();
  if (r.statusCode !== 200) throw new Error(`${action}: HTTP ${r.statusCode}`);
}

t.test(
  'a heartbeat soon after start: prefixed topic, keyed by agent id, the status in JSON',
  async (tt) => {
    const first = await waitFor(async () => (await beats())[0], {
      timeoutMs: 30_000,
      intervalMs: 250,
      what: 'a first heartbeat',
    });
    tt.equal(first.key, AGENT_ID, 'keyed by agent id');
    tt.equal(first.v.type, 'kedge.heartbeat');
    tt.equal(first.v.agent_id, AGENT_ID);
    tt.match(first.v.version, /^\d+\.\d+\.\d+/);
    tt.equal(first.v.link.state, 'up');
    tt.type(first.v.uptime_seconds, 'number');
    tt.type(first.v.backlog.events, 'number');
    tt.type(first.v.link.history.changes, 'number');
    tt.ok(
      'disk' in first.v && 'drops' in first.v && 'rates' in first.v,
      'disk, drops and rates included',
    );
    const s = await agent.status();
    tt.equal(s.heartbeat.topic, TOPIC);
    tt.ok(s.heartbeat.sent >= 1, `/v1/status counts heartbeats sent (${s.heartbeat.sent})`);
  },
);

t.test(
  '200,000 events draining: heartbeats arrive ahead of the backlog, the figure falling',
  async (tt) => {
    await control('pause');
    const TOTAL = 200_000;
    for (let i = 0; i < TOTAL; i += 5_000) {
      const body = Array.from({ length: 5_000 }, (_, j) =>
        JSON.stringify({ n: i + j, pad: 'h'.repeat(80) }),
      ).join('\n');
      const r = await post(
        `${agent.base}/v1/topics/bulk?key=k${i % 5}`,
        body,
        'application/x-ndjson',
        auth,
      );
      tt.equal(r.status, 200);
    }
    tt.equal((await agent.status()).backlog.events, TOTAL, 'backlog built while paused');
    const before = (await beats()).length;
    const resumedAt = Date.now();
    await control('resume');

    // Read the heartbeat topic while the drain runs; a record counts only if, after reading it,
    // the agent still had a backlog (so it arrived before the drain finished).
    const seenDuringDrain = new Map<number, Beat>();
    const deadline = Date.now() + 180_000;
    let left = TOTAL;
    while (left > 0 && Date.now() < deadline) {
      const got = await beats();
      left = (await agent.status()).backlog.events;
      if (left > 0)
        for (const b of got.slice(before))
          if (Date.parse(b.v.sent_at) >= resumedAt && b.v.backlog.events > 0)
            seenDuringDrain.set(b.offset, b);
      await sleep(500);
    }
    tt.equal(left, 0, `drained in ${((Date.now() - resumedAt) / 1000).toFixed(1)} s`);
    const during = [...seenDuringDrain.values()].sort((a, b) => a.offset - b.offset);
    tt.ok(
      during.length >= 2,
      `${during.length} heartbeats were in Kafka while the backlog still drained`,
    );
    for (const b of during) {
      tt.equal(b.key, AGENT_ID, 'keyed by agent id');
      tt.equal(b.v.agent_id, AGENT_ID);
      tt.equal(b.v.link.state, 'up');
      tt.ok(
        b.v.backlog.events > 0 && b.v.backlog.events <= TOTAL,
        `backlog figure ${b.v.backlog.events}`,
      );
    }
    const figures = during.map((b) => b.v.backlog.events);
    tt.ok(
      figures.every((f, i) => i === 0 || f < figures[i - 1]),
      `the backlog figure falls from record to record: ${figures.join(', ')}`,
    );

    const all = await beats();
    tt.ok(
      all.some((b) => b.v.link.state === 'paused'),
      'one heartbeat said the agent was paused',
    );
    tt.notOk(
      all.some((b) => b.raw.includes(TOKEN)),
      'no secret in any heartbeat',
    );
    tt.ok(
      all.every((b) => b.key === AGENT_ID),
      'every record keyed by agent id',
    );
  },
);

/** Stands in for Kafka when it never answers: the heartbeat must not wait for it. */
class HangingSink implements RecordSink {
  sends = 0;
  disconnects = 0;
  async connect(): Promise<void> {}
  send(_records: OutRecord[]): Promise<void> {
    this.sends++;
    return new Promise(() => {});
  }
  async disconnect(): Promise<void> {
    this.disconnects++;
  }
}

t.test('a send that hangs: counted, logged once, never blocks stop', async (tt) => {
  const out = new PassThrough();
  let logText = '';
  out.on('data', (d: Buffer) => (logText += d.toString()));
  const sink = new HangingSink();
  const status = {
    agent_id: 'x',
    version: '0',
    uptime_seconds: 1,
    link: { state: 'up', since: new Date().toISOString() },
    backlog: { events: 0 },
    rates: {},
    drops: {},
    dead_letters: { events: 0 },
    disk: {},
    warnings: [],
  } as unknown as AgentStatus;
  const hb = new Heartbeat({
    topic: 'hb',
    intervalMs: 50,
    agentId: 'x',
    sink,
    link: () => status.link,
    status: () => status,
    logger: createLogger('info', out),
    sendTimeoutMs: 100,
    pollMs: 20,
  });
  hb.start();
  await waitFor(() => hb.status().failures >= 3, {
    timeoutMs: 10_000,
    what: '3 failed heartbeats',
  });
  const t0 = Date.now();
  await hb.stop(1_000);
  tt.ok(Date.now() - t0 < 2_000, `stop returned in ${Date.now() - t0} ms`);
  const st = hb.status();
  tt.equal(st.sent, 0);
  tt.ok(st.failures >= 3, `${st.failures} failures counted`);
  tt.match(st.last_error, /no answer from Kafka within 100 ms/);
  tt.ok(sink.disconnects >= st.failures, 'a fresh producer after each failure');
  const warns = logText.split('\n').filter((l) => l.includes('heartbeat not sent'));
  tt.equal(warns.length, 1, 'logged once (rate-limited), not once per failure');
});

t.test('link history: changes and time per state over the window', async (tt) => {
  const h = new LinkHistory(60_000);
  const t0 = 1_000_000;
  h.observe('starting', t0, t0);
  h.observe('up', t0 + 1_000, t0 + 1_000);
  h.observe('down', t0 + 11_000, t0 + 11_500);
  h.observe('up', t0 + 21_000, t0 + 21_000);
  h.observe('up', t0 + 21_000, t0 + 25_000);
  const s = h.summary(t0 + 31_000);
  tt.equal(s.changes, 3);
  tt.same(s.seconds_by_state, { starting: 1, up: 20, down: 10 });
  tt.same(
    s.recent.map((r) => r.state),
    ['up', 'down', 'up'],
  );
  // A minute later the old changes have left the window.
  const later = h.summary(t0 + 200_000);
  tt.equal(later.changes, 0);
  tt.same(later.seconds_by_state, { up: 60 });
});
