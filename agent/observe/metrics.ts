/**
 * Prometheus metrics. One registry per agent (no prom-client default
 * registry), so tests can run several agents in one process.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { LANES, type EventLog } from '../log/types.ts';

export interface LinkStateSource {
  linkState(): LinkState;
}

/**
 * The Kafka link's states, as the forwarder shows them (status, logs, metrics):
 * the one list; the kedge_link_state gauge has one series per entry.
 */
export const LINK_STATES = [
  'up',
  'degraded',
  'down',
  'paused',
  'outside-window',
  'starting',
] as const;
export type LinkState = (typeof LINK_STATES)[number];

export class Metrics {
  readonly registry = new Registry();
  readonly ingestedEvents: Counter<'source' | 'topic'>;
  readonly ingestedBytes: Counter<'source' | 'topic'>;
  readonly forwardedEvents: Counter<'topic'>;
  readonly forwardedBytes: Counter<'topic'>;
  readonly deadLettered: Counter<'topic' | 'reason'>;
  readonly droppedEvents: Counter<'topic' | 'reason'>;
  readonly droppedBytes: Counter<'topic' | 'reason'>;
  readonly rejected: Counter<'source' | 'reason'>;
  readonly commitSeconds: Histogram;
  readonly sendSeconds: Histogram;
  readonly batchEvents: Histogram;
  readonly batchBytes: Histogram;
  readonly sendErrors: Counter<'kind'>;
  readonly linkStateChanges: Counter<'state'>;
  readonly wireBytes: Counter;
  readonly mqttProtocolErrors: Counter<'kind'>;

  constructor() {
    const r = [this.registry];
    this.ingestedEvents = new Counter({
      name: 'kedge_ingested_events_total',
      help: 'Events committed to the log',
      labelNames: ['source', 'topic'],
      registers: r,
    });
    this.ingestedBytes = new Counter({
      name: 'kedge_ingested_bytes_total',
      help: 'Key and value bytes committed to the log',
      labelNames: ['source', 'topic'],
      registers: r,
    });
    this.forwardedEvents = new Counter({
      name: 'kedge_forwarded_events_total',
      help: 'Events acknowledged by Kafka',
      labelNames: ['topic'],
      registers: r,
    });
    this.forwardedBytes = new Counter({
      name: 'kedge_forwarded_bytes_total',
      help: 'Key and value bytes acknowledged by Kafka',
      labelNames: ['topic'],
      registers: r,
    });
    this.deadLettered = new Counter({
      name: 'kedge_dead_letters_total',
      help: 'Events Kafka refused for good, moved to the dead-letter table',
      labelNames: ['topic', 'reason'],
      registers: r,
    });
    this.droppedEvents = new Counter({
      name: 'kedge_dropped_events_total',
      help: 'Unforwarded events the log dropped (reason: quota, retention)',
      labelNames: ['topic', 'reason'],
      registers: r,
    });
    this.droppedBytes = new Counter({
      name: 'kedge_dropped_bytes_total',
      help: 'Key and value bytes of unforwarded events the log dropped',
      labelNames: ['topic', 'reason'],
      registers: r,
    });
    this.rejected = new Counter({
      name: 'kedge_rejected_requests_total',
      help: 'Ingest requests refused (nothing stored)',
      labelNames: ['source', 'reason'],
      registers: r,
    });
    this.commitSeconds = new Histogram({
      name: 'kedge_commit_duration_seconds',
      help: 'Time from append to durable commit',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: r,
    });
    this.sendSeconds = new Histogram({
      name: 'kedge_send_duration_seconds',
      help: 'Time of one batch send to Kafka until acknowledged',
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
      registers: r,
    });
    this.batchEvents = new Histogram({
      name: 'kedge_send_batch_events',
      help: 'Events per batch sent to Kafka',
      buckets: [1, 10, 100, 1000, 5000, 10000],
      registers: r,
    });
    this.batchBytes = new Histogram({
      name: 'kedge_send_batch_bytes',
      help: 'Key and value bytes per batch acknowledged by Kafka',
      buckets: [1024, 16384, 65536, 262144, 524288, 1048576],
      registers: r,
    });
    this.sendErrors = new Counter({
      name: 'kedge_send_errors_total',
      help: 'Failed batch sends to Kafka (retried)',
      labelNames: ['kind'],
      registers: r,
    });
    this.linkStateChanges = new Counter({
      name: 'kedge_link_state_changes_total',
      help: 'Changes of the Kafka link state, by the state entered',
      labelNames: ['state'],
      registers: r,
    });
    this.wireBytes = new Counter({
      name: 'kedge_wire_bytes_total',
      help: 'Bytes written on the sockets to Kafka (after compression, protocol and TLS overhead included): what KEDGE_FORWARD_RATE caps',
      registers: r,
    });
    this.mqttProtocolErrors = new Counter({
      name: 'kedge_mqtt_protocol_errors_total',
      help: 'Embedded MQTT broker: connections closed because the client broke the protocol (kind: malformed, protocol, connect_timeout, keepalive_timeout)',
      labelNames: ['kind'],
      registers: r,
    });
  }

  /** Gauges read the log and the forwarder at scrape time, so they are never stale. */
  bindSources(log: EventLog, link: LinkStateSource): void {
    const r = [this.registry];
    new Gauge({
      name: 'kedge_backlog_events',
      help: 'Events in the log not yet acknowledged by Kafka',
      registers: r,
      collect() {
        this.set(log.stats().backlogEvents);
      },
    });
    new Gauge({
      name: 'kedge_backlog_bytes',
      help: 'Key and value bytes in the log not yet acknowledged by Kafka',
      registers: r,
      collect() {
        this.set(log.stats().backlogBytes);
      },
    });
    new Gauge({
      name: 'kedge_oldest_unforwarded_age_seconds',
      help: 'Age of the oldest event not yet acknowledged by Kafka (0 when none)',
      registers: r,
      collect() {
        const o = log.stats().oldestTs;
        this.set(o === null ? 0 : Math.max(0, (Date.now() - o) / 1000));
      },
    });
    // Per lane: the priority lane should stay near 0 even while the bulk lane holds a long backlog.
    // Before the log reports lanes, everything counts as bulk.
    const laneStat = (
      lane: (typeof LANES)[number],
      k: 'backlogEvents' | 'backlogBytes',
    ): number => {
      const s = log.stats();
      const l = s.lanes?.[lane];
      return l ? l[k] : lane === 'bulk' ? s[k] : 0;
    };
    new Gauge({
      name: 'kedge_backlog_lane_events',
      help: 'Events not yet acknowledged by Kafka, per forwarding lane (priority, bulk)',
      labelNames: ['lane'],
      registers: r,
      collect() {
        for (const lane of LANES) this.set({ lane }, laneStat(lane, 'backlogEvents'));
      },
    });
    new Gauge({
      name: 'kedge_backlog_lane_bytes',
      help: 'Key and value bytes not yet acknowledged by Kafka, per forwarding lane',
      labelNames: ['lane'],
      registers: r,
      collect() {
        for (const lane of LANES) this.set({ lane }, laneStat(lane, 'backlogBytes'));
      },
    });
    new Gauge({
      name: 'kedge_disk_bytes',
      help: 'Bytes the log uses on disk (database, WAL, reserve): what KEDGE_DISK_QUOTA covers',
      registers: r,
      collect() {
        this.set(log.stats().diskBytes ?? 0);
      },
    });
    new Gauge({
      name: 'kedge_disk_quota_bytes',
      help: 'KEDGE_DISK_QUOTA in bytes (0 when there is none)',
      registers: r,
      collect() {
        this.set(log.stats().quotaBytes ?? 0);
      },
    });
    new Gauge({
      name: 'kedge_dead_letter_events',
      help: 'Events currently in the dead-letter table',
      registers: r,
      collect() {
        this.set(log.stats().deadLetters);
      },
    });
    new Gauge({
      name: 'kedge_link_state',
      help: 'Kafka link state (1 for the current state)',
      labelNames: ['state'],
      registers: r,
      collect() {
        const s = link.linkState();
        for (const st of LINK_STATES) this.set({ state: st }, st === s ? 1 : 0);
      },
    });
    collectDefaultMetrics({ register: this.registry, prefix: 'kedge_' });
  }
}
