/**
 * `/v1/status`: what an operator checks first. Rates are measured over a
 * sliding window from the counters the log keeps, so they need no per-event work.
 */
import type { EventLog } from '../log/types.ts';
import type { ForwarderStatus } from '../forward/forwarder.ts';

export interface StatusSources {
  agentId: string;
  version: string;
  startedAt: number;
  log: EventLog;
  forwarder: () => ForwarderStatus;
  config: Record<string, unknown>;
  warnings: () => string[];
}

interface Sample {
  t: number;
  lastSeq: number;
  cursor: number;
}

/** Samples seq positions every few seconds; ingest rate = seq growth, forward rate = cursor growth. */
export class RateMeter {
  private readonly samples: Sample[] = [];
  private readonly log: EventLog;
  private readonly windowMs: number;
  private timer: NodeJS.Timeout | null = null;
  constructor(log: EventLog, windowMs = 60_000) {
    this.log = log;
    this.windowMs = windowMs;
  }
  start(intervalMs = 2_000): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }
  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }
  private sample(): void {
    const s = this.log.stats();
    const now = Date.now();
    this.samples.push({ t: now, lastSeq: s.lastSeq, cursor: s.cursor });
    while (this.samples.length > 2 && now - this.samples[0].t > this.windowMs) this.samples.shift();
  }
  /** Events per second over the window: [ingest, forward]. */
  rates(): { ingest: number; forward: number } {
    const s = this.log.stats();
    const first = this.samples[0];
    if (!first) return { ingest: 0, forward: 0 };
    const dt = (Date.now() - first.t) / 1000;
    if (dt < 0.5) return { ingest: 0, forward: 0 };
    return { ingest: (s.lastSeq - first.lastSeq) / dt, forward: (s.cursor - first.cursor) / dt };
  }
}

export function buildStatus(src: StatusSources, rates: RateMeter) {
  const s = src.log.stats();
  const now = Date.now();
  const r = rates.rates();
  const fwd = src.forwarder();
  return {
    agent_id: src.agentId,
    version: src.version,
    uptime_seconds: Math.round((now - src.startedAt) / 1000),
    link: {
      state: fwd.state,
      since: fwd.since,
      last_error: fwd.lastError,
      last_error_at: fwd.lastErrorAt,
      last_forward_at: fwd.lastForwardAt,
      paused: fwd.paused,
      consecutive_failures: fwd.consecutiveFailures,
    },
    backlog: {
      events: s.backlogEvents,
      bytes: s.backlogBytes,
      oldest_age_seconds: s.oldestTs === null ? null : Math.max(0, (now - s.oldestTs) / 1000),
      eta_seconds: s.backlogEvents === 0 ? 0 : r.forward > 0 ? Math.ceil(s.backlogEvents / r.forward) : null,
    },
    rates: { ingest_events_per_second: round(r.ingest), forward_events_per_second: round(r.forward) },
    log: { last_seq: s.lastSeq, cursor: s.cursor, commits: s.commits },
    dead_letters: { events: s.deadLetters, recent: src.log.listDeadLetters(10).map((d) => ({ seq: d.seq, topic: d.topic, reason: d.reason, dead_at: new Date(d.deadAt).toISOString(), bytes: d.value.length })) },
    drops: { events: 0 },
    warnings: src.warnings(),
  };
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}
