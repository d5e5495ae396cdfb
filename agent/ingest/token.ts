import { createHash, timingSafeEqual } from 'node:crypto';

/** Constant-time token check: hashing first makes the comparison independent of the lengths. */
export function tokenMatches(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}
