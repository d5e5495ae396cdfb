/**
 * Baseline for the embedded-broker figure: a bare aedes that acknowledges at
 * once (no append), in its own process like kedge. Prints its port, stops on stdin close.
 */
import { createServer, type AddressInfo } from 'node:net';
import { Aedes } from 'aedes';

const aedes = new Aedes();
await aedes.listen();
const srv = createServer(aedes.handle);
await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
process.stdout.write(`${(srv.address() as AddressInfo).port}\n`);
process.stdin.resume();
process.stdin.once('end', () => {
  aedes.close(() => srv.close(() => process.exit(0)));
});
