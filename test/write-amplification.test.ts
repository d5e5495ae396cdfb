/**
 * Write amplification as an operator reads it: the real agent (KEDGE_SYNC=full) takes
 * ~20 MB of NDJSON batches into a data dir on a real disk, then /metrics, /v1/status and
 * `kedge status` show the bytes written to disk per byte ingested. SQLite has to write
 * at least the data once (WAL), so written ≥ ingested is a physical bound; a collapse
 * (a page rewritten per event) would show as tens of ×. No Kafka needed: forwarding
 * just fails to connect, which writes nothing.
 */
import t from 'tap';
import { mkdirSync, mkdtempSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { AgentProc, REPO, cleanup, post, tempDir } from './helpers/agent.ts';
import { run, waitFor } from './helpers/proc.ts';

const TMPFS_MAGIC = 0x01021994;

/** The kernel counts no writes for tmpfs: then use a disk-backed dir in the repo. */
function diskBackedDir(): string {
  const d = tempDir('kedge-wa-');
  if (statfsSync(d).type !== TMPFS_MAGIC) return d;
  cleanup(d);
  const base = join(REPO, '.cache');
  mkdirSync(base, { recursive: true });
  return mkdtempSync(join(base, 'kedge-wa-'));
}

const dir = diskBackedDir();
const agent = await AgentProc.start({
  env: {
    KEDGE_DATA_DIR: dir,
    KEDGE_KAFKA_BROKERS: '127.0.0.1:1',
    KEDGE_SYNC: 'full',
    KEDGE_AGENT_ID: 'wa-agent',
  },
});
t.teardown(async () => {
  await agent.stop();
  cleanup(dir);
});

async function metric(name: string): Promise<number | null> {
  const r = await request(`${agent.base}/metrics`);
  const text = await r.body.text();
  let sum: number | null = null;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    sum = (sum ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

t.test('before any ingest: written bytes, no ratio yet, with the reason', async (tt) => {
  const s = await agent.status();
  tt.type(s.disk.written_bytes, 'number');
  tt.equal(s.disk.write_amplification, null);
  tt.equal(s.disk.write_amplification_reason, 'nothing ingested yet');
  const r = await run(process.execPath, [join(REPO, 'agent/cli.ts'), '--', 'status'], {
    env: { PATH: process.env.PATH ?? '', KEDGE_HTTP_LISTEN: `127.0.0.1:${agent.port}` },
    timeoutMs: 30_000,
  });
  tt.match(r.stdout, /^writes {3}\S+ written to disk, nothing ingested yet$/m);
});

t.test(
  '~20 MB of NDJSON at KEDGE_SYNC=full: written ≥ ingested, well below a collapse',
  async (tt) => {
    const PER_REQUEST = 500;
    const REQUESTS = 200;
    const value = (r: number, i: number) =>
      JSON.stringify({ dev: `d${i % 16}`, r, i, t: 1_700_000_000 + r, pad: 'x'.repeat(150) });
    let sent = 0;
    // 4 senders at a time: group commits of a few requests, as real batching senders give.
    for (let r = 0; r < REQUESTS; r += 4) {
      const res = await Promise.all(
        [0, 1, 2, 3].map((k) => {
          const lines = Array.from({ length: PER_REQUEST }, (_, i) => value(r + k, i));
          sent += lines.reduce((a, l) => a + Buffer.byteLength(l), 0);
          return post(
            `${agent.base}/v1/topics/wa`,
            lines.join('\n') + '\n',
            'application/x-ndjson',
          );
        }),
      );
      for (const x of res)
        if (x.status !== 200) tt.fail(`HTTP ${x.status}: ${JSON.stringify(x.body)}`);
    }
    const ingested = await metric('kedge_ingested_bytes_total');
    tt.equal(ingested, sent, 'the agent counted every value byte as ingested');

    // Sampled every 5 s: wait for a sample taken after the last commit.
    const s = await waitFor(
      async () => {
        const st = await agent.status();
        return st.disk.ingested_bytes === ingested ? st : null;
      },
      { timeoutMs: 30_000, intervalMs: 500, what: 'a write sample after the ingest' },
    );
    const d = s.disk;
    tt.comment(
      `ingested ${ingested} B, written ${d.written_bytes} B: ${d.write_amplification}× (recent ${d.write_amplification_recent}×)`,
    );
    tt.ok(d.written_bytes >= ingested!, 'at least the data reached the disk');
    tt.ok(d.write_amplification >= 1, `amplification ${d.write_amplification} ≥ 1`);
    tt.ok(d.write_amplification < 50, `amplification ${d.write_amplification} < 50 (no collapse)`);
    tt.equal(d.write_amplification_reason, null);
    tt.equal(d.write_amplification_window_seconds, 300);
    tt.ok(
      d.write_amplification_recent >= 1 && d.write_amplification_recent < 50,
      'the last 5 minutes are the whole run here',
    );
    tt.equal(
      d.write_amplification,
      Math.round((d.written_bytes / d.ingested_bytes) * 100) / 100,
      'the ratio is written ÷ ingested',
    );

    // /metrics shows the same sample (a newer one may have come in between: allow either).
    const before = d.written_bytes;
    const m = await metric('kedge_disk_written_bytes_total');
    const ratio = await metric('kedge_write_amplification');
    const after = (await agent.status()).disk;
    tt.ok(m === before || m === after.written_bytes, `metric ${m} = status ${before}`);
    tt.ok(
      ratio === d.write_amplification || ratio === after.write_amplification,
      `gauge ${ratio} = status ${d.write_amplification}`,
    );

    const cli = await run(process.execPath, [join(REPO, 'agent/cli.ts'), '--', 'status'], {
      env: { PATH: process.env.PATH ?? '', KEDGE_HTTP_LISTEN: `127.0.0.1:${agent.port}` },
      timeoutMs: 30_000,
    });
    const line =
      /^writes {3}(\S+) written to disk for (\S+) ingested \(([\d.]+)× write amplification, ([\d.]+)× over the last 5m\)$/m.exec(
        cli.stdout,
      );
    tt.ok(line, `kedge status prints the writes line:\n${cli.stdout}`);
    tt.ok(Number(line?.[3]) >= 1, 'with the ratio');
  },
);
