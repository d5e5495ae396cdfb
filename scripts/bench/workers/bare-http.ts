/**
 * Baseline for HTTP ingest: a bare node:http server that reads the body and
 * answers 200 with a JSON body of kedge's shape, storing nothing. Whatever
 * kedge reaches below this is the cost of parsing, storing and fsync.
 *
 * Protocol: config message {port} -> {ready:{port}}; message 'stop' -> {ok, result}.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

let requests = 0;
const server = createServer({ keepAliveTimeout: 30_000, requestTimeout: 60_000 }, (req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    requests++;
    const text = JSON.stringify({ accepted: 1, first_seq: requests, last_seq: requests });
    res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
    });
    res.end(text);
  });
});

process.on('message', (m: unknown) => {
  if (m === 'stop') {
    server.close();
    server.closeAllConnections();
    process.send!({ ok: true, result: { requests } }, () => process.exit(0));
    return;
  }
  const port = (m as { port?: number }).port ?? 0;
  server.listen(port, '127.0.0.1', () =>
    process.send!({ ready: { port: (server.address() as AddressInfo).port } }),
  );
});
