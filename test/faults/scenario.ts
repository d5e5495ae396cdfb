/**
 * What the fault scenarios share: their durations (the issue's numbers by default,
 * overridable for development runs on a busy machine), the agent's environment, the
 * HTTP + MQTT load pair, /metrics and RSS readings. Not a test file itself
 * (npm run test:faults runs test/faults/*.fault.ts).
 */
import { readFileSync } from 'node:fs';
import { request } from 'undici';
import type { Test } from 'tap';
import { createTopic } from '../../scripts/kafka/kafka.ts';
import { type AgentProc, freeLoopbackPort, sleep, tempDir } from '../helpers/agent.ts';
import { AckLedger } from '../helpers/ack-ledger.ts';
import { HttpTransport, PacedLoad } from '../helpers/paced-load.ts';
import { MqttTransport } from '../helpers/mqtt-load.ts';

function envNumber(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  // CI proves the issue's numbers: an override there would quietly weaken every scenario.
  if (process.env.CI === 'true')
    throw new Error(`${name} is set under CI=true; the fault suite runs its full durations in CI`);
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0)
    throw new Error(`${name}="${v}" is not a positive number; unset it for the default ${dflt}`);
  return n;
}

/** Durations and sizes. CI uses the defaults; FAULTS_* only shorten development runs. */
export const FAULTS = {
  /** Broker stopped / link black-holed this long (issue 7: 2 minutes). */
  outageMs: envNumber('FAULTS_OUTAGE_S', 120) * 1000,
  /** kill -9 rounds (issue 7: 20). */
  kills: envNumber('FAULTS_KILLS', 20),
  /** Backlog replayed with RSS watched (issue 7: 5,000,000). */
  backlogEvents: envNumber('FAULTS_BACKLOG', 5_000_000),
};

/** A scenario's agent: data dir, fixed agent id, embedded MQTT listener sending to one Kafka topic. */
export interface AgentSetup {
  env: Record<string, string>;
  dir: string;
  mqttPort: number;
  httpTopic: string;
  mqttTopic: string;
}

export async function agentSetup(
  name: string,
  brokers: string,
  extra: Record<string, string> = {},
): Promise<AgentSetup> {
  const dir = extra.KEDGE_DATA_DIR ?? tempDir(`kedge-fault-${name}-`);
  const mqttPort = await freeLoopbackPort();
  const httpTopic = `fault-${name}-http`;
  const mqttTopic = `fault-${name}-mqtt`;
  return {
    dir,
    mqttPort,
    httpTopic,
    mqttTopic,
    env: {
      KEDGE_DATA_DIR: dir,
      KEDGE_AGENT_ID: `fault-${name}`,
      KEDGE_KAFKA_BROKERS: brokers,
      KEDGE_MQTT_LISTEN: `127.0.0.1:${mqttPort}`,
      KEDGE_MQTT_KAFKA_TOPIC: mqttTopic,
      ...extra,
    },
  };
}

/**
 * createTopic, again on a transient error: right after a 3-broker cluster starts,
 * kafkajs' wait for leaders can see UNKNOWN_TOPIC_OR_PARTITION from a node that has
 * not caught up with the new topic yet.
 */
export async function ensureTopic(
  bootstrap: string,
  topic: string,
  partitions: number,
  replicationFactor?: number,
  configs?: Record<string, string>,
): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await createTopic(bootstrap, topic, partitions, replicationFactor, configs);
      return;
    } catch (e) {
      if (attempt >= 5 || (e as { retriable?: boolean }).retriable !== true) throw e;
      await sleep(1_000);
    }
  }
}

export interface LoadPair {
  ledger: AckLedger;
  http: HttpTransport;
  mqtt: MqttTransport;
  /** Stops both loads; returns the ledger summary line. */
  stop(): Promise<string>;
}

/**
 * Sustained HTTP (NDJSON batches on 4 keys) and MQTT QoS 1 (4 publishers) load at a
 * fixed rate. `agent` is read on every send: a restarted agent is picked up. Stopped
 * at the latest when test `t` ends.
 */
export function startLoads(
  t: Test,
  s: AgentSetup,
  agent: () => AgentProc,
  o: { httpRate?: number; mqttRate?: number; pad?: number } = {},
): LoadPair {
  const ledger = new AckLedger();
  const http = new HttpTransport({
    base: () => agent().base,
    topic: s.httpTopic,
    keys: 4,
    pad: o.pad,
  });
  const mqtt = new MqttTransport({
    url: () => `mqtt://127.0.0.1:${s.mqttPort}`,
    prefix: 'fault/m',
    pad: o.pad,
  });
  const loads = [
    new PacedLoad({
      ledger,
      transport: http,
      concurrency: 4,
      batch: 25,
      rate: o.httpRate ?? 2_000,
    }),
    new PacedLoad({ ledger, transport: mqtt, concurrency: 4, batch: 10, rate: o.mqttRate ?? 500 }),
  ];
  let stopped: Promise<unknown> | null = null;
  const stopAll = () => (stopped ??= Promise.all(loads.map((l) => l.stop())));
  // Also when the test fails half-way: running load loops would keep the process alive.
  t.teardown(stopAll);
  return {
    ledger,
    http,
    mqtt,
    async stop() {
      await stopAll();
      return `${ledger.summary()}; HTTP answers ${JSON.stringify(Object.fromEntries(http.statuses))}; MQTT connections ${mqtt.connects}, dropped ${mqtt.drops}`;
    },
  };
}

/** Sum of every series of one metric in the agent's /metrics (0 if absent). */
export async function metricSum(base: string, name: string): Promise<number> {
  const r = await request(`${base}/metrics`);
  const text = await r.body.text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(name + ' ') || line.startsWith(name + '{'))
      sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/** VmRSS of a process in bytes, from /proc (what `top` shows), or null once it is gone. */
export function rssOf(pid: number): number | null {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** Seconds since `t0`, one decimal, for the timing comments each scenario prints. */
export function secondsSince(t0: number): string {
  return ((Date.now() - t0) / 1000).toFixed(1);
}

/** Prints a `# fault-timing` line the report collects. */
export function timing(t: Test, scenario: string, t0: number, extra = ''): void {
  t.comment(`fault-timing ${scenario}: ${secondsSince(t0)} s${extra ? ` (${extra})` : ''}`);
}
