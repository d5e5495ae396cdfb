/**
 * An event's size, as the disk quota, the backlog, batch budgets and the byte
 * metrics count it: key + value bytes (topic, headers and row overhead not included).
 */
export function eventBytes(e: { value: Uint8Array; key?: Uint8Array | null }): number {
  return e.value.length + (e.key?.length ?? 0);
}

/** The sum of eventBytes over `events`. */
export function eventsBytes(
  events: Iterable<{ value: Uint8Array; key?: Uint8Array | null }>,
): number {
  let n = 0;
  for (const e of events) n += eventBytes(e);
  return n;
}
