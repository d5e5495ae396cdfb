/**
 * Bounded waits: every place the agent waits on something that may hang (a Kafka
 * request on a black-holed link, an MQTT broker that never answers, a stage that
 * does not stop) uses these, so the timer is always cleared and a late outcome of
 * the abandoned promise is never an unhandled rejection.
 *
 * Two flavours, one timer race:
 * - `withDeadline`: the answer or a DeadlineError (a send that must be retried);
 * - `waitAtMost`: wait, then go on either way (shutdown steps, closing a connection).
 */

/** The promise given to withDeadline did not settle in time. */
export class DeadlineError extends Error {
  readonly ms: number;
  constructor(ms: number, message = `no answer within ${ms} ms`) {
    super(message);
    this.name = 'DeadlineError';
    this.ms = ms;
  }
}

/** `p`'s outcome, or `onTimeout()` once `ms` have passed; the timer never outlives the race. */
function race<T, U>(p: Promise<T>, ms: number, onTimeout: () => U | Promise<U>): Promise<T | U> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<U>((resolve, reject) => {
      timer = setTimeout(() => {
        try {
          resolve(onTimeout());
        } catch (e) {
          reject(e);
        }
      }, ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * `p`'s value (or rejection); rejects with a DeadlineError if `p` has not settled
 * within `ms`. `p` itself goes on: its late outcome is ignored.
 */
export function withDeadline<T>(p: Promise<T>, ms: number, message?: string): Promise<T> {
  return race(p, ms, () => {
    throw new DeadlineError(ms, message);
  });
}

/**
 * Waits for `p` at most `ms`, then resolves either way. A rejection of `p` within
 * the time is passed on, unless `ignoreErrors` (then its outcome is ignored entirely).
 */
export async function waitAtMost(
  p: Promise<unknown>,
  ms: number,
  opts: { ignoreErrors?: boolean } = {},
): Promise<void> {
  const settled = opts.ignoreErrors
    ? p.then(
        () => undefined,
        () => undefined,
      )
    : p.then(() => undefined);
  await race(settled, ms, () => undefined);
}
