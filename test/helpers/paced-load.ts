/**
 * Sustained load at a fixed rate, recorded in an AckLedger: `concurrency` loops each
 * send a batch of fresh ids on their own key, one batch at a time, through a
 * transport (HTTP here, MQTT in mqtt-load.ts). A fixed rate keeps a 2-minute outage
 * a bounded backlog instead of whatever the machine can ingest. Stops by itself at
 * `maxEvents`.
 */
import { request } from 'undici';
import { httpPool } from './agent.ts';
import type { AckLedger } from './ack-ledger.ts';

export interface LoadTransport {
  /** Source label in the ledger, e.g. 'http'. */
  readonly source: string;
  /** Sends one batch for loop `loop`; resolves with the ids acknowledged (may be none). */
  send(loop: number, ids: number[]): Promise<Iterable<number>>;
  /** Closes connections; called once by PacedLoad.stop(). */
  close(): Promise<void>;
}

export interface PacedLoadOptions {
  ledger: AckLedger;
  transport: LoadTransport;
  concurrency: number;
  batch: number;
  /** Events per second over all loops; 0: as fast as acknowledgements come. */
  rate: number;
  /** Stop sending after this many events (a bound for every loop); default 10 million. */
  maxEvents?: number;
}

export class PacedLoad {
  sent = 0;
  acked = 0;
  private stopped = false;
  private readonly loops: Promise<void>[] = [];
  private readonly o: PacedLoadOptions;

  constructor(o: PacedLoadOptions) {
    this.o = o;
    const start = Date.now();
    for (let c = 0; c < o.concurrency; c++) this.loops.push(this.loop(c, start));
  }

  private async loop(c: number, start: number): Promise<void> {
    const { ledger, transport, batch, concurrency, rate } = this.o;
    const max = this.o.maxEvents ?? 10_000_000;
    const interval = rate > 0 ? (batch * concurrency * 1000) / rate : 0;
    let next = start + (interval * c) / concurrency;
    while (!this.stopped && this.sent < max) {
      const now = Date.now();
      if (next > now) await sleep(next - now);
      if (this.stopped) break;
      // After a stall (agent down) resume at the rate, without a burst to catch up.
      next = Math.max(next + interval, Date.now() - 1_000);
      const first = ledger.take(batch);
      const ids = Array.from({ length: batch }, (_, i) => first + i);
      this.sent += batch;
      let n = 0;
      try {
        const ok = [...(await transport.send(c, ids))];
        n = ok.length;
        ledger.ack(ok, transport.source);
      } catch {
        // Refused connection, reset, timeout: nothing acknowledged; try again shortly.
      }
      this.acked += n;
      ledger.fail(batch - n);
      if (n < batch) await sleep(50);
    }
  }

  async stop(): Promise<{ sent: number; acked: number }> {
    this.stopped = true;
    await Promise.all(this.loops);
    await this.o.transport.close();
    return { sent: this.sent, acked: this.acked };
  }
}

/** The value of one event: compact JSON whose `id` the ledger comparison reads back. */
export function eventJson(id: number, pad: number): string {
  return `{"id":${id},"pad":"${'x'.repeat(pad)}"}`;
}

/**
 * NDJSON batches to POST /v1/topics/{topic}?key=h<loop mod keys>; a batch is acknowledged
 * by a 200 (all or nothing). `statuses` counts answers by status code ('error' when none).
 */
export class HttpTransport implements LoadTransport {
  readonly source = 'http';
  readonly statuses = new Map<number | 'error', number>();
  private readonly o: {
    base: () => string;
    topic: string;
    keys: number;
    pad?: number;
    timeoutMs?: number;
  };

  constructor(o: {
    base: () => string;
    topic: string;
    keys: number;
    pad?: number;
    timeoutMs?: number;
  }) {
    this.o = o;
  }

  async send(loop: number, ids: number[]): Promise<number[]> {
    const key = `h${loop % this.o.keys}`;
    const body = ids.map((id) => eventJson(id, this.o.pad ?? 100)).join('\n');
    const timeout = this.o.timeoutMs ?? 15_000;
    let status: number | 'error' = 'error';
    try {
      const r = await request(`${this.o.base()}/v1/topics/${this.o.topic}?key=${key}`, {
        method: 'POST',
        body,
        headers: { 'content-type': 'application/x-ndjson' },
        dispatcher: httpPool,
        headersTimeout: timeout,
        bodyTimeout: timeout,
      });
      await r.body.dump();
      status = r.statusCode;
    } finally {
      this.statuses.set(status, (this.statuses.get(status) ?? 0) + 1);
    }
    return status === 200 ? ids : [];
  }

  async close(): Promise<void> {}
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
