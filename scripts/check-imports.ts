/**
 * `node scripts/check-imports.ts [ROOT]` (part of `npm run check`): the layering of
 * agent/, checked from the source text (every `import … from`, `import '…'`,
 * `import('…')` and `export … from`, type-only ones included). Fails, one line per
 * violation naming both files, on
 * - an import cycle among agent/ files;
 * - an upward import: a file may import only from its own layer or layers below;
 * - a sideways import between two layers of the same rank (forward and ingest).
 *
 * Layers, lowest first: the base files directly in agent/ (units, backoff, deadline,
 * errors… everything there but the three below) 0; config.ts 1; log/ 2; observe/ and route/ 3;
 * kafka/ 4; forward/ and ingest/ 5; status/ 6; agent.ts and cli.ts 7. A folder not
 * listed here is a violation too, so a new one gets a rank when it is made.
 * ROOT (default: this checkout) is the folder holding agent/.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

interface Layer {
  name: string;
  rank: number;
}

const FOLDERS: Record<string, number> = {
  log: 2,
  observe: 3,
  route: 3,
  kafka: 4,
  forward: 5,
  ingest: 5,
  status: 6,
};
const TOP = new Set(['agent.ts', 'cli.ts']);

/** The layer of a path relative to agent/ (posix separators); null when it has none. */
export function layerOf(rel: string): Layer | null {
  const parts = rel.split('/');
  if (parts.length === 1) {
    if (TOP.has(rel)) return { name: 'agent.ts/cli.ts', rank: 7 };
    if (rel === 'config.ts') return { name: 'config.ts', rank: 1 };
    return { name: 'base', rank: 0 };
  }
  const rank = FOLDERS[parts[0]];
  return rank === undefined ? null : { name: `${parts[0]}/`, rank };
}

/**
 * The source with comments blanked out (strings, template literals and regular
 * expression literals kept as they are), so an import in a comment does not count.
 */
export function stripComments(src: string): string {
  let out = '';
  let i = 0;
  /** Last non-space character outside comments: tells a regex literal from a division. */
  let prev = '';
  const n = src.length;
  while (i < n) {
    const c = src[i];
    const d = src[i + 1];
    if (c === '/' && d === '/') {
      while (i < n && src[i] !== '\n') i++;
      continue;
    }
    if (c === '/' && d === '*') {
      const end = src.indexOf('*/', i + 2);
      const stop = end === -1 ? n : end + 2;
      out += src.slice(i, stop).replace(/[^\n]/g, ' ');
      i = stop;
      continue;
    }
    const start = i;
    if (c === "'" || c === '"' || c === '`') {
      i++;
      // A quote string ends at the line's end at the latest (a stray quote cannot swallow the file).
      while (i < n && src[i] !== c && (c === '`' || src[i] !== '\n')) i += src[i] === '\\' ? 2 : 1;
      i++;
    } else if (c === '/' && (prev === '' || '(,=:[!&|?{};+-*%<>~^'.includes(prev))) {
      // A regular expression literal: skip to its closing slash (not one in a [class]).
      i++;
      let inClass = false;
      while (i < n && src[i] !== '\n' && (inClass || src[i] !== '/')) {
        if (src[i] === '\\') i++;
        else if (src[i] === '[') inClass = true;
        else if (src[i] === ']') inClass = false;
        i++;
      }
      i++;
    } else {
      i++;
    }
    out += src.slice(start, i);
    if (!/\s/.test(c)) prev = src[i - 1];
  }
  return out;
}

const IMPORT_PATTERNS = [
  // import x from '…', import type { A } from '…', export { a } from '…', export * as n from '…'
  /(?:^|[;\n}])\s*(?:import|export)\s+(?:type\s+)?[\w$*{},\s]*?\bfrom\s*(['"])([^'"\n]+)\1/g,
  // import '…' (side effects only)
  /(?:^|[;\n}])\s*import\s*(['"])([^'"\n]+)\1/g,
  // import('…')
  /\bimport\s*\(\s*(['"])([^'"\n]+)\1\s*\)/g,
];

/** The module specifiers a source file imports or re-exports from. */
export function importSpecifiers(src: string): string[] {
  const code = stripComments(src);
  const found: string[] = [];
  for (const re of IMPORT_PATTERNS) for (const m of code.matchAll(re)) found.push(m[2]);
  return found;
}

function listTs(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...listTs(p));
    else if (e.isFile() && e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** Every cycle in the import graph: per strongly connected component, the shortest cycle through each of its files, each cycle once. */
function cycles(graph: Map<string, string[]>): string[][] {
  // Tarjan's strongly connected components.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const components: string[][] = [];
  let next = 0;
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1 || (graph.get(v) ?? []).includes(v)) components.push(comp);
    }
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) visit(v);

  const found = new Map<string, string[]>();
  for (const comp of components) {
    const inComp = new Set(comp);
    for (const start of comp.sort()) {
      // Breadth first from `start` back to itself, within the component.
      const from = new Map<string, string>();
      const queue = [start];
      let cycle: string[] | null = null;
      while (queue.length && !cycle) {
        const v = queue.shift()!;
        for (const w of graph.get(v) ?? []) {
          if (!inComp.has(w)) continue;
          if (w === start) {
            cycle = [v];
            while (cycle[0] !== start) cycle.unshift(from.get(cycle[0])!);
            break;
          }
          if (!from.has(w)) {
            from.set(w, v);
            queue.push(w);
          }
        }
      }
      if (!cycle) continue;
      // The same cycle found from another of its files: keep one, starting at its first file.
      const first = cycle.indexOf([...cycle].sort()[0]);
      const canon = [...cycle.slice(first), ...cycle.slice(0, first)];
      found.set(canon.join('\n'), canon);
    }
  }
  return [...found.values()];
}

/** The violations under ROOT/agent, one line each; empty when the layering holds. */
export function checkImports(root: string): string[] {
  const agentDir = resolve(root, 'agent');
  const show = (abs: string) => relative(root, abs).split(sep).join('/');
  const files = listTs(agentDir).sort();
  const known = new Set(files);
  const graph = new Map<string, string[]>();
  const problems: string[] = [];
  for (const file of files) {
    const rel = relative(agentDir, file).split(sep).join('/');
    const layer = layerOf(rel);
    if (!layer) {
      problems.push(
        `${show(file)}: not in any layer (give its folder a rank in scripts/check-imports.ts)`,
      );
    }
    const edges: string[] = [];
    for (const spec of importSpecifiers(readFileSync(file, 'utf8'))) {
      if (!spec.startsWith('.')) continue; // a package
      const target = resolve(dirname(file), spec);
      if (!known.has(target)) continue; // outside agent/ (package.json), or not a .ts file
      if (!edges.includes(target)) edges.push(target);
      const to = layerOf(relative(agentDir, target).split(sep).join('/'));
      if (!layer || !to || to.name === layer.name) continue;
      if (to.rank > layer.rank) {
        problems.push(
          `upward import: ${show(file)} (${layer.name}, rank ${layer.rank}) imports ${show(target)} (${to.name}, rank ${to.rank})`,
        );
      } else if (to.rank === layer.rank) {
        problems.push(
          `sideways import: ${show(file)} (${layer.name}) imports ${show(target)} (${to.name}); layers of the same rank must not import each other`,
        );
      }
    }
    graph.set(file, edges);
  }
  for (const c of cycles(graph)) {
    problems.push(`import cycle: ${[...c, c[0]].map(show).join(' -> ')}`);
  }
  return problems;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = resolve(process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), '..'));
  if (!existsSync(join(root, 'agent'))) {
    process.stderr.write(`check-imports: no agent/ folder in ${root}\n`);
    process.exit(2);
  }
  const problems = checkImports(root);
  for (const p of problems) process.stdout.write(`${p}\n`);
  if (problems.length) {
    process.stdout.write(`check-imports: ${problems.length} layering violation(s) in agent/\n`);
    process.exit(1);
  }
  process.stdout.write('check-imports: agent/ layering holds (no cycles, no upward imports)\n');
}
