/**
 * The Kafka link's shown state: what the last sends say about Kafka (health), with
 * the link policy on top (operator pause, transfer windows). A change is logged once,
 * counted, kept in a short history for status and passed to listeners (the heartbeat).
 */
import type { Logger } from '../observe/logger.ts';
import type { ForwardMetrics, LinkState } from '../observe/metrics.ts';

/** What the last sends say about Kafka; the shown state adds pause and windows on top. */
export type Health = Extract<LinkState, 'starting' | 'up' | 'degraded' | 'down'>;

export interface LinkChange {
  state: LinkState;
  from: LinkState;
  at: string;
  reason: string | null;
}

/** The link's part of ForwarderStatus. */
export interface LinkStatus {
  state: LinkState;
  since: string;
  lastError: string | null;
  lastErrorAt: string | null;
  lastForwardAt: string | null;
  paused: boolean;
  /** Most recent last, at most HISTORY_SIZE. */
  history: LinkChange[];
}

/** Kept in status so an operator sees a flapping link without reading logs. */
const HISTORY_SIZE = 20;

/** A forward within this long makes a first failure `degraded` rather than `down`. */
const RECENTLY_UP_MS = 60_000;

export class Link {
  private readonly metrics: ForwardMetrics;
  private readonly logger: Logger;
  private healthNow: Health = 'starting';
  private pausedNow: boolean;
  /** Outside every transfer window (bulk waits). */
  private windowClosed = false;
  /** The priority lane had events at the last loop turn. */
  private priorityPending = false;
  private shown: LinkState;
  private since = Date.now();
  private readonly history: LinkChange[] = [];
  private readonly listeners = new Set<(state: LinkState, atMs: number) => void>();
  private lastError: string | null = null;
  private lastErrorAt: number | null = null;
  private lastForwardAt: number | null = null;

  constructor(metrics: ForwardMetrics, logger: Logger, paused: boolean) {
    this.metrics = metrics;
    this.logger = logger;
    this.pausedNow = paused;
    this.shown = paused ? 'paused' : 'starting';
  }

  get state(): LinkState {
    return this.shown;
  }

  get health(): Health {
    return this.healthNow;
  }

  get paused(): boolean {
    return this.pausedNow;
  }

  status(): LinkStatus {
    const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
    return {
      state: this.shown,
      since: new Date(this.since).toISOString(),
      lastError: this.lastError,
      lastErrorAt: iso(this.lastErrorAt),
      lastForwardAt: iso(this.lastForwardAt),
      paused: this.pausedNow,
      history: [...this.history],
    };
  }

  /** `listener` runs on every change of the shown state, with the time it began; returns an unsubscribe function. */
  onChange(listener: (state: LinkState, atMs: number) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  setHealth(h: Health, err?: string): void {
    if (err) {
      this.lastError = err;
      this.lastErrorAt = Date.now();
    }
    this.healthNow = h;
    this.refresh();
  }

  /** Kafka acknowledged a batch and the log recorded it. */
  forwarded(): void {
    this.lastForwardAt = Date.now();
    this.setHealth('up');
  }

  /** Something was forwarded within the last minute. */
  recentlyUp(): boolean {
    return this.lastForwardAt !== null && Date.now() - this.lastForwardAt < RECENTLY_UP_MS;
  }

  setPaused(paused: boolean): void {
    this.pausedNow = paused;
    this.refresh();
  }

  /** The policy as the loop turn found it: outside every window, priority events waiting. */
  setPolicy(windowClosed: boolean, priorityPending: boolean): void {
    this.windowClosed = windowClosed;
    this.priorityPending = priorityPending;
    this.refresh();
  }

  /** Recomputes the shown state; a change is logged once, counted and kept in the history. */
  private refresh(): void {
    // Outside a window the state stays outside-window while priority events flow
    // fine (no flapping per alarm); a failing link shows, as that needs action.
    const failing = this.healthNow === 'degraded' || this.healthNow === 'down';
    const s: LinkState = this.pausedNow
      ? 'paused'
      : this.windowClosed && !(this.priorityPending && failing)
        ? 'outside-window'
        : this.healthNow;
    if (s === this.shown) return;
    const from = this.shown;
    this.shown = s;
    this.since = Date.now();
    const reason = s === 'degraded' || s === 'down' ? this.lastError : null;
    this.history.push({ state: s, from, at: new Date(this.since).toISOString(), reason });
    if (this.history.length > HISTORY_SIZE) this.history.shift();
    this.metrics.linkStateChanges.inc({ state: s });
    for (const l of this.listeners) l(s, this.since);
    const log = this.logger;
    if (s === 'degraded' || s === 'down') log.warn({ link: s, from, reason }, `kafka link ${s}`);
    else if (s === 'up') log.info({ link: s, from }, 'kafka link up');
    else if (s === 'paused') log.info({ link: s, from }, 'forwarding paused');
    else if (s === 'outside-window')
      log.info(
        { link: s, from },
        'outside the transfer window: only priority topics are forwarded',
      );
    else log.info({ link: s, from }, `kafka link ${s}`);
  }
}
