/**
 * `kedge tap [pattern] [--limit N] [--json] [--env-file PATH]`: follows GET /v1/tap of the
 * running agent (found like `kedge status` finds it: KEDGE_HTTP_LISTEN, KEDGE_HTTP_TLS_CERT,
 * KEDGE_HTTP_TOKEN) and prints one line per event as it is committed.
 * Exit 0 after --limit events or Ctrl-C, 1 the agent refused the tap, 2 usage, 3 unreachable
 * (or went away while tapping).
 */
import { request } from 'undici';
import type { Config } from '../config.ts';
import { checkPattern, RouteSyntaxError } from '../route-syntax.ts';
import { formatBytes } from '../units.ts';
import { adminBaseUrl, adminDispatcher } from './cli.ts';
import type { TapLine } from './tap.ts';
import { KedgeError } from '../errors.ts';

export const TAP_EXIT = { ok: 0, refused: 1, usage: 2, unreachable: 3 } as const;

export const TAP_USAGE = `usage: kedge tap [pattern] [--limit N] [--json] [--env-file PATH]

Shows the events the running agent stores, as they are committed: seq, topic, key, size and
the start of the value. pattern: Kafka topic names, * for one segment, # for the rest
(default #: every topic), e.g. sensors.#  or  sensors.*.temp
  --limit N         stop after N events
  --json            print the agent's NDJSON lines as received
  --env-file PATH   read the configuration (KEDGE_HTTP_LISTEN, token, TLS) from this file
exit 0 after --limit events or Ctrl-C, 1 the agent refused, 2 usage, 3 agent unreachable
`;

/** A user mistake on the command line (exit 2, one line). */
export class TapUsageError extends KedgeError {
  constructor(message: string) {
    super('KEDGE_USAGE', message);
    this.name = 'TapUsageError';
  }
}

export interface TapArgs {
  pattern: string;
  limit: number | null;
  json: boolean;
  envFile: string | null;
  help: boolean;
}

/** Parses the arguments after `tap`; throws TapUsageError. */
export function parseTapArgs(argv: string[]): TapArgs {
  const a: TapArgs = { pattern: '#', limit: null, json: false, envFile: null, help: false };
  let sawPattern = false;
  const value = (flag: string, i: number, inline: string | null): string => {
    const v = inline ?? argv[i];
    if (v === undefined || v === '') throw new TapUsageError(`${flag} needs a value`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    const eq = x.startsWith('--') ? x.indexOf('=') : -1;
    const flag = eq === -1 ? x : x.slice(0, eq);
    const inline = eq === -1 ? null : x.slice(eq + 1);
    if (x === '--help' || x === '-h') a.help = true;
    else if (x === '--json') a.json = true;
    else if (flag === '--limit') {
      const v = value('--limit', inline === null ? ++i : i, inline);
      if (!/^[1-9]\d{0,8}$/.test(v))
        throw new TapUsageError(
          `--limit needs a whole number of events from 1, e.g. --limit 100 (got ${JSON.stringify(v)})`,
        );
      a.limit = Number(v);
    } else if (flag === '--env-file') {
      a.envFile = value('--env-file', inline === null ? ++i : i, inline);
    } else if (x.startsWith('-') && x !== '-')
      throw new TapUsageError(`unknown option "${x}" for tap (see kedge tap --help)`);
    else if (sawPattern)
      throw new TapUsageError(
        `tap takes one topic pattern, got a second: "${x}" (use # or * to match several topics)`,
      );
    else {
      sawPattern = true;
      a.pattern = x;
      try {
        checkPattern(x, 1);
      } catch (e) {
        if (e instanceof RouteSyntaxError)
          throw new TapUsageError(`topic pattern "${x}" ${e.message}`);
        throw e;
      }
    }
  }
  return a;
}

/** One human line: `seq 1234  sensors.line1.temp  key=k1  152B  {"t":21.5,…` */
export function formatTapLine(l: TapLine): string {
  const key =
    l.key === null ? '' : `  key=${l.key_encoding === 'base64' ? `base64:${l.key}` : l.key}`;
  const preview = `${l.preview_encoding === 'base64' ? `base64:${l.preview}` : l.preview}${l.truncated ? '…' : ''}`;
  // A newline in a value would break the one-line-per-event layout.
  return `seq ${l.seq}  ${l.topic}${key}  ${formatBytes(l.size)}  ${preview.replace(/[\r\n]+/g, ' ')}`;
}

/** `kedge tap`: returns the exit code. */
export async function runTap(cfg: Config, args: TapArgs): Promise<number> {
  const base = adminBaseUrl(cfg);
  if (base === null) {
    process.stderr.write(
      'kedge: KEDGE_HTTP_LISTEN is empty, so there is no local API to tap (set it, e.g. 127.0.0.1:8780)\n',
    );
    return TAP_EXIT.unreachable;
  }
  const pinned = adminDispatcher(cfg, 'tap');
  if (!pinned.ok) {
    process.stderr.write(`kedge: ${pinned.error}\n`);
    return TAP_EXIT.unreachable;
  }
  const q = new URLSearchParams({ pattern: args.pattern });
  if (args.limit !== null) q.set('limit', String(args.limit));
  const url = `${base}/v1/tap?${q}`;
  const abort = new AbortController();
  let interrupted = false;
  const onSigint = () => {
    interrupted = true;
    abort.abort();
  };
  process.on('SIGINT', onSigint);
  let events = 0;
  let dropped = 0;
  try {
    let res: Awaited<ReturnType<typeof request>>;
    try {
      res = await request(url, {
        headers: {
          accept: 'application/x-ndjson',
          ...(cfg.http.token ? { authorization: `Bearer ${cfg.http.token}` } : {}),
        },
        headersTimeout: 5_000,
        // A quiet topic may send nothing for hours: no timeout between events.
        bodyTimeout: 0,
        dispatcher: pinned.dispatcher,
        signal: abort.signal,
      });
    } catch (e) {
      if (interrupted) return TAP_EXIT.ok;
      process.stderr.write(
        `kedge: no answer from the agent at ${base}: ${(e as Error).message} (is the service running?)\n`,
      );
      return TAP_EXIT.unreachable;
    }
    if (res.statusCode !== 200) {
      const text = await res.body.text().catch(() => '');
      let detail = text.trim();
      try {
        const j = JSON.parse(text) as { error?: string; detail?: string };
        detail = `${j.error ?? ''}: ${j.detail ?? ''}`;
      } catch {
        /* not JSON: shown as it is */
      }
      process.stderr.write(`kedge: the agent refused the tap (HTTP ${res.statusCode} ${detail})\n`);
      return TAP_EXIT.refused;
    }
    process.stderr.write(
      `kedge: tapping ${args.pattern} at ${base}${args.limit !== null ? `, ${args.limit} events` : ''} (Ctrl-C to stop)\n`,
    );
    let buf = '';
    try {
      for await (const chunk of res.body) {
        buf += (chunk as Buffer).toString('utf8');
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const raw = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (raw === '') continue;
          const obj = JSON.parse(raw) as TapLine | { dropped: number };
          if ('dropped' in obj) dropped += obj.dropped;
          else events++;
          if (args.json) process.stdout.write(`${raw}\n`);
          else if ('dropped' in obj)
            process.stdout.write(
              `-- ${obj.dropped} events not shown here: this viewer fell behind (they are stored) --\n`,
            );
          else process.stdout.write(`${formatTapLine(obj)}\n`);
        }
      }
    } catch (e) {
      if (interrupted) return TAP_EXIT.ok;
      process.stderr.write(`kedge: the tap stream broke: ${(e as Error).message}\n`);
      return TAP_EXIT.unreachable;
    }
    if (interrupted || (args.limit !== null && events >= args.limit)) return TAP_EXIT.ok;
    process.stderr.write('kedge: the agent ended the tap (it is stopping)\n');
    return TAP_EXIT.unreachable;
  } finally {
    process.off('SIGINT', onSigint);
    if (dropped > 0)
      process.stderr.write(
        `kedge: ${dropped} events were not shown (this viewer fell behind; they are stored and forwarded)\n`,
      );
    await pinned.dispatcher?.close();
  }
}

/** The `tap` entry of agent/cli.ts's TOOLS table. */
export async function tapTool(
  argv: string[],
  ctx: { config(envFile: string | null): Config; fail(msg: string, code?: number): never },
): Promise<number> {
  let args: TapArgs;
  try {
    args = parseTapArgs(argv);
  } catch (e) {
    if (e instanceof TapUsageError) ctx.fail(e.message, TAP_EXIT.usage);
    throw e;
  }
  if (args.help) {
    process.stdout.write(TAP_USAGE);
    return TAP_EXIT.ok;
  }
  return runTap(ctx.config(args.envFile), args);
}
