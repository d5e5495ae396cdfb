/**
 * kill -9 ×10 while windows are open, under load, with two real Kafka clusters: raw events to
 * "site", `deadband temp 0.5 | window 2s mean(temp) max(temp) count()` to "cloud". The cloud's
 * records must be exactly what the log yields without any kill: the same ids with the same
 * values as an independent computation (test/tools/route-reference.py) over the raw records
 * the site cluster holds; a duplicate only of an id already seen, with the same value; every
 * acknowledged event at the site.
 */
import t from 'tap';
import { startKafka } from '../scripts/kafka/kafka.ts';
import { consume, type KcatRecord } from './helpers/kcat.ts';
import { AgentProc, cleanup, post, sleep, tempDir } from './helpers/agent.ts';
import { routeReference } from './helpers/routes.ts';

const [site, cloud] = await Promise.all([startKafka({ brokers: 1 }), startKafka({ brokers: 1 })]);
const dir = tempDir();
const env = {
  KEDGE_DATA_DIR: dir,
  KEDGE_AGENT_ID: 'crash-agent',
  KEDGE_DESTINATIONS: 'site,cloud',
  KEDGE_SITE_KAFKA_BROKERS: site.bootstrap,
  KEDGE_CLOUD_KAFKA_BROKERS: cloud.bootstrap,
  KEDGE_ROUTE_RAW: 'sensors.# -> site',
  KEDGE_ROUTE_AGG:
    'sensors.# -> cloud | deadband temp 0.5 | window 2s mean(temp) max(temp) count()',
};
let agent = await AgentProc.start({ env });
t.teardown(async () => {
  await agent.stop();
  await Promise.all([site.stop(), cloud.stop()]);
  cleanup(dir);
});

const KEYS = 20;
const KILLS = 10;

t.test(
  'kill -9 ×10 during windows: the cloud gets the same windows as without kills',
  async (t) => {
    const cur = Array.from({ length: KEYS }, (_, k) => 10 + k);
    const acked = new Set<string>();
    let n = 0;
    let running = true;
    let stopped = false;
    // One request at a time: 20 readings (one per key); a request the kill cut off is not acknowledged.
    const load = (async () => {
      while (running) {
        const records = cur.map((v, k) => {
          cur[k] = Math.round((v + (Math.random() - 0.5) * 1.6) * 100) / 100;
          return { key: `k${k}`, value: { temp: cur[k], n } };
        });
        n++;
        try {
          const r = await post(
            `${agent.base}/topics/sensors.temp`,
            JSON.stringify({ records }),
            'application/vnd.kafka.json.v2+json',
          );
          if (r.status === 200) for (const rec of records) acked.add(`${rec.key}/${rec.value.n}`);
        } catch {
          await sleep(50); // the agent is down: next request after the restart
        }
        await sleep(5);
      }
      stopped = true;
    })();
    for (let i = 0; i < KILLS; i++) {
      await sleep(700 + Math.random() * 1_300);
      await agent.kill9();
      agent = await AgentProc.start({ env, port: agent.port });
    }
    await sleep(1_000);
    running = false;
    await load;
    t.ok(stopped);
    // Every window closes (2 s of nothing), then both destinations drain.
    await sleep(3_000);
    await agent.waitDrained(120_000);
    const until = Date.now();

    const raw = await consume(site.bootstrap, 'sensors.temp', {
      expect: acked.size,
      timeoutMs: 120_000,
    });
    const byId = new Map<string, KcatRecord>();
    for (const r of raw) if (!byId.has(r.headers['kedge-id'])) byId.set(r.headers['kedge-id'], r);
    // The REST proxy's json form stores the key as JSON too ("k0", with the quotes).
    const atSite = new Set(
      [...byId.values()].map(
        (r) => `${JSON.parse(r.key!.toString())}/${JSON.parse(r.value.toString()).n}`,
      ),
    );
    const lost = [...acked].filter((a) => !atSite.has(a));
    t.same(
      lost.slice(0, 5),
      [],
      `every acknowledged event reached the site (${acked.size} acknowledged, ${raw.length - byId.size} resent)`,
    );

    const want = routeReference([...byId.values()], {
      agent: 'crash-agent',
      destination: 'cloud',
      route: 'agg',
      field: 'temp',
      delta: 0.5,
      windowMs: 2_000,
      until,
    });
    const wantIds = Object.keys(want);
    t.ok(wantIds.length > KEYS * 5, `${wantIds.length} windows expected`);

    const got = await consume(cloud.bootstrap, 'sensors.temp', {
      expect: wantIds.length,
      timeoutMs: 120_000,
    });
    const seen = new Map<string, string>();
    let dupes = 0;
    let changed = 0;
    for (const r of got) {
      const id = r.headers['kedge-id'];
      const v = JSON.stringify(JSON.parse(r.value.toString()));
      if (seen.has(id)) {
        dupes++;
        if (seen.get(id) !== v) changed++;
      } else seen.set(id, v);
    }
    t.same(
      wantIds.filter((id) => !seen.has(id)).slice(0, 3),
      [],
      'every window the log yields reached the cloud',
    );
    t.same(
      [...seen.keys()].filter((id) => !(id in want)).slice(0, 3),
      [],
      'no window the log does not yield (no partial window after a kill)',
    );
    t.same(
      wantIds.filter((id) => seen.has(id) && seen.get(id) !== JSON.stringify(want[id])).slice(0, 3),
      [],
      'every window has the values of a run without kills',
    );
    t.equal(changed, 0, `a resent window has the same value (${dupes} resends)`);
  },
);
