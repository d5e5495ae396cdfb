/** Parts of the status document used for the one link and for each destination's. */
import type { ForwarderStatus } from '../forward/forwarder.ts';
import type { LinkChange } from '../forward/link.ts';
import type { LinkState } from '../observe/metrics.ts';

export interface LinkSection {
  state: LinkState;
  since: string;
  last_error: string | null;
  last_error_at: string | null;
  last_forward_at: string | null;
  paused: boolean;
  consecutive_failures: number;
  rate_cap_bytes_per_second: number | null;
  wire_bytes_per_second: number | null;
  batch_bytes: number;
  /** null when no transfer windows are configured (always open). */
  window: { open: boolean; next_change_at: string | null } | null;
  /** Most recent last. */
  history: LinkChange[];
}

/** The `backlog` part: the log's, or one destination's. */
export interface BacklogSection {
  events: number;
  bytes: number;
  oldest_age_seconds: number | null;
  /** 0: nothing to drain; null: not draining (link down, paused, or nothing forwarded lately). */
  eta_seconds: number | null;
}

export function linkSection(fwd: ForwarderStatus): LinkSection {
  return {
    state: fwd.state,
    since: fwd.since,
    last_error: fwd.lastError,
    last_error_at: fwd.lastErrorAt,
    last_forward_at: fwd.lastForwardAt,
    paused: fwd.paused,
    consecutive_failures: fwd.consecutiveFailures,
    rate_cap_bytes_per_second: fwd.rateCapBytesPerSecond,
    wire_bytes_per_second: fwd.wireBytesPerSecond,
    batch_bytes: fwd.batchBytes,
    window:
      fwd.window === null
        ? null
        : { open: fwd.window.open, next_change_at: fwd.window.nextChangeAt },
    history: fwd.history,
  };
}
