/**
 * Disk full and quota reached under load, with each KEDGE_WHEN_FULL policy. Forwarding
 * is paused so the backlog grows until the limit: the disk quota (KEDGE_DISK_QUOTA), or
 * a real full filesystem (a 32 MiB tmpfs as the data dir, quota left at 1 GiB).
 * Then forwarding resumes and the ledger is compared with Kafka: every acknowledged
 * event is delivered except the ones kedge counted as dropped
 * (kedge_dropped_events_total), exactly. A fifth case fills the disk while Kafka is up
 * and forwarding, kills the agent and restarts it on the 100 % full disk.
 */
import t from 'tap';
import { mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { startKafka } from '../../scripts/kafka/kafka.ts';
import { AgentProc, cleanup, post, sleep, tempDir } from '../helpers/agent.ts';
import { assertDelivery, compareWithKafka } from '../helpers/ack-ledger.ts';
import { run } from '../helpers/proc.ts';
import { fillDisk } from '../helpers/disk.ts';
import { agentSetup, metricSum, startLoads, timing, ensureTopic } from './scenario.ts';

const t0 = Date.now();
const kafka = await startKafka({ brokers: 1 });
const root = tempDir('kedge-fault-full-');
const mounts: string[] = [];
t.teardown(async () => {
  await kafka.stop();
  for (const m of mounts) await run('umount', ['-l', m]);
  cleanup(root);
});

const QUOTA = 16 * 1024 * 1024;
const FS_SIZE = '32m';

/** A small tmpfs: a disk that really fills (needs root, like CI on this machine). */
async function smallFilesystem(dir: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const r = await run('mount', ['-t', 'tmpfs', '-o', `size=${FS_SIZE}`, 'tmpfs', dir]);
  if (r.code !== 0)
    throw new Error(
      `the disk-full scenario mounts a ${FS_SIZE} tmpfs at ${dir} and needs root for it: ${r.output.trim()}`,
    );
  mounts.push(dir);
}

/** Bytes of kedge.db, its WAL and the reserve (what the quota covers). */
function logBytes(dir: string): number {
  return readdirSync(dir)
    .filter((f) => f.startsWith('kedge.db') || f === 'kedge.reserve')
    .reduce((n, f) => n + statSync(join(dir, f)).size, 0);
}

type Policy = 'drop-oldest' | 'reject-new';
const cases: { limit: 'quota' | 'disk'; policy: Policy }[] = [
  { limit: 'quota', policy: 'drop-oldest' },
  { limit: 'quota', policy: 'reject-new' },
  { limit: 'disk', policy: 'drop-oldest' },
  { limit: 'disk', policy: 'reject-new' },
];

for (const c of cases) {
  t.test(
    `${c.limit === 'quota' ? 'quota reached' : 'disk full'} under load, KEDGE_WHEN_FULL=${c.policy}: every drop is counted`,
    async (tt) => {
      const started = Date.now();
      const name = `${c.limit}-${c.policy}`;
      const dir = join(root, name);
      if (c.limit === 'disk') await smallFilesystem(dir);
      const extra: Record<string, string> = { KEDGE_DATA_DIR: dir, KEDGE_WHEN_FULL: c.policy };
      if (c.limit === 'quota') extra.KEDGE_DISK_QUOTA = String(QUOTA);
      const s = await agentSetup(name, kafka.bootstrap, extra);
      await ensureTopic(kafka.bootstrap, s.httpTopic, 3);
      await ensureTopic(kafka.bootstrap, s.mqttTopic, 3);
      const agent = await AgentProc.start({ env: s.env });
      try {
        tt.equal(
          (await post(`${agent.base}/v1/forwarding/pause`, '')).status,
          200,
          'forwarding paused: the backlog grows',
        );
        const loads = startLoads(tt, s, () => agent, { httpRate: 8_000, mqttRate: 1_000 });
        // Until the limit bites (drops counted or ingest refused), then 5 s more under it.
        const deadline = Date.now() + 120_000;
        let dropped = 0;
        let refused = 0;
        let maxBytes = 0;
        while (Date.now() < deadline) {
          await sleep(500);
          maxBytes = Math.max(maxBytes, logBytes(dir));
          dropped = await metricSum(agent.base, 'kedge_dropped_events_total');
          refused = loads.http.statuses.get(507) ?? 0;
          if (dropped > 0 || refused > 0) break;
        }
        tt.ok(
          dropped > 0 || refused > 0,
          `the limit was reached: ${dropped} events dropped, ${refused} requests refused with 507`,
        );
        for (let i = 0; i < 10; i++) {
          await sleep(500);
          maxBytes = Math.max(maxBytes, logBytes(dir));
        }
        const summary = await loads.stop();
        tt.comment(summary);
        if (c.limit === 'quota' && c.policy === 'drop-oldest')
          tt.ok(dropped > 0, 'drop-oldest: the oldest events were dropped to make room');
        if (c.policy === 'reject-new') {
          tt.ok(
            (loads.http.statuses.get(507) ?? 0) > 0,
            `reject-new: ingest answered 507 (${loads.http.statuses.get(507) ?? 0} requests)`,
          );
          tt.ok(
            loads.mqtt.drops > 0,
            `reject-new: MQTT publishers lost their connection without a PUBACK (${loads.mqtt.drops} times)`,
          );
        }
        if (c.limit === 'quota')
          tt.ok(
            maxBytes <= QUOTA * 1.05,
            `log files stayed within the quota (most seen: ${maxBytes} bytes of ${QUOTA})`,
          );

        const resumed = await post(`${agent.base}/v1/forwarding/resume`, '');
        tt.equal(resumed.status, 200, `forwarding resumed (${JSON.stringify(resumed.body)})`);
        if (resumed.status !== 200)
          tt.comment(
            `agent log: ${agent.lines
              .filter((l) => /"level":"(warn|error|fatal)"/.test(l))
              .slice(-3)
              .join('\n')}`,
          );
        const resumedAt = Date.now();
        await agent.waitDrained(240_000);
        tt.comment(`drained ${((Date.now() - resumedAt) / 1000).toFixed(1)} s after resume`);
        dropped = await metricSum(agent.base, 'kedge_dropped_events_total');
        const rep = await compareWithKafka(
          kafka.bootstrap,
          [s.httpTopic, s.mqttTopic],
          loads.ledger,
        );
        const ingested = await metricSum(agent.base, 'kedge_ingested_events_total');
        // Exact accounting: every event the log committed reached Kafka or was counted as dropped.
        tt.equal(
          ingested - rep.unique,
          dropped,
          `committed (${ingested}) − delivered (${rep.unique}) == kedge_dropped_events_total (${dropped})`,
        );
        // In the ledger's terms: acknowledged − delivered == dropped. Exact when no event was
        // stored without its acknowledgement reaching the client (an abandoned MQTT in-flight
        // message can be); then that event may be among the dropped ones instead.
        const ackedMissing = rep.acknowledged - rep.deliveredAcked;
        if (rep.unique === rep.deliveredAcked)
          tt.equal(
            ackedMissing,
            dropped,
            `acknowledged (${rep.acknowledged}) − delivered (${rep.deliveredAcked}) == dropped (${dropped})`,
          );
        else
          tt.ok(
            ackedMissing <= dropped,
            `acknowledged − delivered (${ackedMissing}) <= dropped (${dropped}); ${rep.unique - rep.deliveredAcked} stored events never got their acknowledgement to the client`,
          );
        if (c.policy === 'reject-new') tt.equal(dropped, 0, 'reject-new drops nothing');
        // Forwarding was paused until the load stopped, so the log held seqs 1 … ingested
        // and drop-oldest must have taken exactly the oldest `dropped` of them: what reached
        // Kafka is every seq after those, each once. (This is exact even when an MQTT
        // message was stored without its PUBACK reaching the publisher, where the ledger
        // comparison above can only bound.)
        else
          tt.same(
            { first: rep.seqMin, last: rep.seqMax, distinct: rep.unique },
            { first: dropped + 1, last: ingested, distinct: ingested - dropped },
            `drop-oldest dropped the oldest ${dropped}: Kafka holds seqs ${dropped + 1} … ${ingested}, every one`,
          );
        assertDelivery(tt, rep, { dropped });
        timing(
          tt,
          `disk-${name}`,
          started,
          `${dropped} dropped, ${refused} refused, ${rep.duplicates} duplicates`,
        );
      } finally {
        await agent.stop();
      }
    },
  );
}

// Issue 11: the disk fills while Kafka is up and forwarding (a thin uplink: a rate cap
// and no compression keep a backlog on disk), under HTTP + MQTT load; then kill -9 and a
// restart on the 100 % full disk; then space comes back.
t.test(
  'disk full with Kafka up, kill -9, restart on a 100 % full disk: alive throughout, every acknowledged event delivered',
  async (tt) => {
    const started = Date.now();
    const dir = join(root, 'kafka-up');
    await smallFilesystem(dir);
    const data = join(dir, 'data');
    const filler = join(dir, 'filler');
    const s = await agentSetup('disk-kafka-up', kafka.bootstrap, {
      KEDGE_DATA_DIR: data,
      KEDGE_COMPRESSION: 'none',
      KEDGE_FORWARD_RATE: '256KiB/s',
    });
    await ensureTopic(kafka.bootstrap, s.httpTopic, 3);
    await ensureTopic(kafka.bootstrap, s.mqttTopic, 3);
    let agent = await AgentProc.start({ env: s.env });
    let exits = 0;
    const watch = (a: AgentProc) =>
      a.exited().then((r) => {
        if (a === agent && r.signal !== 'SIGKILL') exits++;
      });
    watch(agent);
    try {
      fillDisk(filler, 4 * 1024 * 1024); // the 8 MiB reserve exists already
      const loads = startLoads(tt, s, () => agent, { httpRate: 2_000, mqttRate: 500, pad: 400 });
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline && (loads.http.statuses.get(507) ?? 0) === 0) await sleep(500);
      tt.ok(
        (loads.http.statuses.get(507) ?? 0) > 0,
        'the disk filled while Kafka was up: ingest answered 507',
      );
      await sleep(20_000); // under load on the full disk while forwarding goes on
      tt.equal(exits, 0, 'the agent did not exit on the full disk');

      await agent.kill9();
      fillDisk(filler, 0);
      const { KEDGE_FORWARD_RATE: _, ...uncapped } = s.env;
      agent = await AgentProc.start({ env: uncapped });
      watch(agent);
      tt.pass('restarted on the 100 % full disk with the stale lock');
      await sleep(10_000);
      tt.equal(exits, 0, 'alive on the 100 % full disk under load');

      rmSync(filler);
      await sleep(10_000);
      const summary = await loads.stop();
      tt.comment(summary);
      await agent.waitDrained(240_000);
      tt.equal(exits, 0, 'never exited');
      const dropped = await metricSum(agent.base, 'kedge_dropped_events_total');
      tt.equal(dropped, 0, 'nothing dropped (the quota was never reached)');
      const rep = await compareWithKafka(kafka.bootstrap, [s.httpTopic, s.mqttTopic], loads.ledger);
      assertDelivery(tt, rep, { dropped });
      timing(
        tt,
        'disk-full-kafka-up',
        started,
        `${rep.acknowledged} acknowledged, ${rep.duplicates} duplicates`,
      );
    } finally {
      await agent.stop();
    }
  },
);

t.test('all cases', async (tt) => {
  timing(tt, 'disk-full (5 cases)', t0);
});
