/**
 * `kedge status` talking to its own agent over HTTPS (KEDGE_HTTP_TLS_CERT set).
 * The certificate is usually self-signed or issued by a site CA the device does not
 * trust, and its name rarely matches 127.0.0.1. The CLI has the very certificate
 * the listener serves, so it pins it: the connection is accepted when the peer's
 * certificate is exactly that one (SHA-256 fingerprint), and refused otherwise.
 */
import { X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import { Agent, type buildConnector } from 'undici';
import { PinMismatchError } from '../errors.ts';

export { PinMismatchError };

/** An undici dispatcher that trusts exactly the first certificate of `certPem` (the leaf the listener presents). */
export function pinnedDispatcher(certPem: Buffer, file: string): Agent {
  const want = new X509Certificate(certPem).fingerprint256;
  const connect: buildConnector.connector = (opts, callback) => {
    let done = false;
    const finish = (err: Error | null, socket: tls.TLSSocket | null) => {
      if (done) return;
      done = true;
      if (err) {
        socket?.destroy();
        callback(err, null);
      } else callback(null, socket!);
    };
    // Chain and name checks are replaced by the pin below, which is stricter: one certificate only.
    const socket = tls.connect({
      host: opts.hostname,
      port: Number(opts.port),
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
    });
    socket.once('secureConnect', () => {
      const got = socket.getPeerX509Certificate()?.fingerprint256;
      finish(got === want ? null : new PinMismatchError(file), socket);
    });
    socket.once('error', (e) => finish(e, socket));
    return socket;
  };
  return new Agent({ connect });
}
