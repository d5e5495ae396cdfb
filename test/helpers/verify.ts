/**
 * What a user checks after a run: everything acknowledged is in Kafka (read by
 * kcat, an independent client), order per key holds, and any duplicate is a
 * resend of the same log entry (same kedge-id).
 */
export interface ReadRecord {
  partition: number;
  offset: number;
  key: Buffer | null;
  value: Buffer;
  headers: Record<string, string>;
}

export interface DeliveryReport {
  missing: string[];
  duplicates: number;
  /** duplicates whose kedge-id differs from the first copy's (must be 0) */
  foreignDuplicates: number;
  orderViolations: string[];
  unique: number;
}

/**
 * `idOf` extracts the load generator's event id from a record; `acked` is the set
 * of ids that got an acknowledgement. Order: within a partition, records of one
 * key must come with increasing kedge seq (first copies only).
 */
export function checkDelivery(
  records: ReadRecord[],
  acked: Iterable<string>,
  idOf: (r: ReadRecord) => string,
): DeliveryReport {
  const firstKedgeId = new Map<string, string>();
  let duplicates = 0;
  let foreignDuplicates = 0;
  const lastSeqByKey = new Map<string, number>();
  const orderViolations: string[] = [];
  const sorted = [...records].sort((a, b) => a.partition - b.partition || a.offset - b.offset);
  for (const r of sorted) {
    const id = idOf(r);
    const kid = r.headers['kedge-id'];
    const seen = firstKedgeId.get(id);
    if (seen !== undefined) {
      duplicates++;
      if (seen !== kid) foreignDuplicates++;
      continue;
    }
    firstKedgeId.set(id, kid);
    const seq = Number(kid.slice(kid.lastIndexOf(':') + 1));
    const k = `${r.partition}/${r.key?.toString('hex') ?? ''}`;
    const prev = lastSeqByKey.get(k);
    if (prev !== undefined && seq < prev && orderViolations.length < 20)
      orderViolations.push(`key ${k}: seq ${seq} after ${prev}`);
    lastSeqByKey.set(k, seq);
  }
  const missing: string[] = [];
  for (const id of acked) if (!firstKedgeId.has(id)) missing.push(id);
  return { missing, duplicates, foreignDuplicates, orderViolations, unique: firstKedgeId.size };
}
