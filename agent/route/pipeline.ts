/**
 * The routes of one destination and lane, run over the log in seq order: a pure function of
 * the events it is given and the state it started from. Nothing here reads a clock; windows
 * close on the watermark, which is the ingest time of the events themselves (the log stamps
 * them in commit order, never going back) or a time the caller proves no later event can be
 * before (see advanceTo). So the same log always yields the same records with the same ids,
 * however it is cut into batches, and whatever was restarted in between (state() / restore()).
 */
import type { StoredEvent } from '../log/types.ts';
import { type RouteDef, type Step, topicMatcher } from '../route-syntax.ts';

/** A record a route produced: `seq` is the log position it belongs to (see RoutedBatch). */
export interface RoutedEvent extends StoredEvent {
  /** kedge-id of the record: the input's for a passed event, the window's for an aggregate. */
  id: string;
  route: string;
}

/** Events a step removed, by route and step, e.g. "cloud/deadband" → 120. */
export type FilteredCounts = Map<string, number>;

const NOT_JSON = Symbol('not JSON');

/** One event on its way through the steps of a route. */
interface Item {
  seq: number;
  ts: number;
  topic: string;
  key: Buffer | null;
  keyText: string;
  value: Buffer;
  json: unknown;
  headers: Record<string, string> | null;
  id: string;
  lane: StoredEvent['lane'];
  /** Set when the item leaves its route's last step. */
  route?: string;
}

function jsonOf(item: Item): unknown {
  if (item.json === undefined) {
    try {
      item.json = JSON.parse(item.value.toString('utf8'));
    } catch {
      item.json = NOT_JSON;
    }
  }
  return item.json;
}

/** The value at a dot path of a JSON document; undefined when missing. */
export function pathValue(doc: unknown, path: string): unknown {
  let v: unknown = doc;
  for (const part of path.split('.')) {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return undefined;
    v = (v as Record<string, unknown>)[part];
  }
  return v;
}

type Emit = (item: Item) => void;

/** A step: push takes one item (emitting zero or more), advance closes what the watermark passed. */
interface StepRunner {
  readonly kind: Step['kind'];
  push(item: Item, emit: Emit, removed: () => void): void;
  advance(watermark: number, pos: number, emit: Emit): void;
  state(): unknown;
  restore(s: unknown): void;
  /** Lowest seq of an input still in an open window (null: none). */
  openFrom(): number | null;
  /** When the earliest open window ends (null: none open). */
  nextClose?(): number | null;
}

function compare(x: unknown, op: string, want: unknown): boolean {
  if (x === undefined) return false;
  if (op === 'exists') return true;
  if (op === '=' || op === '!=') {
    const eq =
      x !== null && typeof x === 'object' ? JSON.stringify(x) === JSON.stringify(want) : x === want;
    return op === '=' ? eq : !eq;
  }
  const both =
    (typeof x === 'number' && typeof want === 'number') ||
    (typeof x === 'string' && typeof want === 'string');
  if (!both) return false;
  const a = x as number | string;
  const b = want as number | string;
  switch (op) {
    case '<':
      return a < b;
    case '<=':
      return a <= b;
    case '>':
      return a > b;
    default:
      return a >= b;
  }
}

const stateless = {
  advance() {},
  state: () => null,
  restore() {},
  openFrom: () => null,
};

function where(s: Extract<Step, { kind: 'where' }>): StepRunner {
  return {
    kind: 'where',
    ...stateless,
    push(item, emit, removed) {
      const doc = jsonOf(item);
      if (doc !== NOT_JSON && compare(pathValue(doc, s.field), s.op, s.value)) emit(item);
      else removed();
    },
  };
}

/** One event in n per key, counted from the first one the route saw for that key. */
function sample(s: Extract<Step, { kind: 'sample' }>): StepRunner {
  let seen = new Map<string, number>();
  return {
    kind: 'sample',
    push(item, emit, removed) {
      const n = seen.get(item.keyText) ?? 0;
      seen.set(item.keyText, n + 1 === s.n ? 0 : n + 1);
      if (n === 0) emit(item);
      else removed();
    },
    advance() {},
    state: () => [...seen],
    restore(st) {
      seen = new Map(st as [string, number][]);
    },
    openFrom: () => null,
  };
}

/** Report by exception: per key, when the number moved by delta since the last one passed, or max passed. */
function deadband(s: Extract<Step, { kind: 'deadband' }>): StepRunner {
  let last = new Map<string, [number, number]>();
  return {
    kind: 'deadband',
    push(item, emit, removed) {
      const doc = jsonOf(item);
      const v = doc === NOT_JSON ? undefined : pathValue(doc, s.field);
      if (typeof v !== 'number') {
        removed();
        return;
      }
      const prev = last.get(item.keyText);
      if (
        prev === undefined ||
        Math.abs(v - prev[0]) >= s.delta ||
        (s.maxMs !== null && item.ts - prev[1] >= s.maxMs)
      ) {
        last.set(item.keyText, [v, item.ts]);
        emit(item);
      } else removed();
    },
    advance() {},
    state: () => [...last],
    restore(st) {
      last = new Map(st as [string, [number, number]][]);
    },
    openFrom: () => null,
  };
}

/** An open window of one key: [start, start+ms), its first input, count, and per aggregate its state. */
interface OpenWindow {
  start: number;
  first: number;
  n: number;
  topic: string;
  /** The key as base64 (null: keyless), so binary keys survive state() as JSON. */
  key: string | null;
  lane: StoredEvent['lane'];
  /** min, max, first, last: the value (null: no number yet); sum, mean: [sum, numbers]. */
  agg: (number | null | [number, number])[];
}

function window(
  s: Extract<Step, { kind: 'window' }>,
  idOf: (keyText: string, start: number) => string,
): StepRunner {
  let open = new Map<string, OpenWindow>();
  /** Earliest end of an open window: the watermark check is one comparison until then. */
  let nextEnd = Number.POSITIVE_INFINITY;
  const fresh = (): OpenWindow['agg'] =>
    s.aggregates.map((a) => (a.fn === 'sum' || a.fn === 'mean' ? [0, 0] : null));

  function close(keyText: string, w: OpenWindow, pos: number, emit: Emit): void {
    const end = w.start + s.ms;
    const out: Record<string, unknown> = { window_start: w.start, window_end: end, count: w.n };
    s.aggregates.forEach((a, i) => {
      const st = w.agg[i];
      if (Array.isArray(st))
        out[a.out] = st[1] === 0 ? null : a.fn === 'sum' ? st[0] : st[0] / st[1];
      else out[a.out] = st;
    });
    const value = Buffer.from(JSON.stringify(out));
    emit({
      seq: pos,
      ts: end,
      topic: w.topic,
      key: w.key === null ? null : Buffer.from(w.key, 'base64'),
      keyText,
      value,
      json: out,
      headers: null,
      id: idOf(keyText, w.start),
      lane: w.lane,
    });
  }

  function recomputeNextEnd(): void {
    nextEnd = Number.POSITIVE_INFINITY;
    for (const w of open.values()) nextEnd = Math.min(nextEnd, w.start + s.ms);
  }

  return {
    kind: 'window',
    push(item, emit, removed) {
      const start = Math.floor(item.ts / s.ms) * s.ms;
      let w = open.get(item.keyText);
      if (w !== undefined && start < w.start) {
        // Earlier than the key's open window: cannot happen with the log's clock (it never goes back).
        removed();
        return;
      }
      if (w !== undefined && start >= w.start + s.ms) {
        open.delete(item.keyText);
        close(item.keyText, w, item.seq, emit);
        w = undefined;
      }
      if (w === undefined) {
        w = {
          start,
          first: item.seq,
          n: 0,
          topic: item.topic,
          key: item.key === null ? null : item.key.toString('base64'),
          lane: item.lane,
          agg: fresh(),
        };
        open.set(item.keyText, w);
        nextEnd = Math.min(nextEnd, start + s.ms);
      }
      w.n++;
      if (s.aggregates.length === 0) return;
      const doc = jsonOf(item);
      s.aggregates.forEach((a, i) => {
        const v = doc === NOT_JSON ? undefined : pathValue(doc, a.field);
        if (typeof v !== 'number') return;
        const st = w.agg[i];
        if (Array.isArray(st)) {
          st[0] += v;
          st[1] += 1;
        } else if (a.fn === 'min') w.agg[i] = st === null ? v : Math.min(st as number, v);
        else if (a.fn === 'max') w.agg[i] = st === null ? v : Math.max(st as number, v);
        else if (a.fn === 'first') w.agg[i] = st === null ? v : st;
        else w.agg[i] = v;
      });
    },
    advance(watermark, pos, emit) {
      if (watermark < nextEnd) return;
      for (const [k, w] of open) {
        if (w.start + s.ms <= watermark) {
          open.delete(k);
          close(k, w, pos, emit);
        }
      }
      recomputeNextEnd();
    },
    state: () => [...open],
    restore(st) {
      open = new Map(st as [string, OpenWindow][]);
      recomputeNextEnd();
    },
    openFrom() {
      let lo: number | null = null;
      for (const w of open.values()) if (lo === null || w.first < lo) lo = w.first;
      return lo;
    },
    nextClose: () => (open.size === 0 ? null : nextEnd),
  };
}

function select(s: Extract<Step, { kind: 'select' }>): StepRunner {
  return {
    kind: 'select',
    ...stateless,
    push(item, emit, removed) {
      const doc = jsonOf(item);
      if (doc === NOT_JSON || doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
        removed();
        return;
      }
      const out: Record<string, unknown> = {};
      for (const f of s.fields) {
        const v = pathValue(doc, f);
        if (v === undefined) continue;
        // Keeps the path's shape: select a.b gives {"a":{"b":…}}.
        const parts = f.split('.');
        let at = out;
        for (const p of parts.slice(0, -1)) {
          if (at[p] === null || typeof at[p] !== 'object') at[p] = {};
          at = at[p] as Record<string, unknown>;
        }
        at[parts[parts.length - 1]] = v;
      }
      emit({ ...item, json: out, value: Buffer.from(JSON.stringify(out)) });
    },
  };
}

function topic(s: Extract<Step, { kind: 'topic' }>): StepRunner {
  return {
    kind: 'topic',
    ...stateless,
    push(item, emit) {
      emit({ ...item, topic: s.topic });
    },
  };
}

/** One route: its matcher and its steps in order. */
class RouteRunner {
  readonly def: RouteDef;
  readonly matches: (topic: string) => boolean;
  private readonly steps: StepRunner[];

  constructor(def: RouteDef, agentId: string, destination: string) {
    this.def = def;
    this.matches = topicMatcher(def.pattern);
    const idOf = (keyText: string, start: number) =>
      `${agentId}:${destination}:${def.name}:${keyText}:${start}`;
    this.steps = def.steps.map((st): StepRunner => {
      switch (st.kind) {
        case 'where':
          return where(st);
        case 'sample':
          return sample(st);
        case 'deadband':
          return deadband(st);
        case 'window':
          return window(st, idOf);
        case 'select':
          return select(st);
        default:
          return topic(st);
      }
    });
  }

  /** Runs `item` through the steps from `from`. */
  private run(item: Item, from: number, out: Item[], filtered: FilteredCounts): void {
    if (from === this.steps.length) {
      item.route = this.def.name;
      out.push(item);
      return;
    }
    const step = this.steps[from];
    step.push(
      item,
      (next) => this.run(next, from + 1, out, filtered),
      () => {
        const k = `${this.def.name}/${step.kind}`;
        filtered.set(k, (filtered.get(k) ?? 0) + 1);
      },
    );
  }

  push(item: Item, out: Item[], filtered: FilteredCounts): void {
    this.run(item, 0, out, filtered);
  }

  /** Closes what `watermark` passed, step by step (a window's output goes through the steps after it). */
  advance(watermark: number, pos: number, out: Item[], filtered: FilteredCounts): void {
    for (let i = 0; i < this.steps.length; i++) {
      this.steps[i].advance(watermark, pos, (next) => this.run(next, i + 1, out, filtered));
    }
  }

  state(): unknown[] {
    return this.steps.map((s) => s.state());
  }

  restore(st: unknown[]): void {
    for (const [i, s] of this.steps.entries()) s.restore(st[i]);
  }

  nextClose(): number | null {
    let lo: number | null = null;
    for (const s of this.steps) {
      const e = s.nextClose?.() ?? null;
      if (e !== null && (lo === null || e < lo)) lo = e;
    }
    return lo;
  }

  openFrom(): number | null {
    let lo: number | null = null;
    for (const s of this.steps) {
      const f = s.openFrom();
      if (f !== null && (lo === null || f < lo)) lo = f;
    }
    return lo;
  }
}

/** The output of one call: records in order, and what the steps removed. */
export interface RoutedBatch {
  events: RoutedEvent[];
  filtered: FilteredCounts;
}

/** The routes of one destination over one lane of the log. */
export class RoutePipeline {
  private readonly routes: RouteRunner[];
  private watermark = 0;

  constructor(routes: readonly RouteDef[], agentId: string, destination: string) {
    this.routes = [...routes]
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
      .map((r) => new RouteRunner(r, agentId, destination));
  }

  /** Events of the log (in seq order, after those already given) → the records they yield. */
  process(events: readonly StoredEvent[], agentId: string): RoutedBatch {
    const out: Item[] = [];
    const filtered: FilteredCounts = new Map();
    for (const e of events) {
      if (e.ts > this.watermark) {
        // Windows that end by this event's ingest time close before it is added anywhere.
        this.watermark = e.ts;
        for (const r of this.routes) r.advance(e.ts, e.seq, out, filtered);
      }
      let keyText: string | null = null;
      for (const r of this.routes) {
        if (!r.matches(e.topic)) continue;
        keyText ??= e.key === null ? '' : e.key.toString('utf8');
        r.push(
          {
            seq: e.seq,
            ts: e.ts,
            topic: e.topic,
            key: e.key,
            keyText,
            value: e.value,
            json: undefined,
            headers: e.headers,
            id: `${agentId}:${e.seq}`,
            lane: e.lane,
          },
          out,
          filtered,
        );
      }
    }
    return { events: out.map(toRouted), filtered };
  }

  /**
   * The log holds no event before `time` that was not given yet (the caller read the clock,
   * then found the log's end): windows that end by then close. `pos` is the position their
   * records belong to (the last seq given).
   */
  advanceTo(time: number, pos: number): RoutedBatch {
    const out: Item[] = [];
    const filtered: FilteredCounts = new Map();
    if (time > this.watermark) {
      this.watermark = time;
      for (const r of this.routes) r.advance(time, pos, out, filtered);
    }
    return { events: out.map(toRouted), filtered };
  }

  /** Everything the routes remember (JSON-safe): with the log from the matching position on, the rest follows. */
  state(): string {
    return JSON.stringify({
      watermark: this.watermark,
      routes: Object.fromEntries(this.routes.map((r) => [r.def.name, r.state()])),
    });
  }

  restore(text: string): void {
    const st = JSON.parse(text) as { watermark: number; routes: Record<string, unknown[]> };
    this.watermark = st.watermark;
    for (const r of this.routes) {
      const s = st.routes[r.def.name];
      if (s) r.restore(s);
    }
  }

  /** When the earliest open window of any route ends (null: none open). */
  nextClose(): number | null {
    let lo: number | null = null;
    for (const r of this.routes) {
      const e = r.nextClose();
      if (e !== null && (lo === null || e < lo)) lo = e;
    }
    return lo;
  }

  /** Lowest seq still in an open window of any route (null: none): the log keeps it. */
  openFrom(): number | null {
    let lo: number | null = null;
    for (const r of this.routes) {
      const f = r.openFrom();
      if (f !== null && (lo === null || f < lo)) lo = f;
    }
    return lo;
  }
}

function toRouted(i: Item): RoutedEvent {
  return {
    seq: i.seq,
    topic: i.topic,
    key: i.key,
    value: i.value,
    headers: i.headers,
    ts: i.ts,
    lane: i.lane,
    id: i.id,
    route: i.route ?? '',
  };
}
