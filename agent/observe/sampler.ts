/**
 * Rates from monotonic counters without per-event work: the counters are sampled
 * every few seconds and kept over a sliding window; a rate is the growth from a
 * sample to the counter's value now. Used for status rates (events in/out) and the
 * measured wire rate.
 */
export interface CounterSample<K extends string> {
  t: number;
  v: Record<K, number>;
}

export class CounterSampler<K extends string> {
  private readonly list: CounterSample<K>[] = [];
  private readonly read: () => Record<K, number>;
  private readonly windowMs: number;
  private readonly clock: () => number;
  private timer: NodeJS.Timeout | null = null;

  /** @param read the counters now; @param clock milliseconds (default Date.now) */
  constructor(read: () => Record<K, number>, windowMs = 60_000, clock: () => number = Date.now) {
    this.read = read;
    this.windowMs = windowMs;
    this.clock = clock;
  }

  start(intervalMs = 2_000): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Oldest first, all within the window (at least two kept). */
  get samples(): readonly CounterSample<K>[] {
    return this.list;
  }

  now(): number {
    return this.clock();
  }

  private sample(): void {
    const t = this.clock();
    this.list.push({ t, v: this.read() });
    while (this.list.length > 2 && t - this.list[0].t > this.windowMs) this.list.shift();
  }

  /** Growth per second of `key` from `from` (default: the oldest sample within `windowMs`) to now; 0 below half a second. */
  rate(key: K, windowMs = this.windowMs, from?: CounterSample<K>): number {
    const now = this.clock();
    const first =
      from ?? this.list.find((x) => now - x.t <= windowMs) ?? this.list[this.list.length - 1];
    if (!first) return 0;
    const dt = (now - first.t) / 1000;
    return dt < 0.5 ? 0 : (this.read()[key] - first.v[key]) / dt;
  }
}
