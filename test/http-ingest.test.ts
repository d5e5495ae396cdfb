/**
 * The HTTP contract without Kafka: every bad request gets its documented status
 * and a JSON error, and stores nothing (the backlog does not move).
 * The broker address points at a closed port, so everything accepted stays in the log.
 */
import t, { type Test } from 'tap';
import { Readable } from 'node:stream';
import { request as httpRequest } from 'node:http';
import { request } from 'undici';
import { AgentProc, cleanup, freeLoopbackPort, post, tempDir } from './helpers/agent.ts';

const dir = tempDir();
const deadBroker = `127.0.0.1:${await freeLoopbackPort()}`;
const TOKEN = 's3cret-token-for-tests';
const agent = await AgentProc.start({
  env: {
    KEDGE_DATA_DIR: dir,
    KEDGE_KAFKA_BROKERS: deadBroker,
    KEDGE_HTTP_MAX_BODY: '64KiB',
    KEDGE_HTTP_TOKEN: TOKEN,
  },
});
t.teardown(async () => {
  await agent.stop();
  cleanup(dir);
});
const auth = { authorization: `Bearer ${TOKEN}` };
const url = (p: string) => `${agent.base}${p}`;
const backlog = async () => (await agent.status()).backlog.events as number;

async function expectRejected(
  tt: Test,
  name: string,
  status: number,
  fn: () => Promise<{ status: number; body: any }>,
  detail?: RegExp,
) {
  const before = await backlog();
  const r = await fn();
  tt.equal(r.status, status, `${name}: status ${status}`);
  tt.type(r.body?.error, 'string', `${name}: JSON error`);
  tt.type(r.body?.detail, 'string', `${name}: JSON detail`);
  if (detail) tt.match(r.body.detail, detail, `${name}: detail says what was wrong`);
  tt.equal(await backlog(), before, `${name}: nothing stored`);
}

t.test('accepted forms answer with the committed seq range', async (tt) => {
  const before = await backlog();
  const nd = await post(
    url('/v1/topics/sensors'),
    '{"a":1}\n{"a":2}\r\n\n{"a":3}\n',
    'application/x-ndjson',
    auth,
  );
  tt.equal(nd.status, 200);
  tt.equal(nd.body.accepted, 3);
  tt.equal(nd.body.last_seq - nd.body.first_seq, 2);
  const one = await post(
    url('/v1/topics/sensors?key=dev-1'),
    '{"t":21.5}',
    'application/json',
    auth,
  );
  tt.same([one.status, one.body.accepted], [200, 1]);
  tt.equal(one.body.first_seq, nd.body.last_seq + 1, 'seq continues');
  const env = await post(
    url('/v1/topics/sensors'),
    JSON.stringify({ records: [{ key: 'k', value: { x: 1 }, headers: { h: 'v' } }, { value: 2 }] }),
    'application/json',
    auth,
  );
  tt.same([env.status, env.body.accepted], [200, 2]);
  const raw = await post(
    url('/v1/topics/raw.bytes'),
    Buffer.from([0, 1, 2, 255]),
    'application/octet-stream',
    auth,
  );
  tt.same([raw.status, raw.body.accepted], [200, 1]);
  const rp = await post(
    url('/topics/legacy'),
    JSON.stringify({ records: [{ value: { a: 1 } }, { key: 'k', value: [1] }] }),
    'application/vnd.kafka.json.v2+json',
    auth,
  );
  tt.equal(rp.status, 200);
  tt.equal(rp.body.offsets.length, 2);
  const rb = await post(
    url('/topics/legacy'),
    JSON.stringify({ records: [{ value: Buffer.from('hi').toString('base64') }] }),
    'application/vnd.kafka.binary.v2+json',
    auth,
  );
  tt.equal(rb.status, 200);
  tt.equal(await backlog(), before + 3 + 1 + 2 + 1 + 2 + 1);
});

t.test('bad requests: documented status, JSON error, nothing stored', async (tt) => {
  await expectRejected(
    tt,
    'ndjson bad line',
    400,
    () =>
      post(
        url('/v1/topics/a'),
        '{"ok":1}\n{"ok":2}\n{bad\n{"ok":4}\n',
        'application/x-ndjson',
        auth,
      ),
    /line 3/,
  );
  await expectRejected(
    tt,
    'bad json',
    400,
    () => post(url('/v1/topics/a'), '{"a":', 'application/json', auth),
    /JSON/,
  );
  await expectRejected(
    tt,
    'envelope record without value',
    400,
    () =>
      post(
        url('/v1/topics/a'),
        JSON.stringify({ records: [{ value: 1 }, { key: 'x' }] }),
        'application/json',
        auth,
      ),
    /records\[1\]/,
  );
  await expectRejected(tt, 'empty body', 400, () =>
    post(url('/v1/topics/a'), '', 'application/json', auth),
  );
  await expectRejected(
    tt,
    'broken utf-8 in ndjson',
    400,
    () =>
      post(
        url('/v1/topics/a'),
        Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x3a, 0x31, 0x7d]),
        'application/x-ndjson',
        auth,
      ),
    /UTF-8/,
  );
  await expectRejected(tt, 'no token', 401, () =>
    post(url('/v1/topics/a'), '{}', 'application/json'),
  );
  await expectRejected(tt, 'wrong token', 401, () =>
    post(url('/v1/topics/a'), '{}', 'application/json', { authorization: 'Bearer nope' }),
  );
  await expectRejected(tt, 'unknown path', 404, () =>
    post(url('/v2/whatever'), '{}', 'application/json', auth),
  );
  await expectRejected(tt, 'GET on ingest', 405, async () => {
    const r = await request(url('/v1/topics/a'), { method: 'GET', headers: auth });
    tt.equal(r.headers.allow, 'POST');
    return { status: r.statusCode, body: await r.body.json() };
  });
  await expectRejected(
    tt,
    'too large (declared)',
    413,
    () => post(url('/v1/topics/a'), 'x'.repeat(70 * 1024), 'text/plain', auth),
    /KEDGE_HTTP_MAX_BODY/,
  );
  await expectRejected(
    tt,
    'too large (chunked)',
    413,
    async () => {
      async function* gen() {
        for (let i = 0; i < 100; i++) yield Buffer.alloc(1024, 97);
      }
      const r = await request(url('/v1/topics/a'), {
        method: 'POST',
        body: Readable.from(gen()),
        headers: { ...auth, 'content-type': 'text/plain' },
      });
      return { status: r.statusCode, body: await r.body.json() };
    },
    /KEDGE_HTTP_MAX_BODY/,
  );
  await expectRejected(
    tt,
    'rest proxy wrong type',
    415,
    () => post(url('/topics/a'), '{"records":[{"value":1}]}', 'application/json', auth),
    /vnd\.kafka/,
  );
  await expectRejected(
    tt,
    'rest proxy bad base64',
    400,
    () =>
      post(
        url('/topics/a'),
        '{"records":[{"value":"***"}]}',
        'application/vnd.kafka.binary.v2+json',
        auth,
      ),
    /base64/,
  );
  await expectRejected(
    tt,
    'topic with a space',
    400,
    () => post(url('/v1/topics/bad%20topic'), '{}', 'application/json', auth),
    /not a valid Kafka topic/,
  );
  // Sent with node:http, which (unlike fetch/undici) does not resolve `..` in the path.
  const rawPost = (path: string) =>
    new Promise<{ status: number; body: any }>((resolve, reject) => {
      const r = httpRequest(
        {
          host: '127.0.0.1',
          port: agent.port,
          path,
          method: 'POST',
          headers: { ...auth, 'content-type': 'application/json' },
        },
        (res) => {
          let b = '';
          res.on('data', (d) => (b += d));
          res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(b) }));
        },
      );
      r.on('error', reject);
      r.end('{}');
    });
  await expectRejected(tt, 'topic ..', 400, () => rawPost('/v1/topics/..'));
  await expectRejected(tt, 'topic %2E', 400, () => rawPost('/v1/topics/%2E'));
  await expectRejected(tt, 'topic too long', 400, () =>
    post(url(`/v1/topics/${'a'.repeat(250)}`), '{}', 'application/json', auth),
  );
  await expectRejected(tt, 'empty topic', 400, () =>
    post(url('/v1/topics/'), '{}', 'application/json', auth),
  );
  const ok = await post(url(`/v1/topics/${'a'.repeat(249)}`), '{}', 'application/json', auth);
  tt.equal(ok.status, 200, '249 characters is a legal topic');
});

t.test('operations endpoints', async (tt) => {
  const h = await request(url('/healthz'));
  tt.equal(h.statusCode, 200);
  await h.body.dump();
  const r = await request(url('/readyz'));
  tt.equal(r.statusCode, 200);
  await r.body.dump();
  const m = await request(url('/metrics'));
  const text = await m.body.text();
  tt.match(text, /^kedge_ingested_events_total\{source="http",topic="sensors"\} 6$/m);
  tt.match(text, /^kedge_backlog_events \d+$/m);
  tt.match(text, /^kedge_commit_duration_seconds_count \d+$/m);
  tt.match(text, /^kedge_rejected_requests_total\{source="http",reason="unauthorized"\} 2$/m);
  let s = await agent.status();
  for (let i = 0; i < 150 && s.link.state !== 'down'; i++) {
    await new Promise((r) => setTimeout(r, 100));
    s = await agent.status();
  }
  tt.equal(s.link.state, 'down', 'no broker: link down');
  tt.ok(s.link.last_error, 'status says why');
  tt.ok(s.backlog.oldest_age_seconds >= 0);
  tt.notMatch(JSON.stringify(s), new RegExp(TOKEN), 'the token is not in status');
  const p = await post(url('/v1/forwarding/pause'), '', undefined);
  tt.equal(p.status, 401, 'pause needs the token');
});

t.test('many concurrent keep-alive connections', async (tt) => {
  const before = await backlog();
  const results = await Promise.all(
    Array.from({ length: 200 }, (_, i) =>
      post(url(`/v1/topics/conc?key=k${i % 10}`), `{"i":${i}}`, 'application/json', auth),
    ),
  );
  tt.ok(
    results.every((r) => r.status === 200),
    'all 200',
  );
  tt.equal(await backlog(), before + 200);
  const seqs = results.map((r) => r.body.first_seq).sort((a, b) => a - b);
  tt.equal(new Set(seqs).size, 200, 'each request its own seq');
});

t.test('SIGTERM: exits 0 within 10 s, keeps the log', async (tt) => {
  const before = await backlog();
  const r = await agent.stop();
  tt.equal(r.code, 0);
  tt.ok(r.ms < 10_000, `stopped in ${r.ms} ms`);
  const again = await AgentProc.start({
    env: { KEDGE_DATA_DIR: dir, KEDGE_KAFKA_BROKERS: deadBroker, KEDGE_HTTP_TOKEN: TOKEN },
  });
  tt.equal((await again.status()).backlog.events, before, 'backlog survives a restart');
  await again.stop();
});
