/**
 * Prometheus metrics. One registry per agent (no prom-client default
 * registry), so tests can run several agents in one process.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { EventLog } from '../log/types.ts';

export interface LinkStateSource {
  linkState(): string;
}

export const LINK_STATES = ['up', 'degraded', 'down', 'paused', 'outside-window', 'starting'] as const;

export class Metrics {
  readonly registry = new Registry();
  readonly ingestedEvents: Counter<'source' | 'topic'>;
  readonly ingestedBytes: Counter<'source' | 'topic'>;
  readonly forwardedEvents: Counter<'topic'>;
  readonly forwardedBytes: Counter<'topic'>;
  readonly deadLettered: Counter<'topic' | 'reason'>;
  readonly rejected: Counter<'source' | 'reason'>;
  readonly commitSeconds: Histogram;
  readonly sendSeconds: Histogram;
  readonly batchEvents: Histogram;
  readonly sendErrors: Counter<'kind'>;

  constructor() {
    const r = [this.registry];
    this.ingestedEvents = new Counter({ name: 'kedge_ingested_events_total', help: 'Events committed to the log', labelNames: ['source', 'topic'], registers: r });
    this.ingestedBytes = new Counter({ name: 'kedge_ingested_bytes_total', help: 'Key and value bytes committed to the log', labelNames: ['source', 'topic'], registers: r });
    this.forwardedEvents = new Counter({ name: 'kedge_forwarded_events_total', help: 'Events acknowledged by Kafka', labelNames: ['topic'], registers: r });
    this.forwardedBytes = new Counter({ name: 'kedge_forwarded_bytes_total', help: 'Key and value bytes acknowledged by Kafka', labelNames: ['topic'], registers: r });
    this.deadLettered = new Counter({ name: 'kedge_dead_letters_total', help: 'Events Kafka refused for good, moved to the dead-letter table', labelNames: ['topic', 'reason'], registers: r });
    this.rejected = new Counter({ name: 'kedge_rejected_requests_total', help: 'Ingest requests refused (nothing stored)', labelNames: ['source', 'reason'], registers: r });
    this.commitSeconds = new Histogram({ name: 'kedge_commit_duration_seconds', help: 'Time from append to durable commit', buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1], registers: r });
    this.sendSeconds = new Histogram({ name: 'kedge_send_duration_seconds', help: 'Time of one batch send to Kafka until acknowledged', buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30], registers: r });
    this.batchEvents = new Histogram({ name: 'kedge_send_batch_events', help: 'Events per batch sent to Kafka', buckets: [1, 10, 100, 1000, 5000, 10000], registers: r });
    this.sendErrors = new Counter({ name: 'kedge_send_errors_total', help: 'Failed batch sends to Kafka (retried)', labelNames: ['kind'], registers: r });
  }

  /** Gauges read the log and the forwarder at scrape time, so they are never stale. */
  bindSources(log: EventLog, link: LinkStateSource): void {
    const r = [this.registry];
    new Gauge({ name: 'kedge_backlog_events', help: 'Events in the log not yet acknowledged by Kafka', registers: r, collect() { this.set(log.stats().backlogEvents); } });
    new Gauge({ name: 'kedge_backlog_bytes', help: 'Key and value bytes in the log not yet acknowledged by Kafka', registers: r, collect() { this.set(log.stats().backlogBytes); } });
    new Gauge({
      name: 'kedge_oldest_unforwarded_age_seconds', help: 'Age of the oldest event not yet acknowledged by Kafka (0 when none)', registers: r,
      collect() { const o = log.stats().oldestTs; this.set(o === null ? 0 : Math.max(0, (Date.now() - o) / 1000)); },
    });
    new Gauge({ name: 'kedge_dead_letter_events', help: 'Events currently in the dead-letter table', registers: r, collect() { this.set(log.stats().deadLetters); } });
    new Gauge({
      name: 'kedge_link_state', help: 'Kafka link state (1 for the current state)', labelNames: ['state'], registers: r,
      collect() { const s = link.linkState(); for (const st of LINK_STATES) this.set({ state: st }, st === s ? 1 : 0); },
    });
    collectDefaultMetrics({ register: this.registry, prefix: 'kedge_' });
  }
}
