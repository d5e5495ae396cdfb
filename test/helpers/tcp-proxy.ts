/**
 * A throttling, fault-injecting TCP proxy for tests (loopback only), put between
 * kedge and a Kafka broker. Kafka clients connect to the address the broker
 * advertises in its metadata, so the broker must advertise the proxy's port
 * (kafkaBehindProxy below does that with one extra listener).
 *
 * Directions: 'up' is client → broker, 'down' is broker → client.
 * Faults: blackhole() (a hang: connections stay open, nothing moves), resetAll()
 * (RST on every connection), resetAfterBytes(n) (RST once n more bytes went up),
 * setRate() (a slow link), heal() (back to normal, rate limits kept).
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { freePort } from './ports.ts';
import type { KafkaNode, StartKafkaOptions } from '../../scripts/kafka/kafka.ts';

export type Direction = 'up' | 'down';

export interface TcpProxyOptions {
  /** Where the broker (or any TCP server) listens. */
  upstreamPort: number;
  upstreamHost?: string;
  /** Default: a free port. */
  port?: number;
}

export class TcpProxyError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'TcpProxyError';
    this.code = code;
  }
}

/** Bytes forwarded in one direction, with when (performance.now() ms). */
export class ByteLog {
  private readonly times: number[] = [];
  private readonly sizes: number[] = [];
  total = 0;

  add(t: number, n: number): void {
    this.total += n;
    // Writes within one millisecond share a sample: a fast drain stays a short array.
    const last = this.times.length - 1;
    if (last >= 0 && Math.floor(this.times[last]) === Math.floor(t)) this.sizes[last] += n;
    else {
      this.times.push(t);
      this.sizes.push(n);
    }
  }

  /** Bytes forwarded in [t0, t1). */
  between(t0: number, t1: number): number {
    let sum = 0;
    for (let i = 0; i < this.times.length; i++)
      if (this.times[i] >= t0 && this.times[i] < t1) sum += this.sizes[i];
    return sum;
  }

  /** The most bytes forwarded in any window of `windowMs` that lies inside [t0, t1). */
  maxWindow(windowMs: number, t0: number, t1: number): number {
    return this.peakWindow(windowMs, t0, t1).bytes;
  }

  /** Like maxWindow, and when that window began. */
  peakWindow(windowMs: number, t0: number, t1: number): { bytes: number; start: number } {
    let best = { bytes: 0, start: t0 };
    let sum = 0;
    let lo = 0;
    const idx: number[] = [];
    for (let i = 0; i < this.times.length; i++)
      if (this.times[i] >= t0 && this.times[i] < t1) idx.push(i);
    for (let hi = 0; hi < idx.length; hi++) {
      sum += this.sizes[idx[hi]];
      while (this.times[idx[hi]] - this.times[idx[lo]] >= windowMs) sum -= this.sizes[idx[lo++]];
      if (sum > best.bytes) best = { bytes: sum, start: this.times[idx[lo]] };
    }
    return best;
  }
}

/** A token bucket: `rate` bytes per second, at most `burst` bytes at once. */
class Bucket {
  readonly rate: number;
  readonly burst: number;
  private tokens: number;
  private at = performance.now();
  constructor(rate: number, burst: number) {
    this.rate = rate;
    this.burst = burst;
    this.tokens = burst;
  }
  available(): number {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) * this.rate) / 1000);
    this.at = now;
    return Math.floor(this.tokens);
  }
  take(n: number): void {
    this.tokens -= n;
  }
  /** ms until `n` tokens are there. */
  waitFor(n: number): number {
    return Math.max(1, Math.ceil(((Math.min(n, this.burst) - this.tokens) * 1000) / this.rate));
  }
}

const HIGH_WATER = 256 * 1024;

/** One direction of one connection: bytes read from `src`, queued, written to `dst`. */
class Pipe {
  readonly dir: Direction;
  readonly src: net.Socket;
  readonly dst: net.Socket;
  private readonly proxy: TcpProxy;
  readonly queue: Buffer[] = [];
  queued = 0;
  private dstBlocked = false;
  private srcEnded = false;

  constructor(proxy: TcpProxy, dir: Direction, src: net.Socket, dst: net.Socket) {
    this.proxy = proxy;
    this.dir = dir;
    this.src = src;
    this.dst = dst;
    src.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.queued += chunk.length;
      this.proxy.pump(this.dir);
      this.updateFlow();
    });
    src.on('end', () => {
      this.srcEnded = true;
      this.maybeEnd();
    });
    dst.on('drain', () => {
      this.dstBlocked = false;
      this.updateFlow();
    });
  }

  /** Reads from src only while forwarding is allowed and nothing piles up. */
  updateFlow(): void {
    if (this.src.destroyed) return;
    const flowing = !this.proxy.isBlackholed() && !this.dstBlocked && this.queued < HIGH_WATER;
    if (flowing && this.src.isPaused()) this.src.resume();
    else if (!flowing && !this.src.isPaused()) this.src.pause();
  }

  /** Writes up to `max` queued bytes; returns how many. */
  forward(max: number): number {
    let sent = 0;
    while (this.queue.length > 0 && sent < max && !this.dst.destroyed) {
      let chunk = this.queue[0];
      if (chunk.length > max - sent) {
        this.queue[0] = chunk.subarray(max - sent);
        chunk = chunk.subarray(0, max - sent);
      } else this.queue.shift();
      this.queued -= chunk.length;
      sent += chunk.length;
      if (!this.dst.write(chunk)) this.dstBlocked = true;
    }
    this.updateFlow();
    this.maybeEnd();
    return sent;
  }

  private maybeEnd(): void {
    if (this.srcEnded && this.queued === 0 && !this.dst.destroyed) this.dst.end();
  }
}

interface Conn {
  client: net.Socket;
  upstream: net.Socket;
  pipes: Record<Direction, Pipe>;
}

export class TcpProxy {
  readonly port: number;
  readonly upstreamPort: number;
  readonly upstreamHost: string;
  readonly bytes: Record<Direction, ByteLog> = { up: new ByteLog(), down: new ByteLog() };
  /** Connections accepted so far, and RSTs sent (one per connection reset). */
  accepted = 0;
  resets = 0;
  private readonly server: net.Server;
  private readonly conns = new Set<Conn>();
  private blackholed = false;
  private readonly buckets: Record<Direction, Bucket | null> = { up: null, down: null };
  private readonly timers: Record<Direction, NodeJS.Timeout | null> = { up: null, down: null };
  private resetArm: { remaining: number; fired: () => void } | null = null;
  private closed = false;

  private constructor(server: net.Server, port: number, o: TcpProxyOptions) {
    this.server = server;
    this.port = port;
    this.upstreamPort = o.upstreamPort;
    this.upstreamHost = o.upstreamHost ?? '127.0.0.1';
    server.on('connection', (s) => this.accept(s));
  }

  static async start(o: TcpProxyOptions): Promise<TcpProxy> {
    const server = net.createServer({ noDelay: true });
    const port = await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: '127.0.0.1', port: o.port ?? 0, exclusive: true }, () =>
        resolve((server.address() as net.AddressInfo).port),
      );
    });
    return new TcpProxy(server, port, o);
  }

  /** A timestamp on the same clock as the byte logs. */
  now(): number {
    return performance.now();
  }

  get connections(): number {
    return this.conns.size;
  }

  isBlackholed(): boolean {
    return this.blackholed;
  }

  /**
   * Caps one direction at `bytesPerSecond` (null: unlimited). `burstBytes` defaults
   * to a tenth of a second's worth (at least 4 KiB).
   */
  setRate(dir: Direction, bytesPerSecond: number | null, burstBytes?: number): void {
    this.buckets[dir] =
      bytesPerSecond === null
        ? null
        : new Bucket(bytesPerSecond, burstBytes ?? Math.max(4096, bytesPerSecond / 10));
    this.pump(dir);
  }

  /** A hang outage: every connection, old and new, stays open but nothing moves either way. */
  blackhole(): void {
    this.blackholed = true;
    this.eachPipe((p) => p.updateFlow());
  }

  /** Forwarding resumes (queued bytes included); rate limits stay as set. */
  heal(): void {
    this.blackholed = false;
    this.eachPipe((p) => p.updateFlow());
    this.pump('up');
    this.pump('down');
  }

  /** Every open connection is destroyed with a TCP RST on both sides. Returns how many. */
  resetAll(): number {
    const n = this.conns.size;
    for (const c of [...this.conns]) this.drop(c, true);
    this.resets += n;
    return n;
  }

  /**
   * Once `n` more client → broker bytes went through, the rest of that chunk is
   * withheld and every connection is reset: a connection cut in the middle of a
   * request. Resolves when it fired (or when the proxy closes first).
   */
  resetAfterBytes(n: number): Promise<void> {
    if (this.resetArm)
      throw new TcpProxyError('PROXY_ARMED', 'resetAfterBytes: a reset is already armed');
    return new Promise((resolve) => {
      this.resetArm = { remaining: n, fired: resolve };
    });
  }

  /** Stops listening, destroys every connection, clears every timer. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const d of ['up', 'down'] as const) {
      if (this.timers[d]) clearTimeout(this.timers[d]!);
      this.timers[d] = null;
    }
    this.resetArm?.fired();
    this.resetArm = null;
    for (const c of [...this.conns]) this.drop(c, false);
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private accept(client: net.Socket): void {
    if (this.closed) return void client.destroy();
    this.accepted++;
    client.setNoDelay(true);
    const upstream = net.connect({
      host: this.upstreamHost,
      port: this.upstreamPort,
      noDelay: true,
    });
    const conn: Conn = { client, upstream, pipes: {} as Record<Direction, Pipe> };
    conn.pipes.up = new Pipe(this, 'up', client, upstream);
    conn.pipes.down = new Pipe(this, 'down', upstream, client);
    this.conns.add(conn);
    // Nothing is read from the client until the broker side is connected.
    client.pause();
    upstream.pause();
    upstream.once('connect', () => {
      conn.pipes.up.updateFlow();
      conn.pipes.down.updateFlow();
    });
    // A broker that is down refuses the connection: the client sees a reset, as it would directly.
    for (const s of [client, upstream]) {
      s.on('error', () => this.drop(conn, true));
      s.on('close', () => this.drop(conn, false));
    }
  }

  private drop(c: Conn, rst: boolean): void {
    if (!this.conns.delete(c)) return;
    for (const s of [c.client, c.upstream]) {
      if (s.destroyed) continue;
      if (rst && s.readyState === 'open') s.resetAndDestroy();
      else s.destroy();
    }
  }

  private eachPipe(fn: (p: Pipe) => void): void {
    for (const c of this.conns) {
      fn(c.pipes.up);
      fn(c.pipes.down);
    }
  }

  /** Moves queued bytes of one direction, within the rate limit; schedules itself when tokens run out. */
  pump(dir: Direction): void {
    if (this.closed || this.blackholed || this.timers[dir]) return;
    const bucket = this.buckets[dir];
    const pending = [...this.conns]
      .map((c) => c.pipes[dir])
      .filter((p) => p.queued > 0 && p.dst.readyState === 'open');
    // Round robin, one slice per connection per pass, so one busy connection cannot starve another.
    while (pending.length > 0) {
      let budget = bucket ? bucket.available() : Infinity;
      if (budget <= 0) break;
      for (let i = 0; i < pending.length && budget > 0; ) {
        const p = pending[i];
        let max = bucket ? Math.max(1, Math.floor(budget / (pending.length - i))) : Infinity;
        if (dir === 'up' && this.resetArm) max = Math.min(max, this.resetArm.remaining);
        const sent = p.forward(max);
        bucket?.take(sent);
        budget -= sent;
        if (sent > 0) this.bytes[dir].add(performance.now(), sent);
        if (dir === 'up' && this.resetArm) {
          this.resetArm.remaining -= sent;
          if (this.resetArm.remaining <= 0) {
            const fired = this.resetArm.fired;
            this.resetArm = null;
            this.resetAll();
            fired();
            return;
          }
        }
        if (p.queued === 0 || p.dst.destroyed) pending.splice(i, 1);
        else i++;
      }
      if (!bucket) break;
    }
    if (bucket && pending.some((p) => p.queued > 0)) {
      this.timers[dir] = setTimeout(() => {
        this.timers[dir] = null;
        this.pump(dir);
      }, bucket.waitFor(4096));
    }
  }
}

/**
 * startKafka options that put a proxy in front of a one-broker cluster: an extra
 * PLAINTEXT listener EXTERNAL on its own port, advertised as the proxy's address.
 * Clients that bootstrap through the proxy get the proxy back from metadata, so all
 * their traffic passes it; `cluster.bootstrap` (PLAINTEXT) stays direct for kcat.
 */
export async function kafkaBehindProxy(): Promise<{
  proxy: TcpProxy;
  kafkaOptions: StartKafkaOptions;
  bootstrap: string;
}> {
  const externalPort = await freePort();
  const proxy = await TcpProxy.start({ upstreamPort: externalPort });
  const kafkaOptions: StartKafkaOptions = {
    brokers: 1,
    listenersFn: (node: Pick<KafkaNode, 'port'>) => [
      {
        name: 'EXTERNAL',
        protocol: 'PLAINTEXT',
        port: externalPort,
        // Listener props are applied after the defaults: this replaces advertised.listeners.
        props: {
          'advertised.listeners': `PLAINTEXT://127.0.0.1:${node.port},EXTERNAL://127.0.0.1:${proxy.port}`,
        },
      },
    ],
  };
  return { proxy, kafkaOptions, bootstrap: `127.0.0.1:${proxy.port}` };
}
