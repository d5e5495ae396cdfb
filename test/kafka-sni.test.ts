/**
 * TLS to Kafka names the broker in SNI, with either client: a Kafka behind an SNI-routing
 * proxy (most hosted Kafka services) answers only a connection that says which broker it
 * wants. A TLS listener records the server name each ClientHello carries; kedge connects
 * to it as `localhost` (a name: sent) and as `127.0.0.1` (an address: RFC 6066 forbids it in
 * SNI, so none is sent). The handshake or the Kafka protocol after it fails; only the
 * ClientHello matters here.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { createRecordSink } from '../agent/kafka/producer.ts';
import type { Config } from '../agent/config.ts';
import { KAFKA_CLIENTS } from '../agent/config-types.ts';
import { createLogger } from '../agent/observe/logger.ts';
import { makeTestCerts } from './helpers/certs.ts';

const certs = makeTestCerts();
t.teardown(() => certs.remove());

for (const client of KAFKA_CLIENTS) {
  for (const host of ['localhost', '127.0.0.1']) {
    t.test(
      `${client}, broker ${host}: SNI ${host === 'localhost' ? 'localhost' : 'none'}`,
      async (tt) => {
        const hellos: (string | null)[] = [];
        const server = tls.createServer({
          cert: readFileSync(certs.serverCertFile),
          key: readFileSync(certs.serverKeyFile),
          // Called at the ClientHello, only when it names a server.
          SNICallback: (name, cb) => {
            hellos.push(name);
            cb(null, undefined);
          },
        });
        // A hello without a name: the handshake completes (the certificate is for 127.0.0.1).
        server.on('secureConnection', (s) => {
          if (typeof s.servername !== 'string') hellos.push(null);
          s.destroy();
        });
        server.on('tlsClientError', () => {});
        await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
        tt.teardown(() => server.close());
        const port = (server.address() as AddressInfo).port;
        const kafka: Config['kafka'] = {
          client,
          brokers: [`${host}:${port}`],
          tls: true,
          caFile: certs.caFile,
          certFile: null,
          keyFile: null,
          sasl: null,
          compression: 'none',
          topicPrefix: '',
        };
        const sink = await createRecordSink({
          kafka,
          clientId: 'sni-test',
          requestTimeoutMs: 2_000,
          logger: createLogger('error'),
        });
        const deadline = Date.now() + 20_000;
        const connecting = sink.connect().catch(() => {});
        while (hellos.length === 0 && Date.now() < deadline)
          await new Promise((r) => setTimeout(r, 50));
        await sink.disconnect();
        await connecting;
        tt.ok(hellos.length > 0, 'kedge connected with TLS');
        tt.equal(
          hellos[0],
          host === 'localhost' ? 'localhost' : null,
          'the server name in the ClientHello',
        );
      },
    );
  }
}
