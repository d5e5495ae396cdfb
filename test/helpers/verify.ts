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
  /** Records whose kedge-id an earlier record of a different event carried: a seq reused (must be 0). */
  reusedKedgeIds: number;
}

/**
 * `idOf` extracts the load generator's event id from a record; `acked` is the set
 * of ids that got an acknowledgement. Order per key (first copies only): a key lives in
 * one partition, and there its records come in the order its sender sent them and with
 * increasing kedge seq. The sender's order is the number after the last '-' of the id
 * (HttpLoad: `<loop>-<counter>`, one loop per key), or `senderOrder` of the id.
 */
export function checkDelivery(
  records: ReadRecord[],
  acked: Iterable<string>,
  idOf: (r: ReadRecord) => string,
  senderOrder: (id: string) => number = (id) => Number(id.slice(id.lastIndexOf('-') + 1)),
): DeliveryReport {
  const partitionOfKey = new Map<string, number>();
  const eventOfKedgeId = new Map<string, string>();
  let reusedKedgeIds = 0;
  const lastSentByKey = new Map<string, number>();
  const firstKedgeId = new Map<string, string>();
  let duplicates = 0;
  let foreignDuplicates = 0;
  const lastSeqByKey = new Map<string, number>();
  const orderViolations: string[] = [];
  const sorted = [...records].sort((a, b) => a.partition - b.partition || a.offset - b.offset);
  for (const r of sorted) {
    const id = idOf(r);
    const kid = r.headers['kedge-id'];
    const named = eventOfKedgeId.get(kid);
    if (named === undefined) eventOfKedgeId.set(kid, id);
    else if (named !== id) reusedKedgeIds++;
    const seen = firstKedgeId.get(id);
    if (seen !== undefined) {
      duplicates++;
      if (seen !== kid) foreignDuplicates++;
      continue;
    }
    firstKedgeId.set(id, kid);
    const seq = Number(kid.slice(kid.lastIndexOf(':') + 1));
    const key = r.key?.toString('hex') ?? '';
    const part = partitionOfKey.get(key);
    if (part === undefined) partitionOfKey.set(key, r.partition);
    else if (part !== r.partition && orderViolations.length < 20)
      orderViolations.push(`key ${key}: in partitions ${part} and ${r.partition}`);
    const sent = senderOrder(id);
    const prevSent = lastSentByKey.get(key);
    if (prevSent !== undefined && sent < prevSent && orderViolations.length < 20)
      orderViolations.push(`key ${key}: event ${id} (sent earlier) after one sent later`);
    if (prevSent === undefined || sent > prevSent) lastSentByKey.set(key, sent);
    const k = `${r.partition}/${key}`;
    const prev = lastSeqByKey.get(k);
    if (prev !== undefined && seq < prev && orderViolations.length < 20)
      orderViolations.push(`key ${k}: seq ${seq} after ${prev}`);
    lastSeqByKey.set(k, seq);
  }
  const missing: string[] = [];
  for (const id of acked) if (!firstKedgeId.has(id)) missing.push(id);
  return {
    missing,
    duplicates,
    foreignDuplicates,
    orderViolations,
    unique: firstKedgeId.size,
    reusedKedgeIds,
  };
}
