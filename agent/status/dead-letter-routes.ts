/**
 * The dead-letter admin routes (`kedge dead-letters` talks to them), and the JSON answers the
 * CLI also builds itself when it works offline on the data dir, so both print the same:
 *   GET  /v1/dead-letters?topic=&reason=&from=&to=&destination=&limit=   groups and rows
 *   GET  /v1/dead-letters/{seq}                                          one, with key, value, headers
 *   POST /v1/dead-letters/replay?…filters… (or ?all=1)                   re-queue, answers the count
 *   POST /v1/dead-letters/purge?…filters… (or ?all=1)                    delete, answers the count
 * Every one needs the token when one is set: dead letters hold event data (without a token,
 * only loopback peers may use them: event-data-access.ts, applied in admin.ts).
 * A list answers at most MAX_LIST_LIMIT rows (a larger limit is a 400): the groups count every
 * match, and from/to page through the rows. Replay and purge work in chunks and yield between
 * them (dead-letter-store.ts); each logs one audit line (filter, count).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { drain, methodNotAllowed, sendJson } from '../ingest/http-reply.ts';
import {
  DeadLetterReplayUnsupported,
  DeadLetterUnknownDestination,
  type DeadLetterAdmin,
  type DeadLetterEntry,
  type DeadLetterFilter,
  type DeadLetterRow,
} from '../log/index.ts';
import type { Logger } from '../observe/logger.ts';
import type { Metrics } from '../observe/metrics.ts';
import { KedgeError } from '../errors.ts';

/** Rows a list answers by default (the groups always count every match). */
export const DEFAULT_LIST_LIMIT = 100;
/**
 * The most rows one list answers: they are built in memory on the agent's one thread. A larger
 * limit is refused (400, exit 2) rather than cut silently; --from/--to page through more.
 */
export const MAX_LIST_LIMIT = 1_000;
/** Bytes of a value shown as text/base64 by `show`. */
const VALUE_PREVIEW_BYTES = 64 * 1024;

/** A filter or limit that cannot be read: 400 for the API, exit 2 for the CLI. */
export class DeadLetterQueryError extends KedgeError {
  constructor(message: string) {
    super('KEDGE_BAD_DEAD_LETTER_QUERY', message);
    this.name = 'DeadLetterQueryError';
  }
}

export interface DeadLetterQuery {
  filter: DeadLetterFilter;
  limit: number;
  /** replay/purge with no filter need this, so a bare command never touches every dead letter. */
  all: boolean;
}

function seqParam(name: string, v: string | null): number | undefined {
  if (v === null || v === '') return undefined;
  if (!/^\d{1,15}$/.test(v))
    throw new DeadLetterQueryError(
      `${name} must be a seq (a whole number), not ${JSON.stringify(v)}`,
    );
  return Number(v);
}

/** Reads the filter from query parameters (`topic`, `reason`, `from`, `to`, `destination`, `limit`, `all`). */
export function parseQuery(q: URLSearchParams): DeadLetterQuery {
  const filter: DeadLetterFilter = {};
  for (const k of ['topic', 'reason', 'destination'] as const) {
    const v = q.get(k);
    if (v !== null && v !== '') filter[k] = v;
  }
  filter.from = seqParam('from', q.get('from'));
  filter.to = seqParam('to', q.get('to'));
  if (filter.from === undefined) delete filter.from;
  if (filter.to === undefined) delete filter.to;
  if (filter.from !== undefined && filter.to !== undefined && filter.from > filter.to)
    throw new DeadLetterQueryError(`from (${filter.from}) is after to (${filter.to})`);
  const limit = seqParam('limit', q.get('limit')) ?? DEFAULT_LIST_LIMIT;
  if (limit > MAX_LIST_LIMIT)
    throw new DeadLetterQueryError(
      `limit must be at most ${MAX_LIST_LIMIT}, not ${limit} (the groups count every match; page through the rows with from/to)`,
    );
  const all = q.get('all');
  return { filter, limit, all: all === '1' || all === 'true' };
}

/** The query string for `q` (what the CLI sends). */
export function queryString(q: Partial<DeadLetterQuery>): string {
  const p = new URLSearchParams();
  const f = q.filter ?? {};
  for (const k of ['topic', 'reason', 'destination', 'from', 'to'] as const)
    if (f[k] !== undefined) p.set(k, String(f[k]));
  if (q.limit !== undefined) p.set('limit', String(q.limit));
  if (q.all) p.set('all', '1');
  const s = p.toString();
  return s ? `?${s}` : '';
}

export function filterIsEmpty(f: DeadLetterFilter): boolean {
  return Object.values(f).every((v) => v === undefined);
}

const iso = (ms: number) => new Date(ms).toISOString();

/** GET /v1/dead-letters: groups (every match) and the first `limit` rows. */
export function listAnswer(admin: DeadLetterAdmin, q: DeadLetterQuery, now = Date.now()) {
  const groups = admin.summary(q.filter);
  return {
    total: groups.reduce((n, g) => n + g.count, 0),
    groups: groups.map((g) => ({
      destination: g.destination,
      topic: g.topic,
      reason: g.reason,
      count: g.count,
      bytes: g.bytes,
      first_seq: g.firstSeq,
      last_seq: g.lastSeq,
      oldest_dead_at: iso(g.oldestDeadAt),
      newest_dead_at: iso(g.newestDeadAt),
      oldest_age_seconds: Math.max(0, Math.round((now - g.oldestDeadAt) / 1000)),
      newest_age_seconds: Math.max(0, Math.round((now - g.newestDeadAt) / 1000)),
    })),
    events: admin.list(q.filter, q.limit).map((e) => ({ ...rowJson(e), bytes: e.size })),
  };
}

/** What list and show both say of one dead letter. */
function rowJson(e: DeadLetterRow) {
  return {
    seq: e.seq,
    destination: e.destination,
    kedge_id: e.kedgeId,
    topic: e.topic,
    reason: e.reason,
    dead_at: iso(e.deadAt),
    ingest_ts: iso(e.ts),
    lane: e.lane,
  };
}
export type ListAnswer = ReturnType<typeof listAnswer>;

function bytesJson(b: Buffer | null) {
  if (b === null) return { text: null, base64: null, bytes: null, truncated: false };
  const shown = b.subarray(0, VALUE_PREVIEW_BYTES);
  const text = new TextDecoder('utf-8', { fatal: true });
  let t: string | null;
  try {
    t = text.decode(shown);
  } catch {
    t = null; // not UTF-8: base64 only
  }
  return {
    text: t,
    base64: shown.toString('base64'),
    bytes: b.length,
    truncated: shown.length < b.length,
  };
}

export function entryJson(e: DeadLetterEntry) {
  return {
    ...rowJson(e),
    headers: e.headers ?? {},
    key: bytesJson(e.key),
    value: bytesJson(e.value),
  };
}

/** GET /v1/dead-letters/{seq}: every dead letter with that seq (several destinations: one each). */
export function showAnswer(admin: DeadLetterAdmin, seq: number) {
  return { dead_letters: admin.show(seq).map(entryJson) };
}

/** The filter as the audit line shows it (only what was given). */
function auditFilter(q: DeadLetterQuery): Record<string, unknown> {
  return {
    ...Object.fromEntries(Object.entries(q.filter).filter(([, v]) => v !== undefined)),
    all: q.all,
  };
}

/**
 * POST replay: the count, counted in kedge_dead_letters_replayed_total when `metrics`, and
 * one audit line when `logger`.
 */
export async function replayAnswer(
  admin: DeadLetterAdmin,
  q: DeadLetterQuery,
  metrics?: Metrics,
  logger?: Logger,
) {
  const r = await admin.replay(q.filter);
  for (const [topic, n] of r.byTopic) metrics?.deadLettersReplayed.inc({ topic }, n);
  logger?.info(
    { filter: auditFilter(q), replayed: r.replayed, firstSeq: r.firstSeq, lastSeq: r.lastSeq },
    'dead letters replayed',
  );
  return { replayed: r.replayed, first_seq: r.firstSeq, last_seq: r.lastSeq };
}

export async function purgeAnswer(
  admin: DeadLetterAdmin,
  q: DeadLetterQuery,
  metrics?: Metrics,
  logger?: Logger,
) {
  const r = await admin.purge(q.filter);
  for (const [topic, n] of r.byTopic) metrics?.deadLettersPurged.inc({ topic }, n);
  logger?.info({ filter: auditFilter(q), purged: r.purged }, 'dead letters purged');
  return { purged: r.purged };
}

export const NEEDS_FILTER =
  'replay and purge need a filter (topic, reason, from, to, destination) or all=1, so a bare call never touches every dead letter';

export interface DeadLetterSources {
  deadLetters(): DeadLetterAdmin;
  metrics: Metrics;
  /** For the audit line of each replay and purge. */
  logger?: Logger;
}

/** Handles /v1/dead-letters[/…]; false for any other path. */
export async function deadLetterRoutes(
  src: DeadLetterSources,
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  authorize: () => boolean,
): Promise<boolean> {
  if (path !== '/v1/dead-letters' && !path.startsWith('/v1/dead-letters/')) return false;
  const action = path.slice('/v1/dead-letters/'.length);
  const mutating = action === 'replay' || action === 'purge';
  const method = mutating ? 'POST' : 'GET';
  if (req.method !== method && !(method === 'GET' && req.method === 'HEAD')) {
    methodNotAllowed(req, res, method);
    return true;
  }
  if (!authorize()) return true;
  await drain(req);
  let q: DeadLetterQuery;
  try {
    q = parseQuery(new URLSearchParams((req.url ?? '').split('?')[1] ?? ''));
  } catch (e) {
    if (!(e instanceof DeadLetterQueryError)) throw e;
    sendJson(res, 400, { error: 'bad_request', detail: e.message });
    return true;
  }
  try {
    const admin = src.deadLetters();
    if (path === '/v1/dead-letters') sendJson(res, 200, listAnswer(admin, q));
    else if (mutating) {
      if (filterIsEmpty(q.filter) && !q.all) {
        sendJson(res, 400, { error: 'bad_request', detail: NEEDS_FILTER });
        return true;
      }
      sendJson(
        res,
        200,
        action === 'replay'
          ? await replayAnswer(admin, q, src.metrics, src.logger)
          : await purgeAnswer(admin, q, src.metrics, src.logger),
      );
    } else if (/^\d{1,15}$/.test(action)) {
      const a = showAnswer(admin, Number(action));
      if (a.dead_letters.length === 0)
        sendJson(res, 404, { error: 'not_found', detail: `no dead letter with seq ${action}` });
      else sendJson(res, 200, a);
    } else
      sendJson(res, 404, {
        error: 'not_found',
        detail: `${path}: expected /v1/dead-letters, /v1/dead-letters/{seq}, /replay or /purge`,
      });
  } catch (e) {
    if (e instanceof DeadLetterReplayUnsupported) {
      sendJson(res, 409, { error: 'not_supported', detail: e.message });
      return true;
    }
    if (e instanceof DeadLetterUnknownDestination) {
      sendJson(res, 400, { error: 'bad_request', detail: e.message });
      return true;
    }
    sendJson(res, 500, { error: 'log_error', detail: (e as Error).message });
  }
  return true;
}
