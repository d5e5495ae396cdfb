/**
 * `kedge status [--json] [--watch [--count N]]`: asks the running agent over its local
 * API (undici) and summarises. The exit code makes it a health check:
 * 0 healthy, 1 degraded (Kafka link degraded or down), 3 unreachable.
 */
import { readFileSync } from 'node:fs';
import { request, type Dispatcher } from 'undici';
import { pinnedDispatcher } from './local-tls.ts';
import type { Config } from '../config.ts';
import { formatBytes, formatDuration } from '../units.ts';
import type { LinkState } from '../observe/metrics.ts';
import type { Lane } from '../log/types.ts';
import type { AgentStatus } from './document.ts';

export const STATUS_EXIT = { healthy: 0, degraded: 1, unreachable: 3 } as const;

/**
 * Link states that need no action: up, paused by the operator, outside a transfer window
 * (waiting by policy), starting (first connect in progress). Everything else (degraded,
 * down, a state this CLI does not know) is degraded.
 */
export const HEALTHY_LINK_STATES: ReadonlySet<string> = new Set<LinkState>([
  'up',
  'paused',
  'outside-window',
  'starting',
]);

export interface StatusCliOptions {
  json: boolean;
  watch: boolean;
  /** --watch: stop after this many screens (null: until Ctrl-C). */
  count: number | null;
  /** Default process.stdout. */
  out?: NodeJS.WriteStream;
}

type Fetched = { ok: true; status: AgentStatus; raw: unknown } | { ok: false; error: string };

export function statusUrl(cfg: Config): string | null {
  const base = adminBaseUrl(cfg);
  return base === null ? null : `${base}/v1/status`;
}

/** The local API's base URL (`http[s]://host:port`, loopback for a wildcard listen), or null without KEDGE_HTTP_LISTEN. */
export function adminBaseUrl(cfg: Config): string | null {
  const l = cfg.http.listen;
  if (!l) return null;
  const host =
    l.host === '0.0.0.0'
      ? '127.0.0.1'
      : l.host === '::'
        ? '[::1]'
        : l.host.includes(':') && !l.host.startsWith('[')
          ? `[${l.host}]`
          : l.host;
  return `${cfg.http.tlsCert ? 'https' : 'http'}://${host}:${l.port}`;
}

export function exitCodeFor(s: AgentStatus): number {
  return unhealthyLinks(s).length === 0 ? STATUS_EXIT.healthy : STATUS_EXIT.degraded;
}

/** Links not healthy: the one link, or each destination's ("cloud down"). */
function unhealthyLinks(s: AgentStatus): string[] {
  if (s.destinations && s.destinations.length > 0)
    return s.destinations
      .filter((d) => !HEALTHY_LINK_STATES.has(d.link.state))
      .map((d) => `${d.name} ${d.link.state}`);
  return HEALTHY_LINK_STATES.has(s.link?.state) ? [] : [s.link?.state ?? 'unknown'];
}

async function fetchStatus(url: string, dispatcher?: Dispatcher): Promise<Fetched> {
  try {
    const res = await request(url, { headersTimeout: 5_000, bodyTimeout: 5_000, dispatcher });
    if (res.statusCode !== 200) {
      await res.body.dump();
      return { ok: false, error: `HTTP ${res.statusCode}` };
    }
    const raw = await res.body.json();
    return { ok: true, status: raw as AgentStatus, raw };
  } catch (e) {
    return { ok: false, error: (e as Error).message };
  }
}

/** Human durations: seconds precision below an hour, minutes above. */
function human(ms: number): string {
  const unit = ms >= 3_600_000 ? 60_000 : 1000;
  return formatDuration(Math.round(ms / unit) * unit);
}

function rate(n: number): string {
  return `${n.toLocaleString('en-US', { maximumFractionDigits: 1 })}/s`;
}

function count(n: number): string {
  return n.toLocaleString('en-US');
}

function dropReasons(s: AgentStatus): string {
  const byReason: Record<string, number> =
    s.drops && 'by_reason' in s.drops ? s.drops.by_reason : {};
  const r = Object.entries(byReason).filter(([, v]) => v > 0);
  return r.length ? ` (${r.map(([k, v]) => `${k} ${count(v)}`).join(', ')})` : '';
}

function eta(s: AgentStatus): string {
  const b = s.backlog;
  if (b.events === 0) return '';
  if (b.eta_seconds === null) return ', ETA unknown (not draining)';
  // The ETA's own rate (the current drain's), not the minute-long average shown under rates.
  return `, ETA ${human(b.eta_seconds * 1000)} at ${rate(b.eta_seconds > 0 ? b.events / b.eta_seconds : s.rates.forward_events_per_second)}`;
}

/** `[#######-------------]  35 %` */
export function progressBar(done: number, total: number, width = 30): string {
  const f = total <= 0 ? 1 : Math.min(1, Math.max(0, done / total));
  const n = Math.round(f * width);
  return `[${'#'.repeat(n)}${'-'.repeat(width - n)}] ${String(Math.floor(f * 100)).padStart(3)} %`;
}

export function formatStatus(s: AgentStatus, now = Date.now()): string {
  const b = s.backlog;
  const since = Date.parse(s.link.since);
  const lines = [
    `agent    ${s.agent_id} (kedge ${s.version}, up ${human(s.uptime_seconds * 1000)})`,
    `link     ${s.link.state} since ${s.link.since} (${human(Math.max(0, now - since))})`,
  ];
  if (s.link.last_error)
    lines.push(
      `         last error${s.link.last_error_at ? ` at ${s.link.last_error_at}` : ''}: ${s.link.last_error}`,
    );
  if (s.link.last_forward_at) lines.push(`         last forward ${s.link.last_forward_at}`);
  for (const d of s.destinations ?? []) {
    const held = [d.lanes.bulk.held_from_seq, d.lanes.priority.held_from_seq].filter(
      (x): x is number => x !== null,
    );
    lines.push(
      `dest     ${d.name}: ${d.link.state} since ${d.link.since}, backlog ${count(d.backlog.events)} events${d.backlog.events === 0 ? '' : d.backlog.eta_seconds === null ? ', eta unknown' : `, eta ${human(d.backlog.eta_seconds * 1000)}`}${d.routes.length > 0 ? `, routes ${d.routes.join(',')}` : ''}${held.length > 0 ? `, open windows hold from seq ${Math.min(...held)}` : ''}${d.dead_letters > 0 ? `, ${count(d.dead_letters)} dead-lettered` : ''}${d.dropped_events > 0 ? `, ${count(d.dropped_events)} dropped` : ''}`,
    );
    if (d.link.last_error && !HEALTHY_LINK_STATES.has(d.link.state))
      lines.push(`         ${d.name} last error: ${d.link.last_error}`);
  }
  lines.push(
    `backlog  ${count(b.events)} events, ${formatBytes(b.bytes)}${b.oldest_age_seconds !== null ? `, oldest ${human(b.oldest_age_seconds * 1000)} old` : ''}${eta(s)}`,
  );
  const l = lanesLine(s);
  if (l) lines.push(l);
  lines.push(
    `rates    in ${rate(s.rates.ingest_events_per_second)}, out ${rate(s.rates.forward_events_per_second)}`,
    `drops    ${count(s.drops?.events ?? 0)} events dropped${dropReasons(s)}`,
    `dead     ${count(s.dead_letters.events)} dead-lettered events`,
  );
  const d = s.disk;
  if (d && d.bytes !== null) {
    lines.push(
      `disk     ${formatBytes(d.bytes)}${d.quota_bytes ? ` of ${formatBytes(d.quota_bytes)} quota (${Math.round((100 * d.bytes) / d.quota_bytes)} %)` : ' (no quota)'}`,
    );
  }
  const w = writesLine(s);
  if (w) lines.push(w);
  const h = s.heartbeat;
  if (h)
    lines.push(
      `beat     ${h.sent} heartbeats sent to ${h.topic}${h.last_sent_at ? `, last ${h.last_sent_at}` : ''}${h.failures ? `, ${h.failures} failed${h.last_error ? ` (${h.last_error})` : ''}` : ''}`,
    );
  for (const w of s.warnings ?? []) lines.push(`warning  ${w}`);
  lines.push(
    `health   ${exitCodeFor(s) === STATUS_EXIT.healthy ? 'healthy' : s.destinations?.length ? `degraded: ${unhealthyLinks(s).join(', ')}` : `degraded: Kafka link ${s.link.state}`}`,
  );
  return lines.join('\n');
}

/**
 * `lanes    priority 200 events, 20KiB, ETA 1s; bulk 1,000 events, 100KiB, ETA 5s`, only while
 * the priority lane (KEDGE_PRIORITY_TOPICS) holds a backlog: then the operator sees that it
 * drains first; otherwise the backlog line says it all. null from an agent without lanes.
 */
function lanesLine(s: AgentStatus): string | null {
  if (!s.lanes || s.lanes.priority.backlog_events === 0) return null;
  const one = (name: Lane) => {
    const x = s.lanes[name];
    const eta =
      x.backlog_events === 0
        ? ''
        : x.eta_seconds === null
          ? ', ETA unknown'
          : `, ETA ${human(x.eta_seconds * 1000)}`;
    return `${name} ${count(x.backlog_events)} events, ${formatBytes(x.backlog_bytes)}${x.oldest_age_seconds !== null ? `, oldest ${human(x.oldest_age_seconds * 1000)} old` : ''}${eta}`;
  };
  return `lanes    ${one('priority')}; ${one('bulk')}`;
}

/** `writes   1.2GiB written to disk for 310MiB ingested (3.9× write amplification, …)`; null from an agent that does not report it. */
function writesLine(s: AgentStatus): string | null {
  const d = s.disk;
  if (!d || d.written_bytes === undefined) return null;
  if (d.written_bytes === null || d.ingested_bytes === null)
    return `writes   not measured: ${d.write_amplification_reason ?? 'unknown reason'}`;
  const head = `writes   ${formatBytes(d.written_bytes)} written to disk`;
  if (d.write_amplification === null) return `${head}, nothing ingested yet`;
  const recent =
    d.write_amplification_recent !== null && d.write_amplification_window_seconds !== null
      ? `, ${d.write_amplification_recent}× over the last ${human(d.write_amplification_window_seconds * 1000)}`
      : '';
  return `${head} for ${formatBytes(d.ingested_bytes)} ingested (${d.write_amplification}× write amplification${recent})`;
}

/** One line for --watch on a pipe or a file. */
function formatLine(s: AgentStatus, bar: string | null, now = Date.now()): string {
  const b = s.backlog;
  return `${new Date(now).toISOString()} link=${s.link.state} backlog=${b.events} (${formatBytes(b.bytes)}) eta=${b.events === 0 ? '0s' : b.eta_seconds === null ? 'unknown' : human(b.eta_seconds * 1000)} in=${rate(s.rates.ingest_events_per_second)} out=${rate(s.rates.forward_events_per_second)}${bar ? ` ${bar}` : ''}`;
}

/**
 * The dispatcher that reaches the local API: with KEDGE_HTTP_TLS_CERT, one pinned to that
 * certificate (undefined: plain HTTP). `tool` names the command in the error.
 */
export function adminDispatcher(
  cfg: Config,
  tool: string,
): { ok: true; dispatcher: Dispatcher | undefined } | { ok: false; error: string } {
  if (!cfg.http.tlsCert) return { ok: true, dispatcher: undefined };
  try {
    return {
      ok: true,
      dispatcher: pinnedDispatcher(readFileSync(cfg.http.tlsCert), cfg.http.tlsCert),
    };
  } catch (e) {
    return {
      ok: false,
      error: `cannot read KEDGE_HTTP_TLS_CERT ${cfg.http.tlsCert} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); ${tool} needs it to reach the HTTPS listener`,
    };
  }
}

export async function runStatus(cfg: Config, opts: StatusCliOptions): Promise<number> {
  const url = statusUrl(cfg);
  if (!url) {
    process.stderr.write(
      'kedge: KEDGE_HTTP_LISTEN is empty, so there is no local API to ask (set it, e.g. 127.0.0.1:8780)\n',
    );
    return STATUS_EXIT.unreachable;
  }
  const out = opts.out ?? process.stdout;
  const pinned = adminDispatcher(cfg, 'status');
  if (!pinned.ok) {
    process.stderr.write(`kedge: ${pinned.error}\n`);
    return STATUS_EXIT.unreachable;
  }
  const dispatcher = pinned.dispatcher;
  try {
    if (opts.watch) return await watch(url, opts, out, dispatcher);
    return await once(url, opts, out, dispatcher);
  } finally {
    await dispatcher?.close();
  }
}

async function once(
  url: string,
  opts: StatusCliOptions,
  out: NodeJS.WriteStream,
  dispatcher: Dispatcher | undefined,
): Promise<number> {
  const r = await fetchStatus(url, dispatcher);
  if (!r.ok) {
    process.stderr.write(
      `kedge: no answer from the agent at ${url}: ${r.error} (is the service running?)\n`,
    );
    return STATUS_EXIT.unreachable;
  }
  out.write((opts.json ? JSON.stringify(r.raw, null, 2) : formatStatus(r.status)) + '\n');
  return exitCodeFor(r.status);
}

/**
 * Redraws every second (a terminal: clear and redraw; a pipe: one line per second) until
 * Ctrl-C or `count` screens. While a backlog drains, a progress bar measures it against the
 * largest backlog seen since the watch began.
 */
async function watch(
  url: string,
  opts: StatusCliOptions,
  out: NodeJS.WriteStream,
  dispatcher: Dispatcher | undefined,
): Promise<number> {
  const tty = Boolean(out.isTTY) && !opts.json;
  let stopped = false;
  let wake: (() => void) | null = null;
  const onSigint = () => {
    stopped = true;
    wake?.();
  };
  process.on('SIGINT', onSigint);
  let code: number = STATUS_EXIT.unreachable;
  let peak = 0;
  try {
    for (let n = 0; !stopped && (opts.count === null || n < opts.count); n++) {
      if (n > 0)
        await new Promise<void>((r) => {
          const t = setTimeout(r, 1_000);
          wake = () => {
            clearTimeout(t);
            r();
          };
        });
      if (stopped) break;
      const r = await fetchStatus(url, dispatcher);
      if (!r.ok) {
        code = STATUS_EXIT.unreachable;
        const msg = `no answer from the agent at ${url}: ${r.error}`;
        out.write(tty ? `\x1b[H\x1b[2J${msg}\n` : `${new Date().toISOString()} ${msg}\n`);
        continue;
      }
      const s = r.status;
      code = exitCodeFor(s);
      peak = Math.max(peak, s.backlog.events);
      // A bar only while there is (or was, during this watch) a backlog to drain.
      const bar =
        peak > 0 ? `${progressBar(peak - s.backlog.events, peak)} drained of ${count(peak)}` : null;
      if (opts.json) out.write(JSON.stringify(r.raw) + '\n');
      else if (tty)
        out.write(
          `\x1b[H\x1b[2J${formatStatus(s)}\n${bar ? `progress ${bar}\n` : ''}(every second; Ctrl-C to stop)\n`,
        );
      else out.write(formatLine(s, bar) + '\n');
    }
  } finally {
    process.off('SIGINT', onSigint);
  }
  return code;
}
