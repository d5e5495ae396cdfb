/**
 * Property-based fuzzing of the HTTP API against the real agent process.
 * Random methods, paths, content types, headers and bodies (NDJSON, JSON,
 * envelopes, REST-proxy envelopes, binary, broken UTF-8, deep JSON, huge
 * numbers, empty, around and past KEDGE_HTTP_MAX_BODY). Properties:
 *   - the agent never crashes (process alive, /healthz answers);
 *   - no 5xx for a client mistake (507/503 only for their documented causes);
 *   - no partial storage: the backlog grows by exactly what 2xx answers report
 *     accepted, request by request and in total.
 * Kafka points at a closed port, so everything accepted stays in the backlog.
 * The seed is fixed (override with FUZZ_SEED=n) and printed, so a failure replays.
 */
import t from 'tap';
import fc from 'fast-check';
import { request as httpRequest } from 'node:http';
import { connect as netConnect } from 'node:net';
import { request } from 'undici';
import { AgentProc, cleanup, freeLoopbackPort, tempDir } from './helpers/agent.ts';
import { openLog } from '../agent/log/index.ts';

const SEED = Number(process.env.FUZZ_SEED ?? 7_2024_11);
const RUNS = 500;
const MAX_BODY = 64 * 1024;
const TOKEN = 'fuzz-token-0123';

const dir = tempDir('kedge-fuzz-http-');
const deadBroker = `127.0.0.1:${await freeLoopbackPort()}`;
const agentEnv = {
  KEDGE_DATA_DIR: dir,
  KEDGE_KAFKA_BROKERS: deadBroker,
  KEDGE_HTTP_MAX_BODY: '64KiB',
  KEDGE_HTTP_TOKEN: TOKEN,
  KEDGE_LOG_LEVEL: 'warn',
};
let agent = await AgentProc.start({ env: agentEnv });
t.teardown(async () => {
  await agent.stop();
  cleanup(dir);
});
t.comment(`fast-check seed ${SEED} (FUZZ_SEED=${SEED} replays), ${RUNS} runs`);

const backlog = async (): Promise<number> => (await agent.status()).backlog.events as number;

// ---------------------------------------------------------------- requests --

interface FuzzRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: Buffer;
  /** Send without Content-Length (chunked), in a few pieces. */
  chunked: boolean;
}

interface Answer {
  status: number;
  text: string;
  json: any;
}

/** One request on its own connection (node:http sends paths as given: no `..` resolution). */
function send(port: number, r: FuzzRequest): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { ...r.headers };
    const canChunk = r.chunked && ['POST', 'PUT', 'PATCH'].includes(r.method);
    if (!canChunk) headers['content-length'] = r.body.length;
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        method: r.method,
        path: r.path,
        headers,
        agent: false,
        timeout: 20_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: any;
          try {
            json = JSON.parse(text);
          } catch {
            /* not JSON */
          }
          resolve({ status: res.statusCode ?? 0, text, json });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('client timeout (20 s)')));
    req.on('error', reject);
    if (canChunk) {
      const third = Math.ceil(r.body.length / 3) || 1;
      for (let i = 0; i < r.body.length; i += third) req.write(r.body.subarray(i, i + third));
      req.end();
    } else req.end(r.body);
  });
}

// ------------------------------------------------------------- arbitraries --

const validTopic = fc
  .stringMatching(/^[a-zA-Z0-9._-]{1,30}$/)
  .filter((s) => s !== '.' && s !== '..');
const anyTopic = fc.oneof(
  { weight: 6, arbitrary: validTopic },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '..',
      '.',
      '%2E%2E',
      '%E0%A4%A',
      '%',
      'a%00b',
      'a%2Fb',
      'a'.repeat(249),
      'b'.repeat(250),
      '',
      'sp%20ace',
      '%C3%A9t%C3%A9',
    ),
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 20 }).map((s) => encodeURIComponent(s)) },
);
const query = fc.oneof(
  { weight: 4, arbitrary: fc.constant('') },
  {
    weight: 2,
    arbitrary: fc.string({ maxLength: 12 }).map((k) => `?key=${encodeURIComponent(k)}`),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom('?key=%ZZ', '?key', '?=&&key=a&key=b', '?' + 'k'.repeat(2000)),
  },
);
const path = fc.oneof(
  { weight: 10, arbitrary: fc.tuple(anyTopic, query).map(([tp, q]) => `/v1/topics/${tp}${q}`) },
  { weight: 4, arbitrary: fc.tuple(anyTopic, query).map(([tp, q]) => `/topics/${tp}${q}`) },
  { weight: 1, arbitrary: anyTopic.map((tp) => `/v1/events/${tp}`) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '/v1/forwarding/pause',
      '/v1/forwarding/resume',
      '/healthz',
      '/readyz',
      '/metrics',
      '/v1/status',
      '/',
      '/v1/topics',
      '/v1/topics/a/b',
      '/topics',
      '//v1/topics/x',
      '/v1/topics/../status',
      '*',
    ),
  },
  { weight: 1, arbitrary: fc.webPath().map((p) => (p.startsWith('/') ? p : `/${p}`)) },
);
const method = fc.oneof(
  { weight: 12, arbitrary: fc.constant('POST') },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      'GET',
      'HEAD',
      'PUT',
      'DELETE',
      'PATCH',
      'OPTIONS',
      'PROPFIND',
      'post',
    ),
  },
);
const contentType = fc.oneof(
  fc.constantFrom(
    'application/json',
    'application/x-ndjson',
    'application/ndjson',
    'application/vnd.kafka.json.v2+json',
    'application/vnd.kafka.binary.v2+json',
    'text/plain',
    'application/octet-stream',
    'APPLICATION/JSON; charset=utf-8',
    'application/cloudevents+json',
    'application/vnd.kafka.avro.v2+json',
    'multipart/form-data; boundary=x',
    ';;;',
    '',
  ),
  fc.string({ maxLength: 30 }).filter((s) => /^[\x20-\x7e]*$/.test(s)),
);
const auth = fc.oneof(
  { weight: 10, arbitrary: fc.constant(`Bearer ${TOKEN}`) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      `bearer   ${TOKEN}  `,
      'Bearer wrong',
      'Bearer',
      `Basic ${TOKEN}`,
      '',
      `Bearer ${TOKEN}x`,
    ),
  },
  { weight: 1, arbitrary: fc.constant(null) },
);
const extraHeaders = fc.dictionary(
  fc.stringMatching(/^x-[a-z0-9-]{1,12}$/),
  fc.string({ maxLength: 40 }).filter((s) => /^[\x20-\x7e]*$/.test(s)),
  { maxKeys: 3 },
);

const json = fc.jsonValue({ maxDepth: 4 });
const hugeNumber = fc.constantFrom(
  '1e400',
  '-1e400',
  '12345678901234567890',
  '-98765432109876543210123',
  '1.0e-400',
  '0.1000000000000000055511151231257827',
  '9007199254740993',
  '1E308',
);
const deep = fc.integer({ min: 1, max: 30_000 }).map((n) => '['.repeat(n) + ']'.repeat(n));
const deepObj = fc
  .integer({ min: 1, max: 8_000 })
  .map((n) => '{"a":'.repeat(n) + '1' + '}'.repeat(n));
const headerValue = fc.oneof(fc.string({ maxLength: 10 }), fc.integer(), fc.constant(null));
const record = fc.record(
  {
    key: fc.oneof(
      fc.string({ maxLength: 10 }),
      fc.integer(),
      fc.boolean(),
      fc.constant(null),
      json,
    ),
    value: json,
    headers: fc.dictionary(
      fc.oneof(fc.string({ maxLength: 8 }), fc.constant('kedge-id')),
      headerValue,
      { maxKeys: 2 },
    ),
    partition: fc.integer({ min: 0, max: 3 }),
    extra: fc.string(),
  },
  { requiredKeys: [] },
);
const base64 = fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b).toString('base64'));
const restRecord = fc.record(
  {
    key: fc.oneof(base64, json, fc.constant('***')),
    value: fc.oneof(base64, json, fc.constant('not base64!')),
    partition: fc.constantFrom(null, 0, 1),
  },
  { requiredKeys: [] },
);

function brokenUtf8(text: string, at: number): Buffer {
  const b = Buffer.from(text, 'utf8');
  const i = b.length === 0 ? 0 : at % (b.length + 1);
  return Buffer.concat([
    b.subarray(0, i),
    Buffer.from([0xc3, 0x28, 0xff, 0xe2, 0x82]),
    b.subarray(i),
  ]);
}

const text = (s: string) => Buffer.from(s, 'utf8');
/** A body with the content type that suits it (used most of the time, so valid requests are common). */
interface Body {
  bytes: Buffer;
  ct: string;
}
const tag = (ct: string, a: fc.Arbitrary<Buffer>): fc.Arbitrary<Body> =>
  a.map((bytes) => ({ bytes, ct }));
const body: fc.Arbitrary<Body> = fc.oneof(
  // NDJSON, with blank lines and CRLF mixed in
  {
    weight: 4,
    arbitrary: tag(
      'application/x-ndjson',
      fc
        .array(
          fc.oneof(
            { weight: 8, arbitrary: json.map((v) => JSON.stringify(v)) },
            {
              weight: 1,
              arbitrary: fc.constantFrom('', '  ', '\r', '{bad', '1e400', '12345678901234567890'),
            },
          ),
          { minLength: 1, maxLength: 20 },
        )
        .chain((lines) => fc.constantFrom('\n', '\r\n').map((nl) => text(lines.join(nl)))),
    ),
  },
  {
    weight: 3,
    arbitrary: tag(
      'application/json',
      json.map((v) => text(JSON.stringify(v))),
    ),
  },
  {
    weight: 1,
    arbitrary: tag(
      'application/json',
      fc.array(json, { maxLength: 10 }).map((v) => text(JSON.stringify(v))),
    ),
  },
  // kedge envelopes, valid and not
  {
    weight: 4,
    arbitrary: tag(
      'application/json',
      fc.array(record, { maxLength: 8 }).map((records) => text(JSON.stringify({ records }))),
    ),
  },
  {
    weight: 1,
    arbitrary: tag(
      'application/json',
      fc
        .tuple(
          fc.array(record, { maxLength: 3 }),
          fc.dictionary(fc.string({ maxLength: 5 }), json, { maxKeys: 2 }),
        )
        .map(([records, more]) => text(JSON.stringify({ ...more, records }))),
    ),
  },
  // REST-proxy envelopes
  {
    weight: 3,
    arbitrary: tag(
      'application/vnd.kafka.json.v2+json',
      fc.array(restRecord, { maxLength: 8 }).map((records) => text(JSON.stringify({ records }))),
    ),
  },
  {
    weight: 2,
    arbitrary: tag(
      'application/vnd.kafka.binary.v2+json',
      fc
        .array(
          fc.record(
            { key: fc.option(base64, { nil: undefined }), value: base64 },
            { requiredKeys: ['value'] },
          ),
          { minLength: 1, maxLength: 8 },
        )
        .map((records) => text(JSON.stringify({ records }))),
    ),
  },
  // huge and special numbers, alone and inside envelopes
  {
    weight: 2,
    arbitrary: tag(
      'application/json',
      hugeNumber.map((n) => text(n)),
    ),
  },
  {
    weight: 2,
    arbitrary: tag(
      'application/json',
      hugeNumber.map((n) => text(`{"records":[{"value":${n}}]}`)),
    ),
  },
  {
    weight: 1,
    arbitrary: tag(
      'application/vnd.kafka.json.v2+json',
      hugeNumber.map((n) => text(`{"records":[{"key":${n},"value":1}]}`)),
    ),
  },
  // deep JSON, alone and as an envelope value
  { weight: 1, arbitrary: tag('application/json', deep.map(text)) },
  {
    weight: 2,
    arbitrary: tag(
      'application/json',
      fc.oneof(deep, deepObj).map((d) => text(`{"records":[{"value":${d}}]}`)),
    ),
  },
  {
    weight: 1,
    arbitrary: tag(
      'application/vnd.kafka.json.v2+json',
      deep.map((d) => text(`{"records":[{"key":${d},"value":1}]}`)),
    ),
  },
  // binary and broken UTF-8
  {
    weight: 2,
    arbitrary: tag(
      'application/octet-stream',
      fc.uint8Array({ maxLength: 2_000 }).map((b) => Buffer.from(b)),
    ),
  },
  {
    weight: 2,
    arbitrary: tag(
      'application/x-ndjson',
      fc
        .tuple(
          fc.oneof(
            json.map((v) => JSON.stringify(v)),
            fc.constant('{"records":[{"value":"é"}]}'),
          ),
          fc.nat(),
        )
        .map(([s, at]) => brokenUtf8(s, at)),
    ),
  },
  // empty, and sizes around and past the limit
  { weight: 1, arbitrary: tag('application/json', fc.constant(Buffer.alloc(0))) },
  {
    weight: 2,
    arbitrary: tag(
      'text/plain',
      fc.integer({ min: MAX_BODY - 3, max: MAX_BODY + 3 }).map((n) => Buffer.alloc(n, 0x61)),
    ),
  },
  {
    weight: 1,
    arbitrary: tag(
      'text/plain',
      fc.integer({ min: MAX_BODY + 1, max: 6 * 1024 * 1024 }).map((n) => Buffer.alloc(n, 0x7b)),
    ),
  },
);

const fuzzRequest: fc.Arbitrary<FuzzRequest> = fc
  .record({
    method,
    path,
    ct: fc.option(contentType, { nil: null }),
    ownCt: fc.nat({ max: 3 }),
    auth,
    extra: extraHeaders,
    body,
    chunked: fc.boolean(),
  })
  .map(({ method, path, ct, ownCt, auth, extra, body, chunked }) => {
    const headers: Record<string, string> = { ...extra };
    const type =
      ownCt > 0
        ? path.startsWith('/topics/') && body.ct === 'application/octet-stream'
          ? 'application/vnd.kafka.binary.v2+json'
          : body.ct
        : ct;
    if (type !== null) headers['content-type'] = type;
    if (auth !== null) headers.authorization = auth;
    return { method, path, headers, body: body.bytes, chunked };
  });

/** What 2xx answers say was stored: `accepted` (kedge API) or the offsets (REST proxy). */
function acceptedCount(a: Answer): number {
  if (typeof a.json?.accepted === 'number') return a.json.accepted;
  if (Array.isArray(a.json?.offsets)) return a.json.offsets.length;
  return 0;
}

const DOCUMENTED_5XX: Record<number, string[]> = {
  503: ['shutting_down', 'log_unavailable', 'not_ready'],
  507: ['insufficient_storage'],
};

// ------------------------------------------------------------------ tests --

t.test(
  'random requests: no crash, no 5xx, backlog moves only by what 2xx answers accepted',
  async (tt) => {
    const start = await backlog();
    let acceptedTotal = 0;
    let runs = 0;
    const statuses = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(fuzzRequest, async (r) => {
        runs++;
        const before = await backlog();
        let a: Answer | null = null;
        try {
          a = await send(agent.port, r);
        } catch (e) {
          // The agent may cut a connection whose body is far past the limit before the client finished writing.
          if (r.body.length <= MAX_BODY)
            throw new Error(
              `no answer for a ${r.body.length}-byte request: ${(e as Error).message}`,
            );
        }
        const after = await backlog();
        if (agent.child.exitCode !== null) throw new Error('the agent exited');
        if (a === null) {
          if (after !== before)
            throw new Error(`a request without an answer stored ${after - before} events`);
          return;
        }
        statuses.set(a.status, (statuses.get(a.status) ?? 0) + 1);
        if (a.status >= 500) {
          const allowed = DOCUMENTED_5XX[a.status] ?? [];
          if (!allowed.includes(a.json?.error))
            throw new Error(`${a.status} for a client request: ${a.text.slice(0, 300)}`);
        }
        if (
          a.status >= 400 &&
          r.method !== 'HEAD' &&
          (typeof a.json?.error !== 'string' || typeof a.json?.detail !== 'string')
        ) {
          throw new Error(
            `error ${a.status} without a JSON {error, detail}: ${a.text.slice(0, 200)}`,
          );
        }
        if (
          r.body.length > MAX_BODY &&
          a.status >= 200 &&
          a.status < 300 &&
          r.method === 'POST' &&
          /^\/(v1\/)?topics\//.test(r.path)
        ) {
          throw new Error(`a ${r.body.length}-byte body (limit ${MAX_BODY}) was accepted`);
        }
        const accepted = a.status >= 200 && a.status < 300 ? acceptedCount(a) : 0;
        if (
          accepted > 0 &&
          typeof a.json?.first_seq === 'number' &&
          a.json.last_seq - a.json.first_seq + 1 !== accepted
        ) {
          throw new Error(
            `accepted ${accepted} but seq range ${a.json.first_seq}..${a.json.last_seq}`,
          );
        }
        if (after - before !== accepted)
          throw new Error(
            `status ${a.status} reported ${accepted} accepted, the backlog moved by ${after - before}`,
          );
        acceptedTotal += accepted;
      }),
      // A run that hits the time limit fails (markInterruptAsFailure): a slow machine
      // must not turn 500 cases into a handful and still pass.
      {
        seed: SEED,
        numRuns: RUNS,
        endOnFailure: true,
        interruptAfterTimeLimit: 300_000,
        markInterruptAsFailure: true,
      },
    );
    tt.equal(runs, RUNS, `all ${RUNS} cases ran`);
    tt.comment(
      `statuses: ${JSON.stringify(Object.fromEntries([...statuses].sort((a, b) => a[0] - b[0])))}; events accepted: ${acceptedTotal}`,
    );
    tt.equal(
      await backlog(),
      start + acceptedTotal,
      'backlog = sum of events accepted by 2xx answers',
    );
    // And counted again from the log file, not the agent's in-memory counter.
    await agent.stop();
    const log = await openLog({ dir, driver: 'sqlite', sync: 'normal' });
    const inFile = log.stats().backlogEvents;
    await log.close();
    agent = await AgentProc.start({ env: agentEnv, port: agent.port });
    tt.equal(inFile, start + acceptedTotal, 'the log file holds exactly those events');
    tt.ok(
      (statuses.get(200) ?? 0) > RUNS / 10,
      'a fair share of the requests was valid and accepted',
    );
    tt.ok(
      [...statuses.keys()].some((s) => s === 400) && [...statuses.keys()].some((s) => s === 413),
      'bad and oversized requests were generated',
    );
    const h = await request(`${agent.base}/healthz`);
    await h.body.dump();
    tt.equal(h.statusCode, 200, 'agent healthy after the run');
  },
);

/** Writes raw bytes, collects what comes back until the agent closes the connection (or 5 s). */
function rawExchange(port: number, bytes: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const s = netConnect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const done = () => resolve(Buffer.concat(chunks).toString('latin1'));
    s.setTimeout(5_000, () => s.destroy());
    s.on('data', (c) => chunks.push(c));
    s.on('error', () => {});
    s.on('close', done);
    s.write(bytes, () => s.end());
  });
}

t.test('malformed HTTP on the wire: no 5xx, nothing stored, agent alive', async (tt) => {
  const start = await backlog();
  const line = fc.oneof(
    fc.constantFrom(
      'POST /v1/topics/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!',
      `POST /v1/topics/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n`,
      `POST /v1/topics/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 10\r\n\r\nshort`,
      `POST /v1/topics/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: -1\r\n\r\n{}`,
      `POST /v1/topics/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 99999999999999999999\r\n\r\n{}`,
      `POST /v1/topics/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n`,
      'GET / HTTP/9.9\r\n\r\n',
      `GET /${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
      `GET / HTTP/1.1\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`,
      'POST /v1/topics/a HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n',
      '\r\n\r\n\r\n',
    ),
    fc.uint8Array({ minLength: 1, maxLength: 300 }).map((b) => Buffer.from(b).toString('latin1')),
    fc
      .tuple(
        fc.constantFrom('POST', 'GET', 'X'),
        fc.string({ maxLength: 40 }),
        fc.string({ maxLength: 80 }),
      )
      .map(([m, p, h]) => `${m} ${p} HTTP/1.1\r\n${h}\r\n\r\n`),
  );
  let answered = 0;
  await fc.assert(
    fc.asyncProperty(line, async (req) => {
      const reply = await rawExchange(agent.port, Buffer.from(req, 'latin1'));
      const m = /^HTTP\/1\.1 (\d{3})/.exec(reply);
      if (m) {
        answered++;
        const status = Number(m[1]);
        if (status >= 500) throw new Error(`${status} for malformed HTTP: ${reply.slice(0, 300)}`);
      }
      if (agent.child.exitCode !== null) throw new Error('the agent exited');
    }),
    { seed: SEED, numRuns: 100, endOnFailure: true },
  );
  tt.ok(answered > 0, `${answered} malformed requests got an HTTP answer`);
  tt.equal(
    await backlog(),
    start,
    'nothing stored from malformed HTTP (the truncated bodies were never complete)',
  );
  const h = await request(`${agent.base}/healthz`);
  await h.body.dump();
  tt.equal(h.statusCode, 200, 'agent healthy');
});

t.test('regressions found by the fuzzer', async (tt) => {
  const post = (p: string, b: string, ct: string) =>
    send(agent.port, {
      method: 'POST',
      path: p,
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': ct },
      body: text(b),
      chunked: false,
    });
  const before = await backlog();
  const deepValue = '['.repeat(20_000) + ']'.repeat(20_000);
  let r = await post('/v1/topics/deep', `{"records":[{"value":${deepValue}}]}`, 'application/json');
  tt.equal(r.status, 400, 'envelope value nested 20,000 deep: 400, not 500');
  tt.match(r.json.detail, /nested too deeply/);
  r = await post(
    '/topics/deep',
    `{"records":[{"value":${deepValue}}]}`,
    'application/vnd.kafka.json.v2+json',
  );
  tt.equal(r.status, 400, 'REST proxy value nested 20,000 deep: 400, not 500');
  tt.match(r.json.detail, /nested too deeply/);
  r = await post('/v1/topics/deep', deepValue, 'application/json');
  tt.equal(r.status, 200, 'a deep document sent as one event is stored byte for byte');
  r = await post(
    '/v1/topics/num',
    '{"records":[{"value":{"id":12345678901234567890}}]}',
    'application/json',
  );
  tt.equal(
    r.status,
    400,
    'an envelope number that would lose digits is refused, not silently changed',
  );
  tt.match(r.json.detail, /12345678901234567890/);
  r = await post('/v1/topics/num', '{"records":[{"value":1e400}]}', 'application/json');
  tt.equal(r.status, 400, '1e400 in an envelope is refused (it would become null)');
  r = await post(
    '/topics/num',
    '{"records":[{"value":1e400}]}',
    'application/vnd.kafka.json.v2+json',
  );
  tt.equal(r.status, 400, 'REST proxy: 1e400 refused');
  r = await post('/v1/topics/num', '{"id":12345678901234567890}\n', 'application/x-ndjson');
  tt.equal(r.status, 200, 'NDJSON keeps big numbers byte for byte, so they are fine there');
  r = await post(
    '/v1/topics/num',
    '{"records":[{"value":{"id":9007199254740992,"f":0.1}}]}',
    'application/json',
  );
  tt.equal(r.status, 200, 'numbers a double holds exactly are fine in envelopes');
  tt.equal(await backlog(), before + 3);
});
