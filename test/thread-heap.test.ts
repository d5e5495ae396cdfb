/**
 * The Kafka thread's heap limits hold while the process runs with kedge's V8 flags.
 * `--max-semi-space-size=1` (the main thread's, agent/runtime-flags.ts) is process-wide
 * and used to override the thread's own young-generation limit, so the thread that
 * encodes every batch ran on a 1 MB semi-space and spent about a third of its time in
 * scavenges. Here a child process with exactly those flags starts a thread the way the
 * agent does (startThread) and both report their young generation after some garbage.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { NODE_FLAGS, KAFKA_THREAD_LIMITS } from '../agent/runtime-flags.ts';
import { REPO, cleanup, tempDir } from './helpers/agent.ts';

/** Makes garbage, then: the young generation's size and the heap limit, in MB. */
const churnAndReport = `
  const v8 = require('node:v8');
  let keep = [];
  for (let i = 0; i < 2e6; i++) { keep.push({ i, s: 'x' + i }); if (keep.length > 50000) keep = []; }
  const heap = {
    newMb: v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size / 1048576,
    limitMb: v8.getHeapStatistics().heap_size_limit / 1048576,
  };
`;

// The main thread measures itself after the thread started: clearing the flags for the
// thread must not change it.
const child = `
  import { startThread } from ${JSON.stringify(pathToFileURL(`${REPO}/agent/kafka/kafka-thread.ts`).href)};
  import { createRequire } from 'node:module';
  const require = createRequire(import.meta.url);
  const w = startThread(
    { code: ${JSON.stringify(`${churnAndReport} require('node:worker_threads').parentPort.postMessage(heap);`)} },
    { workerData: null, resourceLimits: ${JSON.stringify(KAFKA_THREAD_LIMITS)} },
  );
  w.once('message', (thread) => {
    ${churnAndReport}
    console.log(JSON.stringify({ main: heap, thread }));
    process.exit(0);
  });
`;

interface Heap {
  newMb: number;
  limitMb: number;
}

t.test("the Kafka thread's heap limits are its own, not the main thread's V8 flags", async (t) => {
  const dir = tempDir();
  t.teardown(() => cleanup(dir));
  // A file, not -e: --input-type=module would make the thread's eval code a module too.
  const file = join(dir, 'child.mjs');
  writeFileSync(file, child);
  const out = execFileSync(process.execPath, [...NODE_FLAGS, file], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  const { main, thread } = JSON.parse(out.trim().split('\n').at(-1)!) as {
    main: Heap;
    thread: Heap;
  };
  const { maxYoungGenerationSizeMb: young, maxOldGenerationSizeMb: old } = KAFKA_THREAD_LIMITS;
  // The main thread: two 1 MB semi-spaces, 256 MB old space. Alone it reports 2-2.25 MB of
  // new space; once, under CI load, 3.75 MB. Without the flag the same garbage grows it to
  // 64 MB (Node 24's default), so a 6 MB bound still catches the flag being lost.
  t.ok(
    main.newMb <= 6,
    `the main thread keeps its 1 MB semi-space (new space ${main.newMb} MB, V8's default would reach 64 MB)`,
  );
  t.ok(
    main.limitMb >= 256,
    `the main thread keeps its 256 MB old space (heap limit ${main.limitMb} MB)`,
  );
  // The thread, with a 12 MB young generation: two 4 MB semi-spaces once garbage grew them.
  t.ok(
    thread.newMb >= 6,
    `the Kafka thread's new space grows past the main thread's (${thread.newMb} MB, limit ${young} MB young generation)`,
  );
  t.ok(
    thread.limitMb < old + young + 16,
    `the Kafka thread's heap limit is its own (${thread.limitMb} MB for ${old} MB old + ${young} MB young), not the main thread's ${main.limitMb} MB`,
  );
});
