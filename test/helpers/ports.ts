// Free loopback TCP ports for services the tests start (Kafka, Mosquitto, kedge itself).
import net from 'node:net';

/**
 * A TCP port that was free on `host` a moment ago: the OS picks it (bind to port 0), we
 * close the socket and hand the number out. Another process could take it in between; the
 * kernel hands out ephemeral ports round-robin, so that is rare enough for tests.
 */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen({ port: 0, host, exclusive: true }, () => {
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') {
        srv.close();
        reject(new Error('freePort: server has no TCP address'));
        return;
      }
      srv.close(() => resolve(addr.port));
    });
  });
}

/** `n` distinct free ports (held open together while choosing, so they never collide). */
export async function freePorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < n; i++) {
      const srv = net.createServer();
      servers.push(srv);
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen({ port: 0, host, exclusive: true }, () => resolve());
      });
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') throw new Error('freePorts: no TCP address');
      ports.push(addr.port);
    }
    return ports;
  } finally {
    await Promise.all(
      servers.map((s) => new Promise<void>((r) => (s.listening ? s.close(() => r()) : r()))),
    );
  }
}
