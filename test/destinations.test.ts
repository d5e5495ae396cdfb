/**
 * Two destinations without routes (every event to both), against two real Kafka clusters:
 * each has its own transfer windows, rate cap and dead letters, and one waiting does not hold
 * up the other. `kedge status` shows both links. Injected wall clock for the windows.
 */
import t from 'tap';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createTopic, startKafka } from '../scripts/kafka/kafka.ts';
import { loadConfig } from '../agent/config.ts';
import { Agent } from '../agent/agent.ts';
import { createLogger } from '../agent/observe/logger.ts';
import { consume } from './helpers/kcat.ts';
import { cleanup, freeLoopbackPort, post, REPO, tempDir } from './helpers/agent.ts';
import { destOf, statusOf, until } from './helpers/routes.ts';
import { run } from './helpers/proc.ts';

const [site, cloud] = await Promise.all([startKafka({ brokers: 1 }), startKafka({ brokers: 1 })]);
t.teardown(async () => {
  await Promise.all([site.stop(), cloud.stop()]);
});

t.test('each destination has its own windows, rate cap and dead letters', async (t) => {
  // The cloud refuses records over 2,000 bytes on this topic; the site takes them.
  await createTopic(cloud.bootstrap, 'dl', 1, undefined, { 'max.message.bytes': '2000' });
  const dir = tempDir();
  const port = await freeLoopbackPort();
  const noon = new Date();
  noon.setHours(12, 0, 0, 0);
  let fakeNow = noon.getTime();
  const RATE = 32 * 1024;
  const cfg = loadConfig({
    KEDGE_DATA_DIR: dir,
    KEDGE_HTTP_LISTEN: `127.0.0.1:${port}`,
    KEDGE_HEARTBEAT_TOPIC: '',
    KEDGE_DESTINATIONS: 'site,cloud',
    KEDGE_SITE_KAFKA_BROKERS: site.bootstrap,
    KEDGE_CLOUD_KAFKA_BROKERS: cloud.bootstrap,
    KEDGE_CLOUD_FORWARD_WINDOWS: '22:00-06:00',
    KEDGE_CLOUD_FORWARD_RATE: '32KiB/s',
    KEDGE_COMPRESSION: 'none',
  });
  const agent = new Agent(
    cfg,
    createLogger('info', new Writable({ write: (_c, _e, cb) => cb() })),
    {
      now: () => fakeNow,
      backoffMinMs: 100,
      backoffMaxMs: 1_000,
    },
  );
  await agent.start();
  t.teardown(async () => {
    await agent.stop();
    cleanup(dir);
  });
  const base = `http://127.0.0.1:${port}`;

  // ~600 KB: the site takes it at once; the cloud, capped at 32 KiB/s, needs about 18 s.
  const N = 3_000;
  const pad = 'x'.repeat(180);
  for (let i = 0; i < N; i += 500) {
    const lines = Array.from({ length: 500 }, (_, j) => JSON.stringify({ i: i + j, pad }));
    const r = await post(`${base}/v1/topics/bulk?key=k`, lines.join('\n'), 'application/x-ndjson');
    t.equal(r.status, 200);
  }
  const atSite = await consume(site.bootstrap, 'bulk', { expect: N, timeoutMs: 30_000 });
  t.equal(atSite.length, N, 'the site has everything while the cloud is outside its window');
  let s = await statusOf(base);
  t.equal(destOf(s, 'cloud').link.state, 'outside-window', 'the cloud waits for its window');
  t.equal(destOf(s, 'site').link.state, 'up');
  t.equal(destOf(s, 'cloud').backlog.events, N, 'the cloud backlog');
  t.equal(s.backlog.events, N, 'the log keeps them for the cloud');
  t.equal(destOf(s, 'cloud').link.rate_cap_bytes_per_second, RATE);
  t.equal(destOf(s, 'site').link.rate_cap_bytes_per_second, null, 'no cap on the site');
  t.equal((await consume(cloud.bootstrap, 'bulk', { timeoutMs: 3_000 })).length, 0);

  const out = await run(process.execPath, [join(REPO, 'agent/cli.ts'), '--', 'status'], {
    env: { PATH: process.env.PATH ?? '', KEDGE_HTTP_LISTEN: `127.0.0.1:${port}` },
    timeoutMs: 30_000,
  });
  t.match(out.stdout, /^dest {5}site: up since .*backlog 0 events/m, 'kedge status: the site line');
  t.match(
    out.stdout,
    /^dest {5}cloud: outside-window since .*backlog 3,000 events/m,
    'kedge status: the cloud line',
  );

  // The window opens: the cloud drains, no faster than its cap.
  const t0 = Date.now();
  fakeNow = noon.getTime() + 11 * 3_600_000;
  s = await until('cloud drained', 120_000, async () => {
    const x = await statusOf(base);
    return destOf(x, 'cloud').backlog.events === 0 ? x : undefined;
  });
  const seconds = (Date.now() - t0) / 1000;
  const atCloud = await consume(cloud.bootstrap, 'bulk', { expect: N, timeoutMs: 30_000 });
  t.same(
    atCloud.map((r) => JSON.parse(r.value.toString()).i),
    Array.from({ length: N }, (_, i) => i),
    'the cloud gets everything, in order',
  );
  const bytes = atCloud.reduce((a, r) => a + r.value.length, 0);
  // A generous bound that catches a cap that does not hold: at least 60 % of the time the cap allows.
  t.ok(
    seconds >= (0.6 * bytes) / RATE,
    `the cloud drained ${bytes} bytes in ${seconds.toFixed(1)} s (the cap allows ${(bytes / RATE).toFixed(1)} s)`,
  );
  t.equal(s.backlog.events, 0, 'then the log keeps nothing');

  // A record only the cloud refuses: dead-lettered there, delivered to the site.
  for (const body of ['{"n":1}', JSON.stringify({ n: 2, pad: 'y'.repeat(5_000) }), '{"n":3}'])
    t.equal((await post(`${base}/v1/topics/dl?key=a`, body, 'application/json')).status, 200);
  const siteDl = await consume(site.bootstrap, 'dl', { expect: 3, timeoutMs: 30_000 });
  t.same(
    siteDl.map((r) => JSON.parse(r.value.toString()).n),
    [1, 2, 3],
    'the site has all three',
  );
  s = await until('cloud past the refused record', 60_000, async () => {
    const x = await statusOf(base);
    return destOf(x, 'cloud').backlog.events === 0 ? x : undefined;
  });
  const cloudDl = await consume(cloud.bootstrap, 'dl', { expect: 2, timeoutMs: 30_000 });
  t.same(
    cloudDl.map((r) => JSON.parse(r.value.toString()).n),
    [1, 3],
    'the cloud has the two it takes, in order',
  );
  t.equal(destOf(s, 'cloud').dead_letters, 1, 'one dead letter for the cloud');
  t.equal(destOf(s, 'site').dead_letters, 0, 'none for the site');
  t.equal(s.backlog.events, 0, 'the log is done with it');
  const metrics = await (await fetch(`${base}/metrics`)).text();
  t.match(
    metrics,
    /^kedge_dead_letters_total\{topic="dl",reason="[A-Z_]+",destination="cloud"\} 1$/m,
    'counted for the cloud',
  );
});
