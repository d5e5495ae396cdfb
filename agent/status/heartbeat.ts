/**
 * Fleet heartbeat: while the Kafka link is up, one small JSON record of the agent's
 * status every KEDGE_HEARTBEAT_INTERVAL to KEDGE_HEARTBEAT_TOPIC, keyed by agent id,
 * so a fleet dashboard needs nothing but a Kafka consumer.
 *
 * It has its own producer (its own connections): a heartbeat never waits behind the
 * forwarder's batches, so it arrives while a large backlog is still draining. It is
 * never stored in the log, a failed send is only logged (rate-limited) and retried at
 * the next interval, and nothing waits for it.
 */
import { describeKafkaError } from '../kafka/classify.ts';
import type { RecordSink } from '../kafka/producer.ts';
import { RateLimitedLog, type Logger } from '../observe/logger.ts';
import { waitAtMost, withDeadline } from '../deadline.ts';
import type { LinkState } from '../observe/metrics.ts';
import type { AgentStatus, HeartbeatStatus } from './document.ts';

export interface LinkHistorySummary {
  /** The span the summary covers (at most the agent's uptime). */
  window_seconds: number;
  /** State changes seen in the window. */
  changes: number;
  /** Seconds spent in each state within the window. */
  seconds_by_state: Record<string, number>;
  /** The latest changes, oldest first. */
  recent: { state: string; at: string }[];
}

interface Segment {
  state: string;
  start: number;
}

/**
 * Remembers the link's recent states, fed with every change the forwarder makes
 * (Heartbeat subscribes to them). An observation with the same state and start as
 * the last one is ignored; the same state with a new start counts as a change.
 */
export class LinkHistory {
  private readonly segments: Segment[] = [];
  private changes: number[] = [];
  private readonly windowMs: number;
  private readonly keepRecent: number;

  constructor(windowMs = 3_600_000, keepRecent = 10) {
    this.windowMs = windowMs;
    this.keepRecent = keepRecent;
  }

  observe(state: string, sinceMs: number, now = Date.now()): void {
    const last = this.segments[this.segments.length - 1];
    if (last && last.state === state && last.start === sinceMs) return;
    const start = last ? Math.min(now, Math.max(sinceMs, last.start)) : sinceMs;
    if (last) this.changes.push(start);
    this.segments.push({ state, start });
    this.prune(now);
  }

  summary(now = Date.now()): LinkHistorySummary {
    this.prune(now);
    const from = now - this.windowMs;
    const byState: Record<string, number> = {};
    for (let i = 0; i < this.segments.length; i++) {
      const s = this.segments[i];
      const end = i + 1 < this.segments.length ? this.segments[i + 1].start : now;
      const d = Math.max(0, end - Math.max(s.start, from));
      byState[s.state] = Math.round(((byState[s.state] ?? 0) + d / 1000) * 10) / 10;
    }
    const first = this.segments[0];
    return {
      window_seconds: first ? Math.round((now - Math.max(first.start, from)) / 1000) : 0,
      changes: this.changes.length,
      seconds_by_state: byState,
      recent: this.segments
        .slice(1)
        .slice(-this.keepRecent)
        .map((s) => ({ state: s.state, at: new Date(s.start).toISOString() })),
    };
  }

  private prune(now: number): void {
    const from = now - this.windowMs;
    // Keep the segment that was current at the window's start.
    while (this.segments.length > 1 && this.segments[1].start <= from) this.segments.shift();
    this.changes = this.changes.filter((t) => t > from);
  }
}

/** The record sent: a fleet dashboard's row for this agent. */
export function heartbeatRecord(st: AgentStatus, history: LinkHistorySummary, now = Date.now()) {
  return {
    type: 'kedge.heartbeat',
    schema: 1,
    agent_id: st.agent_id,
    version: st.version,
    sent_at: new Date(now).toISOString(),
    uptime_seconds: st.uptime_seconds,
    link: {
      state: st.link.state,
      since: st.link.since,
      last_error: st.link.last_error,
      last_error_at: st.link.last_error_at,
      last_forward_at: st.link.last_forward_at,
      history,
    },
    backlog: st.backlog,
    rates: st.rates,
    drops: st.drops,
    dead_letters: { events: st.dead_letters.events },
    disk: st.disk,
    warnings: st.warnings,
  };
}

export interface HeartbeatOptions {
  /** The Kafka topic as sent (KEDGE_TOPIC_PREFIX already applied). */
  topic: string;
  intervalMs: number;
  agentId: string;
  /** A producer of its own, not the forwarder's. */
  sink: RecordSink;
  /** The forwarder's link state, looked at every `pollMs`. Heartbeats go out while it is 'up' (and once when it turns paused/outside-window). */
  link: () => { state: LinkState; since: string };
  /** Subscribes to every link state change (for the history in the record); returns an unsubscribe function. */
  onLinkChange?: (listener: (state: LinkState, atMs: number) => void) => () => void;
  /** The agent's status at send time. */
  status: () => AgentStatus;
  logger: Logger;
  /** A send with no answer by then is abandoned (the next interval tries again). */
  sendTimeoutMs: number;
  /** Default 1 s: the first heartbeat after the link comes up goes out within this. */
  pollMs?: number;
}

export class Heartbeat {
  readonly history = new LinkHistory();
  private readonly o: HeartbeatOptions;
  private timer: NodeJS.Timeout | null = null;
  private unsubscribe: (() => void) | null = null;
  private inFlight: Promise<void> | null = null;
  private lastAttemptAt: number | null = null;
  private lastAttemptState: LinkState | null = null;
  private lastSentAt: number | null = null;
  private lastError: string | null = null;
  private sent = 0;
  private failures = 0;
  private readonly failLog = new RateLimitedLog(300_000);

  constructor(o: HeartbeatOptions) {
    this.o = o;
  }

  start(): void {
    const link = this.o.link();
    this.history.observe(link.state, Date.parse(link.since));
    this.unsubscribe =
      this.o.onLinkChange?.((state, at) => this.history.observe(state, at)) ?? null;
    this.tick();
    this.timer = setInterval(() => this.tick(), this.o.pollMs ?? 1_000);
    this.timer.unref();
  }

  /** Waits at most `graceMs` for a send in flight, then drops the producer. */
  async stop(graceMs = 2_000): Promise<void> {
    this.unsubscribe?.();
    this.unsubscribe = null;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.inFlight) await waitAtMost(this.inFlight, graceMs);
    await this.o.sink.disconnect().catch(() => {});
  }

  status(): HeartbeatStatus {
    return {
      topic: this.o.topic,
      interval_seconds: this.o.intervalMs / 1000,
      sent: this.sent,
      failures: this.failures,
      last_sent_at: this.lastSentAt === null ? null : new Date(this.lastSentAt).toISOString(),
      last_error: this.lastError,
    };
  }

  private tick(): void {
    const now = Date.now();
    const link = this.o.link();
    if (this.inFlight) return;
    // Paused or outside a window the uplink is not to be used, but one last beat right when
    // that starts tells the fleet why this agent went quiet.
    const quietStarts =
      (link.state === 'paused' || link.state === 'outside-window') &&
      this.lastAttemptState === 'up';
    if (!quietStarts) {
      if (link.state !== 'up') return;
      if (this.lastAttemptAt !== null && now - this.lastAttemptAt < this.o.intervalMs) return;
    }
    this.lastAttemptAt = now;
    this.lastAttemptState = link.state;
    this.inFlight = this.send(now).finally(() => (this.inFlight = null));
  }

  private async send(now: number): Promise<void> {
    const o = this.o;
    try {
      const value = Buffer.from(
        JSON.stringify(heartbeatRecord(o.status(), this.history.summary(now), now)),
      );
      await withDeadline(
        o.sink.send([
          { topic: o.topic, key: Buffer.from(o.agentId), value, timestamp: now, headers: {} },
        ]),
        o.sendTimeoutMs,
        `no answer from Kafka within ${o.sendTimeoutMs} ms`,
      );
      this.sent++;
      this.lastSentAt = Date.now();
      this.lastError = null;
    } catch (e) {
      this.failures++;
      this.lastError = describeKafkaError(e);
      // A fresh producer next time (as the forwarder does after a failure).
      await o.sink.disconnect().catch(() => {});
      const n = this.failLog.shouldLog();
      if (n >= 0)
        o.logger.warn(
          { topic: o.topic, reason: this.lastError, suppressed: n },
          'heartbeat not sent; next try at the next interval (forwarding is not affected)',
        );
    }
  }
}
