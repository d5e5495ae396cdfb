/**
 * The Kafka REST Proxy v2 produce call (`POST /topics/{topic}`), so existing
 * REST-proxy clients can point at kedge unchanged. Only the embedded formats
 * that need no schema registry are supported: json and binary.
 */
import type { AppendResult, EventInput } from '../log/types.ts';
import { IngestError } from './errors.ts';
import { parseJsonExact, serialiseJson } from './bodies.ts';

export type RestFormat = 'json' | 'binary';

export function restFormat(contentType: string | undefined): RestFormat {
  const mime = (contentType ?? '').split(';')[0].trim().toLowerCase();
  if (mime === 'application/vnd.kafka.json.v2+json') return 'json';
  if (mime === 'application/vnd.kafka.binary.v2+json') return 'binary';
  throw new IngestError(
    415,
    'unsupported_media_type',
    `Content-Type "${mime || '(none)'}" is not supported here: use application/vnd.kafka.json.v2+json or application/vnd.kafka.binary.v2+json (avro/protobuf need a schema registry kedge does not have)`,
  );
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function decodeBinary(v: unknown, where: string): Buffer | null {
  if (v === null || v === undefined) return null;
  if (typeof v !== 'string' || v.length % 4 !== 0 || !BASE64.test(v))
    throw new IngestError(400, 'bad_record', `${where} must be a base64 string`);
  return Buffer.from(v, 'base64');
}

export function eventsFromRestProxy(format: RestFormat, body: Buffer, topic: string): EventInput[] {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(body);
  } catch {
    throw new IngestError(400, 'bad_encoding', 'the body is not valid UTF-8');
  }
  // json embedded format re-serialises keys and values: numbers must survive that exactly.
  const parsed = parseJsonExact(text, 'the body');
  const records = (parsed as { records?: unknown })?.records;
  if (typeof parsed !== 'object' || parsed === null || !Array.isArray(records))
    throw new IngestError(400, 'bad_record', 'expected {"records":[{"key":...,"value":...}]}');
  if (records.length === 0) throw new IngestError(400, 'empty_body', '"records" is empty');
  return records.map((r, i) => {
    const where = `records[${i}]`;
    if (typeof r !== 'object' || r === null)
      throw new IngestError(400, 'bad_record', `${where} must be an object`);
    const rec = r as Record<string, unknown>;
    if (rec.partition !== undefined && rec.partition !== null) {
      throw new IngestError(
        400,
        'bad_record',
        `${where}: "partition" is not supported: kedge partitions by key so order per key holds`,
      );
    }
    if (!('value' in rec)) throw new IngestError(400, 'bad_record', `${where} has no "value"`);
    if (format === 'binary') {
      const value = decodeBinary(rec.value, `${where}.value`);
      if (value === null)
        throw new IngestError(400, 'bad_record', `${where}.value must not be null`);
      return { topic, key: decodeBinary(rec.key, `${where}.key`), value, source: 'http' as const };
    }
    // json embedded format: key and value are JSON documents, stored serialised.
    const key =
      rec.key === undefined || rec.key === null ? null : serialiseJson(rec.key, `${where}.key`);
    return {
      topic,
      key,
      value: serialiseJson(rec.value ?? null, `${where}.value`),
      source: 'http' as const,
    };
  });
}

/** REST Proxy answer shape; `offset` is kedge's log seq (the Kafka offset is not known until forwarded). */
export function restProxyAnswer(res: AppendResult) {
  const offsets = [];
  for (let s = res.firstSeq; s <= res.lastSeq; s++)
    offsets.push({ partition: null, offset: s, error_code: null, error: null });
  return { key_schema_id: null, value_schema_id: null, offsets };
}
