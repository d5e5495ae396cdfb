/**
 * GET /v1/tap?pattern=P&limit=N: a live tail of the events as they are committed, for
 * `kedge tap` and the status page. NDJSON (one object a line), or SSE with
 * `Accept: text/event-stream`. Each viewer has its own bounded buffer: when its socket pushes
 * back, events wait there, and when that is full they are dropped for this viewer only,
 * counted (kedge_tap_dropped_events_total) and reported in the stream as `{"dropped":N}` at
 * the place of the gap. Ingest never waits on a viewer. It needs the token when one is set:
 * it shows payloads.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { drain, methodNotAllowed, sendJson } from '../ingest/http-reply.ts';
import type { Metrics } from '../observe/metrics.ts';
import type { TapBus, TappedEvent, TapViewer } from '../observe/tap-bus.ts';
import { TAP_PREVIEW_BYTES } from '../observe/tap-bus.ts';
import { checkPattern, RouteSyntaxError, topicMatcher } from '../route-syntax.ts';
import { KedgeError } from '../errors.ts';

/** Viewers at once: each costs a buffer and some work per matching event. */
export const TAP_MAX_VIEWERS = 8;
/** Events one viewer's buffer holds while its socket pushes back. */
export const TAP_BUFFER_EVENTS = 1_000;
/** At most this much text is handed to the socket in one write. */
const CHUNK_CHARS = 64 * 1024;

export interface TapSources {
  bus: TapBus;
  metrics: Metrics;
}

/** A bad pattern or limit in the request (400). */
export class TapRequestError extends KedgeError {
  readonly error: string;
  constructor(error: string, message: string) {
    super('KEDGE_BAD_TAP_REQUEST', message);
    this.name = 'TapRequestError';
    this.error = error;
  }
}

/** One line of the stream for an event (the object both NDJSON and SSE carry). */
export interface TapLine {
  seq: number;
  topic: string;
  key: string | null;
  key_encoding?: 'base64';
  size: number;
  ts: string;
  lane: string;
  source: string;
  preview: string;
  preview_encoding?: 'base64';
  /** The value is longer than the preview. */
  truncated?: true;
}

/** Pattern and limit from the query; throws TapRequestError. Empty or absent pattern: every topic. */
export function parseTapQuery(q: URLSearchParams): { pattern: string; limit: number | null } {
  const pattern = (q.get('pattern') ?? '').trim() || '#';
  try {
    checkPattern(pattern, 1);
  } catch (e) {
    if (e instanceof RouteSyntaxError)
      throw new TapRequestError('bad_pattern', `pattern ${JSON.stringify(pattern)}: ${e.message}`);
    throw e;
  }
  const l = q.get('limit');
  if (l !== null && !/^[1-9]\d{0,8}$/.test(l))
    throw new TapRequestError(
      'bad_limit',
      `limit must be a whole number of events from 1, e.g. limit=100 (got ${JSON.stringify(l)})`,
    );
  return { pattern, limit: l === null ? null : Number(l) };
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Control characters (but tab, newline, carriage return) make a preview binary. */
function hasControl(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if ((c < 0x20 && c !== 9 && c !== 10 && c !== 13) || c === 0x7f) return true;
  }
  return false;
}

/**
 * Text when the bytes are printable UTF-8 (a multi-byte character cut by the preview is
 * left out), else null.
 */
function printable(b: Buffer, cut: boolean): string | null {
  for (let drop = 0; drop <= (cut ? 3 : 0) && drop < b.length + 1; drop++) {
    let s: string;
    try {
      s = strictUtf8.decode(b.subarray(0, b.length - drop));
    } catch {
      continue;
    }
    return hasControl(s) ? null : s;
  }
  return null;
}

export function tapLine(ev: TappedEvent): TapLine {
  const line: TapLine = {
    seq: ev.seq,
    topic: ev.topic,
    key: null,
    size: ev.size,
    ts: new Date(ev.ts).toISOString(),
    lane: ev.lane,
    source: ev.source,
    preview: '',
  };
  if (ev.key) {
    const k = printable(ev.key, ev.keyBytes > ev.key.length);
    if (k === null) {
      line.key = ev.key.toString('base64');
      line.key_encoding = 'base64';
    } else line.key = k;
  }
  const valueBytes = ev.size - ev.keyBytes;
  const cut = valueBytes > ev.preview.length;
  const p = printable(ev.preview, cut);
  if (p === null) {
    line.preview = ev.preview.toString('base64');
    line.preview_encoding = 'base64';
  } else line.preview = p;
  if (cut) line.truncated = true;
  return line;
}

/** A run of events this viewer did not get, at its place in the stream. */
interface Gap {
  dropped: number;
}

/** One connected viewer: its filter, its buffer, its socket. */
class HttpTapViewer implements TapViewer {
  readonly #matches: (topic: string) => boolean;
  readonly #res: ServerResponse;
  readonly #sse: boolean;
  readonly #limit: number | null;
  readonly #metrics: Metrics;
  readonly #queue: (TappedEvent | Gap)[] = [];
  /** Events taken into the buffer (the limit counts these; drops do not count). */
  #taken = 0;
  #scheduled = false;
  /** The socket pushed back: wait for 'drain' before writing again. */
  #blocked = false;
  #closed = false;
  #detach: () => void = () => {};

  constructor(
    res: ServerResponse,
    pattern: string,
    sse: boolean,
    limit: number | null,
    m: Metrics,
  ) {
    this.#matches = topicMatcher(pattern);
    this.#res = res;
    this.#sse = sse;
    this.#limit = limit;
    this.#metrics = m;
  }

  attach(bus: TapBus): void {
    this.#detach = bus.attach(this);
    this.#res.once('close', () => {
      this.#closed = true;
      this.#queue.length = 0;
      this.#detach();
    });
    this.#res.on('drain', () => {
      this.#blocked = false;
      this.#schedule();
    });
  }

  wants(topic: string): boolean {
    if (this.#closed || (this.#limit !== null && this.#taken >= this.#limit)) return false;
    if (!this.#matches(topic)) return false;
    const q = this.#queue;
    if (q.length < TAP_BUFFER_EVENTS) return true;
    // Full: dropped for this viewer. The gap marker may stand one over the cap: it is a
    // counter, not an event, and it sits where the gap is.
    const last = q[q.length - 1];
    if ('dropped' in last) last.dropped++;
    else q.push({ dropped: 1 });
    this.#metrics.tapDropped.inc();
    return false;
  }

  /** After `wants` said yes. */
  offer(ev: TappedEvent): void {
    this.#queue.push(ev);
    this.#taken++;
    // Limit reached: nothing more is wanted; the buffer is written out, then the stream ends.
    if (this.#limit !== null && this.#taken >= this.#limit) this.#detach();
    this.#schedule();
  }

  /** Agent stop: end the stream (a viewer that does not read is cut off, not waited for). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue.length = 0;
    if (this.#blocked) this.#res.destroy();
    else this.#res.end();
  }

  #schedule(): void {
    if (this.#scheduled || this.#blocked || this.#closed) return;
    this.#scheduled = true;
    // Written on the next turn, many events in one write, outside the commit's path.
    setImmediate(() => this.#flush());
  }

  #frame(obj: unknown): string {
    const json = JSON.stringify(obj);
    return this.#sse ? `data: ${json}\n\n` : `${json}\n`;
  }

  #flush(): void {
    this.#scheduled = false;
    if (this.#blocked || this.#closed) return;
    const q = this.#queue;
    let out = '';
    let i = 0;
    while (i < q.length && out.length < CHUNK_CHARS) {
      const item = q[i++];
      out += this.#frame('dropped' in item ? { dropped: item.dropped } : tapLine(item));
    }
    q.splice(0, i);
    const done = this.#limit !== null && this.#taken >= this.#limit && q.length === 0;
    if (out !== '' && !this.#res.write(out)) this.#blocked = true;
    if (done) {
      this.#closed = true;
      this.#res.end();
      return;
    }
    if (q.length > 0) this.#schedule();
  }
}

/** Serves one GET /v1/tap (the admin routes delegate here). */
export async function serveTap(
  req: IncomingMessage,
  res: ServerResponse,
  src: TapSources,
  authorize: () => boolean,
): Promise<void> {
  if (req.method !== 'GET') return methodNotAllowed(req, res, 'GET');
  if (!authorize()) return;
  await drain(req);
  const rawUrl = req.url ?? '';
  const qi = rawUrl.indexOf('?');
  let parsed: { pattern: string; limit: number | null };
  try {
    parsed = parseTapQuery(new URLSearchParams(qi === -1 ? '' : rawUrl.slice(qi + 1)));
  } catch (e) {
    if (e instanceof TapRequestError)
      return sendJson(res, 400, { error: e.error, detail: e.message });
    throw e;
  }
  // Agent stop closed the bus: a viewer attached now would hold the listener's stop up.
  if (src.bus.closed)
    return sendJson(res, 503, {
      error: 'stopping',
      detail: 'the agent is stopping; tap again once it has restarted',
    });
  if (src.bus.viewers >= TAP_MAX_VIEWERS)
    return sendJson(res, 503, {
      error: 'too_many_viewers',
      detail: `${TAP_MAX_VIEWERS} tap viewers are attached already (the most kedge serves at once); close one and retry`,
    });
  const sse = /\btext\/event-stream\b/i.test(req.headers.accept ?? '');
  res.writeHead(200, {
    'content-type': sse ? 'text/event-stream' : 'application/x-ndjson',
    'cache-control': 'no-cache',
    'x-accel-buffering': 'no',
    'x-kedge-tap-buffer': String(TAP_BUFFER_EVENTS),
    'x-kedge-tap-preview-bytes': String(TAP_PREVIEW_BYTES),
  });
  // Headers now: the viewer knows it is attached before the first event.
  res.flushHeaders();
  new HttpTapViewer(res, parsed.pattern, sse, parsed.limit, src.metrics).attach(src.bus);
}
