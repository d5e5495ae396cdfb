/**
 * Routes without Kafka (fast tier): the syntax and its errors (fuzzed through check-config's
 * loader), what each step does (non-JSON values included), and the promise the design rests
 * on: the records are a pure function of the log. However the log is cut into batches, and
 * whatever is restarted from saved state in between (state()/restore(), or a destination's
 * view of a real log closed and opened again, sends failing and acknowledgements lost), the
 * same records come out with the same kedge-ids — duplicates only of an id already delivered.
 */
import t from 'tap';
import fc from 'fast-check';
import { loadConfig, ConfigError, formatConfig, redactedConfig } from '../agent/config.ts';
import { parseEnvFile } from '../agent/env-file.ts';
import { parseRoute, RouteSyntaxError, topicMatcher } from '../agent/route-syntax.ts';
import { RoutePipeline } from '../agent/route/pipeline.ts';
import { DestinationForwardLog } from '../agent/forward/destination-log.ts';
import { openLog } from '../agent/log/index.ts';
import type { StoredEvent } from '../agent/log/types.ts';
import { cleanup, tempDir } from './helpers/agent.ts';

const SEED = Number(process.env.FUZZ_SEED ?? 2026_12_02);
t.comment(`fast-check seed ${SEED} (FUZZ_SEED=${SEED} replays)`);

const ev = (
  seq: number,
  ts: number,
  key: string | null,
  value: unknown,
  topic = 'sensors.a',
): StoredEvent => ({
  seq,
  ts,
  topic,
  key: key === null ? null : Buffer.from(key),
  value: Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)),
  headers: null,
  lane: 'bulk',
});

function run(route: string, events: StoredEvent[], until?: number) {
  const p = new RoutePipeline([parseRoute('r', route)], 'A', 'd');
  const out = p.process(events, 'A');
  const end = until === undefined ? [] : p.advanceTo(until, events.at(-1)?.seq ?? 0).events;
  return {
    values: [...out.events, ...end].map((e) => {
      try {
        return JSON.parse(e.value.toString());
      } catch {
        return e.value.toString();
      }
    }),
    records: [...out.events, ...end],
    filtered: Object.fromEntries(out.filtered),
  };
}

t.test('syntax: a route and every step', async (t) => {
  const r = parseRoute(
    'agg',
    ' sensors.*.temp -> cloud | where temp >= -5 | sample 2 | deadband temp 0.5 max 10m | window 60s mean(temp),max(temp) count() sum(a.b) | select window_start,temp_mean | topic out.minutes',
  );
  t.equal(r.pattern, 'sensors.*.temp');
  t.equal(r.destination, 'cloud');
  t.same(
    r.steps.map((s) => s.kind),
    ['where', 'sample', 'deadband', 'window', 'select', 'topic'],
  );
  t.same(r.steps[2], { kind: 'deadband', field: 'temp', delta: 0.5, maxMs: 600_000 });
  t.same(
    (r.steps[3] as any).aggregates.map((a: any) => a.out),
    ['temp_mean', 'temp_max', 'a_b_sum'],
  );
  const cases: [string, number, RegExp][] = [
    ['sensors.#', 1, /expected "<pattern> -> <destination>"/],
    ['a.#.b -> c', 3, /must be the last segment/],
    ['a b -> c', 1, /not a topic segment/],
    [
      'a -> c | windw 5s',
      10,
      /unknown step "windw" \(expected where, sample, deadband, window, select, topic\)/,
    ],
    ['a -> c | window 5 mean(x)', 17, /has no unit/],
    ['a -> c | window 60s', 20, /at least one aggregate/],
    ['a -> c | window 60s median(x)', 21, /"median" is not an aggregate/],
    ['a -> c | where x ~ 3', 18, /not an operator/],
    ['a -> c | where x = "open', 20, /unterminated string/],
    ['a -> c | sample 0', 17, /at least 1/],
    ['a -> c | deadband t -1', 21, /must not be negative/],
    ['a -> c | select', 16, /select needs fields/],
    ['a -> c | topic bad/topic', 16, /not a valid Kafka topic/],
    ['a -> C', 6, /not a destination name/],
    ['a -> c d', 8, /expected "\|" before a step/],
  ];
  for (const [text, col, re] of cases) {
    try {
      parseRoute('x', text);
      t.fail(`${text} parsed`);
    } catch (e) {
      t.ok(e instanceof RouteSyntaxError, `${text}: a RouteSyntaxError`);
      t.equal((e as RouteSyntaxError).column, col, `${text}: column ${col}`);
      t.match((e as Error).message, re, text);
    }
  }
});

t.test('topic patterns: * one segment, # the rest', async (t) => {
  const m = topicMatcher('sensors.*.temp');
  t.ok(m('sensors.a.temp'));
  t.notOk(m('sensors.a.b.temp'));
  t.notOk(m('sensors.temp'));
  const h = topicMatcher('sensors.#');
  t.ok(h('sensors.a') && h('sensors.a.b.c') && h('sensors'));
  t.notOk(h('other.a'));
  t.ok(topicMatcher('#')('anything.at.all'));
});

t.test(
  'check-config: bad routes and destinations are clear problems, never a crash (fuzzed)',
  async (t) => {
    const base = { KEDGE_DATA_DIR: '/tmp/kedge-routes-unit' };
    const problems = (env: Record<string, string>): string[] => {
      try {
        loadConfig({ ...base, ...env });
        return [];
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        return e.problems;
      }
    };
    t.same(problems({ KEDGE_ROUTE_AGG: 'sensors.# -> cloud | window 60s mean(t)' }), [
      'KEDGE_ROUTE_AGG: at column 14: no destination "cloud" (without KEDGE_DESTINATIONS the one destination is kafka)',
    ]);
    t.same(problems({ KEDGE_ROUTE_AGG: 'sensors.# -> kafka | windw 60s' }), [
      'KEDGE_ROUTE_AGG: at column 22: unknown step "windw" (expected where, sample, deadband, window, select, topic)',
    ]);
    t.same(problems({ KEDGE_DESTINATIONS: 'site,cloud', KEDGE_SITE_KAFKA_BROKERS: 'k1:9092' }), [
      'KEDGE_CLOUD_KAFKA_BROKERS is not set (each destination in KEDGE_DESTINATIONS needs its own brokers, e.g. KEDGE_CLOUD_KAFKA_BROKERS=kafka1:9092)',
    ]);
    t.same(problems({ KEDGE_CLOUD_KAFKA_BROKERS: 'k1:9092' }), [
      'KEDGE_CLOUD_KAFKA_BROKERS is for a destination "cloud", which KEDGE_DESTINATIONS does not list (set KEDGE_DESTINATIONS=cloud, or remove the variable)',
    ]);
    t.match(
      problems({
        KEDGE_DESTINATIONS: 'site',
        KEDGE_SITE_KAFKA_BROKERS: 'k1:9092',
        KEDGE_SITE_FORWARD_RATE: 'fast',
      }),
      [/^KEDGE_SITE_FORWARD_RATE "fast" is not a rate/],
    );
    t.match(problems({ KEDGE_DESTINATIONS: 'Site,a,a' }), [
      /"Site" is not a destination name/,
      /"a" is listed twice/,
    ]);

    // Fuzz: random route strings built from the grammar's pieces and noise.
    const piece = fc.constantFrom(
      'sensors.#',
      '*',
      '#',
      '->',
      '|',
      'kafka',
      'where',
      'sample',
      'deadband',
      'window',
      'select',
      'topic',
      'temp',
      '=',
      '!=',
      '<=',
      '>',
      'exists',
      '60s',
      '0',
      '-1',
      '2',
      'max',
      'mean(temp)',
      'count()',
      'sum(',
      '"x',
      '"a|b"',
      ',',
      'a.b',
      '..',
      'ü',
      '\t',
    );
    const routeText = fc.oneof(
      fc.array(piece, { maxLength: 12 }).map((xs) => xs.join(' ')),
      fc.string({ maxLength: 40 }),
    );
    fc.assert(
      fc.property(routeText, (text) => {
        const p = problems({ KEDGE_ROUTE_FUZZ: text });
        // Either it loads, or each problem is one line naming the route (and a column when it parsed).
        return p.every(
          (line) =>
            line.startsWith('KEDGE_ROUTE_FUZZ') &&
            !line.includes('\n') &&
            !/at .*\.ts:\d+/.test(line),
        );
      }),
      { seed: SEED, numRuns: 2_000 },
    );

    // A valid setup reads back from check-config's output to the same config.
    const env = {
      ...base,
      KEDGE_DESTINATIONS: 'site,cloud',
      KEDGE_SITE_KAFKA_BROKERS: 'site1:9092',
      KEDGE_CLOUD_KAFKA_BROKERS: 'cloud1:9092,cloud2:9092',
      KEDGE_CLOUD_COMPRESSION: 'zstd',
      KEDGE_CLOUD_FORWARD_RATE: '64KiB/s',
      KEDGE_CLOUD_KAFKA_SASL_MECHANISM: 'plain',
      KEDGE_CLOUD_KAFKA_USERNAME: 'u',
      KEDGE_CLOUD_KAFKA_PASSWORD: 'secret-pw',
      KEDGE_ROUTE_RAW: 'sensors.# -> site',
      KEDGE_ROUTE_AGG: 'sensors.# -> cloud | where q = "a b" | window 1m max(temp)',
    };
    const cfg = loadConfig(env);
    t.equal(cfg.destinations?.[1].kafka.compression, 'zstd');
    t.equal(
      cfg.destinations?.[0].kafka.compression,
      cfg.kafka.compression,
      'unprefixed is the default',
    );
    t.equal(cfg.destinations?.[1].forward.rate, 65536);
    t.same(
      cfg.routes.map((r) => r.name),
      ['agg', 'raw'],
    );
    const text = formatConfig(cfg);
    t.notOk(text.includes('secret-pw'), 'a destination password is redacted');
    t.notOk(
      JSON.stringify(redactedConfig(cfg)).includes('secret-pw'),
      'and in the config /v1/status shows',
    );
    const back = loadConfig({
      ...parseEnvFile(text, 'check-config output').vars,
      KEDGE_CLOUD_KAFKA_PASSWORD: 'secret-pw',
    });
    t.same(back.destinations, cfg.destinations, 'destinations read back');
    t.same(back.routes, cfg.routes, 'routes read back');
  },
);

t.test('steps: where, sample, select, topic — with values that are not JSON', async (t) => {
  const evs = [
    ev(1, 1000, 'a', { temp: 5, site: 'x', nested: { v: 1 } }),
    ev(2, 1000, 'a', 'not json {'),
    ev(3, 1000, 'a', { temp: 'warm' }),
    ev(4, 1000, 'b', { temp: 30, site: 'y' }),
    ev(5, 1000, 'b', { site: 'y' }),
  ];
  let r = run('sensors.# -> d | where temp > 10', evs);
  t.same(
    r.values.map((v) => v.temp),
    [30],
    'where: numbers compare, a string or a missing field fails, non-JSON fails',
  );
  t.same(r.filtered, { 'r/where': 4 });
  r = run('sensors.# -> d | where site = x', evs);
  t.same(
    r.records.map((e) => e.seq),
    [1],
    'where with a bare word',
  );
  r = run('sensors.# -> d | where temp exists', evs);
  t.same(
    r.records.map((e) => e.seq),
    [1, 3, 4],
  );
  r = run('sensors.# -> d | where site != "x"', evs);
  t.same(
    r.records.map((e) => e.seq),
    [4, 5],
    '!= on a missing field fails',
  );
  r = run('sensors.# -> d | select temp,nested.v', evs);
  t.same(r.values, [{ temp: 5, nested: { v: 1 } }, { temp: 'warm' }, { temp: 30 }, {}]);
  t.same(r.filtered, { 'r/select': 1 }, 'select removes a value that is not JSON');
  t.same(
    r.records.map((e) => e.id),
    ['A:1', 'A:3', 'A:4', 'A:5'],
    'passed events keep their kedge-id',
  );
  r = run('sensors.# -> d | topic out.t', evs);
  t.same([...new Set(r.records.map((e) => e.topic))], ['out.t']);
  t.equal(r.records[1].value.toString(), 'not json {', 'topic leaves the value byte for byte');
  const many = Array.from({ length: 20 }, (_, i) => ev(i + 1, 1000, i % 2 ? 'a' : 'b', { i }));
  r = run('sensors.# -> d | sample 5', many);
  t.same(
    r.values.map((v) => v.i),
    [0, 1, 10, 11],
    'sample: one in five per key, the first of each five',
  );
  r = run('other.# -> d', evs);
  t.same(r.records, [], 'a pattern that does not match takes nothing');
});

t.test('deadband and window: values, max, and every aggregate', async (t) => {
  const temps = [20, 20.2, 20.6, 20.5, 19.9, 21.5];
  const evs = temps.map((v, i) => ev(i + 1, 1_000 * i, 'k', { temp: v }));
  let r = run('sensors.# -> d | deadband temp 0.5', evs);
  t.same(
    r.values.map((v) => v.temp),
    [20, 20.6, 19.9, 21.5],
    'by exception: a change of at least 0.5 since the last one passed',
  );
  r = run('sensors.# -> d | deadband temp 0.5 max 2s', evs);
  t.same(
    r.values.map((v) => v.temp),
    [20, 20.6, 19.9, 21.5],
    'max 2s: 20.5 came 1 s after 20.6 passed',
  );
  r = run('sensors.# -> d | deadband temp 0.5 max 1s', evs);
  t.same(
    r.values.map((v) => v.temp),
    temps,
    '… and at least every 1 s: all',
  );
  const w = [1, 5, 3, 'x', 2].map((v, i) => ev(i + 1, 60_000 + i * 10_000, 'k', { v }));
  w.push(ev(6, 125_000, 'k', { v: 100 }));
  r = run('sensors.# -> d | window 60s count() min(v) max(v) mean(v) sum(v) first(v) last(v)', w);
  t.same(
    r.values,
    [
      {
        window_start: 60_000,
        window_end: 120_000,
        count: 5,
        v_min: 1,
        v_max: 5,
        v_mean: 2.75,
        v_sum: 11,
        v_first: 1,
        v_last: 2,
      },
    ],
    'closed by the next event after its end; a non-number counts in count only',
  );
  t.equal(
    r.records[0].id,
    'A:d:r:k:60000',
    'kedge-id <agent>:<destination>:<route>:<key>:<window_start>',
  );
  t.equal(r.records[0].key?.toString(), 'k');
  r = run('sensors.# -> d | window 60s count()', w, 200_000);
  t.same(
    r.values.map((v) => [v.window_start, v.count]),
    [
      [60_000, 5],
      [120_000, 1],
    ],
    'the clock closes the last one',
  );
});

/** Random log: a few keys, readings, some non-JSON, ingest time never going back. */
const logArb = fc
  .array(
    fc.record({
      key: fc.constantFrom('a', 'b', 'c', null),
      dt: fc.constantFrom(0, 0, 500, 1_000, 7_000, 61_000),
      v: fc.oneof(fc.double({ min: -50, max: 50, noNaN: true }), fc.constant('junk')),
    }),
    { minLength: 1, maxLength: 150 },
  )
  .map((xs) => {
    let ts = 1_000_000;
    return xs.map((x, i) => {
      ts += x.dt;
      return ev(i + 1, ts, x.key, x.v === 'junk' ? 'junk' : { temp: x.v });
    });
  });
const ROUTES = [
  parseRoute(
    'agg',
    'sensors.# -> d | deadband temp 0.5 max 30s | window 10s mean(temp) max(temp) count()',
  ),
  parseRoute('raw', 'sensors.# -> d | where temp exists | sample 2 | select temp'),
];
const key = (e: { id: string; route: string; value: Buffer }) =>
  `${e.route}|${e.id}|${e.value.toString()}`;

t.test(
  'deterministic: any batch cuts and restarts from saved state give the same records',
  async (t) => {
    fc.assert(
      fc.property(
        logArb,
        fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 20 }),
        fc.integer(),
        (log, cuts, seed) => {
          const one = new RoutePipeline(ROUTES, 'A', 'd');
          const want = [
            ...one.process(log, 'A').events,
            ...one.advanceTo(99e12, log.length).events,
          ].map(key);
          let p = new RoutePipeline(ROUTES, 'A', 'd');
          const got: string[] = [];
          let at = 0;
          let i = 0;
          while (at < log.length) {
            const n = cuts[i++ % cuts.length];
            got.push(...p.process(log.slice(at, at + n), 'A').events.map(key));
            at += n;
            if ((seed >> i) & 1) {
              const s = p.state();
              p = new RoutePipeline(ROUTES, 'A', 'd');
              p.restore(s);
            }
          }
          got.push(...p.advanceTo(99e12, log.length).events.map(key));
          return JSON.stringify(got) === JSON.stringify(want);
        },
      ),
      { seed: SEED, numRuns: 300 },
    );
    t.pass('300 random logs, cut and restarted at random: the same records as one pass');
  },
);

for (const driver of ['sqlite', 'wasm'] as const) {
  t.test(
    `${driver}: a destination's records survive failed sends, lost acks and restarts, each once`,
    async (t) => {
      await fc.assert(
        fc.asyncProperty(
          logArb,
          fc.array(fc.constantFrom('ack', 'ack', 'ack', 'fail', 'restart', 'partial'), {
            minLength: 5,
            maxLength: 60,
          }),
          fc.integer({ min: 1, max: 30 }),
          async (events, script, batch) => {
            const dir = tempDir('kedge-routes-');
            let clock = 0;
            try {
              let log = await openLog({ dir, driver, sync: 'normal', now: () => clock });
              for (const e of events) {
                clock = e.ts;
                await log.append([{ topic: e.topic, key: e.key, value: e.value, source: 'http' }]);
              }
              clock += 100_000;
              const open = () =>
                new DestinationForwardLog({
                  log,
                  dest: log.destinations(['d'])[0],
                  routes: ROUTES,
                  agentId: 'A',
                  now: () => clock,
                  pauseKey: 'p',
                });
              let view = open();
              const want = new RoutePipeline(ROUTES, 'A', 'd');
              const wantKeys = [
                ...want.process(events, 'A').events,
                ...want.advanceTo(clock, events.length).events,
              ].map(key);
              const delivered: string[] = [];
              let cursor = view.stats().lanes.bulk.cursor;
              // The script's failures and restarts, then acknowledgements until drained.
              for (let step = 0; step < script.length + 10_000; step++) {
                const action = step < script.length ? script[step] : 'ack';
                if (action === 'restart') {
                  await log.close();
                  log = await openLog({ dir, driver, sync: 'normal', now: () => clock });
                  view = open();
                  cursor = view.stats().lanes.bulk.cursor;
                  continue;
                }
                if (view.stats().lanes.bulk.backlogEvents === 0) break;
                const b = view.readBatch(cursor, batch, 1 << 20, 'bulk');
                if (b.length === 0) continue;
                if (action === 'fail') continue; // Kafka never answered: read again from the cursor
                const sent = action === 'partial' ? b.slice(0, Math.ceil(b.length / 2)) : b;
                // Kafka has them now, whatever happens to the acknowledgement.
                delivered.push(...sent.map((e) => key(e as never)));
                if (action === 'partial') {
                  for (const e of sent) view.ack(e.seq, 'bulk');
                  cursor = sent.at(-1)!.seq;
                } else {
                  view.ack(b.at(-1)!.seq, 'bulk');
                  cursor = b.at(-1)!.seq;
                }
              }
              await log.close();
              const firstSeen = new Set<string>();
              const distinct: string[] = [];
              for (const k of delivered) {
                if (firstSeen.has(k)) continue;
                firstSeen.add(k);
                distinct.push(k);
              }
              // Every record delivered, in the reference order, duplicates only of ids already delivered.
              return JSON.stringify(distinct) === JSON.stringify(wantKeys);
            } finally {
              cleanup(dir);
            }
          },
        ),
        { seed: SEED, numRuns: driver === 'wasm' ? 25 : 60 },
      );
      t.pass(
        'every random script delivered every record, duplicates only of ids already delivered',
      );
    },
  );
}

t.test(
  'quota drops with two destinations: counted for the one that had not sent them, never what it is sending',
  async (t) => {
    const dir = tempDir('kedge-routes-');
    const log = await openLog({
      dir,
      driver: 'sqlite',
      sync: 'normal',
      quotaBytes: 2 * 1024 * 1024,
    });
    t.teardown(async () => {
      await log.close();
      cleanup(dir);
    });
    const [fast, slow] = log.destinations(['fast', 'slow']);
    // The slow destination reads the first 10 events and keeps them in flight (no answer yet).
    await log.append(
      Array.from({ length: 10 }, (_, i) => ({
        topic: 't',
        key: null,
        value: Buffer.from(`first-${i}`),
        source: 'http' as const,
      })),
    );
    const inFlight = slow.readBatch(0, 10, 1 << 20, 'bulk');
    t.equal(inFlight.length, 10);
    let n = 10;
    for (let round = 0; round < 100; round++) {
      const batch = Array.from({ length: 40 }, () => ({
        topic: 't',
        key: null,
        value: Buffer.from(JSON.stringify({ n: n++, pad: 'p'.repeat(1_000) })),
        source: 'http' as const,
      }));
      await log.append(batch);
      // The fast one forwards everything at once.
      const all = fast.readBatch(fast.lanes().bulk.cursor, 10_000, 1 << 30, 'bulk');
      if (all.length > 0) fast.ack(all.at(-1)!.seq, 'bulk', { state: null, keep: null });
    }
    await new Promise((r) => setTimeout(r, 300));
    const f = fast.lanes().bulk;
    const s = slow.lanes().bulk;
    t.equal(f.dropped, 0, 'the fast destination lost nothing (it had everything)');
    t.ok(s.dropped > 0, `the slow one counts what it lost (${s.dropped})`);
    t.equal(s.dropped + s.backlogEvents, n, 'the slow one: dropped + still to send = appended');
    t.same(
      slow.readBatch(0, 10, 1 << 20, 'bulk').map((e) => e.value.toString()),
      inFlight.map((e) => e.value.toString()),
      'what it was sending was not dropped',
    );
    t.equal(
      log.stats().droppedEvents,
      s.dropped,
      'the log dropped only events the slow one had not sent',
    );
  },
);
