/**
 * Every error kedge raises on purpose, with its code: one catalogue, the way fastify's
 * lib/errors.js and undici's lib/core/errors.js keep theirs. Callers branch on `code`
 * (stable, documented) or on the class, never on the message (worded for people).
 * A base module: it imports nothing from agent/, so any layer may use it.
 */

/** The log's codes at open; KEDGE_LOG_OPEN is the catch-all. */
const LOG_OPEN_CODES = [
  'KEDGE_LOG_OPEN',
  'KEDGE_DATA_DIR_LOCKED',
  'KEDGE_LOG_DAMAGED',
  'KEDGE_LOG_TOO_NEW',
  'KEDGE_STORAGE_UNAVAILABLE',
] as const;

/** The log's codes on append; KEDGE_LOG_WRITE is the catch-all. */
const LOG_WRITE_CODES = [
  'KEDGE_LOG_WRITE',
  'KEDGE_DISK_FULL',
  'KEDGE_QUOTA_FULL',
  'KEDGE_LOG_CLOSED',
  'KEDGE_INVALID_EVENT',
] as const;

/** Every code a KedgeError can carry. */
export const KEDGE_ERROR_CODES = [
  'KEDGE_CONFIG',
  ...LOG_OPEN_CODES,
  ...LOG_WRITE_CODES,
  // ingest
  'KEDGE_INGEST_REFUSED',
  'KEDGE_MQTT_OVERSIZE',
  'KEDGE_MQTT_REFUSED',
  'KEDGE_MQTT_MALFORMED_TOPIC',
  // forwarding
  'KEDGE_CORRUPT_COMPRESSED',
  'KEDGE_CODEC_UNAVAILABLE',
  'KEDGE_KAFKA_INCOMPLETE_SEND',
  // `kedge status`
  'KEDGE_PIN_MISMATCH',
  // the operator's tools (kedge tap, kedge dead-letters)
  'KEDGE_USAGE',
  'KEDGE_BAD_TAP_REQUEST',
  'KEDGE_TAP_STOPPING',
  'KEDGE_BAD_DEAD_LETTER_QUERY',
  'KEDGE_DEAD_LETTER_REPLAY_UNSUPPORTED',
  'KEDGE_DEAD_LETTER_UNKNOWN_DESTINATION',
] as const;

export type KedgeErrorCode = (typeof KEDGE_ERROR_CODES)[number];
export type LogOpenCode = (typeof LOG_OPEN_CODES)[number];
export type LogWriteCode = (typeof LOG_WRITE_CODES)[number];

/** Base of every kedge error: a message for people, a `code` for programs. */
export class KedgeError extends Error {
  readonly code: KedgeErrorCode;
  constructor(code: KedgeErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'KedgeError';
    this.code = code;
  }
}

/** A bad configuration; `problems` lists every one, one actionable line each. */
export class ConfigError extends KedgeError {
  readonly problems: string[];
  constructor(problems: string[]) {
    const n = problems.length;
    super(
      'KEDGE_CONFIG',
      `invalid configuration (${n} problem${n === 1 ? '' : 's'}):\n${problems.map((p) => `  ${p}`).join('\n')}`,
    );
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/**
 * Raised when the log refuses an append (disk error, closed log). Ingest maps it to 5xx/507 and does not acknowledge.
 * Codes: KEDGE_DISK_FULL (507), KEDGE_LOG_WRITE (other write failure), KEDGE_LOG_CLOSED,
 * KEDGE_QUOTA_FULL (whenFull 'reject-new' and the quota is reached: 507, nothing stored),
 * KEDGE_INVALID_EVENT (the caller passed a malformed event: a bug in the caller; nothing stored).
 */
export class LogWriteError extends KedgeError {
  declare readonly code: LogWriteCode;
  constructor(message: string, code: LogWriteCode = 'KEDGE_LOG_WRITE', options?: ErrorOptions) {
    super(code, message, options);
    this.name = 'LogWriteError';
  }
}

/**
 * Raised at open when the data dir is held by a live kedge, or the database is damaged.
 * Codes: KEDGE_DATA_DIR_LOCKED, KEDGE_LOG_DAMAGED, KEDGE_LOG_TOO_NEW (written by a newer kedge),
 * KEDGE_STORAGE_UNAVAILABLE (driver missing), KEDGE_LOG_OPEN (anything else).
 */
export class LogOpenError extends KedgeError {
  declare readonly code: LogOpenCode;
  constructor(message: string, code: LogOpenCode = 'KEDGE_LOG_OPEN', options?: ErrorOptions) {
    super(code, message, options);
    this.name = 'LogOpenError';
  }
}

/** An ingest request that is refused; `status` is the HTTP status, nothing was stored. */
export class IngestError extends KedgeError {
  readonly status: number;
  /** The short machine word of the JSON answer (`{"error": …}`), e.g. bad_json. */
  readonly error: string;
  readonly detail: string;
  readonly headers: Record<string, string>;
  constructor(status: number, error: string, detail: string, headers: Record<string, string> = {}) {
    super('KEDGE_INGEST_REFUSED', `${error}: ${detail}`);
    this.name = 'IngestError';
    this.status = status;
    this.error = error;
    this.detail = detail;
    this.headers = headers;
  }
}

/** Compressed data a codec cannot decode (a batch read back, or a peer's). */
export class CorruptCompressedDataError extends KedgeError {
  constructor(codec: string, detail: string) {
    super('KEDGE_CORRUPT_COMPRESSED', `${codec}: corrupt compressed data (${detail})`);
    this.name = 'CorruptCompressedDataError';
  }
}

/** KEDGE_COMPRESSION names a codec this build cannot provide. */
export class CodecUnavailableError extends KedgeError {
  constructor(codec: string) {
    super(
      'KEDGE_CODEC_UNAVAILABLE',
      `KEDGE_COMPRESSION=${codec} is not a codec kedge knows (use none, gzip, snappy, lz4 or zstd)`,
    );
    this.name = 'CodecUnavailableError';
  }
}

/**
 * kafkajs resolved a send without an answer for every partition it wrote to (its
 * retry skips a partition whose new leader already answered for others): the batch
 * is not acknowledged and is sent again.
 */
export class IncompleteSendError extends KedgeError {
  constructor(topic: string, partition: number) {
    super(
      'KEDGE_KAFKA_INCOMPLETE_SEND',
      `Kafka's answer to a send has no result for ${topic} partition ${partition}; sending the batch again`,
    );
    this.name = 'IncompleteSendError';
  }
}

/** `kedge status` over HTTPS: the listener presented another certificate than the pinned one. */
export class PinMismatchError extends KedgeError {
  constructor(file: string) {
    super(
      'KEDGE_PIN_MISMATCH',
      `the listener's TLS certificate is not the one in KEDGE_HTTP_TLS_CERT (${file})`,
    );
    this.name = 'PinMismatchError';
  }
}
