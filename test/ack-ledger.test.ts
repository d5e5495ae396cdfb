/**
 * The fault suite's comparison (test/helpers/ack-ledger.ts) must catch what it claims
 * to: a missing acknowledged event, a duplicate that is a new event, a key out of order.
 */
import t from 'tap';
import { AckLedger, LedgerChecker } from './helpers/ack-ledger.ts';

/** A kcat line as the checker reads it: partition, offset, key, headers, value. */
const line = (p: number, o: number, key: string, kid: string, id: number): string =>
  `${p}\t${o}\t${key}\tkedge-id=${kid},kedge-ingest-ts=1\t{"id":${id},"pad":"x"}`;

function ledgerOf(n: number, acked: number[]): AckLedger {
  const l = new AckLedger();
  l.take(n);
  l.ack(acked, 'http');
  l.fail(n - acked.length);
  return l;
}

t.test('a clean delivery with a resend passes', async (tt) => {
  const c = new LedgerChecker(ledgerOf(3, [0, 1, 2]));
  for (const l of [
    line(0, 0, 'a', 'x:1', 0),
    line(0, 1, 'a', 'x:2', 1),
    line(0, 2, 'a', 'x:2', 1),
    line(1, 0, 'b', 'x:3', 2),
  ])
    c.line('t', l);
  const r = c.finish();
  tt.same(
    {
      missing: r.missing,
      duplicates: r.duplicates,
      foreign: r.foreignDuplicates,
      order: r.orderViolations,
      unique: r.unique,
      delivered: r.deliveredAcked,
    },
    { missing: 0, duplicates: 1, foreign: 0, order: [], unique: 3, delivered: 3 },
  );
});

t.test('a missing acknowledged event is reported; an unacknowledged one is not', async (tt) => {
  const c = new LedgerChecker(ledgerOf(4, [0, 1, 3]));
  c.line('t', line(0, 0, 'a', 'x:1', 0));
  const r = c.finish();
  tt.equal(r.missing, 2);
  tt.same(r.missingSample, [1, 3]);
});

t.test('a duplicate with a new kedge-id is a foreign duplicate', async (tt) => {
  const c = new LedgerChecker(ledgerOf(1, [0]));
  c.line('t', line(0, 0, 'a', 'x:1', 0));
  c.line('t', line(0, 1, 'a', 'x:7', 0));
  tt.equal(c.finish().foreignDuplicates, 1);
});

t.test('a lower seq after a higher one on the same key is an order violation', async (tt) => {
  const c = new LedgerChecker(ledgerOf(2, [0, 1]));
  c.line('t', line(0, 0, 'a', 'x:5', 0));
  c.line('t', line(0, 1, 'a', 'x:4', 1));
  tt.equal(c.finish().orderViolations.length, 1);
});

t.test('records without a kedge-id or with unknown ids are counted', async (tt) => {
  const c = new LedgerChecker(ledgerOf(1, [0]));
  c.line('t', `0\t0\ta\t\t{"id":0}`);
  c.line('t', line(0, 1, 'a', 'x:1', 99));
  const r = c.finish();
  tt.equal(r.malformed, 1);
  tt.equal(r.unknownIds, 1);
});

t.test('a kedge-id naming two different events is a reused seq', async (tt) => {
  // The seq 4 went out for event 0, then (a log rolled back by a lost write) for event 1.
  const c = new LedgerChecker(ledgerOf(3, [0, 1, 2]));
  c.line('t', line(0, 0, 'a', 'x:4', 0));
  c.line('t', line(0, 1, 'b', 'x:4', 1));
  c.line('t', line(1, 0, 'c', 'y:4', 2)); // another agent's seq 4: not a reuse
  const r = c.finish();
  tt.equal(r.reusedKedgeIds, 1);
  tt.same([r.seqMin, r.seqMax], [4, 4]);
});

t.test("an event before one its key's sender sent earlier is an order violation", async (tt) => {
  // kedge seqs in order, but the sender sent event 1 before event 2.
  const c = new LedgerChecker(ledgerOf(3, [0, 1, 2]));
  c.line('t', line(0, 0, 'a', 'x:1', 0));
  c.line('t', line(0, 1, 'a', 'x:2', 2));
  c.line('t', line(0, 2, 'a', 'x:3', 1));
  tt.equal(c.finish().orderViolations.length, 1);
});

t.test('a key in two partitions is an order violation', async (tt) => {
  const c = new LedgerChecker(ledgerOf(2, [0, 1]));
  c.line('t', line(0, 0, 'a', 'x:1', 0));
  c.line('t', line(1, 0, 'a', 'x:2', 1));
  tt.match(c.finish().orderViolations, [/in partitions 0 and 1/]);
});
