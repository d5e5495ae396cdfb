/**
 * Workers (load generator, baselines) run as forked child processes on the
 * same Node as the bench: separate event loops and separate CPU accounting.
 * One request message in, progress messages and one result message out.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

export const WORKERS = join(import.meta.dirname, '..', 'workers');

export interface Worker<R> {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Resolves with the worker's result; rejects on its error, exit, or the timeout. */
  readonly result: Promise<R>;
  kill(): void;
}

export interface WorkerMessage<R> {
  ok?: boolean;
  result?: R;
  error?: string;
  progress?: unknown;
  ready?: unknown;
}

export function startWorker<R>(
  script: string,
  request: unknown,
  opts: {
    timeoutMs: number;
    execArgv?: string[];
    onProgress?: (p: any) => void;
    onReady?: (info: any) => void;
  },
): Worker<R> {
  const child = fork(join(WORKERS, script), [], {
    execArgv: opts.execArgv ?? [],
    stdio: ['ignore', 'inherit', 'pipe', 'ipc'],
    serialization: 'advanced',
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const result = new Promise<R>((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      child.kill('SIGKILL');
      reject(new Error(`${script} did not finish within ${opts.timeoutMs} ms`));
    }, opts.timeoutMs);
    child.on('message', (m: WorkerMessage<R>) => {
      if (m.progress !== undefined) return opts.onProgress?.(m.progress);
      if (m.ready !== undefined) return opts.onReady?.(m.ready);
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (m.ok) resolve(m.result as R);
      else reject(new Error(`${script} failed: ${m.error}`));
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      reject(
        new Error(
          `${script} exited (${code ?? signal}) without a result${stderr ? `:\n${stderr}` : ''}`,
        ),
      );
    });
  });
  child.send(request as never);
  return {
    child,
    pid: child.pid!,
    result,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}
