/**
 * The tap bus in-process: a viewer whose `wants` or `offer` throws is detached, counted and
 * closed while the other viewers keep getting every event; after closeAll() (agent stop) no
 * viewer can attach, and GET /v1/tap answers 503 `stopping` instead of a stream that would
 * hold the listener's stop up.
 */
import t from 'tap';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import {
  TapBus,
  TapBusClosed,
  type TappedEvent,
  type TapViewer,
} from '../agent/observe/tap-bus.ts';
import { Metrics } from '../agent/observe/metrics.ts';
import { serveTap } from '../agent/status/tap.ts';
import type { EventInput } from '../agent/log/index.ts';

const ev = (topic: string): EventInput => ({
  topic,
  key: null,
  value: Buffer.from('{"v":1}'),
  source: 'http',
});

/** A viewer that takes everything, or throws from `wants`/`offer` when told to. */
function viewer(fault: 'wants' | 'offer' | null) {
  const got: TappedEvent[] = [];
  let closed = 0;
  const v: TapViewer = {
    wants: () => {
      if (fault === 'wants') throw new Error('wants broke');
      return true;
    },
    offer: (e) => {
      if (fault === 'offer') throw new Error('offer broke');
      got.push(e);
    },
    close: () => {
      closed++;
    },
  };
  return { v, got, closed: () => closed };
}

t.test('a viewer that throws is let go; the others get every event', async (t) => {
  const warnings: string[] = [];
  const onWarn = (w: Error) => warnings.push(w.message);
  process.on('warning', onWarn);
  t.teardown(() => process.off('warning', onWarn));
  const bus = new TapBus();
  const before = viewer(null);
  const badWants = viewer('wants');
  const badOffer = viewer('offer');
  const after = viewer(null);
  for (const x of [before, badWants, badOffer, after]) bus.attach(x.v);
  bus.publish([ev('a'), ev('b'), ev('c')], 10);
  t.same(
    before.got.map((e) => e.seq),
    [10, 11, 12],
    'the viewer before the faulty ones got every event',
  );
  t.same(
    after.got.map((e) => e.seq),
    [10, 11, 12],
    'the viewer after them too (the publish loop went on)',
  );
  t.equal(bus.viewers, 2, 'both faulty viewers detached');
  t.equal(bus.failures, 2, 'and counted');
  t.equal(badWants.closed(), 1, 'a faulty viewer is closed (its stream ends)');
  t.equal(badOffer.closed(), 1);
  bus.publish([ev('d')], 13);
  t.same(
    after.got.map((e) => e.seq),
    [10, 11, 12, 13],
  );
  await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
  t.equal(warnings.filter((w) => /kedge tap: a viewer failed/.test(w)).length, 2);
});

t.test('after closeAll no viewer attaches; GET /v1/tap answers 503 stopping', async (t) => {
  const bus = new TapBus();
  const early = viewer(null);
  bus.attach(early.v);
  bus.closeAll();
  t.equal(early.closed(), 1, 'attached viewers are closed');
  t.throws(() => bus.attach(viewer(null).v), TapBusClosed, 'a late attach is refused');
  t.equal(bus.viewers, 0);
  const metrics = new Metrics();
  const server = createServer((req, res) => {
    serveTap(req, res, { bus, metrics }, () => true).catch((e) => {
      res.statusCode = 500;
      res.end(String(e));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const { port } = server.address() as AddressInfo;
  const r = await request(`http://127.0.0.1:${port}/v1/tap`, { headersTimeout: 10_000 });
  t.equal(r.statusCode, 503);
  t.match(await r.body.json(), { error: 'stopping' });
});
