/**
 * A batch crossing to the Kafka thread (agent/kafka/packed-records.ts): what arrives
 * is the batch that was sent — every key, value, topic, timestamp and header, byte for
 * byte and in order, keyless records and empty values included — and its keys and
 * values share one transferred buffer (no allocation per event on arrival).
 */
import t from 'tap';
import { MessageChannel, receiveMessageOnPort } from 'node:worker_threads';
import { pack, unpack, type PackedRecords } from '../agent/kafka/packed-records.ts';
import type { OutRecord } from '../agent/kafka/record-sink.ts';

function records(n: number): OutRecord[] {
  return Array.from({ length: n }, (_, i) => ({
    topic: i % 3 === 0 ? 'plant.temp' : 'plant.ünïcode',
    key: i % 4 === 0 ? null : Buffer.from(`k${i % 7}`),
    value: i % 5 === 0 ? Buffer.alloc(0) : Buffer.from(JSON.stringify({ i, pad: 'x'.repeat(i) })),
    timestamp: 1_760_000_000_000 + i,
    headers: { 'kedge-id': `a:${i + 1}`, 'kedge-ingest-ts': String(1_760_000_000_000 + i) },
  }));
}

/** Through a real MessagePort with the transfer list, as the Kafka thread receives it. */
function cross(batch: OutRecord[]): OutRecord[] {
  const { port1, port2 } = new MessageChannel();
  const { packed, transfer } = pack(batch);
  port1.postMessage(packed, transfer);
  const got = receiveMessageOnPort(port2)!.message as PackedRecords;
  port1.close();
  return unpack(got);
}

t.test('the batch arrives unchanged, in order', async (t) => {
  const sent = records(500);
  const expected = sent.map((r) => ({
    ...r,
    key: r.key && Buffer.from(r.key),
    value: Buffer.from(r.value),
  }));
  const got = cross(sent);
  t.equal(got.length, 500);
  for (let i = 0; i < got.length; i++) {
    const g = got[i];
    const e = expected[i];
    if (
      g.topic !== e.topic ||
      g.timestamp !== e.timestamp ||
      !g.value.equals(e.value) ||
      (e.key === null ? g.key !== null : !g.key?.equals(e.key)) ||
      JSON.stringify(g.headers) !== JSON.stringify(e.headers)
    ) {
      t.fail(`record ${i} differs: ${JSON.stringify(g)} vs ${JSON.stringify(e)}`);
      return;
    }
  }
  t.ok(
    got.every((r) => Buffer.isBuffer(r.value) && (r.key === null || Buffer.isBuffer(r.key))),
    'keys and values are Buffers, as the clients expect',
  );
  const buffers = new Set(got.flatMap((r) => [r.value.buffer, ...(r.key ? [r.key.buffer] : [])]));
  t.equal(buffers.size, 1, 'all keys and values are views into one buffer');
  t.same(
    sent.map((r) => r.value.byteLength),
    expected.map((r) => r.value.byteLength),
    'the sent records are left as they were',
  );
});

t.test('an empty batch', async (t) => {
  t.same(cross([]), []);
});
