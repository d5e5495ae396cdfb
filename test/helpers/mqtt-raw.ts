/**
 * Hand-encoded MQTT packets for tests that speak the protocol on a raw socket
 * (a broker or a client written in the test), so what is on the wire is
 * exactly what the test says.
 */

/** The remaining-length varint of an MQTT fixed header. */
export function varint(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 128;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

/** A PUBLISH; `v5` adds the (empty) MQTT 5 property length. */
export function rawPublish(
  topic: string,
  payload: Buffer,
  qos: 0 | 1 | 2,
  messageId = 1,
  dup = false,
  v5 = false,
): Buffer {
  const t = Buffer.from(topic);
  const parts: Buffer[] = [Buffer.from([t.length >> 8, t.length & 255]), t];
  if (qos > 0) parts.push(Buffer.from([messageId >> 8, messageId & 255]));
  if (v5) parts.push(Buffer.from([0]));
  parts.push(payload);
  const body = Buffer.concat(parts);
  return Buffer.concat([
    Buffer.from([0x30 | (qos << 1) | (dup ? 8 : 0)]),
    varint(body.length),
    body,
  ]);
}
