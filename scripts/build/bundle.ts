/**
 * esbuild: the agent (ESM TypeScript) → one CommonJS file, the main script of
 * the single executable (a SEA main script is CommonJS, and its own `require`
 * loads built-in modules only, so every package must be inside the bundle).
 *
 * What needs help, and how it gets it here rather than in agent code:
 * - `import.meta.url` is empty in CommonJS output: it is defined as the file URL
 *   of the running script (`__filename`, which in a SEA is the executable).
 * - `const require = createRequire(import.meta.url)` followed by
 *   `require('kafkajs')` hides the package from esbuild (a local `require` is
 *   not analysed). In files whose every require is of a string literal, that
 *   line is dropped at bundle time, so the calls become plain requires esbuild
 *   bundles. Files requiring computed names keep their createRequire (the wasm
 *   driver: its `node-sqlite3-wasm` is served by sea-setup.ts instead).
 * - node-sqlite3-wasm is not bundled: its dist js and .wasm become SEA assets.
 *   Its loader is asserted to still honour `Module.wasmBinary` (what
 *   sea-setup.ts relies on), so an upgrade that changes it fails here, not on
 *   a device.
 * After bundling, the output must not require anything but built-in modules,
 * and every package the agent imports must be inside it.
 */
import { build, type Metafile, type Plugin } from 'esbuild';
import { readFileSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import { dirname, join, relative, sep } from 'node:path';
import { BuildError } from './exec.ts';
import { ROOT, WASM_SQLITE_ASSETS } from './layout.ts';

const ENTRY = join(ROOT, 'scripts/build/sea-main.ts');
/** The Kafka thread's code (agent/kafka/kafka-thread.ts starts it from the SEA asset KAFKA_WORKER_ASSET). */
export const WORKER_ENTRY = join(ROOT, 'agent/kafka/kafka-worker.ts');
const AGENT = join(ROOT, 'agent') + sep;
const META_URL = '__kedge_import_meta_url';
/** Served at run time by sea-setup.ts from SEA assets, never bundled. */
export const EXTERNAL_PACKAGES = ['node-sqlite3-wasm'] as const;

const CREATE_REQUIRE_LINE =
  /^(?:const|let|var) require = createRequire\(import\.meta\.url\);?[ \t]*$/m;
const REQUIRE_USE = /\brequire\s*[.(]/g;
const REQUIRE_LITERAL = /\brequire\s*\(\s*(['"])[^'"\n]+\1\s*\)/g;

/**
 * Packages a dependency requires inside try/catch and does without; esbuild
 * leaves such a require in place when the package is not installed. In the
 * executable the require throws and the dependency takes its fallback. Any
 * other leftover require fails the build.
 */
export const OPTIONAL_REQUIRES: Record<string, string> = {
  bufferutil: 'ws (under mqtt): optional native addon; ws masks frames in JavaScript without it',
  'utf-8-validate':
    'ws (under mqtt): optional native addon; ws validates UTF-8 with Node itself without it',
};

/**
 * Package modules whose `createRequire` + require of an optional package is replaced,
 * at bundle time, by a throw: their own try/catch (or the never-called code path) then
 * takes the fallback in the executable whatever happens to be on the device's disk.
 * A file that no longer holds the require fails the build (the package changed).
 */
export const STUBBED_REQUIRES: { file: string; require: string; why: string }[] = [
  {
    file: 'node_modules/@platformatic/kafka/dist/protocol/crc32c.js',
    require: "require('@node-rs/crc32')",
    why: "@platformatic/kafka's optional native CRC32C add-on; without it the client uses the CRC32C of its bundled WebAssembly module (@platformatic/wasm-utils)",
  },
  {
    file: 'node_modules/@platformatic/kafka/dist/registries/confluent-schema-registry.js',
    require: "require('protobufjs')",
    why: "protobuf schemas of @platformatic/kafka's schema-registry support, which kedge does not use",
  },
];

/**
 * `require(...)` text in the bundle that is a string, not a call: ajv (under
 * @platformatic/kafka, which validates its options with it) keeps the source text of
 * its runtime helpers for its standalone code generator; compiled validators refer to
 * the helpers themselves (scopeRefs), never to this text.
 */
export const REQUIRE_TEXT_ONLY: { prefix: string; why: string }[] = [
  {
    prefix: 'ajv/dist/runtime/',
    why: 'ajv: source text for standalone validation code, never run',
  },
];

/**
 * Module aliases: @platformatic/wasm-utils loads its .wasm file from beside its js,
 * which a single executable does not have; its `bundled` entry carries the module inline.
 */
export const ALIASES: Record<string, string> = {
  '@platformatic/wasm-utils': '@platformatic/wasm-utils/bundled',
};

/** Applies STUBBED_REQUIRES; `applied` collects the files it changed. */
export function stubbedRequirePlugin(applied: string[]): Plugin {
  return {
    name: 'kedge-stubbed-require',
    setup(b) {
      for (const stub of STUBBED_REQUIRES) {
        // Matched by its path below node_modules: node_modules may be a symlink esbuild resolves.
        const tail = `/${stub.file}`.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
        b.onLoad({ filter: new RegExp(`${tail}$`) }, (args) => {
          const src = readFileSync(args.path, 'utf8');
          if (!src.includes(stub.require)) return undefined;
          applied.push(stub.file);
          return {
            contents: src.replace(
              stub.require,
              `(() => { throw new Error(${JSON.stringify(`not in the kedge executable: ${stub.why}`)}); })()`,
            ),
            loader: 'js',
            resolveDir: dirname(args.path),
          };
        });
      }
    },
  };
}

/**
 * Agent files allowed to keep a file-based require of a computed name, and why
 * that works in the executable. Any other one fails the build: its package
 * would be missing on the device.
 */
export const DYNAMIC_REQUIRE_OK: Record<string, string> = {
  'agent/log/driver-wasm.ts':
    'node-sqlite3-wasm, served from SEA assets by scripts/build/sea-setup.ts',
};

/** What an agent file kept as run-time requires (it uses createRequire and was not made static). */
export function runtimeRequiresOf(file: string): { literal: string[]; computed: number } {
  const src = readFileSync(file, 'utf8');
  if (!CREATE_REQUIRE_LINE.test(src)) return { literal: [], computed: 0 };
  const rest = src.replace(CREATE_REQUIRE_LINE, '');
  const literal = [...rest.matchAll(REQUIRE_LITERAL)].map((m) =>
    m[0].replace(/^require\s*\(\s*['"]|['"]\s*\)$/g, ''),
  );
  const computed = [...rest.matchAll(/\brequire\s*\(/g)].length - literal.length;
  return { literal, computed };
}

/** Turns `createRequire(import.meta.url)` + literal requires into plain, bundleable requires. */
export function staticRequirePlugin(patched: string[], under: string = AGENT): Plugin {
  return {
    name: 'kedge-static-require',
    setup(b) {
      b.onLoad({ filter: /\.ts$/ }, (args) => {
        if (!args.path.startsWith(under)) return undefined;
        const src = readFileSync(args.path, 'utf8');
        const m = CREATE_REQUIRE_LINE.exec(src);
        if (!m) return undefined;
        const rest = src.slice(0, m.index) + src.slice(m.index + m[0].length);
        const uses = rest.match(REQUIRE_USE)?.length ?? 0;
        const literal = rest.match(REQUIRE_LITERAL)?.length ?? 0;
        if (uses === 0 || uses !== literal) return undefined;
        patched.push(relative(ROOT, args.path));
        // Same line count, so esbuild's positions still point at the right line.
        return {
          contents:
            src.slice(0, m.index) +
            '/* require: bundled by scripts/build/bundle.ts */' +
            src.slice(m.index + m[0].length),
          loader: 'ts',
        };
      });
    },
  };
}

export interface WasmSqlite {
  version: string;
  js: string;
  wasm: string;
}

/** The package files that become SEA assets, checked for what sea-setup.ts depends on. */
export function wasmSqlite(): WasmSqlite {
  const dir = join(ROOT, 'node_modules/node-sqlite3-wasm');
  const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
    version: string;
    main?: string;
  };
  const js = join(dir, pkg.main ?? 'dist/node-sqlite3-wasm.js');
  const wasm = join(dirname(js), WASM_SQLITE_ASSETS.wasm);
  const where = `node-sqlite3-wasm@${pkg.version}`;
  let code: string;
  let bytes: Buffer;
  try {
    code = readFileSync(js, 'utf8');
    bytes = readFileSync(wasm);
  } catch (e) {
    throw new BuildError(
      `${where}: expected ${relative(ROOT, js)} and ${relative(ROOT, wasm)} (${(e as Error).message}); the package layout changed, update scripts/build/sea-setup.ts`,
    );
  }
  const problems: string[] = [];
  if (
    !/^var Module\s*=\s*typeof Module\s*!=\s*["']undefined["']\s*\?\s*Module\s*:\s*\{\}/.test(code)
  ) {
    problems.push(
      'its dist js no longer starts with `var Module = typeof Module != "undefined" ? Module : {}`',
    );
  }
  if (!code.includes('Module["wasmBinary"]'))
    problems.push('its dist js no longer reads Module["wasmBinary"]');
  if (!code.includes(WASM_SQLITE_ASSETS.wasm))
    problems.push(`its dist js no longer loads ${WASM_SQLITE_ASSETS.wasm}`);
  if (bytes.readUInt32BE(0) !== 0x0061736d)
    problems.push(`${WASM_SQLITE_ASSETS.wasm} is not a WebAssembly module`);
  if (problems.length) {
    throw new BuildError(
      `${where} changed in a way the single executable depends on (scripts/build/sea-setup.ts):\n${problems.map((p) => `  - ${p}`).join('\n')}`,
    );
  }
  return { version: pkg.version, js, wasm };
}

/** Package names these source files import at run time (type-only imports excluded). */
export function importedPackages(files: readonly string[]): string[] {
  const found = new Set<string>();
  for (const file of files) {
    const src = readFileSync(file, 'utf8');
    const specs = [
      ...[...src.matchAll(/^\s*import\s+(?!type\s)([^;]*?)\sfrom\s+['"]([^'"]+)['"]/gm)]
        .filter(
          (m) =>
            !/^\{[^}]*\}$/.test(m[1].trim()) ||
            m[1]
              .replace(/[{}\s]/g, '')
              .split(',')
              .some((n) => n && !n.startsWith('type')),
        )
        .map((m) => m[2]),
      ...[...src.matchAll(/^\s*import\s+['"]([^'"]+)['"]/gm)].map((m) => m[1]),
      ...[...src.matchAll(/\brequire\(\s*['"]([^'"]+)['"]\s*\)/g)].map((m) => m[1]),
    ];
    for (const s of specs) {
      if (s.startsWith('.') || s.startsWith('/') || isBuiltin(s)) continue;
      found.add(s.startsWith('@') ? s.split('/').slice(0, 2).join('/') : s.split('/')[0]);
    }
  }
  return [...found].sort();
}

/** Packages (name@version, dir) whose files ended up in the bundle. */
export function bundledPackages(meta: Metafile): Map<string, string> {
  const out = new Map<string, string>();
  for (const input of Object.keys(meta.inputs)) {
    const m = /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input.split(sep).join('/'));
    if (!m) continue;
    const idx = input.lastIndexOf(`node_modules/${m[1]}/`);
    out.set(m[1], join(ROOT, input.slice(0, idx), 'node_modules', m[1]));
  }
  return out;
}

export interface BundleResult {
  file: string;
  bytes: number;
  /** Agent files whose createRequire was made static. */
  patched: string[];
  /** Bundled packages: name → directory. */
  packages: Map<string, string>;
  wasm: WasmSqlite;
}

/** Bundles `entry` (default: the executable's main script; WORKER_ENTRY: the Kafka thread) into `outfile`. */
export async function bundle(outfile: string, entry: string = ENTRY): Promise<BundleResult> {
  const wasm = wasmSqlite();
  const patched: string[] = [];
  const stubbed: string[] = [];
  const result = await build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node24',
    minify: true,
    // Error class names show up in logs and messages.
    keepNames: true,
    legalComments: 'none', // the licences ship in THIRD_PARTY_NOTICES
    external: [...EXTERNAL_PACKAGES],
    alias: ALIASES,
    define: {
      'import.meta.url': META_URL,
      'import.meta.filename': '__filename',
      'import.meta.dirname': '__dirname',
    },
    banner: { js: `var ${META_URL}=require("node:url").pathToFileURL(__filename).href;` },
    plugins: [staticRequirePlugin(patched), stubbedRequirePlugin(stubbed)],
    metafile: true,
    logLevel: 'silent',
    absWorkingDir: ROOT,
  });
  if (result.warnings.length) {
    const lines = result.warnings.map(
      (w) => `  - ${w.location ? `${w.location.file}:${w.location.line}: ` : ''}${w.text}`,
    );
    throw new BuildError(
      `esbuild warnings (each is a likely run-time failure inside the executable):\n${lines.join('\n')}`,
    );
  }

  // Only a bundle that holds @platformatic/kafka holds what is stubbed.
  const hasPlatformatic = Object.keys(result.metafile.inputs).some((f) =>
    f.includes('node_modules/@platformatic/kafka/'),
  );
  const unstubbed = hasPlatformatic
    ? STUBBED_REQUIRES.filter((s) => !stubbed.includes(s.file))
    : [];
  if (unstubbed.length) {
    throw new BuildError(
      `expected to stub ${unstubbed.map((s) => `${s.require} in ${s.file}`).join('; ')} (STUBBED_REQUIRES in scripts/build/bundle.ts): the package changed, check how it loads that optional module now`,
    );
  }

  const code = readFileSync(outfile, 'utf8');
  const runtimeRequires = new Set<string>();
  for (const m of code.matchAll(/\brequire\(\s*(['"`])([^'"`]+)\1\s*\)/g)) {
    if (
      !isBuiltin(m[2]) &&
      !(EXTERNAL_PACKAGES as readonly string[]).includes(m[2]) &&
      !(m[2] in OPTIONAL_REQUIRES) &&
      !REQUIRE_TEXT_ONLY.some((t) => m[2].startsWith(t.prefix))
    )
      runtimeRequires.add(m[2]);
  }
  for (const file of Object.keys(result.metafile.inputs)) {
    const rel = file.split(sep).join('/');
    if (!rel.startsWith('agent/') || patched.includes(rel)) continue;
    const r = runtimeRequiresOf(join(ROOT, file));
    const bad = r.literal.filter(
      (m) => !isBuiltin(m) && !(EXTERNAL_PACKAGES as readonly string[]).includes(m),
    );
    if (bad.length) runtimeRequires.add(`${bad.join(', ')} (createRequire in ${rel})`);
    if (r.computed > 0 && !DYNAMIC_REQUIRE_OK[rel]) {
      runtimeRequires.add(
        `a computed module name (createRequire in ${rel}; if it is served some other way, add it to DYNAMIC_REQUIRE_OK in scripts/build/bundle.ts)`,
      );
    }
  }
  if (runtimeRequires.size) {
    throw new BuildError(
      `the bundle would require at run time: ${[...runtimeRequires].join('; ')}. A single executable has no node_modules`,
    );
  }
  const packages = bundledPackages(result.metafile);
  const agentFiles = Object.keys(result.metafile.inputs)
    .map((f) => join(ROOT, f))
    .filter((f) => f.startsWith(AGENT));
  const missing = importedPackages(agentFiles).filter(
    (p) => !packages.has(p) && !(EXTERNAL_PACKAGES as readonly string[]).includes(p),
  );
  if (missing.length) {
    throw new BuildError(
      `the agent imports ${missing.join(', ')} in modules of the bundle, but it does not contain ${missing.length === 1 ? 'it' : 'them'} (loaded in a way esbuild cannot see?)`,
    );
  }
  return { file: outfile, bytes: Buffer.byteLength(code), patched, packages, wasm };
}
