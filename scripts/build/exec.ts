/** Running the external tools the build needs, with errors that say what to install. */
import { spawn } from 'node:child_process';

/** A build step failed; the message is meant for the person running the build. */
export class BuildError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'BuildError';
  }
}

/** Debian packages providing the tools, for the "not found" hint. */
const APT_HINT: Record<string, string> = {
  'aarch64-linux-gnu-strip': 'binutils-aarch64-linux-gnu',
  'aarch64-linux-gnu-readelf': 'binutils-aarch64-linux-gnu',
  strip: 'binutils',
  readelf: 'binutils',
  'dpkg-deb': 'dpkg (dpkg-dev for the rest of the tooling)',
  'qemu-aarch64-static': 'qemu-user-static (and libc6-arm64-cross libstdc++6-arm64-cross)',
  tar: 'tar',
  npm: 'npm (or use the npm that comes with Node)',
};

export interface ExecResult {
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Bytes written to the child's stdin. */
  input?: Buffer | string;
  /** Do not throw on a non-zero exit; the caller inspects `code`. */
  allowFailure?: boolean;
}

export function exec(
  cmd: string,
  args: readonly string[],
  opts: ExecOptions = {},
): Promise<ExecResult & { code: number | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    child.once('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') {
        const pkg = APT_HINT[cmd];
        reject(
          new BuildError(`${cmd} not found${pkg ? ` (apt-get install -y ${pkg})` : ''}`, {
            cause: e,
          }),
        );
      } else reject(e);
    });
    child.once('close', (code, signal) => {
      const r = {
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
        code,
      };
      if (code === 0 || opts.allowFailure) resolve(r);
      else {
        const tail = (r.stderr || r.stdout).trim().split('\n').slice(-15).join('\n');
        reject(
          new BuildError(
            `${cmd} ${args.join(' ')} failed (${signal ?? `exit ${code}`})${tail ? `:\n${tail}` : ''}`,
          ),
        );
      }
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
  });
}
