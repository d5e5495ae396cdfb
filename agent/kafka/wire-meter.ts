/**
 * Counts the bytes kedge puts on the wire to Kafka: after compression, with
 * Kafka protocol framing, metadata requests and TLS records included — what a
 * metered uplink bills and what KEDGE_FORWARD_RATE caps.
 *
 * kafkajs takes a `socketFactory`: every connection of its producers is opened
 * through `WireMeter.socketFactory()`, TLS layered over a plain socket opened
 * here, so the plain socket's `bytesWritten` counts encrypted bytes, handshakes
 * included. @platformatic/kafka opens its own sockets (it has no socket factory):
 * `watch()` is handed each one when its connection is up (see platformatic.ts);
 * `bytesWritten` is cumulative, so the handshake and SASL bytes written before
 * that still count.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { ISocketFactory } from 'kafkajs';
import { CounterSampler } from '../observe/sampler.ts';

// kafkajs' default (network/socketFactory.js) uses the same keep-alive delay.
const KEEP_ALIVE_DELAY_MS = 60_000;

/** What the meter reads of a socket. */
interface Written {
  readonly bytesWritten: number;
}

/** What a consumer of the wire count needs: a monotonic byte total. */
export interface WireTotal {
  total(): number;
}

export class WireMeter implements WireTotal {
  private readonly live = new Set<Written>();
  /** Sockets handed to watch(), so a socket reported twice counts once. */
  private readonly watched = new WeakSet<net.Socket>();
  private closedBytes = 0;

  /** Bytes written by every socket opened through this meter, closed ones included. */
  total(): number {
    let n = this.closedBytes;
    for (const s of this.live) n += s.bytesWritten;
    return n;
  }

  /** Sockets currently open (for tests). */
  get openSockets(): number {
    return this.live.size;
  }

  /** A drop-in for kafkajs' default socket factory that counts what it writes. */
  socketFactory(): ISocketFactory {
    return ({ host, port, ssl, onConnect }) => {
      const raw = net.connect({ host, port }, ssl ? undefined : onConnect);
      this.track(raw);
      const socket = ssl
        ? tls.connect(
            { ...(!net.isIP(host) ? { servername: host } : {}), ...ssl, socket: raw },
            onConnect,
          )
        : raw;
      socket.setKeepAlive(true, KEEP_ALIVE_DELAY_MS);
      return socket;
    };
  }

  /**
   * Counts a socket opened elsewhere. For a TLS socket that Node connected itself
   * (no plain socket of ours underneath) `bytesWritten` counts plaintext: the
   * encrypted bytes are those of its TCP handle (Node's `_handle._parent`), read
   * while the socket lives and once more in its 'close' event, where the handle is
   * still readable. Without that handle (a Node that moved it) the plaintext count
   * is the fallback: it misses only TLS framing and handshakes.
   */
  watch(s: net.Socket): void {
    if (s.destroyed || this.watched.has(s)) return;
    this.watched.add(s);
    const tcp = (s as unknown as { _handle?: { _parent?: { bytesWritten?: unknown } } })._handle
      ?._parent;
    if (!(s instanceof tls.TLSSocket) || typeof tcp?.bytesWritten !== 'number') {
      this.track(s);
      return;
    }
    let last = 0;
    const counted: Written = {
      get bytesWritten() {
        const n = tcp.bytesWritten;
        if (typeof n === 'number' && n > last) last = n;
        return last;
      },
    };
    this.track(counted, s);
  }

  /** `counted` gives the bytes, `socket` says when it closed. */
  private track(counted: Written, socket: net.Socket = counted as net.Socket): void {
    this.live.add(counted);
    socket.once('close', () => {
      if (this.live.delete(counted)) this.closedBytes += counted.bytesWritten;
    });
  }
}

/** Bytes per second over the last `windowMs`, from periodic samples of a meter's total. */
export class WireRate {
  private readonly sampler: CounterSampler<'bytes'>;

  constructor(meter: WireTotal, windowMs = 60_000) {
    this.sampler = new CounterSampler(
      () => ({ bytes: meter.total() }),
      windowMs,
      () => performance.now(),
    );
  }

  start(intervalMs = 2_000): void {
    this.sampler.start(intervalMs);
  }

  stop(): void {
    this.sampler.stop();
  }

  bytesPerSecond(): number {
    return this.sampler.rate('bytes');
  }
}
