/**
 * /metrics after a known workload: exact counter values per topic and source, the whole
 * text parses as Prometheus exposition (with a parser nobody here wrote), names follow the
 * conventions and every kedge metric is in docs/operations.md's table. Logs: no line per event.
 */
import t from 'tap';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { request } from 'undici';
import { startKafka } from '../scripts/kafka/kafka.ts';
import { consume } from './helpers/kcat.ts';
import { AgentProc, REPO, cleanup, post, tempDir } from './helpers/agent.ts';
import { createLogger } from '../agent/observe/logger.ts';

/** parse-prometheus-text-format's output (prom2json's shape); it has no type declarations. */
interface PromSample {
  labels?: Record<string, string>;
  value?: string;
  buckets?: Record<string, string>;
  count?: string;
  sum?: string;
}
interface PromFamily {
  name: string;
  help: string;
  type: 'COUNTER' | 'GAUGE' | 'HISTOGRAM' | 'SUMMARY' | 'UNTYPED';
  metrics: PromSample[];
}
const parsePrometheus = createRequire(import.meta.url)('parse-prometheus-text-format') as (
  text: string,
) => PromFamily[];

const TOKEN = 'metrics-test-token-6f2c1a';
const kafka = await startKafka({ brokers: 1 });
const dir = tempDir();
const agent = await AgentProc.start({
  env: {
    KEDGE_DATA_DIR: dir,
    KEDGE_KAFKA_BROKERS: kafka.bootstrap,
    KEDGE_TOPIC_PREFIX: 'met.',
    KEDGE_HTTP_TOKEN: TOKEN,
  },
});
t.teardown(async () => {
  await agent.stop();
  await kafka.stop();
  cleanup(dir);
});

// The workload: 1,234 events on three topics, keyed, in requests of at most 100 events.
const WORKLOAD: Record<string, number> = { alpha: 500, beta: 400, gamma: 334 };
const KEY = 'dev-7';
const expected = new Map<string, { events: number; bytes: number }>();

async function scrape(): Promise<{
  text: string;
  families: Map<string, PromFamily>;
  contentType: string;
}> {
  const r = await request(`${agent.base}/metrics`);
  const text = await r.body.text();
  const families = new Map(parsePrometheus(text).map((f) => [f.name, f]));
  return { text, families, contentType: String(r.headers['content-type']) };
}

function sample(
  f: PromFamily | undefined,
  labels: Record<string, string> = {},
): PromSample | undefined {
  return f?.metrics.find(
    (m) =>
      Object.entries(labels).every(([k, v]) => m.labels?.[k] === v) &&
      Object.keys(m.labels ?? {}).length === Object.keys(labels).length,
  );
}

function value(f: PromFamily | undefined, labels: Record<string, string> = {}): number {
  const s = sample(f, labels);
  return s?.value === undefined ? NaN : Number(s.value);
}

t.test('a known workload: exact counters per topic and source', async (tt) => {
  for (const [topic, n] of Object.entries(WORKLOAD)) {
    let bytes = 0;
    for (let i = 0; i < n; i += 100) {
      const lines = Array.from({ length: Math.min(100, n - i) }, (_, j) =>
        JSON.stringify({ topic, n: i + j, pad: 'x'.repeat((i + j) % 17) }),
      );
      for (const l of lines) bytes += Buffer.byteLength(l) + KEY.length;
      const r = await post(
        `${agent.base}/v1/topics/${topic}?key=${KEY}`,
        lines.join('\n'),
        'application/x-ndjson',
        { authorization: `Bearer ${TOKEN}` },
      );
      tt.equal(r.status, 200, 'accepted');
    }
    expected.set(topic, { events: n, bytes });
  }
  await agent.waitDrained(60_000);

  const { families, contentType } = await scrape();
  tt.match(contentType, /^text\/plain; version=0\.0\.4/, 'Prometheus text content type');
  let totalEvents = 0;
  let totalBytes = 0;
  let kafkaEvents = 0;
  for (const [topic, e] of expected) {
    totalEvents += e.events;
    totalBytes += e.bytes;
    tt.equal(
      value(families.get('kedge_ingested_events_total'), { source: 'http', topic }),
      e.events,
      `ingested events of ${topic}`,
    );
    tt.equal(
      value(families.get('kedge_ingested_bytes_total'), { source: 'http', topic }),
      e.bytes,
      `ingested bytes of ${topic}`,
    );
    tt.equal(
      value(families.get('kedge_forwarded_events_total'), { topic }),
      e.events,
      `forwarded events of ${topic}`,
    );
    tt.equal(
      value(families.get('kedge_forwarded_bytes_total'), { topic }),
      e.bytes,
      `forwarded bytes of ${topic}`,
    );
    const recs = await consume(kafka.bootstrap, `met.${topic}`, {
      expect: e.events,
      timeoutMs: 30_000,
    });
    tt.equal(
      recs.length,
      value(families.get('kedge_forwarded_events_total'), { topic }),
      `kcat reads as many records of met.${topic} as the counter says`,
    );
    tt.equal(
      recs.reduce((n, r) => n + (r.key?.length ?? 0) + r.value.length, 0),
      value(families.get('kedge_forwarded_bytes_total'), { topic }),
      `the key and value bytes kcat reads of met.${topic} are what the bytes counter says`,
    );
    kafkaEvents += recs.length;
  }
  tt.equal(totalEvents, kafkaEvents, 'every event sent is in Kafka, no more');
  tt.equal(value(families.get('kedge_backlog_events')), 0, 'backlog empty');
  tt.equal(value(families.get('kedge_backlog_bytes')), 0);
  tt.equal(
    value(families.get('kedge_backlog_lane_events'), { lane: 'bulk' }),
    0,
    'bulk lane empty',
  );
  tt.equal(
    value(families.get('kedge_backlog_lane_events'), { lane: 'priority' }),
    0,
    'priority lane empty',
  );
  tt.equal(value(families.get('kedge_oldest_unforwarded_age_seconds')), 0, 'no oldest event');
  tt.equal(value(families.get('kedge_link_state'), { state: 'up' }), 1, 'link up');
  tt.equal(value(families.get('kedge_link_state'), { state: 'down' }), 0, 'not down');
  tt.same(
    families.get('kedge_dead_letters_total')?.metrics,
    [],
    'no dead-letter series (nothing refused)',
  );
  tt.equal(value(families.get('kedge_dead_letter_events')), 0);
  tt.ok(value(families.get('kedge_disk_bytes')) > 0, 'disk use reported');
  tt.ok(
    value(families.get('kedge_disk_quota_bytes')) === 1024 ** 3,
    'the default quota, 1GiB, in bytes',
  );

  // Histograms: every batch Kafka acknowledged is observed once, so the sums are the workload.
  const batchEvents = sample(families.get('kedge_send_batch_events'));
  const batchBytes = sample(families.get('kedge_send_batch_bytes'));
  tt.equal(Number(batchEvents?.sum), totalEvents, 'batch sizes add up to the events forwarded');
  tt.equal(Number(batchBytes?.sum), totalBytes, 'batch bytes add up to the bytes forwarded');
  tt.equal(
    Number(batchEvents?.count),
    Number(sample(families.get('kedge_send_duration_seconds'))?.count),
    'one send latency per batch',
  );
  tt.ok(
    Number(sample(families.get('kedge_commit_duration_seconds'))?.count) >= 13,
    'commit latency observed for every commit',
  );
  tt.ok(value(families.get('kedge_process_resident_memory_bytes')) > 0, 'process metrics');
});

t.test(
  'the whole text is Prometheus exposition; names follow the conventions and are documented',
  async (tt) => {
    const { text, families } = await scrape();
    tt.ok(families.size > 20, `${families.size} metric families parsed`);
    // The parser throws on a malformed line. It merges a histogram's label sets into one entry, so
    // completeness is checked by name: every sample line belongs to a family it returned, with its type.
    const orphans = text
      .split('\n')
      .filter((l) => l !== '' && !l.startsWith('#'))
      .filter((l) => {
        const name = l.split(/[{ ]/)[0];
        const base = name.replace(/_(bucket|sum|count)$/, '');
        return !families.has(name) && families.get(base)?.type !== 'HISTOGRAM';
      });
    tt.same(orphans, [], 'every sample line belongs to a parsed family');
    tt.ok(
      /^# TYPE /m.test(text) && [...families.values()].every((f) => f.type !== 'UNTYPED'),
      'every family has a TYPE',
    );

    const readme = readFileSync(join(REPO, 'docs/operations.md'), 'utf8');
    for (const f of families.values()) {
      tt.match(f.name, /^kedge_[a-z0-9_]+$/, `${f.name}: kedge_ prefix, snake case`);
      // Process and Node.js metrics are prom-client's defaults (names not ours), documented as a group.
      if (/^kedge_(process|nodejs)_/.test(f.name)) continue;
      if (f.type === 'COUNTER') tt.match(f.name, /_total$/, `${f.name}: a counter ends in _total`);
      else tt.notMatch(f.name, /_total$/, `${f.name}: only counters end in _total`);
      tt.notMatch(f.name, /_(ms|milliseconds|kb|kib|mb|minutes)(_|$)/, `${f.name}: base units`);
      tt.ok(f.help.length > 0, `${f.name} has help text`);
      tt.ok(
        readme.includes(`\`${f.name}\``),
        `${f.name} is in the metrics table of docs/operations.md`,
      );
    }
  },
);

t.test('logs: no line per event at info, no secret', async (tt) => {
  // 1,234 events and their forwarding left a handful of lines (start, link up), not one per event.
  const info = agent.lines.filter((l) => /"level":"info"/.test(l));
  tt.ok(info.length < 20, `${info.length} info lines for 1,234 events`);
  tt.notOk(
    agent.lines.some((l) => l.includes('"pad"')),
    'no event content in the logs',
  );
  tt.notOk(
    agent.lines.some((l) => l.includes(TOKEN)),
    'the token never appears',
  );

  // Defence in depth: secret-looking fields are redacted by name whatever logs them.
  const out = new PassThrough();
  let text = '';
  out.on('data', (d: Buffer) => (text += d.toString()));
  const log = createLogger('info', out);
  log.info(
    {
      password: 'pw-1',
      cfg: { http: { token: 'tok-2' }, kafka: { sasl: { password: 'pw-3' } } },
      headers: { authorization: 'Bearer tok-4' },
    },
    'secrets',
  );
  await new Promise((r) => setImmediate(r));
  tt.match(text, /"msg":"secrets"/);
  for (const s of ['pw-1', 'tok-2', 'pw-3', 'tok-4']) tt.notOk(text.includes(s), `${s} redacted`);
});
