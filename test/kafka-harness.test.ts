// The Kafka test harness itself: a real broker from scripts/kafka, kafkajs producing the way
// kedge does (idempotent, acks=all), kcat reading back byte for byte, and no JVM left behind.
import t from 'tap';
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { CompressionTypes, Kafka, logLevel } from 'kafkajs';
import type { Message } from 'kafkajs';
import { createTopic, startKafka } from '../scripts/kafka/kafka.ts';
import { consume, kcatProduce, parseKcatHeaders } from './helpers/kcat.ts';
import type { KcatRecord } from './helpers/kcat.ts';
import { findProcesses, pidAlive } from './helpers/proc.ts';

const started = Date.now();
const kafka = await startKafka({ brokers: 1 });
t.comment(
  `Kafka ${kafka.version} (1 broker) ready in ${Date.now() - started} ms at ${kafka.bootstrap}`,
);
t.teardown(() => kafka.stop());

const client = new Kafka({
  clientId: 'kedge-harness-test',
  brokers: kafka.bootstrap.split(','),
  logLevel: logLevel.ERROR,
});

t.test('kcat %h header text parses, commas in values included', async (tt) => {
  tt.same(parseKcatHeaders(''), []);
  tt.same(parseKcatHeaders('a=1'), [['a', '1']]);
  tt.same(parseKcatHeaders('a=1,b=two,three,c=x=y,d='), [
    ['a', '1'],
    ['b', 'two,three'],
    ['c', 'x=y'],
    ['d', ''],
  ]);
});

// Bytes kcat's output framing uses, so the parser must rely on the lengths, not on scanning.
const nasty = Buffer.from([0x00, 0x0a, 0x0d, 0x1e, 0x1f, 0x1d, 0x0a, 0xff, 0x20, 0x2c, 0x3d]);

t.test(
  '1000 binary records from an idempotent kafkajs producer read back exactly by kcat',
  async (tt) => {
    const topic = 'harness.binary';
    const keys: (Buffer | null)[] = Array.from({ length: 20 }, (_, i) =>
      Buffer.concat([Buffer.from([i]), nasty.subarray(0, i % nasty.length), randomBytes(i % 7)]),
    );
    keys.push(null);
    interface Sent {
      key: Buffer | null;
      value: Buffer;
      headers: Record<string, string>;
    }
    const sent: Sent[] = [];
    for (let i = 0; i < 1000; i++) {
      const key = keys[i % keys.length];
      const value =
        i % 97 === 0
          ? Buffer.alloc(0)
          : Buffer.concat([randomBytes(i % 300), nasty, randomBytes(i % 13)]);
      const headers: Record<string, string> = { 'kedge-id': `harness-agent:${i}`, seq: String(i) };
      if (i % 3 === 0) headers['mqtt-topic'] = `plant/${i % 5}/temp,raw`;
      sent.push({ key, value, headers });
    }

    const producer = client.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: true,
    });
    await producer.connect();
    try {
      // Batches of 50, alternating gzip and no compression; the topic is auto-created.
      for (let b = 0; b < sent.length / 50; b++) {
        const messages: Message[] = sent
          .slice(b * 50, b * 50 + 50)
          .map((s) => ({ key: s.key, value: s.value, headers: s.headers }));
        await producer.send({
          topic,
          acks: -1,
          compression: b % 2 === 0 ? CompressionTypes.GZIP : CompressionTypes.None,
          messages,
        });
      }
    } finally {
      await producer.disconnect();
    }

    const admin = client.admin();
    await admin.connect();
    const md = await admin.fetchTopicMetadata({ topics: [topic] });
    await admin.disconnect();
    tt.equal(md.topics[0].partitions.length, 3, 'auto-created topics get 3 partitions');

    const recs = await consume(kafka.bootstrap, topic, { expect: 1000, timeoutMs: 60_000 });
    tt.equal(recs.length, 1000, 'kcat read all 1000 records');
    tt.ok(new Set(recs.map((r) => r.partition)).size > 1, 'records spread over several partitions');

    let bad = 0;
    const seen = new Set<number>();
    const byKey = new Map<string, KcatRecord[]>();
    for (const r of recs) {
      const seq = Number(r.headers.seq);
      const exp = sent[seq];
      seen.add(seq);
      const ok =
        exp !== undefined &&
        r.topic === topic &&
        (exp.key === null ? r.key === null : r.key !== null && exp.key.equals(r.key)) &&
        exp.value.equals(r.value) &&
        JSON.stringify(r.headers) === JSON.stringify(exp.headers) &&
        r.timestamp > started - 60_000;
      if (!ok && bad++ < 5)
        tt.fail(`record seq ${seq} differs`, {
          got: { key: r.key?.toString('hex'), value: r.value.toString('hex'), headers: r.headers },
          exp: exp && {
            key: exp.key?.toString('hex'),
            value: exp.value.toString('hex'),
            headers: exp.headers,
          },
        });
      const k = r.key === null ? 'null' : r.key.toString('hex');
      byKey.set(k, [...(byKey.get(k) ?? []), r]);
    }
    tt.equal(bad, 0, 'keys, values and headers byte-identical');
    tt.equal(seen.size, 1000, 'every record exactly once');

    let orderErrors = 0;
    for (const [k, list] of byKey) {
      if (k === 'null') continue; // records without a key have no partition affinity
      if (new Set(list.map((r) => r.partition)).size !== 1) orderErrors++;
      const seqs = [...list].sort((a, b) => a.offset - b.offset).map((r) => Number(r.headers.seq));
      if (seqs.some((s, i) => i > 0 && s <= seqs[i - 1])) orderErrors++;
    }
    tt.equal(byKey.size, 21, '20 keys plus the null key');
    tt.equal(orderErrors, 0, 'each key in one partition, in send order');
  },
);

t.test('a record with several headers, read back by kcat', async (tt) => {
  const topic = 'harness.headers';
  await createTopic(kafka.bootstrap, topic, 1);
  const producer = client.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const headers = {
    'kedge-id': 'edge-7:42',
    'kedge-ingest-ts': '1790000000000',
    'mqtt-topic': 'site/a b/c',
    empty: '',
    'utf-8': 'grüße ✓',
  };
  await producer.send({ topic, acks: -1, messages: [{ key: 'k', value: 'v', headers }] });
  await producer.disconnect();
  const [r] = await consume(kafka.bootstrap, topic, { timeoutMs: 30_000 });
  tt.ok(r, 'one record');
  tt.same(r.headerList, Object.entries(headers), 'headers in order, values exact');
  tt.equal(
    r.headersRaw,
    Object.entries(headers)
      .map(([k, v]) => `${k}=${v}`)
      .join(','),
    "kcat's %h is n=v joined by ','",
  );
  tt.equal(r.key?.toString(), 'k');
  tt.equal(r.partition, 0);
  tt.equal(r.offset, 0);
});

t.test('consume returns [] for a topic that never appears, after its timeout', async (tt) => {
  const t0 = Date.now();
  tt.same(await consume(kafka.bootstrap, 'harness.never', { timeoutMs: 1500 }), []);
  tt.same(await consume(kafka.bootstrap, 'harness.never', { expect: 1, timeoutMs: 1500 }), []);
  tt.ok(Date.now() - t0 < 10_000, 'bounded by the timeouts');
});

t.test('kcatProduce (the librdkafka baseline) writes what consume reads', async (tt) => {
  const records = Array.from({ length: 200 }, (_, i) => ({
    key: i % 4 === 0 ? null : `k${i % 4}`,
    value: `value ${i}\n,=`,
  }));
  const res = await kcatProduce(kafka.bootstrap, 'harness.kcat', records, {
    compression: 'gzip',
    headers: { src: 'kcat' },
  });
  tt.equal(res.count, 200);
  const recs = await consume(kafka.bootstrap, 'harness.kcat', { expect: 200, timeoutMs: 30_000 });
  tt.equal(recs.length, 200);
  const got = new Map(recs.map((r) => [r.value.toString(), r]));
  tt.ok(
    records.every((x) => {
      const r = got.get(x.value);
      return (
        r &&
        (x.key === null ? r.key === null : r.key?.toString() === x.key) &&
        r.headers.src === 'kcat'
      );
    }),
    'keys (null ones too), values, header',
  );
  await tt.rejects(
    kcatProduce(kafka.bootstrap, 'harness.kcat', [{ value: Buffer.from([0x41, 0x1e]) }]),
    { code: 'KCAT_DELIM' },
  );
});

t.test('a broker killed with SIGKILL restarts on the same port with its data', async (tt) => {
  const node = kafka.nodes[0];
  const oldPid = node.pid!;
  await kafka.killNode(node.id);
  tt.notOk(pidAlive(oldPid), 'old JVM gone');
  const t0 = Date.now();
  await kafka.startNode(node.id);
  tt.comment(`restart after SIGKILL took ${Date.now() - t0} ms`);
  tt.not(node.pid, oldPid, 'a new JVM');
  const recs = await consume(kafka.bootstrap, 'harness.binary', {
    expect: 1000,
    timeoutMs: 60_000,
  });
  tt.equal(recs.length, 1000, 'acked records survived the kill');
});

t.test('stop() leaves no JVM and no files behind', async (tt) => {
  const pid = kafka.nodes[0].pid!;
  tt.ok(pidAlive(pid), 'broker JVM running before stop');
  tt.ok(findProcesses(kafka.dir).length > 0, 'its command line names the cluster dir');
  await kafka.stop();
  tt.notOk(pidAlive(pid), 'broker JVM gone');
  tt.same(findProcesses(kafka.dir), [], 'no process mentions the cluster dir');
  tt.notOk(fs.existsSync(kafka.dir), 'temp dir removed');
});

t.test(
  '3-node cluster: RF 3, min ISR 2, a killed leader fails over without losing acked records',
  async (tt) => {
    const t0 = Date.now();
    const cluster = await startKafka({ brokers: 3 });
    tt.teardown(() => cluster.stop());
    tt.comment(`3 nodes ready in ${Date.now() - t0} ms at ${cluster.bootstrap}`);
    tt.equal(cluster.nodes.length, 3);
    tt.equal(cluster.bootstrap.split(',').length, 3);

    const topic = 'harness.replicated';
    tt.equal(await createTopic(cluster.bootstrap, topic, 3), true, 'created');
    const c = new Kafka({
      clientId: 'kedge-harness-3',
      brokers: cluster.bootstrap.split(','),
      logLevel: logLevel.NOTHING,
      retry: { retries: 30, maxRetryTime: 1000 },
    });
    const admin = c.admin();
    await admin.connect();
    const md = await admin.fetchTopicMetadata({ topics: [topic] });
    tt.ok(
      md.topics[0].partitions.every((p) => p.replicas.length === 3 && p.isr.length === 3),
      'three in-sync replicas per partition',
    );
    const configs = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [
        {
          type: 2 /* TOPIC */,
          name: topic,
          configNames: ['min.insync.replicas', 'unclean.leader.election.enable'],
        },
      ],
    });
    const cfg = Object.fromEntries(
      configs.resources[0].configEntries.map((e) => [e.configName, e.configValue]),
    );
    tt.same(cfg, { 'min.insync.replicas': '2', 'unclean.leader.election.enable': 'false' });
    await admin.disconnect();

    const producer = c.producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const send = (from: number, n: number) =>
      producer.send({
        topic,
        acks: -1,
        compression: CompressionTypes.GZIP,
        messages: Array.from({ length: n }, (_, i) => ({
          key: `k${(from + i) % 6}`,
          value: String(from + i),
        })),
      });
    await send(0, 300);
    const leader = md.topics[0].partitions[0].leader;
    const deadPid = cluster.nodes.find((n) => n.id === leader)!.pid!;
    await cluster.killNode(leader);
    const t1 = Date.now();
    await send(300, 300);
    tt.comment(`send after killing leader ${leader} took ${Date.now() - t1} ms`);
    await producer.disconnect();

    const recs = await consume(cluster.bootstrap, topic, { expect: 600, timeoutMs: 60_000 });
    tt.equal(recs.length, 600, 'every acknowledged record is there once');
    const last = new Map<string, number>();
    let order = 0;
    for (const r of recs) {
      const k = r.key!.toString();
      const v = Number(r.value.toString());
      if ((last.get(k) ?? -1) > v) order++;
      last.set(k, v);
    }
    tt.equal(order, 0, 'per-key order across the failover');

    await cluster.startNode(leader);
    tt.ok(cluster.nodes.find((n) => n.id === leader)!.running, 'restarted');
    await cluster.stopNode(leader);
    tt.notOk(cluster.nodes.find((n) => n.id === leader)!.running, 'stopped with SIGTERM');
    const pids = cluster.nodes.map((n) => n.pid!);
    await cluster.stop();
    tt.ok(
      [deadPid, ...pids].every((p) => !pidAlive(p)),
      'no JVM left',
    );
    tt.same(findProcesses(cluster.dir), [], 'no process mentions the cluster dir');
  },
);
