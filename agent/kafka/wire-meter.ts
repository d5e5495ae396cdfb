/**
 * Counts the bytes kedge puts on the wire to Kafka: after compression, with
 * Kafka protocol framing, metadata requests and TLS records included — what a
 * metered uplink bills and what KEDGE_FORWARD_RATE caps.
 *
 * It works by owning the sockets: kafkajs takes a `socketFactory`, and every
 * connection of the producers is opened through `WireMeter.socketFactory()`.
 * TLS is layered over a plain socket opened here, so the plain socket's
 * `bytesWritten` counts encrypted bytes, handshakes included.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { ISocketFactory } from 'kafkajs';
import { CounterSampler } from '../observe/sampler.ts';

// kafkajs' default (network/socketFactory.js) uses the same keep-alive delay.
const KEEP_ALIVE_DELAY_MS = 60_000;

export class WireMeter {
  private readonly live = new Set<net.Socket>();
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

  private track(s: net.Socket): void {
    this.live.add(s);
    s.once('close', () => {
      if (this.live.delete(s)) this.closedBytes += s.bytesWritten;
    });
  }
}

/** Bytes per second over the last `windowMs`, from periodic samples of a meter's total. */
export class WireRate {
  private readonly sampler: CounterSampler<'bytes'>;

  constructor(meter: WireMeter, windowMs = 60_000) {
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
