/**
 * SqlDb on `node-sqlite3-wasm` (SQLite compiled to WebAssembly with a VFS on
 * `node:fs`), for runtimes without `node:sqlite` (KEDGE_STORAGE=wasm).
 *
 * Things this build does differently from native SQLite, handled here:
 * - No shared-memory wal-index: WAL only works with `locking_mode=EXCLUSIVE`,
 *   set before `journal_mode=WAL` (the log does that for both drivers).
 * - Its file lock is a `<db>.lock` DIRECTORY made with mkdir. A process killed
 *   with -9 leaves it behind and the next open fails with "database is locked".
 *   `openWasm` removes it; the caller must hold the data-dir lock
 *   (lockfile.ts), which proves no live kedge is using the database.
 * - Statements are not garbage collected: every prepared statement must be
 *   finalized before close (the log prepares once and finalizes on close).
 * - `Statement.get()` leaves the statement un-reset (an open read), so `get`
 *   here runs the query to completion instead; use it only for queries that
 *   return at most one row.
 * - Errors carry only a message (no numeric code); see sqlErrorKind().
 * - Its VFS never fsyncs the directory after creating a file; native SQLite
 *   does for the WAL, so that its directory entry survives a power cut. We do
 *   it here (see WalDirSync).
 * - After a failed step (e.g. SQLITE_FULL) the statement is not reset, and the
 *   next bind fails with "Could not reset statement" because sqlite3_reset
 *   repeats the old error. We reset it right after the failure (the package's
 *   private `_reset`), or, if a later version lacks it, retry that call once
 *   (the failed reset did reset the statement).
 *
 * Locating the .wasm: by default the package's dist js reads
 * `node-sqlite3-wasm.wasm` next to itself (`locateFile` →
 * `__dirname + '/node-sqlite3-wasm.wasm'`). The dist js starts with
 * `var Module = typeof Module != "undefined" ? Module : {}` and honours
 * `Module.locateFile`; since `var Module` is local to the CommonJS wrapper, a
 * global cannot inject it, so when the `wasmPath` option is given we compile
 * the dist js ourselves with `Module` as an extra wrapper parameter. (The
 * single executable does not come through here: scripts/build/sea-setup.ts
 * serves the package with `Module.wasmBinary` already set.) The module is one
 * WebAssembly instance per process: the first open decides where it came from.
 */
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import vm from 'node:vm';
import type { DriverOpenOptions, Row, SqlDb, SqlRunResult, SqlStmt } from './driver.ts';
import { blobsToBuffers } from './driver.ts';
import { LogOpenError } from './types.ts';

interface WasmStatement {
  /** Private in 0.8.60 (clear_bindings + sqlite3_reset); used only to recover after a failed step. */
  _reset?: () => boolean;
  run(values?: unknown[]): { changes: number; lastInsertRowid: number | bigint };
  all(values?: unknown[]): Row[];
  finalize(): void;
  readonly isFinalized: boolean;
}
interface WasmDatabase {
  exec(sql: string): void;
  prepare(sql: string): WasmStatement;
  close(): void;
  readonly isOpen: boolean;
}
interface WasmModule {
  Database: new (
    file: string,
    opts?: { fileMustExist?: boolean; readOnly?: boolean },
  ) => WasmDatabase;
}

const require = createRequire(import.meta.url);
const PKG = 'node-sqlite3-wasm';
const WASM_FILE = 'node-sqlite3-wasm.wasm';

let mod: WasmModule | undefined;

function load(opts: DriverOpenOptions): WasmModule {
  if (mod) return mod;
  const wasmPath = opts.wasmPath;
  try {
    if (!wasmPath) {
      mod = require(PKG) as WasmModule;
      return mod;
    }
    const resolved = path.resolve(wasmPath);
    if (!fs.existsSync(resolved)) {
      throw new LogOpenError(
        `the SQLite WebAssembly file ${resolved} does not exist`,
        'KEDGE_STORAGE_UNAVAILABLE',
      );
    }
    const overrides = {
      locateFile: (file: string, scriptDir: string) =>
        file === WASM_FILE ? resolved : scriptDir + file,
    };
    const filename = require.resolve(PKG);
    const fn = vm.compileFunction(
      fs.readFileSync(filename, 'utf8'),
      ['exports', 'require', 'module', '__filename', '__dirname', 'Module'],
      { filename },
    );
    const m = { exports: {} as unknown };
    fn(m.exports, require, m, filename, path.dirname(filename), overrides);
    mod = m.exports as WasmModule;
    return mod;
  } catch (err) {
    if (err instanceof LogOpenError) throw err;
    throw new LogOpenError(
      `could not load the WebAssembly SQLite (${PKG}): ${(err as Error).message}`,
      'KEDGE_STORAGE_UNAVAILABLE',
      { cause: err },
    );
  }
}

/**
 * Fsync the directory once the WAL exists, as native SQLite does after creating
 * it: without that a power cut can lose the WAL's directory entry, and with it
 * every commit in it. The VFS that creates the file is closures inside the
 * package's dist js (`_nodejs_open`), reachable only through the process-wide
 * `node:fs` object, which we do not patch. SQLite creates the WAL only while
 * running a statement, so after each statement, until we have seen the WAL,
 * we look for `<file>-wal`; the directory is synced before that statement's
 * caller learns of any commit in it. Once is enough: the log keeps WAL mode
 * with locking_mode=EXCLUSIVE, which keeps the WAL for the life of the
 * connection (checkpoints truncate it, never delete it). The same fsync makes
 * the database file's own entry durable (same directory, created earlier).
 */
class WalDirSync {
  readonly #wal: string;
  #done = false;
  constructor(file: string) {
    this.#wal = `${path.resolve(file)}-wal`;
  }
  afterStatement(): void {
    if (this.#done || !fs.existsSync(this.#wal)) return;
    this.#done = true;
    const dir = path.dirname(this.#wal);
    try {
      fsyncDir(dir);
    } catch (err) {
      // Like native SQLite, a directory that cannot be synced (some file systems refuse) does not fail the commit; but say so.
      process.emitWarning(
        `kedge log: cannot fsync directory ${dir} after creating ${this.#wal} (${(err as Error).message}); a power cut may lose it`,
      );
    }
  }
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

class WasmStmt implements SqlStmt {
  #stmt: WasmStatement;
  #walSync: WalDirSync;
  constructor(stmt: WasmStatement, walSync: WalDirSync) {
    this.#stmt = stmt;
    this.#walSync = walSync;
  }
  run(params: unknown[]): SqlRunResult {
    let r: { changes: number; lastInsertRowid: number | bigint };
    try {
      r = this.#stmt.run(params);
    } catch (err) {
      r = this.#recover(err, () => this.#stmt.run(params));
    }
    this.#walSync.afterStatement();
    if (typeof r.lastInsertRowid === 'bigint') r.lastInsertRowid = Number(r.lastInsertRowid);
    return r as SqlRunResult;
  }
  get(params: unknown[]): Row | undefined {
    const rows = this.#all(params);
    return rows.length === 0 ? undefined : blobsToBuffers(rows[0]);
  }
  all(params: unknown[]): Row[] {
    const rows = this.#all(params);
    for (const row of rows) blobsToBuffers(row);
    return rows;
  }
  #all(params: unknown[]): Row[] {
    let rows: Row[];
    try {
      rows = this.#stmt.all(params);
    } catch (err) {
      rows = this.#recover(err, () => this.#stmt.all(params));
    }
    this.#walSync.afterStatement();
    return rows;
  }
  /** After a failure: reset now so the next call starts clean; or retry a call that only failed on the stale reset. */
  #recover<T>(err: unknown, retry: () => T): T {
    if (/^Could not reset statement/.test((err as Error)?.message ?? '')) return retry();
    try {
      this.#stmt._reset?.();
    } catch {
      // reset reports the step's error again; the statement is reset regardless
    }
    throw err;
  }
  finalize(): void {
    if (!this.#stmt.isFinalized) this.#stmt.finalize();
  }
}

class WasmDb implements SqlDb {
  readonly driver = 'wasm' as const;
  #db: WasmDatabase;
  #walSync: WalDirSync;
  constructor(db: WasmDatabase, file: string) {
    this.#db = db;
    this.#walSync = new WalDirSync(file);
  }
  exec(sql: string): void {
    this.#db.exec(sql);
    this.#walSync.afterStatement();
  }
  prepare(sql: string): SqlStmt {
    return new WasmStmt(this.#db.prepare(sql), this.#walSync);
  }
  close(): void {
    if (this.#db.isOpen) this.#db.close();
  }
}

/** The caller must hold the data-dir lock: a leftover `<file>.lock` directory is removed as stale. */
export function openWasm(opts: DriverOpenOptions): SqlDb {
  const { Database } = load(opts);
  removeStaleLockDir(opts.file);
  return new WasmDb(new Database(opts.file), opts.file);
}

function removeStaleLockDir(file: string): void {
  const lockDir = `${file}.lock`;
  let st: fs.Stats;
  try {
    st = fs.lstatSync(lockDir);
  } catch {
    return;
  }
  if (st.isDirectory()) fs.rmSync(lockDir, { recursive: true, force: true });
}
