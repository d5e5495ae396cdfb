/**
 * Transfer windows (KEDGE_FORWARD_WINDOWS): local-time ranges of the day in
 * which bulk events may be forwarded. Pure functions of a Date, so tests pass
 * any instant; local time comes from Date's getHours/getMinutes, i.e. the TZ of
 * the process (what an operator reads off the device's clock). A window is
 * defined by wall-clock minutes, so a DST change shifts it along with the clock.
 */
import type { TimeWindow } from '../config.ts';

export type { TimeWindow };

const DAY_MIN = 24 * 60;

/** Minutes since local midnight. */
function localMinute(d: Date): number {
  return d.getHours() * 60 + d.getMinutes();
}

function inWindow(w: TimeWindow, minute: number): boolean {
  // end < start crosses midnight (22:00-06:00); end 0 is 24:00.
  const end = w.endMin === 0 ? DAY_MIN : w.endMin;
  return w.startMin < end
    ? minute >= w.startMin && minute < end
    : minute >= w.startMin || minute < w.endMin;
}

export class TransferWindows {
  readonly windows: readonly TimeWindow[];

  /** No windows: always open (KEDGE_FORWARD_WINDOWS unset or `always`). */
  constructor(windows: readonly TimeWindow[]) {
    this.windows = windows;
  }

  get always(): boolean {
    return this.windows.length === 0;
  }

  isOpen(date: Date): boolean {
    if (this.always) return true;
    const m = localMinute(date);
    return this.windows.some((w) => inWindow(w, m));
  }

  /**
   * Milliseconds from `date` until isOpen() next changes, or null if it never
   * does (no windows, or windows that cover the whole day).
   */
  msUntilNextChange(date: Date): number | null {
    if (this.always) return null;
    const open = this.isOpen(date);
    const t = date.getTime();
    const candidates: number[] = [];
    // Boundaries of today and the next two days: enough for any window set,
    // and a day that is 23 or 25 hours long (DST) does not skip one.
    for (let day = 0; day <= 2; day++) {
      for (const w of this.windows) {
        for (const min of [w.startMin, w.endMin]) {
          const b = new Date(date.getTime());
          b.setDate(b.getDate() + day);
          b.setHours(Math.floor(min / 60), min % 60, 0, 0);
          if (b.getTime() > t) candidates.push(b.getTime());
        }
      }
    }
    candidates.sort((a, b) => a - b);
    for (const c of candidates) if (this.isOpen(new Date(c)) !== open) return c - t;
    return null;
  }
}
