/**
 * Kafka TLS, mutual TLS, SASL/PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 against one real broker
 * (certificates made by openssl, SCRAM users added when the storage is formatted). For each,
 * the agent forwards events and the Kafka distribution's own console consumer (Java, sharing no
 * code with kedge), logging in the same way, reads them back.
 * A wrong password, an untrusted CA and a missing client certificate: link down with a reason
 * naming the cause, in status and in the log, the events stay in the log, and after the
 * operator fixes the config (restart, same data dir) they are delivered.
 */
import { KAFKA_CLIENTS, type KafkaClientName } from '../agent/config-types.ts';
import { openLog } from '../agent/log/index.ts';
import t, { type Test } from 'tap';
import { makeTestCerts } from './helpers/certs.ts';
import { AgentProc, cleanup, post, tempDir } from './helpers/agent.ts';
import { waitFor } from './helpers/proc.ts';
import {
  consoleConsume,
  kedgeKafkaEnv,
  startSecureKafka,
  type Access,
} from './helpers/secure-kafka.ts';

const certs = makeTestCerts();
const USERS = {
  plain: { 'edge-plain': 'plain-pass-1' },
  scram: [
    { mechanism: 'SCRAM-SHA-256' as const, name: 'edge-256', password: 'scram256-pass' },
    { mechanism: 'SCRAM-SHA-512' as const, name: 'edge-512', password: 'scram512-pass' },
  ],
};
const kafka = await startSecureKafka(certs, USERS);
const dirs: string[] = [];
t.teardown(async () => {
  await kafka.stop();
  for (const d of dirs) cleanup(d);
  certs.remove();
});

const tls: Access = { listener: 'SSL', caFile: certs.caFile };
const mtls: Access = {
  listener: 'MTLS',
  caFile: certs.caFile,
  cert: { certFile: certs.clientCertFile, keyFile: certs.clientKeyFile },
};
const plain: Access = {
  listener: 'SASL_SSL',
  caFile: certs.caFile,
  sasl: { mechanism: 'plain', username: 'edge-plain', password: 'plain-pass-1' },
};
const scram256: Access = {
  listener: 'SASL_SSL',
  caFile: certs.caFile,
  sasl: { mechanism: 'scram-sha-256', username: 'edge-256', password: 'scram256-pass' },
};
const scram512: Access = {
  listener: 'SASL_SSL',
  caFile: certs.caFile,
  sasl: { mechanism: 'scram-sha-512', username: 'edge-512', password: 'scram512-pass' },
};

function startAgent(
  dir: string,
  access: Access,
  id: string,
  client?: KafkaClientName,
): Promise<AgentProc> {
  return AgentProc.start({
    env: {
      KEDGE_DATA_DIR: dir,
      KEDGE_AGENT_ID: id,
      ...kedgeKafkaEnv(kafka, access),
      ...(client ? { KEDGE_KAFKA_CLIENT: client } : {}),
    },
  });
}

/** Posts n single JSON events to `topic`; returns their values. */
async function ingest(t: Test, agent: AgentProc, topic: string, n: number): Promise<string[]> {
  const values: string[] = [];
  for (let i = 0; i < n; i++) {
    const v = JSON.stringify({ topic, i });
    const res = await post(`${agent.base}/v1/topics/${topic}?key=k${i % 2}`, v, 'application/json');
    t.equal(res.status, 200, `event ${i} accepted`);
    values.push(v);
  }
  return values;
}

/** The records in `topic` as a consumer with `access` reads them: all `values`, with kedge-id headers. */
async function checkDelivered(
  t: Test,
  access: Access,
  topic: string,
  values: string[],
  agentId: string,
): Promise<void> {
  // The Kafka distribution's console consumer: shares no code with kedge (kcat cannot SCRAM to Kafka 4).
  const recs = await consoleConsume(kafka, access, topic, values.length, 60_000);
  t.equal(
    recs.length,
    values.length,
    `${values.length} records read back from ${topic} by Kafka's console consumer`,
  );
  t.strictSame(new Set(recs.map((r) => r.value)), new Set(values), 'the values as sent');
  t.ok(
    recs.every((r) => r.headers['kedge-id']?.startsWith(`${agentId}:`)),
    'every record carries kedge-id',
  );
}

for (const [name, access] of [
  ['TLS (server authentication, KEDGE_KAFKA_CA_FILE)', tls],
  ['mutual TLS (client certificate and key)', mtls],
  ['SASL/PLAIN over TLS', plain],
  ['SCRAM-SHA-256 over TLS', scram256],
  ['SCRAM-SHA-512 over TLS', scram512],
] as const) {
  // Every Kafka client (KEDGE_KAFKA_CLIENT); the failure cases below run with the test run's.
  for (const client of KAFKA_CLIENTS)
    t.test(
      `${name}, ${client}: events forwarded and read back with the same credentials`,
      async (t) => {
        const dir = tempDir();
        dirs.push(dir);
        const topic = `sec.${access.listener.toLowerCase()}.${access.sasl?.mechanism ?? (access.cert ? 'cert' : 'ca')}.${client}`;
        const id = `sec-${access.sasl?.mechanism ?? (access.cert ? 'mtls' : 'tls')}-${client}`;
        const agent = await startAgent(dir, access, id, client);
        try {
          const values = await ingest(t, agent, topic, 5);
          const s = await agent.waitDrained(90_000);
          t.equal(s.link.state, 'up', 'link up');
          await checkDelivered(t, access, topic, values, id);
        } finally {
          await agent.stop();
        }
      },
    );
}

/**
 * The agent with a broken `bad` access: link down with a reason matching `reason` in status
 * and in the log line, the events kept; then restarted with `good` on the same data dir: delivered.
 */
async function brokenThenFixed(
  t: Test,
  label: string,
  bad: Access,
  good: Access,
  reason: RegExp,
): Promise<void> {
  const dir = tempDir();
  dirs.push(dir);
  const id = `sec-fix-${label}`;
  const topic = `sec.fix.${label}`;
  const agent = await startAgent(dir, bad, id);
  let values: string[];
  try {
    values = await ingest(t, agent, topic, 4);
    const s = await waitFor(
      async () => {
        const st = await agent.status();
        return st.link.state === 'down' && st.link.last_error ? st : null;
      },
      { timeoutMs: 60_000, intervalMs: 200, what: 'link down with a last_error' },
    );
    t.match(s.link.last_error, reason, `status last_error names the cause: ${s.link.last_error}`);
    t.equal(s.backlog.events, 4, 'the events stay in the log');
    const line = agent.lines.map((l) => JSON.parse(l)).find((o) => o.msg === 'kafka link down');
    t.ok(line, 'a "kafka link down" log line');
    t.match(line?.reason, reason, 'the log line gives the same reason');
    t.equal(line?.level, 'warn', 'at warn level');
  } finally {
    await agent.stop();
  }
  // Read from the log file itself between the two agents: the fixed one may drain
  // before its first status answer.
  const log = await openLog({ dir, driver: 'sqlite', sync: 'normal' });
  const kept = log.stats().backlogEvents;
  await log.close();
  t.equal(kept, 4, 'the 4 events are in the log file after the broken agent stopped');
  const fixed = await startAgent(dir, good, id);
  try {
    const s = await fixed.waitDrained(90_000);
    t.equal(s.link.state, 'up', 'link up once the config is fixed');
    await checkDelivered(t, good, topic, values, id);
  } finally {
    await fixed.stop();
  }
}

t.test(
  'wrong SCRAM password: link down "authentication failed", events kept, delivered after the fix',
  (t) =>
    brokenThenFixed(
      t,
      'password',
      { ...scram512, sasl: { ...scram512.sasl!, password: 'not-the-password' } },
      scram512,
      /^authentication failed: .*KEDGE_KAFKA_PASSWORD/,
    ),
);

t.test(
  'wrong SASL/PLAIN password: link down "authentication failed", events kept, delivered after the fix',
  (t) =>
    brokenThenFixed(
      t,
      'plain',
      { ...plain, sasl: { ...plain.sasl!, password: 'nope' } },
      plain,
      /^authentication failed: .*KEDGE_KAFKA_USERNAME/,
    ),
);

t.test(
  'untrusted CA: link down with a certificate error naming KEDGE_KAFKA_CA_FILE, delivered after the fix',
  (t) =>
    brokenThenFixed(
      t,
      'ca',
      { ...tls, caFile: certs.otherCaFile },
      tls,
      /^TLS certificate error: .*not signed by a CA kedge trusts.*KEDGE_KAFKA_CA_FILE/,
    ),
);

t.test(
  'mutual TLS without a client certificate: link down naming KEDGE_KAFKA_CERT_FILE, delivered after the fix',
  (t) =>
    brokenThenFixed(
      t,
      'nocert',
      { listener: 'MTLS', caFile: certs.caFile },
      mtls,
      /^TLS certificate error: .*client certificate.*KEDGE_KAFKA_CERT_FILE/,
    ),
);
