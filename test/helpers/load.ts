/**
 * A bounded load generator: N concurrent loops POST NDJSON batches of uniquely
 * numbered events and record which ids got a 2xx. Stops by itself.
 */
import { request } from 'undici';
import { httpPool } from './agent.ts';

export interface LoadResult {
  acked: Set<string>;
  sent: number;
  failed: number;
}

export class HttpLoad {
  readonly acked = new Set<string>();
  sent = 0;
  failed = 0;
  private stopped = false;
  private readonly loops: Promise<void>[] = [];
  private counter = 0;
  private base: () => string;
  private readonly topic: string;
  private readonly keys: number;
  private readonly batch: number;

  constructor(opts: {
    base: () => string;
    topic: string;
    keys: number;
    batch: number;
    concurrency: number;
    maxEvents: number;
  }) {
    this.base = opts.base;
    this.topic = opts.topic;
    this.keys = opts.keys;
    this.batch = opts.batch;
    for (let c = 0; c < opts.concurrency; c++) this.loops.push(this.loop(c, opts.maxEvents));
  }

  private async loop(c: number, maxEvents: number): Promise<void> {
    while (!this.stopped && this.counter < maxEvents) {
      const key = `k${c % this.keys}`;
      const ids: string[] = [];
      for (let i = 0; i < this.batch; i++) ids.push(`${c}-${this.counter++}`);
      const body = ids.map((id) => JSON.stringify({ id, key, pad: 'x'.repeat(100) })).join('\n');
      this.sent += ids.length;
      try {
        const r = await request(`${this.base()}/v1/topics/${this.topic}?key=${key}`, {
          method: 'POST',
          body,
          headers: { 'content-type': 'application/x-ndjson' },
          dispatcher: httpPool,
          headersTimeout: 10_000,
          bodyTimeout: 10_000,
        });
        await r.body.dump();
        if (r.statusCode === 200) for (const id of ids) this.acked.add(id);
        else this.failed += ids.length;
      } catch {
        this.failed += ids.length;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  async stop(): Promise<LoadResult> {
    this.stopped = true;
    await Promise.all(this.loops);
    return { acked: this.acked, sent: this.sent, failed: this.failed };
  }
}
