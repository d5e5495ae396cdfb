/**
 * Which rows of a damaged kedge log can be saved, and to which table they belong.
 *
 * The pages come from salvage-pages.ts. Rows are attributed in two ways:
 * 1. Through the trees: sqlite_master (page 1) names each table's root page; walking a
 *    root's interior pages reaches its leaves. A row found this way is certainly that
 *    table's, and its newest version.
 * 2. By shape, for the leaves no intact tree reaches (their interior page or page 1 is
 *    garbage): each kedge table has a distinctive record (column count and types). The
 *    bulk and priority lanes have the same shape: an orphan event goes to the lane that
 *    the intact trees show for its topic (a topic is in exactly one lane), else to bulk.
 * Free pages (on the freelist) are skipped: they hold deleted rows. Rows at or below their
 * lane's cursor were forwarded already and are left out; a seq found twice keeps the copy
 * reached through a tree, else the first one found.
 */
import type { PageFile, PageRow, SqlValue } from './salvage-pages.ts';
import { freelistPages, interiorChildren, isBadPage, leafRows, pageKind } from './salvage-pages.ts';
import { DEST_KAFKA, DEST_KAFKA_PRIORITY } from './schema.ts';
import type { Lane } from './types.ts';

export type TableName =
  | 'events'
  | 'events_priority'
  | 'dead_letters'
  | 'dest_dead_letters'
  | 'cursors'
  | 'meta'
  | 'dest_cursors';

const TABLES: readonly TableName[] = [
  'events',
  'events_priority',
  'dead_letters',
  'dest_dead_letters',
  'cursors',
  'meta',
  'dest_cursors',
];
const SMALL: readonly TableName[] = ['cursors', 'meta', 'dest_cursors'];
const BIG: readonly TableName[] = [
  'events',
  'events_priority',
  'dead_letters',
  'dest_dead_letters',
];

/** Where the saved rows go (restore.ts writes them into the fresh log). Values are in the tables' column order, rowid first. */
export interface RowSink {
  event(lane: Lane, values: SqlValue[]): void;
  deadLetter(values: SqlValue[]): void;
  destDeadLetter(values: SqlValue[]): void;
}

export interface SalvageResult {
  /** Events saved per lane. */
  events: Record<Lane, number>;
  deadLetters: number;
  destDeadLetters: number;
  /** Rows of the small tables, by key (cursors: dest → seq; meta: k → v; dest_cursors: "dest\0lane" → row). */
  cursors: Map<string, number>;
  meta: Map<string, string | null>;
  destCursors: Map<string, SqlValue[]>;
  /** Every seq saved (either lane) or in the dead letters: what the lost ranges are measured against. */
  saved: SeqSet;
  /** Highest seq seen in any row read (saved or not): the new log's seq counter never goes below it. */
  maxSeqSeen: number;
  /** Tables whose whole tree could be walked (no garbage interior page, no page missing, no bad cell). */
  completeTrees: Set<TableName>;
  /**
   * Tables whose rows may not all be saved: their tree is damaged (or page 1 is, so no tree
   * is known). What was read of them is saved, but the report cannot count what is missing
   * (a dead letter at or below its lane's cursor shows in no lost range).
   */
  damagedTables: Set<TableName>;
  /** Events that were only found on orphan pages (their tree was broken). */
  orphanEvents: number;
  /** Events left out because their lane's cursor was past them (forwarded already). */
  forwardedSkipped: number;
  pages: { total: number; leaves: number; fromWal: number; free: number; badCells: number };
}

/** A set of seqs: one bit each, in chunks of 65,536, so millions cost megabytes, not a JS Set's hundreds. */
export class SeqSet {
  readonly #chunks = new Map<number, Uint8Array>();
  size = 0;
  add(seq: number): void {
    const c = Math.floor(seq / 65536);
    let bits = this.#chunks.get(c);
    if (!bits) {
      bits = new Uint8Array(8192);
      this.#chunks.set(c, bits);
    }
    const i = seq - c * 65536;
    const m = 1 << (i & 7);
    if ((bits[i >> 3] & m) === 0) {
      bits[i >> 3] |= m;
      this.size++;
    }
  }
  has(seq: number): boolean {
    const c = Math.floor(seq / 65536);
    const bits = this.#chunks.get(c);
    if (!bits) return false;
    const i = seq - c * 65536;
    return (bits[i >> 3] & (1 << (i & 7))) !== 0;
  }
  /**
   * The runs of seqs in [from, to] not in the set, as [first, last] pairs. Walks only the
   * chunks that hold seqs (a chunk without one is a gap as a whole), so a wide range with
   * few seqs costs nothing.
   */
  gaps(from: number, to: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    let start = from; // first seq of the current gap (> `to` once none is open)
    const keys = [...this.#chunks.keys()].sort((a, b) => a - b);
    for (const c of keys) {
      const lo = Math.max(from, c * 65536);
      const hi = Math.min(to, c * 65536 + 65535);
      for (let s = lo; s <= hi; s++) {
        if (!this.has(s)) continue;
        if (start < s) out.push([start, s - 1]);
        start = s + 1;
      }
    }
    if (start <= to) out.push([start, to]);
    return out;
  }
}

const isInt = (v: SqlValue): v is number => typeof v === 'number' && Number.isInteger(v);
const isText = (v: SqlValue): v is string => typeof v === 'string';
const isBlob = (v: SqlValue): v is Buffer => Buffer.isBuffer(v);
const orNull = (v: SqlValue, f: (v: SqlValue) => boolean): boolean => v === null || f(v);

/** events / events_priority: seq (rowid alias: null), topic, key, value, headers, ts, size. */
function eventShape(v: SqlValue[]): boolean {
  return (
    v[0] === null &&
    isText(v[1]) &&
    orNull(v[2], isBlob) &&
    isBlob(v[3]) &&
    orNull(v[4], isText) &&
    isInt(v[5]) &&
    isInt(v[6])
  );
}

/** Which kedge table a record of this shape belongs to (null: none; 'event' for either lane). */
export function shapeOf(v: SqlValue[]): TableName | 'event' | null {
  switch (v.length) {
    case 2:
      if (isText(v[0]) && isInt(v[1])) return 'cursors';
      if (isText(v[0]) && orNull(v[1], isText)) return 'meta';
      return null;
    case 5:
      return isText(v[0]) &&
        isText(v[1]) &&
        isInt(v[2]) &&
        orNull(v[3], isInt) &&
        orNull(v[4], isText)
        ? 'dest_cursors'
        : null;
    case 7:
      return eventShape(v) ? 'event' : null;
    case 9: // a dead letter from before schema 2 (no lane column)
    case 10:
      return eventShape(v) && isText(v[7]) && isInt(v[8]) && (v.length === 9 || isText(v[9]))
        ? 'dead_letters'
        : null;
    case 13:
      return v[0] === null &&
        isText(v[1]) &&
        isInt(v[2]) &&
        isText(v[3]) &&
        isText(v[4]) &&
        orNull(v[5], isBlob) &&
        isBlob(v[6]) &&
        orNull(v[7], isText) &&
        isInt(v[8]) &&
        isInt(v[9]) &&
        isText(v[10]) &&
        isInt(v[11]) &&
        isText(v[12])
        ? 'dest_dead_letters'
        : null;
    default:
      return null;
  }
}

/** Does this row fit the table the tree says it is in? (A tree walk can still reach a garbage leaf.) */
function fits(table: TableName, v: SqlValue[]): boolean {
  const s = shapeOf(v);
  if (table === 'events' || table === 'events_priority') return s === 'event';
  if (table === 'meta') return s === 'meta' || (v.length === 2 && isText(v[0]));
  return s === table;
}

export function salvage(f: PageFile, sink: RowSink): SalvageResult {
  const res: SalvageResult = {
    events: { bulk: 0, priority: 0 },
    deadLetters: 0,
    destDeadLetters: 0,
    cursors: new Map(),
    meta: new Map(),
    destCursors: new Map(),
    saved: new SeqSet(),
    maxSeqSeen: 0,
    completeTrees: new Set(),
    damagedTables: new Set(),
    orphanEvents: 0,
    forwardedSkipped: 0,
    pages: { total: f.pageCount, leaves: 0, fromWal: 0, free: 0, badCells: 0 },
  };
  const free = freelistPages(f);
  res.pages.free = free.size;
  for (let n = 1; n <= f.pageCount; n++) if (f.fromWal(n)) res.pages.fromWal++;

  // 1. The trees: which table owns which page (0: none known).
  const owner = new Uint8Array(f.pageCount + 1);
  const roots = schemaRoots(f);
  for (const [name, root] of roots) {
    const t = TABLES.indexOf(name);
    if (t >= 0 && walk(f, root, owner, t + 1)) res.completeTrees.add(name);
  }
  owner[1] = 255; // page 1 is sqlite_master's

  const leaf = (n: number): PageRow[] | null => {
    const page = f.page(n);
    if (page === null) return null;
    try {
      const { rows, bad } = leafRows(page, n, f);
      res.pages.badCells += bad;
      res.pages.leaves++;
      return rows;
    } catch (err) {
      if (isBadPage(err)) return null;
      throw err;
    }
  };
  const isOrphan = (n: number) => owner[n] === 0 && !free.has(n);
  /** An interior page of a tree (the walk checked it): no rows of its own, not a damaged leaf. */
  const isInterior = (n: number) => {
    const page = f.page(n);
    return page !== null && pageKind(page, n) === 0x05;
  };

  // Seqs beyond belief: a garbage page can decode with any rowid or last_seq, and one near
  // 2^60 would make the lost ranges absurd. Values read through an intact tree are trusted;
  // an orphan's seq may be at most every row the file could hold above the highest trusted
  // seq (no trusted seq at all: only the safe-integer bound).
  const slack = f.pageCount * Math.floor(f.usable / 4);
  let trusted = 0;
  const plausible = (seq: number) =>
    Number.isSafeInteger(seq) && seq >= 0 && (trusted === 0 || seq <= trusted + slack);

  // 2. The small tables (cursors first: they decide which events were forwarded already).
  const small = (table: TableName, r: PageRow) => {
    const v = r.values;
    if (table === 'cursors') res.cursors.set(v[0] as string, v[1] as number);
    else if (table === 'meta') res.meta.set(v[0] as string, isText(v[1]) ? v[1] : null);
    else res.destCursors.set(`${v[0]}\0${v[1]}`, v);
  };
  const keyOf = (t: TableName, v: SqlValue[]) =>
    `${t}\0${t === 'dest_cursors' ? `${v[0]}\0${v[1]}` : v[0]}`;
  const fromTree = new Set<string>(); // rows reached through a tree: the current version
  for (let n = 2; n <= f.pageCount; n++) {
    const t = TABLES[owner[n] - 1];
    if (!t || !SMALL.includes(t) || isInterior(n)) continue;
    const bad = res.pages.badCells;
    const rows = leaf(n);
    // A page that does not read, or a cell of it that does not: rows of this table are lost.
    if (rows === null || res.pages.badCells > bad) res.completeTrees.delete(t);
    for (const r of rows ?? []) {
      if (!fits(t, r.values)) continue;
      small(t, r);
      fromTree.add(keyOf(t, r.values));
    }
  }
  const treeLast = res.meta.get('last_seq');
  for (const v of [...res.cursors.values(), Number(treeLast ?? 0)])
    if (Number.isSafeInteger(v)) trusted = Math.max(trusted, v);
  if (SMALL.some((t) => !res.completeTrees.has(t))) {
    // Some small table's tree is broken or unknown: look for its rows on orphan leaves. Those
    // may be stale copies of a page (older versions): of several copies, the lowest cursor
    // (resends rather than losses) and the highest last_seq (never a seq handed out twice).
    for (let n = 2; n <= f.pageCount; n++) {
      if (!isOrphan(n)) continue;
      for (const r of leaf(n) ?? []) {
        const v = r.values;
        const s = shapeOf(v);
        if (s !== 'cursors' && s !== 'meta' && s !== 'dest_cursors') continue;
        if (res.completeTrees.has(s) || fromTree.has(keyOf(s, v))) continue;
        // sqlite_sequence rows (name TEXT, seq INTEGER) look like cursors: they name tables.
        if (s === 'cursors' && (TABLES.includes(v[0] as TableName) || !plausible(v[1] as number)))
          continue;
        if (s === 'cursors') {
          const had = res.cursors.get(v[0] as string);
          if (had === undefined || (v[1] as number) < had) small(s, r);
        } else if (s === 'meta' && v[0] === 'last_seq') {
          const x = Number(v[1]);
          const had = Number(res.meta.get('last_seq') ?? Number.NaN);
          if (Number.isSafeInteger(x) && (!Number.isSafeInteger(had) || x > had)) small(s, r);
        } else if (s === 'dest_cursors') {
          const had = res.destCursors.get(`${v[0]}\0${v[1]}`);
          if (had === undefined || (v[2] as number) < (had[2] as number)) small(s, r);
        } else if (!res.meta.has(v[0] as string)) small(s, r);
      }
    }
  }
  const cursorOf: Record<Lane, number> = {
    bulk: res.cursors.get(DEST_KAFKA) ?? 0,
    priority: res.cursors.get(DEST_KAFKA_PRIORITY) ?? 0,
  };
  // last_seq joins maxSeqSeen at the end, once checked (an orphan's may be garbage).
  res.maxSeqSeen = Math.max(cursorOf.bulk, cursorOf.priority);

  // 3. Events and dead letters reached through their trees; learn each topic's lane.
  const topicLane = new Map<string, Lane>();
  const dlSeqs = new SeqSet();
  const destDl = new SeqSet(); // dest_dead_letters ids
  /** `viaTree`: reached through an intact tree (trusted), else found on an orphan page by shape. */
  const take = (
    table: TableName | 'event',
    r: PageRow,
    lane: Lane | null,
    viaTree: boolean,
  ): void => {
    const v = r.values;
    if (table === 'dest_dead_letters') {
      if (destDl.has(r.rowid)) return;
      destDl.add(r.rowid);
      v[0] = r.rowid;
      sink.destDeadLetter(v);
      res.destDeadLetters++;
      return;
    }
    const seq = r.rowid;
    if (!(viaTree ? Number.isSafeInteger(seq) : plausible(seq))) return;
    res.maxSeqSeen = Math.max(res.maxSeqSeen, seq);
    v[0] = seq;
    if (table === 'dead_letters') {
      if (dlSeqs.has(seq)) return;
      dlSeqs.add(seq);
      res.saved.add(seq);
      sink.deadLetter(v);
      res.deadLetters++;
      return;
    }
    // An orphan of a topic no intact tree shows: its lane is unknown. Left out only when
    // both lanes' cursors are past it; else it goes to a lane that will still send it (a
    // resend at worst, same kedge-id: better than losing a readable unforwarded event).
    const known = lane ?? topicLane.get(v[1] as string);
    const l: Lane =
      known ?? (seq > cursorOf.bulk || seq <= cursorOf.priority ? 'bulk' : 'priority');
    if (seq <= cursorOf[l]) {
      res.forwardedSkipped++;
      return;
    }
    if (res.saved.has(seq)) return;
    res.saved.add(seq);
    sink.event(l, v);
    res.events[l]++;
    if (lane === null) res.orphanEvents++;
  };
  for (let n = 2; n <= f.pageCount; n++) {
    const t = TABLES[owner[n] - 1];
    if (!t || !BIG.includes(t) || isInterior(n)) continue;
    const lane: Lane | null = t === 'events' ? 'bulk' : t === 'events_priority' ? 'priority' : null;
    const bad = res.pages.badCells;
    const rows = leaf(n);
    if (rows === null || res.pages.badCells > bad) res.completeTrees.delete(t);
    for (const r of rows ?? []) {
      if (!fits(t, r.values)) continue;
      if (lane) topicLane.set(r.values[1] as string, lane);
      if (t !== 'dest_dead_letters' && Number.isSafeInteger(r.rowid))
        trusted = Math.max(trusted, r.rowid);
      take(t, r, lane, true);
    }
  }

  // 4. Orphan leaves, by shape.
  for (let n = 2; n <= f.pageCount; n++) {
    if (!isOrphan(n)) continue;
    const page = f.page(n);
    if (page === null || pageKind(page, n) !== 0x0d) continue;
    for (const r of leaf(n) ?? []) {
      const s = shapeOf(r.values);
      if (s === 'event' || s === 'dead_letters' || s === 'dest_dead_letters')
        take(s, r, null, false);
    }
  }
  // A last_seq read only from an orphan page is checked now that the trees' seqs are known.
  const last = Number(res.meta.get('last_seq') ?? 0);
  if (!fromTree.has(keyOf('meta', ['last_seq'])) && res.meta.has('last_seq') && !plausible(last))
    res.meta.delete('last_seq');
  else if (Number.isSafeInteger(last)) res.maxSeqSeen = Math.max(res.maxSeqSeen, last);
  // A table page 1 does not name (an older schema) has no rows to lose; with page 1 unreadable, any may.
  for (const t of TABLES)
    if ((roots.size === 0 || roots.has(t)) && !res.completeTrees.has(t)) res.damagedTables.add(t);
  return res;
}

/** Root page of each kedge table, from sqlite_master (walked from page 1); empty when page 1 is unreadable. */
function schemaRoots(f: PageFile): Map<TableName, number> {
  const roots = new Map<TableName, number>();
  const stack = [1];
  const seen = new Set<number>();
  while (stack.length > 0) {
    const n = stack.pop() as number;
    if (seen.has(n) || seen.size > 100) continue;
    seen.add(n);
    const page = f.page(n);
    if (page === null) continue;
    try {
      if (pageKind(page, n) === 0x05) {
        stack.push(...interiorChildren(page, n, f));
        continue;
      }
      for (const r of leafRows(page, n, f).rows) {
        const [type, name, , root] = r.values;
        if (
          type === 'table' &&
          TABLES.includes(name as TableName) &&
          isInt(root) &&
          root > 1 &&
          root <= f.pageCount
        )
          roots.set(name as TableName, root);
      }
    } catch (err) {
      if (!isBadPage(err)) throw err;
    }
  }
  return roots;
}

/** Marks every page of the tree at `root` as table `t`'s; true when the whole tree was intact. */
function walk(f: PageFile, root: number, owner: Uint8Array, t: number): boolean {
  let complete = true;
  const stack = [root];
  while (stack.length > 0) {
    const n = stack.pop() as number;
    if (owner[n] !== 0) {
      complete = false; // a page claimed twice: a loop or a garbage pointer
      continue;
    }
    const page = f.page(n);
    if (page === null) {
      complete = false;
      continue;
    }
    const kind = pageKind(page, n);
    if (kind === 0x0d) {
      owner[n] = t;
    } else if (kind === 0x05) {
      try {
        const kids = interiorChildren(page, n, f);
        owner[n] = t;
        stack.push(...kids);
      } catch (err) {
        if (!isBadPage(err)) throw err;
        complete = false;
      }
    } else complete = false;
  }
  return complete;
}
