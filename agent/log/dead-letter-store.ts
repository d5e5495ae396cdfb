/**
 * The dead-letter tables as the operator sees them (`kedge dead-letters`): list, group, show,
 * replay and purge, over both tables: `dead_letters` (one destination: the row moved out of
 * its lane) and `dest_dead_letters` (several destinations: a copy per destination).
 *
 * Replay (one destination) re-appends each selected dead letter to its lane under a NEW seq,
 * with its original `kedge-id` kept in the stored headers (ingest refuses `kedge-*` headers,
 * so only kedge puts one there; the forwarder's toRecord keeps it). Why not its old seq: the
 * lane's cursor has passed it, and moving a cursor back under a batch in flight would let that
 * batch's ack skip the replayed rows. A new seq is after everything, so nothing in flight can
 * pass it, and the replayed events go out in their original order, after the backlog. The row
 * leaves the dead-letter table in the same transaction that re-appends it: a crash leaves each
 * one either still dead or queued, never both, never neither.
 *
 * The re-appended row is stamped with the time of the replay (never before the log's last
 * append, as append does), not its ingest time: retention ages a row by its stored ts and
 * scans in seq order, so an 8-day-old dead letter replayed under KEDGE_RETENTION=7d would
 * otherwise be dropped by the next retention pass while replay said it was queued. The
 * original ingest time goes in the stored headers as `kedge-ingest-ts` (only kedge sets
 * kedge-* headers), and toRecord takes the Kafka header and timestamp from it: the replayed
 * record is the one the first attempt would have sent.
 *
 * Replay and purge work in chunks, one transaction each, and yield to the event loop between
 * chunks: a big table must not stall ingest (every chunk is a commit, fsynced). Each replay
 * chunk selects the first rows still matching and reads the next seq afresh, so whatever ran
 * in between (appends, another replay) is no concern.
 *
 * Several destinations (KEDGE_DESTINATIONS, or routes): a dead letter in `dest_dead_letters` is
 * the very record one destination could not deliver (for a routed destination a route's OUTPUT,
 * e.g. a window aggregate with its own kedge-id). Replay appends it to its lane the same way,
 * with two headers only kedge can set: its `kedge-id`, and `kedge-replay-for: <destination>`.
 * Every destination's view (agent/forward/destination-log.ts) passes over a row replayed for
 * another destination, and hands one replayed for itself out as is, past its routes (it is
 * their output already, and the routes' state must not see it twice); the forwarder strips
 * `kedge-replay-for` from the Kafka record. A row for a destination that is not configured is
 * never replayed: no view would send it, and the log would trim it once all had passed it.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { Row, SqlDb } from './driver.ts';
import { headersJson } from './events.ts';
import type { Lanes } from './lanes.ts';
import type { Tx } from './tx.ts';
import type {
  DeadLetterEntry,
  DeadLetterFilter,
  DeadLetterGroup,
  DeadLetterRow,
  Lane,
  PurgeResult,
  ReplayResult,
} from './types.ts';
import { KedgeError } from '../errors.ts';

/** A replay this log cannot do: `--destination` where the agent has one destination. */
export class DeadLetterReplayUnsupported extends KedgeError {
  constructor(message: string) {
    super('KEDGE_DEAD_LETTER_REPLAY_UNSUPPORTED', message);
    this.name = 'DeadLetterReplayUnsupported';
  }
}

/** Replay for a destination that is not configured (a user mistake: 400, exit 2). */
export class DeadLetterUnknownDestination extends KedgeError {
  constructor(message: string) {
    super('KEDGE_DEAD_LETTER_UNKNOWN_DESTINATION', message);
    this.name = 'DeadLetterUnknownDestination';
  }
}

/**
 * Header of a row re-appended by replay for ONE destination (several destinations): only that
 * destination sends it, past its routes; the others pass over it. Ingest refuses `kedge-*`
 * headers, so only replay sets it; toRecord leaves it out of the Kafka record.
 */
export const REPLAY_FOR_HEADER = 'kedge-replay-for';

/**
 * Header with the ORIGINAL ingest time (ms since the epoch) of a replayed row, whose stored ts
 * is the replay's (see the file comment); toRecord sends it as the Kafka header and timestamp.
 */
export const INGEST_TS_HEADER = 'kedge-ingest-ts';

/** When `e` was first ingested: its `kedge-ingest-ts` header when replay put one there, else its ts. */
export function ingestTs(e: { headers: Record<string, string> | null; ts: number }): number {
  const h = e.headers?.[INGEST_TS_HEADER];
  const n = h === undefined ? Number.NaN : Number(h);
  return Number.isSafeInteger(n) ? n : e.ts;
}

/** The destination a log row was replayed for, or null for an ordinary event. */
export function replayedFor(e: { headers: Record<string, string> | null }): string | null {
  return e.headers?.[REPLAY_FOR_HEADER] ?? null;
}

/** Headers as stored in a dead-letter row: without the ones replay adds (kept in their own columns). */
export function withoutReplayHeaders(
  h: Record<string, string> | null,
): Record<string, string> | null {
  if (h === null || (!(REPLAY_FOR_HEADER in h) && !('kedge-id' in h))) return h;
  const { [REPLAY_FOR_HEADER]: _for, 'kedge-id': _id, ...rest } = h;
  return Object.keys(rest).length > 0 ? rest : null;
}

/** Rows replayed per transaction: bounded memory and bounded transactions for a big table. */
const REPLAY_CHUNK = 500;
/** Rows purged per transaction (only their keys are read). */
const PURGE_CHUNK = 1_000;

const KIND =
  "CASE WHEN instr(reason, ':') > 0 THEN substr(reason, 1, instr(reason, ':') - 1) ELSE reason END";

/** What the store needs from the log: its connection, lanes and seq counter. */
export interface DeadLetterStoreDeps {
  db: SqlDb;
  tx: Tx;
  lanes: Lanes;
  /**
   * The configured destinations when there are several (or routes): replay then works on
   * `dest_dead_letters`; null: one destination, replay works on `dead_letters`.
   */
  destinations(): readonly string[] | null;
  /** The next free seq; `used(last, ts)` after a commit that took seqs up to `last`, stamped `ts`. */
  nextSeq(): number;
  /** The ts for rows appended now: the log's clock, never before its last append. */
  stamp(): number;
  used(lastSeq: number, ts: number): void;
  /** Throws when the log was closed (checked before each chunk: replay and purge yield between them). */
  assertOpen(): void;
}

export class DeadLetterStore {
  readonly #d: DeadLetterStoreDeps;

  constructor(d: DeadLetterStoreDeps) {
    this.#d = d;
  }

  #all(sql: string, params: unknown[]): Row[] {
    const st = this.#d.db.prepare(sql);
    try {
      return st.all(params);
    } finally {
      st.finalize();
    }
  }

  /** `[sql, params]` of the WHERE clause for `f` (always a clause: `1` when no filter). */
  static where(f: DeadLetterFilter, dest: boolean): [string, unknown[]] {
    const c: string[] = [];
    const p: unknown[] = [];
    if (f.topic !== undefined) c.push('topic = ?') && p.push(f.topic);
    if (f.reason !== undefined)
      c.push('substr(reason, 1, ?) = ?') && p.push(f.reason.length, f.reason);
    if (f.from !== undefined) c.push('seq >= ?') && p.push(f.from);
    if (f.to !== undefined) c.push('seq <= ?') && p.push(f.to);
    if (f.destination !== undefined) {
      if (!dest) c.push('0');
      else c.push('dest = ?') && p.push(f.destination);
    }
    return [c.length ? c.join(' AND ') : '1', p];
  }

  /** Grouped by destination, topic and reason kind; most dead letters first. */
  summary(f: DeadLetterFilter): DeadLetterGroup[] {
    const out: DeadLetterGroup[] = [];
    for (const dest of [false, true]) {
      const [w, p] = DeadLetterStore.where(f, dest);
      const rows = this.#all(
        `SELECT ${dest ? 'dest' : 'NULL'} AS dest, topic, ${KIND} AS kind, count(*) AS n, total(size) AS bytes, ` +
          `min(seq) AS lo, max(seq) AS hi, min(dead_at) AS d0, max(dead_at) AS d1 FROM ${dest ? 'dest_dead_letters' : 'dead_letters'} ` +
          `WHERE ${w} GROUP BY dest, topic, kind`,
        p,
      );
      for (const r of rows)
        out.push({
          destination: (r.dest as string | null) ?? null,
          topic: r.topic as string,
          reason: r.kind as string,
          count: Number(r.n),
          bytes: Number(r.bytes),
          firstSeq: Number(r.lo),
          lastSeq: Number(r.hi),
          oldestDeadAt: Number(r.d0),
          newestDeadAt: Number(r.d1),
        });
    }
    return out.sort((a, b) => b.count - a.count || a.firstSeq - b.firstSeq);
  }

  /**
   * The dead letters matching `f` in seq order (oldest first), at most `limit`, without key
   * and value: a list never shows them, and they are most of a row's bytes.
   */
  list(f: DeadLetterFilter, limit: number, agentId: string): DeadLetterRow[] {
    const n = Math.max(0, Math.floor(limit));
    const one = this.#select(false, f, n, false).map((r) => this.#row(r, agentId));
    const several = this.#select(true, f, n, false).map((r) => this.#row(r, agentId));
    return one
      .concat(several)
      .sort((a, b) => a.seq - b.seq)
      .slice(0, n);
  }

  /** Every dead letter with seq `seq` (several destinations: one per destination), with key and value. */
  show(seq: number, agentId: string): DeadLetterEntry[] {
    const f: DeadLetterFilter = { from: seq, to: seq };
    // Bounded: a seq is in dead_letters once, in dest_dead_letters at most once per destination.
    return this.#select(false, f, -1, true)
      .concat(this.#select(true, f, -1, true))
      .map((r) => this.#entry(r, agentId));
  }

  #select(dest: boolean, f: DeadLetterFilter, limit: number, payload: boolean): Row[] {
    const [w, p] = DeadLetterStore.where(f, dest);
    const params = [...p, limit];
    const kv = payload ? 'key, value, ' : '';
    return dest
      ? this.#all(
          `SELECT dest, seq, kedge_id, topic, ${kv}headers, ts, size, reason, dead_at, lane FROM dest_dead_letters WHERE ${w} ORDER BY seq, id LIMIT ?`,
          params,
        )
      : this.#all(
          `SELECT NULL AS dest, seq, NULL AS kedge_id, topic, ${kv}headers, ts, size, reason, dead_at, lane FROM dead_letters WHERE ${w} ORDER BY seq LIMIT ?`,
          params,
        );
  }

  #row(r: Row, agentId: string): DeadLetterRow {
    const headers =
      r.headers == null ? null : (JSON.parse(r.headers as string) as Record<string, string>);
    return {
      destination: (r.dest as string | null) ?? null,
      seq: Number(r.seq),
      // A replayed-then-refused-again event keeps the id it carried the first time.
      kedgeId: (r.kedge_id as string | null) ?? headers?.['kedge-id'] ?? `${agentId}:${r.seq}`,
      topic: r.topic as string,
      headers,
      // A replayed-then-refused-again event: its stored ts is the replay's, its ingest time a header.
      ts: ingestTs({ headers, ts: Number(r.ts) }),
      size: Number(r.size),
      reason: r.reason as string,
      deadAt: Number(r.dead_at),
      lane: r.lane === 'priority' ? 'priority' : 'bulk',
    };
  }

  #entry(r: Row, agentId: string): DeadLetterEntry {
    return {
      ...this.#row(r, agentId),
      key: (r.key as Buffer | null) ?? null,
      value: r.value as Buffer,
    };
  }

  /**
   * Re-appends the matching dead letters to their lanes, oldest first, each with its original
   * kedge-id and ingest time (headers), stamped with the replay's time, and deletes them from
   * the dead-letter table in the same transaction: REPLAY_CHUNK rows per transaction, yielding
   * between chunks. One destination: `dead_letters`; several: `dest_dead_letters`, each marked
   * for its own destination (see the file comment). The caller updates the counters.
   */
  async replay(f: DeadLetterFilter, agentId: string): Promise<ReplayResult> {
    const names = this.#d.destinations();
    if (names === null && f.destination !== undefined)
      throw new DeadLetterReplayUnsupported(
        'replay --destination needs several destinations or routes (KEDGE_DESTINATIONS, KEDGE_ROUTE_*); this agent has one: replay without --destination',
      );
    if (names !== null && f.destination !== undefined && !names.includes(f.destination))
      throw new DeadLetterUnknownDestination(
        `no destination "${f.destination}" is configured (${names.join(', ')}): --destination takes one of them`,
      );
    const res: ReplayResult = { replayed: 0, byTopic: new Map(), firstSeq: null, lastSeq: null };
    // Bounded: every chunk takes its rows out of the table; a chunk of none ends it.
    for (;;) {
      this.#d.assertOpen();
      if (this.#replayChunk(f, names, agentId, res) === 0) break;
      await nextTurn(); // ingest, the forwarder and other requests run between chunks
    }
    return res;
  }

  /** One replay transaction: the first REPLAY_CHUNK matches. Returns how many it replayed. */
  #replayChunk(
    f: DeadLetterFilter,
    names: readonly string[] | null,
    agentId: string,
    res: ReplayResult,
  ): number {
    const d = this.#d;
    const [w, p] = DeadLetterStore.where(f, names !== null);
    // Several: only rows of configured destinations (no view would send the others).
    const rows = this.#all(
      names === null
        ? `SELECT seq AS rowkey, NULL AS dest, seq, NULL AS kedge_id, topic, key, value, headers, ts, size, reason, dead_at, lane FROM dead_letters WHERE ${w} ORDER BY seq LIMIT ?`
        : `SELECT id AS rowkey, dest, seq, kedge_id, topic, key, value, headers, ts, size, reason, dead_at, lane FROM dest_dead_letters WHERE ${w} AND dest IN (${names.map(() => '?').join(', ')}) ORDER BY seq, id LIMIT ?`,
      [...p, ...(names ?? []), REPLAY_CHUNK],
    );
    if (rows.length === 0) return 0;
    const del = d.db.prepare(
      names === null
        ? 'DELETE FROM dead_letters WHERE seq = ?'
        : 'DELETE FROM dest_dead_letters WHERE id = ?',
    );
    const setLast = d.db.prepare(
      "INSERT INTO meta(k, v) VALUES ('last_seq', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
    );
    const grown: Record<Lane, { n: number; bytes: number }> = {
      bulk: { n: 0, bytes: 0 },
      priority: { n: 0, bytes: 0 },
    };
    let seq = d.nextSeq();
    const first = seq;
    const ts = d.stamp();
    const topics = new Map<string, number>();
    try {
      d.tx.begin();
      for (const r of rows) {
        const e = this.#entry(r, agentId);
        const headers: Record<string, string> = {
          ...(withoutReplayHeaders(e.headers) ?? {}),
          'kedge-id': e.kedgeId,
          [INGEST_TS_HEADER]: String(e.ts), // e.ts is the original ingest time (#row)
        };
        if (e.destination !== null) headers[REPLAY_FOR_HEADER] = e.destination;
        d.lanes
          .get(e.lane)
          .insert.run([seq++, e.topic, e.key, e.value, headersJson(headers), ts, e.size]);
        del.run([r.rowkey]);
        const g = grown[e.lane];
        g.n++;
        g.bytes += e.size;
        topics.set(e.topic, (topics.get(e.topic) ?? 0) + 1);
      }
      setLast.run([String(seq - 1)]);
      d.tx.commit();
    } catch (err) {
      d.tx.rollbackQuietly();
      throw d.tx.writeError(err, 'replay dead letters');
    } finally {
      del.finalize();
      setLast.finalize();
    }
    d.used(seq - 1, ts);
    for (const lane of ['bulk', 'priority'] as const) {
      const g = grown[lane];
      if (g.n > 0) d.lanes.get(lane).grow(g.n, g.bytes, ts);
    }
    res.replayed += rows.length;
    for (const [t, n] of topics) res.byTopic.set(t, (res.byTopic.get(t) ?? 0) + n);
    res.firstSeq ??= first;
    res.lastSeq = seq - 1;
    return rows.length;
  }

  /**
   * Deletes the matching dead letters of both tables, PURGE_CHUNK rows per transaction
   * (reading only their keys, topic and destination), yielding between chunks.
   */
  async purge(f: DeadLetterFilter): Promise<PurgeResult> {
    const res: PurgeResult = { purged: 0, byTopic: new Map(), byDestination: new Map() };
    for (const dest of [false, true]) {
      // Bounded: every chunk deletes the rows it selected; a chunk of none ends it.
      for (;;) {
        this.#d.assertOpen();
        if (this.#purgeChunk(f, dest, res) === 0) break;
        await nextTurn();
      }
    }
    return res;
  }

  #purgeChunk(f: DeadLetterFilter, dest: boolean, res: PurgeResult): number {
    const d = this.#d;
    const [w, p] = DeadLetterStore.where(f, dest);
    const rows = this.#all(
      dest
        ? `SELECT id AS rowkey, dest, topic FROM dest_dead_letters WHERE ${w} ORDER BY id LIMIT ?`
        : `SELECT seq AS rowkey, NULL AS dest, topic FROM dead_letters WHERE ${w} ORDER BY seq LIMIT ?`,
      [...p, PURGE_CHUNK],
    );
    if (rows.length === 0) return 0;
    const del = d.db.prepare(
      dest
        ? 'DELETE FROM dest_dead_letters WHERE id = ?'
        : 'DELETE FROM dead_letters WHERE seq = ?',
    );
    try {
      d.tx.begin();
      for (const r of rows) del.run([r.rowkey]);
      d.tx.commit();
    } catch (err) {
      d.tx.rollbackQuietly();
      throw d.tx.writeError(err, 'purge dead letters');
    } finally {
      del.finalize();
    }
    for (const r of rows) {
      res.purged++;
      const topic = r.topic as string;
      res.byTopic.set(topic, (res.byTopic.get(topic) ?? 0) + 1);
      if (r.dest != null)
        res.byDestination.set(r.dest as string, (res.byDestination.get(r.dest as string) ?? 0) + 1);
    }
    return rows.length;
  }
}
