/** Small statistics helpers for the benchmark (no dependency). */

/** Percentile of sorted ascending values, nearest-rank (p in 0..100). */
export function percentile(sorted: ArrayLike<number>, p: number): number | null {
  const n = sorted.length;
  if (n === 0) return null;
  if (p <= 0) return sorted[0];
  if (p >= 100) return sorted[n - 1];
  const rank = Math.ceil((p / 100) * n);
  return sorted[Math.min(n - 1, Math.max(0, rank - 1))];
}

export function sortedCopy(values: ArrayLike<number>): Float64Array {
  const a = Float64Array.from(values as ArrayLike<number>);
  a.sort();
  return a;
}

export function median(values: ArrayLike<number>): number | null {
  return percentile(sortedCopy(values), 50);
}

export interface Percentiles {
  count: number;
  min: number | null;
  p50: number | null;
  p90: number | null;
  p99: number | null;
  p999: number | null;
  max: number | null;
  mean: number | null;
}

export function percentiles(values: ArrayLike<number>): Percentiles {
  const s = sortedCopy(values);
  let sum = 0;
  for (let i = 0; i < s.length; i++) sum += s[i];
  return {
    count: s.length,
    min: s.length ? s[0] : null,
    p50: percentile(s, 50),
    p90: percentile(s, 90),
    p99: percentile(s, 99),
    p999: percentile(s, 99.9),
    max: s.length ? s[s.length - 1] : null,
    mean: s.length ? sum / s.length : null,
  };
}

/** A growable Float64 buffer: latency samples without an array of boxed numbers. */
export class Samples {
  private buf = new Float64Array(1024);
  length = 0;
  push(v: number): void {
    if (this.length === this.buf.length) {
      const b = new Float64Array(this.buf.length * 2);
      b.set(this.buf);
      this.buf = b;
    }
    this.buf[this.length++] = v;
  }
  values(): Float64Array {
    return this.buf.subarray(0, this.length);
  }
}

/** Ratio a/b, or null when either is missing or b is 0. */
export function ratio(a: number | null | undefined, b: number | null | undefined): number | null {
  if (a == null || b == null || b === 0 || !Number.isFinite(a) || !Number.isFinite(b)) return null;
  return a / b;
}

/**
 * Rate over time from cumulative counts: at each sample, (count now - count
 * `windowMs` earlier) / elapsed. Samples: t in ms (ascending), c cumulative.
 * Points are {x: seconds since t0, y: per second}.
 */
export function rateSeries(
  samples: { t: number; c: number }[],
  windowMs: number,
  t0 = samples[0]?.t ?? 0,
): { x: number; y: number }[] {
  const out: { x: number; y: number }[] = [];
  let j = 0;
  for (let i = 1; i < samples.length; i++) {
    while (j < i - 1 && samples[i].t - samples[j + 1].t >= windowMs) j++;
    const dt = samples[i].t - samples[j].t;
    if (dt <= 0) continue;
    out.push({ x: (samples[i].t - t0) / 1000, y: ((samples[i].c - samples[j].c) * 1000) / dt });
  }
  return out;
}

/** Time (ms) at which cumulative count first reaches `c`, linearly interpolated between samples. */
export function timeAtCount(samples: { t: number; c: number }[], c: number): number | null {
  for (let i = 0; i < samples.length; i++) {
    if (samples[i].c >= c) {
      if (i === 0) return samples[0].t;
      const a = samples[i - 1];
      const b = samples[i];
      return b.c === a.c ? b.t : a.t + ((c - a.c) / (b.c - a.c)) * (b.t - a.t);
    }
  }
  return null;
}
