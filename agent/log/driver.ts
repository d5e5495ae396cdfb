/**
 * The smallest SQLite surface the log needs, so it runs on Node's built-in
 * `node:sqlite` (default) or on `node-sqlite3-wasm` (runtimes without it)
 * with the same code. Only `agent/log/` uses this.
 *
 * Contract both drivers keep:
 * - parameters are positional (`?`), passed as one array;
 * - BLOB columns come back as `Buffer` (a view, not a copy, of what the driver returned);
 * - INTEGER columns come back as `number` (the log never stores values above 2^53);
 * - `get` returns `undefined` when there is no row, and leaves the statement reset
 *   (no read transaction kept open behind the caller's back);
 * - statements must be finalized before `close()` (the wasm driver leaks otherwise).
 */
import type { StorageDriverName } from './types.ts';

export type Row = Record<string, unknown>;

export interface SqlRunResult {
  changes: number;
  lastInsertRowid: number;
}

export interface SqlStmt {
  run(params: unknown[]): SqlRunResult;
  get(params: unknown[]): Row | undefined;
  all(params: unknown[]): Row[];
  finalize(): void;
}

export interface SqlDb {
  readonly driver: StorageDriverName;
  exec(sql: string): void;
  prepare(sql: string): SqlStmt;
  close(): void;
}

export interface DriverOpenOptions {
  /** Path of the database file. */
  file: string;
  /** wasm driver only: where `node-sqlite3-wasm.wasm` is. Default: the file next to the package's dist js. */
  wasmPath?: string;
}

/** Zero-copy view of a driver BLOB as a Buffer. */
export function toBuffer(u8: Uint8Array): Buffer {
  return Buffer.isBuffer(u8) ? u8 : Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

/** Turn every Uint8Array column of a row into a Buffer, in place. */
export function blobsToBuffers(row: Row): Row {
  for (const k in row) {
    const v = row[k];
    if (v instanceof Uint8Array) row[k] = toBuffer(v);
  }
  return row;
}

/** What kind of SQLite failure an error from either driver is (node:sqlite has numeric codes, the wasm build only messages). */
export type SqlErrorKind = 'full' | 'corrupt' | 'notadb' | 'busy' | 'io' | 'other';

// Primary result codes, https://www.sqlite.org/rescode.html
const SQLITE_BUSY = 5;
const SQLITE_LOCKED = 6;
const SQLITE_IOERR = 10;
const SQLITE_CORRUPT = 11;
const SQLITE_FULL = 13;
const SQLITE_NOTADB = 26;

export function sqlErrorKind(err: unknown): SqlErrorKind {
  const e = err as {
    errcode?: unknown;
    errstr?: unknown;
    message?: unknown;
    code?: unknown;
  } | null;
  if (e && typeof e.errcode === 'number') {
    switch (e.errcode & 0xff) {
      case SQLITE_FULL:
        return 'full';
      case SQLITE_CORRUPT:
        return 'corrupt';
      case SQLITE_NOTADB:
        return 'notadb';
      case SQLITE_BUSY:
      case SQLITE_LOCKED:
        return 'busy';
      case SQLITE_IOERR:
        return 'io';
    }
  }
  if (e && e.code === 'ENOSPC') return 'full';
  const msg = e && typeof e.message === 'string' ? e.message : String(err);
  if (/database or disk is full|ENOSPC/i.test(msg)) return 'full';
  if (/file is not a database/i.test(msg)) return 'notadb';
  if (/malformed|corrupt/i.test(msg)) return 'corrupt';
  if (/database is locked|database table is locked|busy/i.test(msg)) return 'busy';
  if (/disk I\/O error/i.test(msg)) return 'io';
  return 'other';
}
