/**
 * Structured JSON logs on stdout (the journal collects them). One logger is
 * created by the CLI and passed to every stage; there is no global logger.
 */
import { pino, type Logger as PinoLogger } from 'pino';
import type { LogLevel } from '../config.ts';

export type Logger = PinoLogger;

/**
 * Field names never printed, at any depth up to four (defence in depth: no code is
 * meant to log a secret; secrets in config are replaced by redactedConfig before logging).
 */
const SECRET_FIELDS = [
  'password',
  'passphrase',
  'token',
  'secret',
  'authorization',
  'key',
  'privateKey',
];
export const REDACT_PATHS: string[] = SECRET_FIELDS.flatMap((f) => [
  f,
  `*.${f}`,
  `*.*.${f}`,
  `*.*.*.${f}`,
]);
export const REDACTED_TEXT = '[redacted]';

export function createLogger(level: LogLevel, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      redact: { paths: REDACT_PATHS, censor: REDACTED_TEXT },
      base: { svc: 'kedge' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    // pino.destination writes synchronously to fd 1, so the last lines before
    // an exit are never lost (no worker-thread transport in a single executable).
    destination ?? pino.destination({ dest: 1, sync: true }),
  );
}

/**
 * Logs a repeated condition at most once per interval, with how many times it
 * happened meanwhile, so a flapping link cannot flood the journal.
 */
export class RateLimitedLog {
  private last = 0;
  private suppressed = 0;
  private readonly intervalMs: number;
  constructor(intervalMs: number) {
    this.intervalMs = intervalMs;
  }
  /** Returns the number of suppressed repeats to report, or -1 when this one must be suppressed. */
  shouldLog(now = Date.now()): number {
    if (now - this.last >= this.intervalMs) {
      const n = this.suppressed;
      this.last = now;
      this.suppressed = 0;
      return n;
    }
    this.suppressed++;
    return -1;
  }
}
