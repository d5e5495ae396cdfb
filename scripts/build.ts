/**
 * npm run build [-- options]: the single executables, tarballs and .debs in dist/.
 *
 *   --arch x64|arm64   only this architecture (repeatable; default: both)
 *   --if-stale         do nothing when every artifact is newer than every source
 *   --release          smallest archives (gzip -9, .deb xz): minutes slower
 *   --no-package       executables only, no tarball / .deb
 *
 * Steps (scripts/build/*): esbuild bundle → SEA blob (Node's
 * --experimental-sea-config, no snapshot/code cache, the wasm SQLite as
 * assets) → official Node binary from the npm registry, stripped → postject
 * → smoke test (`version`, arm64 under qemu-user) → tarball and .deb.
 * Needs only the npm registry (once per Node version; then cached).
 */
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { basename, join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { gzipSync } from 'node:zlib';
import { bundle, WORKER_ENTRY } from './build/bundle.ts';
import { KAFKA_WORKER_ASSET } from '../agent/kafka/kafka-thread.ts';
import { BuildError } from './build/exec.ts';
import { newestFile, staleness } from './build/freshness.ts';
import { ARCHES, DIST, ROOT, WORK, artifacts, packageInfo, type Arch } from './build/layout.ts';
import { acquireLock } from './build/lock.ts';
import { officialNode, type OfficialNode } from './build/node-dist.ts';
import { makeDeb, makeTarball, notices, type Compression } from './build/package.ts';
import { makeExecutable, smokeTest, writeBlob } from './build/sea.ts';

const t0 = Date.now();
const log = (msg: string): void => {
  process.stderr.write(`[build ${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${msg}\n`);
};
const MiB = (n: number): string => `${(n / 2 ** 20).toFixed(1)} MiB`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      arch: { type: 'string', multiple: true },
      'if-stale': { type: 'boolean', default: false },
      release: { type: 'boolean', default: false },
      'no-package': { type: 'boolean', default: false },
    },
  });
  const arches = (values.arch ?? [...ARCHES]) as Arch[];
  for (const a of arches)
    if (!ARCHES.includes(a)) throw new BuildError(`--arch ${a}: expected ${ARCHES.join(' or ')}`);
  const withPackages = !values['no-package'];
  const compression: Compression = values.release ? 'small' : 'fast';

  mkdirSync(DIST, { recursive: true });
  await acquireLock(join(DIST, '.build.lock'), (pid) =>
    log(`waiting for the build running as pid ${pid}`),
  );

  if (values['if-stale']) {
    const s = staleness(arches, withPackages ? ['exe', 'tarball', 'deb'] : ['exe']);
    if (!s.stale) {
      log('dist/ is up to date');
      return;
    }
    log(
      `rebuilding: ${s.reasons[0]}${s.reasons.length > 1 ? ` (+${s.reasons.length - 1} more)` : ''}`,
    );
  }

  const info = packageInfo();
  mkdirSync(WORK, { recursive: true });
  const mtime = Number(process.env.SOURCE_DATE_EPOCH) || Math.floor(newestFile().mtimeMs / 1000);

  const bundleFile = join(WORK, 'kedge.cjs');
  const workerFile = join(WORK, KAFKA_WORKER_ASSET);
  const [b, wb, ...nodes] = await Promise.all([
    bundle(bundleFile),
    bundle(workerFile, WORKER_ENTRY),
    ...arches.map((a) => officialNode(a, info.nodeVersion, log)),
  ]);
  const nodeOf = new Map<Arch, OfficialNode>(nodes.map((n) => [n.arch, n]));
  log(
    `bundled ${relative(ROOT, bundleFile)}: ${MiB(b.bytes)}, ${b.packages.size} packages; static require in ${b.patched.join(', ') || 'no file'}`,
  );

  const blobFile = join(WORK, 'kedge.blob');
  const blobBytes = await writeBlob(
    {
      bundle: bundleFile,
      kafkaWorker: workerFile,
      wasmJs: b.wasm.js,
      wasmBinary: b.wasm.wasm,
      configFile: join(WORK, 'sea-config.json'),
      blobFile,
    },
    info.nodeVersion,
  );
  log(`SEA blob ${MiB(blobBytes)} (bundle + node-sqlite3-wasm@${b.wasm.version} assets)`);

  log(
    `bundled the Kafka thread ${relative(ROOT, workerFile)}: ${MiB(wb.bytes)}, ${wb.packages.size} packages`,
  );
  const packages = new Map([...b.packages, ...wb.packages]);
  packages.set('node-sqlite3-wasm', join(ROOT, 'node_modules/node-sqlite3-wasm'));
  const noticeText = notices({
    version: info.version,
    nodeVersion: info.nodeVersion,
    nodeLicense: nodes[0].license,
    packages,
  });

  const rows: string[][] = [];
  await Promise.all(
    arches.map(async (arch) => {
      const a = artifacts(info.version, arch);
      const node = nodeOf.get(arch)!;
      const bytes = await makeExecutable(arch, node.binary, blobFile, a.exe);
      log(`${basename(a.exe)}: ${MiB(bytes)}`);
      const v = await smokeTest(arch, a.exe, info);
      log(`${basename(a.exe)} version: ${v.split('\n').join(' | ')}`);
      const gz = gzipSync(readFileSync(a.exe), { level: 6 }).length;
      rows.push([basename(a.exe), String(bytes), String(gz)]);
      if (!withPackages) return;
      const input = {
        arch,
        version: info.version,
        exe: a.exe,
        notices: noticeText,
        nodeBinary: node.binary,
        compression,
        mtime,
      };
      await Promise.all([makeTarball(input, a.tarball), makeDeb(input, a.deb)]);
      for (const f of [a.tarball, a.deb]) rows.push([basename(f), String(statSync(f).size), '']);
      log(`${basename(a.tarball)}, ${basename(a.deb)}: done`);
    }),
  );

  // Every artifact of this version in dist/, also those of an architecture not rebuilt this time.
  const files = ARCHES.flatMap((a) => Object.values(artifacts(info.version, a)))
    .filter((f) => existsSync(f))
    .sort();
  writeFileSync(
    join(DIST, 'SHA256SUMS'),
    files
      .map((f) => `${createHash('sha256').update(readFileSync(f)).digest('hex')}  ${basename(f)}`)
      .join('\n') + '\n',
  );
  writeFileSync(
    join(WORK, 'buildinfo.json'),
    JSON.stringify(
      {
        kedge: info.version,
        node: info.nodeVersion,
        nodeTarballs: Object.fromEntries(
          nodes.map((n) => [`node-linux-${n.arch}@${n.version}`, n.integrity]),
        ),
        nodeSqlite3Wasm: b.wasm.version,
        bundleBytes: b.bytes,
        blobBytes,
        artifacts: Object.fromEntries(
          rows.map((r) => [
            r[0],
            { bytes: Number(r[1]), gzipBytes: r[2] ? Number(r[2]) : undefined },
          ]),
        ),
        seconds: (Date.now() - t0) / 1000,
      },
      null,
      2,
    ) + '\n',
  );

  rows.sort((x, y) => x[0].localeCompare(y[0]));
  const w = Math.max(...rows.map((r) => r[0].length));
  process.stdout.write(
    `\n${'artifact'.padEnd(w)}  ${'size'.padStart(10)}  ${'gzip -6'.padStart(10)}\n`,
  );
  for (const [name, size, gz] of rows) {
    process.stdout.write(
      `${name.padEnd(w)}  ${MiB(Number(size)).padStart(10)}  ${(gz ? MiB(Number(gz)) : '').padStart(10)}\n`,
    );
  }
  log(`done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
}

main().catch((e) => {
  if (e instanceof BuildError) {
    process.stderr.write(`build failed: ${e.message}\n`);
    process.exit(1);
  }
  throw e;
});
