/**
 * The linux-arm64 single executable, run the way a device would run it, under
 * qemu-user on this x64 machine (`qemu-aarch64-static -L /usr/aarch64-linux-gnu`):
 * `version` reports arm64; a real run ingests 1,000 events over HTTP into the
 * real broker on the host, verified with kcat; and the wasm storage driver
 * (node-sqlite3-wasm, embedded as a SEA asset) works inside it, across a restart.
 */
import t from 'tap';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { startKafka, type KafkaCluster } from '../scripts/kafka/kafka.ts';
import { consume } from './helpers/kcat.ts';
import { cleanup, freeLoopbackPort, post, tempDir } from './helpers/agent.ts';
import { checkDelivery } from './helpers/verify.ts';
import {
  PKG,
  arm64Unavailable,
  artifactsFor,
  elfMachine,
  ensureBuilt,
  runExe,
  startExe,
  waitDrained,
} from './helpers/exe.ts';

const missing = arm64Unavailable();
if (missing) {
  t.fail(`cannot run the arm64 executable here: ${missing}`);
} else {
  ensureBuilt();
  const { exe } = artifactsFor('arm64');
  const dir = tempDir('kedge-arm64-test-');
  t.teardown(() => cleanup(dir));

  t.test('an AArch64 ELF that reports arm64', async (tt) => {
    tt.equal(elfMachine(exe), 'arm64');
    const size = statSync(exe).size;
    const gz = gzipSync(readFileSync(exe), { level: 6 }).length;
    tt.comment(
      `kedge-linux-arm64: ${(size / 2 ** 20).toFixed(1)} MiB, gzip -6 ${(gz / 2 ** 20).toFixed(1)} MiB`,
    );
    const r = runExe('arm64', exe, ['version'], { cwd: dir });
    tt.equal(r.status, 0, r.stderr);
    tt.match(r.stdout, new RegExp(`^kedge ${PKG.version.replace(/\./g, '\\.')}$`, 'm'));
    tt.match(r.stdout, new RegExp(`^node v${PKG.nodeVersion.replace(/\./g, '\\.')}$`, 'm'));
    tt.match(r.stdout, /^arch linux-arm64$/m);
    tt.match(r.stdout, /^storage .*sqlite.*wasm/m);
  });

  t.test('real runs against the broker on the host', async (tt) => {
    const kafka: KafkaCluster = await startKafka({ brokers: 1 });
    tt.teardown(() => kafka.stop());

    await tt.test('1,000 events over HTTP reach Kafka (node:sqlite driver)', async (st) => {
      const agent = await startExe('arm64', exe, {
        port: await freeLoopbackPort(),
        env: {
          KEDGE_DATA_DIR: join(dir, 'sqlite'),
          KEDGE_KAFKA_BROKERS: kafka.bootstrap,
          KEDGE_TOPIC_PREFIX: 'arm64.',
          KEDGE_AGENT_ID: 'arm64-sqlite',
        },
      });
      st.teardown(() => agent.stop());
      const sent = new Map<number, { key: string; value: string }>();
      // 500 in NDJSON batches of 50, 500 as single requests (8 in flight)
      for (let b = 0; b < 10; b++) {
        const lines = Array.from({ length: 50 }, (_, i) =>
          JSON.stringify({ b, i, dev: `dev-${b % 4}` }),
        );
        const r = await post(
          `${agent.base}/v1/topics/events?key=dev-${b % 4}`,
          lines.join('\n'),
          'application/x-ndjson',
        );
        st.equal(r.status, 200);
        for (const [i, value] of lines.entries())
          sent.set(r.body.first_seq + i, { key: `dev-${b % 4}`, value });
      }
      let next = 0;
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          while (next < 500) {
            const i = next++;
            const value = JSON.stringify({ single: i, dev: `dev-${i % 4}` });
            const r = await post(
              `${agent.base}/v1/topics/events?key=dev-${i % 4}`,
              value,
              'application/json',
            );
            if (r.status !== 200) throw new Error(`status ${r.status}`);
            sent.set(r.body.first_seq, { key: `dev-${i % 4}`, value });
          }
        }),
      );
      st.equal(sent.size, 1000, '1,000 events acknowledged');
      await waitDrained(agent.base, 180_000);
      const recs = await consume(kafka.bootstrap, 'arm64.events', {
        expect: 1000,
        timeoutMs: 60_000,
      });
      st.equal(recs.length, 1000, 'kcat reads 1,000 records');
      const bad = recs.filter((r) => {
        const seq = Number(r.headers['kedge-id']?.split(':').pop());
        const e = sent.get(seq);
        return (
          !r.headers['kedge-id']?.startsWith('arm64-sqlite:') ||
          !e ||
          e.value !== r.value.toString() ||
          e.key !== r.key?.toString()
        );
      });
      st.equal(bad.length, 0, 'each record is the event sent, with its key and kedge-id');
      const rep = checkDelivery(
        recs,
        [...sent.keys()].map(String),
        (r) => r.headers['kedge-id'].split(':').pop()!,
      );
      st.same(rep.missing, [], 'nothing missing');
      st.same(rep.orderViolations, [], 'order per key holds');
      st.ok(
        agent.logs().some((l) => l.msg === 'kedge running' && l.arch === 'arm64'),
        'the agent ran as arm64',
      );
      st.equal((await agent.stop()).code, 0, 'clean exit on SIGTERM');
    });

    await tt.test(
      'the wasm driver works inside the arm64 executable, across a restart',
      async (st) => {
        const data = join(dir, 'wasm');
        const env = {
          KEDGE_DATA_DIR: data,
          KEDGE_KAFKA_BROKERS: kafka.bootstrap,
          KEDGE_TOPIC_PREFIX: 'arm64wasm.',
          KEDGE_AGENT_ID: 'arm64-wasm',
          KEDGE_STORAGE: 'wasm',
        };
        const values: string[] = [];
        for (const round of [0, 1]) {
          const agent = await startExe('arm64', exe, { port: await freeLoopbackPort(), env });
          st.ok(
            agent.logs().some((l) => l.msg === 'log open' && l.storage === 'wasm'),
            `round ${round}: log opened with the wasm driver`,
          );
          const lines = Array.from({ length: 100 }, (_, i) => JSON.stringify({ round, i }));
          const r = await post(
            `${agent.base}/v1/topics/w?key=k`,
            lines.join('\n'),
            'application/x-ndjson',
          );
          st.equal(r.status, 200);
          st.equal(
            r.body.first_seq,
            round * 100 + 1,
            `round ${round}: seq continues from the log on disk`,
          );
          values.push(...lines);
          await waitDrained(agent.base, 120_000);
          st.equal((await agent.stop()).code, 0);
        }
        const recs = await consume(kafka.bootstrap, 'arm64wasm.w', {
          expect: 200,
          timeoutMs: 60_000,
        });
        st.same(
          recs.map((r) => r.value.toString()),
          values,
          '200 events in Kafka, in order',
        );
      },
    );
  });
}
