/**
 * The dead-letter store at the log level (in-process, no Kafka): a replayed dead letter older
 * than KEDGE_RETENTION survives the next retention pass (it is stamped with the replay's time)
 * and still becomes the very Kafka record it was (timestamp and kedge-ingest-ts of its first
 * ingest, its kedge-id), also when it is dead-lettered and replayed a second time; replay and
 * purge work through tables bigger than one chunk; list leaves key and value out; the list
 * limit is capped; the rule for tap and dead-letter routes without a token.
 */
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openLog } from '../agent/log/index.ts';
import type { DropReport, EventInput, EventLog, Lane } from '../agent/log/index.ts';
import { toRecord } from '../agent/forward/batch.ts';
import {
  DeadLetterQueryError,
  MAX_LIST_LIMIT,
  parseQuery,
} from '../agent/status/dead-letter-routes.ts';
import { eventDataAllowed, isLoopbackAddress } from '../agent/status/event-data-access.ts';

const MiB = 1 << 20;
const DAY = 86_400_000;

function tmpDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kedge-dl-unit-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function ev(topic: string, n: number, lane: Lane = 'bulk'): EventInput {
  return {
    topic,
    key: Buffer.from(`k${n}`),
    value: Buffer.from(JSON.stringify({ n })),
    source: 'http',
    lane,
  };
}

/** Until `ok()` or 10 s (bounded), letting the log's background work run. */
async function until(ok: () => boolean): Promise<boolean> {
  const end = Date.now() + 10_000;
  while (!ok() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  return ok();
}

/** Dead-letters every event of `lane` now in the log (as the forwarder would). */
function deadLetterAll(log: EventLog, lane: Lane): number {
  let n = 0;
  for (;;) {
    const batch = log.readBatch(log.stats().lanes[lane].cursor, 500, 64 * MiB, lane);
    if (batch.length === 0) return n;
    for (const e of batch) log.deadLetter(e, 'UNKNOWN_TOPIC_OR_PARTITION: no such topic');
    n += batch.length;
  }
}

t.test('a replayed dead letter older than the retention survives it, same record', async (t) => {
  const T0 = Date.UTC(2026, 0, 1);
  let clock = T0;
  const log = await openLog({
    dir: tmpDir(),
    driver: 'sqlite',
    sync: 'normal',
    retentionMs: 7 * DAY,
    now: () => clock,
  });
  t.teardown(() => log.close());
  const drops: DropReport[] = [];
  log.onDrop((d) => drops.push(d));
  // `late` in the priority lane is dead-lettered; `control` (bulk) stays queued: it shows
  // that the retention pass below did run.
  await log.append([ev('late', 1, 'priority'), ev('control', 2)]);
  t.equal(deadLetterAll(log, 'priority'), 1);
  const admin = log.deadLetterAdmin('agent-a');
  const [dead] = admin.list({ topic: 'late' }, 10);
  t.equal(dead.ts, T0, 'list: ingest time');
  t.notOk('value' in dead || 'key' in dead, 'list leaves key and value out');
  t.equal(admin.show(dead.seq)[0].value.toString(), '{"n":1}', 'show has the value');

  clock = T0 + 8 * DAY; // older than KEDGE_RETENTION=7d now
  const r = await admin.replay({ topic: 'late' });
  t.equal(r.replayed, 1);
  await log.append([ev('tick', 3)]); // the clock moved: a retention pass follows
  t.ok(
    await until(() => drops.some((d) => d.topic === 'control')),
    'the retention pass ran (the 8-day-old queued event is dropped)',
  );
  t.same(
    drops.filter((d) => d.topic === 'late'),
    [],
    'the replayed dead letter was not dropped by retention',
  );
  const [row] = log.readBatch(log.stats().lanes.priority.cursor, 10, MiB, 'priority');
  t.equal(row?.seq, r.firstSeq, 'still queued');
  t.equal(row.ts, T0 + 8 * DAY, 'stored with the time of the replay');
  const rec = toRecord(row, 'agent-a', '');
  t.equal(rec.timestamp, T0, 'Kafka timestamp: the original ingest time');
  t.equal(rec.headers['kedge-ingest-ts'], String(T0), 'kedge-ingest-ts: the original');
  t.equal(rec.headers['kedge-id'], `agent-a:${dead.seq}`, 'kedge-id: the original');

  // Refused again and replayed again, much later: still the first ingest time and kedge-id.
  log.deadLetter(row, 'UNKNOWN_TOPIC_OR_PARTITION: still no such topic');
  const [again] = admin.list({ topic: 'late' }, 10);
  t.equal(again.ts, T0, 'a re-dead-lettered one lists its first ingest time');
  t.equal(again.kedgeId, `agent-a:${dead.seq}`);
  clock = T0 + 20 * DAY;
  const r2 = await admin.replay({ topic: 'late' });
  const [row2] = log.readBatch(log.stats().lanes.priority.cursor, 10, MiB, 'priority');
  t.equal(row2?.seq, r2.firstSeq);
  const rec2 = toRecord(row2, 'agent-a', '');
  t.equal(rec2.timestamp, T0);
  t.equal(rec2.headers['kedge-ingest-ts'], String(T0));
  t.equal(rec2.headers['kedge-id'], `agent-a:${dead.seq}`);
});

t.test('replay and purge work through more than one chunk', async (t) => {
  const log = await openLog({ dir: tmpDir(), driver: 'sqlite', sync: 'normal' });
  t.teardown(() => log.close());
  const N = 1_200; // replay: 3 chunks of 500; purge: 2 chunks of 1,000
  await log.append(Array.from({ length: N }, (_, i) => ev(i % 2 ? 'odd' : 'even', i)));
  t.equal(deadLetterAll(log, 'bulk'), N);
  const admin = log.deadLetterAdmin('a');
  t.equal(log.stats().deadLetters, N);
  // Ingest goes on while the replay yields between its chunks.
  const replaying = admin.replay({ topic: 'even' });
  const appended = log.append([ev('during', 0)]);
  const [r, a] = await Promise.all([replaying, appended]);
  t.equal(r.replayed, N / 2);
  t.equal(r.byTopic.get('even'), N / 2);
  t.ok(a.firstSeq > N, 'an append ran alongside');
  const queued = log.readBatch(N, 2 * N, 64 * MiB, 'bulk');
  t.equal(queued.length, N / 2 + 1, 'every replayed one queued, once, and the append');
  const evens = queued
    .filter((e) => e.topic === 'even')
    .map((e) => JSON.parse(e.value.toString()).n);
  t.same(
    evens,
    Array.from({ length: N / 2 }, (_, i) => 2 * i),
    'replayed in their original order',
  );
  const p = await admin.purge({ topic: 'odd' });
  t.equal(p.purged, N / 2);
  t.equal(p.byTopic.get('odd'), N / 2);
  t.equal(log.stats().deadLetters, 0, 'the counter follows');
  t.same(admin.summary({}), []);
});

t.test('the list limit is capped', async (t) => {
  t.equal(parseQuery(new URLSearchParams(`limit=${MAX_LIST_LIMIT}`)).limit, MAX_LIST_LIMIT);
  t.throws(
    () => parseQuery(new URLSearchParams('limit=999999999999999')),
    DeadLetterQueryError,
    'above the cap: refused',
  );
});

// The listener test (test/dead-letters-cli.test.ts) reaches the agent from a non-loopback
// address too; this is the decision alone.
t.test('tap and dead letters without a token: loopback peers only', async (t) => {
  for (const a of ['127.0.0.1', '127.3.2.1', '::1', '::ffff:127.0.0.1', '::FFFF:127.0.0.9'])
    t.ok(isLoopbackAddress(a), a);
  for (const a of ['192.0.2.2', '::ffff:192.0.2.2', 'fd00::2', '10.127.0.1', '::', undefined])
    t.notOk(isLoopbackAddress(a), String(a));
  t.notOk(eventDataAllowed(false, '192.0.2.2'), 'no token, another host: refused');
  t.ok(eventDataAllowed(false, '127.0.0.1'), 'no token, loopback: allowed');
  t.ok(eventDataAllowed(true, '192.0.2.2'), 'token set: the token check decides');
});
