/**
 * `kedge status` as an operator (or a health check) runs it: exit 0 healthy, 1 degraded
 * (broker stopped), 3 unreachable; an ETA while a backlog drains; --watch with a bounded
 * count prints one line per second with a progress bar; a priority backlog gets a
 * lanes line.
 */
import t from 'tap';
import { join } from 'node:path';
import { request } from 'undici';
import { startKafka } from '../scripts/kafka/kafka.ts';
import {
  AgentProc,
  REPO,
  cleanup,
  freeLoopbackPort,
  post,
  sleep,
  tempDir,
} from './helpers/agent.ts';
import { run, waitFor } from './helpers/proc.ts';

const kafka = await startKafka({ brokers: 1 });
const dir = tempDir();
const agent = await AgentProc.start({
  env: {
    KEDGE_DATA_DIR: dir,
    KEDGE_KAFKA_BROKERS: kafka.bootstrap,
    KEDGE_AGENT_ID: 'status-agent',
    KEDGE_PRIORITY_TOPICS: 'status.alerts',
  },
});
t.teardown(async () => {
  await agent.stop();
  await kafka.stop();
  cleanup(dir);
});

const CLI = join(REPO, 'agent/cli.ts');

function kedgeStatus(args: string[], port = agent.port) {
  return run(process.execPath, [CLI, '--', 'status', ...args], {
    env: { PATH: process.env.PATH ?? '', KEDGE_HTTP_LISTEN: `127.0.0.1:${port}` },
    timeoutMs: 30_000,
  });
}

async function control(action: 'pause' | 'resume'): Promise<void> {
  const r = await request(`${agent.base}/v1/forwarding/${action}`, { method: 'POST' });
  await r.body.dump();
  if (r.statusCode !== 200) throw new Error(`${action}: HTTP ${r.statusCode}`);
}

/** NDJSON events of ~100 bytes, in requests of 5,000. */
async function ingest(topic: string, events: number): Promise<void> {
  for (let i = 0; i < events; i += 5_000) {
    const n = Math.min(5_000, events - i);
    const body = Array.from({ length: n }, (_, j) =>
      JSON.stringify({ n: i + j, pad: 'p'.repeat(80) }),
    ).join('\n');
    const r = await post(
      `${agent.base}/v1/topics/${topic}?key=k${i % 7}`,
      body,
      'application/x-ndjson',
    );
    if (r.status !== 200) throw new Error(`ingest: HTTP ${r.status} ${JSON.stringify(r.body)}`);
  }
}

t.test('healthy: exit 0, human summary and --json', async (tt) => {
  await ingest('status.ok', 10);
  await agent.waitDrained(30_000);
  const h = await kedgeStatus([]);
  tt.equal(h.code, 0, `exit 0 (stderr: ${h.stderr})`);
  tt.match(h.stdout, /^agent\s+status-agent \(kedge \d+\.\d+\.\d+/m);
  tt.match(h.stdout, /^link\s+up since \d{4}-\d\d-\d\dT/m, 'link up and since when');
  tt.match(h.stdout, /^backlog\s+0 events/m);
  tt.match(h.stdout, /^rates\s+in [\d.,]+\/s, out [\d.,]+\/s/m);
  tt.match(h.stdout, /^drops\s+0 events dropped/m);
  tt.match(h.stdout, /^dead\s+0 dead-lettered events/m);
  tt.match(h.stdout, /^disk\s+\S+ of 1GiB quota/m, 'quota use');
  tt.match(h.stdout, /^health\s+healthy$/m);
  const j = await kedgeStatus(['--json']);
  tt.equal(j.code, 0);
  const s = JSON.parse(j.stdout);
  tt.equal(s.agent_id, 'status-agent');
  tt.equal(s.link.state, 'up');
  tt.equal(s.backlog.events, 0);
  tt.equal(s.backlog.eta_seconds, 0, 'nothing to drain: ETA 0');
});

t.test(
  'a backlog: paused is healthy with no ETA; while it drains, an ETA and a progress bar',
  async (tt) => {
    await control('pause');
    const TOTAL = 300_000;
    await ingest('status.drain', TOTAL);
    const paused = await kedgeStatus(['--json']);
    tt.equal(paused.code, 0, 'paused by the operator: healthy');
    const ps = JSON.parse(paused.stdout);
    tt.equal(ps.link.state, 'paused');
    tt.equal(ps.backlog.events, TOTAL, 'the whole backlog waits');
    tt.equal(ps.backlog.eta_seconds, null, 'no ETA while not draining');
    const ph = await kedgeStatus([]);
    tt.match(ph.stdout, /^backlog\s+300,000 events, .*ETA unknown \(not draining\)/m);

    const started = Date.now();
    await control('resume');
    await waitFor(
      async () => {
        const s = await agent.status();
        return s.backlog.events > 0 && s.backlog.events < TOTAL && s.backlog.eta_seconds !== null;
      },
      { timeoutMs: 60_000, intervalMs: 100, what: 'an ETA while draining' },
    );

    // The CLI runs during the drain: --json, the human form, and --watch for 3 seconds.
    const [j, h, w] = await Promise.all([
      kedgeStatus(['--json']),
      kedgeStatus([]),
      kedgeStatus(['--watch', '--count', '3']),
    ]);
    const js = JSON.parse(j.stdout);
    tt.equal(j.code, 0, 'draining: healthy');
    tt.ok(js.backlog.events > 0, `--json ran during the drain (${js.backlog.events} events left)`);
    tt.ok(
      Number.isInteger(js.backlog.eta_seconds) && js.backlog.eta_seconds > 0,
      `backlog.eta_seconds = ${js.backlog.eta_seconds}`,
    );
    tt.ok(js.rates.forward_events_per_second > 0, 'forward rate shown');
    tt.match(
      h.stdout,
      /^backlog\s+[\d,]+ events, .*ETA \d\S* at [\d.,]+\/s/m,
      `human form shows the ETA:\n${h.stdout}`,
    );

    tt.equal(w.code, 0, `--watch --count 3 ends by itself (stderr: ${w.stderr})`);
    const lines = w.stdout.trim().split('\n');
    tt.equal(lines.length, 3, 'one line per second on a pipe, three lines');
    for (const l of lines)
      tt.match(l, /^\d{4}-\d\d-\d\dT\S+ link=\S+ backlog=\d+ \(\S+\) eta=\S+ in=\S+ out=\S+/, l);
    tt.match(
      lines[0],
      /\[[#-]{30}\]\s+\d+ % drained of [\d,]+/,
      'a progress bar while the backlog drains',
    );

    const drained = await agent.waitDrained(180_000);
    tt.equal(drained.backlog.eta_seconds, 0);
    tt.comment(`drained ${TOTAL} events in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  },
);

t.test('a priority backlog: a lanes line shows each lane, gone once drained', async (tt) => {
  await control('pause');
  await ingest('status.alerts', 300);
  await ingest('status.bulk', 5_000);
  const h = await kedgeStatus([]);
  tt.equal(h.code, 0, 'paused: healthy');
  tt.match(
    h.stdout,
    /^lanes\s+priority 300 events, \S+, oldest \S+ old, ETA unknown; bulk 5,000 events, \S+, oldest \S+ old, ETA unknown$/m,
    `each lane's backlog on one line:\n${h.stdout}`,
  );
  const j = JSON.parse((await kedgeStatus(['--json'])).stdout);
  tt.equal(j.lanes.priority.backlog_events, 300, '--json: the priority lane');
  tt.equal(j.lanes.bulk.backlog_events, 5_000, '--json: the bulk lane');
  await control('resume');
  await agent.waitDrained(60_000);
  const after = await kedgeStatus([]);
  tt.notMatch(after.stdout, /^lanes/m, `no lanes line once drained:\n${after.stdout}`);
});

t.test('broker stopped: degraded, exit 1', async (tt) => {
  await kafka.stopNode(kafka.nodes[0].id);
  await ingest('status.down', 10);
  await waitFor(async () => ['down', 'degraded'].includes((await agent.status()).link.state), {
    timeoutMs: 90_000,
    intervalMs: 250,
    what: 'link down',
  });
  const h = await kedgeStatus([]);
  tt.equal(h.code, 1, 'exit 1');
  tt.match(h.stdout, /^link\s+(down|degraded) since/m);
  tt.match(h.stdout, /^\s+last error at \S+: .+/m, 'the last error is shown');
  tt.match(h.stdout, /^health\s+degraded: Kafka link (down|degraded)$/m);
  tt.match(h.stdout, /^backlog\s+10 events/m, 'the events wait in the log');
  const j = await kedgeStatus(['--json']);
  tt.equal(j.code, 1, '--json: exit 1 too');
  tt.ok(JSON.parse(j.stdout).link.last_error, 'last_error in the JSON');
});

t.test('unreachable: exit 3, one clear line', async (tt) => {
  const port = await freeLoopbackPort();
  const r = await kedgeStatus([], port);
  tt.equal(r.code, 3);
  tt.equal(r.stdout, '');
  tt.match(
    r.stderr,
    new RegExp(
      `^kedge: no answer from the agent at http://127\\.0\\.0\\.1:${port}/v1/status: .*\\(is the service running\\?\\)\\n$`,
    ),
  );
  const w = await kedgeStatus(['--watch', '--count', '2'], port);
  tt.equal(w.code, 3, '--watch: exit 3');
  tt.equal(w.stdout.trim().split('\n').length, 2, 'a line per try');
  const empty = await run(process.execPath, [CLI, '--', 'status'], {
    env: { PATH: process.env.PATH ?? '', KEDGE_HTTP_LISTEN: '' },
    timeoutMs: 30_000,
  });
  tt.equal(empty.code, 3);
  tt.match(empty.stderr, /KEDGE_HTTP_LISTEN is empty/);
  const bad = await kedgeStatus(['--watch', '--count', 'many']);
  tt.equal(bad.code, 2, 'a bad --count is a usage error');
  tt.match(bad.stderr, /--count needs a whole number/);
  await sleep(0);
});
