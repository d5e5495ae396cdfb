/**
 * scripts/check-imports.ts (run by `npm run check`) on tiny fake agent/ trees: it
 * fails naming both files of a cycle, an upward and a sideways import, and passes a
 * clean tree. Imports in comments do not count; type-only and dynamic ones do.
 */
import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { REPO, cleanup, tempDir } from './helpers/agent.ts';
import { run } from './helpers/proc.ts';

const SCRIPT = join(REPO, 'scripts/check-imports.ts');

/** A checkout-like folder with these files under agent/. */
function tree(files: Record<string, string>): string {
  const root = tempDir('kedge-imports-');
  for (const [path, text] of Object.entries(files)) {
    const p = join(root, 'agent', path);
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, text);
  }
  return root;
}

async function check(files: Record<string, string>) {
  const root = tree(files);
  try {
    return await run(process.execPath, [SCRIPT, root], { timeoutMs: 30_000 });
  } finally {
    cleanup(root);
  }
}

/** The layers of a small clean agent/: every import points down or within a layer. */
const CLEAN: Record<string, string> = {
  'units.ts': 'export const KB = 1024;\n',
  'deadline.ts': "import { KB } from './units.ts';\nexport const MS = KB;\n",
  'config.ts':
    "import { KB } from './units.ts';\nexport type Config = { max: number };\nexport const max = KB;\n",
  'log/types.ts': "import type { Config } from '../config.ts';\nexport type Log = Config;\n",
  'log/open.ts':
    "export * from './types.ts';\nexport async function open() {\n  return import('./types.ts');\n}\n",
  'observe/metrics.ts': "import type { Log } from '../log/types.ts';\nexport type M = Log;\n",
  'kafka/producer.ts':
    "import kafkajs from 'kafkajs';\nimport { MS } from '../deadline.ts';\nexport const k = [kafkajs, MS];\n",
  'forward/forwarder.ts':
    "// import { server } from '../ingest/http.ts'; (a comment: not an import)\n/* import '../status/admin.ts'; */\nimport { k } from '../kafka/producer.ts';\nexport const url = 'http://x/*';\nexport const re = /\\/\\//;\nexport const f = k;\n",
  'ingest/http.ts': "import type { M } from '../observe/metrics.ts';\nexport type H = M;\n",
  'status/admin.ts':
    "import type { H } from '../ingest/http.ts';\nimport { f } from '../forward/forwarder.ts';\nexport type A = H;\nexport const a = f;\n",
  'agent.ts':
    "import { a } from './status/admin.ts';\nimport '../package.json';\nexport const agent = a;\n",
  'cli.ts': "import { agent } from './agent.ts';\nexport const cli = agent;\n",
};

t.test('a clean tree passes', async (tt) => {
  const r = await check(CLEAN);
  tt.equal(r.code, 0, r.output);
  tt.match(r.stdout, /layering holds/);
});

t.test('a cycle, an upward and a sideways import fail, each naming both files', async (tt) => {
  const r = await check({
    ...CLEAN,
    // A cycle through a type-only import and a dynamic one.
    'log/driver.ts': "export async function load() {\n  return import('./driver-node.ts');\n}\n",
    'log/driver-node.ts':
      "import type { load } from './driver.ts';\nexport type L = typeof load;\n",
    // Upward: config (rank 1) names a log type (rank 2), type-only.
    'config.ts': "import type { Log } from './log/types.ts';\nexport type Config = Log;\n",
    // Sideways: ingest and forward have the same rank, re-export counts.
    'ingest/http.ts': "export { f } from '../forward/forwarder.ts';\n",
  });
  tt.equal(r.code, 1, 'exit 1');
  const lines = r.stdout.trim().split('\n');
  tt.ok(
    lines.includes(
      'import cycle: agent/log/driver-node.ts -> agent/log/driver.ts -> agent/log/driver-node.ts',
    ),
    'the cycle',
  );
  tt.ok(
    lines.some(
      (l) =>
        l.startsWith('upward import: agent/config.ts ') &&
        l.includes(' imports agent/log/types.ts '),
    ),
    'the upward import',
  );
  tt.ok(
    lines.some(
      (l) =>
        l.startsWith('sideways import: agent/ingest/http.ts ') &&
        l.includes(' imports agent/forward/forwarder.ts '),
    ),
    'the sideways import',
  );
  // config.ts -> log/types.ts -> config.ts is a cycle as well.
  tt.ok(
    lines.some((l) => /^import cycle: .*agent\/config\.ts/.test(l)),
    'the config cycle',
  );
  tt.equal(lines.at(-1), `check-imports: ${lines.length - 1} layering violation(s) in agent/`);
  tt.equal(lines.length - 1, 4, r.stdout);
});

t.test('a folder without a rank fails', async (tt) => {
  const r = await check({ ...CLEAN, 'gadgets/x.ts': 'export const x = 1;\n' });
  tt.equal(r.code, 1);
  tt.match(r.stdout, /^agent\/gadgets\/x\.ts: not in any layer/m);
});
