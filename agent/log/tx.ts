/**
 * Transactions on the log's one connection, shared by the facade
 * (sqlite-log.ts), space.ts and maintenance.ts: BEGIN/COMMIT/ROLLBACK
 * prepared once, the relaxed-sync wrapper for space-freeing writes,
 * checkpoints, and turning a driver error into a LogWriteError.
 *
 * All SQLite calls are synchronous and each transaction begins and ends
 * within one call, so transactions never interleave.
 */
import fs from 'node:fs';
import type { SqlDb, SqlStmt } from './driver.ts';
import { sqlErrorKind } from './driver.ts';
import { LogWriteError } from './types.ts';

/** A disk with less than this free is "full" when the wasm VFS reports only a generic I/O error. */
const DISK_FULL_SLACK = 1 << 20;

export const NO_PARAMS: unknown[] = [];

/** Prepares a statement that is reused and finalized when the log closes. */
export type Prepare = (sql: string) => SqlStmt;

export interface TxOptions {
  dir: string;
  file: string;
  /** sync=full: relax to NORMAL around ack/trim/dead-letter transactions (see relaxed). */
  syncFull: boolean;
}

export class Tx {
  readonly #db: SqlDb;
  readonly #begin: SqlStmt;
  readonly #commit: SqlStmt;
  readonly #rollback: SqlStmt;
  readonly #dir: string;
  readonly #file: string;
  readonly #syncFull: boolean;

  constructor(db: SqlDb, prepare: Prepare, opts: TxOptions) {
    this.#db = db;
    this.#dir = opts.dir;
    this.#file = opts.file;
    this.#syncFull = opts.syncFull;
    this.#begin = prepare('BEGIN IMMEDIATE');
    this.#commit = prepare('COMMIT');
    this.#rollback = prepare('ROLLBACK');
  }

  begin(): void {
    this.#begin.run(NO_PARAMS);
  }

  commit(): void {
    this.#commit.run(NO_PARAMS);
  }

  rollbackQuietly(): void {
    try {
      this.#rollback.run(NO_PARAMS);
    } catch {
      // SQLite rolls back by itself on some errors (e.g. SQLITE_FULL); then there is nothing to undo.
    }
  }

  /**
   * Run transactions that only remove forwarded data or move the cursor with
   * synchronous=NORMAL even under sync=full: they need no fsync of their own.
   * Losing one to a power cut only means events already in Kafka are sent
   * again (at-least-once, deduplicated by kedge-id), and the WAL being
   * sequential, the next append's fsync makes them durable anyway. This keeps
   * the fsync budget for appends while a backlog drains.
   */
  relaxed(fn: () => void): void {
    if (!this.#syncFull) {
      fn();
      return;
    }
    // exec, not a reused prepared statement: this pragma acts when compiled, not when stepped.
    this.#db.exec('PRAGMA synchronous = NORMAL');
    try {
      fn();
    } finally {
      this.#db.exec('PRAGMA synchronous = FULL');
    }
  }

  /**
   * A checkpoint, best effort (the callers say why failing is fine for them).
   * RESTART: copy the WAL into the database and have the next write start the
   * WAL over. TRUNCATE: the same, and cut the WAL file to zero bytes.
   */
  checkpoint(mode: 'RESTART' | 'TRUNCATE'): void {
    try {
      this.#db.exec(`PRAGMA wal_checkpoint(${mode})`);
    } catch {
      // best effort
    }
  }

  writeError(err: unknown, what: string): LogWriteError {
    if (err instanceof LogWriteError) return err;
    const kind = sqlErrorKind(err);
    const msg = (err as Error)?.message ?? String(err);
    if (kind === 'full' || (kind === 'io' && diskNearlyFull(this.#dir))) {
      return new LogWriteError(
        `cannot ${what}: disk full (${this.#file}: ${msg})`,
        'KEDGE_DISK_FULL',
        { cause: err },
      );
    }
    return new LogWriteError(`cannot ${what}: ${msg} (${this.#file})`, 'KEDGE_LOG_WRITE', {
      cause: err,
    });
  }
}

function diskNearlyFull(dir: string): boolean {
  try {
    const s = fs.statfsSync(dir);
    return s.bavail * s.bsize < DISK_FULL_SLACK;
  } catch {
    return false;
  }
}
