/**
 * `kedge repair`: turn a damaged log into a fresh one holding every event that can still
 * be read, with the same seqs (so the same kedge-ids), cursors, dead letters and agent id.
 *
 * Steps, with kedge stopped (the data-dir lock is held throughout, so kedge cannot start
 * in the middle):
 * 1. Is it damaged at all? A copy of kedge.db (+ -wal) is opened with SQLite and
 *    `PRAGMA integrity_check`ed; the originals are never opened by SQLite (opening
 *    replays and may checkpoint the WAL, i.e. writes). Intact: nothing is touched.
 * 2. Salvage page by page (salvage.ts) straight into a new file `kedge.db.repair-<ts>`.
 * 3. Swap: the damaged files are kept as `kedge.db.damaged-<ts>` (a hard link made before
 *    the new file takes the name, so there is no instant without a kedge.db) and
 *    `kedge.db.damaged-<ts>-wal` (the pair still opens together with sqlite3); then the new
 *    file is renamed over kedge.db. Nothing damaged is ever deleted.
 *    The swap is several renames; a crash between them would leave kedge.db = the damaged
 *    main file without its WAL (a start would miss the WAL's events and hand out their seqs
 *    again). So a durable marker (kedge.repair-swap, naming the new file and the aside name)
 *    is written before the first move and removed after the last: while it exists kedge
 *    refuses to start (setup.ts), and the next `kedge repair` completes the swap first.
 */
import fs from 'node:fs';
import path from 'node:path';
import { acquireDirLock } from './lockfile.ts';
import { openDriver } from './open-driver.ts';
import { FreshLog } from './restore.ts';
import { PageFile } from './salvage-pages.ts';
import type { WalSummary } from './salvage-pages.ts';
import { salvage } from './salvage.ts';
import type { SalvageResult } from './salvage.ts';
import { DEST_KAFKA, DEST_KAFKA_PRIORITY, SCHEMA_VERSION } from './schema.ts';
import { REPAIR_SWAP_FILE } from './setup.ts';
import { sqlErrorKind } from './driver.ts';
import { DB_FILE } from './sqlite-log.ts';
import { NO_PARAMS } from './tx.ts';
import type { Lane, StorageDriverName } from './types.ts';
import { LogOpenError } from './types.ts';

export type RepairOutcome = 'intact' | 'saved-all' | 'saved-some' | 'nothing-readable';

export interface RepairReport {
  outcome: RepairOutcome;
  dataDir: string;
  /** Why SQLite found the file damaged (first problems), or null when intact. */
  damage: string | null;
  events: { saved: number; bulk: number; priority: number; onOrphanPages: number };
  /** Seq ranges that should be in the log and are not (first, last), lowest first. */
  lost: { events: number; ranges: Array<[number, number]> };
  deadLetters: number;
  destinationDeadLetters: number;
  /** The dead-letter table was damaged: more may be lost than the lost ranges show (one at or below its lane's cursor shows in none). */
  deadLettersDamaged: boolean;
  /** The same for the destinations' dead letters (their seqs are copies: never in the lost ranges). */
  destinationDeadLettersDamaged: boolean;
  /** Cursors carried over (dest → seq), and the lane cursors that were unreadable (reset to 0). */
  cursors: Record<string, number>;
  cursorsMissing: string[];
  destinationCursors: number;
  /** The agent id carried over, or null when unreadable (KEDGE_AGENT_ID then decides). */
  agentId: string | null;
  /** The new log's last_seq: seqs are never handed out twice. */
  lastSeq: number;
  /** lastSeq came from the damaged file's own record (false: only from the rows read, so the newest events may be lost unseen). */
  lastSeqKnown: boolean;
  wal: WalSummary;
  pages: SalvageResult['pages'] & { pageSize: number; headerIntact: boolean };
  /** Where the damaged files are now (full paths); empty when nothing was moved. */
  keptAside: string[];
  /** A swap that an earlier repair left half-done (killed, power cut), completed before anything else; null when there was none. */
  interruptedSwap: { completed: true; keptAside: string[] } | null;
}

/** The marker of a swap in progress (kedge.repair-swap): file names relative to the data dir. */
interface SwapMarker {
  /** The complete, fsynced new log that takes the name kedge.db. */
  fresh: string;
  /** The name the damaged kedge.db is kept under (its -wal/-shm get the same name + suffix). */
  aside: string;
}

export interface RepairOptions {
  dir: string;
  driver: StorageDriverName;
  /** Clock for the timestamp in the kept files' names. */
  now?: () => Date;
}

export async function repairLog(opts: RepairOptions): Promise<RepairReport> {
  const dir = path.resolve(opts.dir);
  const file = path.join(dir, DB_FILE);
  const wal = `${file}-wal`;
  if (
    !fs.existsSync(file) &&
    !fs.existsSync(wal) &&
    !fs.existsSync(path.join(dir, REPAIR_SWAP_FILE))
  ) {
    throw new LogOpenError(
      `no kedge log in ${dir} (no ${DB_FILE}); check KEDGE_DATA_DIR or --env-file`,
      'KEDGE_LOG_OPEN',
    );
  }
  const lock = acquireDirLock(dir); // throws KEDGE_DATA_DIR_LOCKED while kedge runs
  try {
    const interruptedSwap = completeInterruptedSwap(dir, file);
    removeLeftovers(dir, file);
    if (!fs.existsSync(file) && !fs.existsSync(wal))
      throw new LogOpenError(`no kedge log in ${dir} (no ${DB_FILE})`, 'KEDGE_LOG_OPEN');
    const stamp = timestamp((opts.now ?? (() => new Date()))());
    refuseNewerSchema(file, wal);
    const damage = await checkCopy(dir, file, wal, stamp, opts.driver);
    const pf = new PageFile(file, fs.existsSync(wal) ? wal : null);
    const base = {
      dataDir: dir,
      damage,
      wal: pf.wal,
      pages: {
        total: pf.pageCount,
        leaves: 0,
        fromWal: 0,
        free: 0,
        badCells: 0,
        pageSize: pf.pageSize,
        headerIntact: pf.headerIntact,
      },
    };
    if (damage === null) {
      pf.close();
      return { ...emptyReport('intact'), ...base, interruptedSwap };
    }
    const freshFile = unusedName(`${file}.repair-${stamp}`);
    // Everything up to the swap writes only our own new file: whatever fails (a disk that
    // fills after the free-space check, because something else writes to it too), that
    // file goes and the damaged ones stay exactly as they were.
    let fresh: FreshLog | null = null;
    let report: RepairReport;
    try {
      fresh = await FreshLog.create(freshFile, opts.driver);
      const res: SalvageResult = salvage(pf, fresh);
      report = summarize(res, { ...base, pages: { ...base.pages, ...res.pages } });
      report.interruptedSwap = interruptedSwap;
      if (report.outcome === 'nothing-readable') {
        fresh.abandon();
        removeQuiet(freshFile); // our own empty file; the damaged ones stay where they are
        return report;
      }
      for (const [dest, seq] of res.cursors) fresh.cursor(dest, seq);
      for (const [k, v] of res.meta) fresh.meta(k, v);
      fresh.meta('last_seq', String(report.lastSeq));
      for (const row of res.destCursors.values()) fresh.destCursor(row);
      fresh.finish();
    } catch (err) {
      fresh?.abandon();
      removeQuiet(freshFile);
      if (sqlErrorKind(err) === 'full') throw outOfSpace(dir);
      throw err;
    } finally {
      pf.close();
    }
    report.keptAside = swapIn(dir, file, freshFile, unusedName(`${file}.damaged-${stamp}`));
    return report;
  } finally {
    lock.release();
  }
}

/** What integrity_check says of a copy of the log (null: intact). The copy is removed after. */
async function checkCopy(
  dir: string,
  file: string,
  wal: string,
  stamp: string,
  driver: StorageDriverName,
): Promise<string | null> {
  if (!fs.existsSync(file) || fs.statSync(file).size === 0)
    return `${DB_FILE} is missing or empty (0 bytes)`;
  const walBytes = fs.existsSync(wal) ? fs.statSync(wal).size : 0;
  // The copy, then (after it is removed) the new log, at most about the size of the old.
  const need = fs.statSync(file).size + walBytes + SPACE_MARGIN;
  checkFreeSpace(dir, need);
  const tmp = path.join(dir, `${CHECK_DIR_PREFIX}${stamp}`);
  fs.mkdirSync(tmp);
  try {
    const copy = path.join(tmp, DB_FILE);
    try {
      fs.copyFileSync(file, copy);
      if (walBytes > 0 || fs.existsSync(wal)) fs.copyFileSync(wal, `${copy}-wal`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOSPC') throw noSpace(dir, need);
      throw err;
    }
    let db: Awaited<ReturnType<typeof openDriver>> | null = null;
    try {
      db = await openDriver(driver, { file: copy });
      // As the log's own open does (setup.ts configure): the wasm build has no shared-memory
      // WAL index, so it opens a WAL database only in exclusive locking mode.
      db.exec('PRAGMA locking_mode = EXCLUSIVE');
      const st = db.prepare('PRAGMA integrity_check');
      let problems: string[];
      try {
        problems = st
          .all(NO_PARAMS)
          .map((r) => String(Object.values(r)[0]))
          .filter((s) => s !== 'ok');
      } finally {
        st.finalize();
      }
      if (problems.length > 0) return `integrity_check: ${problems.slice(0, 3).join('; ')}`;
      const t = db.prepare(
        "SELECT count(*) AS n FROM sqlite_schema WHERE type = 'table' AND name IN ('events', 'cursors', 'meta')",
      );
      try {
        if (Number(t.get(NO_PARAMS)?.n) !== 3) return 'it holds no kedge tables';
      } finally {
        t.finalize();
      }
      return null;
    } catch (err) {
      return (err as Error).message;
    } finally {
      db?.close();
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true }); // our own copy, not the damaged files
  }
}

function emptyReport(
  outcome: RepairOutcome,
): Omit<RepairReport, 'dataDir' | 'damage' | 'wal' | 'pages'> {
  return {
    outcome,
    events: { saved: 0, bulk: 0, priority: 0, onOrphanPages: 0 },
    lost: { events: 0, ranges: [] },
    deadLetters: 0,
    destinationDeadLetters: 0,
    deadLettersDamaged: false,
    destinationDeadLettersDamaged: false,
    cursors: {},
    cursorsMissing: [],
    destinationCursors: 0,
    agentId: null,
    lastSeq: 0,
    lastSeqKnown: false,
    keptAside: [],
    interruptedSwap: null,
  };
}

/** Ranges in order, adjacent ones joined. */
function mergeRanges(ranges: Array<[number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [a, b] of ranges) {
    const last = out[out.length - 1];
    if (last && a <= last[1] + 1) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

/**
 * The lost ranges: seqs above the lowest cursor of a lane that holds events (what could
 * still be unforwarded) up to the last seq, neither saved nor in the dead letters. A lane
 * whose tree was intact and had nothing in it does not count (its cursor may lag far
 * behind the other lane's without anything missing).
 */
function summarize(
  res: SalvageResult,
  base: Pick<RepairReport, 'dataDir' | 'damage' | 'wal' | 'pages'>,
): RepairReport {
  const saved = res.events.bulk + res.events.priority;
  const anything =
    saved + res.deadLetters + res.destDeadLetters + res.cursors.size + res.meta.size > 0;
  const cursorOf: Record<Lane, number> = {
    bulk: res.cursors.get(DEST_KAFKA) ?? 0,
    priority: res.cursors.get(DEST_KAFKA_PRIORITY) ?? 0,
  };
  const table: Record<Lane, 'events' | 'events_priority'> = {
    bulk: 'events',
    priority: 'events_priority',
  };
  const inUse = (['bulk', 'priority'] as const).filter(
    (l) => res.events[l] > 0 || !res.completeTrees.has(table[l]),
  );
  const floor =
    inUse.length > 0
      ? Math.min(...inUse.map((l) => cursorOf[l]))
      : Math.max(cursorOf.bulk, cursorOf.priority);
  const metaLast = Number(res.meta.get('last_seq') ?? Number.NaN);
  const lastSeqKnown = Number.isSafeInteger(metaLast);
  const lastSeq = Math.max(res.maxSeqSeen, lastSeqKnown ? metaLast : 0);
  // Between the two lanes' cursors only the lane behind can hold unforwarded events: a seq
  // there that its intact tree does not have was the other lane's, already forwarded (the
  // priority lane usually runs ahead), so it is missing only if that lane's tree was damaged.
  const ahead = inUse.length > 0 ? Math.max(...inUse.map((l) => cursorOf[l])) : floor;
  const behind = inUse.find((l) => cursorOf[l] === floor);
  const betweenMayBeLost =
    inUse.length < 2 || behind === undefined || !res.completeTrees.has(table[behind]);
  const ranges = mergeRanges([
    ...(betweenMayBeLost ? res.saved.gaps(floor + 1, Math.min(ahead, lastSeq)) : []),
    ...res.saved.gaps(Math.max(floor, ahead) + 1, lastSeq),
  ]);
  const lostEvents = ranges.reduce((n, [a, b]) => n + (b - a + 1), 0);
  // A damaged dead-letter table may have lost dead letters no seq range can show.
  const deadLettersMayBeLost =
    res.damagedTables.has('dead_letters') || res.damagedTables.has('dest_dead_letters');
  const outcome: RepairOutcome = !anything
    ? 'nothing-readable'
    : lostEvents > 0 || !lastSeqKnown || deadLettersMayBeLost
      ? 'saved-some'
      : 'saved-all';
  return {
    ...base,
    outcome,
    events: {
      saved,
      bulk: res.events.bulk,
      priority: res.events.priority,
      onOrphanPages: res.orphanEvents,
    },
    lost: { events: lostEvents, ranges },
    deadLetters: res.deadLetters,
    destinationDeadLetters: res.destDeadLetters,
    deadLettersDamaged: res.damagedTables.has('dead_letters'),
    destinationDeadLettersDamaged: res.damagedTables.has('dest_dead_letters'),
    cursors: Object.fromEntries(res.cursors),
    cursorsMissing: [DEST_KAFKA, DEST_KAFKA_PRIORITY].filter((d) => !res.cursors.has(d)),
    destinationCursors: res.destCursors.size,
    agentId: res.meta.get('agent_id') ?? null,
    lastSeq,
    lastSeqKnown,
    keptAside: [],
    interruptedSwap: null,
  };
}

/**
 * Keep the damaged files under `aside` (an unused name) and put the new log in their place.
 * Order matters: marker durable first; the WAL moved aside and that made durable before
 * the new file takes the name (else a power cut could leave the new kedge.db beside the
 * damaged WAL, which SQLite would replay into it); marker removed last.
 */
function swapIn(dir: string, file: string, fresh: string, aside: string): string[] {
  // The new file must stand alone: a WAL of it left behind would not follow the rename.
  for (const suffix of ['-wal', '-shm']) {
    if (!fs.existsSync(fresh + suffix)) continue;
    if (fs.statSync(fresh + suffix).size > 0)
      throw new Error(
        `${fresh + suffix} is left after the checkpoint: the new log does not stand alone`,
      );
    fs.unlinkSync(fresh + suffix);
  }
  const marker: SwapMarker = { fresh: path.basename(fresh), aside: path.basename(aside) };
  writeMarker(dir, marker);
  const kept = moveAside(dir, file, aside);
  fs.renameSync(fresh, file);
  syncDir(dir);
  fs.unlinkSync(path.join(dir, REPAIR_SWAP_FILE));
  syncDir(dir);
  return kept;
}

/** Steps 1-2 of the swap (also what completing an interrupted one redoes): kedge.db and its -wal/-shm to `aside`, durably. */
function moveAside(dir: string, file: string, aside: string): string[] {
  const kept: string[] = [];
  if (fs.existsSync(file) && !fs.existsSync(aside)) {
    try {
      fs.linkSync(file, aside); // kedge.db stays in place until the rename replaces it
    } catch (err) {
      if (!LINK_UNSUPPORTED.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
      fs.renameSync(file, aside); // no hard links here (FAT): a short instant without kedge.db
    }
  }
  if (fs.existsSync(aside)) kept.push(aside);
  // The damaged WAL must go before the new file takes the name: SQLite would replay it into it.
  for (const suffix of ['-wal', '-shm']) {
    if (!fs.existsSync(file + suffix)) continue;
    if (fs.existsSync(aside + suffix))
      throw new LogOpenError(
        `cannot move ${file + suffix} aside: ${aside + suffix} exists already; move one of them elsewhere and run kedge repair again`,
        'KEDGE_LOG_OPEN',
      );
    fs.renameSync(file + suffix, aside + suffix);
    kept.push(aside + suffix);
  }
  syncDir(dir); // the moves are on disk before the new file takes the name
  return kept;
}

function writeMarker(dir: string, m: SwapMarker): void {
  const target = path.join(dir, REPAIR_SWAP_FILE);
  const tmp = `${target}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeFileSync(fd, `${JSON.stringify(m)}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, target); // whole or absent, never torn
  syncDir(dir);
}

/**
 * A marker left by an interrupted swap: finish it. The new file named in it was complete
 * and fsynced before the marker was written, so completing (not rolling back) is always
 * right; if it is gone, the final rename was done and only the marker is left.
 */
function completeInterruptedSwap(dir: string, file: string): RepairReport['interruptedSwap'] {
  const markerFile = path.join(dir, REPAIR_SWAP_FILE);
  let text: string;
  try {
    text = fs.readFileSync(markerFile, 'utf8');
  } catch {
    return null;
  }
  let m: SwapMarker;
  try {
    m = JSON.parse(text) as SwapMarker;
    if (!isPlainName(m.fresh) || !isPlainName(m.aside)) throw new Error('bad names');
  } catch {
    throw new LogOpenError(
      `${markerFile} (left by an interrupted kedge repair) is unreadable; look at the kedge.db.repair-* and kedge.db.damaged-* files in ${dir}, put the right log at ${file}, remove the marker and run kedge repair again`,
      'KEDGE_LOG_OPEN',
    );
  }
  const fresh = path.join(dir, m.fresh);
  const aside = path.join(dir, m.aside);
  if (fs.existsSync(fresh)) {
    if (fs.existsSync(file) && fs.existsSync(aside) && !sameFile(file, aside))
      throw new LogOpenError(
        `cannot complete the interrupted repair: ${file} and ${aside} are different files; move one of them elsewhere and run kedge repair again`,
        'KEDGE_LOG_OPEN',
      );
    moveAside(dir, file, aside);
    fs.renameSync(fresh, file);
    syncDir(dir);
  }
  // Everything aside, whether moved now or before the interruption.
  const kept = [aside, `${aside}-wal`, `${aside}-shm`].filter((f) => fs.existsSync(f));
  fs.unlinkSync(markerFile);
  syncDir(dir);
  return { completed: true, keptAside: kept };
}

const isPlainName = (x: unknown): x is string =>
  typeof x === 'string' && x.startsWith(`${DB_FILE}.`) && !x.includes('/') && !x.includes('\\');

function sameFile(a: string, b: string): boolean {
  const x = fs.statSync(a);
  const y = fs.statSync(b);
  return x.ino === y.ino && x.dev === y.dev;
}

/** Errors of linkSync that mean "this file system has no hard links", not "something is wrong". */
const LINK_UNSUPPORTED = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'ENOSYS']);

/** `base`, or `base-2`, `base-3`…: the first name that is not taken with any of the suffixes. */
function unusedName(base: string): string {
  const taken = (n: string) => ['', '-wal', '-shm'].some((s) => fs.existsSync(n + s));
  if (!taken(base)) return base;
  for (let i = 2; i < 1000; i++) if (!taken(`${base}-${i}`)) return `${base}-${i}`;
  throw new LogOpenError(`no unused name for ${base} (up to -999)`, 'KEDGE_LOG_OPEN');
}

const CHECK_DIR_PREFIX = '.kedge-repair-check-';
/** Slack on top of the log's size: SQLite's own overhead, the new file's WAL chunks. */
const SPACE_MARGIN = 16 << 20;
const MiB = (b: number) => Math.ceil(b / (1 << 20));

function noSpace(dir: string, need: number, free?: number): LogOpenError {
  return new LogOpenError(
    `needs about ${MiB(need)} MiB free in ${dir}${free === undefined ? '' : `, ${MiB(free)} MiB free`}; ` +
      'free space, or copy the data dir elsewhere and run kedge repair with KEDGE_DATA_DIR=<the copy>',
    'KEDGE_LOG_OPEN',
  );
}

/** The disk filled while the new log was being written (after the free-space check passed). */
function outOfSpace(dir: string): LogOpenError {
  return new LogOpenError(
    `ran out of space in ${dir} while writing the new log; nothing was changed and its partial copy was removed. ` +
      'Free space (something else is filling this disk), then run kedge repair again',
    'KEDGE_LOG_OPEN',
  );
}

function checkFreeSpace(dir: string, need: number): void {
  let free: number;
  try {
    const st = fs.statfsSync(dir);
    free = st.bavail * st.bsize;
  } catch {
    return; // cannot tell: the copy itself reports ENOSPC
  }
  if (free < need) throw noSpace(dir, need, free);
}

/**
 * What a killed repair leaves (its check copy, a half-written new log): ours, useless, and
 * in the way of the free-space check. A new log named by a swap marker is not a leftover
 * (the marker is dealt with first, so none is named by now).
 */
function removeLeftovers(dir: string, file: string): void {
  const base = path.basename(file);
  for (const name of fs.readdirSync(dir)) {
    if (name.startsWith(CHECK_DIR_PREFIX))
      fs.rmSync(path.join(dir, name), { recursive: true, force: true });
    else if (name.startsWith(`${base}.repair-`)) removeQuiet(path.join(dir, name));
  }
}

/** A log written by a newer kedge (user_version above ours) is not ours to rewrite. */
function refuseNewerSchema(file: string, wal: string): void {
  const pf = new PageFile(file, fs.existsSync(wal) ? wal : null);
  let v = 0;
  try {
    const p1 = pf.page(1);
    if (p1 !== null && p1.toString('latin1', 0, 16) === 'SQLite format 3\0')
      v = p1.readUInt32BE(60);
  } finally {
    pf.close();
  }
  // A garbage header can hold any number: only a plausible next version (a few above ours)
  // means "newer kedge"; anything else is damage, for the salvage.
  if (v > SCHEMA_VERSION && v <= SCHEMA_VERSION + 100)
    throw new LogOpenError(
      `${file} was written by a newer kedge (schema ${v}, this one knows up to ${SCHEMA_VERSION}); run kedge repair of that version`,
      'KEDGE_LOG_TOO_NEW',
    );
}

function syncDir(dir: string): void {
  let fd: number | null = null;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // Some file systems cannot fsync a directory; the renames are still done.
  } finally {
    if (fd !== null) fs.closeSync(fd);
  }
}

function removeQuiet(file: string): void {
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    try {
      fs.unlinkSync(f);
    } catch {
      // not there
    }
  }
}

/** 20261202T041500Z: sortable, no colons (safe in file names everywhere). */
function timestamp(d: Date): string {
  return d
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
}
