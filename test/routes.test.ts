/**
 * Routes and two destinations against two real Kafka clusters, "site" and "cloud":
 * `sensors.# -> site` raw, and `sensors.# -> cloud | deadband temp 0.5 | window 60s …`.
 * 1 Hz readings from 50 keys over simulated time (the log's clock is injected), with the cloud
 * cluster stopped for a long stretch in the middle while the site keeps draining. Checked:
 * - the site gets every raw event, in order per key;
 * - the cloud aggregates equal an independent computation (test/tools/route-reference.py)
 *   over the raw records read back from the site cluster with kcat: every window exactly once
 *   by kedge-id, in order per key, with the same values;
 * - during the outage the site link is up and drained while the cloud is down with a backlog,
 *   and the log keeps those events for the cloud; afterwards it keeps only what open windows hold;
 * - per-destination status, metrics (`destination` label), and pause of one destination.
 */
import t from 'tap';
import { Writable } from 'node:stream';
import { startKafka } from '../scripts/kafka/kafka.ts';
import { loadConfig } from '../agent/config.ts';
import { Agent } from '../agent/agent.ts';
import { createLogger } from '../agent/observe/logger.ts';
import { consume, type KcatRecord } from './helpers/kcat.ts';
import { cleanup, freeLoopbackPort, post, tempDir } from './helpers/agent.ts';
import { destOf, routeReference, statusOf, until } from './helpers/routes.ts';

const [site, cloud] = await Promise.all([startKafka({ brokers: 1 }), startKafka({ brokers: 1 })]);
t.teardown(async () => {
  await Promise.all([site.stop(), cloud.stop()]);
});

const KEYS = 50;
const SECONDS = Number(process.env.KEDGE_ROUTES_SECONDS ?? 7_200);
const OUTAGE = [Math.floor(SECONDS / 3), Math.floor((2 * SECONDS) / 3)];
const WINDOW_MS = 60_000;
const AGENT = 'routes-agent';

/** A reading per key and second: a slow random walk, so the deadband lets some through. */
function temps(): (key: number, s: number) => number {
  const cur = Array.from({ length: KEYS }, (_, k) => 15 + k / 10);
  let x = 12345;
  const rnd = () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x / 2 ** 31;
  };
  return (key) => {
    cur[key] = Math.round((cur[key] + (rnd() - 0.5) * 0.6) * 100) / 100;
    return cur[key];
  };
}

t.test('raw to site, deadband + window to cloud; cloud down for a third of the run', async (t) => {
  const dir = tempDir();
  const port = await freeLoopbackPort();
  const lines: string[] = [];
  const logSink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      cb();
    },
  });
  // Aligned to a minute, so window boundaries are easy to read in a failure. In the past: a
  // broker refuses records stamped more than an hour ahead of its clock (INVALID_TIMESTAMP,
  // log.message.timestamp.after.max.ms), and the simulated hours end about now.
  const t0 = Math.floor((Date.now() - (SECONDS + 900) * 1_000) / WINDOW_MS) * WINDOW_MS;
  let fakeNow = t0;
  const cfg = loadConfig({
    KEDGE_DATA_DIR: dir,
    KEDGE_AGENT_ID: AGENT,
    KEDGE_HTTP_LISTEN: `127.0.0.1:${port}`,
    KEDGE_HEARTBEAT_TOPIC: '',
    KEDGE_DESTINATIONS: 'site,cloud',
    KEDGE_SITE_KAFKA_BROKERS: site.bootstrap,
    KEDGE_CLOUD_KAFKA_BROKERS: cloud.bootstrap,
    KEDGE_CLOUD_COMPRESSION: 'zstd',
    KEDGE_ROUTE_RAW: 'sensors.# -> site',
    KEDGE_ROUTE_AGG:
      'sensors.# -> cloud | deadband temp 0.5 | window 60s mean(temp) max(temp) count() | topic cloud.minutes',
  });
  const agent = new Agent(cfg, createLogger('info', logSink), {
    logNow: () => fakeNow,
    backoffMinMs: 100,
    backoffMaxMs: 1_000,
  });
  await agent.start();
  t.teardown(async () => {
    await agent.stop();
    cleanup(dir);
  });
  const base = `http://127.0.0.1:${port}`;

  const temp = temps();
  let outageStatus: any = null;
  for (let s = 0; s < SECONDS; s++) {
    fakeNow = t0 + s * 1_000;
    if (s === OUTAGE[0]) await cloud.stopNode(cloud.nodes[0].id);
    if (s === OUTAGE[1]) {
      // Before the cloud comes back: the site has drained, the cloud waits, the log keeps its events.
      let seen: any = null;
      outageStatus = await until('site drained during the outage', 60_000, async () => {
        const st = await statusOf(base);
        seen = st;
        return destOf(st, 'site').backlog.events === 0 && destOf(st, 'cloud').link.state === 'down'
          ? st
          : undefined;
      }).catch((e) => {
        throw new Error(
          `${e.message}: ${JSON.stringify(seen?.destinations)}; ${lines.slice(-8).join(' | ')}`,
        );
      });
      await cloud.startNode(cloud.nodes[0].id);
    }
    const records = Array.from({ length: KEYS }, (_, k) => ({
      key: `k${k}`,
      value: { temp: temp(k, s), s },
    }));
    const r = await post(
      `${base}/topics/sensors.temp`,
      JSON.stringify({ records }),
      'application/vnd.kafka.json.v2+json',
    );
    if (r.status !== 200) throw new Error(`ingest: ${r.status} ${JSON.stringify(r.body)}`);
  }
  // Let the last window close: time passes with nothing new.
  fakeNow = t0 + SECONDS * 1_000 + WINDOW_MS;
  const total = KEYS * SECONDS;

  t.test('during the outage', async (t) => {
    const s = outageStatus;
    t.equal(destOf(s, 'site').link.state, 'up', 'site link up');
    t.equal(destOf(s, 'site').backlog.events, 0, 'site drained');
    t.equal(destOf(s, 'cloud').link.state, 'down', 'cloud link down');
    const cloudBacklog = destOf(s, 'cloud').backlog.events;
    t.ok(
      cloudBacklog >= KEYS * (OUTAGE[1] - OUTAGE[0]) * 0.9,
      `the cloud's backlog holds the outage's events (${cloudBacklog})`,
    );
    // Only what the cloud still needs: its backlog, plus the inputs of its open windows (≤ 60 s × 50 keys).
    t.ok(
      s.backlog.events >= cloudBacklog && s.backlog.events <= cloudBacklog + KEYS * 60,
      `the log keeps them and no more (${s.backlog.events} in the log, ${cloudBacklog} for the cloud)`,
    );
    t.equal(s.link.state, destOf(s, 'site').link.state, 'top-level link is the first destination');
  });

  const raw = await consume(site.bootstrap, 'sensors.temp', { expect: total, timeoutMs: 120_000 });
  t.equal(raw.length, total, 'the site cluster has every raw event');
  const perKey = new Map<string, number[]>();
  for (const r of raw) {
    const k = r.key!.toString();
    const list = perKey.get(k) ?? [];
    list.push(JSON.parse(r.value.toString()).s);
    perKey.set(k, list);
  }
  t.ok(
    [...perKey.values()].every((l) => l.every((s, i) => s === i)),
    'site: every key in order, none missing, none twice',
  );

  // The independent computation, over what the site cluster holds.
  const want = routeReference(raw, {
    agent: AGENT,
    destination: 'cloud',
    route: 'agg',
    field: 'temp',
    delta: 0.5,
    windowMs: WINDOW_MS,
    until: fakeNow,
  }) as Record<string, Record<string, unknown>>;
  const wantIds = Object.keys(want);
  t.ok(wantIds.length >= KEYS * (SECONDS / 60 - 1), `${wantIds.length} windows expected`);

  // Drained first: a resent batch makes the topic hold more records than windows, so a count
  // alone could stop reading before the last windows are there.
  const s = await until('cloud drained', 60_000, async () => {
    const st = await statusOf(base);
    return destOf(st, 'cloud').backlog.events === 0 ? st : undefined;
  });
  const got = await consume(cloud.bootstrap, 'cloud.minutes', {
    expect: wantIds.length,
    timeoutMs: 180_000,
  });
  const byId = new Map<string, KcatRecord[]>();
  for (const r of got) {
    const id = r.headers['kedge-id'];
    byId.set(id, [...(byId.get(id) ?? []), r]);
  }
  const missing = wantIds.filter((id) => !byId.has(id));
  const extra = [...byId.keys()].filter((id) => !(id in want));
  t.same(missing, [], 'every window reached the cloud');
  t.same(extra, [], 'no window the reference does not have');
  const different = wantIds.filter((id) =>
    (byId.get(id) ?? []).some(
      (r) => JSON.stringify(JSON.parse(r.value.toString())) !== JSON.stringify(want[id]),
    ),
  );
  t.same(different.slice(0, 3), [], 'every window has the reference values');
  // The cloud's broker is stopped mid-run: a batch it wrote but could not acknowledge is sent
  // again (same kedge-ids), as kedge promises. So a window may come twice, but only as one run
  // of resent records per partition (the batch in flight), never three times.
  t.same(
    [...byId.entries()].filter(([, l]) => l.length > 2).map(([id]) => id),
    [],
    'no window three times',
  );
  const seen = new Set<string>();
  const resentRuns = new Map<number, number>();
  const previousWasResend = new Map<number, boolean>();
  const firsts: KcatRecord[] = [];
  for (const r of got) {
    const id = r.headers['kedge-id'];
    const resend = seen.has(id);
    seen.add(id);
    if (resend && !previousWasResend.get(r.partition))
      resentRuns.set(r.partition, (resentRuns.get(r.partition) ?? 0) + 1);
    previousWasResend.set(r.partition, resend);
    if (!resend) firsts.push(r);
  }
  t.ok(
    [...resentRuns.values()].every((n) => n <= 1),
    `windows sent twice only as one resent run per partition (${[...byId.values()].filter((l) => l.length > 1).length} resent)`,
  );
  const order = new Map<string, number>();
  let outOfOrder = 0;
  for (const r of firsts) {
    const k = `${r.partition}/${r.key!.toString()}`;
    const start = JSON.parse(r.value.toString()).window_start as number;
    if ((order.get(k) ?? -1) >= start) outOfOrder++;
    order.set(k, start);
  }
  t.equal(outOfOrder, 0, 'windows in order per key');
  t.same(
    got.filter((r) => r.key?.toString() !== r.headers['kedge-id'].split(':')[3]).slice(0, 2),
    [],
    'aggregates keep the key',
  );

  t.equal(s.backlog.events, 0, 'afterwards the log holds nothing the cloud still needs');
  t.same(destOf(s, 'cloud').routes, ['agg'], 'status names the routes');
  const metrics = await (await fetch(`${base}/metrics`)).text();
  t.match(
    metrics,
    /kedge_forwarded_events_total\{topic="sensors\.temp",destination="site"\} \d+/,
    'forwarded per destination',
  );
  t.match(metrics, /kedge_route_filtered_events_total\{route="agg",step="deadband"\} \d+/);
  t.match(metrics, /kedge_destination_link_state\{destination="cloud",state="up"\} 1/);

  t.test('pause one destination: the other keeps flowing', async (t) => {
    const r = await fetch(`${base}/v1/forwarding/pause?destination=cloud`, { method: 'POST' });
    t.equal(r.status, 200);
    const before = (await consume(cloud.bootstrap, 'cloud.minutes', { timeoutMs: 10_000 })).length;
    for (let s = SECONDS + 60; s < SECONDS + 240; s++) {
      fakeNow = t0 + s * 1_000;
      const records = Array.from({ length: KEYS }, (_, k) => ({
        key: `k${k}`,
        value: { temp: k + (s % 7), s },
      }));
      await post(
        `${base}/topics/sensors.temp`,
        JSON.stringify({ records }),
        'application/vnd.kafka.json.v2+json',
      );
    }
    fakeNow += 2 * WINDOW_MS;
    await consume(site.bootstrap, 'sensors.temp', {
      expect: total + KEYS * 180,
      timeoutMs: 60_000,
    });
    // The site saves its position within a second of its last send (a full checkpoint).
    const st = await until('site saved', 30_000, async () => {
      const x = await statusOf(base);
      return destOf(x, 'site').backlog.events === 0 ? x : undefined;
    });
    t.equal(destOf(st, 'cloud').link.state, 'paused', 'cloud paused');
    t.equal(destOf(st, 'site').backlog.events, 0, 'site drained while the cloud is paused');
    t.ok(destOf(st, 'cloud').backlog.events > 0, 'the cloud waits');
    t.equal(
      (await consume(cloud.bootstrap, 'cloud.minutes', { timeoutMs: 5_000 })).length,
      before,
      'nothing reached the cloud while paused',
    );
    const bad = await fetch(`${base}/v1/forwarding/pause?destination=mars`, { method: 'POST' });
    t.equal(bad.status, 404, 'an unknown destination is refused');
    await fetch(`${base}/v1/forwarding/resume?destination=cloud`, { method: 'POST' });
    let last: any = null;
    await until('cloud resumed and drained', 60_000, async () => {
      const x = await statusOf(base);
      last = destOf(x, 'cloud');
      return last.backlog.events === 0 ? x : undefined;
    }).catch((e) => {
      throw new Error(`${e.message}: ${JSON.stringify(last)}; ${lines.slice(-5).join(' | ')}`);
    });
    const after = await consume(cloud.bootstrap, 'cloud.minutes', {
      expect: before + 3 * KEYS,
      timeoutMs: 30_000,
    });
    t.ok(
      after.length >= before + 3 * KEYS,
      `the paused windows arrive after resume (${after.length - before})`,
    );
  });
});
