/**
 * The per-architecture tarball and .deb around an executable.
 *
 * Tarball `kedge-<version>-linux-<arch>.tar.gz`, one folder inside:
 *   kedge  install.sh  kedge.service  kedge.env.example  README.md  THIRD_PARTY_NOTICES
 *
 * Debian package `kedge_<version>_<amd64|arm64>.deb` (dpkg-deb, no debhelper):
 *   /usr/bin/kedge
 *   /usr/lib/systemd/system/kedge.service   (ExecStart=/usr/bin/kedge run)
 *   /etc/kedge/kedge.env                    conffile, 0600, every line commented
 *   /usr/share/doc/kedge/{README.md,copyright,THIRD_PARTY_NOTICES,kedge.env.example}
 *   maintainer scripts from packaging/deb/: system user in postinst, data in
 *   /var/lib/kedge kept on remove and deleted on purge.
 */
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { basename, join, relative } from 'node:path';
import { BuildError, exec } from './exec.ts';
import { DEB_ARCH, PACKAGING, WORK, type Arch } from './layout.ts';

export type Compression = 'fast' | 'small';

export interface PackageInput {
  arch: Arch;
  version: string;
  exe: string;
  notices: string;
  /** Stripped Node binary, read for the shared-library versions it needs. */
  nodeBinary: string;
  compression: Compression;
  /** Seconds since the epoch for file times inside the archives. */
  mtime: number;
}

/** The unit as shipped in the .deb: same file, binary in /usr/bin. */
export function debUnit(unit: string): string {
  const out = unit.replace(/^ExecStart=\/usr\/local\/bin\/kedge /m, 'ExecStart=/usr/bin/kedge ');
  if (out === unit)
    throw new BuildError(
      'packaging/kedge.service: no "ExecStart=/usr/local/bin/kedge " line to point at /usr/bin',
    );
  return out;
}

/** The env file as installed: the example, which sets nothing (every line commented). */
export function installedEnvFile(example: string): string {
  const active = example.split('\n').filter((l) => /^\s*[A-Za-z_][A-Za-z0-9_]*=/.test(l));
  if (active.length)
    throw new BuildError(
      `packaging/kedge.env.example must only have commented settings; active: ${active.join(', ')}`,
    );
  return example;
}

/** GLIBCXX_3.4.N → the GCC release whose libstdc++ first had it (Debian's libstdc++6 version). */
const GLIBCXX_GCC: Record<number, number> = {
  21: 5,
  22: 6,
  23: 7,
  24: 7,
  25: 8,
  26: 9,
  27: 9,
  28: 10,
  29: 11,
  30: 12,
  31: 13,
  32: 13,
  33: 14,
};

/** `Depends:` from the symbol versions the binary references (dpkg-shlibdeps cannot look at a foreign architecture here). */
export function debDepends(binary: Buffer): string {
  const max = (re: RegExp): number[] => {
    let best: number[] = [];
    for (const m of binary.toString('latin1').matchAll(re)) {
      const v = m[1].split('.').map(Number);
      if (compare(v, best) > 0) best = v;
    }
    return best;
  };
  const glibc = max(/GLIBC_(2\.\d+(?:\.\d+)?)\0/g);
  const glibcxx = max(/GLIBCXX_(3\.4\.\d+)\0/g);
  if (!glibc.length || !glibcxx.length)
    throw new BuildError('cannot find the GLIBC/GLIBCXX symbol versions in the node binary');
  const gcc = GLIBCXX_GCC[glibcxx[2]];
  if (gcc === undefined)
    throw new BuildError(
      `unknown GLIBCXX_${glibcxx.join('.')}: add its GCC release to GLIBCXX_GCC in scripts/build/package.ts`,
    );
  return `libc6 (>= ${glibc.join('.')}), libstdc++6 (>= ${gcc}), libgcc-s1 | libgcc1, passwd`;
}

function compare(a: number[], b: number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? -1) - (b[i] ?? -1);
    if (d !== 0) return d;
  }
  return 0;
}

function put(dst: string, content: string | Buffer, mode: number): void {
  mkdirSync(join(dst, '..'), { recursive: true });
  writeFileSync(dst, content);
  chmodSync(dst, mode);
}

function putFile(dst: string, src: string, mode: number): void {
  mkdirSync(join(dst, '..'), { recursive: true });
  copyFileSync(src, dst);
  chmodSync(dst, mode);
}

function walk(dir: string, out: string[] = []): string[] {
  for (const n of readdirSync(dir).sort()) {
    const p = join(dir, n);
    if (statSync(p).isDirectory()) walk(p, out);
    else out.push(p);
  }
  return out;
}

const packaging = (name: string): string => join(PACKAGING, name);

export async function makeTarball(i: PackageInput, out: string): Promise<void> {
  const top = basename(out, '.tar.gz');
  const stage = join(WORK, `tar-${i.arch}`);
  rmSync(stage, { recursive: true, force: true });
  const d = join(stage, top);
  putFile(join(d, 'kedge'), i.exe, 0o755);
  putFile(join(d, 'install.sh'), packaging('install.sh'), 0o755);
  putFile(join(d, 'kedge.service'), packaging('kedge.service'), 0o644);
  putFile(join(d, 'kedge.env.example'), packaging('kedge.env.example'), 0o644);
  putFile(join(d, 'README.md'), packaging('README.md'), 0o644);
  put(join(d, 'THIRD_PARTY_NOTICES'), i.notices, 0o644);
  const gzip = i.compression === 'small' ? 'gzip -9 -n' : 'gzip -6 -n';
  const tmp = `${out}.tmp`;
  await exec('tar', [
    '--sort=name',
    '--owner=0',
    '--group=0',
    '--numeric-owner',
    `--mtime=@${i.mtime}`,
    '--format=gnu',
    '-I',
    gzip,
    '-cf',
    tmp,
    '-C',
    stage,
    top,
  ]);
  renameSync(tmp, out);
  rmSync(stage, { recursive: true, force: true });
}

export async function makeDeb(i: PackageInput, out: string): Promise<void> {
  const stage = join(WORK, `deb-${i.arch}`);
  rmSync(stage, { recursive: true, force: true });
  const doc = join(stage, 'usr/share/doc/kedge');
  putFile(join(stage, 'usr/bin/kedge'), i.exe, 0o755);
  put(
    join(stage, 'usr/lib/systemd/system/kedge.service'),
    debUnit(readFileSync(packaging('kedge.service'), 'utf8')),
    0o644,
  );
  put(
    join(stage, 'etc/kedge/kedge.env'),
    installedEnvFile(readFileSync(packaging('kedge.env.example'), 'utf8')),
    0o600,
  );
  putFile(join(doc, 'README.md'), packaging('README.md'), 0o644);
  putFile(join(doc, 'kedge.env.example'), packaging('kedge.env.example'), 0o644);
  put(join(doc, 'THIRD_PARTY_NOTICES'), i.notices, 0o644);
  put(
    join(doc, 'copyright'),
    `kedge ${i.version}\nLicense: Apache-2.0 (/usr/share/common-licenses/Apache-2.0)\n\nThe kedge executable embeds Node.js and npm packages under their own\nlicences, reproduced in /usr/share/doc/kedge/THIRD_PARTY_NOTICES.\n`,
    0o644,
  );

  const payload = walk(stage);
  const installedKiB = Math.ceil(payload.reduce((n, f) => n + statSync(f).size, 0) / 1024);
  const md5 =
    payload
      .map(
        (f) => `${createHash('md5').update(readFileSync(f)).digest('hex')}  ${relative(stage, f)}`,
      )
      .join('\n') + '\n';

  const debian = join(stage, 'DEBIAN');
  const maintainer = process.env.KEDGE_DEB_MAINTAINER || 'kedge maintainers <kedge@localhost>';
  const control = [
    'Package: kedge',
    `Version: ${i.version}`,
    `Architecture: ${DEB_ARCH[i.arch]}`,
    `Maintainer: ${maintainer}`,
    `Installed-Size: ${installedKiB}`,
    `Depends: ${debDepends(readFileSync(i.nodeBinary))}`,
    'Recommends: systemd',
    'Section: net',
    'Priority: optional',
    'Description: store-and-forward edge agent: HTTP/MQTT in, durable log, Kafka out',
    ' kedge accepts events over HTTP and MQTT, appends each one to a durable',
    ' on-disk log before acknowledging it, and forwards the log in order to a',
    ' Kafka cluster whenever the link allows. Cut off for days, it keeps',
    ' accepting events within a disk quota and drains them when the link returns.',
    ' .',
    ' One self-contained executable (Node.js embedded), run as the systemd',
    ' service kedge, configured in /etc/kedge/kedge.env.',
    '',
  ].join('\n');
  put(join(debian, 'control'), control, 0o644);
  put(join(debian, 'conffiles'), '/etc/kedge/kedge.env\n', 0o644);
  put(join(debian, 'md5sums'), md5, 0o644);
  for (const script of ['postinst', 'prerm', 'postrm'])
    putFile(join(debian, script), packaging(`deb/${script}`), 0o755);

  const z = i.compression === 'small' ? ['-Zxz', '-z6'] : ['-Zgzip', '-z6'];
  const tmp = `${out}.tmp`;
  await exec('dpkg-deb', ['--root-owner-group', ...z, '--build', stage, tmp], {
    env: { ...process.env, SOURCE_DATE_EPOCH: String(i.mtime) },
  });
  renameSync(tmp, out);
  rmSync(stage, { recursive: true, force: true });
}

export interface NoticesInput {
  version: string;
  nodeVersion: string;
  nodeLicense: string;
  /** Bundled packages (name → dir) plus the embedded wasm SQLite. */
  packages: Map<string, string>;
}

/** Licence texts of everything inside the executable. */
export function notices(i: NoticesInput): string {
  const parts: string[] = [
    `kedge ${i.version}: third-party software inside the executable\n`,
    `The executable is Node.js v${i.nodeVersion} with the npm packages below bundled into it.`,
    `Node.js's licence, which also covers what Node bundles (V8, libuv, OpenSSL, ICU, SQLite, ...), is last.\n`,
  ];
  for (const [name, dir] of [...i.packages].sort(([a], [b]) => a.localeCompare(b))) {
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
      version?: string;
      license?: string;
    };
    const file = readdirSync(dir).find((f) => /^(licen[sc]e|copying)(\..*)?$/i.test(f));
    parts.push(
      `${'='.repeat(72)}\n${name}@${pkg.version ?? '?'} (${pkg.license ?? 'see below'})\n${'='.repeat(72)}`,
    );
    parts.push(
      file
        ? readFileSync(join(dir, file), 'utf8').trim() + '\n'
        : `(no licence file in the package; package.json says ${pkg.license ?? 'nothing'})\n`,
    );
  }
  parts.push(`${'='.repeat(72)}\nNode.js v${i.nodeVersion}\n${'='.repeat(72)}`);
  parts.push(readFileSync(i.nodeLicense, 'utf8').trim() + '\n');
  return parts.join('\n');
}
