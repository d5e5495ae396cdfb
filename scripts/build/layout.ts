/**
 * Where the build reads from and writes to, and what the artifacts are called.
 * Shared by scripts/build.ts and the tests (test/helpers/exe.ts), so both agree
 * on names without either hard-coding them twice.
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const ROOT = resolve(import.meta.dirname, '../..');
export const DIST = join(ROOT, 'dist');
/** Intermediates (bundle, blob, staging trees); kept for inspection, not shipped. */
export const WORK = join(DIST, '.build');
/** Downloaded and stripped official Node binaries, reused across builds. */
export const CACHE = join(ROOT, 'node_modules', '.cache', 'kedge-build');
export const PACKAGING = join(ROOT, 'packaging');

export type Arch = 'x64' | 'arm64';
export const ARCHES: readonly Arch[] = ['x64', 'arm64'];

/** Debian's names for the architectures. */
export const DEB_ARCH: Record<Arch, string> = { x64: 'amd64', arm64: 'arm64' };

/** Node's SEA resource name and fuse (src/node_sea.cc, `POSTJECT_SENTINEL_FUSE`). */
export const SEA_RESOURCE = 'NODE_SEA_BLOB';
export const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

/** SEA asset keys for the WebAssembly SQLite (read by scripts/build/sea-setup.ts). */
export const WASM_SQLITE_ASSETS = {
  js: 'node-sqlite3-wasm.js',
  wasm: 'node-sqlite3-wasm.wasm',
} as const;

export interface PackageInfo {
  version: string;
  /** Exact version of the `node` devDependency: the Node every executable embeds. */
  nodeVersion: string;
}

export function packageInfo(): PackageInfo {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
    version: string;
    devDependencies?: Record<string, string>;
  };
  const nodeVersion = pkg.devDependencies?.node ?? '';
  if (!/^\d+\.\d+\.\d+$/.test(nodeVersion)) {
    throw new Error(
      `package.json: devDependencies.node must pin an exact version (e.g. "24.21.0"), not ${JSON.stringify(nodeVersion)}`,
    );
  }
  return { version: pkg.version, nodeVersion };
}

export const exeName = (arch: Arch): string => `kedge-linux-${arch}`;
export const tarballName = (version: string, arch: Arch): string =>
  `kedge-${version}-linux-${arch}.tar.gz`;
export const debName = (version: string, arch: Arch): string =>
  `kedge_${version}_${DEB_ARCH[arch]}.deb`;

export interface ArchArtifacts {
  exe: string;
  tarball: string;
  deb: string;
}

export function artifacts(version: string, arch: Arch): ArchArtifacts {
  return {
    exe: join(DIST, exeName(arch)),
    tarball: join(DIST, tarballName(version, arch)),
    deb: join(DIST, debName(version, arch)),
  };
}

/**
 * Everything whose change can change an artifact. The lock file is included:
 * a dependency bump changes the bundle.
 */
export const SOURCES: readonly string[] = [
  'agent',
  'scripts/build.ts',
  'scripts/build',
  'packaging',
  'package.json',
  'package-lock.json',
].map((p) => join(ROOT, p));
