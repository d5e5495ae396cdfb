/**
 * The linux-x64 single executable, not the source: what it is (stripped ELF,
 * SEA fuse flipped, size), what it says (`version`), how it refuses a broken
 * env file (`check-config`, exit 2), and the end-to-end HTTP → Kafka run
 * against a real broker, read back by kcat, with both storage drivers.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { build as esbuild } from 'esbuild';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { startKafka, type KafkaCluster } from '../scripts/kafka/kafka.ts';
import { SEA_FUSE } from '../scripts/build/layout.ts';
import { staticRequirePlugin } from '../scripts/build/bundle.ts';
import { consume } from './helpers/kcat.ts';
import { AgentProc, REPO, cleanup, freeLoopbackPort, post, tempDir } from './helpers/agent.ts';
import { checkDelivery } from './helpers/verify.ts';
import { Mosquitto } from './helpers/mosquitto.ts';
import { waitFor } from './helpers/proc.ts';
import { PKG, artifactsFor, elfMachine, ensureBuilt, hasCommand, runExe } from './helpers/exe.ts';

const dir = tempDir('kedge-build-test-');
t.teardown(() => cleanup(dir));

t.test(
  'bundling: a createRequire with literal requires becomes bundled requires; computed names are left alone',
  async (tt) => {
    const src = join(dir, 'plugin-src');
    mkdirSync(src);
    const head =
      "import { createRequire } from 'node:module';\nconst require = createRequire(import.meta.url);\n";
    writeFileSync(
      join(src, 'literal.ts'),
      `${head}const k = require('kafkajs');\nexport const ok = typeof k.Kafka;\n`,
    );
    writeFileSync(
      join(src, 'computed.ts'),
      `${head}const NAME = 'kafkajs';\nexport const k = require(NAME);\n`,
    );
    for (const [file, expectPatched] of [
      ['literal.ts', true],
      ['computed.ts', false],
    ] as const) {
      const patched: string[] = [];
      const r = await esbuild({
        entryPoints: [join(src, file)],
        bundle: true,
        write: false,
        platform: 'node',
        format: 'cjs',
        logLevel: 'silent',
        nodePaths: [join(REPO, 'node_modules')],
        plugins: [staticRequirePlugin(patched, src)],
        define: { 'import.meta.url': '"file:///x.js"' },
      });
      const out = r.outputFiles[0].text;
      tt.equal(
        patched.length === 1,
        expectPatched,
        `${file}: ${expectPatched ? 'made static' : 'left alone'}`,
      );
      tt.equal(
        out.includes('KafkaJSError'),
        expectPatched,
        `${file}: kafkajs ${expectPatched ? 'inside' : 'not inside'} the bundle`,
      );
      tt.equal(
        /createRequire\)?\(/.test(out),
        !expectPatched,
        `${file}: createRequire ${expectPatched ? 'gone' : 'kept'}`,
      );
    }
  },
);

ensureBuilt();
const { exe } = artifactsFor('x64');

t.test('the executable: stripped x64 ELF with the SEA blob injected', async (tt) => {
  tt.equal(elfMachine(exe), 'x64');
  tt.equal(statSync(exe).mode & 0o777, 0o755);
  const buf = readFileSync(exe);
  const flipped = buf.indexOf(`${SEA_FUSE}:1`);
  tt.ok(
    flipped >= 0 && buf.indexOf(`${SEA_FUSE}:1`, flipped + 1) === -1,
    'the SEA fuse occurs once, flipped',
  );
  tt.equal(buf.indexOf(`${SEA_FUSE}:0`), -1, 'no unflipped fuse left');
  if (hasCommand('readelf')) {
    const sections = spawnSync('readelf', ['-S', '-W', exe], { encoding: 'utf8' }).stdout;
    tt.notMatch(sections, /\.symtab|\.debug_info/, 'stripped: no symbol table, no debug info');
  }
  const gz = gzipSync(buf, { level: 6 }).length;
  tt.comment(
    `kedge-linux-x64: ${(buf.length / 2 ** 20).toFixed(1)} MiB, gzip -6 ${(gz / 2 ** 20).toFixed(1)} MiB`,
  );
  tt.ok(buf.length < 130 * 2 ** 20, 'under 130 MiB');
});

t.test('version reports kedge, Node, architecture and storage drivers', async (tt) => {
  for (const args of [['version'], ['--version']]) {
    // cwd outside the repo and no node on PATH that matters: the executable is self-contained.
    const r = runExe('x64', exe, args, { cwd: dir, env: { PATH: '/nonexistent' } });
    tt.equal(r.status, 0, r.stderr);
    tt.match(r.stdout, new RegExp(`^kedge ${PKG.version.replace(/\./g, '\\.')}$`, 'm'));
    tt.match(
      r.stdout,
      new RegExp(`^node v${PKG.nodeVersion.replace(/\./g, '\\.')}$`, 'm'),
      'the Node of the node devDependency',
    );
    tt.match(r.stdout, /^arch linux-x64$/m);
    tt.match(r.stdout, /^storage .*sqlite \(node:sqlite\).*wasm/m);
    tt.equal(r.stderr, '', 'no warnings on stderr (no SEA or experimental warnings)');
  }
});

t.test('check-config on a broken env file lists every problem and exits 2', async (tt) => {
  const f = join(dir, 'broken.env');
  writeFileSync(
    f,
    [
      'KEDGE_SYNC=sometimes',
      'KEDGE_FORWARD_RATE=fast',
      'KEDGE_DISK_QUOTA=lots',
      'KEDGE_COMPRESSION=rar',
      'KEDGE_SNYC=full',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const r = runExe('x64', exe, ['check-config', '--env-file', f], { cwd: dir });
  tt.equal(r.status, 2);
  for (const name of [
    'KEDGE_SYNC',
    'KEDGE_FORWARD_RATE',
    'KEDGE_DISK_QUOTA',
    'KEDGE_COMPRESSION',
    'KEDGE_SNYC',
  ])
    tt.match(r.stderr, name, `names ${name}`);
  tt.match(r.stderr, /5 problems/);
  tt.notMatch(r.stderr, /\n\s+at /, 'no stack trace');

  writeFileSync(f, 'KEDGE_SYNC=normal\nnot an assignment\n');
  const bad = runExe('x64', exe, ['check-config', '--env-file', f], { cwd: dir });
  tt.equal(bad.status, 2);
  tt.match(bad.stderr, /broken\.env:2/, 'the bad line is named');

  const ok = runExe(
    'x64',
    exe,
    ['check-config', '--env-file', join(import.meta.dirname, '../packaging/kedge.env.example')],
    { cwd: dir },
  );
  tt.equal(ok.status, 0, `the shipped example env file is valid: ${ok.stderr}`);
  tt.match(ok.stdout, /^KEDGE_SYNC=full$/m);
});

t.test('run warns when the env file is readable by others', async (tt) => {
  const f = join(dir, 'loose.env');
  writeFileSync(f, `KEDGE_DATA_DIR=${join(dir, 'loose-data')}\nKEDGE_KAFKA_BROKERS=127.0.0.1:1\n`, {
    mode: 0o644,
  });
  const a = await AgentProc.start({ env: {}, command: [exe], args: ['--env-file', f] });
  const r = await a.stop();
  tt.equal(r.code, 0, 'stops cleanly on SIGTERM');
  tt.ok(
    a.lines.some((l) => /readable by group or others/.test(l) && l.includes('"level":"warn"')),
    'warned about mode 644',
  );
});

t.test('end to end against a real broker', async (tt) => {
  const kafka: KafkaCluster = await startKafka({ brokers: 1 });
  tt.teardown(() => kafka.stop());

  // Both storage drivers with the default client, @platformatic/kafka (its WebAssembly
  // codecs and CRC32C bundled, its native CRC32C add-on left out: scripts/build/bundle.ts),
  // and kafkajs; each runs in the executable's Kafka thread (its bundle a SEA asset).
  const cases = [
    { storage: 'sqlite', client: 'platformatic' },
    { storage: 'wasm', client: 'platformatic' },
    { storage: 'sqlite', client: 'kafkajs' },
  ] as const;
  for (const { storage, client } of cases) {
    await tt.test(
      `HTTP → log → Kafka, byte for byte, storage=${storage}, client=${client}`,
      async (st) => {
        const id = `exe-${storage}-${client}`;
        const data = join(dir, `data-${storage}-${client}`);
        const prefix = `${id}.`;
        const agent = await AgentProc.start({
          command: [exe],
          env: {
            KEDGE_DATA_DIR: data,
            KEDGE_KAFKA_BROKERS: kafka.bootstrap,
            KEDGE_TOPIC_PREFIX: prefix,
            KEDGE_AGENT_ID: id,
            KEDGE_STORAGE: storage,
            KEDGE_KAFKA_CLIENT: client,
          },
        });
        st.teardown(() => agent.stop());
        const n = storage === 'sqlite' ? 1000 : 250; // events per body form
        const expected = new Map<
          number,
          { topic: string; key: string; value: Buffer; headers: Record<string, string> }
        >();
        const url = (p: string) => `${agent.base}${p}`;

        // 1. NDJSON batches of 50, keyed
        for (let r = 0; r < n / 50; r++) {
          const lines = Array.from({ length: 50 }, (_, i) =>
            JSON.stringify({ r, i, dev: `d${r % 4}`, note: 'ünïcødé ✓' }),
          );
          const res = await post(
            url(`/v1/topics/nd?key=d${r % 4}`),
            lines.join('\n') + '\n',
            'application/x-ndjson',
          );
          st.equal(res.status, 200);
          for (const [i, l] of lines.entries())
            expected.set(res.body.first_seq + i, {
              topic: `${prefix}nd`,
              key: `d${r % 4}`,
              value: Buffer.from(l),
              headers: {},
            });
        }
        // 2. single JSON values and 3. raw binary bodies, 8 requests in flight
        const singles = Array.from({ length: 2 * n }, (_, i) => i);
        let next = 0;
        await Promise.all(
          Array.from({ length: 8 }, async () => {
            while (next < singles.length) {
              const i = singles[next++];
              const raw = i % 2 === 1;
              const key = raw ? `r${i % 3}` : `j${i % 5}`;
              const body = raw ? randomBytes(1 + (i % 200)) : Buffer.from(` {"i":${i}} `);
              const res = await post(
                url(`/v1/topics/${raw ? 'raw' : 'js'}?key=${key}`),
                body,
                raw ? 'application/octet-stream' : 'application/json',
              );
              if (res.status !== 200)
                throw new Error(`status ${res.status}: ${JSON.stringify(res.body)}`);
              expected.set(res.body.first_seq, {
                topic: `${prefix}${raw ? 'raw' : 'js'}`,
                key,
                value: body,
                headers: {},
              });
            }
          }),
        );
        // 4. the records envelope with headers
        for (let r = 0; r < n / 50; r++) {
          const recs = Array.from({ length: 50 }, (_, i) => ({
            key: `e${i % 3}`,
            value: { r, i },
            headers: { src: 'envelope', batch: String(r) },
          }));
          const res = await post(
            url('/v1/topics/env'),
            JSON.stringify({ records: recs }),
            'application/json',
          );
          st.equal(res.status, 200);
          for (const [i, x] of recs.entries())
            expected.set(res.body.first_seq + i, {
              topic: `${prefix}env`,
              key: x.key,
              value: Buffer.from(JSON.stringify(x.value)),
              headers: x.headers,
            });
        }
        st.equal(expected.size, 4 * n);

        const status = await agent.waitDrained(180_000);
        st.equal(status.backlog.events, 0, 'drained');
        const got = [];
        for (const topic of ['nd', 'js', 'raw', 'env']) {
          const recs = await consume(kafka.bootstrap, `${prefix}${topic}`, {
            expect: n,
            timeoutMs: 60_000,
          });
          st.equal(recs.length, n, `${prefix}${topic}: ${n} records read by kcat`);
          got.push(...recs);
        }
        let mismatches = 0;
        for (const r of got) {
          const kid = r.headers['kedge-id'] ?? '';
          const seq = Number(kid.slice(kid.lastIndexOf(':') + 1));
          const e = expected.get(seq);
          const ok =
            kid.startsWith(`${id}:`) &&
            e !== undefined &&
            e.topic === r.topic &&
            e.value.equals(r.value) &&
            r.key !== null &&
            r.key.toString() === e.key &&
            Object.entries(e.headers).every(([k, v]) => r.headers[k] === v) &&
            Number(r.headers['kedge-ingest-ts']) === r.timestamp;
          if (!ok && mismatches++ < 3)
            st.fail(`record ${kid} differs: ${r.topic} ${r.value.toString('hex').slice(0, 60)}`);
        }
        st.equal(
          mismatches,
          0,
          'every record byte-identical, with key, headers and ingest timestamp',
        );
        const rep = checkDelivery(
          got,
          [...expected.keys()].map(String),
          (r) => r.headers['kedge-id'].split(':').pop()!,
        );
        st.same(rep.missing, [], 'nothing missing');
        st.same(rep.orderViolations, [], 'order per key holds');
        st.equal(rep.duplicates, 0, 'no duplicates on a clean run');
        st.ok(
          agent.lines.some((l) => l.includes(`"storage":"${storage}"`)),
          `the log was opened with the ${storage} driver`,
        );
        st.ok(
          agent.lines.some((l) => l.includes('"forwarding to Kafka"') && l.includes(`"${client}"`)),
          `forwarding with ${client}`,
        );
        const stop = await agent.stop();
        st.equal(stop.code, 0, 'clean exit on SIGTERM');
      },
    );
  }
});

t.test(
  'MQTT inside the executable: embedded broker and client mode, to Kafka',
  { skip: !hasCommand('mosquitto_pub') && 'apt-get install -y mosquitto mosquitto-clients' },
  async (tt) => {
    const kafka = await startKafka({ brokers: 1 });
    tt.teardown(() => kafka.stop());
    const mosquitto = await Mosquitto.start();
    tt.teardown(() => mosquitto.cleanup());
    const mqttPort = await freeLoopbackPort();
    const agent = await AgentProc.start({
      command: [exe],
      env: {
        KEDGE_DATA_DIR: join(dir, 'mqtt'),
        KEDGE_KAFKA_BROKERS: kafka.bootstrap,
        KEDGE_TOPIC_PREFIX: 'exe-mqtt.',
        KEDGE_MQTT_LISTEN: `127.0.0.1:${mqttPort}`,
        KEDGE_MQTT_URL: mosquitto.url,
        KEDGE_MQTT_TOPICS: 'plant/#',
      },
    });
    tt.teardown(() => agent.stop());
    await waitFor(() => agent.lines.some((l) => l.includes('connected to MQTT broker')), {
      timeoutMs: 30_000,
      what: 'kedge to connect to Mosquitto',
    });
    const pub = (port: number, topic: string, i: number) =>
      spawnSync(
        'mosquitto_pub',
        [
          '-h',
          '127.0.0.1',
          '-p',
          String(port),
          '-q',
          '1',
          '-t',
          topic,
          '-m',
          JSON.stringify({ i }),
        ],
        { encoding: 'utf8', timeout: 30_000 },
      );
    for (let i = 0; i < 5; i++)
      tt.equal(pub(mqttPort, 'sensors/a/temp', i).status, 0, `published ${i} to kedge's broker`);
    await new Promise((r) => setTimeout(r, 1000)); // the SUBSCRIBE follows the CONNACK
    for (let i = 0; i < 5; i++)
      tt.equal(pub(mosquitto.port, 'plant/line1', i).status, 0, `published ${i} to Mosquitto`);
    await agent.waitDrained(120_000);
    const embedded = await consume(kafka.bootstrap, 'exe-mqtt.sensors.a.temp', {
      expect: 5,
      timeoutMs: 60_000,
    });
    tt.same(
      embedded.map((r) => r.value.toString()),
      [0, 1, 2, 3, 4].map((i) => JSON.stringify({ i })),
      'embedded broker: 5 messages in order',
    );
    tt.ok(
      embedded.every(
        (r) =>
          r.headers['mqtt-topic'] === 'sensors/a/temp' && r.key?.toString() === 'sensors/a/temp',
      ),
      'with the MQTT topic as key and header',
    );
    const client = await consume(kafka.bootstrap, 'exe-mqtt.plant.line1', { timeoutMs: 30_000 });
    tt.same(
      client.map((r) => r.value.toString()),
      [0, 1, 2, 3, 4].map((i) => JSON.stringify({ i })),
      'client mode: 5 messages from Mosquitto in order',
    );
  },
);

t.test('the x64 executable starts within the target', async (tt) => {
  const port = await freeLoopbackPort();
  const t0 = Date.now();
  const a = await AgentProc.start({
    port,
    command: [exe],
    env: { KEDGE_DATA_DIR: join(dir, 'start'), KEDGE_KAFKA_BROKERS: '127.0.0.1:1' },
  });
  const ms = Date.now() - t0;
  const rss =
    Number(
      readFileSync(`/proc/${a.child.pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB/m)?.[1] ?? 0,
    ) / 1024;
  tt.comment(`start to ready: ${ms} ms (empty log), RSS after start ${rss.toFixed(0)} MiB`);
  tt.ok(ms < 10_000, 'ready within 10 s even on a loaded machine (target on a device: 1 s)');
  await a.stop();
});
