/**
 * Reads a damaged SQLite file page by page, without SQLite: `kedge repair`'s eyes.
 *
 * Why not SQL: SQLite reaches rows through b-trees, so one garbage interior page hides
 * every leaf below it, and a garbage page 1 hides the whole file. Here every page is
 * looked at on its own: a table-leaf page whose cells decode is read wherever it is, so
 * every event whose page is intact can be saved.
 *
 * What this module knows of the file format (https://www.sqlite.org/fileformat.html):
 * - the 100-byte header (page size at 16, reserved bytes at 20, freelist at 32/36);
 * - the WAL: a 32-byte header and frames of 24 + page-size bytes, each checksummed over
 *   everything before it; only frames up to the last valid commit frame count, and a
 *   frame's page replaces the file's (the newest frame of a page wins);
 * - b-tree pages: table interior (0x05) and table leaf (0x0D) pages, their cells,
 *   overflow chains, and records (a header of serial types, then the values).
 * It reads one page at a time from the files (bounded memory whatever their size) and
 * never writes them.
 */
import fs from 'node:fs';

/** A value of a decoded record column. INTEGER and REAL become numbers (kedge stores none above 2^53). */
export type SqlValue = null | number | string | Buffer;

/** One row of a table leaf: its rowid and its record's columns (a rowid alias column reads as null). */
export interface PageRow {
  rowid: number;
  values: SqlValue[];
}

const LEAF_TABLE = 0x0d;
const INTERIOR_TABLE = 0x05;
const HEADER_MAGIC = 'SQLite format 3\0';
const WAL_MAGIC_LE = 0x377f0682;
const WAL_MAGIC_BE = 0x377f0683;
const WAL_HEADER = 32;
const WAL_FRAME_HEADER = 24;
/** kedge never changes SQLite's default: the guess when the header is unreadable. */
export const DEFAULT_PAGE_SIZE = 4096;

/** What the WAL contributed: its valid committed frames, and where it stopped. */
export interface WalSummary {
  present: boolean;
  /** Frames that passed their checksum and belong to a committed transaction. */
  committedFrames: number;
  /** Frames after the last commit or after the first bad frame (torn or uncommitted): not used. */
  ignoredFrames: number;
  /** Why reading stopped early, or null when the whole WAL was valid. */
  stoppedBecause: string | null;
}

/**
 * The database as pages: the main file with the WAL's committed frames laid over it.
 * `page(n)` reads page n (1-based) or returns null when it is beyond both files.
 */
export class PageFile {
  readonly pageSize: number;
  /** Usable bytes per page (page size minus the reserved bytes at the end of each). */
  readonly usable: number;
  readonly pageCount: number;
  /** True when page 1 starts with the SQLite header (page size read from it, not guessed). */
  readonly headerIntact: boolean;
  readonly wal: WalSummary;
  readonly #dbFd: number | null;
  readonly #walFd: number | null;
  readonly #dbPages: number;
  /** Page number → offset of its newest committed frame's data in the WAL. */
  readonly #overlay = new Map<number, number>();

  constructor(dbFile: string, walFile: string | null) {
    this.#dbFd = openQuiet(dbFile);
    this.#walFd = walFile === null ? null : openQuiet(walFile);
    const head = Buffer.alloc(100);
    const dbBytes = this.#dbFd === null ? 0 : fs.fstatSync(this.#dbFd).size;
    if (this.#dbFd !== null) fs.readSync(this.#dbFd, head, 0, 100, 0);
    this.headerIntact = head.toString('latin1', 0, 16) === HEADER_MAGIC;
    let pageSize = 0;
    let reserved = 0;
    if (this.headerIntact) {
      const raw = head.readUInt16BE(16);
      pageSize = raw === 1 ? 65536 : raw;
      reserved = head[20];
      if (!validPageSize(pageSize) || reserved > 64) pageSize = 0;
    }
    const walPageSize = this.#walFd === null ? 0 : readWalPageSize(this.#walFd);
    if (pageSize === 0) {
      pageSize = validPageSize(walPageSize) ? walPageSize : DEFAULT_PAGE_SIZE;
      reserved = 0;
    }
    this.pageSize = pageSize;
    this.usable = pageSize - reserved;
    this.#dbPages = Math.floor(dbBytes / pageSize);
    const walDbSize = this.#readWal(walPageSize === pageSize);
    this.wal = this.#walSummary;
    // A commit frame records the database size after that commit: pages past it were cut.
    this.pageCount = walDbSize > 0 ? walDbSize : this.#dbPages;
  }

  #walSummary: WalSummary = {
    present: false,
    committedFrames: 0,
    ignoredFrames: 0,
    stoppedBecause: null,
  };

  page(n: number): Buffer | null {
    if (n < 1 || n > this.pageCount) return null;
    const buf = Buffer.alloc(this.pageSize);
    const walAt = this.#overlay.get(n);
    if (walAt !== undefined && this.#walFd !== null) {
      return fs.readSync(this.#walFd, buf, 0, this.pageSize, walAt) === this.pageSize ? buf : null;
    }
    if (this.#dbFd === null || n > this.#dbPages) return null;
    const got = fs.readSync(this.#dbFd, buf, 0, this.pageSize, (n - 1) * this.pageSize);
    return got === this.pageSize ? buf : null;
  }

  /** True when page n comes from the WAL. */
  fromWal(n: number): boolean {
    return this.#overlay.has(n);
  }

  close(): void {
    if (this.#dbFd !== null) fs.closeSync(this.#dbFd);
    if (this.#walFd !== null) fs.closeSync(this.#walFd);
  }

  /** Lays the WAL's committed frames over the file; returns the last commit's database size (0: none). */
  #readWal(samePageSize: boolean): number {
    const fd = this.#walFd;
    if (fd === null) return 0;
    const size = fs.fstatSync(fd).size;
    const s = this.#walSummary;
    s.present = true;
    if (size < WAL_HEADER) {
      s.stoppedBecause = size === 0 ? null : 'the WAL header is cut off';
      return 0;
    }
    const hdr = Buffer.alloc(WAL_HEADER);
    fs.readSync(fd, hdr, 0, WAL_HEADER, 0);
    const magic = hdr.readUInt32BE(0);
    if (magic !== WAL_MAGIC_LE && magic !== WAL_MAGIC_BE) {
      s.stoppedBecause = 'the WAL header is not a WAL header';
      return 0;
    }
    if (!samePageSize) {
      s.stoppedBecause = 'the WAL page size does not match the database';
      return 0;
    }
    const be = magic === WAL_MAGIC_BE;
    let [c0, c1] = walChecksum(hdr, 0, 24, 0, 0, be);
    if (c0 !== hdr.readUInt32BE(24) || c1 !== hdr.readUInt32BE(28)) {
      s.stoppedBecause = 'the WAL header checksum is wrong';
      return 0;
    }
    const salt1 = hdr.readUInt32BE(16);
    const salt2 = hdr.readUInt32BE(20);
    const frameSize = WAL_FRAME_HEADER + this.pageSize;
    const frame = Buffer.alloc(frameSize);
    const pending = new Map<number, number>();
    let dbSize = 0;
    let frames = Math.floor((size - WAL_HEADER) / frameSize);
    if ((size - WAL_HEADER) % frameSize !== 0) s.stoppedBecause = 'the WAL ends in a torn frame';
    for (let i = 0; i < frames; i++) {
      const at = WAL_HEADER + i * frameSize;
      fs.readSync(fd, frame, 0, frameSize, at);
      const pageNo = frame.readUInt32BE(0);
      const commitSize = frame.readUInt32BE(4);
      if (frame.readUInt32BE(8) !== salt1 || frame.readUInt32BE(12) !== salt2) {
        // A frame of an earlier WAL generation (the WAL restarts after a checkpoint): the end.
        frames = i;
        break;
      }
      [c0, c1] = walChecksum(frame, 0, 8, c0, c1, be);
      [c0, c1] = walChecksum(frame, WAL_FRAME_HEADER, frameSize, c0, c1, be);
      if (pageNo === 0 || c0 !== frame.readUInt32BE(16) || c1 !== frame.readUInt32BE(20)) {
        s.stoppedBecause = `WAL frame ${i + 1} fails its checksum (torn or overwritten)`;
        frames = i;
        break;
      }
      pending.set(pageNo, at + WAL_FRAME_HEADER);
      if (commitSize !== 0) {
        for (const [p, off] of pending) this.#overlay.set(p, off);
        s.committedFrames = i + 1;
        pending.clear();
        dbSize = commitSize;
      }
    }
    s.ignoredFrames = Math.floor((size - WAL_HEADER) / frameSize) - s.committedFrames;
    return dbSize;
  }
}

function openQuiet(file: string): number | null {
  try {
    return fs.openSync(file, 'r');
  } catch {
    return null;
  }
}

function validPageSize(n: number): boolean {
  return n >= 512 && n <= 65536 && (n & (n - 1)) === 0;
}

function readWalPageSize(fd: number): number {
  const b = Buffer.alloc(12);
  return fs.readSync(fd, b, 0, 12, 0) === 12 ? b.readUInt32BE(8) : 0;
}

/** The WAL checksum: pairs of 32-bit words summed in Fibonacci fashion (https://www.sqlite.org/fileformat.html#checksum_algorithm). */
function walChecksum(
  b: Buffer,
  start: number,
  end: number,
  s0: number,
  s1: number,
  be: boolean,
): [number, number] {
  for (let i = start; i < end; i += 8) {
    const x0 = be ? b.readUInt32BE(i) : b.readUInt32LE(i);
    const x1 = be ? b.readUInt32BE(i + 4) : b.readUInt32LE(i + 4);
    s0 = (s0 + x0 + s1) >>> 0;
    s1 = (s1 + x1 + s0) >>> 0;
  }
  return [s0, s1];
}

/** Thrown inside decoding: the page or cell is not what it claims; the caller skips it. */
class BadPage extends Error {}

/** A varint at `at`: [value, bytes used]. */
function varint(b: Buffer, at: number, end: number): [number, number] {
  let v = 0;
  for (let i = 0; i < 9; i++) {
    if (at + i >= end) throw new BadPage('varint runs off the page');
    const byte = b[at + i];
    if (i === 8) return [v * 256 + byte, 9];
    v = v * 128 + (byte & 0x7f);
    if ((byte & 0x80) === 0) return [v, i + 1];
  }
  throw new BadPage('unreachable');
}

/** The b-tree header's offset on page n (page 1 starts after the file header). */
function headerAt(n: number): number {
  return n === 1 ? 100 : 0;
}

/** The page's b-tree flag byte (0x0D table leaf, 0x05 table interior, …). */
export function pageKind(page: Buffer, n: number): number {
  return page[headerAt(n)];
}

/** The cell offsets of a b-tree page, checked against the page bounds. */
function cellPointers(page: Buffer, n: number, usable: number, interior: boolean): number[] {
  const h = headerAt(n);
  const count = page.readUInt16BE(h + 3);
  const ptrs = h + (interior ? 12 : 8);
  if (ptrs + 2 * count > usable) throw new BadPage('cell count beyond the page');
  const out: number[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const off = page.readUInt16BE(ptrs + 2 * i);
    if (off < ptrs + 2 * count || off >= usable) throw new BadPage('cell pointer out of range');
    out[i] = off;
  }
  return out;
}

/** Child page numbers of a table interior page (left children, then the right-most). */
export function interiorChildren(page: Buffer, n: number, f: PageFile): number[] {
  if (pageKind(page, n) !== INTERIOR_TABLE) throw new BadPage('not a table interior page');
  const out: number[] = [];
  for (const off of cellPointers(page, n, f.usable, true)) {
    if (off + 4 > f.usable) throw new BadPage('cell runs off the page');
    out.push(page.readUInt32BE(off));
  }
  out.push(page.readUInt32BE(headerAt(n) + 8));
  for (const c of out) if (c < 1 || c > f.pageCount) throw new BadPage('child page out of range');
  return out;
}

/**
 * The rows of a table leaf page. Cells that do not decode (or whose overflow chain is
 * broken) are counted in `bad` and skipped; the others are returned. Throws BadPage when
 * the page itself is not a table leaf.
 */
export function leafRows(page: Buffer, n: number, f: PageFile): { rows: PageRow[]; bad: number } {
  if (pageKind(page, n) !== LEAF_TABLE) throw new BadPage('not a table leaf page');
  const rows: PageRow[] = [];
  let bad = 0;
  const u = f.usable;
  for (const off of cellPointers(page, n, u, false)) {
    try {
      const [payloadSize, a] = varint(page, off, u);
      const [rowid, b] = varint(page, off + a, u);
      const start = off + a + b;
      const payload = readPayload(page, start, payloadSize, f);
      rows.push({ rowid, values: decodeRecord(payload) });
    } catch (err) {
      if (!(err instanceof BadPage)) throw err;
      bad++;
    }
  }
  return { rows, bad };
}

/** A cell's whole payload: the local part, then its overflow chain (https://www.sqlite.org/fileformat.html#cellformat). */
function readPayload(page: Buffer, start: number, size: number, f: PageFile): Buffer {
  const u = f.usable;
  const maxLocal = u - 35;
  if (size <= maxLocal) {
    if (start + size > u) throw new BadPage('payload runs off the page');
    return page.subarray(start, start + size);
  }
  const minLocal = Math.floor(((u - 12) * 32) / 255) - 23;
  const k = minLocal + ((size - minLocal) % (u - 4));
  const local = k <= maxLocal ? k : minLocal;
  if (start + local + 4 > u) throw new BadPage('payload runs off the page');
  const out = Buffer.alloc(size);
  page.copy(out, 0, start, start + local);
  let got = local;
  let next = page.readUInt32BE(start + local);
  const maxPages = Math.ceil((size - local) / (u - 4));
  for (let i = 0; i < maxPages && got < size; i++) {
    const ov = next >= 1 ? f.page(next) : null;
    if (ov === null) throw new BadPage('overflow chain broken');
    const take = Math.min(u - 4, size - got);
    ov.copy(out, got, 4, 4 + take);
    got += take;
    next = ov.readUInt32BE(0);
  }
  if (got < size) throw new BadPage('overflow chain too short');
  return out;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** A record: header size, serial types, then the values (https://www.sqlite.org/fileformat.html#record_format). */
export function decodeRecord(p: Buffer): SqlValue[] {
  const [hdrSize, a] = varint(p, 0, p.length);
  if (hdrSize < a || hdrSize > p.length) throw new BadPage('record header size out of range');
  const types: number[] = [];
  for (let at = a; at < hdrSize; ) {
    const [t, n] = varint(p, at, hdrSize);
    if (t === 10 || t === 11) throw new BadPage('reserved serial type');
    types.push(t);
    at += n;
  }
  const values: SqlValue[] = [];
  let at = hdrSize;
  for (const t of types) {
    const len = serialLength(t);
    if (at + len > p.length) throw new BadPage('record value runs past the payload');
    values.push(serialValue(p, at, t, len));
    at += len;
  }
  if (at !== p.length) throw new BadPage('record size does not match its payload');
  return values;
}

function serialLength(t: number): number {
  if (t <= 4) return [0, 1, 2, 3, 4][t];
  if (t === 5) return 6;
  if (t === 6 || t === 7) return 8;
  if (t < 12) return 0;
  return Math.floor((t - (t % 2 === 0 ? 12 : 13)) / 2);
}

function serialValue(p: Buffer, at: number, t: number, len: number): SqlValue {
  switch (t) {
    case 0:
      return null;
    case 1:
    case 2:
    case 3:
    case 4:
    case 5:
      return p.readIntBE(at, len);
    case 6:
      return Number(p.readBigInt64BE(at));
    case 7:
      return p.readDoubleBE(at);
    case 8:
      return 0;
    case 9:
      return 1;
  }
  const bytes = p.subarray(at, at + len);
  if (t % 2 === 0) return Buffer.from(bytes); // a copy: the page buffer is reused by callers
  try {
    return UTF8.decode(bytes);
  } catch {
    throw new BadPage('text is not UTF-8');
  }
}

/** Page numbers on the freelist (free pages hold stale rows), read from page 1's header; empty when unreadable. */
export function freelistPages(f: PageFile): Set<number> {
  const free = new Set<number>();
  const p1 = f.headerIntact ? f.page(1) : null;
  if (p1 === null) return free;
  let trunk = p1.readUInt32BE(32);
  const total = p1.readUInt32BE(36);
  const seen = new Set<number>();
  while (trunk !== 0 && !seen.has(trunk) && free.size <= total) {
    seen.add(trunk);
    const page = f.page(trunk);
    if (page === null) break;
    free.add(trunk);
    const n = page.readUInt32BE(4);
    if (8 + 4 * n > f.usable) break;
    for (let i = 0; i < n; i++) free.add(page.readUInt32BE(8 + 4 * i));
    trunk = page.readUInt32BE(0);
  }
  return free;
}

/** True for a page-level decoding problem (a garbage page), false for anything else (a bug, an I/O error). */
export function isBadPage(err: unknown): boolean {
  return err instanceof BadPage;
}
