/**
 * Helpers of the destination and route tests: the status document, polling it, and the
 * independent computation of a `deadband | window` route (test/tools/route-reference.py) over
 * raw records read back with kcat.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO, sleep } from './agent.ts';
import type { KcatRecord } from './kcat.ts';

export async function statusOf(base: string): Promise<any> {
  return (await fetch(`${base}/v1/status`)).json();
}

/** Polls `check` until it returns a value (not undefined), at most `ms`. */
export async function until<T>(
  what: string,
  ms: number,
  check: () => Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(200);
  }
}

/** One destination's section of a status document. */
export const destOf = (s: any, name: string): any =>
  s.destinations.find((d: any) => d.name === name);

export interface ReferenceArgs {
  agent: string;
  destination: string;
  route: string;
  field: string;
  delta: number;
  windowMs: number;
  /** Windows ending after this are still open: left out. */
  until: number;
}

/**
 * The windows route-reference.py computes from raw records (each once: dedupe by kedge-id
 * first), as kedge-id → the record's JSON value. Throws when the script fails.
 */
export function routeReference(raw: KcatRecord[], a: ReferenceArgs): Record<string, unknown> {
  const input = raw
    .map((r) =>
      JSON.stringify({
        seq: Number(r.headers['kedge-id'].split(':').pop()),
        key: r.key!.toString(),
        ts: Number(r.headers['kedge-ingest-ts']),
        value: r.value.toString(),
      }),
    )
    .join('\n');
  const py = spawnSync(
    'python3',
    [
      join(REPO, 'test/tools/route-reference.py'),
      a.agent,
      a.destination,
      a.route,
      a.field,
      String(a.delta),
      String(a.windowMs),
      String(a.until),
    ],
    { input, encoding: 'utf8', maxBuffer: 1 << 28 },
  );
  if (py.status !== 0) throw new Error(`route-reference.py failed (${py.status}): ${py.stderr}`);
  return JSON.parse(py.stdout) as Record<string, unknown>;
}
