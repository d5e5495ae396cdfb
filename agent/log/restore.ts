/**
 * Writes the rows `kedge repair` saved into a fresh log file: the same schema, pragmas
 * and migrations as any new log (setup.ts `configure`), and rows inserted with their
 * original seq (the normal append path assigns new seqs, so restoring needs its own
 * INSERTs; they live here, used by nothing else). Rows are committed in chunks; the file
 * is checkpointed and closed, so it stands alone (no -wal) before it is renamed into place.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { SqlDb, SqlStmt } from './driver.ts';
import { openDriver } from './open-driver.ts';
import type { SqlValue } from './salvage-pages.ts';
import type { RowSink } from './salvage.ts';
import { configure } from './setup.ts';
import { NO_PARAMS } from './tx.ts';
import type { Lane, StorageDriverName } from './types.ts';

/** Rows per transaction: bounded WAL growth, few fsyncs. */
const CHUNK = 5000;

export class FreshLog implements RowSink {
  readonly file: string;
  readonly #db: SqlDb;
  readonly #stmts: SqlStmt[] = [];
  readonly #ins: Record<Lane, SqlStmt>;
  readonly #dl: SqlStmt;
  readonly #destDl: SqlStmt;
  readonly #cursor: SqlStmt;
  readonly #meta: SqlStmt;
  readonly #destCursor: SqlStmt;
  #inTx = 0;

  private constructor(db: SqlDb, file: string) {
    this.#db = db;
    this.file = file;
    const p = (sql: string) => {
      const st = db.prepare(sql);
      this.#stmts.push(st);
      return st;
    };
    const cols = 'seq, topic, key, value, headers, ts, size';
    this.#ins = {
      bulk: p(`INSERT OR IGNORE INTO events(${cols}) VALUES (?, ?, ?, ?, ?, ?, ?)`),
      priority: p(`INSERT OR IGNORE INTO events_priority(${cols}) VALUES (?, ?, ?, ?, ?, ?, ?)`),
    };
    this.#dl = p(
      `INSERT OR IGNORE INTO dead_letters(${cols}, reason, dead_at, lane) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.#destDl = p(
      'INSERT OR IGNORE INTO dest_dead_letters(id, dest, seq, kedge_id, topic, key, value, headers, ts, size, reason, dead_at, lane) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    this.#cursor = p(
      'INSERT INTO cursors(dest, seq) VALUES (?, ?) ON CONFLICT(dest) DO UPDATE SET seq = excluded.seq',
    );
    this.#meta = p(
      'INSERT INTO meta(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v',
    );
    this.#destCursor = p(
      'INSERT OR REPLACE INTO dest_cursors(dest, lane, seq, keep, state) VALUES (?, ?, ?, ?, ?)',
    );
  }

  /** A new, empty kedge log at `file` (which must not exist). */
  static async create(file: string, driver: StorageDriverName): Promise<FreshLog> {
    if (fs.existsSync(file)) throw new Error(`${file} exists already`);
    const db = await openDriver(driver, { file });
    try {
      configure(db, file, { dir: path.dirname(file), driver, sync: 'full' });
      return new FreshLog(db, file);
    } catch (err) {
      db.close();
      throw err;
    }
  }

  event(lane: Lane, v: SqlValue[]): void {
    this.#run(this.#ins[lane], v.slice(0, 7));
  }

  deadLetter(v: SqlValue[]): void {
    this.#run(this.#dl, [...v.slice(0, 9), v[9] ?? 'bulk']);
  }

  destDeadLetter(v: SqlValue[]): void {
    this.#run(this.#destDl, v.slice(0, 13));
  }

  cursor(dest: string, seq: number): void {
    this.#run(this.#cursor, [dest, seq]);
  }

  meta(k: string, v: string | null): void {
    this.#run(this.#meta, [k, v]);
  }

  destCursor(v: SqlValue[]): void {
    this.#run(this.#destCursor, v.slice(0, 5));
  }

  #run(st: SqlStmt, params: unknown[]): void {
    if (this.#inTx === 0) this.#db.exec('BEGIN IMMEDIATE');
    st.run(params);
    if (++this.#inTx >= CHUNK) {
      this.#db.exec('COMMIT');
      this.#inTx = 0;
    }
  }

  /** Commit what is pending, fold the WAL into the file, close, fsync. */
  finish(): void {
    if (this.#inTx > 0) this.#db.exec('COMMIT');
    this.#inTx = 0;
    this.#checkpointAndClose();
    const fd = fs.openSync(this.file, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Close without keeping anything (nothing was readable, or writing failed); the caller
   * removes the file. Never throws: after SQLITE_FULL SQLite may have rolled back by
   * itself ("no transaction is active"), and the error worth reporting is the one that
   * brought us here, not one from the cleanup.
   */
  abandon(): void {
    try {
      if (this.#inTx > 0) this.#db.exec('ROLLBACK');
    } catch {
      // already rolled back by SQLite
    }
    this.#inTx = 0;
    for (const st of this.#stmts) {
      try {
        st.finalize();
      } catch {
        // finalized already (a failed finish), or the database is gone
      }
    }
    try {
      this.#db.close();
    } catch {
      // closed already; the file is removed anyway
    }
  }

  #checkpointAndClose(): void {
    for (const st of this.#stmts) st.finalize();
    const st = this.#db.prepare('PRAGMA wal_checkpoint(TRUNCATE)');
    let r: Record<string, unknown> | undefined;
    try {
      r = st.all(NO_PARAMS)[0];
    } finally {
      st.finalize();
    }
    // busy, log, checkpointed: a busy or partial checkpoint leaves rows only in the WAL,
    // which would not follow the file when it is renamed to kedge.db.
    const [busy, log, done] = Object.values(r ?? {}).map(Number);
    if (busy !== 0 || log !== done)
      throw new Error(
        `${this.file}: the final checkpoint did not complete (busy ${busy}, ${done} of ${log} WAL pages)`,
      );
    this.#db.close();
  }
}
