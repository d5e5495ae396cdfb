/** Helpers to build Figure objects the same way in every scenario. */
import type { Baseline, CpuReport, Figure, Target } from './types.ts';
import { ratio } from './stats.ts';

export function atLeast(value: number | null, min: number, text: string): Target {
  return { text, pass: value === null ? null : value >= min };
}

export function atMost(value: number | null, max: number, text: string): Target {
  return { text, pass: value === null ? null : value <= max };
}

/** A baseline for a higher-is-better figure: ratio = figure / baseline. */
export function baselineHigher(
  label: string,
  figure: number | null,
  value: number | null,
  unit: string,
): Baseline {
  return { label, value, unit, ratio: ratio(figure, value), ratioText: 'kedge ÷ baseline' };
}

export function figure(
  f: Omit<Figure, 'baselines' | 'target'> & Partial<Pick<Figure, 'baselines' | 'target'>>,
): Figure {
  return { target: null, baselines: [], ...f };
}

/** Formats a number with thousands separators and `digits` decimals. */
export function fmt(v: number | null | undefined, digits = 0): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return 'n/a';
  return v.toLocaleString('en-US', {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** CPU time one role used in a window, in seconds (null if it was not measured). */
export function cpuSecondsOf(r: CpuReport, role: string): number | null {
  const s = r.shares.find((x) => x.role === role);
  return s ? (s.pctOfCore / 100) * r.seconds : null;
}

/** Microseconds of CPU per event: robust to a busy neighbour in a way that events/s is not. */
export function usPerEvent(cpuSeconds: number | null, events: number): number | null {
  return cpuSeconds === null || events <= 0 ? null : (cpuSeconds * 1e6) / events;
}

/** A baseline for a lower-is-better figure (CPU per event): ratio = figure / baseline, so > 1 means kedge costs more. */
export function baselineCost(
  label: string,
  figure: number | null,
  value: number | null,
  unit: string,
): Baseline {
  return {
    label,
    value,
    unit,
    ratio: ratio(figure, value),
    ratioText: 'kedge ÷ baseline (lower is better)',
  };
}
