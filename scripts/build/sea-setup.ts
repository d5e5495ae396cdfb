/**
 * Runs first inside the single executable (see sea-main.ts), before any agent
 * module: makes `node-sqlite3-wasm` loadable although no node_modules exist on
 * the device.
 *
 * The agent loads it with a file-based require (`createRequire`), for the
 * `KEDGE_STORAGE=wasm` driver. Here a module resolve/load hook
 * (`module.registerHooks`, synchronous, in-thread) answers that one specifier
 * with the package's dist js, embedded as a SEA asset, prefixed with a
 * `Module` object that already holds the .wasm bytes (a second asset): the
 * Emscripten loader starts with `var Module = typeof Module != "undefined" ?
 * Module : {}` and uses `Module.wasmBinary` instead of reading the file next to
 * itself. scripts/build/bundle.ts asserts at build time that the package still
 * looks like that. Nothing is written to disk; outside a SEA this does nothing.
 */
import { registerHooks } from 'node:module';
import { getAsset, isSea } from 'node:sea';

// Literal copies of layout.ts WASM_SQLITE_ASSETS: this file is bundled into
// the executable and must not pull build-only modules in.
const JS_ASSET = 'node-sqlite3-wasm.js';
const WASM_ASSET = 'node-sqlite3-wasm.wasm';
const SPECIFIER = 'node-sqlite3-wasm';
/** Never read from disk; shows up in stack traces of the embedded module. */
const URL = 'file:///kedge-embedded/node_modules/node-sqlite3-wasm/dist/node-sqlite3-wasm.js';

/** Prepended to the dist js, on the same line so positions in stack traces stay right. */
export const WASM_PRELUDE = `var Module={wasmBinary:new Uint8Array(require("node:sea").getAsset(${JSON.stringify(WASM_ASSET)}))};`;

if (isSea()) {
  registerHooks({
    resolve(specifier, context, nextResolve) {
      if (specifier === SPECIFIER) return { url: URL, format: 'commonjs', shortCircuit: true };
      return nextResolve(specifier, context);
    },
    load(url, context, nextLoad) {
      if (url !== URL) return nextLoad(url, context);
      return {
        format: 'commonjs',
        source: WASM_PRELUDE + getAsset(JS_ASSET, 'utf8'),
        shortCircuit: true,
      };
    },
  });
}
