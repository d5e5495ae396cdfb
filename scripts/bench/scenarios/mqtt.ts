/**
 * Issue 3: MQTT ingest through the real agent process.
 * Embedded broker: 16 MQTT.js publishers (a child process), QoS 1, 200-byte
 * payloads, a window of 1,000 unacknowledged messages each; baseline: the same
 * publishers against a bare aedes that acknowledges without storing.
 * Client mode: a backlog queued in kedge's persistent Mosquitto session is
 * drained over its one connection (up to RECEIVE_MAXIMUM messages in flight,
 * sharing group commits) with sync full and normal; baseline: mosquitto_sub draining the same queue.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import mqtt from 'mqtt';
import type { Scenario, ScenarioResult, ChartSpec } from '../lib/types.ts';
import type { BenchAgent } from '../lib/agent.ts';
import { atLeast, baselineHigher, figure, fmt } from '../lib/figures.ts';
import { type WriteAmplificationResult, writeFigure, writeWindow } from '../lib/writes.ts';
import { freeLoopbackPort, REPO } from '../../../test/helpers/agent.ts';
import { Mosquitto } from '../../../test/helpers/mosquitto.ts';

const PUBLISHERS_SCRIPT = join(REPO, 'test/fixtures/mqtt-bench.ts');
const TARGET_EMBEDDED = 20_000;
/** Issue 13: client mode, KEDGE_SYNC=full, one connection. */
const TARGET_CLIENT = 25_000;

function run(
  cmd: string,
  args: string[],
  stdin = false,
): { out: Promise<string>; child: ReturnType<typeof spawn> } {
  const child = spawn(cmd, args, { stdio: [stdin ? 'pipe' : 'ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  const done = new Promise<string>((resolve, reject) =>
    child.once('exit', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`${cmd} exit ${code}`)),
    ),
  );
  return { out: done, child };
}

/** msg/s acknowledged by the 16 publishers (they run in their own process). */
async function flood(url: string, total: number): Promise<number> {
  const r = run(process.execPath, [PUBLISHERS_SCRIPT, 'publishers', String(total), url]);
  return Number((await r.out).trim());
}

async function drainRate(
  agent: BenchAgent,
  total: number,
  timeoutMs: number,
): Promise<number | null> {
  const deadline = Date.now() + timeoutMs;
  let t0: number | null = null;
  let first = 0;
  while (Date.now() < deadline) {
    const s = await agent.status();
    const n = s.log.last_seq as number;
    if (t0 === null && n > 0) {
      t0 = performance.now();
      first = n;
    }
    if (n >= total && t0 !== null)
      return (n - first) / Math.max(0.001, (performance.now() - t0) / 1000);
    await new Promise((r) => setTimeout(r, 25));
  }
  return null;
}

async function fillQueue(url: string, total: number): Promise<void> {
  const p = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
  const payload = Buffer.alloc(200, 'x');
  let acked = 0;
  let sent = 0;
  await new Promise<void>((resolve, reject) => {
    const more = () => {
      while (sent < total && sent - acked < 1000) {
        sent++;
        p.publish('bench/q', payload, { qos: 1 }, (err) => {
          if (err) return reject(err);
          if (++acked === total) resolve();
          else more();
        });
      }
    };
    more();
  });
  await p.endAsync();
}

export const mqttIngest: Scenario = {
  name: 'mqtt',
  title: 'MQTT ingest: embedded broker (16 publishers) and client mode (one subscription)',
  description:
    'Embedded: kedge with `KEDGE_MQTT_LISTEN`, 16 MQTT.js publishers in a separate process, QoS 1, 200-byte payloads, each with up to 1,000 ' +
    'unacknowledged messages; a PUBACK means committed (KEDGE_SYNC=full). Baseline: the same publishers against a bare aedes in its own process ' +
    "that acknowledges without storing. Client: messages queued in kedge's persistent session on a Mosquitto while kedge is stopped, then drained " +
    "over kedge's one connection (pipelined: up to 1,000 messages in flight share group commits, PUBACKs in order after each commit); baseline: `mosquitto_sub` draining " +
    'the same queue. Forwarding paused throughout.',
  needsKafka: false,
  estimateSeconds: (q) => (q ? 40 : 120),
  async run(ctx): Promise<ScenarioResult> {
    const notes: string[] = [];
    const total = ctx.n(100_000, 20_000);

    // Embedded: bare aedes baseline.
    const bare = run(process.execPath, [join(REPO, 'scripts/bench/workers/bare-aedes.ts')], true);
    const port = await new Promise<number>((resolve) =>
      bare.child.stdout!.once('data', (d) => resolve(Number(String(d).trim()))),
    );
    const bareRate = await flood(`mqtt://127.0.0.1:${port}`, total);
    bare.child.stdin!.end();
    await bare.out.catch(() => '');
    ctx.log(`bare aedes: ${fmt(bareRate)} msg/s`);

    const embedded: Record<string, number> = {};
    const writes: Record<string, WriteAmplificationResult> = {};
    for (const sync of ['full', 'normal'] as const) {
      const p = await freeLoopbackPort();
      const agent = await ctx.startAgent(`mqtt-embedded-${sync}`, {
        paused: true,
        env: { KEDGE_MQTT_LISTEN: `127.0.0.1:${p}`, KEDGE_SYNC: sync },
      });
      const s0 = await agent.status();
      const w = await writeWindow(agent);
      embedded[sync] = await flood(`mqtt://127.0.0.1:${p}`, total);
      writes[`embedded_${sync}`] = await w.close();
      const s1 = await agent.status();
      const commits = s1.log.commits - s0.log.commits;
      notes.push(
        `embedded, sync=${sync}: ${fmt(embedded[sync])} msg/s, ${fmt((s1.log.last_seq - s0.log.last_seq) / Math.max(1, commits), 1)} messages per group commit, write amplification ${fmt(writes[`embedded_${sync}`].ratio, 2)}×.`,
      );
      ctx.log(notes[notes.length - 1]);
      await agent.stop();
    }

    // Client mode.
    const clientTotal = ctx.n(20_000, 5_000);
    const mosq = await Mosquitto.start({ extraConfig: ['max_inflight_messages 100'] });
    ctx.defer(() => mosq.cleanup());
    // Baseline: mosquitto_sub with a persistent session drains the same queue.
    const sub0 = await mqtt.connectAsync(mosq.url, {
      protocolVersion: 4,
      clientId: 'bench-sub',
      clean: false,
    });
    await sub0.subscribeAsync('bench/#', { qos: 1 });
    await sub0.endAsync();
    await fillQueue(mosq.url, clientTotal);
    const t0 = performance.now();
    await run('mosquitto_sub', [
      '-h',
      '127.0.0.1',
      '-p',
      String(mosq.port),
      '-i',
      'bench-sub',
      '-c',
      '-q',
      '1',
      '-t',
      'bench/#',
      '-C',
      String(clientTotal),
    ]).out;
    const subRate = clientTotal / ((performance.now() - t0) / 1000);
    ctx.log(`mosquitto_sub: ${fmt(subRate)} msg/s`);
    const client: Record<string, number | null> = {};
    for (const sync of ['full', 'normal'] as const) {
      const dir = ctx.tmp(`mqtt-client-${sync}`);
      const env = {
        KEDGE_MQTT_URL: mosq.url,
        KEDGE_MQTT_TOPICS: 'bench/#',
        KEDGE_SYNC: sync,
        KEDGE_AGENT_ID: `bench-${sync}`,
      };
      // First start creates the persistent session and its subscription; then the queue fills while kedge is stopped.
      let agent = await ctx.startAgent(`mqtt-client-${sync}-setup`, {
        paused: true,
        dataDir: dir,
        env,
      });
      await new Promise((r) => setTimeout(r, 1000));
      await agent.stop();
      await fillQueue(mosq.url, clientTotal);
      agent = await ctx.startAgent(`mqtt-client-${sync}`, { paused: true, dataDir: dir, env });
      const w = await writeWindow(agent);
      const c0 = (await agent.status()).log.commits;
      client[sync] = await drainRate(agent, clientTotal, ctx.ms(300, 120));
      writes[`client_${sync}`] = await w.close();
      const commits = (await agent.status()).log.commits - c0;
      notes.push(
        `client, sync=${sync}: ${fmt(client[sync])} msg/s, ${fmt(clientTotal / Math.max(1, commits), 1)} messages per group commit, write amplification ${fmt(writes[`client_${sync}`].ratio, 2)}×.`,
      );
      ctx.log(notes[notes.length - 1]);
      await agent.stop();
    }
    notes.push(
      'Client mode takes up to 1,000 messages at once (MQTT 5 Receive Maximum), so many messages share each fsync.',
    );

    const figures = [
      figure({
        id: 'embedded_full',
        label: 'embedded, 16 publishers, QoS 1, sync=full',
        value: embedded.full,
        unit: 'msg/s',
        target: atLeast(embedded.full, TARGET_EMBEDDED, `≥ ${fmt(TARGET_EMBEDDED)} msg/s`),
        baselines: [baselineHigher('bare aedes, no append', embedded.full, bareRate, 'msg/s')],
      }),
      figure({
        id: 'embedded_normal',
        label: 'embedded, sync=normal (no target)',
        value: embedded.normal,
        unit: 'msg/s',
        baselines: [baselineHigher('bare aedes, no append', embedded.normal, bareRate, 'msg/s')],
      }),
      figure({
        id: 'client_full',
        label: 'client mode, one connection, sync=full',
        value: client.full,
        unit: 'msg/s',
        target: atLeast(client.full, TARGET_CLIENT, `≥ ${fmt(TARGET_CLIENT)} msg/s`),
        baselines: [baselineHigher('mosquitto_sub, same queue', client.full, subRate, 'msg/s')],
      }),
      figure({
        id: 'client_normal',
        label: 'client mode, one connection, sync=normal',
        value: client.normal,
        unit: 'msg/s',
        baselines: [baselineHigher('mosquitto_sub, same queue', client.normal, subRate, 'msg/s')],
      }),
      ...(['embedded_full', 'embedded_normal', 'client_full', 'client_normal'] as const).map((k) =>
        writeFigure(
          `write_amplification_${k}`,
          `write amplification, ${k.replace('_', ', sync=')} (disk bytes ÷ ingested bytes)`,
          writes[k] ?? { writtenBytes: 0, ingestedBytes: 0, ratio: null, error: 'not run' },
        ),
      ),
    ];
    const charts: ChartSpec[] = [
      {
        kind: 'bars',
        id: 'mqtt-rates',
        title: 'MQTT messages acknowledged per second',
        unit: 'msg/s',
        bars: [
          { label: 'embedded full', value: embedded.full ?? 0, group: 'embedded' },
          { label: 'embedded normal', value: embedded.normal ?? 0, group: 'embedded' },
          { label: 'bare aedes', value: bareRate, group: 'embedded' },
          { label: 'client full', value: client.full ?? 0, group: 'client' },
          { label: 'client normal', value: client.normal ?? 0, group: 'client' },
          { label: 'mosquitto_sub', value: subRate, group: 'client' },
        ],
        refs: [{ label: 'embedded target', y: TARGET_EMBEDDED }],
      },
    ];
    return {
      figures,
      charts,
      cpu: [],
      notes,
      data: { total, clientTotal, bareRate, embedded, client, subRate, writes },
    };
  },
};
