/**
 * The agent (a child process, over HTTP) against a real Kafka that goes away:
 * (a) KEDGE_WHEN_FULL=reject-new answers 507 + Retry-After at the quota and
 *     delivers everything it acknowledged once the broker is back;
 * (b) drop-oldest drops exactly what /metrics and /v1/status say it dropped;
 * (c) a really full file system (tmpfs) gives 507, never a crash, and
 *     ingest works again as soon as space is back.
 * Acknowledged vs delivered is checked with kcat, an independent client.
 */
import t from 'tap';
import type { Test } from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { request } from 'undici';
import { createTopic, startKafka } from '../scripts/kafka/kafka.ts';
import { consume } from './helpers/kcat.ts';
import { AgentProc, cleanup, post, sleep, tempDir } from './helpers/agent.ts';
import type { PostResult } from './helpers/agent.ts';

const MiB = 1 << 20;
const PER_REQUEST = 20;
const kafka = await startKafka({ brokers: 1 });
const NODE = kafka.nodes[0].id;
t.teardown(() => kafka.stop());
for (const topic of ['df-reject', 'df-drop', 'df-enospc'])
  await createTopic(kafka.bootstrap, topic, 1, 1);

/** Readings of about 1 KiB, numbered; one key, so one partition and one order. */
function postReadings(agent: AgentProc, topic: string, from: number): Promise<PostResult> {
  const lines = Array.from({ length: PER_REQUEST }, (_, i) =>
    JSON.stringify({ n: from + i, pad: 'x'.repeat(1000) }),
  );
  return post(
    `${agent.base}/v1/topics/${topic}?key=dev-1`,
    lines.join('\n') + '\n',
    'application/x-ndjson',
  );
}

async function getStatus(url: string): Promise<number> {
  const r = await request(url);
  await r.body.text();
  return r.statusCode;
}

/** Sum of one metric family's samples whose labels include `labels`. */
async function metricSum(
  agent: AgentProc,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const text = await (await request(`${agent.base}/metrics`)).body.text();
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{([^}]*)\\})? (\\S+)$`, 'gm'))) {
    const have = m[1] ?? '';
    if (Object.entries(labels).every(([k, v]) => have.includes(`${k}="${v}"`))) sum += Number(m[2]);
  }
  return sum;
}

/** The `n` of every record of `topic` (one partition), in Kafka order. */
async function delivered(topic: string, expect: number): Promise<number[]> {
  const recs = await consume(kafka.bootstrap, topic, { expect, timeoutMs: 60_000 });
  return recs.map((r) => JSON.parse(r.value.toString()).n as number);
}

/** Kafka order is ingest order and every acknowledged n is there exactly once (resends after a crash aside: none here). */
function checkDelivered(t: Test, got: number[], acked: number[], what: string): void {
  t.equal(
    got.length,
    acked.length,
    `${what}: ${acked.length} acknowledged events, ${got.length} delivered`,
  );
  t.same(got, acked, `${what}: exactly the acknowledged events, in ingest order`);
}

/** Posts readings until the agent refuses one (at most 1,000 requests); acknowledged ids go to `acked`. */
async function postUntilRefused(
  agent: AgentProc,
  topic: string,
  acked: number[],
): Promise<{ n: number; refused: PostResult | undefined }> {
  let n = 0;
  let refused: PostResult | undefined;
  for (let i = 0; i < 1000 && !refused; i++) {
    const r = await postReadings(agent, topic, n);
    if (r.status === 200) {
      for (let k = 0; k < PER_REQUEST; k++) acked.push(n + k);
      n += PER_REQUEST;
    } else refused = r;
  }
  return { n, refused };
}

t.test('reject-new: 507 with Retry-After at the quota, nothing acknowledged is lost', async (t) => {
  const dir = tempDir();
  await kafka.stopNode(NODE);
  const agent = await AgentProc.start({
    env: {
      KEDGE_DATA_DIR: dir,
      KEDGE_KAFKA_BROKERS: kafka.bootstrap,
      KEDGE_DISK_QUOTA: '2MiB',
      KEDGE_WHEN_FULL: 'reject-new',
      KEDGE_AGENT_ID: 'df-reject',
    },
  });
  t.teardown(async () => {
    await agent.stop();
    cleanup(dir);
  });
  const acked: number[] = [];
  const { n, refused } = await postUntilRefused(agent, 'df-reject', acked);
  t.ok(refused, `refused after ${acked.length} acknowledged events`);
  t.equal(refused!.status, 507);
  t.equal(refused!.headers['retry-after'], '30');
  t.equal(refused!.body.error, 'insufficient_storage');
  t.match(refused!.body.detail, /KEDGE_DISK_QUOTA/);
  t.ok(acked.length * 1000 > MiB, 'most of the quota was used for events');
  t.equal(await getStatus(`${agent.base}/healthz`), 200, 'alive');
  t.equal(
    (await postReadings(agent, 'df-reject', n)).status,
    507,
    'still full while Kafka is away',
  );
  await sleep(600); // the file sizes in /v1/status are measured at most twice a second
  let s = await agent.status();
  t.equal(s.backlog.events, acked.length, 'the refused requests stored nothing');
  t.equal(s.drops.events, 0, 'reject-new drops nothing');
  t.ok(
    s.disk.bytes > MiB && s.disk.bytes <= 3 * MiB,
    `disk ${s.disk.bytes} bytes for a 2 MiB quota (ratio ${s.disk.used_ratio})`,
  );
  t.equal(s.disk.quota_bytes, 2 * MiB);

  await kafka.startNode(NODE);
  s = await agent.waitDrained(180_000);
  const again = await postReadings(agent, 'df-reject', n);
  t.equal(again.status, 200, 'accepted again once forwarded');
  for (let k = 0; k < PER_REQUEST; k++) acked.push(n + k);
  await agent.waitDrained(60_000);
  checkDelivered(t, await delivered('df-reject', acked.length), acked, 'df-reject');
  // One line when the quota is reached and one when ingest resumes, not one per refused request.
  const reached = agent.lines.filter((l) => l.includes('disk quota reached'));
  t.equal(reached.length, 1, 'one "disk quota reached" line for all the refused requests');
  t.match(reached[0], /"level":"warn"/, 'at warn level');
  t.equal(
    agent.lines.filter((l) => l.includes('space available again')).length,
    1,
    'one line when events are accepted again',
  );
});

t.test(
  'drop-oldest: dropped = acknowledged - delivered, exactly, in /metrics, /v1/status and the log',
  async (t) => {
    const dir = tempDir();
    await kafka.stopNode(NODE);
    const agent = await AgentProc.start({
      env: {
        KEDGE_DATA_DIR: dir,
        KEDGE_KAFKA_BROKERS: kafka.bootstrap,
        KEDGE_DISK_QUOTA: '2MiB',
        KEDGE_AGENT_ID: 'df-drop',
      },
    });
    t.teardown(async () => {
      await agent.stop();
      cleanup(dir);
    });
    const acked: number[] = [];
    let n = 0;
    // About 8 MiB of events into a 2 MiB quota while Kafka is away: all accepted.
    for (let i = 0; i < 400; i++) {
      const r = await postReadings(agent, 'df-drop', n);
      if (r.status !== 200) throw new Error(`request ${i}: ${r.status} ${JSON.stringify(r.body)}`);
      for (let k = 0; k < PER_REQUEST; k++) acked.push(n + k);
      n += PER_REQUEST;
    }
    await sleep(600);
    const whileDown = await agent.status();
    t.ok(
      whileDown.drops.events > acked.length / 2,
      `${whileDown.drops.events} of ${acked.length} dropped while Kafka was away`,
    );
    t.ok(
      whileDown.disk.bytes > MiB && whileDown.disk.bytes <= 3 * MiB,
      `disk ${whileDown.disk.bytes} bytes for a 2 MiB quota`,
    );

    await kafka.startNode(NODE);
    const s = await agent.waitDrained(180_000);
    const dropped = await metricSum(agent, 'kedge_dropped_events_total', {
      topic: 'df-drop',
      reason: 'quota',
    });
    const got = await delivered('df-drop', acked.length - dropped);
    t.equal(new Set(got).size, got.length, 'no duplicates');
    t.equal(
      dropped,
      acked.length - got.length,
      `kedge_dropped_events_total ${dropped} = ${acked.length} acknowledged - ${got.length} delivered`,
    );
    t.ok(
      (await metricSum(agent, 'kedge_dropped_bytes_total', { topic: 'df-drop', reason: 'quota' })) >
        dropped * 1000,
      'dropped bytes counted',
    );
    t.equal(s.drops.events, dropped, '/v1/status drops.events agrees');
    t.equal(s.drops.by_reason.quota, dropped);
    t.equal(s.drops.by_reason.retention, 0);
    t.same(s.drops.by_topic[0].topic, 'df-drop');
    t.equal(s.drops.by_topic[0].events, dropped);
    t.ok(s.drops.last_drop_at, 'last drop time shown');
    t.ok(
      got.every((x, i) => i === 0 || x > got[i - 1]),
      'what was delivered is in ingest order',
    );
    t.equal(got[got.length - 1], n - 1, 'the newest events were kept (the oldest dropped)');
    const warn = agent.lines.find((l) => /dropped \d+ unforwarded events/.test(l));
    t.ok(warn, 'a warning in the log');
    t.match(JSON.parse(warn!), { level: 'warn', reason: 'quota', topics: { 'df-drop': Number } });
  },
);

// A file system that really fills up: a tmpfs of its own (root only; the test runs as root).
t.test(
  'a really full disk: 507, no crash, ingest works again when space is back, nothing acknowledged lost',
  async (t) => {
    t.equal(process.getuid?.(), 0, 'runs as root (mounts a tmpfs)');
    const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'kedge-enospc-'));
    const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=32m', 'tmpfs', mnt], {
      encoding: 'utf8',
    });
    t.equal(mount.status, 0, `tmpfs mounted (${mount.stderr})`);
    const dir = path.join(mnt, 'data');
    const filler = path.join(mnt, 'filler');
    await kafka.stopNode(NODE);
    const agent = await AgentProc.start({
      env: {
        KEDGE_DATA_DIR: dir,
        KEDGE_KAFKA_BROKERS: kafka.bootstrap,
        KEDGE_AGENT_ID: 'df-enospc',
      },
    });
    t.teardown(async () => {
      await agent.stop();
      spawnSync('umount', [mnt]);
      fs.rmSync(mnt, { recursive: true, force: true });
    });
    // Leave 3 MiB free (the 8 MiB reserve is already there).
    const st = fs.statfsSync(mnt);
    const fd = fs.openSync(filler, 'w');
    const chunk = Buffer.alloc(MiB, 1);
    for (let left = st.bavail * st.bsize - 3 * MiB; left > 0; left -= chunk.length)
      fs.writeSync(fd, chunk, 0, Math.min(chunk.length, left));
    fs.closeSync(fd);

    const acked: number[] = [];
    const { n, refused } = await postUntilRefused(agent, 'df-enospc', acked);
    t.ok(refused, `refused after ${acked.length} acknowledged events`);
    t.equal(refused!.status, 507);
    t.equal(refused!.headers['retry-after'], '30');
    t.match(refused!.body.detail, /disk full/);
    t.ok(acked.length > 1000, 'the free space was used for events');
    for (let i = 0; i < 5; i++)
      t.equal(
        (await postReadings(agent, 'df-enospc', n)).status,
        507,
        'refused again, nothing stored',
      );
    t.equal(agent.child.exitCode, null, 'agent still running');
    t.equal(await getStatus(`${agent.base}/healthz`), 200, '/healthz 200');
    t.equal((await agent.status()).backlog.events, acked.length, 'backlog = acknowledged events');

    fs.rmSync(filler);
    let back: PostResult | undefined;
    for (let i = 0; i < 50; i++) {
      back = await postReadings(agent, 'df-enospc', n);
      if (back.status === 200) break;
      await sleep(100);
    }
    t.equal(back!.status, 200, 'accepted again once space is back');
    for (let k = 0; k < PER_REQUEST; k++) acked.push(n + k);

    await kafka.startNode(NODE);
    await agent.waitDrained(180_000);
    checkDelivered(t, await delivered('df-enospc', acked.length), acked, 'df-enospc');
  },
);
