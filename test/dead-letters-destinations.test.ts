/**
 * `kedge dead-letters replay --destination` with two real Kafka clusters (KEDGE_DESTINATIONS
 * a,b; b with topic auto-creation off). Events of a topic b lacks are delivered by a and
 * dead-lettered by b only; once the topic exists on b, the replay delivers them to b in order,
 * once, with the kedge-ids a got; a gets nothing more; both backlogs come back to 0 and b's
 * dead letters of that topic are gone. With routes, b's dead letters are a window route's
 * aggregates: replay delivers those very records (same kedge-id and value), not recomputed.
 * The agent runs in-process only to shorten the unknown-topic grace (tuning); the command is
 * the real CLI talking to it over HTTP.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createTopic, startKafka } from '../scripts/kafka/kafka.ts';
import { loadConfig } from '../agent/config.ts';
import { Agent } from '../agent/agent.ts';
import { createLogger } from '../agent/observe/logger.ts';
import { consume, type KcatRecord } from './helpers/kcat.ts';
import {
  cleanup,
  freeLoopbackPort,
  post,
  REPO,
  sleep,
  TEST_KAFKA_CLIENT,
  tempDir,
} from './helpers/agent.ts';
import { destOf, statusOf, until } from './helpers/routes.ts';
import { run } from './helpers/proc.ts';

const [a, b] = await Promise.all([
  startKafka({ brokers: 1 }),
  startKafka({ brokers: 1, extraProps: { 'auto.create.topics.enable': 'false' } }),
]);
t.teardown(async () => {
  await Promise.all([a.stop(), b.stop()]);
});

const CLI = join(REPO, 'agent/cli.ts');
const quiet = new Writable({ write: (_c, _e, cb) => cb() });

/** An agent with destinations a and b (and `extra` settings), and the CLI against it. */
async function startAgent(t: Test, extra: Record<string, string>) {
  const dir = tempDir();
  const port = await freeLoopbackPort();
  const env = {
    KEDGE_DATA_DIR: dir,
    KEDGE_HTTP_LISTEN: `127.0.0.1:${port}`,
    KEDGE_HEARTBEAT_TOPIC: '',
    KEDGE_DESTINATIONS: 'a,b',
    KEDGE_A_KAFKA_BROKERS: a.bootstrap,
    KEDGE_B_KAFKA_BROKERS: b.bootstrap,
    ...TEST_KAFKA_CLIENT,
    ...extra,
  };
  const agent = new Agent(loadConfig(env), createLogger('info', quiet), {
    unknownTopicGraceMs: 2_000,
    backoffMinMs: 100,
    backoffMaxMs: 1_000,
  });
  await agent.start();
  t.teardown(async () => {
    await agent.stop();
    cleanup(dir);
  });
  const base = `http://127.0.0.1:${port}`;
  const kedge = async (...args: string[]) => {
    const r = await run(process.execPath, [CLI, '--', 'dead-letters', ...args, '--json'], {
      env: { PATH: process.env.PATH ?? '', ...env },
      timeoutMs: 60_000,
    });
    let body: any = null;
    try {
      body = JSON.parse(r.stdout);
    } catch {
      // left null: the assertions on it fail and print stderr
    }
    return { code: r.code, body, stderr: r.stderr };
  };
  return { agent, base, kedge };
}

const ids = (rs: KcatRecord[]) => rs.map((r) => r.headers['kedge-id']);

t.test('replay to one destination: only b gets them, in order, once, same kedge-ids', async (t) => {
  // One partition each, so kcat reads them back in the order they were sent.
  await Promise.all([createTopic(b.bootstrap, 'both', 1), createTopic(a.bootstrap, 'late', 1)]);
  const { base, kedge } = await startAgent(t, {});
  // Interleaved: `both` exists on b, `late` does not (a creates topics as they come).
  const N = 12;
  for (let i = 0; i < N; i++) {
    const topic = i % 2 === 0 ? 'late' : 'both';
    const r = await post(
      `${base}/v1/topics/${topic}?key=k${i % 3}`,
      `{"i":${i}}`,
      'application/json',
    );
    t.equal(r.status, 200);
  }
  const LATE = N / 2;
  await until('a delivered everything and b dead-lettered late', 120_000, async () => {
    const s = await statusOf(base);
    const [sa, sb] = [destOf(s, 'a'), destOf(s, 'b')];
    return sa.backlog.events === 0 && sb.backlog.events === 0 && sb.dead_letters === LATE
      ? s
      : undefined;
  });
  const atA = await consume(a.bootstrap, 'late', { expect: LATE, timeoutMs: 30_000 });
  t.equal(atA.length, LATE, 'a has every late event');
  t.equal(destOf(await statusOf(base), 'a').dead_letters, 0, 'a dead-lettered nothing');
  const listed = await kedge('list', '--destination', 'b', '--verbose');
  t.equal(listed.code, 0, listed.stderr);
  t.equal(listed.body.total, LATE, 'b has a dead letter per late event');
  t.same(
    listed.body.events.map((e: any) => e.kedge_id),
    ids(atA),
    'with the kedge-ids a has',
  );
  t.match(listed.body.groups[0], { destination: 'b', topic: 'late', count: LATE });

  // Mistakes first: an unknown destination is a usage error, nothing replayed.
  const wrong = await kedge('replay', '--destination', 'c', '--topic', 'late');
  t.equal(wrong.code, 2, 'unknown destination: exit 2');
  t.match(wrong.stderr, /no destination "c" is configured \(a, b\)/);

  await createTopic(b.bootstrap, 'late', 1);
  const replayed = await kedge('replay', '--destination', 'b', '--topic', 'late');
  t.equal(replayed.code, 0, replayed.stderr);
  t.equal(replayed.body.replayed, LATE, 'replayed all of them');

  const atB = await consume(b.bootstrap, 'late', { expect: LATE, timeoutMs: 60_000 });
  t.same(
    atB.map((r) => JSON.parse(r.value.toString()).i),
    atA.map((r) => JSON.parse(r.value.toString()).i),
    'b gets them in their order',
  );
  t.same(ids(atB), ids(atA), 'with the kedge-ids a got');
  t.same(
    atB.map((r) => r.key?.toString()),
    atA.map((r) => r.key?.toString()),
    'and the same keys',
  );
  t.same(
    atB.map((r) => r.headers['kedge-ingest-ts']),
    atA.map((r) => r.headers['kedge-ingest-ts']),
    'and the same ingest time',
  );
  t.notOk(
    atB.some((r) => 'kedge-replay-for' in r.headers),
    'the internal replay header is not on the record',
  );
  const s = await until('both backlogs back to 0', 60_000, async () => {
    const x = await statusOf(base);
    return destOf(x, 'a').backlog.events === 0 &&
      destOf(x, 'b').backlog.events === 0 &&
      x.backlog.events === 0
      ? x
      : undefined;
  });
  t.equal(destOf(s, 'b').dead_letters, 0, "b's dead-letter count is back to 0");
  // Time for a stray send to arrive: a, and b once more, must still have exactly these.
  await sleep(3_000);
  t.equal(
    (await consume(a.bootstrap, 'late', { timeoutMs: 10_000 })).length,
    LATE,
    'a got nothing more',
  );
  t.equal(
    (await consume(b.bootstrap, 'late', { timeoutMs: 10_000 })).length,
    LATE,
    'b got them once',
  );
  t.equal(
    (await consume(b.bootstrap, 'both', { timeoutMs: 10_000 })).length,
    N - LATE,
    'b still has its `both` events once',
  );
  const after = await kedge('list', '--topic', 'late');
  t.equal(after.code, 1, 'no dead letters of the topic are left: exit 1');
  t.equal(after.body.total, 0);
});

t.test('routed: a window aggregate b refused is replayed as that very record', async (t) => {
  const { base, kedge, agent } = await startAgent(t, {
    KEDGE_ROUTE_RAW: 'win.# -> a',
    KEDGE_ROUTE_AGG: 'win.# -> b | window 1s count() max(v) | topic win.agg',
  });
  for (let i = 0; i < 9; i++) {
    const r = await post(
      `${base}/v1/topics/win.raw?key=s${i % 3}`,
      `{"v":${i}}`,
      'application/json',
    );
    t.equal(r.status, 200);
  }
  // The windows close on the clock; b has no topic win.agg: the aggregates are dead-lettered.
  const dl = await until('the aggregates dead-lettered at b', 120_000, async () => {
    const x = await kedge('list', '--destination', 'b', '--verbose');
    const s = await statusOf(base);
    return x.body?.total >= 3 && destOf(s, 'b').backlog.events === 0 ? x.body : undefined;
  });
  t.ok(
    dl.events.every(
      (e: any) => e.topic === 'win.agg' && e.kedge_id.startsWith(`${agent.agentId}:b:agg:`),
    ),
    'the dead letters are the route output, with its kedge-ids',
  );
  // The value of each as stored (show prints every destination's copy of a seq).
  const stored = new Map<string, string>();
  for (const seq of new Set<number>(dl.events.map((e: any) => e.seq))) {
    const shown = await kedge('show', String(seq));
    for (const d of shown.body.dead_letters) stored.set(d.kedge_id, d.value.text);
  }
  t.equal(stored.size, dl.total, 'each dead letter shown');
  const rawAtA = await consume(a.bootstrap, 'win.raw', { expect: 9, timeoutMs: 30_000 });
  t.equal(rawAtA.length, 9, 'a has the raw events');

  await createTopic(b.bootstrap, 'win.agg', 1);
  const replayed = await kedge('replay', '--destination', 'b');
  t.equal(replayed.code, 0, replayed.stderr);
  t.equal(replayed.body.replayed, dl.total);
  const atB = await consume(b.bootstrap, 'win.agg', { expect: dl.total, timeoutMs: 60_000 });
  t.same(
    ids(atB),
    dl.events.map((e: any) => e.kedge_id),
    'b gets the aggregates in order, same kedge-ids',
  );
  t.same(
    atB.map((r) => r.value.toString()),
    ids(atB).map((id) => stored.get(id)),
    'the very records that were dead-lettered (not computed again)',
  );
  await until('both backlogs back to 0', 60_000, async () => {
    const x = await statusOf(base);
    return destOf(x, 'a').backlog.events === 0 && destOf(x, 'b').backlog.events === 0
      ? x
      : undefined;
  });
  await sleep(3_000);
  t.equal((await consume(b.bootstrap, 'win.agg', { timeoutMs: 10_000 })).length, dl.total, 'once');
  t.equal(
    (await consume(a.bootstrap, 'win.raw', { timeoutMs: 10_000 })).length,
    9,
    'a got nothing more',
  );
  t.equal((await kedge('list')).body.total, 0, 'no dead letters left');
});
