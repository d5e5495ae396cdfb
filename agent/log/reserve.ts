/**
 * A few MiB of disk held back in `<dir>/kedge.reserve`, given up when the
 * disk is full so the log can still drain.
 *
 * Why: deleting forwarded rows is itself a write (WAL frames, and the
 * checkpoint that may extend the database file). On a full disk without a
 * reserve, ack() fails with SQLITE_FULL, nothing is ever trimmed, no space is
 * ever freed, and the agent is wedged until someone intervenes. With it, the
 * first failing ack/trim releases the reserve and retries. Appends never get
 * the reserve: from the release until the reserve could be re-created (the
 * disk has room for it twice over) an append is refused with KEDGE_DISK_FULL
 * unless the disk keeps the reserve's size free after it, so that space stays
 * available to the acks and trims that drain the log. Otherwise ingest would
 * take it at once and the next ack would fail again.
 */
import fs from 'node:fs';
import path from 'node:path';

export const RESERVE_FILE = 'kedge.reserve';
export const DEFAULT_RESERVE_BYTES = 8 << 20;

export class SpaceReserve {
  readonly file: string;
  readonly bytes: number;
  #held = false;

  constructor(dir: string, bytes: number) {
    this.file = path.join(dir, RESERVE_FILE);
    this.bytes = Math.max(0, Math.floor(bytes));
  }

  get held(): boolean {
    return this.#held;
  }

  /** Make sure the reserve exists if the disk has room for it twice over. Never throws. True when held (or disabled). */
  ensure(): boolean {
    if (this.bytes === 0) return true;
    if (this.#held) return true;
    try {
      if (fs.statSync(this.file).size >= this.bytes) return (this.#held = true);
    } catch {
      // missing: create it below
    }
    const tmp = `${this.file}.tmp`;
    try {
      const s = fs.statfsSync(path.dirname(this.file));
      if (s.bavail * s.bsize < 2 * this.bytes) return false;
      // Written, not just sized (a sparse file would reserve nothing).
      const fd = fs.openSync(tmp, 'w', 0o600);
      try {
        const chunk = Buffer.alloc(Math.min(this.bytes, 1 << 20));
        for (let off = 0; off < this.bytes; off += chunk.length) {
          fs.writeSync(fd, chunk, 0, Math.min(chunk.length, this.bytes - off), off);
        }
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, this.file);
      return (this.#held = true);
    } catch {
      try {
        fs.unlinkSync(tmp);
      } catch {
        // nothing to clean up
      }
      return false;
    }
  }

  /** Give the space back to the file system. True if there was a reserve to give. */
  release(): boolean {
    this.#held = false;
    try {
      fs.unlinkSync(this.file);
      return true;
    } catch {
      return false;
    }
  }
}
