/** `kedge status`: asks the running agent over its local API (undici) and summarises. */
import { request } from 'undici';
import type { Config } from '../config.ts';
import { formatBytes, formatDuration } from '../units.ts';

export const STATUS_EXIT = { healthy: 0, degraded: 1, unreachable: 3 } as const;

export async function runStatus(cfg: Config, opts: { json: boolean }): Promise<number> {
  const l = cfg.http.listen;
  if (!l) {
    process.stderr.write('kedge: KEDGE_HTTP_LISTEN is empty, so there is no local API to ask\n');
    return STATUS_EXIT.unreachable;
  }
  const host = l.host === '0.0.0.0' ? '127.0.0.1' : l.host === '::' ? '[::1]' : l.host.includes(':') && !l.host.startsWith('[') ? `[${l.host}]` : l.host;
  const url = `${cfg.http.tlsCert ? 'https' : 'http'}://${host}:${l.port}/v1/status`;
  let s: any;
  try {
    const res = await request(url, { headersTimeout: 5_000, bodyTimeout: 5_000 });
    if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}`);
    s = await res.body.json();
  } catch (e) {
    process.stderr.write(`kedge: no answer from the agent at ${url}: ${(e as Error).message} (is the service running?)\n`);
    return STATUS_EXIT.unreachable;
  }
  const healthy = s.link?.state === 'up' || (s.link?.state === 'starting' && s.backlog?.events === 0);
  if (opts.json) {
    process.stdout.write(JSON.stringify(s, null, 2) + '\n');
  } else {
    const b = s.backlog;
    const lines = [
      `agent    ${s.agent_id} (kedge ${s.version}, up ${formatDuration(s.uptime_seconds * 1000)})`,
      `link     ${s.link.state} since ${s.link.since}${s.link.last_error ? `\n         last error: ${s.link.last_error}` : ''}`,
      `backlog  ${b.events} events, ${formatBytes(b.bytes)}${b.oldest_age_seconds !== null ? `, oldest ${formatDuration(b.oldest_age_seconds * 1000)} old` : ''}${b.events > 0 ? `, ETA ${b.eta_seconds === null ? 'unknown (not draining)' : formatDuration(b.eta_seconds * 1000)}` : ''}`,
      `rates    in ${s.rates.ingest_events_per_second}/s, out ${s.rates.forward_events_per_second}/s`,
      `dead     ${s.dead_letters.events} dead-lettered events`,
    ];
    for (const w of s.warnings ?? []) lines.push(`warning  ${w}`);
    process.stdout.write(lines.join('\n') + '\n');
  }
  return healthy ? STATUS_EXIT.healthy : STATUS_EXIT.degraded;
}
