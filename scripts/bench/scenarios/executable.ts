/**
 * Issue 5: the shipped single executables. Sizes (raw and gzip), start-to-ready
 * of the x64 executable with an empty log and with a 1,000,000-event backlog,
 * and idle RSS. Baseline for start and memory: bare Node 24 (`node -e` with an
 * HTTP server answering /readyz), the floor any Node program pays.
 */
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { createGzip } from 'node:zlib';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { request } from 'undici';
import type { Scenario, ScenarioResult, ChartSpec, Figure } from '../lib/types.ts';
import { atMost, baselineCost, figure, fmt } from '../lib/figures.ts';
import { openLog } from '../../../agent/log/index.ts';
import { KAFKA_THREAD_LIMITS, NODE_FLAGS } from '../../../agent/runtime-flags.ts';
import { REPO, freeLoopbackPort } from '../../../test/helpers/agent.ts';

const MiB = 1024 * 1024;

async function gzipSize(path: string): Promise<number> {
  let n = 0;
  await new Promise<void>((resolve, reject) => {
    const gz = createGzip({ level: 6 });
    gz.on('data', (c: Buffer) => (n += c.length));
    gz.on('end', resolve);
    gz.on('error', reject);
    createReadStream(path).on('error', reject).pipe(gz);
  });
  return n;
}

function rssMiB(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/**
 * A bare Node HTTP server answering /readyz: time to first 200 and idle RSS. With
 * `kafkaWorker`, it also starts one worker thread, with the heap limits of kedge's
 * Kafka thread, that loads @platformatic/kafka and idles: the memory floor of the
 * design (a forwarding thread holding the default client) before any kedge code.
 */
async function bareNode(kafkaWorker = false): Promise<{ readyMs: number; rss: number | null }> {
  const port = await freeLoopbackPort();
  const t0 = performance.now();
  const client = createRequire(import.meta.url).resolve('@platformatic/kafka');
  const worker = kafkaWorker
    ? `new (require('node:worker_threads').Worker)(${JSON.stringify(
        `require(${JSON.stringify(client)}); setInterval(() => {}, 60000)`,
      )}, { eval: true, resourceLimits: ${JSON.stringify(KAFKA_THREAD_LIMITS)} });`
    : '';
  const child = spawn(
    process.execPath,
    [
      ...(kafkaWorker ? NODE_FLAGS : []),
      '-e',
      `${worker}require('node:http').createServer((q,s)=>s.end('ok')).listen(${port},'127.0.0.1')`,
    ],
    { stdio: 'ignore' },
  );
  try {
    const readyMs = await waitReady(`http://127.0.0.1:${port}/readyz`, t0, 30_000);
    await new Promise((r) => setTimeout(r, 3000));
    return { readyMs, rss: rssMiB(child.pid!) };
  } finally {
    child.kill('SIGKILL');
  }
}

async function waitReady(url: string, t0: number, timeoutMs: number): Promise<number> {
  while (performance.now() - t0 < timeoutMs) {
    try {
      const r = await request(url, { headersTimeout: 500 });
      await r.body.dump();
      if (r.statusCode === 200) return performance.now() - t0;
    } catch {
      /* not yet */
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms`);
}

export const executable: Scenario = {
  name: 'executable',
  title: 'The single executables: size, start-to-ready, idle memory',
  description:
    'Sizes of dist/kedge-linux-x64 and dist/kedge-linux-arm64 (raw and gzip -6). Start-to-ready: from spawning `kedge run` until /readyz answers 200, ' +
    'with an empty data dir and with a log holding 1,000,000 unforwarded events (~200 B each, written beforehand with the same SQLite driver). ' +
    'Idle RSS: VmRSS of the executable 5 s after start with an empty log, no traffic. Baselines: bare Node 24 serving HTTP (no kedge code), ' +
    "and the same with kedge's V8 flags plus one idle worker thread, with the Kafka thread's heap limits, that loaded @platformatic/kafka: " +
    "the floor of the design (the forwarding thread holds the client) before any of kedge's own code.",
  needsKafka: false,
  estimateSeconds: (q) => (q ? 20 : 60),
  async run(ctx): Promise<ScenarioResult> {
    const figures: Figure[] = [];
    const notes: string[] = [];
    const exe = join(REPO, 'dist', 'kedge-linux-x64');
    if (ctx.agentInfo.mode !== 'executable' || !existsSync(exe)) {
      notes.push(
        'dist/kedge-linux-x64 is missing: run `npm run build` first; start and memory below are of the source run.',
      );
    }
    const sizes: { label: string; value: number }[] = [];
    for (const arch of ['x64', 'arm64']) {
      const p = join(REPO, 'dist', `kedge-linux-${arch}`);
      if (!existsSync(p)) continue;
      const raw = statSync(p).size / MiB;
      const gz = (await gzipSize(p)) / MiB;
      sizes.push({ label: `${arch} raw`, value: raw }, { label: `${arch} gzip`, value: gz });
      figures.push(
        figure({
          id: `size_${arch}`,
          label: `kedge-linux-${arch} size (gzip ${fmt(gz, 1)} MiB)`,
          value: raw,
          unit: 'MiB',
          digits: 1,
        }),
      );
    }
    const bare = await bareNode();
    ctx.log(`bare node: ready in ${fmt(bare.readyMs)} ms, RSS ${fmt(bare.rss, 1)} MiB`);
    const floor = await bareNode(true);
    ctx.log(`bare node with a Kafka client thread: RSS ${fmt(floor.rss, 1)} MiB`);

    // Empty log: the agent's own start measurement (spawn → /readyz 200).
    const brokers = `127.0.0.1:${await freeLoopbackPort()}`; // nothing listens: start must not wait for Kafka
    const empty = await ctx.startAgent('exe-empty', { brokers });
    await new Promise((r) => setTimeout(r, 5000));
    const idleRss = rssMiB(empty.pid);
    await empty.stop();

    // 1,000,000-event backlog, written with the log itself (sync normal: only the start is measured).
    const n = ctx.n(1_000_000, 200_000);
    const dir = ctx.tmp('exe-backlog');
    const log = await openLog({ dir, driver: 'sqlite', sync: 'normal' });
    const value = Buffer.from(
      JSON.stringify({ dev: 'press-7', temp: 21.5, seq: 0, pad: 'x'.repeat(140) }),
    );
    for (let i = 0; i < n; i += 1000) {
      await log.append(
        Array.from({ length: Math.min(1000, n - i) }, (_, j) => ({
          topic: 'bench.start',
          key: Buffer.from(`k${(i + j) % 16}`),
          value,
          source: 'http' as const,
        })),
      );
    }
    await log.close();
    const backlogAgent = await ctx.startAgent('exe-backlog', { brokers, dataDir: dir });
    const backlog = (await backlogAgent.status()).backlog.events;
    await backlogAgent.stop();
    notes.push(
      `The backlog start opened a log of ${fmt(backlog)} events; SQLite's quick_check at open grows with the file size.`,
    );

    figures.push(
      figure({
        id: 'ready_empty_ms',
        label: 'start to ready, empty log',
        value: empty.startMs,
        unit: 'ms',
        target: atMost(empty.startMs, 1000, '≤ 1,000 ms'),
        baselines: [baselineCost('bare Node 24 HTTP server', empty.startMs, bare.readyMs, 'ms')],
      }),
      figure({
        id: 'ready_backlog_ms',
        label: `start to ready, ${fmt(n)}-event backlog`,
        value: backlogAgent.startMs,
        unit: 'ms',
        target: atMost(backlogAgent.startMs, 1000, '≤ 1,000 ms'),
      }),
      figure({
        id: 'idle_rss_mib',
        label: 'idle RSS, empty log',
        value: idleRss,
        unit: 'MiB',
        digits: 1,
        target: atMost(idleRss, (80 * 1e6) / MiB, '≤ 80 MB'),
        baselines: [
          baselineCost('bare Node 24 HTTP server', idleRss, bare.rss, 'MiB'),
          baselineCost(
            "same, plus one idle worker thread (kedge's heap limits) that loaded @platformatic/kafka",
            idleRss,
            floor.rss,
            'MiB',
          ),
        ],
      }),
    );
    const charts: ChartSpec[] = [
      { kind: 'bars', id: 'executable-sizes', title: 'Executable sizes', unit: 'MiB', bars: sizes },
    ];
    return { figures, charts, cpu: [], notes, data: { sizes, bare, floor, idleRss, backlog } };
  },
};
