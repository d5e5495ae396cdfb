/**
 * Per-connection issue order for the embedded broker's appends (kedge promises ingest order
 * per key, and a connection is one sender).
 */
import type { Client } from 'aedes';

export class ArrivalOrder {
  /** The last pending issue of each connection that has one. */
  readonly #tails = new WeakMap<Client, Promise<void>>();
  readonly #onError: (err: unknown) => void;

  /** @param onError told when `issue` threw (the chain goes on regardless). */
  constructor(onError: (err: unknown) => void) {
    this.#onError = onError;
  }

  /**
   * Calls `issue` once `stored` (the QoS 2 lookup) has answered and every
   * earlier PUBLISH of the connection has issued its append. Without this a
   * QoS 2 message would be overtaken by the QoS 0/1 ones behind it in the same
   * socket read (they need no lookup), i.e. stored out of order per key. Only
   * the issuing is ordered: each message is still acknowledged when its own
   * commit is done, and with nothing waiting the append is issued at once, in
   * the same tick as its neighbours, so they keep sharing one group commit.
   */
  issue(
    client: Client | null,
    stored: Promise<boolean> | null,
    issue: (duplicate: boolean) => void,
  ): void {
    const earlier = client ? this.#tails.get(client) : undefined;
    if (!earlier && !stored) {
      issue(false);
      return;
    }
    const tail: Promise<void> = Promise.all([stored, earlier])
      .then(([duplicate]) => {
        if (client && this.#tails.get(client) === tail) this.#tails.delete(client);
        issue(duplicate === true);
      })
      // Keeps the chain alive should `issue` ever throw: every later message of the connection would wait forever, unacknowledged.
      .catch(this.#onError);
    if (client) this.#tails.set(client, tail);
  }
}
