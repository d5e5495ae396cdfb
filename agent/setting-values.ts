/**
 * How each kind of setting value is read, checked and written back: host:port,
 * lists, files, topics, time windows, MQTT URLs and filters. A `Field` is one
 * variable being read; its methods record problems (one actionable line each)
 * instead of throwing, so every problem of a configuration is reported at once.
 */
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import { formatBytes, formatDuration, type Parsed, parseDuration, parseSize } from './units.ts';

export interface ListenAddress {
  host: string;
  port: number;
}

/** A local-time window, minutes since midnight; `end < start` crosses midnight. */
export interface TimeWindow {
  startMin: number;
  endMin: number;
}

/**
 * One variable as read from the environment. `text` is trimmed, and undefined when
 * the variable is unset or empty; `value` falls back to the setting's default.
 * After a problem a method returns a placeholder: the configuration is refused anyway.
 */
export class Field {
  readonly name: string;
  /** Exactly as given; secrets and "empty means off" settings read this. */
  readonly raw: string | undefined;
  readonly text: string | undefined;
  readonly value: string;
  private readonly problems: string[];

  constructor(name: string, raw: string | undefined, def: string, problems: string[]) {
    this.name = name;
    this.raw = raw;
    const text = raw?.trim();
    this.text = text === '' ? undefined : text;
    this.value = this.text ?? def;
    this.problems = problems;
  }

  problem(text: string): void {
    this.problems.push(text);
  }

  /** `NAME "value" predicate`: the shape of most problems. */
  bad(value: string, predicate: string): void {
    this.problems.push(`${this.name} ${JSON.stringify(value)} ${predicate}`);
  }

  /** `value` checked by `error` (a predicate phrase, or null when fine); null when unset. */
  checked(error: (text: string) => string | null): string | null {
    if (this.text === undefined) return null;
    const err = error(this.text);
    if (err !== null) this.bad(this.text, err);
    return this.text;
  }

  /** A path, resolved against the working directory. */
  path(): string {
    return resolvePath(this.value);
  }

  /** Taken byte for byte (no trimming); empty is null. */
  secret(): string | null {
    return this.raw === undefined || this.raw === '' ? null : this.raw;
  }

  oneOf<T extends string>(allowed: readonly T[]): T {
    const found = allowed.find((a) => a === this.value.toLowerCase());
    if (found === undefined) this.bad(this.value, `is not valid (expected ${orList(allowed)})`);
    return found ?? allowed[0];
  }

  /** undefined when unset: the setting's meaning then depends on others. */
  bool(): boolean | undefined {
    const v = this.text;
    if (v === undefined) return undefined;
    const lower = v.toLowerCase();
    if (['true', '1', 'yes', 'on'].includes(lower)) return true;
    if (['false', '0', 'no', 'off'].includes(lower)) return false;
    this.bad(v, 'is not a boolean (expected true or false; also 1/0, yes/no, on/off)');
    return undefined;
  }

  size(min: number, max: number): number {
    const parsed = parseSize(this.value);
    if (!parsed.ok) this.bad(this.value, parsed.error);
    else if (parsed.value < min)
      this.bad(
        this.value,
        min <= 1
          ? 'is zero (expected a size above 0, e.g. 1MiB)'
          : `is too small (expected at least ${formatBytes(min, { exact: true })})`,
      );
    else if (parsed.value > max)
      this.bad(this.value, `is too large (expected at most ${formatBytes(max)}, ${max} bytes)`);
    else return parsed.value;
    return 0;
  }

  duration(min: number): number {
    const parsed = parseDuration(this.value);
    if (!parsed.ok) this.bad(this.value, parsed.error);
    else if (parsed.value < min)
      this.bad(this.value, `is too short (expected at least ${formatDuration(min)})`);
    else return parsed.value;
    return 0;
  }

  /** The trimmed raw value, where an empty value means "off" (null) and unset means the default. */
  offWhenEmpty(): string | null {
    const v = this.raw === undefined ? this.value : this.raw.trim();
    return v === '' ? null : v;
  }

  /** `host:port`; empty means disabled (null), unset means the default. */
  listen(example: string): ListenAddress | null {
    const v = this.offWhenEmpty();
    if (v === null) return null;
    const hp = parseHostPort(v, example);
    if (!hp.ok) this.bad(v, hp.error);
    return hp.ok ? hp.value : null;
  }

  /** Comma-separated, entries trimmed, empty entries dropped; `noneGiven`: the problem when a value lists nothing. */
  list(noneGiven?: string): string[] {
    const entries = splitList(this.value);
    if (entries.length === 0 && noneGiven !== undefined && this.text !== undefined)
      this.bad(this.raw ?? '', noneGiven);
    return entries;
  }

  /** Each entry of `list()` through `check`; a problem per bad entry. */
  entries<T>(check: (entry: string) => Parsed<T>, noneGiven?: string): T[] {
    const out: T[] = [];
    for (const entry of this.list(noneGiven)) {
      const r = check(entry);
      if (r.ok) out.push(r.value);
      else this.problem(`${this.name} entry ${JSON.stringify(entry)} ${r.error}`);
    }
    return out;
  }

  /** A file the agent must be able to read at start; returned as an absolute path. */
  file(): string | null {
    if (this.text === undefined) return null;
    const abs = resolvePath(this.text);
    const err = unreadableFileError(abs);
    if (err !== null) this.bad(this.text, err);
    return abs;
  }
}

export function splitList(text: string): string[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

export function orList(items: readonly string[]): string {
  if (items.length <= 1) return items.join('');
  return `${items.slice(0, -1).join(', ')} or ${items[items.length - 1]}`;
}

function unreadableFileError(path: string): string | null {
  try {
    if (!statSync(path).isFile()) return 'is not a regular file (expected a readable PEM file)';
    accessSync(path, fsConstants.R_OK);
    return null;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return 'does not exist (expected a readable PEM file)';
    if (code === 'EACCES' || code === 'EPERM')
      return 'is not readable by this user (check its owner and permissions)';
    return `cannot be read (${(err as Error).message})`;
  }
}

/** Kafka's own rule for topic names (legal characters, 1-249 long, not `.` or `..`). */
export function isValidTopic(name: string): boolean {
  return /^[a-zA-Z0-9._-]{1,249}$/.test(name) && name !== '.' && name !== '..';
}

const TOPIC_EXPECTED = 'expected 1-249 characters of a-z, A-Z, 0-9, ".", "_", "-"';

/** A Kafka topic name, or the predicate saying why not. */
export function topicError(name: string, note = ''): string | null {
  return isValidTopic(name) ? null : `is not a valid Kafka topic name (${TOPIC_EXPECTED}${note})`;
}

export function checkTopic(name: string): Parsed<string> {
  const err = topicError(name);
  return err === null ? { ok: true, value: name } : { ok: false, error: err };
}

const HOSTNAME_RE =
  /^(?=.{1,253}$)[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?(\.[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?)*\.?$/;

/** `host:port` with an IPv4 address, a hostname or a bracketed IPv6 address (`[::1]:1883`). */
export function parseHostPort(text: string, example = '127.0.0.1:8780'): Parsed<ListenAddress> {
  const expected = `expected host:port, e.g. ${example}`;
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const m = /^\[([^\]]*)\](?::(.*))?$/.exec(text);
    if (!m)
      return {
        ok: false,
        error: `is not a valid address (${expected} or [::1]:${example.split(':').pop()})`,
      };
    if (m[2] === undefined) return { ok: false, error: `has no port (${expected})` };
    host = m[1];
    portText = m[2];
    if (!isIPv6(host))
      return { ok: false, error: `has an invalid IPv6 address "${host}" (${expected})` };
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) return { ok: false, error: `has no port (${expected})` };
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) {
      return {
        ok: false,
        error: `looks like an IPv6 address without brackets (expected e.g. [::1]:${portText || '8780'})`,
      };
    }
    if (host === '')
      return { ok: false, error: `has no host (${expected}; 0.0.0.0 listens on all interfaces)` };
    if (/^[0-9.]+$/.test(host) ? !isIPv4(host) : !HOSTNAME_RE.test(host)) {
      return { ok: false, error: `has an invalid host "${host}" (${expected})` };
    }
  }
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
  if (!(port >= 1 && port <= 65535)) {
    return {
      ok: false,
      error: `has an invalid port "${portText}" (expected a port from 1 to 65535)`,
    };
  }
  return { ok: true, value: { host, port } };
}

export function formatHostPort(addr: ListenAddress): string {
  return addr.host.includes(':') ? `[${addr.host}]:${addr.port}` : `${addr.host}:${addr.port}`;
}

const WINDOW_EXPECTED = 'expected HH:MM-HH:MM on a 24-hour clock, e.g. 22:00-06:00';

export function parseWindow(text: string): Parsed<TimeWindow> {
  const m = /^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$/.exec(text);
  if (!m) return { ok: false, error: `is not a time window (${WINDOW_EXPECTED})` };
  const toMin = (h: string, mm: string, isEnd: boolean): number | null => {
    const hour = Number(h);
    const min = Number(mm);
    if (isEnd && hour === 24 && min === 0) return 0; // 24:00 = midnight at the end of the day
    if (hour > 23 || min > 59) return null;
    return hour * 60 + min;
  };
  const startMin = toMin(m[1], m[2], false);
  const endMin = toMin(m[3], m[4], true);
  if (startMin === null)
    return { ok: false, error: `has an invalid start time ${m[1]}:${m[2]} (${WINDOW_EXPECTED})` };
  if (endMin === null)
    return { ok: false, error: `has an invalid end time ${m[3]}:${m[4]} (${WINDOW_EXPECTED})` };
  if (startMin === endMin) {
    return {
      ok: false,
      error:
        'starts and ends at the same time (for no restriction leave KEDGE_FORWARD_WINDOWS unset or use always)',
    };
  }
  return { ok: true, value: { startMin, endMin } };
}

export function formatWindow(w: TimeWindow): string {
  const hhmm = (min: number): string =>
    `${String(Math.floor(min / 60)).padStart(2, '0')}:${String(min % 60).padStart(2, '0')}`;
  return `${hhmm(w.startMin)}-${hhmm(w.endMin)}`;
}

const MQTT_SCHEMES = ['mqtt:', 'mqtts:', 'ws:', 'wss:'];

export function mqttUrlError(text: string): string | null {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return 'is not a URL (expected e.g. mqtt://broker.local:1883)';
  }
  if (!MQTT_SCHEMES.includes(url.protocol)) {
    return `has scheme ${url.protocol.replace(/:$/, '')}:// (expected mqtt://, mqtts://, ws:// or wss://)`;
  }
  if (url.hostname === '') return 'has no host (expected e.g. mqtt://broker.local:1883)';
  return null;
}

/** MQTT subscription filter rules: `#` only as the whole last level, `+` only as a whole level. */
export function checkMqttFilter(filter: string): Parsed<string> {
  const fail = (error: string): Parsed<string> => ({ ok: false, error });
  if (filter.includes('\u0000')) return fail('contains a NUL character');
  if (Buffer.byteLength(filter) > 65535) return fail('is longer than 65535 bytes');
  const levels = filter.split('/');
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i];
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) {
      return fail(
        'is not a valid MQTT filter ("#" must be the last level on its own, e.g. sensors/#)',
      );
    }
    if (level.includes('+') && level !== '+') {
      return fail('is not a valid MQTT filter ("+" must be a whole level, e.g. plant/+/temp)');
    }
  }
  return { ok: true, value: filter };
}
