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

const churnAndReport = `
  const v8 = require('node:v8');
  let keep = [];
  for (let i = 0; i < 2e6; i++) { keep.push({ i, s: 'x' + i }); if (keep.length > 50000) keep = []; }
  const mb = v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size / 1048576;
`;

const child = `
  import { startThread } from ${JSON.stringify(pathToFileURL(`${REPO}/agent/kafka/kafka-thread.ts`).href)};
  import { createRequire } from 'node:module';
  const require = createRequire(import.meta.url);
  ${churnAndReport}
  const mainMb = mb;
  const w = startThread(
    { code: ${JSON.stringify(`${churnAndReport} require('node:worker_threads').parentPort.postMessage(mb);`)} },
    { workerData: null, resourceLimits: ${JSON.stringify(KAFKA_THREAD_LIMITS)} },
  );
  w.once('message', (threadMb) => {
    console.log(JSON.stringify({ mainMb, threadMb }));
    process.exit(0);
  });
`;

t.test(
  "the Kafka thread's young generation is its own, not the main thread's 1 MB semi-space",
  async (t) => {
    const dir = tempDir();
    t.teardown(() => cleanup(dir));
    // A file, not -e: --input-type=module would make the thread's eval code a module too.
    const file = join(dir, 'child.mjs');
    writeFileSync(file, child);
    const out = execFileSync(process.execPath, [...NODE_FLAGS, file], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    const { mainMb, threadMb } = JSON.parse(out.trim().split('\n').at(-1)!) as {
      mainMb: number;
      threadMb: number;
    };
    t.ok(mainMb <= 3, `the main thread keeps its 1 MB semi-space (new space ${mainMb} MB)`);
    // The main thread: two 1 MB semi-spaces (V8 may round up a page). The thread, with
    // maxYoungGenerationSizeMb 12: two semi-spaces of 4 MB once the garbage has grown them.
    t.ok(
      threadMb >= 6,
      `the Kafka thread's new space grows past the main thread's (${threadMb} MB, limit ${KAFKA_THREAD_LIMITS.maxYoungGenerationSizeMb} MB young generation)`,
    );
  },
);
