/**
 * `kedge dead-letters list|show|replay|purge`: asks the running agent over its local API
 * (dead-letter-routes.ts). When no agent answers (connection refused, or no
 * KEDGE_HTTP_LISTEN) and the data dir's lock is free, it opens the log in the data dir itself
 * and says so on stderr: the same answers, built by the same functions.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { request, type Dispatcher } from 'undici';
import type { Config } from '../config.ts';
import { effectiveDestinations } from '../destinations-config.ts';
import {
  DB_FILE,
  DeadLetterReplayUnsupported,
  DeadLetterUnknownDestination,
  LogOpenError,
  openLog,
  type DeadLetterAdmin,
  type EventLog,
} from '../log/index.ts';
import { formatBytes, formatDuration } from '../units.ts';
import { adminBaseUrl, adminDispatcher } from './cli.ts';
import {
  DeadLetterQueryError,
  filterIsEmpty,
  listAnswer,
  parseQuery,
  purgeAnswer,
  queryString,
  replayAnswer,
  showAnswer,
  type DeadLetterQuery,
  type ListAnswer,
} from './dead-letter-routes.ts';
import { KedgeError } from '../errors.ts';

export const DEAD_LETTERS_EXIT = {
  ok: 0,
  /** Nothing matched: list empty, show found no such seq, replay/purge touched none. */
  none: 1,
  usage: 2,
  /** No agent answered and the data dir is locked (or has no log). */
  unreachable: 3,
  /** The agent or the log refused: replay --destination with one destination, a log error. */
  refused: 4,
} as const;

export const DEAD_LETTERS_USAGE = `usage: kedge dead-letters <list|show|replay|purge> [options]

  list   [FILTERS] [--limit N] [--verbose] [--json]   groups by topic and reason: count, age, seqs
  show   SEQ [--json]                                 one dead letter: reason, kedge-id, headers, key, value
  replay (FILTERS | --all) [--json]                   re-queue them for forwarding, original kedge-id kept
                                                      (several destinations: each to its own only)
  purge  (FILTERS | --all) [--json]                   delete them, print the count

FILTERS: --topic T   --reason R (start of the reason, e.g. UNKNOWN_TOPIC_OR_PARTITION)
         --from SEQ  --to SEQ (both included)   --destination NAME (several destinations)
common:  --env-file PATH

Talks to the running agent; when none answers and the data dir is free, works on the data dir.
exit: 0 done, 1 nothing matched, 2 usage (or an unknown --destination), 3 no agent and the
      data dir locked or missing, 4 refused (replay --destination with one destination, log error)
`;

export class DeadLettersUsageError extends KedgeError {
  constructor(message: string) {
    super('KEDGE_USAGE', message);
    this.name = 'DeadLettersUsageError';
  }
}

export interface DeadLettersArgs {
  command: 'list' | 'show' | 'replay' | 'purge' | null;
  query: DeadLetterQuery;
  seq: number | null;
  json: boolean;
  verbose: boolean;
  envFile: string | null;
  help: boolean;
}

const COMMANDS = new Set(['list', 'show', 'replay', 'purge']);
const VALUE_OPTS: Record<string, string> = {
  '--topic': 'topic',
  '--reason': 'reason',
  '--from': 'from',
  '--to': 'to',
  '--destination': 'destination',
  '--limit': 'limit',
};

export function parseDeadLettersArgs(argv: string[]): DeadLettersArgs {
  let command: DeadLettersArgs['command'] = null;
  let seq: number | null = null;
  let json = false;
  let verbose = false;
  let help = false;
  let all = false;
  let envFile: string | null = null;
  const q = new URLSearchParams();
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    const eq = x.indexOf('=');
    const name = x.startsWith('--') && eq > 0 ? x.slice(0, eq) : x;
    const inline = name === x ? undefined : x.slice(eq + 1);
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined || v === '')
        throw new DeadLettersUsageError(`${name} needs a value (see kedge dead-letters --help)`);
      return v;
    };
    if (x === '--help' || x === '-h') help = true;
    else if (x === '--json') json = true;
    else if (x === '--verbose' || x === '-v') verbose = true;
    else if (x === '--all') all = true;
    else if (name === '--env-file') envFile = value();
    else if (name in VALUE_OPTS) q.set(VALUE_OPTS[name], value());
    else if (!x.startsWith('-') && command === null) {
      if (!COMMANDS.has(x))
        throw new DeadLettersUsageError(
          `unknown dead-letters command "${x}" (list, show, replay or purge)`,
        );
      command = x as DeadLettersArgs['command'];
    } else if (!x.startsWith('-') && command === 'show' && seq === null) {
      if (!/^\d{1,15}$/.test(x))
        throw new DeadLettersUsageError(`show needs a seq (a whole number), not "${x}"`);
      seq = Number(x);
    } else
      throw new DeadLettersUsageError(
        `unknown argument "${x}" for dead-letters (see kedge dead-letters --help)`,
      );
  }
  let query: DeadLetterQuery;
  try {
    query = parseQuery(q);
  } catch (e) {
    if (e instanceof DeadLetterQueryError)
      throw new DeadLettersUsageError(`--${e.message} (see kedge dead-letters --help)`);
    throw e;
  }
  query.all = all;
  if (!help) {
    if (command === null)
      throw new DeadLettersUsageError(
        'dead-letters needs a command: list, show, replay or purge (see kedge dead-letters --help)',
      );
    if (command === 'show' && seq === null)
      throw new DeadLettersUsageError('show needs a seq, e.g. kedge dead-letters show 42');
    if ((command === 'replay' || command === 'purge') && filterIsEmpty(query.filter) && !all)
      throw new DeadLettersUsageError(
        `${command} needs a filter (--topic, --reason, --from, --to, --destination) or --all`,
      );
  }
  return { command, query, seq, json, verbose, envFile, help };
}

/** What one command answers, online or offline: HTTP-like status and JSON body. */
type Answer = { status: number; body: AnswerBody };
interface AnswerBody {
  error?: string;
  detail?: string;
  total?: number;
  replayed?: number;
  first_seq?: number | null;
  last_seq?: number | null;
  purged?: number;
  dead_letters?: unknown[];
}

/** Runs the command against a log opened here (offline). */
async function offlineAnswer(admin: DeadLetterAdmin, args: DeadLettersArgs): Promise<Answer> {
  const q = args.query;
  try {
    switch (args.command) {
      case 'list':
        return { status: 200, body: listAnswer(admin, q) };
      case 'show': {
        const a = showAnswer(admin, args.seq!);
        return a.dead_letters.length
          ? { status: 200, body: a }
          : {
              status: 404,
              body: { error: 'not_found', detail: `no dead letter with seq ${args.seq}` },
            };
      }
      case 'replay':
        return { status: 200, body: await replayAnswer(admin, q) };
      default:
        return { status: 200, body: await purgeAnswer(admin, q) };
    }
  } catch (e) {
    if (e instanceof DeadLetterReplayUnsupported)
      return { status: 409, body: { error: 'not_supported', detail: e.message } };
    if (e instanceof DeadLetterUnknownDestination)
      return { status: 400, body: { error: 'bad_request', detail: e.message } };
    throw e;
  }
}

function route(args: DeadLettersArgs): { method: 'GET' | 'POST'; path: string } {
  const qs = queryString(args.query);
  switch (args.command) {
    case 'list':
      return { method: 'GET', path: `/v1/dead-letters${qs}` };
    case 'show':
      return { method: 'GET', path: `/v1/dead-letters/${args.seq}` };
    default:
      return { method: 'POST', path: `/v1/dead-letters/${args.command}${qs}` };
  }
}

type Online = { ok: true; answer: Answer } | { ok: false; refused: boolean; error: string };

/** How long list and show may take to answer. */
const QUERY_TIMEOUT_MS = 30_000;
/**
 * How long replay and purge may take: the agent works through a big table in chunks and
 * answers at the end; giving up earlier would leave it carrying on while the CLI says it failed.
 */
const BULK_TIMEOUT_MS = 10 * 60_000;

async function askAgent(
  cfg: Config,
  base: string,
  args: DeadLettersArgs,
  dispatcher: Dispatcher | undefined,
): Promise<Online> {
  const r = route(args);
  const timeout = r.method === 'POST' ? BULK_TIMEOUT_MS : QUERY_TIMEOUT_MS;
  try {
    const res = await request(base + r.path, {
      method: r.method,
      headersTimeout: timeout,
      bodyTimeout: timeout,
      dispatcher,
      headers: cfg.http.token ? { authorization: `Bearer ${cfg.http.token}` } : {},
    });
    const text = await res.body.text();
    let body: AnswerBody;
    try {
      body = JSON.parse(text) as AnswerBody;
    } catch {
      body = { error: `HTTP ${res.statusCode}`, detail: text.slice(0, 200) };
    }
    return { ok: true, answer: { status: res.statusCode, body } };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return { ok: false, refused: code === 'ECONNREFUSED', error: (e as Error).message };
  }
}

/** Opens the data dir's log and answers; null and a message when the dir is locked or has no log. */
async function workOffline(
  cfg: Config,
  args: DeadLettersArgs,
  why: string,
): Promise<{ answer: Answer } | { error: string }> {
  const dir = path.resolve(cfg.dataDir);
  if (!existsSync(path.join(dir, DB_FILE)))
    return { error: `${why}, and there is no log in ${dir} (KEDGE_DATA_DIR) to work on` };
  let log: EventLog;
  try {
    log = await openLog({ dir, driver: cfg.storage, sync: cfg.sync });
  } catch (e) {
    if (e instanceof LogOpenError)
      return {
        error: `${why}, and the data dir cannot be opened: ${e.message}${e.code === 'KEDGE_DATA_DIR_LOCKED' ? ' (is the agent running with its HTTP listener off or elsewhere?)' : ''}`,
      };
    throw e;
  }
  process.stderr.write(`kedge: ${why}; working offline on the data dir ${dir}\n`);
  try {
    const agentId = cfg.agentId ?? log.meta('agent_id') ?? 'unknown';
    // Several destinations (or routes): replay marks each row for its own, as the agent would.
    const several = cfg.destinations !== null || cfg.routes.length > 0;
    const names = several ? effectiveDestinations(cfg).map((d) => d.name) : null;
    return { answer: await offlineAnswer(log.deadLetterAdmin(agentId, names), args) };
  } finally {
    await log.close();
  }
}

function ago(iso: string, now: number): string {
  const ms = Math.max(0, now - Date.parse(iso));
  const unit = ms >= 3_600_000 ? 60_000 : 1000;
  return `${formatDuration(Math.round(ms / unit) * unit)} ago`;
}

function table(rows: string[][]): string {
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows
    .map((r) =>
      r
        .map((x, c) => x.padEnd(w[c]))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export function formatList(a: ListAnswer, verbose: boolean, now = Date.now()): string {
  if (a.total === 0) return 'no dead letters match';
  const several = a.groups.some((g) => g.destination !== null);
  const head = [
    ...(several ? ['DESTINATION'] : []),
    'TOPIC',
    'REASON',
    'COUNT',
    'BYTES',
    'OLDEST',
    'NEWEST',
    'SEQS',
  ];
  const rows = a.groups.map((g) => [
    ...(several ? [g.destination ?? '-'] : []),
    g.topic,
    g.reason,
    String(g.count),
    formatBytes(g.bytes),
    ago(g.oldest_dead_at, now),
    ago(g.newest_dead_at, now),
    g.first_seq === g.last_seq ? String(g.first_seq) : `${g.first_seq}..${g.last_seq}`,
  ]);
  const lines = [table([head, ...rows]), `${a.total} dead letter${a.total === 1 ? '' : 's'}`];
  if (verbose) {
    lines.push(
      '',
      table([
        ['SEQ', ...(several ? ['DESTINATION'] : []), 'KEDGE-ID', 'TOPIC', 'DEAD AT', 'REASON'],
        ...a.events.map((e) => [
          String(e.seq),
          ...(several ? [e.destination ?? '-'] : []),
          e.kedge_id,
          e.topic,
          e.dead_at,
          e.reason,
        ]),
      ]),
    );
    if (a.events.length < a.total)
      lines.push(`(first ${a.events.length} of ${a.total}; --limit N for more)`);
  }
  return lines.join('\n');
}

function formatShow(body: ReturnType<typeof showAnswer>): string {
  const out: string[] = [];
  for (const d of body.dead_letters) {
    const bytes = (b: (typeof d)['value']) =>
      b.bytes === null
        ? '(none)'
        : `${b.text !== null ? JSON.stringify(b.text) : `base64 ${b.base64}`} (${b.bytes} bytes${b.truncated ? ', truncated' : ''})`;
    out.push(
      `seq       ${d.seq}${d.destination !== null ? ` (destination ${d.destination})` : ''}`,
      `kedge-id  ${d.kedge_id}`,
      `topic     ${d.topic} (${d.lane} lane)`,
      `reason    ${d.reason}`,
      `dead at   ${d.dead_at}`,
      `ingested  ${d.ingest_ts}`,
      `headers   ${Object.keys(d.headers).length ? JSON.stringify(d.headers) : '(none)'}`,
      `key       ${bytes(d.key)}`,
      `value     ${bytes(d.value)}`,
      '',
    );
  }
  return out.join('\n').trimEnd();
}

function exitFor(args: DeadLettersArgs, a: Answer): number {
  if (a.status === 404) return DEAD_LETTERS_EXIT.none;
  if (a.status === 400) return DEAD_LETTERS_EXIT.usage;
  if (a.status !== 200) return DEAD_LETTERS_EXIT.refused;
  const b = a.body;
  const n = args.command === 'list' ? b.total : args.command === 'replay' ? b.replayed : b.purged;
  return args.command === 'show' || (n ?? 0) > 0 ? DEAD_LETTERS_EXIT.ok : DEAD_LETTERS_EXIT.none;
}

function print(args: DeadLettersArgs, a: Answer): void {
  if (args.json) {
    process.stdout.write(`${JSON.stringify(a.body, null, 2)}\n`);
    if (a.status !== 200 && a.status !== 404)
      process.stderr.write(`kedge: ${a.body.detail ?? a.body.error}\n`);
    return;
  }
  if (a.status === 404 && args.command === 'show') {
    process.stdout.write(`${a.body.detail ?? 'not found'}\n`);
    return;
  }
  if (a.status !== 200) {
    process.stderr.write(`kedge: ${a.body.detail ?? a.body.error ?? `HTTP ${a.status}`}\n`);
    return;
  }
  const b = a.body;
  let text: string;
  if (args.command === 'list') text = formatList(b as ListAnswer, args.verbose);
  else if (args.command === 'show') text = formatShow(b as ReturnType<typeof showAnswer>);
  else if (args.command === 'replay')
    text =
      b.replayed === 0
        ? 'no dead letters match; nothing replayed'
        : `replayed ${b.replayed} dead letter${b.replayed === 1 ? '' : 's'} (queued as seq ${b.first_seq}..${b.last_seq}); they are forwarded in order with their original kedge-id`;
  else text = `purged ${b.purged} dead letter${b.purged === 1 ? '' : 's'}`;
  process.stdout.write(`${text}\n`);
}

export async function runDeadLetters(cfg: Config, args: DeadLettersArgs): Promise<number> {
  const base = adminBaseUrl(cfg);
  let answer: Answer | null = null;
  let why: string;
  if (base === null) why = 'KEDGE_HTTP_LISTEN is empty, so there is no agent API to ask';
  else {
    const pinned = adminDispatcher(cfg, 'dead-letters');
    if (!pinned.ok) {
      process.stderr.write(`kedge: ${pinned.error}\n`);
      return DEAD_LETTERS_EXIT.unreachable;
    }
    try {
      const r = await askAgent(cfg, base, args, pinned.dispatcher);
      if (r.ok) answer = r.answer;
      else if (!r.refused) {
        // Something answers oddly (a timeout, TLS): not safe to assume the agent is down.
        process.stderr.write(`kedge: no answer from the agent at ${base}: ${r.error}\n`);
        return DEAD_LETTERS_EXIT.unreachable;
      }
      why = `no agent answers at ${base}`;
    } finally {
      await pinned.dispatcher?.close();
    }
  }
  if (answer === null) {
    const off = await workOffline(cfg, args, why);
    if ('error' in off) {
      process.stderr.write(`kedge: ${off.error}\n`);
      return DEAD_LETTERS_EXIT.unreachable;
    }
    answer = off.answer;
  }
  if (answer.status === 401) {
    process.stderr.write(
      'kedge: the agent wants a token: set KEDGE_HTTP_TOKEN (or --env-file with it) as the agent has it\n',
    );
    return DEAD_LETTERS_EXIT.refused;
  }
  print(args, answer);
  return exitFor(args, answer);
}

/** The `dead-letters` entry of agent/cli.ts's TOOLS table. */
export async function deadLettersTool(
  argv: string[],
  ctx: { config(envFile: string | null): Config; fail(msg: string, code?: number): never },
): Promise<number> {
  let args: DeadLettersArgs;
  try {
    args = parseDeadLettersArgs(argv);
  } catch (e) {
    if (e instanceof DeadLettersUsageError) ctx.fail(e.message, DEAD_LETTERS_EXIT.usage);
    throw e;
  }
  if (args.help) {
    process.stdout.write(DEAD_LETTERS_USAGE);
    return DEAD_LETTERS_EXIT.ok;
  }
  return runDeadLetters(ctx.config(args.envFile), args);
}
