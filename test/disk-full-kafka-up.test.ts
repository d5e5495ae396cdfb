/**
 * Issue 11, defect 1, end to end: the disk fills while Kafka is up and ingest goes on
 * (a real tmpfs, a real broker up the whole time, both storage drivers).
 * - The agent never exits: ingest gets 507, forwarding goes on (a rate cap keeps a
 *   backlog on disk while Kafka is reachable, as on a thin uplink).
 * - kill -9, the disk filled to 100 %, restart with the stale lock: it starts.
 * - Space comes back: every acknowledged event is in Kafka (read by kcat), in order,
 *   duplicates at most one batch and each a resend with an already-seen kedge-id.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { request } from 'undici';
import { createTopic, startKafka } from '../scripts/kafka/kafka.ts';
import { consume } from './helpers/kcat.ts';
import { checkDelivery } from './helpers/verify.ts';
import { AgentProc, post, sleep } from './helpers/agent.ts';
import { fillDisk, mountTmpfs } from './helpers/disk.ts';
import type { PostResult } from './helpers/agent.ts';

const MiB = 1 << 20;
const PER_REQUEST = 20;
/** The agent's batch limit (AgentTuning.maxBatchEvents): at most one batch may be sent twice. */
const ONE_BATCH = 2_000;
const kafka = await startKafka({ brokers: 1 });
t.teardown(() => kafka.stop());

/** Readings of about 1 KiB that do not compress (the rate cap counts wire bytes, after zstd). */
function postReadings(agent: AgentProc, topic: string, from: number): Promise<PostResult> {
  const lines = Array.from({ length: PER_REQUEST }, (_, i) =>
    JSON.stringify({ n: from + i, pad: randomBytes(750).toString('base64') }),
  );
  return post(
    `${agent.base}/v1/topics/${topic}?key=dev-1`,
    lines.join('\n') + '\n',
    'application/x-ndjson',
  );
}

async function httpStatus(url: string): Promise<number> {
  const r = await request(url);
  await r.body.text();
  return r.statusCode;
}

for (const driver of ['sqlite', 'wasm'] as const) {
  t.test(
    `${driver}: full disk with Kafka up — no crash, 507s, restart on a 100 % full disk, drains once space is back`,
    async (t) => {
      t.equal(process.getuid?.(), 0, 'runs as root (mounts a tmpfs)');
      const topic = `dfu-${driver}`;
      await createTopic(kafka.bootstrap, topic, 1, 1);
      const mnt = mountTmpfs(t, '32m', 'kedge-dfu-');
      const dir = path.join(mnt, 'data');
      const filler = path.join(mnt, 'filler');
      const env = {
        KEDGE_DATA_DIR: dir,
        KEDGE_KAFKA_BROKERS: kafka.bootstrap,
        KEDGE_STORAGE: driver,
        KEDGE_AGENT_ID: topic,
        // A thin uplink: Kafka is up, but the backlog grows faster than it drains.
        KEDGE_FORWARD_RATE: '64KiB/s',
      };
      let agent = await AgentProc.start({ env });
      t.teardown(() => agent.stop());
      fillDisk(filler, 4 * MiB); // the 8 MiB reserve exists already; leave 4 MiB for events

      const acked: number[] = [];
      let n = 0;
      let refused = 0;
      const statuses = new Set<number>();
      // Ingest well past full for 20 s while the forwarder acknowledges batches.
      const until = Date.now() + 20_000;
      while (Date.now() < until && agent.child.exitCode === null) {
        let r: PostResult;
        try {
          r = await postReadings(agent, topic, n);
        } catch (e) {
          t.fail(`request failed: ${(e as Error).message}`);
          break;
        }
        statuses.add(r.status);
        if (r.status === 200) for (let k = 0; k < PER_REQUEST; k++) acked.push(n + k);
        else refused++;
        n += PER_REQUEST;
        if (r.status !== 200) await sleep(20);
      }
      await sleep(1_000);
      t.equal(
        agent.child.exitCode,
        null,
        `the agent is still running (${agent.stderr.join('').slice(0, 1000)})`,
      );
      t.ok(
        refused > 0,
        `${refused} requests refused once the disk was full (statuses ${[...statuses].join(', ')})`,
      );
      t.same(
        [...statuses].filter((s) => s !== 200 && s !== 507),
        [],
        'refusals are 507, nothing else',
      );
      t.equal(await httpStatus(`${agent.base}/healthz`), 200, '/healthz 200');
      const s1 = await agent.status();
      t.ok(
        s1.backlog.events > 0,
        `a backlog on disk (${s1.backlog.events} events) while Kafka is up`,
      );
      t.ok(acked.length > 1000, `${acked.length} events acknowledged`);

      // kill -9, then the disk 100 % full: the stale lock must still be taken over.
      await agent.kill9();
      t.ok(fs.existsSync(path.join(dir, 'kedge.lock')), 'a stale lock left behind');
      fillDisk(filler, 0);
      t.ok(fs.statfsSync(mnt).bavail === 0, 'the disk is 100 % full');
      const { KEDGE_FORWARD_RATE: _, ...fast } = env;
      agent = await AgentProc.start({ env: fast });
      t.pass('started on the 100 % full disk with a stale lock');
      await sleep(5_000);
      t.equal(agent.child.exitCode, null, 'still running 5 s later');
      // 507, or 200 when the log's own free pages (trimmed since) hold the events: never an error or a crash.
      const r = await postReadings(agent, topic, n);
      t.ok(
        r.status === 507 || r.status === 200,
        `ingest on the full disk answers ${r.status} (507, or 200 into the log's free pages)`,
      );
      if (r.status === 200) for (let k = 0; k < PER_REQUEST; k++) acked.push(n + k);
      n += PER_REQUEST;
      const s2 = await agent.status();
      t.comment(
        `on the full disk: link ${s2.link.state} (${s2.link.last_error ?? s2.link.lastError ?? ''}), backlog ${s2.backlog.events}`,
      );

      // Space back: the backlog drains, once.
      fs.rmSync(filler);
      await agent.waitDrained(180_000);
      let back: PostResult | undefined;
      for (let i = 0; i < 100; i++) {
        back = await postReadings(agent, topic, n);
        if (back.status === 200) break;
        await sleep(200);
      }
      t.equal(back!.status, 200, 'ingest accepted again once space is back');
      for (let k = 0; k < PER_REQUEST; k++) acked.push(n + k);
      await agent.waitDrained(60_000);
      t.equal(agent.child.exitCode, null, 'never exited');

      const recs = await consume(kafka.bootstrap, topic, {
        expect: acked.length,
        timeoutMs: 60_000,
      });
      const rep = checkDelivery(recs, acked.map(String), (rec) =>
        String(JSON.parse(rec.value.toString()).n),
      );
      t.same(
        rep.missing.slice(0, 10),
        [],
        `every acknowledged event in Kafka (${rep.missing.length} missing of ${acked.length})`,
      );
      t.same(rep.orderViolations, [], 'in ingest order');
      t.equal(rep.reusedKedgeIds, 0, 'no kedge-id names two different events');
      t.equal(
        rep.foreignDuplicates,
        0,
        'every duplicate is a resend with an already-seen kedge-id',
      );
      t.ok(rep.duplicates <= ONE_BATCH, `duplicates bounded by one batch (${rep.duplicates})`);
    },
  );
}
