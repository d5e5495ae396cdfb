/**
 * End to end against a real broker: 10,000 events over HTTP in all four body
 * forms, read back by kcat and compared byte for byte with headers, in order per key.
 * Plus a record Kafka refuses for good: dead-lettered, the log keeps flowing.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { startKafka } from '../scripts/kafka/kafka.ts';
import { consume } from './helpers/kcat.ts';
import { AgentProc, cleanup, post, tempDir } from './helpers/agent.ts';
import { checkDelivery } from './helpers/verify.ts';

const kafka = await startKafka({ brokers: 1 });
const dir = tempDir();
const agent = await AgentProc.start({
  env: {
    KEDGE_DATA_DIR: dir,
    KEDGE_KAFKA_BROKERS: kafka.bootstrap,
    KEDGE_TOPIC_PREFIX: 'e2e.',
    KEDGE_HTTP_MAX_BODY: '4MiB',
    KEDGE_AGENT_ID: 'e2e-agent',
  },
});
t.teardown(async () => {
  await agent.stop();
  await kafka.stop();
  cleanup(dir);
});

interface Expected {
  topic: string;
  key: Buffer | null;
  value: Buffer;
  headers: Record<string, string>;
}
const expected = new Map<number, Expected>();
const url = (p: string) => `${agent.base}${p}`;

function remember(first: number, events: Expected[]) {
  for (const [i, e] of events.entries()) expected.set(first + i, e);
}

async function pool<T>(n: number, items: T[], fn: (x: T) => Promise<void>) {
  let i = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (i < items.length) await fn(items[i++]);
    }),
  );
}

const reading = (dev: number, n: number) =>
  JSON.stringify({
    dev: `dev-${dev}`,
    n,
    temp: 20 + (n % 50) / 10,
    ts: 1_700_000_000_000 + n,
    note: 'ünïcødé ✓',
  });

t.test('10,000 events in four forms arrive byte for byte, in order per key', async (tt) => {
  // 1. NDJSON: 25 requests × 100 lines, keyed by ?key=
  for (let r = 0; r < 25; r++) {
    const key = `dev-${r % 5}`;
    const lines = Array.from({ length: 100 }, (_, i) => reading(r % 5, r * 100 + i));
    const res = await post(
      url(`/v1/topics/nd?key=${key}`),
      lines.join('\n') + '\n',
      'application/x-ndjson',
    );
    tt.equal(res.status, 200);
    remember(
      res.body.first_seq,
      lines.map((l) => ({
        topic: 'e2e.nd',
        key: Buffer.from(key),
        value: Buffer.from(l),
        headers: {},
      })),
    );
  }
  // 2. single JSON values, 16 at a time
  await pool(
    16,
    Array.from({ length: 2500 }, (_, i) => i),
    async (i) => {
      const body = `  ${reading(i % 7, i)}  `; // whitespace kept: the value is the body exactly as received
      const res = await post(
        url(`/v1/topics/js?key=k${i % 7}`),
        body,
        'application/json; charset=utf-8',
      );
      if (res.status !== 200) throw new Error(`status ${res.status}`);
      remember(res.body.first_seq, [
        { topic: 'e2e.js', key: Buffer.from(`k${i % 7}`), value: Buffer.from(body), headers: {} },
      ]);
    },
  );
  // 3. the records envelope with keys and headers
  for (let r = 0; r < 25; r++) {
    const recs = Array.from({ length: 100 }, (_, i) => ({
      key: `env-${i % 3}`,
      value: { r, i, nested: { a: [1, 2, 3] } },
      headers: { source: 'envelope', batch: String(r) },
    }));
    const res = await post(
      url('/v1/topics/env'),
      JSON.stringify({ records: recs }),
      'application/json',
    );
    tt.equal(res.status, 200);
    remember(
      res.body.first_seq,
      recs.map((x) => ({
        topic: 'e2e.env',
        key: Buffer.from(x.key),
        value: Buffer.from(JSON.stringify(x.value)),
        headers: x.headers,
      })),
    );
  }
  // 4. raw binary bodies
  await pool(
    16,
    Array.from({ length: 2500 }, (_, i) => i),
    async (i) => {
      const body = randomBytes(1 + (i % 300));
      const res = await post(url(`/v1/topics/raw?key=r${i % 3}`), body, 'application/octet-stream');
      if (res.status !== 200) throw new Error(`status ${res.status}`);
      remember(res.body.first_seq, [
        { topic: 'e2e.raw', key: Buffer.from(`r${i % 3}`), value: body, headers: {} },
      ]);
    },
  );
  tt.equal(expected.size, 10_000);

  await agent.waitDrained(120_000);
  const all = [];
  for (const [topic, n] of [
    ['e2e.nd', 2500],
    ['e2e.js', 2500],
    ['e2e.env', 2500],
    ['e2e.raw', 2500],
  ] as const) {
    const recs = await consume(kafka.bootstrap, topic, { expect: n, timeoutMs: 60_000 });
    tt.equal(recs.length, n, `${topic}: ${n} records`);
    all.push(...recs);
  }
  let mismatches = 0;
  for (const r of all) {
    const kid = r.headers['kedge-id'];
    const [agentId, seqS] = [
      kid.slice(0, kid.lastIndexOf(':')),
      kid.slice(kid.lastIndexOf(':') + 1),
    ];
    const exp = expected.get(Number(seqS));
    const ok =
      agentId === 'e2e-agent' &&
      exp !== undefined &&
      exp.topic === r.topic &&
      exp.value.equals(r.value) &&
      (exp.key === null ? r.key === null : r.key !== null && exp.key.equals(r.key)) &&
      Object.entries(exp.headers).every(([k, v]) => r.headers[k] === v) &&
      /^\d+$/.test(r.headers['kedge-ingest-ts']) &&
      Number(r.headers['kedge-ingest-ts']) === r.timestamp;
    if (!ok && mismatches++ < 5)
      tt.fail(
        `record ${kid} differs: ${JSON.stringify({ got: { topic: r.topic, value: r.value.toString('hex').slice(0, 80), headers: r.headers, ts: r.timestamp }, exp: exp && { topic: exp.topic, value: exp.value.toString('hex').slice(0, 80) } })}`,
      );
  }
  tt.equal(mismatches, 0, 'every record byte-identical with its headers and ingest timestamp');
  const rep = checkDelivery(
    all,
    [...expected.keys()].map(String),
    (r) => r.headers['kedge-id'].split(':').pop()!,
  );
  tt.same(rep.missing, [], 'nothing missing');
  tt.same(rep.orderViolations, [], 'order per key holds');
  tt.equal(rep.duplicates, 0, 'no duplicates on a clean run');
});

t.test(
  'a record Kafka refuses for good is dead-lettered, counted, and does not block the log',
  async (tt) => {
    const before = await post(url('/v1/topics/dl?key=a'), '{"n":1}', 'application/json');
    const huge = await post(
      url('/v1/topics/dl?key=a'),
      randomBytes(2 * 1024 * 1024),
      'application/octet-stream',
    );
    tt.equal(huge.status, 200, 'kedge accepts what its own limit allows');
    const after = await post(url('/v1/topics/dl?key=a'), '{"n":3}', 'application/json');
    const s = await agent.waitDrained(60_000);
    tt.equal(s.dead_letters.events, 1, 'one dead letter');
    tt.match(s.dead_letters.recent[0].reason, /MESSAGE_TOO_LARGE|RECORD_LIST_TOO_LARGE/);
    tt.equal(s.dead_letters.recent[0].seq, huge.body.first_seq);
    const recs = await consume(kafka.bootstrap, 'e2e.dl', { expect: 2, timeoutMs: 30_000 });
    tt.same(
      recs.map((r) => r.value.toString()),
      ['{"n":1}', '{"n":3}'],
      'the events around it went through, in order',
    );
    tt.ok(before.status === 200 && after.status === 200);
    const m = await (await fetch(url('/metrics'))).text();
    tt.match(
      m,
      /^kedge_dead_letters_total\{topic="dl",reason="(MESSAGE_TOO_LARGE|RECORD_LIST_TOO_LARGE)"\} 1$/m,
    );
    tt.ok(
      agent.lines.some((l) => l.includes('dead-letter')),
      'logged',
    );
  },
);
