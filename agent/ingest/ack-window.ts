/**
 * Client mode's acknowledgement window: the messages of one MQTT connection
 * between their arrival and their acknowledgement, in arrival order.
 *
 * kedge takes up to `maxCount` messages (and `maxBytes` of payload) at once,
 * so the appends of one socket read share one group commit; but MQTT requires
 * PUBACKs in the order the PUBLISHes arrived (QoS 1), and kedge's promise is
 * that a PUBACK never precedes the commit of its message. So a message is
 * acknowledged only once it and every message before it on the connection
 * have settled: committed, or deliberately dropped (oversize, retained replay).
 * A message the log refused closes the window: neither it nor anything after
 * it is ever acknowledged on this connection, and the broker redelivers them,
 * in order, on the next one.
 *
 * PUBACKs are written straight to this connection's socket as the 4-byte
 * packet both MQTT 3.1.1 and 5 define for success (0x40, length 2, packet id;
 * MQTT 5 §3.4.2.1 lets a success PUBACK omit the reason code), all the PUBACKs
 * one commit releases in one write. Writing to the socket the PUBLISH came on,
 * never to "the client", means a PUBACK can never go out on a later connection
 * where the broker may have reused its packet id.
 */

import type { MqttClient } from 'mqtt';

/** What the window needs of the socket: write, and whether it is still usable. */
export interface AckStream {
  write(chunk: Buffer): unknown;
  destroy(): unknown;
  readonly destroyed: boolean;
  readonly writable: boolean;
}

/** One message on the connection. */
export interface AckSlot {
  /** The PUBLISH packet id (QoS 1 and 2). */
  readonly messageId: number;
  readonly qos: 0 | 1 | 2;
  /** Payload bytes held while the slot is open (counted against maxBytes). */
  readonly bytes: number;
  state: 'waiting' | 'done' | 'refused';
  /** QoS 2: MQTT.js's own callback (it sends PUBCOMP), called when the slot's turn comes. */
  release?: () => void;
}

export interface AckWindowOptions {
  stream: AckStream;
  /** Most messages between arrival and acknowledgement. */
  maxCount: number;
  /** Most payload bytes between arrival and acknowledgement (one message is always admitted). */
  maxBytes: number;
  /** Called with the packet ids of each batch of PUBACKs written (observability). */
  onPubacks?: (ids: readonly number[]) => void;
  /**
   * Called once when acknowledgements reach a refused message, i.e. after the
   * PUBACKs of everything before it went out: the place to drop the connection.
   */
  onRefusal?: () => void;
}

export class AckWindow {
  private readonly opts: AckWindowOptions;
  private readonly slots: AckSlot[] = [];
  private head = 0;
  private bytes = 0;
  /** MQTT.js's "go on with the next packet", held while the window is full. */
  private held: (() => void) | null = null;
  private closedFlag = false;
  private refusedFlag = false;

  constructor(opts: AckWindowOptions) {
    this.opts = opts;
  }

  /** The connection this window belongs to. */
  get stream(): AckStream {
    return this.opts.stream;
  }

  /** True once a message was refused: take no more on this connection. */
  get refused(): boolean {
    return this.refusedFlag || this.closedFlag;
  }

  /** Messages between arrival and acknowledgement. */
  get size(): number {
    return this.slots.length - this.head;
  }

  /** Takes a message in; it is acknowledged when it and everything before it settled. */
  add(messageId: number, qos: 0 | 1 | 2, bytes: number): AckSlot {
    const slot: AckSlot = { messageId, qos, bytes, state: 'waiting' };
    this.slots.push(slot);
    this.bytes += bytes;
    return slot;
  }

  /**
   * `next` lets MQTT.js read the next packet: called now while the window has
   * room, else once acknowledgements made room. This is the bound on memory:
   * when it is full kedge stops reading the socket and TCP holds the rest.
   */
  admit(next: () => void): void {
    if (this.hasRoom()) next();
    else this.held = next;
  }

  /** The message is committed (or deliberately dropped): acknowledge what can be. */
  done(slot: AckSlot): void {
    slot.state = 'done';
    this.flush();
  }

  /** The log refused the message: it and everything after it stay unacknowledged. */
  refuse(slot: AckSlot): void {
    slot.state = 'refused';
    this.refusedFlag = true;
    this.flush();
  }

  /** The connection is gone: nothing more is written. */
  close(): void {
    this.closedFlag = true;
    this.held = null;
  }

  private hasRoom(): boolean {
    return this.size < this.opts.maxCount && (this.size <= 1 || this.bytes < this.opts.maxBytes);
  }

  private flush(): void {
    if (this.closedFlag) return;
    const ids: number[] = [];
    const releases: (() => void)[] = [];
    while (this.head < this.slots.length) {
      const slot = this.slots[this.head];
      if (slot.state === 'waiting') break;
      if (slot.state === 'refused') {
        this.closedFlag = true;
        break;
      }
      this.head++;
      this.bytes -= slot.bytes;
      if (slot.qos === 1) ids.push(slot.messageId);
      else if (slot.release) releases.push(slot.release);
    }
    if (this.head > 1024 && this.head * 2 > this.slots.length) {
      this.slots.splice(0, this.head);
      this.head = 0;
    }
    const s = this.opts.stream;
    if (ids.length > 0 && !s.destroyed && s.writable) {
      const buf = Buffer.allocUnsafe(ids.length * 4);
      for (let i = 0; i < ids.length; i++) {
        buf[i * 4] = 0x40;
        buf[i * 4 + 1] = 0x02;
        buf.writeUInt16BE(ids[i], i * 4 + 2);
      }
      s.write(buf);
      this.opts.onPubacks?.(ids);
    }
    for (const r of releases) r();
    if (this.closedFlag) {
      this.held = null;
      this.opts.onRefusal?.();
      return;
    }
    const held = this.held;
    if (held && this.hasRoom()) {
      this.held = null;
      held();
    }
  }
}

/**
 * Most QoS 1/2 messages kedge holds between arrival and PUBACK: sent to an
 * MQTT 5 broker as Receive Maximum (the broker sends no more unacknowledged
 * messages than that); with MQTT 3.1.1 the broker's own limit applies
 * (Mosquitto: max_inflight_messages, default 20) and kedge stops reading the
 * socket when it has this many. Up to this many messages share one commit.
 */
export const RECEIVE_MAXIMUM = 1000;
/** Most payload bytes held between arrival and PUBACK (memory bound with large payloads). */
export const WINDOW_BYTES = 8 * 1024 * 1024;

/**
 * The window of one MQTT.js connection (its current socket): PUBACKs go out on that
 * socket; a refusal drops it so the broker redelivers the rest.
 */
export function connectionWindow(client: MqttClient): AckWindow {
  const stream = client.stream;
  return new AckWindow({
    stream,
    maxCount: RECEIVE_MAXIMUM,
    maxBytes: WINDOW_BYTES,
    // MQTT.js documents 'packetsend' for every packet it sends; these go past its writer.
    onPubacks: (ids) => {
      for (const messageId of ids) client.emit('packetsend', { cmd: 'puback', messageId });
    },
    // Everything before the refused message is acknowledged: now drop the
    // connection so the broker redelivers the rest (see MqttClientIngest.appendFailed).
    onRefusal: () => stream.destroy(),
  });
}
