/**
 * Events as the log takes them and stores them: what append() accepts, and
 * the mapping between an event and its row (headers as JSON text).
 */
import type { Row } from './driver.ts';
import type { EventInput, Lane, StoredEvent } from './types.ts';

/** Why `events` cannot be appended, or null when they can. */
export function validate(events: unknown): string | null {
  if (!Array.isArray(events)) return 'append expects an array of events';
  if (events.length === 0) return 'append needs at least one event';
  for (let i = 0; i < events.length; i++) {
    const ev = events[i] as EventInput | null;
    if (ev === null || typeof ev !== 'object') return `event ${i} is not an object`;
    if (typeof ev.topic !== 'string' || ev.topic === '')
      return `event ${i}: topic must be a non-empty string`;
    if (!Buffer.isBuffer(ev.value)) return `event ${i}: value must be a Buffer`;
    if (ev.key != null && !Buffer.isBuffer(ev.key))
      return `event ${i}: key must be a Buffer or null`;
    if (ev.lane != null && ev.lane !== 'bulk' && ev.lane !== 'priority')
      return `event ${i}: lane must be 'bulk' or 'priority'`;
    const h = ev.headers;
    if (h != null) {
      if (typeof h !== 'object' || Array.isArray(h))
        return `event ${i}: headers must be an object of strings`;
      for (const k in h)
        if (typeof h[k] !== 'string')
          return `event ${i}: header ${JSON.stringify(k)} must be a string`;
    }
  }
  return null;
}

export function headersJson(h: Record<string, string> | undefined): string | null {
  if (h == null) return null;
  for (const _ in h) return JSON.stringify(h);
  return null; // {} is stored as no headers
}

export function toStored(r: Row, lane: Lane): StoredEvent {
  return {
    seq: r.seq as number,
    topic: r.topic as string,
    key: (r.key as Buffer | null) ?? null,
    value: r.value as Buffer,
    headers: r.headers == null ? null : (JSON.parse(r.headers as string) as Record<string, string>),
    ts: r.ts as number,
    lane,
  };
}
