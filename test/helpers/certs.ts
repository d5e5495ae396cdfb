// Test certificates made with the openssl command line, the way an operator makes them:
// a CA, a server certificate for 127.0.0.1, a client certificate for mutual TLS,
// and a second CA nobody trusts. EC P-256 keys: quick to make, understood by Node and Java.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestCerts {
  dir: string;
  /** CA certificate (PEM) that signed the server and client certificates. */
  caFile: string;
  /**
   * Server certificate for IP:127.0.0.1 only (so a client that checks the wrong name, e.g.
   * "localhost", fails), and its key: unencrypted PKCS#8,
   * which Node and Kafka's PEM key store both read (Java 17 cannot decrypt an openssl 3 PBES2 key).
   */
  serverCertFile: string;
  serverKeyFile: string;
  /** Client certificate (CN=kedge-client) for mutual TLS, and its key. */
  clientCertFile: string;
  clientKeyFile: string;
  /** A CA that signed nothing here: configured as the trust anchor, the server is untrusted. */
  otherCaFile: string;
  /** A client certificate signed by the other CA: a broker requiring client auth refuses it. */
  otherClientCertFile: string;
  otherClientKeyFile: string;
  /** Removes the folder. */
  remove(): void;
}

export class OpensslError extends Error {
  readonly code = 'KEDGE_TEST_OPENSSL';
}

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    if (err.code === 'ENOENT')
      throw new OpensslError('openssl is not installed (apt-get install -y openssl)');
    throw new OpensslError(
      `openssl ${args.join(' ')} failed: ${err.stderr?.toString().trim() ?? err.message}`,
    );
  }
}

function newKey(dir: string, name: string): string {
  const file = `${name}.key`;
  openssl(
    ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', file],
    dir,
  );
  return file;
}

function selfSignedCa(dir: string, name: string, cn: string): void {
  const key = newKey(dir, name);
  openssl(
    [
      'req',
      '-x509',
      '-new',
      '-key',
      key,
      '-sha256',
      '-days',
      '30',
      '-subj',
      `/CN=${cn}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
      '-out',
      `${name}.pem`,
    ],
    dir,
  );
}

/** A leaf certificate for `name`, signed by the CA `ca`, with the given extensions. */
function leaf(dir: string, name: string, ca: string, cn: string, ext: string[]): void {
  const key = newKey(dir, name);
  openssl(['req', '-new', '-key', key, '-subj', `/CN=${cn}`, '-out', `${name}.csr`], dir);
  writeFileSync(join(dir, `${name}.ext`), ext.join('\n') + '\n');
  openssl(
    [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      `${ca}.pem`,
      '-CAkey',
      `${ca}.key`,
      '-CAcreateserial',
      '-days',
      '30',
      '-sha256',
      '-extfile',
      `${name}.ext`,
      '-out',
      `${name}.pem`,
    ],
    dir,
  );
}

/** Makes a fresh set of certificates in a new temp folder (about a second of openssl). */
export function makeTestCerts(): TestCerts {
  const dir = mkdtempSync(join(tmpdir(), 'kedge-certs-'));
  const at = (f: string): string => join(dir, f);
  try {
    selfSignedCa(dir, 'ca', 'kedge test CA');
    selfSignedCa(dir, 'other-ca', 'kedge untrusted CA');
    leaf(dir, 'server', 'ca', 'localhost', [
      'basicConstraints=CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
      'extendedKeyUsage=serverAuth,clientAuth',
      'subjectAltName=IP:127.0.0.1',
    ]);
    const clientExt = [
      'basicConstraints=CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=clientAuth',
    ];
    leaf(dir, 'client', 'ca', 'kedge-client', clientExt);
    leaf(dir, 'other-client', 'other-ca', 'kedge-stranger', clientExt);
    return {
      dir,
      caFile: at('ca.pem'),
      serverCertFile: at('server.pem'),
      serverKeyFile: at('server.key'),
      clientCertFile: at('client.pem'),
      clientKeyFile: at('client.key'),
      otherCaFile: at('other-ca.pem'),
      otherClientCertFile: at('other-client.pem'),
      otherClientKeyFile: at('other-client.key'),
      remove: () => rmSync(dir, { recursive: true, force: true }),
    };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
