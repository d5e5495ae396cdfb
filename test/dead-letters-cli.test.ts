/**
 * `kedge dead-letters` against a real broker with topic auto-creation off: events of topics
 * that do not exist are dead-lettered; list shows them (count, reason, topic); once the topic
 * is created, replay delivers them in order, once, with their original kedge-id (read back
 * with kcat) and counts them; purge deletes with a count; with the agent stopped, list and
 * purge work on the data dir; a replay survives kill -9 right after its answer.
 * The first agent runs in-process only to shorten the unknown-topic grace (tuning).
 */
import t from 'tap';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { request } from 'undici';
import { createTopic, startKafka } from '../scripts/kafka/kafka.ts';
import { loadConfig } from '../agent/config.ts';
import { Agent } from '../agent/agent.ts';
import { createLogger } from '../agent/observe/logger.ts';
import { consume } from './helpers/kcat.ts';
import {
  AgentProc,
  cleanup,
  freeLoopbackPort,
  post,
  REPO,
  sleep,
  TEST_KAFKA_CLIENT,
  tempDir,
} from './helpers/agent.ts';
import { run } from './helpers/proc.ts';

const kafka = await startKafka({
  brokers: 1,
  extraProps: { 'auto.create.topics.enable': 'false' },
});
await createTopic(kafka.bootstrap, 'exists', 1);
const dir = tempDir();
const port = await freeLoopbackPort();
const base = `http://127.0.0.1:${port}`;
const env = {
  KEDGE_DATA_DIR: dir,
  KEDGE_KAFKA_BROKERS: kafka.bootstrap,
  KEDGE_HTTP_LISTEN: `127.0.0.1:${port}`,
  KEDGE_HEARTBEAT_TOPIC: '',
  ...TEST_KAFKA_CLIENT,
};
const quiet = new Writable({ write: (_c, _e, cb) => cb() });
let agent: Agent | null = new Agent(loadConfig(env), createLogger('info', quiet), {
  unknownTopicGraceMs: 2_000,
  backoffMaxMs: 1_000,
});
await agent.start();
let proc: AgentProc | null = null;
t.teardown(async () => {
  await agent?.stop();
  await proc?.stop();
  await kafka.stop();
  cleanup(dir);
});

const CLI = join(REPO, 'agent/cli.ts');
function kedge(...args: string[]) {
  return run(process.execPath, [CLI, '--', 'dead-letters', ...args], {
    env: { PATH: process.env.PATH ?? '', ...env },
    timeoutMs: 60_000,
  });
}
async function json(...args: string[]): Promise<any> {
  const r = await kedge(...args, '--json');
  return { code: r.code, body: JSON.parse(r.stdout), stderr: r.stderr };
}
async function status(): Promise<any> {
  return (await fetch(`${base}/v1/status`)).json();
}
async function metric(name: string): Promise<string> {
  const r = await request(`${base}/metrics`);
  const text = await r.body.text();
  return text.split('\n').find((l) => l.startsWith(name)) ?? '';
}

// Every topic but `exists` is missing: nope (replayed live), purged (purged live), gone
// (handled offline), late (replayed, then kill -9). Interleaved, so seqs interleave too.
const TOPICS = ['nope', 'exists', 'purged', 'gone', 'late'];
const sent = new Map<string, string[]>(TOPICS.map((x) => [x, []]));
for (let i = 0; i < 30; i++) {
  const topic = TOPICS[i % TOPICS.length];
  const value = `{"i":${i},"topic":"${topic}"}`;
  const r = await post(`${base}/v1/topics/${topic}?key=k${i % 2}`, value, 'application/json');
  if (r.status !== 200) throw new Error(`ingest: HTTP ${r.status}`);
  sent.get(topic)!.push(value);
}
{
  const deadline = Date.now() + 120_000;
  for (;;) {
    const s = await status();
    if (s.backlog.events === 0 && s.dead_letters.events === 24) break;
    if (Date.now() > deadline) throw new Error(`not dead-lettered: ${JSON.stringify(s)}`);
    await sleep(300);
  }
}
const agentId = agent.agentId;

t.test('list shows the dead letters grouped: topic, reason, count, age', async (tt) => {
  const { code, body } = await json('list', '--topic', 'nope', '--verbose');
  tt.equal(code, 0);
  tt.equal(body.total, 6);
  tt.equal(body.groups.length, 1);
  tt.match(body.groups[0], { topic: 'nope', reason: 'UNKNOWN_TOPIC_OR_PARTITION', count: 6 });
  tt.ok(body.groups[0].oldest_age_seconds >= 0 && body.groups[0].oldest_age_seconds < 600);
  tt.same(
    body.events.map((e: any) => e.kedge_id),
    body.events.map((e: any) => `${agentId}:${e.seq}`),
    'kedge-id is <agent>:<seq>',
  );
  const human = await kedge('list');
  tt.equal(human.code, 0);
  for (const topic of ['nope', 'purged', 'gone', 'late'])
    tt.match(human.stdout, new RegExp(`^${topic}\\s+UNKNOWN_TOPIC_OR_PARTITION\\s+6\\s`, 'm'));
  tt.match(human.stdout, /24 dead letters/);
  const none = await kedge('list', '--topic', 'exists');
  tt.equal(none.code, 1, 'nothing matched: exit 1');
  tt.match(none.stdout, /no dead letters match/);
});

t.test('show gives one dead letter with its value and kedge-id', async (tt) => {
  const seq = (await json('list', '--topic', 'nope')).body.events[0].seq;
  const r = await kedge('show', String(seq));
  tt.equal(r.code, 0);
  tt.match(r.stdout, `kedge-id  ${agentId}:${seq}`);
  tt.match(r.stdout, JSON.stringify(sent.get('nope')![0]));
  tt.equal((await kedge('show', '999999')).code, 1, 'unknown seq: exit 1');
});

t.test('usage mistakes exit 2 with one line', async (tt) => {
  const bare = await kedge('replay');
  tt.equal(bare.code, 2);
  tt.match(bare.stderr, /needs a filter .* or --all/);
  const bad = await kedge('list', '--from', 'x');
  tt.equal(bad.code, 2);
  tt.equal(bad.stderr.trim().split('\n').length, 1);
  const big = await kedge('list', '--limit', '1001');
  tt.equal(big.code, 2, 'a limit above 1000: exit 2');
  tt.match(big.stderr, /limit must be at most 1000/);
  const api = await request(`${base}/v1/dead-letters?limit=999999999999999`);
  tt.equal(api.statusCode, 400, 'the API refuses a limit above 1000');
  tt.match(await api.body.json(), { error: 'bad_request', detail: /at most 1000/ });
  tt.equal((await json('list', '--limit', '1000')).body.events.length, 24, 'up to 1000 is fine');
  tt.equal((await kedge('--help')).code, 0);
});

t.test(
  'the topic is created; replay delivers them in order, once, original kedge-id',
  async (tt) => {
    const before = (await json('list', '--topic', 'nope')).body.events;
    await createTopic(kafka.bootstrap, 'nope', 1);
    const r = await json('replay', '--topic', 'nope');
    tt.equal(r.code, 0);
    tt.equal(r.body.replayed, 6);
    const deadline = Date.now() + 60_000;
    while ((await status()).backlog.events > 0 && Date.now() < deadline) await sleep(200);
    const recs = await consume(kafka.bootstrap, 'nope', { expect: 6, timeoutMs: 30_000 });
    await sleep(1_000); // a duplicate would arrive right behind
    const all = await consume(kafka.bootstrap, 'nope', { timeoutMs: 10_000 });
    tt.equal(recs.length, 6);
    tt.equal(all.length, 6, 'delivered once');
    tt.same(
      all.map((x) => x.value.toString()),
      sent.get('nope'),
      'in order',
    );
    tt.same(
      all.map((x) => x.headers['kedge-id']),
      before.map((e: any) => e.kedge_id),
      'with their original kedge-id',
    );
    tt.equal(all[0].key?.toString(), 'k0', 'and their key');
    const ingested = before.map((e: any) => Date.parse(e.ingest_ts));
    tt.same(
      all.map((x) => x.timestamp),
      ingested,
      'Kafka timestamp: their original ingest time',
    );
    tt.same(
      all.map((x) => x.headers['kedge-ingest-ts']),
      ingested.map(String),
      'kedge-ingest-ts: their original ingest time',
    );
    tt.equal(
      await metric('kedge_dead_letters_replayed_total{topic="nope"}'),
      'kedge_dead_letters_replayed_total{topic="nope"} 6',
    );
    tt.equal((await kedge('list', '--topic', 'nope')).code, 1, 'no longer dead letters');
    tt.equal(
      (await json('replay', '--topic', 'nope')).body.replayed,
      0,
      'a second replay finds none',
    );
  },
);

t.test('purge deletes with a count', async (tt) => {
  const r = await kedge('purge', '--topic', 'purged', '--reason', 'UNKNOWN_TOPIC');
  tt.equal(r.code, 0);
  tt.match(r.stdout, /purged 6 dead letters/);
  tt.equal(
    await metric('kedge_dead_letters_purged_total{topic="purged"}'),
    'kedge_dead_letters_purged_total{topic="purged"} 6',
  );
  const s = await status();
  tt.equal(s.dead_letters.events, 12, 'gone and late are left');
});

t.test('agent stopped: list and purge work on the data dir', async (tt) => {
  await agent!.stop();
  agent = null;
  const list = await json('list', '--topic', 'gone');
  tt.equal(list.code, 0);
  tt.match(list.stderr, /working offline on the data dir/);
  tt.equal(list.body.total, 6);
  const seqs = list.body.events.map((e: any) => e.seq);
  const some = await json(
    'purge',
    '--topic',
    'gone',
    '--from',
    String(seqs[0]),
    '--to',
    String(seqs[2]),
  );
  tt.equal(some.body.purged, 3, 'a seq range');
  tt.equal((await json('purge', '--all')).body.purged, 9, 'the other 3 of gone and the 6 of late');
  tt.equal((await kedge('list')).code, 1, 'empty');
});

t.test('a replay survives kill -9 right after its answer', async (tt) => {
  // Dead letters again for `late`: put back by a fresh agent process (grace is 2 min there,
  // so they are made here as before, from an in-process agent).
  const a2 = new Agent(loadConfig(env), createLogger('info', quiet), {
    unknownTopicGraceMs: 2_000,
    backoffMaxMs: 1_000,
  });
  await a2.start();
  const values: string[] = [];
  for (let i = 0; i < 20; i++) {
    const v = `{"late":${i}}`;
    values.push(v);
    const r = await post(`${base}/v1/topics/late2?key=k`, v, 'application/json');
    tt.equal(r.status, 200);
  }
  const deadline = Date.now() + 120_000;
  while ((await status()).dead_letters.events !== 20 && Date.now() < deadline) await sleep(300);
  await a2.stop();
  await createTopic(kafka.bootstrap, 'late2', 1);
  proc = await AgentProc.start({ env, port });
  const ids = (await json('list', '--topic', 'late2', '--limit', '100')).body.events.map(
    (e: any) => e.kedge_id,
  );
  tt.equal(ids.length, 20);
  const r = await json('replay', '--topic', 'late2');
  await proc.kill9();
  tt.equal(r.body.replayed, 20);
  proc = await AgentProc.start({ env, port });
  await proc.waitDrained(60_000);
  const recs = await consume(kafka.bootstrap, 'late2', { expect: 20, timeoutMs: 30_000 });
  const seen = new Set<string>();
  const order = recs
    .map((x) => x.headers['kedge-id'])
    .filter((id) => {
      if (seen.has(id)) return false;
      seen.add(id);
      return true;
    });
  tt.same(order, ids, 'every replayed event delivered, in order, original kedge-id');
  tt.ok(recs.length <= 40, `at most the batch in flight again (${recs.length} records)`);
  tt.same(
    recs.filter((_, i) => i < 20).map((x) => x.value.toString()),
    values,
  );
  tt.equal((await kedge('list', '--topic', 'late2')).code, 1, 'none left in the dead-letter table');
});
