/**
 * `kedge tap` against the real agent process (Kafka unreachable: ingest does not need it):
 * the CLI and a raw HTTP viewer see every committed event of their pattern, in seq order, with
 * the seqs ingest answered, while concurrent clients post several topics; a viewer that stops
 * reading does not slow ingest down or swell the agent's memory, and what it missed is counted;
 * the agent's stop ends the viewers; usage mistakes are one line and exit 2.
 */
import t from 'tap';
import { connect } from 'node:net';
import { join } from 'node:path';
import { request } from 'undici';
import {
  AgentProc,
  REPO,
  cleanup,
  freeLoopbackPort,
  post,
  sleep,
  tempDir,
} from './helpers/agent.ts';
import { run, spawnProc } from './helpers/proc.ts';

const TOKEN = 'tap-test-token';
const AUTH = { authorization: `Bearer ${TOKEN}` };
const dir = tempDir();
const agent = await AgentProc.start({
  env: {
    KEDGE_DATA_DIR: dir,
    KEDGE_KAFKA_BROKERS: '127.0.0.1:1',
    KEDGE_HTTP_TOKEN: TOKEN,
    KEDGE_LOG_LEVEL: 'warn',
  },
});
t.teardown(async () => {
  await agent.stop();
  cleanup(dir);
});

const CLI = join(REPO, 'agent/cli.ts');
const cliEnv = (port = agent.port, token: string | null = TOKEN) => ({
  PATH: process.env.PATH ?? '',
  KEDGE_HTTP_LISTEN: `127.0.0.1:${port}`,
  ...(token ? { KEDGE_HTTP_TOKEN: token } : {}),
});

interface Posted {
  /** The seqs the agent answered, per topic. */
  seqs: Map<string, number[]>;
}

/**
 * `producers` concurrent clients, each posting `requests` NDJSON requests of `perRequest`
 * events to its topic; values `{"p":P,"i":I}` count up per producer.
 */
async function load(
  topics: string[],
  requests: number,
  perRequest: number,
  pad = 0,
  keyPad = 0,
): Promise<Posted> {
  const seqs = new Map<string, number[]>();
  await Promise.all(
    topics.map(async (topic, p) => {
      const mine: number[] = [];
      seqs.set(topic, mine);
      for (let r = 0; r < requests; r++) {
        const body = Array.from({ length: perRequest }, (_, j) =>
          JSON.stringify({ p, i: r * perRequest + j, ...(pad ? { pad: 'x'.repeat(pad) } : {}) }),
        ).join('\n');
        const res = await post(
          `${agent.base}/v1/topics/${topic}?key=k${p}${'-'.repeat(keyPad)}`,
          body,
          'application/x-ndjson',
          AUTH,
        );
        if (res.status !== 200)
          throw new Error(`post: HTTP ${res.status} ${JSON.stringify(res.body)}`);
        for (let s = res.body.first_seq; s <= res.body.last_seq; s++) mine.push(s);
      }
    }),
  );
  return { seqs };
}

async function tapDropped(): Promise<number> {
  const r = await request(`${agent.base}/metrics`);
  const m = /^kedge_tap_dropped_events_total (\d+)/m.exec(await r.body.text());
  if (!m) throw new Error('no kedge_tap_dropped_events_total in /metrics');
  return Number(m[1]);
}

async function rss(): Promise<number> {
  const r = await request(`${agent.base}/metrics`);
  const m = /^kedge_process_resident_memory_bytes (\d+)/m.exec(await r.body.text());
  if (!m) throw new Error('no kedge_process_resident_memory_bytes in /metrics');
  return Number(m[1]);
}

/** Checks one viewer's lines against what was posted to the matching topics. */
function checkSeen(tt: any, name: string, lines: any[], posted: Posted, matching: string[]): void {
  const expected = matching.flatMap((tp) => posted.seqs.get(tp) ?? []).sort((a, b) => a - b);
  const seqs = lines.map((l) => l.seq);
  tt.equal(lines.filter((l) => 'dropped' in l).length, 0, `${name}: nothing dropped`);
  tt.equal(seqs.length, expected.length, `${name}: saw ${expected.length} events`);
  tt.ok(
    seqs.every((s, i) => i === 0 || s > seqs[i - 1]),
    `${name}: in increasing seq order`,
  );
  tt.same(seqs, expected, `${name}: exactly the seqs ingest answered for the matching topics`);
  tt.ok(
    lines.every((l) => matching.includes(l.topic)),
    `${name}: the pattern filtered the other topics out`,
  );
  // Per producer, its values in the order it sent them, none missing.
  const next = new Map<number, number>();
  let ordered = true;
  for (const l of lines) {
    const v = JSON.parse(l.preview);
    if (v.i !== (next.get(v.p) ?? 0)) ordered = false;
    next.set(v.p, v.i + 1);
    if (l.key !== `k${v.p}` || l.size !== Buffer.byteLength(l.preview) + l.key.length)
      ordered = false;
  }
  tt.ok(ordered, `${name}: each producer's values in order, with key and size`);
}

t.test('10,000 events under load: the CLI and a raw viewer see them all, in order', async (tt) => {
  const cli = spawnProc(
    process.execPath,
    [CLI, '--', 'tap', 'tap.hot.#', '--json', '--limit', '10000'],
    { env: cliEnv(), maxOutput: 32 << 20, name: 'kedge tap' },
  );
  await cli.waitForLine(/^kedge: tapping tap\.hot\.# /, 20_000);
  const raw = await request(`${agent.base}/v1/tap?pattern=tap.hot.%23&limit=10000`, {
    headers: AUTH,
    bodyTimeout: 0,
  });
  tt.equal(raw.statusCode, 200, 'raw viewer attached');
  tt.match(String(raw.headers['content-type']), /application\/x-ndjson/);
  const rawText = raw.body.text();

  // 4 producers on matching topics (2,500 events each), 2 on others, all at once.
  const matching = ['tap.hot.a', 'tap.hot.b', 'tap.hot.c', 'tap.hot.d'];
  const started = Date.now();
  const posted = await load([...matching, 'tap.cold.x', 'tap.hotter'], 25, 100);
  tt.comment(`15,000 events posted in ${Date.now() - started} ms`);

  const exit = await Promise.race([cli.exited, sleep(60_000).then(() => null)]);
  tt.ok(exit, 'the CLI ended by itself after --limit');
  tt.equal(exit?.code, 0, `exit 0 after --limit (stderr: ${cli.stderr().slice(-300)})`);
  const cliLines = cli
    .stdout()
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l));
  checkSeen(tt, 'kedge tap --json', cliLines, posted, matching);

  const rawLines = (await rawText)
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l));
  checkSeen(tt, 'GET /v1/tap', rawLines, posted, matching);
  tt.equal(await tapDropped(), 0, 'no drops counted');
});

t.test('a viewer that stops reading does not slow ingest; its drops are counted', async (tt) => {
  const EVENTS_PER_PHASE = 20_000;
  const phase = async (topic: string): Promise<number> => {
    const t0 = Date.now();
    // 4 clients × 100 requests × 50 events; values of ~170 bytes and keys of ~110 (a full
    // preview each): ~400-byte lines, 8 MB for a viewer, more than socket buffers hold.
    await load(
      Array.from({ length: 4 }, (_, i) => `${topic}.${i}`),
      EVENTS_PER_PHASE / 200,
      50,
      150,
      110,
    );
    return Date.now() - t0;
  };
  await phase('tap.warm');
  const baseline = await phase('tap.base');
  const rssBefore = await rss();
  const dropsBefore = await tapDropped();

  // Attached, then never read: a raw socket paused once the answer's head arrived.
  const stalled = connect(agent.port, '127.0.0.1');
  stalled.write(
    `GET /v1/tap HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${TOKEN}\r\n\r\n`,
  );
  const head = await new Promise<string>((resolve, reject) => {
    stalled.once('data', (d: Buffer) => {
      stalled.pause();
      resolve(d.toString());
    });
    stalled.once('error', reject);
  });
  tt.match(head, /^HTTP\/1\.1 200 /, 'stalled viewer attached');
  let received = head;
  const withStalled = await phase('tap.stall');
  const rssAfter = await rss();
  const dropped = (await tapDropped()) - dropsBefore;
  tt.comment(
    `${dropped} dropped for the stalled viewer; RSS ${Math.round(rssBefore / 1e6)} -> ${Math.round(rssAfter / 1e6)} MB`,
  );
  tt.ok(
    dropped > 0,
    `the stalled viewer's drops are counted in kedge_tap_dropped_events_total (${dropped})`,
  );
  tt.ok(dropped <= EVENTS_PER_PHASE, 'drops only of what was tapped');
  tt.ok(
    rssAfter - rssBefore < 150e6,
    `agent memory stays bounded (RSS +${Math.round((rssAfter - rssBefore) / 1e6)} MB)`,
  );

  // Reading again: the buffered events, then the gap, where it happened. Chunked framing
  // lines (sizes, blank) sit between the JSON lines, which are whole in each chunk.
  let gap = 0;
  let events = 0;
  const deadline = Date.now() + 20_000;
  let done = false;
  stalled.on('data', (d: Buffer) => {
    received += d.toString();
  });
  stalled.resume();
  while (!done && Date.now() < deadline) {
    await sleep(100);
    const complete = received.slice(0, received.lastIndexOf('\n') + 1);
    gap = 0;
    events = 0;
    for (const l of complete.split('\n')) {
      if (!l.startsWith('{')) continue;
      const o = JSON.parse(l);
      if ('dropped' in o) gap += o.dropped;
      else events++;
    }
    done = gap >= dropped;
  }
  stalled.destroy();
  // Without a viewer again: the baseline is the mean of before and after (the machine is shared).
  await sleep(200);
  const baselineAfter = await phase('tap.after');
  const without = (baseline + baselineAfter) / 2;
  tt.comment(
    `ingest ${EVENTS_PER_PHASE} events: ${baseline} and ${baselineAfter} ms without a viewer, ${withStalled} ms with a stalled one`,
  );
  tt.ok(
    withStalled <= 2 * without + 2_000,
    `ingest with a stalled viewer (${withStalled} ms) at least half as fast as without (${Math.round(without)} ms)`,
  );
  tt.equal(
    gap,
    dropped,
    'the stream reports the drops as {"dropped":N} lines, same count as the metric',
  );
  tt.equal(
    events + gap,
    EVENTS_PER_PHASE,
    'every event of that phase either shown or counted as dropped',
  );
});

t.test('token, viewer cap and bad requests', async (tt) => {
  const noToken = await request(`${agent.base}/v1/tap`);
  await noToken.body.dump();
  tt.equal(noToken.statusCode, 401, 'the tap shows payloads: it needs the token');
  const refused = await run(process.execPath, [CLI, '--', 'tap', '--limit', '1'], {
    env: cliEnv(agent.port, null),
    timeoutMs: 30_000,
  });
  tt.equal(refused.code, 1, 'CLI without the token: exit 1');
  tt.match(refused.stderr, /refused the tap \(HTTP 401 unauthorized/);

  const bad = await request(`${agent.base}/v1/tap?pattern=a..b`, { headers: AUTH });
  tt.equal(bad.statusCode, 400);
  tt.equal(((await bad.body.json()) as any).error, 'bad_pattern');

  const viewers = [];
  for (let i = 0; i < 8; i++)
    viewers.push(await request(`${agent.base}/v1/tap`, { headers: AUTH, bodyTimeout: 0 }));
  tt.ok(
    viewers.every((v) => v.statusCode === 200),
    '8 viewers attached',
  );
  const ninth = await request(`${agent.base}/v1/tap`, { headers: AUTH });
  tt.equal(ninth.statusCode, 503, 'a ninth is refused');
  tt.equal(((await ninth.body.json()) as any).error, 'too_many_viewers');
  for (const v of viewers) v.body.destroy();
  // Detached once their connections are closed: a new viewer gets in.
  let again = 0;
  for (let i = 0; i < 50 && again !== 200; i++) {
    await sleep(100);
    const r = await request(`${agent.base}/v1/tap?limit=1`, { headers: AUTH });
    again = r.statusCode;
    r.body.destroy();
  }
  tt.equal(again, 200, 'closed viewers free their places');

  // SSE: the same objects as `data:` events.
  const sse = await request(`${agent.base}/v1/tap?pattern=tap.sse&limit=1`, {
    headers: { ...AUTH, accept: 'text/event-stream' },
  });
  tt.match(String(sse.headers['content-type']), /text\/event-stream/);
  const sseText = sse.body.text();
  await post(
    `${agent.base}/v1/topics/tap.sse`,
    Buffer.from([0, 1, 2, 255]),
    'application/octet-stream',
    AUTH,
  );
  const ev = /^data: (.*)\n\n$/.exec(await sseText);
  tt.ok(ev, 'one SSE event');
  const obj = JSON.parse(ev![1]);
  tt.equal(obj.topic, 'tap.sse');
  tt.equal(obj.preview_encoding, 'base64', 'binary values are shown in base64');
  tt.equal(Buffer.from(obj.preview, 'base64').toString('hex'), '000102ff');
});

t.test('usage: --help, mistakes in one line with exit 2, unreachable agent exit 3', async (tt) => {
  const cli = (args: string[], env = cliEnv()) =>
    run(process.execPath, [CLI, '--', 'tap', ...args], { env, timeoutMs: 30_000 });
  const help = await cli(['--help']);
  tt.equal(help.code, 0);
  tt.match(help.stdout, /^usage: kedge tap \[pattern\] \[--limit N\] \[--json\]/);
  const mistakes = [];
  for (const [args, re] of [
    [['--bogus'], /unknown option "--bogus"/],
    [['--limit', '0'], /--limit needs a whole number/],
    [['--limit'], /--limit needs a value/],
    [['a..b'], /topic pattern "a\.\.b"/],
    [['a.#', 'b'], /one topic pattern/],
  ] as const) {
    mistakes.push(cli([...args]).then((r) => ({ args, re, r })));
  }
  // Started together: each is a process start, and the machine is shared.
  for (const { args, re, r } of await Promise.all(mistakes)) {
    tt.equal(r.code, 2, `${args.join(' ')}: exit 2`);
    tt.equal(r.stderr.trim().split('\n').length, 1, `${args.join(' ')}: one line`);
    tt.match(r.stderr, re);
  }
  const gone = await cli(['--limit', '1'], cliEnv(await freeLoopbackPort()));
  tt.equal(gone.code, 3, 'no agent: exit 3');
  tt.match(gone.stderr, /no answer from the agent/);
});

t.test("Ctrl-C ends a tap with 0; the agent's stop ends a running tap", async (tt) => {
  const cli = spawnProc(process.execPath, [CLI, '--', 'tap'], { env: cliEnv(), name: 'kedge tap' });
  await cli.waitForLine(/^kedge: tapping # /, 20_000);
  await post(`${agent.base}/v1/topics/tap.last?key=k`, 'bye', 'text/plain', AUTH);
  await cli.waitForLine(/^seq \d+ {2}tap\.last {2}key=k {2}4B {2}bye$/, 10_000);
  // Ctrl-C: exit 0.
  const other = spawnProc(process.execPath, [CLI, '--', 'tap', 'tap.#'], {
    env: cliEnv(),
    name: 'kedge tap',
  });
  await other.waitForLine(/^kedge: tapping tap\.# /, 20_000);
  const interrupted = await other.kill('SIGINT');
  tt.equal(interrupted.code, 0, `Ctrl-C: exit 0 (stderr: ${other.stderr()})`);

  const stopped = await agent.stop();
  tt.equal(stopped.code, 0, 'agent stopped cleanly');
  tt.ok(stopped.ms < 8_000, `agent stopped in ${stopped.ms} ms with a viewer attached`);
  const exit = await Promise.race([cli.exited, sleep(10_000).then(() => null)]);
  tt.equal(exit?.code, 3, 'the CLI exits 3: the agent went away');
  tt.match(cli.stderr(), /the agent ended the tap/);
});
