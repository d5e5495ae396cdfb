/**
 * KEDGE_COMPRESSION end to end, one real broker for the file: for every codec
 * the agent forwards a few thousand telemetry events with keys and headers;
 * kcat (librdkafka, an independent client) reads them back byte for byte and in
 * order per key, and the broker's segment files show every batch was stored
 * with that codec. Then the same for snappy and lz4 through the single
 * executable, which must carry the pure-JavaScript codecs inside it.
 * The codecs on their own (round trips, frames other decoders read): codecs-unit.test.ts.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { createTopic, startKafka } from '../scripts/kafka/kafka.ts';
import type { Compression } from '../agent/config.ts';
import {
  TelemetryGenerator,
  envelopeBody,
  type TelemetryEvent,
} from '../scripts/bench/telemetry.ts';
import { consume } from './helpers/kcat.ts';
import { AgentProc, cleanup, post, tempDir } from './helpers/agent.ts';
import { checkDelivery } from './helpers/verify.ts';
import { topicBatches } from './helpers/segments.ts';
import { artifactsFor, ensureBuilt } from './helpers/exe.ts';

const CODECS: Compression[] = ['none', 'gzip', 'snappy', 'lz4', 'zstd'];
const EVENTS = 3000;
const PER_REQUEST = 250;

const kafka = await startKafka({ brokers: 1 });
const logDir = join(kafka.nodes[0].dir, 'data');
t.teardown(() => kafka.stop());

interface Sent extends TelemetryEvent {
  seq: number;
}

/** Runs one agent with `compression`, sends `n` telemetry events, returns what it acknowledged by seq. */
async function forward(
  tt: Test,
  compression: Compression,
  topic: string,
  n: number,
  command?: string[],
): Promise<Map<number, Sent>> {
  const dir = tempDir();
  const agent = await AgentProc.start({
    command,
    env: {
      KEDGE_DATA_DIR: dir,
      KEDGE_KAFKA_BROKERS: kafka.bootstrap,
      KEDGE_COMPRESSION: compression,
      KEDGE_AGENT_ID: `codecs-${compression}`,
    },
  });
  try {
    // A backlog first, then one drain: full batches (up to 2,000 events / 512 KiB), so an
    // LZ4 frame holds several blocks and a Snappy stream several fragments.
    await post(`${agent.base}/v1/forwarding/pause`, '');
    const gen = new TelemetryGenerator({ seed: compression.length * 31 + n });
    const sent = new Map<number, Sent>();
    for (let i = 0; i < n; i += PER_REQUEST) {
      const events = gen.take(Math.min(PER_REQUEST, n - i));
      const res = await post(
        `${agent.base}/v1/topics/${topic}`,
        envelopeBody(events),
        'application/json',
      );
      if (res.status !== 200)
        throw new Error(`POST answered ${res.status}: ${JSON.stringify(res.body)}`);
      for (const [k, e] of events.entries())
        sent.set(res.body.first_seq + k, { ...e, seq: res.body.first_seq + k });
    }
    tt.equal(
      (await post(`${agent.base}/v1/forwarding/resume`, '')).status,
      200,
      'forwarding resumed',
    );
    const s = await agent.waitDrained(120_000);
    tt.equal(s.backlog.events, 0, 'the agent drained its backlog');
    return sent;
  } finally {
    const st = await agent.stop();
    tt.equal(st.code, 0, 'the agent stopped cleanly');
    cleanup(dir);
  }
}

/** kcat reads `topic`: every record byte for byte with its key and headers, order per key, and the stored codec. */
async function verify(
  tt: Test,
  topic: string,
  compression: Compression,
  sent: Map<number, Sent>,
): Promise<void> {
  const recs = await consume(kafka.bootstrap, topic, { expect: sent.size, timeoutMs: 90_000 });
  tt.equal(recs.length, sent.size, `kcat reads ${sent.size} records`);
  let bad = 0;
  for (const r of recs) {
    const kid = r.headers['kedge-id'] ?? '';
    const e = sent.get(Number(kid.slice(kid.lastIndexOf(':') + 1)));
    const ok =
      e !== undefined &&
      kid === `codecs-${compression}:${e.seq}` &&
      r.value.equals(Buffer.from(e.value)) &&
      r.key?.toString() === e.key &&
      Object.entries(e.headers).every(([k, v]) => r.headers[k] === v);
    if (!ok && bad++ < 3)
      tt.fail(
        `record ${r.partition}/${r.offset} (${kid}) differs: ${r.value.toString().slice(0, 120)}`,
      );
  }
  tt.equal(bad, 0, 'every value, key and header byte-identical');
  const rep = checkDelivery(
    recs,
    [...sent.keys()].map(String),
    (r) => r.headers['kedge-id'].split(':').pop()!,
  );
  tt.same(rep.missing, [], 'nothing missing');
  tt.same(rep.orderViolations, [], 'order per key (device) holds');
  tt.equal(rep.duplicates, 0, 'no duplicates');

  const batches = topicBatches(logDir, topic).filter((b) => !b.control);
  tt.ok(batches.length > 0, `${batches.length} batches in the segment files`);
  const big = Math.max(...batches.map((b) => b.records));
  // 300 events of ~255 bytes are over 64 KiB: an LZ4 frame of several blocks (a forwarder batch of 2,000 spreads over the partitions).
  tt.ok(big >= Math.min(sent.size, 300), `large batches were sent (largest: ${big} records)`);
  tt.same(
    [...new Set(batches.map((b) => b.codec))],
    [compression],
    `the broker stored every batch as ${compression}`,
  );
  tt.equal(
    batches.reduce((s, b) => s + b.records, 0),
    sent.size,
    'the batches hold every record',
  );
}

for (const compression of CODECS) {
  t.test(
    `KEDGE_COMPRESSION=${compression}: kcat reads every event byte for byte, in order, stored as ${compression}`,
    async (tt) => {
      const topic = `codecs.${compression}`;
      await createTopic(kafka.bootstrap, topic, 3, 1);
      const sent = await forward(tt, compression, topic, EVENTS);
      await verify(tt, topic, compression, sent);
    },
  );
}

t.test('the single executable carries snappy and lz4', async (tt) => {
  ensureBuilt(); // a no-op when dist/ is newer than the sources (build.test.ts runs first)
  const exe = artifactsFor(process.arch === 'arm64' ? 'arm64' : 'x64').exe;
  for (const compression of ['snappy', 'lz4'] as const) {
    const topic = `codecs.exe.${compression}`;
    await createTopic(kafka.bootstrap, topic, 1, 1);
    const sent = await forward(tt, compression, topic, 500, [exe]);
    await verify(tt, topic, compression, sent);
  }
});
