/**
 * KEDGE_ROUTE_<NAME>="<pattern> -> <destination> [| step]…" → a typed route definition.
 * Every error names the column (1-based) where it was found, so check-config can point at
 * it; nothing here throws anything but RouteSyntaxError, whatever the input.
 */
import { isValidTopic } from './setting-values.ts';
import { parseDuration } from './units.ts';

export type CompareOp = '=' | '!=' | '<' | '<=' | '>' | '>=';
export const AGGREGATES = ['count', 'min', 'max', 'mean', 'sum', 'first', 'last'] as const;
export type AggregateName = (typeof AGGREGATES)[number];

export interface Aggregate {
  fn: AggregateName;
  /** Dot path; '' only for count(). */
  field: string;
  /** The output field: `count`, or `<field>_<fn>` (dots become underscores). */
  out: string;
}

export type Step =
  | { kind: 'where'; field: string; op: CompareOp | 'exists'; value: unknown }
  | { kind: 'sample'; n: number }
  | { kind: 'deadband'; field: string; delta: number; maxMs: number | null }
  | { kind: 'window'; ms: number; aggregates: Aggregate[] }
  | { kind: 'select'; fields: string[] }
  | { kind: 'topic'; topic: string };

export type StepKind = Step['kind'];
export const STEP_KINDS: readonly StepKind[] = [
  'where',
  'sample',
  'deadband',
  'window',
  'select',
  'topic',
];

export interface RouteDef {
  /** Lower-case name from KEDGE_ROUTE_<NAME>. */
  name: string;
  pattern: string;
  destination: string;
  /** Column of the destination name (for "no such destination"). */
  destinationColumn: number;
  steps: Step[];
  /** The definition as given (trimmed): its hash tells a changed route at restart. */
  source: string;
}

export class RouteSyntaxError extends Error {
  readonly column: number;
  constructor(column: number, message: string) {
    super(`at column ${column}: ${message}`);
    this.name = 'RouteSyntaxError';
    this.column = column;
  }
}

/** A word of the definition and the column it starts at. */
interface Token {
  text: string;
  col: number;
}

/** Splits on whitespace, keeping `"…"` strings whole; columns are 1-based. */
function tokens(text: string, base: number): Token[] {
  const out: Token[] = [];
  let i = 0;
  while (i < text.length) {
    if (/\s/.test(text[i])) {
      i++;
      continue;
    }
    const start = i;
    if (text[i] === '"') {
      i++;
      while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
      if (i >= text.length) throw new RouteSyntaxError(base + start, 'unterminated string');
      i++;
    } else {
      while (i < text.length && !/\s/.test(text[i])) i++;
    }
    out.push({ text: text.slice(start, i), col: base + start });
  }
  return out;
}

const FIELD_RE = /^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$/;
const SEGMENT_RE = /^[A-Za-z0-9_-]+$/;
const OPS: readonly string[] = ['=', '!=', '<', '<=', '>', '>='];

function field(t: Token | undefined, after: number, what: string): string {
  if (!t)
    throw new RouteSyntaxError(
      after,
      `${what} needs a field (a JSON path such as temp or sensor.temp)`,
    );
  if (!FIELD_RE.test(t.text))
    throw new RouteSyntaxError(
      t.col,
      `${JSON.stringify(t.text)} is not a field path (letters, digits, _ and -, parts joined by dots)`,
    );
  return t.text;
}

function number(t: Token | undefined, after: number, what: string): number {
  if (!t) throw new RouteSyntaxError(after, `${what} needs a number`);
  const n = Number(t.text);
  if (t.text === '' || !Number.isFinite(n))
    throw new RouteSyntaxError(t.col, `${JSON.stringify(t.text)} is not a number (${what})`);
  return n;
}

function duration(t: Token | undefined, after: number, what: string): number {
  if (!t) throw new RouteSyntaxError(after, `${what} needs a duration such as 60s or 5m`);
  const d = parseDuration(t.text);
  if (!d.ok) throw new RouteSyntaxError(t.col, `${JSON.stringify(t.text)} ${d.error}`);
  if (d.value <= 0) throw new RouteSyntaxError(t.col, `${what} must be longer than 0`);
  return d.value;
}

function noMore(ts: Token[], i: number, step: string): void {
  if (i < ts.length)
    throw new RouteSyntaxError(
      ts[i].col,
      `unexpected ${JSON.stringify(ts[i].text)} after the ${step} step`,
    );
}

/** A comparison value: JSON (number, "string", true, false, null) or a bare word (a string). */
function literal(t: Token): unknown {
  if (t.text.startsWith('"')) {
    try {
      return JSON.parse(t.text);
    } catch {
      throw new RouteSyntaxError(t.col, `${t.text} is not a valid JSON string`);
    }
  }
  if (t.text === 'true') return true;
  if (t.text === 'false') return false;
  if (t.text === 'null') return null;
  const n = Number(t.text);
  return t.text !== '' && Number.isFinite(n) ? n : t.text;
}

function parseStep(text: string, base: number, end: number): Step {
  const ts = tokens(text, base);
  if (ts.length === 0)
    throw new RouteSyntaxError(base, `empty step (expected ${STEP_KINDS.join(', ')})`);
  const [head] = ts;
  const after = (i: number) => (ts[i - 1] ? ts[i - 1].col + ts[i - 1].text.length : end);
  switch (head.text) {
    case 'where': {
      const f = field(ts[1], after(1), 'where');
      const op = ts[2];
      if (!op)
        throw new RouteSyntaxError(
          after(2),
          `where ${f} needs an operator (${OPS.join(' ')} or exists)`,
        );
      if (op.text === 'exists') {
        noMore(ts, 3, 'where');
        return { kind: 'where', field: f, op: 'exists', value: null };
      }
      if (!OPS.includes(op.text))
        throw new RouteSyntaxError(
          op.col,
          `${JSON.stringify(op.text)} is not an operator (${OPS.join(' ')} or exists)`,
        );
      if (!ts[3]) throw new RouteSyntaxError(after(3), `where ${f} ${op.text} needs a value`);
      noMore(ts, 4, 'where');
      return { kind: 'where', field: f, op: op.text as CompareOp, value: literal(ts[3]) };
    }
    case 'sample': {
      const n = number(ts[1], after(1), 'sample');
      if (!Number.isInteger(n) || n < 1)
        throw new RouteSyntaxError(
          ts[1].col,
          `sample needs a whole number of at least 1, not ${ts[1].text}`,
        );
      noMore(ts, 2, 'sample');
      return { kind: 'sample', n };
    }
    case 'deadband': {
      const f = field(ts[1], after(1), 'deadband');
      const delta = number(ts[2], after(2), 'deadband delta');
      if (delta < 0) throw new RouteSyntaxError(ts[2].col, 'deadband delta must not be negative');
      let maxMs: number | null = null;
      if (ts[3]) {
        if (ts[3].text !== 'max')
          throw new RouteSyntaxError(
            ts[3].col,
            `expected "max <duration>" after the deadband delta, not ${JSON.stringify(ts[3].text)}`,
          );
        maxMs = duration(ts[4], after(4), 'deadband max');
        noMore(ts, 5, 'deadband');
      }
      return { kind: 'deadband', field: f, delta, maxMs };
    }
    case 'window': {
      const ms = duration(ts[1], after(1), 'window');
      const aggregates: Aggregate[] = [];
      const seen = new Set<string>();
      // Aggregates may be separated by spaces or commas: "mean(temp) max(temp)" or "mean(temp),max(temp)".
      for (const t of ts.slice(2)) {
        let col = t.col;
        for (const part of t.text.split(',')) {
          if (part !== '') {
            const m = /^([a-z]+)\(([^()]*)\)$/.exec(part);
            if (!m)
              throw new RouteSyntaxError(
                col,
                `${JSON.stringify(part)} is not an aggregate (expected e.g. mean(temp) or count())`,
              );
            const fn = m[1] as AggregateName;
            if (!AGGREGATES.includes(fn))
              throw new RouteSyntaxError(
                col,
                `${JSON.stringify(m[1])} is not an aggregate (expected ${AGGREGATES.join(', ')})`,
              );
            const fieldPath = m[2].trim();
            if (fn === 'count' && fieldPath !== '')
              throw new RouteSyntaxError(
                col,
                'count() takes no field: it counts the events of the window',
              );
            if (fn !== 'count' && !FIELD_RE.test(fieldPath))
              throw new RouteSyntaxError(
                col + fn.length + 1,
                `${fn}() needs a field path, not ${JSON.stringify(fieldPath)}`,
              );
            const out = fn === 'count' ? 'count' : `${fieldPath.replace(/\./g, '_')}_${fn}`;
            if (seen.has(out)) throw new RouteSyntaxError(col, `${part} is given twice`);
            seen.add(out);
            if (fn !== 'count') aggregates.push({ fn, field: fieldPath, out });
          }
          col += part.length + 1;
        }
      }
      if (ts.length < 3 && ts[1])
        throw new RouteSyntaxError(
          after(2),
          'window needs at least one aggregate, e.g. mean(temp) or count()',
        );
      return { kind: 'window', ms, aggregates };
    }
    case 'select': {
      if (!ts[1])
        throw new RouteSyntaxError(after(1), 'select needs fields, e.g. select temp,site');
      const fields: string[] = [];
      let col = ts[1].col;
      for (const t of ts.slice(1)) {
        col = t.col;
        for (const part of t.text.split(',')) {
          if (part !== '') {
            if (!FIELD_RE.test(part))
              throw new RouteSyntaxError(col, `${JSON.stringify(part)} is not a field path`);
            fields.push(part);
          }
          col += part.length + 1;
        }
      }
      if (fields.length === 0)
        throw new RouteSyntaxError(ts[1].col, 'select needs at least one field');
      return { kind: 'select', fields };
    }
    case 'topic': {
      if (!ts[1]) throw new RouteSyntaxError(after(1), 'topic needs a Kafka topic name');
      if (!isValidTopic(ts[1].text))
        throw new RouteSyntaxError(
          ts[1].col,
          `${JSON.stringify(ts[1].text)} is not a valid Kafka topic name`,
        );
      noMore(ts, 2, 'topic');
      return { kind: 'topic', topic: ts[1].text };
    }
    default:
      throw new RouteSyntaxError(
        head.col,
        `unknown step ${JSON.stringify(head.text)} (expected ${STEP_KINDS.join(', ')})`,
      );
  }
}

/** Checks a topic pattern: topic characters, with `*` for one segment and `#` (last) for the rest. */
export function checkPattern(p: string, col: number): void {
  if (p === '')
    throw new RouteSyntaxError(col, 'the route needs a topic pattern before "->" (e.g. sensors.#)');
  const segs = p.split('.');
  let at = col;
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i];
    if (s === '#' && i !== segs.length - 1)
      throw new RouteSyntaxError(
        at,
        '"#" stands for the rest of the topic: it must be the last segment',
      );
    if (s !== '*' && s !== '#' && !SEGMENT_RE.test(s))
      throw new RouteSyntaxError(
        at,
        `${JSON.stringify(s)} is not a topic segment (letters, digits, _ and -; * for one segment, # for the rest)`,
      );
    at += s.length + 1;
  }
}

/**
 * Parses one route. `name` is <NAME> of KEDGE_ROUTE_<NAME> (kept lower-case).
 * Throws RouteSyntaxError with the column of the first problem.
 */
export function parseRoute(name: string, text: string): RouteDef {
  const arrow = text.indexOf('->');
  if (arrow < 0)
    throw new RouteSyntaxError(1, 'expected "<pattern> -> <destination>", e.g. sensors.# -> cloud');
  const lead = text.length - text.trimStart().length;
  const pattern = text.slice(0, arrow).trim();
  checkPattern(pattern, lead + 1);
  // Split the rest on "|" (outside strings) into the destination and the steps.
  const parts: { text: string; col: number }[] = [];
  let start = arrow + 2;
  let inString = false;
  for (let i = start; i <= text.length; i++) {
    const c = text[i];
    if (i === text.length) {
      parts.push({ text: text.slice(start, i), col: start + 1 });
      break;
    }
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') inString = true;
    else if (c === '|') {
      parts.push({ text: text.slice(start, i), col: start + 1 });
      start = i + 1;
    }
  }
  const dest = tokens(parts[0].text, parts[0].col);
  if (dest.length === 0)
    throw new RouteSyntaxError(parts[0].col, 'expected a destination name after "->"');
  if (dest.length > 1)
    throw new RouteSyntaxError(
      dest[1].col,
      `expected "|" before a step, not ${JSON.stringify(dest[1].text)}`,
    );
  if (!/^[a-z][a-z0-9_]*$/.test(dest[0].text))
    throw new RouteSyntaxError(
      dest[0].col,
      `${JSON.stringify(dest[0].text)} is not a destination name (lower-case letters, digits and _)`,
    );
  const steps: Step[] = [];
  const end = text.length + 1;
  for (const part of parts.slice(1)) steps.push(parseStep(part.text, part.col, end));
  return {
    name,
    pattern,
    destination: dest[0].text,
    destinationColumn: dest[0].col,
    steps,
    source: text.trim(),
  };
}

/** Compiles a topic pattern (`*` one segment, `#` the rest) to a matcher. */
export function topicMatcher(pattern: string): (topic: string) => boolean {
  const segs = pattern.split('.');
  return (topic) => {
    const t = topic.split('.');
    for (let i = 0; i < segs.length; i++) {
      const s = segs[i];
      // Like MQTT's #: the rest of the topic, zero or more segments.
      if (s === '#') return true;
      if (i >= t.length) return false;
      if (s !== '*' && s !== t[i]) return false;
    }
    return t.length === segs.length;
  };
}
