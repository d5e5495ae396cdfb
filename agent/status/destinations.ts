/**
 * The `destinations` section of /v1/status (several destinations, or routes): per destination
 * its link, its backlog with an ETA from its own drain rate, what it dead-lettered and lost to
 * drops, and what its routes' open windows keep in the log.
 */
import type { ForwarderStatus } from '../forward/forwarder.ts';
import type { DestinationLog, Lane } from '../log/types.ts';
import { LANES } from '../log/types.ts';
import { CounterSampler } from '../observe/sampler.ts';
import { type BacklogSection, type LinkSection, linkSection } from './link-section.ts';

export interface DestinationStatus {
  name: string;
  routes: string[];
  link: LinkSection;
  backlog: BacklogSection;
  lanes: Record<
    Lane,
    {
      backlog_events: number;
      /** Position reached (records acknowledged, or taken by the routes). */
      cursor: number;
      /** Position saved with the routes' state: a restart goes on from here. */
      saved: number;
      /** First seq the routes' open windows keep in the log (null: none open). */
      held_from_seq: number | null;
    }
  >;
  dead_letters: number;
  dropped_events: number;
}

/** Samples a destination's consumed count, for its ETA. */
export class DestinationMeter {
  readonly name: string;
  private readonly dest: DestinationLog;
  private readonly sampler: CounterSampler<'consumed'>;

  constructor(dest: DestinationLog, windowMs = 60_000) {
    this.name = dest.name;
    this.dest = dest;
    this.sampler = new CounterSampler(() => {
      const l = dest.lanes();
      return { consumed: l.bulk.consumed + l.priority.consumed };
    }, windowMs);
  }

  start(intervalMs = 2_000): void {
    this.sampler.start(intervalMs);
  }

  stop(): void {
    this.sampler.stop();
  }

  status(fwd: ForwarderStatus, routes: string[]): DestinationStatus {
    const l = this.dest.lanes();
    const now = Date.now();
    const events = l.bulk.backlogEvents + l.priority.backlogEvents;
    const oldest = [l.bulk.oldestTs, l.priority.oldestTs].filter((x): x is number => x !== null);
    const rate = this.sampler.rate('consumed', 10_000);
    const draining = fwd.state === 'up' || fwd.state === 'degraded';
    const lanes = {} as DestinationStatus['lanes'];
    for (const lane of LANES) {
      const x = l[lane];
      lanes[lane] = {
        backlog_events: x.backlogEvents,
        cursor: x.cursor,
        saved: x.saved,
        held_from_seq: x.keep,
      };
    }
    return {
      name: this.name,
      routes,
      link: linkSection(fwd),
      backlog: {
        events,
        bytes: l.bulk.backlogBytes + l.priority.backlogBytes,
        oldest_age_seconds:
          oldest.length === 0 ? null : Math.max(0, (now - Math.min(...oldest)) / 1000),
        eta_seconds: events === 0 ? 0 : draining && rate > 0 ? Math.ceil(events / rate) : null,
      },
      lanes,
      dead_letters: this.dest.deadLetters(),
      dropped_events: l.bulk.dropped + l.priority.dropped,
    };
  }
}
