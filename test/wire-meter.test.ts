/**
 * WireMeter.watch(), the wire count of @platformatic/kafka's sockets (it has no socket
 * factory, so the meter is handed sockets Node connected itself): a TLS socket counts
 * its encrypted bytes, handshake included, not its plaintext, and keeps counting them
 * after it closed; the same bytes as a socket opened through socketFactory() (kafkajs).
 */
import t from 'tap';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { readFileSync, rmSync } from 'node:fs';
import { WireMeter } from '../agent/kafka/wire-meter.ts';
import { makeTestCerts } from './helpers/certs.ts';

const certs = makeTestCerts();
t.teardown(() => rmSync(certs.dir, { recursive: true, force: true }));
const PAYLOAD = Buffer.alloc(100_000, 7);

async function server(
  secure: boolean,
): Promise<{ port: number; close(): void; got: Promise<void> }> {
  let done!: () => void;
  const got = new Promise<void>((r) => (done = r));
  const onConn = (s: net.Socket) => {
    let n = 0;
    s.on('data', (d: Buffer) => {
      n += d.length;
      if (n >= PAYLOAD.length) done();
    });
    s.on('error', () => {});
  };
  const srv = secure
    ? tls.createServer(
        { cert: readFileSync(certs.serverCertFile), key: readFileSync(certs.serverKeyFile) },
        onConn,
      )
    : net.createServer(onConn);
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  return { port: (srv.address() as net.AddressInfo).port, close: () => srv.close(), got };
}

/** Writes the payload, closes, and returns the meter's count while open and after close. */
async function send(meter: WireMeter, socket: net.Socket, got: Promise<void>) {
  socket.write(PAYLOAD);
  await got;
  const open = meter.total();
  socket.destroy();
  await once(socket, 'close');
  return { open, closed: meter.total() };
}

t.test('a TLS socket Node connected counts encrypted bytes, handshake included', async (tt) => {
  const srv = await server(true);
  tt.teardown(() => srv.close());
  const meter = new WireMeter();
  const s = tls.connect({ host: '127.0.0.1', port: srv.port, ca: readFileSync(certs.caFile) });
  await once(s, 'secureConnect');
  meter.watch(s);
  meter.watch(s); // reported twice (connect, then failed): counted once
  tt.equal(meter.openSockets, 1);
  const { open, closed } = await send(meter, s, srv.got);
  tt.ok(open > PAYLOAD.length + 1_000, `more than the plaintext: ${open} bytes`);
  tt.ok(open < PAYLOAD.length + 10_000, 'TLS records and one handshake, not more');
  tt.ok(closed >= open, `kept after close (${closed})`);
  tt.equal(meter.openSockets, 0);

  // The same bytes through the kafkajs socket factory (a plain socket of the meter's own under TLS).
  const srv2 = await server(true);
  tt.teardown(() => srv2.close());
  const ref = new WireMeter();
  const f = ref.socketFactory();
  const s2 = await new Promise<net.Socket>((resolve) => {
    const sock: net.Socket = f({
      host: '127.0.0.1',
      port: srv2.port,
      ssl: { ca: readFileSync(certs.caFile) },
      onConnect: () => resolve(sock),
    } as never);
  });
  const viaFactory = await send(ref, s2, srv2.got);
  tt.ok(
    Math.abs(viaFactory.closed - closed) < 200,
    `same as through socketFactory(): ${closed} vs ${viaFactory.closed}`,
  );
});

t.test('a plain socket counts what it wrote', async (tt) => {
  const srv = await server(false);
  tt.teardown(() => srv.close());
  const meter = new WireMeter();
  const s = net.connect({ host: '127.0.0.1', port: srv.port });
  await once(s, 'connect');
  meter.watch(s);
  const { open, closed } = await send(meter, s, srv.got);
  tt.equal(open, PAYLOAD.length);
  tt.equal(closed, PAYLOAD.length);
});
