/**
 * Is dist/ up to date? Artifacts are stale when missing or older than the newest
 * source file (agent/, the build scripts, packaging/, package.json, the lock
 * file). Lets `npm run build -- --if-stale` and the tests skip a multi-minute
 * build when nothing changed.
 */
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { ARCHES, ROOT, SOURCES, artifacts, packageInfo, type Arch } from './layout.ts';

export interface Newest {
  file: string;
  mtimeMs: number;
}

/** The most recently modified file under `paths` (directories walked; dot-entries skipped). */
export function newestFile(paths: readonly string[] = SOURCES): Newest {
  let best: Newest = { file: '', mtimeMs: 0 };
  const visit = (p: string): void => {
    let st: ReturnType<typeof statSync>;
    try {
      st = statSync(p);
    } catch {
      return; // e.g. no package-lock.json yet
    }
    if (st.isDirectory()) {
      for (const name of readdirSync(p)) if (!name.startsWith('.')) visit(join(p, name));
    } else if (st.mtimeMs > best.mtimeMs) {
      best = { file: p, mtimeMs: st.mtimeMs };
    }
  };
  for (const p of paths) visit(p);
  return best;
}

export interface Staleness {
  stale: boolean;
  /** One line per reason, e.g. `dist/kedge-linux-x64 is missing`. */
  reasons: string[];
}

export type ArtifactKind = 'exe' | 'tarball' | 'deb';

export function staleness(
  arches: readonly Arch[] = ARCHES,
  kinds: readonly ArtifactKind[] = ['exe', 'tarball', 'deb'],
): Staleness {
  const { version } = packageInfo();
  const newest = newestFile();
  const reasons: string[] = [];
  for (const arch of arches) {
    const a = artifacts(version, arch);
    for (const kind of kinds) {
      const file = a[kind];
      let mtimeMs: number;
      try {
        mtimeMs = statSync(file).mtimeMs;
      } catch {
        reasons.push(`${relative(ROOT, file)} is missing`);
        continue;
      }
      if (mtimeMs < newest.mtimeMs)
        reasons.push(`${relative(ROOT, file)} is older than ${relative(ROOT, newest.file)}`);
    }
  }
  return { stale: reasons.length > 0, reasons };
}
