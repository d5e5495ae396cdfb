/**
 * Client mode's PUBACKs as a broker sees them: a tiny MQTT broker written here
 * on a raw TCP socket (a few hand-encoded packets: CONNACK, SUBACK, PUBLISH,
 * PINGRESP) sends kedge's real client a burst of QoS 1 PUBLISHes in one write
 * and records every PUBACK packet id in the order it arrives, together with
 * what kedge's log held at that moment. The burst is larger than kedge's
 * window (RECEIVE_MAXIMUM), so the window's back-pressure is exercised too.
 */
import t from 'tap';
import { createServer, type Server, type Socket } from 'node:net';
import { clientIngest, harness, type Harness } from './fixtures/mqtt-harness.ts';
import { waitFor } from './helpers/proc.ts';
import { rawPublish } from './helpers/mqtt-raw.ts';
import { type MqttClientIngest, RECEIVE_MAXIMUM } from '../agent/ingest/mqtt-client.ts';
import { LogWriteError } from '../agent/log/index.ts';

interface Seen {
  id: number;
  /** Did the log hold this message when its PUBACK arrived? */
  stored: boolean;
}

/** Splits a byte stream into MQTT packets: [type, body]. */
function packets(onPacket: (type: number, body: Buffer) => void): (d: Buffer) => void {
  let buf = Buffer.alloc(0);
  return (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (buf.length < 2) return;
      let len = 0;
      let mul = 1;
      let i = 1;
      for (;;) {
        if (i >= buf.length) return;
        const b = buf[i++];
        len += (b & 0x7f) * mul;
        mul *= 128;
        if ((b & 0x80) === 0) break;
      }
      if (buf.length < i + len) return;
      onPacket(buf[0] >> 4, buf.subarray(i, i + len));
      buf = buf.subarray(i + len);
    }
  };
}

interface FakeBroker {
  server: Server;
  url: string;
  acks: Seen[];
  closed: Promise<void>;
}

/** Accepts one connection, answers CONNECT and SUBSCRIBE, then sends `n` QoS 1 PUBLISHes at once. */
async function fakeBroker(n: number, h: Harness): Promise<FakeBroker> {
  const acks: Seen[] = [];
  const stored = new Set<string>();
  let closedResolve!: () => void;
  const closed = new Promise<void>((r) => (closedResolve = r));
  let first = true;
  const server = createServer((sock: Socket) => {
    if (!first) {
      sock.destroy(); // one connection is the test; a reconnect after a refusal is not answered
      return;
    }
    first = false;
    let v5 = false;
    sock.on('close', () => closedResolve());
    sock.on('error', () => {});
    sock.on(
      'data',
      packets((type, body) => {
        if (type === 1) {
          // CONNECT: protocol name (2+4 bytes), then the level.
          v5 = body[6] === 5;
          sock.write(Buffer.from(v5 ? [0x20, 3, 0, 0, 0] : [0x20, 2, 0, 0]));
        } else if (type === 8) {
          if (body.includes('$SYS/')) {
            // kedge also asks for Mosquitto's drop counter: refused here (SUBACK 0x80), no burst.
            sock.write(
              Buffer.from(
                v5 ? [0x90, 4, body[0], body[1], 0, 0x80] : [0x90, 3, body[0], body[1], 0x80],
              ),
            );
            return;
          }
          sock.write(
            Buffer.from(v5 ? [0x90, 4, body[0], body[1], 0, 1] : [0x90, 3, body[0], body[1], 1]),
          );
          const all = Array.from({ length: n }, (_, i) =>
            rawPublish('dev/order', Buffer.from(`m-${i + 1}`), 1, i + 1, false, v5),
          );
          sock.write(Buffer.concat(all));
        } else if (type === 4) {
          const id = body.readUInt16BE(0);
          // Re-read the log only when the message is not known to be there yet.
          if (!stored.has(`m-${id}`)) for (const e of h.events()) stored.add(e.value.toString());
          acks.push({ id, stored: stored.has(`m-${id}`) });
        } else if (type === 12) sock.write(Buffer.from([0xd0, 0]));
      }),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return { server, url: `mqtt://127.0.0.1:${port}`, acks, closed };
}

function client(h: Harness, url: string, protocolVersion: 4 | 5): MqttClientIngest {
  return clientIngest(h, {
    url,
    agentId: `order-${process.pid}`,
    protocolVersion,
    reconnectMinMs: 60_000,
    reconnectMaxMs: 60_000,
  });
}

for (const protocolVersion of [5, 4] as const) {
  t.test(
    `MQTT ${protocolVersion}: PUBACKs in arrival order, each after its commit, many messages per commit`,
    async (tt) => {
      let commits = 0;
      const h = await harness({ sync: 'full', beforeCommit: () => void commits++ });
      const n = RECEIVE_MAXIMUM * 2 + 500;
      const b = await fakeBroker(n, h);
      const k = client(h, b.url, protocolVersion);
      await k.start();
      await waitFor(() => b.acks.length >= n, { timeoutMs: 30_000, what: `${n} PUBACKs` });
      tt.same(
        b.acks.map((a) => a.id),
        Array.from({ length: n }, (_, i) => i + 1),
        `${n} PUBACKs, in the order the PUBLISHes were sent`,
      );
      tt.equal(
        b.acks.filter((a) => !a.stored).length,
        0,
        'each PUBACK after its message is in the log',
      );
      tt.same(
        h.events().map((e) => e.value.toString()),
        Array.from({ length: n }, (_, i) => `m-${i + 1}`),
        'the log holds every message once, in arrival order',
      );
      tt.ok(commits < n / 10, `${commits} commits for ${n} messages (group commit)`);
      await k.stop();
      b.server.close();
      await h.cleanup();
    },
  );
}

t.test(
  'a refused append: PUBACKs for the messages before it only, then the connection drops',
  async (tt) => {
    const h = await harness({ sync: 'normal' });
    const n = 600;
    const refuse = 250;
    h.setAppend((events, real) =>
      events.some((e) => e.value.toString() === `m-${refuse}`)
        ? Promise.reject(new LogWriteError('disk full (test)', 'KEDGE_DISK_FULL'))
        : real(events),
    );
    const b = await fakeBroker(n, h);
    const k = client(h, b.url, 5);
    await k.start();
    await waitFor(() => k.status().append_failures > 0, { timeoutMs: 10_000, what: 'the refusal' });
    await Promise.race([b.closed, new Promise((r) => setTimeout(r, 5_000))]);
    await new Promise((r) => setTimeout(r, 200));
    const ids = b.acks.map((a) => a.id);
    tt.same(
      ids,
      Array.from({ length: refuse - 1 }, (_, i) => i + 1),
      'PUBACKs for 1..249 in order, none for the refused message or any after it',
    );
    tt.equal(b.acks.filter((a) => !a.stored).length, 0, 'every PUBACK after its commit');
    await k.stop();
    b.server.close();
    await h.cleanup();
  },
);
