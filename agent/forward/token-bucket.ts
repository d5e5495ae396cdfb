/**
 * The uplink rate cap (KEDGE_FORWARD_RATE) as a token bucket in bytes.
 *
 * The forwarder cannot know a batch's wire size before it is sent (compression,
 * protocol framing, TLS), so it sends first and pays after: `charge` takes the
 * bytes actually written, as of the moment the send began, and may leave the
 * bucket in debt; the next batch waits until the debt is repaid.
 *
 * Two kinds of credit are told apart:
 * - credit earned right after a debt was paid (a timer that fired a little late,
 *   the time it took to read the next batch) is kept for `graceMs`, so the
 *   average over a minute stays on the cap instead of drifting below it;
 * - credit saved up while idle is capped at `capacity`. The forwarder uses 0:
 *   a batch is sent, then paid for, so the largest burst above the rate is one batch.
 */
export class TokenBucket {
  readonly rate: number;
  readonly capacity: number;
  private readonly graceMs: number;
  private tokens: number;
  private last: number;
  /** When the balance last came out of debt (or the bucket was made). */
  private paidAt: number;
  private readonly now: () => number;

  /**
   * @param rate bytes per second (> 0)
   * @param capacity most bytes saved up while idle (>= 0)
   * @param now monotonic milliseconds; tests inject a fake clock
   * @param graceMs how long credit earned after a paid debt is kept (late timers)
   */
  constructor(
    rate: number,
    capacity: number,
    now: () => number = () => performance.now(),
    graceMs = 1_000,
  ) {
    if (!(rate > 0) || !(capacity >= 0))
      throw new RangeError(
        `token bucket needs rate > 0 and capacity >= 0 (got ${rate}, ${capacity})`,
      );
    this.rate = rate;
    this.capacity = capacity;
    this.graceMs = graceMs;
    this.now = now;
    this.last = now();
    this.paidAt = this.last - graceMs; // a new bucket has no late-timer credit
    this.tokens = capacity;
  }

  private refill(t: number): void {
    if (t <= this.last) return;
    if (this.tokens < 0) {
      const zero = this.last + (-this.tokens * 1000) / this.rate;
      if (t <= zero) {
        this.tokens += ((t - this.last) * this.rate) / 1000;
        this.last = t;
        return;
      }
      this.paidAt = zero;
      this.tokens = 0;
      this.last = zero;
    }
    const sincePaid = t - this.paidAt;
    const limit =
      sincePaid <= this.graceMs
        ? Math.max(this.capacity, (sincePaid * this.rate) / 1000)
        : this.capacity;
    this.tokens = Math.min(limit, this.tokens + ((t - this.last) * this.rate) / 1000);
    this.last = t;
  }

  /** Bytes that went on the wire for a send that began at `startedAt` (default: now). */
  charge(bytes: number, startedAt?: number): void {
    const now = this.now();
    this.refill(Math.min(startedAt ?? now, now));
    this.tokens -= bytes;
    this.refill(now);
  }

  /** Milliseconds until the bucket is out of debt (0: send now). */
  waitMs(): number {
    this.refill(this.now());
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens * 1000) / this.rate);
  }

  /** Current balance in bytes (negative: debt). */
  balance(): number {
    this.refill(this.now());
    return this.tokens;
  }
}
