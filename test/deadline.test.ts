/** agent/deadline.ts: the one timer race behind every bounded wait (pure, no services). */
import t from 'tap';
import { DeadlineError, waitAtMost, withDeadline } from '../agent/deadline.ts';

const never = () => new Promise<never>(() => {});
const later = <T>(ms: number, v: T) => new Promise<T>((r) => setTimeout(() => r(v), ms));
const failLater = (ms: number, msg: string) =>
  new Promise<never>((_, reject) => setTimeout(() => reject(new Error(msg)), ms));

t.test('withDeadline passes on the value or the rejection of a promise in time', async (tt) => {
  tt.equal(await withDeadline(later(5, 'v'), 1_000), 'v');
  await tt.rejects(withDeadline(failLater(5, 'refused'), 1_000), { message: 'refused' });
});

t.test('withDeadline rejects with a typed DeadlineError when time is up', async (tt) => {
  const started = performance.now();
  const e = await withDeadline(never(), 30).catch((x: unknown) => x);
  tt.ok(e instanceof DeadlineError);
  tt.equal((e as DeadlineError).ms, 30);
  tt.equal((e as DeadlineError).name, 'DeadlineError');
  tt.equal((e as DeadlineError).message, 'no answer within 30 ms');
  tt.ok(performance.now() - started >= 25, 'not before the deadline');
  await tt.rejects(withDeadline(never(), 5, 'no answer from Kafka within 5 ms'), {
    message: 'no answer from Kafka within 5 ms',
  });
});

t.test('a late rejection after the deadline is not an unhandled rejection', async (tt) => {
  const unhandled: unknown[] = [];
  const onUnhandled = (r: unknown) => unhandled.push(r);
  process.on('unhandledRejection', onUnhandled);
  await tt.rejects(withDeadline(failLater(20, 'late'), 5), DeadlineError);
  await waitAtMost(failLater(20, 'late too'), 5);
  await later(40, null);
  process.off('unhandledRejection', onUnhandled);
  tt.same(unhandled, []);
});

t.test('waitAtMost resolves at the deadline and passes on an early rejection', async (tt) => {
  const started = performance.now();
  await waitAtMost(never(), 30);
  tt.ok(performance.now() - started >= 25, 'waited the full time');
  tt.equal(await waitAtMost(later(5, 'v'), 1_000), undefined, 'the value is not passed on');
  await tt.rejects(waitAtMost(failLater(5, 'stop failed'), 1_000), { message: 'stop failed' });
  await tt.resolves(waitAtMost(failLater(5, 'ignored'), 1_000, { ignoreErrors: true }));
});

t.test('the timer does not keep the process alive after the race', async (tt) => {
  const before = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  await withDeadline(Promise.resolve(1), 60_000);
  await waitAtMost(Promise.resolve(1), 60_000);
  const after = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  tt.equal(after, before, 'cleared as soon as the promise settled');
});
