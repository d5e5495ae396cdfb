/**
 * The tap bus: ingest (agent/ingest/sink.ts) publishes every committed request's events here,
 * and `kedge tap` viewers (agent/status/tap.ts) attach to it. It lives below both: ingest must
 * not import status. Publishing never waits on a viewer and costs one comparison when no
 * viewer is attached; a viewer's `offer` must return at once (it buffers or drops, never
 * writes synchronously to a socket it cannot afford to wait for).
 */
import type { EventInput, Lane } from '../log/types.ts';
import { eventBytes } from '../event-size.ts';
import { KedgeError } from '../errors.ts';

/** attach() after closeAll(): the agent is stopping, a viewer attached now would hold stop up. */
export class TapBusClosed extends KedgeError {
  constructor() {
    super('KEDGE_TAP_STOPPING', 'the agent is stopping: tap takes no new viewers');
    this.name = 'TapBusClosed';
  }
}

/** Bytes of a value (and of a key) a viewer is shown: enough to recognise an event. */
export const TAP_PREVIEW_BYTES = 120;

/** One stored event as a viewer sees it: the value cut to a preview (copied, so the request body is not pinned). */
export interface TappedEvent {
  seq: number;
  topic: string;
  /** The first TAP_PREVIEW_BYTES of the key (null: no key). */
  key: Buffer | null;
  keyBytes: number;
  /** The first TAP_PREVIEW_BYTES of the value. */
  preview: Buffer;
  /** Key and value bytes, as quota and metrics count them. */
  size: number;
  /** When the commit was seen (ms since the epoch). */
  ts: number;
  lane: Lane;
  source: string;
}

/** One attached viewer. `wants` and `offer` must not block or throw; `close` ends the viewer (agent stop). */
export interface TapViewer {
  /**
   * Whether an event of `topic` is to be offered: false when the pattern does not match, or
   * when the viewer has no room (it counts that drop itself), so nothing is built for it.
   */
  wants(topic: string): boolean;
  offer(ev: TappedEvent): void;
  close(): void;
}

function head(b: Buffer): Buffer {
  // A copy: a subarray would keep the whole request body alive while the event waits in a buffer.
  return Buffer.from(b.subarray(0, TAP_PREVIEW_BYTES));
}

export class TapBus {
  readonly #viewers = new Set<TapViewer>();
  #closed = false;
  #failures = 0;

  /** closeAll() ran (agent stop): attach refuses. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Viewers let go because their `wants` or `offer` threw. */
  get failures(): number {
    return this.#failures;
  }

  /** Attached viewers; the sink publishes only when this is above 0. */
  get viewers(): number {
    return this.#viewers.size;
  }

  /** Attach a viewer; returns the function that detaches it. Throws TapBusClosed after closeAll(). */
  attach(v: TapViewer): () => void {
    if (this.#closed) throw new TapBusClosed();
    this.#viewers.add(v);
    return () => {
      this.#viewers.delete(v);
    };
  }

  /**
   * The events of one committed request, which got seqs firstSeq, firstSeq+1, … in order.
   * Called by the sink right after the commit, in commit order.
   */
  publish(events: readonly EventInput[], firstSeq: number): void {
    if (this.#viewers.size === 0) return;
    const ts = Date.now();
    for (let i = 0; i < events.length; i++) {
      const e = events[i];
      let tapped: TappedEvent | null = null;
      for (const v of this.#viewers) {
        // A viewer's fault (in wants or offer) is the viewer's: ingest goes on, it is let go.
        try {
          if (!v.wants(e.topic)) continue;
          tapped ??= {
            seq: firstSeq + i,
            topic: e.topic,
            key: e.key ? head(e.key) : null,
            keyBytes: e.key?.length ?? 0,
            preview: head(e.value),
            size: eventBytes(e),
            ts,
            lane: e.lane ?? 'bulk',
            source: e.source,
          };
          v.offer(tapped);
        } catch (err) {
          this.#fail(v, err);
        }
      }
    }
  }

  /** Detaches a viewer that threw, counts it, and ends its stream (best effort). */
  #fail(v: TapViewer, err: unknown): void {
    this.#viewers.delete(v); // deleting the current entry while iterating a Set is safe
    this.#failures++;
    process.emitWarning(`kedge tap: a viewer failed: ${(err as Error)?.message ?? err}`);
    try {
      v.close();
    } catch {
      // It failed already; nothing more to do for it.
    }
  }

  /** Agent stop: every viewer is ended (its stream closes). */
  closeAll(): void {
    this.#closed = true;
    const all = [...this.#viewers];
    this.#viewers.clear();
    for (const v of all) v.close();
  }
}
