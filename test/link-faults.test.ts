/**
 * Link faults between kedge and Kafka, injected by a TCP proxy the broker
 * advertises (test/helpers/tcp-proxy.ts): a hang outage (traffic black-holed),
 * connections reset in the middle of requests, and the broker stopped and
 * started, each under HTTP load. Each ends the way a user checks it: every
 * event that got a 2xx is in Kafka (read by kcat), in order per key, and any
 * duplicate is a resend of the same log entry (same kedge-id). Status must say
 * what is going on while it happens.
 *
 * These are the short versions (about a minute of outage); issue 7's fault
 * suite runs the 2-minute ones.
 */
import t, { type Test } from 'tap';
import { createTopic, startKafka } from '../scripts/kafka/kafka.ts';
import { consume } from './helpers/kcat.ts';
import { AgentProc, cleanup, post, sleep, tempDir } from './helpers/agent.ts';
import { HttpLoad } from './helpers/load.ts';
import { checkDelivery } from './helpers/verify.ts';
import { kafkaBehindProxy } from './helpers/tcp-proxy.ts';
import { DEFAULT_TUNING } from '../agent/agent.ts';

// The child agent runs with DEFAULT_TUNING (request timeout 30 s; a send is abandoned 5 s later).
const REQUEST_TIMEOUT_MS = DEFAULT_TUNING.requestTimeoutMs;

const { proxy, kafkaOptions, bootstrap } = await kafkaBehindProxy();
const kafka = await startKafka(kafkaOptions);
const dirs: string[] = [];
let agent: AgentProc | null = null;
t.teardown(async () => {
  await agent?.stop();
  await proxy.close();
  await kafka.stop();
  for (const d of dirs) cleanup(d);
});

async function startAgent(env: Record<string, string> = {}): Promise<AgentProc> {
  const dir = tempDir();
  dirs.push(dir);
  agent = await AgentProc.start({
    env: { KEDGE_DATA_DIR: dir, KEDGE_KAFKA_BROKERS: bootstrap, ...env },
  });
  return agent;
}

interface LinkSample {
  ms: number;
  state: string;
  lastError: string | null;
}

/** Samples /v1/status's link every 250 ms in the background; stop() returns the state changes. */
class LinkWatch {
  private readonly changes: LinkSample[] = [];
  private running = true;
  private readonly loop: Promise<void>;
  private readonly t0 = Date.now();
  constructor(a: AgentProc) {
    this.loop = (async () => {
      while (this.running) {
        try {
          const s = await a.status();
          const last = this.changes[this.changes.length - 1];
          if (!last || last.state !== s.link.state)
            this.changes.push({
              ms: Date.now() - this.t0,
              state: s.link.state,
              lastError: s.link.last_error,
            });
        } catch {
          /* agent busy; next sample */
        }
        await sleep(250);
      }
    })();
  }
  /** The first sample in one of `states` (ms since the watch started), or null. */
  firstSeen(...states: string[]): LinkSample | null {
    return this.changes.find((c) => states.includes(c.state)) ?? null;
  }
  async stop(): Promise<LinkSample[]> {
    this.running = false;
    await this.loop;
    return this.changes;
  }
  describe(): string {
    return this.changes.map((c) => `${(c.ms / 1000).toFixed(1)}s ${c.state}`).join(' → ');
  }
}

async function waitState(a: AgentProc, want: string[], timeoutMs: number): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  let s: any;
  while (Date.now() < deadline) {
    s = await a.status();
    if (want.includes(s.link.state)) return s;
    await sleep(250);
  }
  return s;
}

/** Fewest acknowledged events a scenario must have (its load runs for many seconds). */
const MIN_ACKED = 500;

/** The user's check at the end: all acknowledged events in Kafka, in order per key; duplicates only resends. */
async function verifyTopic(tt: Test, topic: string, acked: Set<string>): Promise<void> {
  // Every scenario runs its load for many seconds: an empty ledger would pass every check below.
  tt.ok(acked.size >= MIN_ACKED, `${acked.size} events acknowledged (at least ${MIN_ACKED})`);
  const recs = await consume(kafka.bootstrap, topic, { timeoutMs: 60_000 });
  const rep = checkDelivery(recs, acked, (r) => JSON.parse(r.value.toString()).id);
  tt.equal(
    rep.missing.length,
    0,
    `no acknowledged event missing of ${acked.size} (missing: ${rep.missing.slice(0, 5)})`,
  );
  tt.same(rep.orderViolations, [], 'order per key holds');
  tt.equal(
    rep.reusedKedgeIds,
    0,
    'no kedge-id names two different events (no seq reused across restarts)',
  );
  tt.equal(
    rep.foreignDuplicates,
    0,
    `every duplicate (${rep.duplicates}) carries an already-seen kedge-id`,
  );
  tt.comment(
    `${topic}: ${recs.length} records read, ${rep.unique} unique, ${rep.duplicates} duplicates (resends)`,
  );
}

t.test(
  'hang outage: link goes down within the request timeout, drains by itself after heal',
  async (tt) => {
    const topic = 'faults-hang';
    await createTopic(kafka.bootstrap, topic, 3);
    const a = await startAgent();
    const load = new HttpLoad({
      base: () => a.base,
      topic,
      keys: 8,
      batch: 10,
      concurrency: 2,
      maxEvents: 150_000,
    });
    const up = await waitState(a, ['up'], 30_000);
    tt.equal(up.link.state, 'up', 'link up before the outage');
    await sleep(2_000);

    const watch = new LinkWatch(a);
    const t0 = Date.now();
    proxy.blackhole();
    // Keep the black hole for 45 s, longer if the link has not been reported down yet (bounded).
    while (Date.now() - t0 < 45_000 || (!watch.firstSeen('down') && Date.now() - t0 < 90_000))
      await sleep(500);
    const during = await a.status();
    const down = watch.firstSeen('down');
    const firstBad = watch.firstSeen('degraded', 'down');
    tt.comment(`hang: link ${watch.describe()}; last_error: ${during.link.last_error}`);
    tt.ok(down, `status reports the link down during a hang outage (${watch.describe()})`);
    if (down) {
      tt.ok(
        down.ms <= REQUEST_TIMEOUT_MS + 10_000,
        `down reported ${(down.ms / 1000).toFixed(1)} s after the hang began (request timeout ${REQUEST_TIMEOUT_MS / 1000} s + 10 s)`,
      );
    }
    if (firstBad) tt.comment(`hang: first not-up state after ${(firstBad.ms / 1000).toFixed(1)} s`);
    // The agent's own account of the outage, for whoever reads a failure here.
    for (const line of a.lines.filter((l) => /kafka link|timed out/.test(l)).slice(-4)) {
      const j = JSON.parse(line);
      tt.comment(
        `hang: agent log +${((Date.parse(j.time) - t0) / 1000).toFixed(1)} s: ${j.msg}${j.reason ? ` (${j.reason})` : ''}`,
      );
    }
    tt.ok(during.link.last_error, `last_error says why: ${during.link.last_error}`);
    tt.ok(during.backlog.events > 0, `events kept while the link hangs (${during.backlog.events})`);

    const healed = Date.now();
    proxy.heal();
    await sleep(3_000);
    const res = await load.stop();
    await watch.stop();
    await a.waitDrained(120_000);
    tt.comment(
      `hang: drained ${((Date.now() - healed) / 1000).toFixed(1)} s after heal; ${res.acked.size} acked, ${res.failed} failed`,
    );
    const after = await a.status();
    tt.equal(after.link.state, 'up', 'link up again without intervention');
    await verifyTopic(tt, topic, res.acked);
    await a.stop();
  },
);

t.test(
  'connections reset mid-batch during a drain: nothing lost, nothing reordered',
  async (tt) => {
    const topic = 'faults-reset';
    await createTopic(kafka.bootstrap, topic, 3);
    // No compression: batches are large on the wire, so a reset lands inside a request.
    const a = await startAgent({ KEDGE_COMPRESSION: 'none' });
    await waitState(a, ['up'], 30_000);
    const p = await post(`${a.base}/v1/forwarding/pause`, '');
    tt.equal(p.status, 200, 'forwarding paused to build a backlog');
    const load = new HttpLoad({
      base: () => a.base,
      topic,
      keys: 8,
      batch: 20,
      concurrency: 2,
      maxEvents: 60_000,
    });
    const deadline = Date.now() + 60_000;
    while ((await a.status()).backlog.events < 40_000 && Date.now() < deadline) await sleep(250);
    tt.ok((await a.status()).backlog.events >= 40_000, 'a backlog of 40,000+ events');

    const watch = new LinkWatch(a);
    const accepted0 = proxy.accepted;
    tt.equal((await post(`${a.base}/v1/forwarding/resume`, '')).status, 200, 'forwarding resumed');
    const errors: string[] = [];
    let fired = 0;
    const backlogAtReset: number[] = [];
    for (let i = 0; i < 5; i++) {
      // Somewhere inside the next request or two (a batch is up to 512 KiB uncompressed).
      const n = 20_000 + Math.floor(Math.random() * 300_000);
      const resetDone = proxy.resetAfterBytes(n);
      const ok = await Promise.race([resetDone.then(() => true), sleep(30_000).then(() => false)]);
      if (!ok) break;
      fired++;
      await sleep(200);
      const s = await a.status();
      backlogAtReset.push(s.backlog.events);
      if (s.link.last_error) errors.push(`${s.link.state}: ${s.link.last_error}`);
    }
    tt.ok(
      backlogAtReset.every((n) => n > 0),
      `every reset hit the drain (backlog after each: ${backlogAtReset.join(', ')})`,
    );
    tt.equal(
      fired,
      5,
      `5 connection resets fired in the middle of the drain (${proxy.resets} connections reset)`,
    );
    const res = await load.stop();
    await a.waitDrained(120_000);
    await watch.stop();
    tt.comment(
      `resets: link ${watch.describe()}; ${proxy.accepted - accepted0} reconnects; errors in status: ${errors.length ? errors.slice(-2).join(' | ') : 'none (kafkajs retried inside the send)'}`,
    );
    tt.equal((await a.status()).link.state, 'up', 'link up after the resets');
    await verifyTopic(tt, topic, res.acked);
    await a.stop();
  },
);

t.test(
  'broker stopped and started under load: down while stopped, every acknowledged event delivered',
  async (tt) => {
    const topic = 'faults-restart';
    await createTopic(kafka.bootstrap, topic, 3);
    const a = await startAgent();
    await waitState(a, ['up'], 30_000);
    const load = new HttpLoad({
      base: () => a.base,
      topic,
      keys: 8,
      batch: 10,
      concurrency: 2,
      maxEvents: 150_000,
    });
    await sleep(3_000);
    const node = kafka.nodes[0].id;
    const watch = new LinkWatch(a);
    const t0 = Date.now();
    await kafka.stopNode(node);
    const stoppedAfter = Date.now() - t0;
    const s = await waitState(a, ['down'], 60_000);
    tt.equal(
      s.link.state,
      'down',
      `status reports the link down while the broker is stopped (after ${((Date.now() - t0) / 1000).toFixed(1)} s)`,
    );
    tt.ok(s.link.last_error, `last_error says why: ${s.link.last_error}`);
    tt.comment(`broker stop: the controlled shutdown took ${(stoppedAfter / 1000).toFixed(1)} s`);
    await sleep(Math.max(0, 20_000 - (Date.now() - t0)));
    const restarted = Date.now();
    await kafka.startNode(node);
    await sleep(3_000);
    const res = await load.stop();
    await a.waitDrained(120_000);
    await watch.stop();
    tt.comment(
      `broker restart: link ${watch.describe()}; drained ${((Date.now() - restarted) / 1000).toFixed(1)} s after start; ${res.acked.size} acked, ${res.failed} failed`,
    );
    tt.equal((await a.status()).link.state, 'up', 'link up again without intervention');
    await verifyTopic(tt, topic, res.acked);
    await a.stop();
  },
);
