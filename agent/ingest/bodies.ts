/**
 * Turns one request body into events, all-or-nothing: either every event of
 * the body is valid, or an IngestError says which one is not.
 */
import type { EventInput } from '../log/types.ts';
import { IngestError } from './errors.ts';

export type BodyKind = 'ndjson' | 'json' | 'raw';

export function bodyKind(contentType: string | undefined): BodyKind {
  const mime = (contentType ?? '').split(';')[0].trim().toLowerCase();
  if (
    mime === 'application/x-ndjson' ||
    mime === 'application/ndjson' ||
    mime === 'application/jsonl' ||
    mime === 'application/x-jsonlines'
  )
    return 'ndjson';
  if (mime === 'application/json' || (mime.startsWith('application/') && mime.endsWith('+json')))
    return 'json';
  return 'raw';
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function decodeUtf8(buf: Buffer, what: string): string {
  try {
    return utf8.decode(buf);
  } catch {
    throw new IngestError(400, 'bad_encoding', `${what} is not valid UTF-8`);
  }
}

function parseJson(
  text: string,
  what: string,
  reviver?: (k: string, v: unknown) => unknown,
): unknown {
  try {
    return JSON.parse(text, reviver);
  } catch (e) {
    // The reviver walk recurses: a document thousands of levels deep overflows the stack.
    if (e instanceof RangeError)
      throw new IngestError(
        400,
        'bad_json',
        `${what} is nested too deeply to be re-serialised; send it as NDJSON or as one event (kept byte for byte)`,
      );
    throw new IngestError(400, 'bad_json', `${what} is not valid JSON: ${(e as Error).message}`);
  }
}

/**
 * Parses JSON whose values kedge will re-serialise (envelope records): a number
 * that JSON.stringify cannot write back as sent (1e400 would become null,
 * 12345678901234567890 would lose its last digits) is refused, never changed.
 */
export function parseJsonExact(text: string, what: string): unknown {
  let lossy: string | null = null;
  const reviver = function (_key: string, v: unknown, ctx?: { source?: string }): unknown {
    if (
      lossy === null &&
      typeof v === 'number' &&
      ctx?.source !== undefined &&
      !numberKeptExactly(v, ctx.source)
    )
      lossy = ctx.source;
    return v;
  };
  const parsed = parseJson(text, what, reviver as (k: string, v: unknown) => unknown);
  if (lossy !== null) {
    throw new IngestError(
      400,
      'bad_number',
      `${what} has the number ${(lossy as string).slice(0, 40)}, which cannot be stored exactly (larger than a 64-bit float holds): send it as a string, or send the event as NDJSON (kept byte for byte)`,
    );
  }
  return parsed;
}

function numberKeptExactly(v: number, source: string): boolean {
  if (!Number.isFinite(v)) return false;
  if (/^-?\d+$/.test(source) && !Number.isSafeInteger(v)) return BigInt(source) === BigInt(v);
  return true;
}

/**
 * JSON.stringify recurses: a value nested thousands of levels deep overflows the
 * stack. That is the client's document, not an agent failure: answer 400.
 */
export function serialiseJson(v: unknown, where: string): Buffer {
  try {
    return Buffer.from(JSON.stringify(v), 'utf8');
  } catch (e) {
    if (e instanceof RangeError)
      throw new IngestError(
        400,
        'bad_record',
        `${where} is nested too deeply to be re-serialised; send it as NDJSON (kept byte for byte)`,
      );
    throw e;
  }
}

/** Header values must be strings: Kafka headers are bytes and we keep them text. */
function parseHeaders(h: unknown, where: string): Record<string, string> | undefined {
  if (h === undefined || h === null) return undefined;
  if (typeof h !== 'object' || Array.isArray(h))
    throw new IngestError(400, 'bad_record', `${where}: "headers" must be an object of strings`);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h as Record<string, unknown>)) {
    if (typeof v !== 'string')
      throw new IngestError(400, 'bad_record', `${where}: header "${k}" must be a string`);
    if (k.startsWith('kedge-'))
      throw new IngestError(
        400,
        'bad_record',
        `${where}: header "${k}" is reserved (kedge-* headers are set by kedge)`,
      );
    out[k] = v;
  }
  return out;
}

function keyBytes(key: unknown, where: string): Buffer | null {
  if (key === undefined || key === null) return null;
  if (typeof key === 'string') return Buffer.from(key, 'utf8');
  if (typeof key === 'number' || typeof key === 'boolean')
    return Buffer.from(JSON.stringify(key), 'utf8');
  throw new IngestError(400, 'bad_record', `${where}: "key" must be a string, number or boolean`);
}

/** `{"records":[...]}` with nothing else is the envelope; any other JSON value is one event. */
function isEnvelope(v: unknown): v is { records: unknown[] } {
  return (
    typeof v === 'object' &&
    v !== null &&
    !Array.isArray(v) &&
    Array.isArray((v as { records?: unknown }).records) &&
    Object.keys(v).length === 1
  );
}

export function eventsFromBody(
  kind: BodyKind,
  body: Buffer,
  topic: string,
  queryKey: Buffer | null,
): EventInput[] {
  if (body.length === 0)
    throw new IngestError(400, 'empty_body', 'the request body is empty: send at least one event');
  if (kind === 'raw') return [{ topic, key: queryKey, value: body, source: 'http' }];

  if (kind === 'ndjson') {
    const events: EventInput[] = [];
    let start = 0;
    let line = 0;
    while (start < body.length) {
      let end = body.indexOf(0x0a, start);
      if (end === -1) end = body.length;
      line++;
      let stop = end;
      if (stop > start && body[stop - 1] === 0x0d) stop--;
      const slice = body.subarray(start, stop);
      start = end + 1;
      if (slice.length === 0 || isBlank(slice)) continue;
      parseJson(decodeUtf8(slice, `line ${line}`), `line ${line}`);
      // The event is the line's bytes exactly as received (not re-serialised).
      events.push({ topic, key: queryKey, value: Buffer.from(slice), source: 'http' });
    }
    if (events.length === 0)
      throw new IngestError(400, 'empty_body', 'the NDJSON body has no events (only blank lines)');
    return events;
  }

  const text = decodeUtf8(body, 'the body');
  const first = parseJson(text, 'the body');
  if (!isEnvelope(first)) return [{ topic, key: queryKey, value: body, source: 'http' }];
  // Only an envelope is re-serialised, so only an envelope needs the (slower) exact-number parse.
  const parsed = parseJsonExact(text, 'the body') as { records: unknown[] };
  if (parsed.records.length === 0)
    throw new IngestError(400, 'empty_body', '"records" is empty: send at least one record');
  return parsed.records.map((r, i) => {
    const where = `records[${i}]`;
    if (typeof r !== 'object' || r === null || Array.isArray(r))
      throw new IngestError(400, 'bad_record', `${where} must be an object with "value"`);
    const rec = r as Record<string, unknown>;
    if (!('value' in rec) || rec.value === undefined)
      throw new IngestError(400, 'bad_record', `${where} has no "value"`);
    for (const k of Object.keys(rec)) {
      if (k !== 'key' && k !== 'value' && k !== 'headers')
        throw new IngestError(
          400,
          'bad_record',
          `${where}: unknown field "${k}" (expected key, value, headers)`,
        );
    }
    const headers = parseHeaders(rec.headers, where);
    const ev: EventInput = {
      topic,
      key: keyBytes(rec.key, where) ?? queryKey,
      value: serialiseJson(rec.value, `${where}.value`),
      source: 'http',
    };
    if (headers) ev.headers = headers;
    return ev;
  });
}

function isBlank(b: Buffer): boolean {
  for (const c of b) if (c !== 0x20 && c !== 0x09 && c !== 0x0d) return false;
  return true;
}
