/**
 * Every doc example is run: the fenced code blocks of README.md, CONTRIBUTING.md and docs/*.md
 * (docs/configuration.md is generated from the settings table and tested with it) are run
 * against a real agent and a real Kafka broker, by their info string:
 *
 *   sh            bash -euo pipefail against the plain agent; must exit 0
 *   sh token      the same against an agent with KEDGE_HTTP_TOKEN ($TOKEN holds it)
 *   output        the expected output of the block before it (json output: the same)
 *   env           an env file; `kedge check-config --env-file` must accept it
 *   text layout   a tree of agent/: every .ts file it names exists, every file of agent/ is named
 *   … norun       cannot run here (install, systemd, the long suites): listed and counted
 *
 * Any other block fails the test. Every relative link must point at a file that exists and a
 * #fragment at one of its headings. The rules are described in docs/testing.md.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { startKafka } from '../scripts/kafka/kafka.ts';
import { NODE_FLAGS } from '../agent/runtime-flags.ts';
import { AgentProc, cleanup, REPO, tempDir } from './helpers/agent.ts';
import { makeTestCerts } from './helpers/certs.ts';
import { freePort } from './helpers/ports.ts';

/** Generated elsewhere (from agent/settings.ts) and tested there; links to it may precede it. */
const GENERATED = 'docs/configuration.md';

interface Block {
  file: string;
  line: number;
  lang: string;
  flags: string[];
  code: string;
}

function docFiles(): string[] {
  const docs = existsSync(join(REPO, 'docs'))
    ? readdirSync(join(REPO, 'docs'))
        .filter((f) => f.endsWith('.md'))
        .sort()
        .map((f) => `docs/${f}`)
    : [];
  return ['README.md', 'CONTRIBUTING.md', ...docs].filter((f) => f !== GENERATED);
}

/** Fenced blocks (``` or ~~~, any length) with the line of their opening fence. */
export function parseBlocks(file: string, text: string): Block[] {
  const blocks: Block[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const open = /^ {0,3}(`{3,}|~{3,})\s*(.*)$/.exec(lines[i]);
    if (!open) continue;
    const fence = open[1];
    const [lang = '', ...flags] = open[2].trim().split(/\s+/).filter(Boolean);
    const body: string[] = [];
    let j = i + 1;
    while (
      j < lines.length &&
      !new RegExp(`^ {0,3}${fence[0]}{${fence.length},}\\s*$`).test(lines[j])
    )
      body.push(lines[j++]);
    blocks.push({ file, line: i + 1, lang, flags, code: body.join('\n') });
    i = j;
  }
  return blocks;
}

/** The text outside fenced blocks (links inside code are examples, not links). */
function prose(text: string): string {
  return text.replace(/^ {0,3}(`{3,}|~{3,})[^\n]*\n[\s\S]*?^ {0,3}\1[^\n]*$/gm, '');
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens. */
function anchors(text: string): Set<string> {
  const out = new Set<string>();
  for (const m of prose(text).matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const slug = m[1]
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/\s/g, '-');
    let s = slug;
    for (let n = 1; out.has(s); n++) s = `${slug}-${n}`;
    out.add(s);
  }
  return out;
}

/** Where the example's shape differs from the real value's: keys at every depth, not values. */
export function shapeDiff(expected: unknown, actual: unknown, path = '$'): string[] {
  const isObj = (v: unknown): v is Record<string, unknown> =>
    typeof v === 'object' && v !== null && !Array.isArray(v);
  if (isObj(expected)) {
    if (!isObj(actual))
      return [`${path}: the example has an object, the real answer ${JSON.stringify(actual)}`];
    // {"a":1,"…":0}: a map whose keys vary (e.g. one per link state seen): keys not compared.
    if ('…' in expected) return [];
    const diff: string[] = [];
    for (const k of Object.keys(expected))
      if (!(k in actual)) diff.push(`${path}.${k}: in the example, not in the real answer`);
      else diff.push(...shapeDiff(expected[k], actual[k], `${path}.${k}`));
    for (const k of Object.keys(actual))
      if (!(k in expected)) diff.push(`${path}.${k}: in the real answer, not in the example`);
    return diff;
  }
  if (Array.isArray(expected)) {
    if (!Array.isArray(actual))
      return [`${path}: the example has an array, the real answer ${JSON.stringify(actual)}`];
    return expected.length > 0 && actual.length > 0
      ? shapeDiff(expected[0], actual[0], `${path}[0]`)
      : [];
  }
  return [];
}

function parseJson(s: string): { ok: true; value: unknown } | { ok: false } {
  const x = s.trim();
  if (!/^[[{]/.test(x)) return { ok: false };
  try {
    return { ok: true, value: JSON.parse(x) };
  } catch {
    return { ok: false };
  }
}

/** A line of expected output as a pattern: `…` for anything, runs of spaces equal. */
function linePattern(line: string): RegExp {
  const parts = line
    .trim()
    .split('…')
    .map((p) =>
      p
        .split(/\s+/)
        .map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
        .join('\\s+'),
    );
  return new RegExp(`^\\s*${parts.join('.*')}\\s*$`);
}

/** Problems of the actual output against the expected one (empty: it matches). */
export function outputProblems(expected: string, actual: string): string[] {
  const actualLines = actual.split('\n').filter((l) => l.trim() !== '');
  const whole = parseJson(expected);
  if (whole.ok && expected.trim().includes('\n')) {
    // A pretty-printed document: the real one is the whole output or one of its lines.
    const candidates = [actual, ...actualLines].map(parseJson).filter((p) => p.ok);
    if (candidates.length === 0) return [`no JSON in the output:\n${actual}`];
    const diffs = candidates.map((c) => shapeDiff(whole.value, (c as { value: unknown }).value));
    return diffs.find((d) => d.length === 0) ?? diffs[diffs.length - 1];
  }
  const problems: string[] = [];
  for (const line of expected.split('\n').filter((l) => l.trim() !== '')) {
    const j = parseJson(line);
    if (j.ok) {
      const diffs = actualLines
        .map(parseJson)
        .filter((p) => p.ok)
        .map((p) => shapeDiff(j.value, (p as { value: unknown }).value));
      if (!diffs.some((d) => d.length === 0))
        problems.push(
          `no output line has the shape of ${line}: ${(diffs.at(-1) ?? ['no JSON line']).join('; ')}`,
        );
    } else if (!actualLines.some((a) => linePattern(line).test(a)))
      problems.push(`no output line matches "${line}"`);
  }
  return problems;
}

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runShell(
  code: string,
  cwd: string,
  env: Record<string, string>,
  timeoutMs: number,
): Promise<RunResult> {
  return new Promise((done) => {
    const child = spawn('bash', ['-euo', 'pipefail', '-c', code], {
      cwd,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => {
      stderr += `\n(killed after ${timeoutMs} ms)`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('close', (c) => {
      clearTimeout(timer);
      done({ code: c, stdout, stderr });
    });
  });
}

const files = docFiles();
const texts = new Map(files.map((f) => [f, readFileSync(join(REPO, f), 'utf8')]));
const blocks = files.flatMap((f) => parseBlocks(f, texts.get(f)!));
const where = (b: Block) => `${b.file}:${b.line}`;
const isOutput = (b: Block) =>
  b.lang === 'output' || (b.lang === 'json' && b.flags.includes('output'));
const isNorun = (b: Block) => b.flags.includes('norun');
const isLayout = (b: Block) => b.lang === 'text' && b.flags.includes('layout');

/**
 * The .ts files a layout tree names, as paths: a line `  name/` opens a folder at its
 * indentation; every `*.ts` word on a line names a file of the innermost open folder.
 */
export function layoutFiles(tree: string): string[] {
  const open: { indent: number; path: string }[] = [];
  const files: string[] = [];
  for (const line of tree.split('\n')) {
    const m = /^( *)(\S+)/.exec(line);
    if (!m) continue;
    const indent = m[1].length;
    while (open.length > 0 && open[open.length - 1].indent >= indent) open.pop();
    const base = open.length > 0 ? open[open.length - 1].path : '';
    if (m[2].endsWith('/')) {
      open.push({ indent, path: base + m[2] });
      continue;
    }
    for (const word of line.trim().split(/\s+/)) {
      if (!word.endsWith('.ts')) break;
      files.push(base + word);
    }
  }
  return files;
}

t.test('links: every relative link resolves, fragments name a heading', async (tt) => {
  let n = 0;
  for (const f of files) {
    for (const m of prose(texts.get(f)!).matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      const target = m[1];
      if (/^[a-z]+:/i.test(target)) continue;
      n++;
      const [path, fragment] = target.split('#');
      const abs = path === '' ? join(REPO, f) : resolve(dirname(join(REPO, f)), path);
      const rel = relative(REPO, abs);
      if (!existsSync(abs)) {
        if (rel === GENERATED) {
          tt.comment(`${f}: ${target} (generated by the settings table; not here yet)`);
          continue;
        }
        tt.fail(`${f}: link ${target}: ${rel} does not exist`);
        continue;
      }
      if (fragment && abs.endsWith('.md'))
        tt.ok(
          anchors(readFileSync(abs, 'utf8')).has(fragment),
          `${f}: link ${target}: #${fragment} is a heading of ${rel}`,
        );
    }
  }
  tt.ok(n > 20, `${n} relative links checked`);
});

t.test('every block is runnable, an output, or marked norun', async (tt) => {
  const known = (b: Block) =>
    isNorun(b) ||
    isOutput(b) ||
    b.lang === 'env' ||
    isLayout(b) ||
    (b.lang === 'sh' && b.flags.every((f) => f === 'token'));
  for (const b of blocks)
    tt.ok(
      known(b),
      `${where(b)}: \`\`\`${[b.lang, ...b.flags].join(' ')} is run, an output or marked norun`,
    );
  for (const [i, b] of blocks.entries()) {
    if (!isOutput(b)) continue;
    const prev = blocks[i - 1];
    tt.ok(
      prev && prev.file === b.file && prev.lang === 'sh' && !isNorun(prev),
      `${where(b)}: an output block follows a block that runs`,
    );
  }
  const norun = blocks.filter(isNorun);
  tt.comment(`${norun.length} blocks marked norun:`);
  for (const b of norun) tt.comment(`  ${where(b)} ${b.lang}: ${b.code.split('\n')[0]}`);
});

t.test('the layout trees name every file of agent/ and nothing else', async (tt) => {
  const trees = blocks.filter(isLayout);
  tt.ok(trees.length > 0, 'docs/architecture.md has a layout tree');
  const listFiles = (dir: string): string[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
      e.isDirectory()
        ? listFiles(join(dir, e.name))
        : e.name.endsWith('.ts')
          ? [relative(REPO, join(dir, e.name))]
          : [],
    );
  const actual = listFiles(join(REPO, 'agent')).sort();
  for (const b of trees) {
    const named = layoutFiles(b.code).sort();
    tt.strictSame(
      named.filter((f) => !actual.includes(f)),
      [],
      `${where(b)}: every file it names exists`,
    );
    tt.strictSame(
      actual.filter((f) => !named.includes(f)),
      [],
      `${where(b)}: every file of agent/ is in it`,
    );
  }
  tt.strictSame(
    layoutFiles('agent/\n  a.ts  b.ts\n  log/\n    c.ts   one job\n  d.ts\n'),
    ['agent/a.ts', 'agent/b.ts', 'agent/log/c.ts', 'agent/d.ts'],
    'the tree reader itself',
  );
});

t.test('env blocks pass kedge check-config', async (tt) => {
  const certs = makeTestCerts();
  const dir = tempDir('kedge-docs-env-');
  tt.teardown(() => {
    certs.remove();
    cleanup(dir);
  });
  const env = blocks.filter((b) => b.lang === 'env' && !isNorun(b));
  tt.ok(env.length >= 5, `${env.length} env blocks`);
  for (const [i, b] of env.entries()) {
    // /etc/kedge/<file> names PEM files the device has; here generated ones stand in.
    const text = b.code.replace(/\/etc\/kedge\/([\w.-]+)/g, (_all, name: string) => {
      const to = join(dir, `${i}-${name}`);
      const from = /key/.test(name)
        ? certs.serverKeyFile
        : /ca/.test(name)
          ? certs.caFile
          : certs.serverCertFile;
      copyFileSync(from, to);
      return to;
    });
    const file = join(dir, `${i}.env`);
    writeFileSync(file, `${text}\n`, { mode: 0o600 });
    const r = await runShell(
      `"${process.execPath}" "${join(REPO, 'agent/cli.ts')}" -- check-config --env-file "${file}"`,
      dir,
      { PATH: process.env.PATH ?? '' },
      30_000,
    );
    tt.equal(
      r.code,
      0,
      `${where(b)}: kedge check-config accepts it${r.code === 0 ? '' : `\n${r.stderr}`}`,
    );
  }
});

t.test('shell blocks run against a real agent and Kafka', async (tt) => {
  const runnable = blocks.filter((b) => b.lang === 'sh' && !isNorun(b));
  const kafka = await startKafka({ brokers: 1 });
  const plainDir = tempDir('kedge-docs-plain-');
  const tokenDir = tempDir('kedge-docs-token-');
  const work = tempDir('kedge-docs-work-');
  const mqttPort = await freePort();
  const token = randomBytes(12).toString('hex');
  const common = { KEDGE_KAFKA_BROKERS: kafka.bootstrap, KEDGE_LOG_LEVEL: 'warn' };
  const plain = await AgentProc.start({
    env: {
      ...common,
      KEDGE_DATA_DIR: plainDir,
      KEDGE_AGENT_ID: 'docs-agent',
      KEDGE_MQTT_LISTEN: `127.0.0.1:${mqttPort}`,
      KEDGE_HEARTBEAT_TOPIC: 'kedge.heartbeat',
      KEDGE_HEARTBEAT_INTERVAL: '1s',
    },
  });
  const withToken = await AgentProc.start({
    env: {
      ...common,
      KEDGE_DATA_DIR: tokenDir,
      KEDGE_AGENT_ID: 'docs-token',
      KEDGE_HTTP_TOKEN: token,
    },
  });
  tt.teardown(async () => {
    await plain.stop();
    await withToken.stop();
    await kafka.stop();
    for (const d of [plainDir, tokenDir, work]) cleanup(d);
  });

  // `kedge` on the PATH is the agent from source, as the executable would be.
  const bin = join(work, 'bin');
  mkdirSync(bin);
  writeFileSync(
    join(bin, 'kedge'),
    `#!/bin/sh\nexec "${process.execPath}" ${NODE_FLAGS.join(' ')} "${join(REPO, 'agent/cli.ts')}" -- "$@"\n`,
  );
  chmodSync(join(bin, 'kedge'), 0o755);
  writeFileSync(join(work, 'frame.jpg'), randomBytes(4096));

  let ran = 0;
  for (const [i, b] of blocks.entries()) {
    if (b.lang !== 'sh' || isNorun(b)) continue;
    const agent = b.flags.includes('token') ? withToken : plain;
    const host = `127.0.0.1:${agent.port}`;
    const subst = (s: string) =>
      s
        .replaceAll('127.0.0.1:8780', host)
        .replaceAll('localhost:8780', host)
        .replaceAll('localhost:9092', kafka.bootstrap)
        .replaceAll('-p 1883', `-p ${mqttPort}`);
    // What the blocks before sent is in Kafka before this one reads it.
    await plain.waitDrained(60_000);
    await withToken.waitDrained(60_000);
    const r = await runShell(
      subst(b.code),
      work,
      {
        PATH: `${bin}:${process.env.PATH ?? ''}`,
        HOME: process.env.HOME ?? work,
        KEDGE_HTTP_LISTEN: host,
        ...(b.flags.includes('token') ? { TOKEN: token } : {}),
      },
      60_000,
    );
    ran++;
    const shown = `\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`;
    tt.equal(r.code, 0, `${where(b)}: exits 0${r.code === 0 ? '' : shown}`);
    const next = blocks[i + 1];
    if (next && next.file === b.file && isOutput(next)) {
      const problems = outputProblems(subst(next.code), `${r.stdout}\n${r.stderr}`);
      tt.same(
        problems,
        [],
        `${where(next)}: the output of ${where(b)} matches${problems.length ? shown : ''}`,
      );
    }
  }
  tt.equal(ran, runnable.length, `${ran} shell blocks run`);
  tt.comment(
    `blocks: ${blocks.length} in ${files.length} files; ${ran} shell, ` +
      `${blocks.filter((b) => b.lang === 'env' && !isNorun(b)).length} env, ${blocks.filter(isOutput).length} outputs checked, ` +
      `${blocks.filter(isNorun).length} norun`,
  );
});

t.test('the checker itself: shapes and patterns can fail', async (tt) => {
  tt.same(shapeDiff({ a: 1, b: { c: 2 } }, { a: 'x', b: { c: null } }), []);
  tt.equal(shapeDiff({ a: 1 }, { a: 1, b: 2 }).length, 1, 'an extra real key is a difference');
  tt.equal(shapeDiff({ a: { b: 1 } }, { a: { c: 1 } }).length, 2, 'a renamed nested key is two');
  tt.same(shapeDiff({ m: { up: 1, '…': 0 } }, { m: { down: 2 } }), [], 'a map marked with "…"');
  tt.equal(shapeDiff({ a: {} }, { a: null }).length, 1, 'an object where the real answer has null');
  tt.same(outputProblems('link     up since …', 'link up since 2026-01-01T00:00:00Z (5s)'), []);
  tt.equal(outputProblems('health   healthy', 'health   degraded: Kafka link down').length, 1);
  tt.equal(outputProblems('{"accepted":1}', '{"error":"bad_json"}').length, 1);
  tt.same(
    parseBlocks('x.md', 'a\n```sh norun\nls\n```\n````text\n```\n````\n').map((b) => [
      b.lang,
      b.flags,
      b.code,
    ]),
    [
      ['sh', ['norun'], 'ls'],
      ['text', [], '```'],
    ],
  );
});
