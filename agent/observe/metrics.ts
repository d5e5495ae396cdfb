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

/**
 * What a forwarder counts. With several destinations each forwarder gets its own view
 * (Metrics.forDestination), which adds the `destination` label.
 */
export interface ForwardMetrics {
  forwardedEvents: { inc(labels: { topic: string }, n?: number): void };
  forwardedBytes: { inc(labels: { topic: string }, n?: number): void };
  deadLettered: { inc(labels: { topic: string; reason: string }, n?: number): void };
  sendErrors: { inc(labels: { kind: string }, n?: number): void };
  linkStateChanges: { inc(labels: { state: string }, n?: number): void };
  wireBytes: { inc(n?: number): void };
  sendSeconds: { observe(v: number): void };
  batchEvents: { observe(v: number): void };
  batchBytes: { observe(v: number): void };
}

/** A destination's link and log position, read at scrape time (several destinations). */
export interface DestinationSource {
  name: string;
  linkState(): LinkState;
  lanes(): Record<
    (typeof LANES)[number],
    { backlogEvents: number; backlogBytes: number; dropped: number }
  >;
}

export class Metrics {
  readonly registry = new Registry();
  /** Names of the destinations when there are several (KEDGE_DESTINATIONS); null: one. */
  readonly destinations: readonly string[] | null;
  readonly routeFiltered: Counter<'route' | 'step'>;
  readonly ingestedEvents: Counter<'source' | 'topic'>;
  readonly ingestedBytes: Counter<'source' | 'topic'>;
  readonly forwardedEvents: Counter<'topic'>;
  readonly forwardedBytes: Counter<'topic'>;
  readonly deadLettered: Counter<'topic' | 'reason'>;
  /** `kedge dead-letters replay` / `purge`: dead letters re-queued for forwarding, or deleted. */
  readonly deadLettersReplayed: Counter<'topic'>;
  readonly deadLettersPurged: Counter<'topic'>;
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
  /** `kedge tap`: events a viewer's full buffer dropped (for that viewer only; ingest never waits). */
  readonly tapDropped: Counter;

  constructor(opts: { destinations?: readonly string[] | null } = {}) {
    const r = [this.registry];
    this.destinations = opts.destinations ?? null;
    // With several destinations the forwarders' series carry a `destination` label.
    const d = this.destinations === null ? [] : ['destination'];
    this.routeFiltered = new Counter({
      name: 'kedge_route_filtered_events_total',
      help: 'Events a route step removed before the uplink (step: where, sample, deadband, select, window for late events)',
      labelNames: ['route', 'step'],
      registers: r,
    });
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
      labelNames: ['topic', ...d],
      registers: r,
    });
    this.forwardedBytes = new Counter({
      name: 'kedge_forwarded_bytes_total',
      help: 'Key and value bytes acknowledged by Kafka',
      labelNames: ['topic', ...d],
      registers: r,
    });
    this.deadLettered = new Counter({
      name: 'kedge_dead_letters_total',
      help: 'Events Kafka refused for good, moved to the dead-letter table',
      labelNames: ['topic', 'reason', ...d],
      registers: r,
    });
    this.deadLettersReplayed = new Counter({
      name: 'kedge_dead_letters_replayed_total',
      help: 'Dead letters re-queued for forwarding by kedge dead-letters replay (original kedge-id kept)',
      labelNames: ['topic'],
      registers: r,
    });
    this.deadLettersPurged = new Counter({
      name: 'kedge_dead_letters_purged_total',
      help: 'Dead letters deleted by kedge dead-letters purge',
      labelNames: ['topic'],
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
      labelNames: d,
      registers: r,
    });
    this.batchEvents = new Histogram({
      name: 'kedge_send_batch_events',
      help: 'Events per batch sent to Kafka',
      buckets: [1, 10, 100, 1000, 5000, 10000],
      labelNames: d,
      registers: r,
    });
    this.batchBytes = new Histogram({
      name: 'kedge_send_batch_bytes',
      help: 'Key and value bytes per batch acknowledged by Kafka',
      buckets: [1024, 16384, 65536, 262144, 524288, 1048576],
      labelNames: d,
      registers: r,
    });
    this.sendErrors = new Counter({
      name: 'kedge_send_errors_total',
      help: 'Failed batch sends to Kafka (retried)',
      labelNames: ['kind', ...d],
      registers: r,
    });
    this.linkStateChanges = new Counter({
      name: 'kedge_link_state_changes_total',
      help: 'Changes of the Kafka link state, by the state entered',
      labelNames: ['state', ...d],
      registers: r,
    });
    this.wireBytes = new Counter({
      name: 'kedge_wire_bytes_total',
      help: 'Bytes written on the sockets to Kafka (after compression, protocol and TLS overhead included): what KEDGE_FORWARD_RATE caps',
      labelNames: d,
      registers: r,
    });
    this.tapDropped = new Counter({
      name: 'kedge_tap_dropped_events_total',
      help: 'kedge tap: events not shown to a viewer whose buffer was full (the viewer only: they are stored and forwarded)',
      registers: r,
    });
    this.mqttProtocolErrors = new Counter({
      name: 'kedge_mqtt_protocol_errors_total',
      help: 'Embedded MQTT broker: connections closed because the client broke the protocol (kind: malformed, protocol, connect_timeout, keepalive_timeout)',
      labelNames: ['kind'],
      registers: r,
    });
  }

  /** The counters of one destination's forwarder (the metrics themselves with one destination). */
  forDestination(name: string): ForwardMetrics {
    if (this.destinations === null) return this;
    const destination = name;
    const counter = <L extends object>(c: {
      inc(labels: L & { destination: string }, n?: number): void;
    }) => ({
      inc: (labels: L, n?: number) => c.inc({ ...labels, destination }, n),
    });
    const histogram = (h: Histogram) => ({ observe: (v: number) => h.observe({ destination }, v) });
    return {
      forwardedEvents: counter<{ topic: string }>(this.forwardedEvents as never),
      forwardedBytes: counter<{ topic: string }>(this.forwardedBytes as never),
      deadLettered: counter<{ topic: string; reason: string }>(this.deadLettered as never),
      sendErrors: counter<{ kind: string }>(this.sendErrors as never),
      linkStateChanges: counter<{ state: string }>(this.linkStateChanges as never),
      wireBytes: { inc: (n?: number) => this.wireBytes.inc({ destination } as never, n) },
      sendSeconds: histogram(this.sendSeconds),
      batchEvents: histogram(this.batchEvents),
      batchBytes: histogram(this.batchBytes),
    };
  }

  /** Per destination: link state and backlog, read at scrape time (several destinations). */
  bindDestinations(sources: readonly DestinationSource[]): void {
    const r = [this.registry];
    new Gauge({
      name: 'kedge_destination_link_state',
      help: 'Link state per destination (1 for the current state)',
      labelNames: ['destination', 'state'],
      registers: r,
      collect() {
        for (const s of sources) {
          const cur = s.linkState();
          for (const st of LINK_STATES)
            this.set({ destination: s.name, state: st }, st === cur ? 1 : 0);
        }
      },
    });
    new Gauge({
      name: 'kedge_destination_backlog_events',
      help: 'Events in the log this destination has not had yet, per lane',
      labelNames: ['destination', 'lane'],
      registers: r,
      collect() {
        for (const s of sources) {
          const l = s.lanes();
          for (const lane of LANES) this.set({ destination: s.name, lane }, l[lane].backlogEvents);
        }
      },
    });
    new Gauge({
      name: 'kedge_destination_backlog_bytes',
      help: 'Key and value bytes in the log this destination has not had yet, per lane',
      labelNames: ['destination', 'lane'],
      registers: r,
      collect() {
        for (const s of sources) {
          const l = s.lanes();
          for (const lane of LANES) this.set({ destination: s.name, lane }, l[lane].backlogBytes);
        }
      },
    });
    new Gauge({
      name: 'kedge_destination_dropped_events',
      help: 'Events dropped (quota, retention) before this destination had them, since start',
      labelNames: ['destination'],
      registers: r,
      collect() {
        for (const s of sources) {
          const l = s.lanes();
          this.set({ destination: s.name }, l.bulk.dropped + l.priority.dropped);
        }
      },
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
