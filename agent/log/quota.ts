/**
 * How a disk quota (KEDGE_DISK_QUOTA) is split between the log's three files,
 * and how their size is measured.
 *
 * SQLite files do not shrink when rows are deleted (freed pages are kept and
 * reused), so the quota is enforced on the pages in use, not on file sizes:
 *
 *   used = (page_count - freelist_count) * page_size      kedge.db, live pages
 *   budget for used pages = quota - WAL limit - reserve
 *
 * The WAL is held to `walLimitBytes` by checkpointing that often and by
 * journal_size_limit (it can exceed it by one transaction until the next
 * checkpoint). The reserve (see reserve.ts) is a fixed size. Both are scaled
 * down for small quotas so most of a small quota is left for events.
 */
import fs from 'node:fs';
import path from 'node:path';
import { DEFAULT_RESERVE_BYTES, RESERVE_FILE } from './reserve.ts';

/** Largest WAL kept between checkpoints (also SQLite's journal_size_limit). */
export const DEFAULT_WAL_LIMIT_BYTES = 8 << 20;
/** SQLite's default wal_autocheckpoint, kept when there is no quota. */
const DEFAULT_AUTOCHECKPOINT_PAGES = 1000;
/** WAL frame header per page. */
const WAL_FRAME_HEADER = 24;

export interface QuotaPlan {
  /** null: no quota. */
  quotaBytes: number | null;
  walLimitBytes: number;
  autocheckpointPages: number;
  reserveBytes: number;
  /** Live database pages may use up to this many bytes. */
  dataLimitBytes: number;
  /** drop-oldest: above this, oldest unforwarded events are dropped in the background... */
  highBytes: number;
  /** ...down to this. */
  lowBytes: number;
}

/**
 * The split for `quotaBytes` (undefined: no quota). A quota below what the WAL
 * and reserve need is taken as it is: they shrink to an eighth of it each.
 */
export function planQuota(
  quotaBytes: number | undefined,
  pageSize: number,
  reserveOption: number | undefined,
): QuotaPlan {
  if (quotaBytes === undefined) {
    return {
      quotaBytes: null,
      walLimitBytes: DEFAULT_WAL_LIMIT_BYTES,
      autocheckpointPages: DEFAULT_AUTOCHECKPOINT_PAGES,
      reserveBytes: reserveOption ?? DEFAULT_RESERVE_BYTES,
      dataLimitBytes: Number.MAX_SAFE_INTEGER,
      highBytes: Number.MAX_SAFE_INTEGER,
      lowBytes: Number.MAX_SAFE_INTEGER,
    };
  }
  const eighth = Math.floor(quotaBytes / 8);
  const walLimitBytes = Math.min(DEFAULT_WAL_LIMIT_BYTES, eighth);
  const reserveBytes = Math.min(reserveOption ?? DEFAULT_RESERVE_BYTES, eighth);
  const autocheckpointPages = Math.max(
    8,
    Math.min(
      DEFAULT_AUTOCHECKPOINT_PAGES,
      Math.floor(walLimitBytes / (pageSize + WAL_FRAME_HEADER)),
    ),
  );
  const dataLimitBytes = Math.max(pageSize * 16, quotaBytes - walLimitBytes - reserveBytes);
  return {
    quotaBytes,
    walLimitBytes,
    autocheckpointPages,
    reserveBytes,
    dataLimitBytes,
    highBytes: Math.floor(dataLimitBytes * 0.9),
    lowBytes: Math.floor(dataLimitBytes * 0.8),
  };
}

/** Bytes one stored event is expected to take in database pages: payload, row header, cell pointer, b-tree slack. */
export function estimateRowBytes(size: number, topicLength: number, headersLength: number): number {
  return Math.ceil((size + topicLength + headersLength + 48) * 1.1);
}

/** Sizes of kedge.db, its WAL and the reserve on disk (what the quota covers). Missing files count 0. */
export function logFilesBytes(dir: string, dbFile: string): number {
  let n = 0;
  for (const f of [dbFile, `${dbFile}-wal`, RESERVE_FILE]) {
    try {
      n += fs.statSync(path.join(dir, f)).size;
    } catch {
      // not there right now (no WAL, reserve released)
    }
  }
  return n;
}
