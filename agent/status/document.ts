/**
 * `/v1/status`: what an operator checks first. Rates are measured over a
 * sliding window from the counters the log keeps, so they need no per-event work.
 */
import { type EventLog, LANES, type Lane } from '../log/types.ts';
import type { ForwarderStatus } from '../forward/forwarder.ts';
import type { MqttBrokerStatus } from '../ingest/mqtt-broker.ts';
import type { MqttClientStatus } from '../ingest/mqtt-client.ts';
import type { DropSummary } from '../observe/drops.ts';
import { CounterSampler } from '../observe/sampler.ts';
import type { WriteAmplification } from '../observe/write-amplification.ts';
import type { DestinationStatus } from './destinations.ts';
import { type BacklogSection, type LinkSection, linkSection } from './link-section.ts';

/**
 * The status document: what GET /v1/status answers (snake_case JSON), what `kedge
 * status` reads and what a heartbeat record is cut from. The one definition of its
 * shape: the builder below, the CLI and the heartbeat all use it.
 */
export interface AgentStatus {
  agent_id: string;
  version: string;
  uptime_seconds: number;
  link: LinkSection;
  backlog: BacklogSection;
  /** The backlog per forwarding lane; the priority lane drains first (KEDGE_PRIORITY_TOPICS). */
  lanes: Record<Lane, LaneBacklog>;
  rates: { ingest_events_per_second: number; forward_events_per_second: number };
  log: { last_seq: number; cursor: number; commits: number };
  dead_letters: {
    events: number;
    /** The latest few, newest first. */
    recent: { seq: number; topic: string; reason: string; dead_at: string; bytes: number }[];
  };
  /** Without a drop tracker (StatusSources.drops), only the count. */
  drops: DropSummary | { events: number };
  disk: {
    bytes: number | null;
    quota_bytes: number | null;
    used_ratio: number | null;
  } & WriteAmplificationSection;
  warnings: string[];
  mqtt: { client: MqttClientStatus | null; broker: MqttBrokerStatus | null };
  /** Several destinations (KEDGE_DESTINATIONS) or routes: one entry each; else absent. `link` is the first's. */
  destinations?: DestinationStatus[];
  /** null when KEDGE_HEARTBEAT_TOPIC is not set. */
  heartbeat: HeartbeatStatus | null;
}

/** One lane's share of the backlog. */
export interface LaneBacklog {
  backlog_events: number;
  backlog_bytes: number;
  oldest_age_seconds: number | null;
  /**
   * Like backlog.eta_seconds, at the current drain rate: the priority lane drains first, so its
   * ETA counts its own events; the bulk lane's counts both lanes' (it finishes last).
   */
  eta_seconds: number | null;
}

/**
 * Disk writes per ingested byte (agent/observe/write-amplification.ts), sampled every 5 s.
 * The figures are null, with `write_amplification_reason` saying why, when /proc/self/io
 * cannot be read or nothing was ingested yet.
 */
export interface WriteAmplificationSection {
  /** Bytes the agent wrote to storage since its log opened. */
  written_bytes: number | null;
  /** Key and value bytes ingested since start (at the same sample). */
  ingested_bytes: number | null;
  /** written_bytes ÷ ingested_bytes. */
  write_amplification: number | null;
  /** The same over the last write_amplification_window_seconds. */
  write_amplification_recent: number | null;
  write_amplification_window_seconds: number | null;
  /** Why the figures are null; null when they are not. */
  write_amplification_reason: string | null;
}

/** The heartbeat's own counters, in the status document. */
export interface HeartbeatStatus {
  topic: string;
  interval_seconds: number;
  sent: number;
  failures: number;
  last_sent_at: string | null;
  last_error: string | null;
}

export interface StatusSources {
  agentId: string;
  version: string;
  startedAt: number;
  log: EventLog;
  forwarder: () => ForwarderStatus;
  /** Several destinations or routes: their sections. */
  destinations?: (() => DestinationStatus[]) | null;
  config: Record<string, unknown>;
  warnings: () => string[];
  /** What the log dropped (quota, retention) since start; without it only the count is shown. */
  drops?: () => DropSummary;
  mqtt: () => AgentStatus['mqtt'];
  heartbeat: () => HeartbeatStatus | null;
  /** Disk writes per ingested byte; without it the section says it is not measured. */
  writes?: () => WriteAmplification;
}

/** Samples the log's counters every few seconds; ingest rate = seq growth, forward rate = growth of the forwarded count. */
export class RateMeter {
  private readonly sampler: CounterSampler<'lastSeq' | 'forwarded'>;
  constructor(log: EventLog, windowMs = 60_000) {
    this.sampler = new CounterSampler(() => {
      const s = log.stats();
      return { lastSeq: s.lastSeq, forwarded: s.forwardedEvents };
    }, windowMs);
  }
  start(intervalMs = 2_000): void {
    this.sampler.start(intervalMs);
  }
  stop(): void {
    this.sampler.stop();
  }
  /** Events per second over the window (or the last `windowMs` of it): [ingest, forward]. */
  rates(windowMs?: number): { ingest: number; forward: number } {
    return {
      ingest: this.sampler.rate('lastSeq', windowMs),
      forward: this.sampler.rate('forwarded', windowMs),
    };
  }
  /**
   * Forward rate of the current drain, over at most `windowMs`: measured from the first sample
   * after the last idle stretch, so a drain that just began is not averaged with the pause before it.
   * 0 when nothing was forwarded lately (or too little time to tell).
   */
  drainRate(windowMs: number): number {
    const list = this.sampler.samples;
    const now = this.sampler.now();
    let from: (typeof list)[number] | null = null;
    for (let i = list.length - 1; i >= 0; i--) {
      const x = list[i];
      if (now - x.t > windowMs) break;
      from = x;
      if (i > 0 && list[i - 1].v.forwarded === x.v.forwarded) break;
    }
    return from ? this.sampler.rate('forwarded', windowMs, from) : 0;
  }
}

/** The ETA uses the rate of the last few seconds of the current drain (see RateMeter.drainRate). */
export const ETA_RATE_WINDOW_MS = 10_000;

export function buildStatus(src: StatusSources, rates: RateMeter): AgentStatus {
  const s = src.log.stats();
  const now = Date.now();
  const r = rates.rates();
  const recentForward = rates.drainRate(ETA_RATE_WINDOW_MS);
  const fwd = src.forwarder();
  // Paused, down or waiting for a window: no ETA, even if a last batch was acknowledged a moment ago.
  const draining = fwd.state === 'up' || fwd.state === 'degraded';
  return {
    agent_id: src.agentId,
    version: src.version,
    uptime_seconds: Math.round((now - src.startedAt) / 1000),
    link: linkSection(fwd),
    backlog: {
      events: s.backlogEvents,
      bytes: s.backlogBytes,
      oldest_age_seconds: s.oldestTs === null ? null : Math.max(0, (now - s.oldestTs) / 1000),
      // null: not draining (link down, paused, or nothing forwarded in the last few seconds).
      eta_seconds:
        s.backlogEvents === 0
          ? 0
          : draining && recentForward > 0
            ? Math.ceil(s.backlogEvents / recentForward)
            : null,
    },
    lanes: laneBacklogs(s, now, draining ? recentForward : 0),
    rates: {
      ingest_events_per_second: round(r.ingest),
      forward_events_per_second: round(r.forward),
    },
    log: { last_seq: s.lastSeq, cursor: s.cursor, commits: s.commits },
    dead_letters: {
      events: s.deadLetters,
      recent: src.log.listDeadLetters(10).map((d) => ({
        seq: d.seq,
        topic: d.topic,
        reason: d.reason,
        dead_at: new Date(d.deadAt).toISOString(),
        bytes: d.value.length,
      })),
    },
    drops: src.drops?.() ?? { events: s.droppedEvents ?? 0 },
    disk: {
      bytes: s.diskBytes ?? null,
      quota_bytes: s.quotaBytes ?? null,
      used_ratio:
        s.quotaBytes && s.diskBytes != null
          ? Math.round((s.diskBytes / s.quotaBytes) * 1000) / 1000
          : null,
      ...writeSection(src.writes?.() ?? { available: false, reason: 'not measured' }),
    },
    warnings: src.warnings(),
    mqtt: src.mqtt(),
    heartbeat: src.heartbeat(),
    ...(src.destinations ? { destinations: src.destinations() } : {}),
  };
}

/** Per lane backlog and ETA; `rate` 0: not draining. */
function laneBacklogs(
  s: ReturnType<EventLog['stats']>,
  now: number,
  rate: number,
): Record<Lane, LaneBacklog> {
  const out = {} as Record<Lane, LaneBacklog>;
  for (const lane of LANES) {
    const x = s.lanes[lane];
    // Priority batches go first: the bulk lane is empty only once both are.
    const ahead = lane === 'bulk' ? s.lanes.priority.backlogEvents : 0;
    out[lane] = {
      backlog_events: x.backlogEvents,
      backlog_bytes: x.backlogBytes,
      oldest_age_seconds: x.oldestTs === null ? null : Math.max(0, (now - x.oldestTs) / 1000),
      eta_seconds:
        x.backlogEvents === 0 ? 0 : rate > 0 ? Math.ceil((x.backlogEvents + ahead) / rate) : null,
    };
  }
  return out;
}

export function writeSection(w: WriteAmplification): WriteAmplificationSection {
  if (!w.available)
    return {
      written_bytes: null,
      ingested_bytes: null,
      write_amplification: null,
      write_amplification_recent: null,
      write_amplification_window_seconds: null,
      write_amplification_reason: w.reason,
    };
  return {
    written_bytes: w.writtenBytes,
    ingested_bytes: w.ingestedBytes,
    write_amplification: w.ratio,
    write_amplification_recent: w.recentRatio,
    write_amplification_window_seconds: w.recentWindowMs / 1000,
    write_amplification_reason: w.ratio === null ? 'nothing ingested yet' : null,
  };
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}
