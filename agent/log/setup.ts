/**
 * What openLog does before the log object exists: check the options, refuse
 * an emptied file, set the pragmas, check integrity, migrate the schema; and
 * turn what fails on the way into a LogOpenError that says what to do.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { SqlDb } from './driver.ts';
import { sqlErrorKind } from './driver.ts';
import { planQuota } from './quota.ts';
import type { QuotaPlan } from './quota.ts';
import { RESERVE_FILE } from './reserve.ts';
import { migrate, pragmaInt, schemaObjectCount } from './schema.ts';
import { NO_PARAMS } from './tx.ts';
import type { LogOptions } from './types.ts';
import { LogOpenError } from './types.ts';

/**
 * SQLite treats a 0-byte file as a new, empty database. kedge.db is only empty
 * before its first commit, and kedge.reserve is created after that; so an empty
 * kedge.db beside a reserve is a log that was emptied (a power cut on some file
 * systems, a bad copy, a stray `> kedge.db`): refuse it rather than start on nothing.
 */
export function refuseEmptiedLog(dir: string, file: string): void {
  refuseHalfSwapped(dir, file);
  let size: number;
  try {
    size = fs.statSync(file).size;
  } catch {
    return; // no database yet: a new log
  }
  if (size === 0 && fs.existsSync(path.join(dir, RESERVE_FILE))) {
    throw damaged(file, 'the file is empty (0 bytes) but this data dir held a log before');
  }
}

/** Written by `kedge repair` before it starts swapping files, removed when done (repair.ts). */
export const REPAIR_SWAP_FILE = 'kedge.repair-swap';

/**
 * A repair killed mid-swap can leave kedge.db = the damaged main file with its WAL moved
 * aside: opening it would miss the WAL's events and hand their seqs out again. Only
 * `kedge repair` knows how to finish the swap.
 */
function refuseHalfSwapped(dir: string, file: string): void {
  const marker = path.join(dir, REPAIR_SWAP_FILE);
  if (fs.existsSync(marker))
    throw new LogOpenError(
      `${file}: a kedge repair was interrupted while swapping in the repaired log (${marker} exists); run \`kedge repair\` (with the same --env-file) to complete it, then start kedge`,
      'KEDGE_LOG_DAMAGED',
    );
}

export function checkOptions(opts: LogOptions): void {
  if (!opts || typeof opts.dir !== 'string' || opts.dir === '')
    throw new TypeError('openLog: dir must be a non-empty string');
  if (opts.driver !== 'sqlite' && opts.driver !== 'wasm')
    throw new TypeError(`openLog: driver must be 'sqlite' or 'wasm', not ${String(opts.driver)}`);
  if (opts.sync !== 'full' && opts.sync !== 'normal')
    throw new TypeError(`openLog: sync must be 'full' or 'normal', not ${String(opts.sync)}`);
  if (
    opts.quotaBytes !== undefined &&
    !(Number.isSafeInteger(opts.quotaBytes) && opts.quotaBytes > 0)
  ) {
    throw new TypeError(
      `openLog: quotaBytes must be a positive integer, not ${String(opts.quotaBytes)}`,
    );
  }
  if (
    opts.whenFull !== undefined &&
    opts.whenFull !== 'drop-oldest' &&
    opts.whenFull !== 'reject-new'
  ) {
    throw new TypeError(
      `openLog: whenFull must be 'drop-oldest' or 'reject-new', not ${String(opts.whenFull)}`,
    );
  }
  if (opts.retentionMs != null && !(opts.retentionMs > 0))
    throw new TypeError(
      `openLog: retentionMs must be positive or null, not ${String(opts.retentionMs)}`,
    );
}

function damaged(file: string, detail: string, cause?: unknown): LogOpenError {
  return new LogOpenError(
    `${file} is damaged or not a kedge database (${detail}). Run \`kedge repair\` (with the same --env-file): ` +
      `it saves every readable event into a new log, keeps the damaged files aside and says what was lost. ` +
      `Or move it aside (mv ${file} ${file}.damaged, and ${file}-wal if present) to start on a new, empty log ` +
      `without the events still in it (with KEDGE_AGENT_ID set, change it too: a new log counts seqs from 1 again).`,
    'KEDGE_LOG_DAMAGED',
    { cause },
  );
}

export function toOpenError(err: unknown, file: string): LogOpenError {
  if (err instanceof LogOpenError) return err;
  const kind = sqlErrorKind(err);
  const msg = (err as Error)?.message ?? String(err);
  if (kind === 'notadb' || kind === 'corrupt') return damaged(file, msg, err);
  if (kind === 'busy') {
    return new LogOpenError(
      `${file} is locked by another program (${msg}); stop it first`,
      'KEDGE_DATA_DIR_LOCKED',
      { cause: err },
    );
  }
  return new LogOpenError(`cannot open the log ${file}: ${msg}`, 'KEDGE_LOG_OPEN', { cause: err });
}

/** Pragmas, integrity check and schema. Order matters (see comments). Returns how the quota is split. */
export function configure(db: SqlDb, file: string, opts: LogOptions): QuotaPlan {
  // Exclusive: required for WAL by the wasm build (no shared-memory index);
  // used for node:sqlite too so both behave alike: no -shm file, and no other
  // process can write the database while we hold it.
  db.exec('PRAGMA locking_mode = EXCLUSIVE');
  db.exec('PRAGMA busy_timeout = 5000');
  // First real read: a file that is not a database fails here.
  const fresh = schemaObjectCount(db) === 0;
  if (fresh) {
    // Must precede the first table; lets freed pages be returned with incremental_vacuum.
    db.exec('PRAGMA auto_vacuum = INCREMENTAL');
  } else {
    const st = db.prepare('PRAGMA quick_check');
    try {
      const rows = st.all(NO_PARAMS);
      const problems = rows.map((r) => String(Object.values(r)[0])).filter((s) => s !== 'ok');
      if (problems.length > 0)
        throw damaged(file, `quick_check: ${problems.slice(0, 3).join('; ')}`);
    } finally {
      st.finalize();
    }
  }
  const modeStmt = db.prepare('PRAGMA journal_mode = WAL');
  let mode: string;
  try {
    mode = String(Object.values(modeStmt.get(NO_PARAMS) ?? {})[0]).toLowerCase();
  } finally {
    modeStmt.finalize();
  }
  if (mode !== 'wal')
    throw new LogOpenError(`${file}: could not switch to WAL mode (got ${mode})`, 'KEDGE_LOG_OPEN');
  db.exec(`PRAGMA synchronous = ${opts.sync === 'full' ? 'FULL' : 'NORMAL'}`);
  db.exec('PRAGMA cache_size = -8192'); // 8 MiB: the working set is the tail and the head of the log
  const pageSize = pragmaInt(db, 'page_size');
  const plan = planQuota(opts.quotaBytes, pageSize, opts.reserveBytes);
  // Truncate the WAL back to its limit after a big transaction, and checkpoint before it grows past it.
  db.exec(`PRAGMA journal_size_limit = ${plan.walLimitBytes}`);
  db.exec(`PRAGMA wal_autocheckpoint = ${plan.autocheckpointPages}`);
  migrate(db, file);
  // Hard last line under the quota: the database file alone never outgrows it.
  const cap = Math.min(opts.maxDbBytes ?? Infinity, opts.quotaBytes ?? Infinity);
  if (cap !== Infinity)
    db.exec(`PRAGMA max_page_count = ${Math.max(1, Math.floor(cap / pageSize))}`);
  return plan;
}
