/**
 * Sizes, durations and rates as operators write them in the env file
 * (`64KiB`, `1h30m`, `1MB/s`), and back.
 *
 * Parsers never throw: a user's typo is a value to report, not an exception.
 * On failure `error` is a predicate phrase meant to follow the quoted input,
 * e.g. `KEDGE_FORWARD_RATE "fast"` + ` is not a rate (expected e.g. 64KiB/s)`.
 */

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

function ok<T>(value: T): Parsed<T> {
  return { ok: true, value };
}

function fail<T>(error: string): Parsed<T> {
  return { ok: false, error };
}

const KIB = 1024;
const MIB = 1024 * KIB;
const GIB = 1024 * MIB;
const TIB = 1024 * GIB;

// A Map, not an object literal: the unit comes from user input and `constructor` must not resolve.
const SIZE_UNITS = new Map<string, number>([
  ['', 1],
  ['b', 1],
  ['kb', 1e3],
  ['kib', KIB],
  ['mb', 1e6],
  ['mib', MIB],
  ['gb', 1e9],
  ['gib', GIB],
  ['tb', 1e12],
  ['tib', TIB],
]);

const SIZE_EXPECTED = 'expected e.g. 1MiB, 500KB or a plain number of bytes';
const SIZE_UNIT_LIST = 'B, KB, KiB, MB, MiB, GB, GiB, TB, TiB';

/**
 * `1048576`, `1MiB`, `1.5 GB`, `64kib` → bytes. KB = 1000, KiB = 1024; units are
 * case-insensitive; a plain number is bytes. Fractions are allowed with a unit
 * (`1.5MiB`) and rounded to the nearest byte.
 */
export function parseSize(text: string): Parsed<number> {
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$/.exec(text);
  if (!m) return fail(`is not a size (${SIZE_EXPECTED})`);
  const [, num, unitText] = m;
  const mult = SIZE_UNITS.get(unitText.toLowerCase());
  if (mult === undefined) {
    return fail(`has an unknown size unit "${unitText}" (expected one of ${SIZE_UNIT_LIST})`);
  }
  if (mult === 1 && num.includes('.')) {
    return fail(`is not a whole number of bytes (${SIZE_EXPECTED})`);
  }
  const bytes = Math.round(Number(num) * mult);
  if (!Number.isSafeInteger(bytes)) return fail('is too large');
  return ok(bytes);
}

const DURATION_UNITS = new Map<string, number>([
  ['ms', 1],
  ['s', 1000],
  ['m', 60_000],
  ['h', 3_600_000],
  ['d', 86_400_000],
  ['w', 604_800_000],
]);

const DURATION_EXPECTED = 'expected e.g. 30s, 5m, 1h30m or 7d; units ms, s, m, h, d, w';

/**
 * `30s`, `1h30m`, `1.5h`, `7d`, `250ms` → milliseconds. A unit is required (a bare
 * `60` is ambiguous). Units are lower case only, so `1M` cannot be read as a month.
 */
export function parseDuration(text: string): Parsed<number> {
  const s = text.trim();
  if (/^\d+(?:\.\d+)?$/.test(s)) return fail(`has no unit (${DURATION_EXPECTED})`);
  const part = /\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)/y;
  let total = 0;
  let parts = 0;
  part.lastIndex = 0;
  while (part.lastIndex < s.length) {
    const m = part.exec(s);
    if (!m) return fail(`is not a duration (${DURATION_EXPECTED})`);
    total += Number(m[1]) * (DURATION_UNITS.get(m[2]) ?? Number.NaN);
    parts++;
  }
  if (parts === 0) return fail(`is not a duration (${DURATION_EXPECTED})`);
  const ms = Math.round(total);
  if (!Number.isSafeInteger(ms)) return fail('is too long');
  return ok(ms);
}

/**
 * `64KiB/s`, `1MB/s`, `500000/s` → bytes per second (> 0). The keyword
 * `unlimited` is the caller's business: this parses numbers only.
 */
export function parseRate(text: string): Parsed<number> {
  const m = /^(.*?)\s*\/\s*(?:s|sec|second)\s*$/i.exec(text);
  const expected = 'is not a rate (expected e.g. 64KiB/s or 1MB/s)';
  if (!m || m[1].trim() === '') return fail(expected);
  const size = parseSize(m[1]);
  if (!size.ok)
    return fail(size.error.startsWith('has an unknown size unit') ? size.error : expected);
  if (size.value === 0)
    return fail('is zero (expected a rate above 0, e.g. 64KiB/s, or unlimited)');
  return ok(size.value);
}

const BINARY_UNITS: Array<[string, number]> = [
  ['TiB', TIB],
  ['GiB', GIB],
  ['MiB', MIB],
  ['KiB', KIB],
];
const DECIMAL_UNITS: Array<[string, number]> = [
  ['TB', 1e12],
  ['GB', 1e9],
  ['MB', 1e6],
  ['KB', 1e3],
];

/**
 * Bytes → text. `exact: true` gives a string `parseSize` reads back to the same
 * number (`64KiB`, `1MB`, `1500B`); otherwise a short approximation for humans
 * (`1.5MiB`, `812B`).
 */
export function formatBytes(bytes: number, opts: { exact?: boolean } = {}): string {
  const n = Math.round(bytes);
  if (opts.exact) {
    if (n !== 0) {
      for (const [unit, size] of BINARY_UNITS) if (n % size === 0) return `${n / size}${unit}`;
      for (const [unit, size] of DECIMAL_UNITS) if (n % size === 0) return `${n / size}${unit}`;
    }
    return `${n}B`;
  }
  for (const [unit, size] of BINARY_UNITS) {
    if (Math.abs(n) >= size) return `${Number((n / size).toFixed(1))}${unit}`;
  }
  return `${n}B`;
}

const DURATION_PARTS: Array<[string, number]> = [
  ['w', 604_800_000],
  ['d', 86_400_000],
  ['h', 3_600_000],
  ['m', 60_000],
  ['s', 1000],
  ['ms', 1],
];

/** Milliseconds → `1h30m`, `7d`, `1s500ms`, `0s`; exact, so `parseDuration` reads it back. */
export function formatDuration(ms: number): string {
  let rest = Math.round(Math.abs(ms));
  if (rest === 0) return '0s';
  let out = ms < 0 ? '-' : '';
  for (const [unit, size] of DURATION_PARTS) {
    const q = Math.floor(rest / size);
    if (q > 0) {
      out += `${q}${unit}`;
      rest -= q * size;
    }
  }
  return out;
}

/** Bytes per second → `64KiB/s`, exact (see `formatBytes`). */
export function formatRate(bytesPerSecond: number): string {
  return `${formatBytes(bytesPerSecond, { exact: true })}/s`;
}
