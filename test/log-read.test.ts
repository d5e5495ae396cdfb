/**
 * What the forwarder reads back is what was appended (agent/log/lanes.ts readBatch),
 * property-based, on both storage drivers: random events (keyless, empty keys, empty
 * values, binary values full of NUL bytes, headers or none) appended in random
 * commits, then read to the end in random batch bounds. Every event comes back once,
 * in seq order, byte for byte; each batch keeps its count bound and its byte bound
 * (a single larger event excepted), and the log's page boundaries never show.
 */
import t from 'tap';
import fc from 'fast-check';
import { openLog } from '../agent/log/index.ts';
import type { EventInput, StorageDriverName, StoredEvent } from '../agent/log/index.ts';
import { eventBytes } from '../agent/event-size.ts';
import { cleanup, tempDir } from './helpers/agent.ts';

const SEED = Number(process.env.FUZZ_SEED ?? 2026_12_01);
t.comment(`fast-check seed ${SEED} (FUZZ_SEED=${SEED} replays)`);

const bytes = (max: number) =>
  fc.oneof(
    fc.constant(Buffer.alloc(0)),
    fc.uint8Array({ maxLength: max }).map((u) => Buffer.from(u)),
    fc.nat(max).map((n) => Buffer.alloc(n, 0)),
  );

const event: fc.Arbitrary<EventInput> = fc.record({
  topic: fc.constantFrom('plant.temp', 'plant.vibration', 'ünïcode.topic'),
  key: fc.option(bytes(24), { nil: null }),
  value: bytes(600),
  headers: fc.option(fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 12 })), {
    nil: undefined,
  }),
  source: fc.constant('http' as const),
});

const scenario = fc.record({
  commits: fc.array(fc.array(event, { minLength: 1, maxLength: 120 }), {
    minLength: 1,
    maxLength: 6,
  }),
  maxCount: fc.integer({ min: 1, max: 300 }),
  maxBytes: fc.integer({ min: 1, max: 20_000 }),
});

function same(got: StoredEvent, want: EventInput): boolean {
  const headers = want.headers && Object.keys(want.headers).length > 0 ? want.headers : null;
  return (
    got.topic === want.topic &&
    Buffer.isBuffer(got.value) &&
    got.value.equals(want.value) &&
    (want.key === null ? got.key === null : got.key?.equals(want.key) === true) &&
    JSON.stringify(got.headers) === JSON.stringify(headers)
  );
}

for (const driver of ['sqlite', 'wasm'] as StorageDriverName[]) {
  t.test(
    `${driver}: every event read back once, in order, byte for byte, within the bounds`,
    async (t) => {
      let runs = 0;
      await fc.assert(
        fc.asyncProperty(scenario, async ({ commits, maxCount, maxBytes }) => {
          runs++;
          const dir = tempDir('kedge-log-read-');
          const log = await openLog({ dir, driver, sync: 'normal' });
          try {
            for (const c of commits) await log.append(c);
            const want = commits.flat();
            const got: StoredEvent[] = [];
            let after = 0;
            for (;;) {
              const batch = log.readBatch(after, maxCount, maxBytes);
              if (batch.length === 0) break;
              if (batch.length > maxCount) return false;
              const size = batch.reduce((n, e) => n + eventBytes(e), 0);
              if (batch.length > 1 && size > maxBytes) return false;
              got.push(...batch);
              after = batch[batch.length - 1].seq;
            }
            if (got.length !== want.length) return false;
            for (let i = 0; i < got.length; i++) {
              if (i > 0 && got[i].seq <= got[i - 1].seq) return false;
              if (!same(got[i], want[i])) return false;
            }
            return true;
          } finally {
            await log.close();
            cleanup(dir);
          }
        }),
        { seed: SEED, numRuns: 40 },
      );
      t.equal(runs >= 40, true, `${runs} random logs read back`);
    },
  );
}
