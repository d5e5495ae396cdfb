/**
 * Summarises a V8 .cpuprofile (from `node --cpu-prof`, or `npm run bench --
 * --cpu-prof`): self time by function and by file, heaviest first.
 *
 *   node scripts/bench/profile-summary.ts <file.cpuprofile> [top=25] [fromS-toS]
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: Node[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  totalMs: number;
  byFunction: { name: string; ms: number; pct: number }[];
  byFile: { file: string; ms: number; pct: number }[];
  /** Self + callees, for kedge's own functions (agent/): where the time goes by stage. */
  inclusiveAgent: { name: string; ms: number; pct: number }[];
}

const REPO = fileURLToPath(new URL('../../', import.meta.url));

function where(url: string): string {
  if (!url) return '(native/V8)';
  const p = url.startsWith('file://') ? fileURLToPath(url) : url;
  return p.startsWith('/') ? relative(REPO, p) : p;
}

/**
 * `window`: only samples taken between `fromMs` and `toMs` after the profile started
 * (the profile starts with the process, so a bench phase maps to a window).
 */
export function summarize(
  file: string,
  top = 25,
  window?: { fromMs: number; toMs: number },
): ProfileSummary {
  const prof = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  let at = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    at += prof.timeDeltas[i] ?? 0;
    const dt = prof.timeDeltas[i + 1] ?? 0;
    if (window && (at / 1000 < window.fromMs || at / 1000 > window.toMs)) continue;
    self.set(prof.samples[i], (self.get(prof.samples[i]) ?? 0) + dt);
  }
  const fn = new Map<string, number>();
  const files = new Map<string, number>();
  let total = 0;
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    const f = where(n.callFrame.url);
    const name = `${n.callFrame.functionName || '(anonymous)'} ${f}:${n.callFrame.lineNumber + 1}`;
    fn.set(name, (fn.get(name) ?? 0) + us);
    const bucket = n.callFrame.url
      ? f.replace(/^node_modules\/([^/]+)\/.*$/, 'node_modules/$1')
      : n.callFrame.functionName.startsWith('(')
        ? n.callFrame.functionName
        : '(native/V8)';
    files.set(bucket, (files.get(bucket) ?? 0) + us);
    total += us;
  }
  // Inclusive time of agent/ functions: DFS from the root, counting a function once per stack.
  const incl = new Map<string, number>();
  const key = (n: Node) =>
    `${n.callFrame.functionName || '(anonymous)'} ${where(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
  const totalOf = new Map<number, number>();
  const sub = (id: number): number => {
    const n = byId.get(id)!;
    let t = self.get(id) ?? 0;
    for (const c of n.children ?? []) t += sub(c);
    totalOf.set(id, t);
    return t;
  };
  const root = prof.nodes[0];
  sub(root.id);
  const onStack = new Map<string, number>();
  const walk = (id: number): void => {
    const n = byId.get(id)!;
    const k = key(n);
    const mine = where(n.callFrame.url).startsWith('agent/');
    if (mine && !onStack.get(k)) incl.set(k, (incl.get(k) ?? 0) + totalOf.get(id)!);
    if (mine) onStack.set(k, (onStack.get(k) ?? 0) + 1);
    for (const c of n.children ?? []) walk(c);
    if (mine) onStack.set(k, onStack.get(k)! - 1);
  };
  walk(root.id);
  const list = <K extends string>(m: Map<string, number>, key: K) =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(
        ([k, us]) =>
          ({ [key]: k, ms: us / 1000, pct: (100 * us) / total }) as { [P in K]: string } & {
            ms: number;
            pct: number;
          },
      );
  return {
    totalMs: total / 1000,
    byFunction: list(fn, 'name'),
    byFile: list(files, 'file'),
    inclusiveAgent: list(incl, 'name'),
  };
}

export function formatSummary(s: ProfileSummary): string {
  const out = [
    `total sampled ${(s.totalMs / 1000).toFixed(1)} s`,
    '',
    'self time by file/package:',
  ];
  for (const f of s.byFile)
    out.push(`  ${f.pct.toFixed(1).padStart(5)} %  ${f.ms.toFixed(0).padStart(7)} ms  ${f.file}`);
  out.push('', 'inclusive time (self + callees) of kedge functions (agent/):');
  for (const f of s.inclusiveAgent)
    out.push(`  ${f.pct.toFixed(1).padStart(5)} %  ${f.ms.toFixed(0).padStart(7)} ms  ${f.name}`);
  out.push('', 'self time by function:');
  for (const f of s.byFunction)
    out.push(`  ${f.pct.toFixed(1).padStart(5)} %  ${f.ms.toFixed(0).padStart(7)} ms  ${f.name}`);
  return out.join('\n');
}

if (import.meta.filename === process.argv[1]) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write(
      'usage: node scripts/bench/profile-summary.ts <file.cpuprofile> [top] [fromS-toS]\n',
    );
    process.exit(2);
  }
  const [from, to] = (process.argv[4] ?? '').split('-').map(Number);
  process.stdout.write(
    formatSummary(
      summarize(
        file,
        Number(process.argv[3] ?? 25),
        process.argv[4] ? { fromMs: from * 1000, toMs: to * 1000 } : undefined,
      ),
    ) + '\n',
  );
}
