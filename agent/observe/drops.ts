/**
 * Makes every drop of the log visible: counts it in the metrics, keeps the
 * summary /v1/status shows, and logs a warning at most once a minute per
 * reason (with the counts since the previous line, so nothing goes unsaid).
 */
import type { DropReason, DropReport } from '../log/types.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';

export const DROP_LOG_INTERVAL_MS = 60_000;
const TOP_TOPICS = 20;

export interface DropSummary {
  events: number;
  bytes: number;
  by_reason: Record<DropReason, number>;
  /** The topics with the most dropped events, most first (at most 20). */
  by_topic: { topic: string; events: number; bytes: number }[];
  last_drop_at: string | null;
}

interface Pending {
  events: number;
  bytes: number;
  topics: Map<string, number>;
}

const WHY: Record<DropReason, string> = {
  quota: 'the log reached KEDGE_DISK_QUOTA (KEDGE_WHEN_FULL=drop-oldest)',
  retention: 'they were older than KEDGE_RETENTION',
};

export class DropTracker {
  private readonly metrics: Metrics;
  private readonly logger: Logger;
  private events = 0;
  private bytes = 0;
  private readonly byReason: Record<DropReason, number> = { quota: 0, retention: 0 };
  private readonly byTopic = new Map<string, { events: number; bytes: number }>();
  private lastDropAt: number | null = null;
  private readonly pending = new Map<DropReason, Pending>();
  private readonly lastLogAt = new Map<DropReason, number>();
  private readonly timers = new Map<DropReason, NodeJS.Timeout>();

  constructor(metrics: Metrics, logger: Logger) {
    this.metrics = metrics;
    this.logger = logger;
  }

  record(d: DropReport): void {
    this.metrics.droppedEvents.inc({ topic: d.topic, reason: d.reason }, d.events);
    this.metrics.droppedBytes.inc({ topic: d.topic, reason: d.reason }, d.bytes);
    this.events += d.events;
    this.bytes += d.bytes;
    this.byReason[d.reason] += d.events;
    const t = this.byTopic.get(d.topic) ?? { events: 0, bytes: 0 };
    t.events += d.events;
    t.bytes += d.bytes;
    this.byTopic.set(d.topic, t);
    this.lastDropAt = Date.now();

    const p = this.pending.get(d.reason) ?? {
      events: 0,
      bytes: 0,
      topics: new Map<string, number>(),
    };
    p.events += d.events;
    p.bytes += d.bytes;
    p.topics.set(d.topic, (p.topics.get(d.topic) ?? 0) + d.events);
    this.pending.set(d.reason, p);
    const since = Date.now() - (this.lastLogAt.get(d.reason) ?? -Infinity);
    if (since >= DROP_LOG_INTERVAL_MS) this.flush(d.reason);
    else if (!this.timers.has(d.reason)) {
      // The rest of this minute's drops are logged in one line when it is over.
      const timer = setTimeout(() => this.flush(d.reason), DROP_LOG_INTERVAL_MS - since);
      timer.unref();
      this.timers.set(d.reason, timer);
    }
  }

  private flush(reason: DropReason): void {
    const timer = this.timers.get(reason);
    if (timer) clearTimeout(timer);
    this.timers.delete(reason);
    const p = this.pending.get(reason);
    if (!p || p.events === 0) return;
    this.pending.delete(reason);
    this.lastLogAt.set(reason, Date.now());
    const topics = Object.fromEntries(
      [...p.topics].sort((a, b) => b[1] - a[1]).slice(0, TOP_TOPICS),
    );
    this.logger.warn(
      { reason, events: p.events, bytes: p.bytes, topics, totalDropped: this.events },
      `dropped ${p.events} unforwarded events (${p.bytes} bytes) because ${WHY[reason]}`,
    );
  }

  summary(): DropSummary {
    const byTopic = [...this.byTopic]
      .sort((a, b) => b[1].events - a[1].events)
      .slice(0, TOP_TOPICS)
      .map(([topic, v]) => ({ topic, events: v.events, bytes: v.bytes }));
    return {
      events: this.events,
      bytes: this.bytes,
      by_reason: { ...this.byReason },
      by_topic: byTopic,
      last_drop_at: this.lastDropAt === null ? null : new Date(this.lastDropAt).toISOString(),
    };
  }

  /** Logs what is still pending and stops the timers (shutdown). */
  stop(): void {
    for (const reason of [...this.pending.keys()]) this.flush(reason);
  }
}
