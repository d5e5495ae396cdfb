/**
 * QoS 1 publishers (the `mqtt` package, MQTT 3.1.1) as a PacedLoad transport: loop `c`
 * publishes on `<prefix>/<c>` (the record key in Kafka) through its own connection, a
 * batch of messages in flight at once; each PUBACK acknowledges one id.
 *
 * A message whose PUBACK never came is NOT resent: on any error the connection is
 * dropped with its in-flight messages (reconnectPeriod 0, clean session, a new client
 * next time). A publisher's resend would be a second event with its own kedge-id, and
 * the fault suite counts only kedge's own resends as duplicates.
 */
import mqtt, { type MqttClient } from 'mqtt';
import { eventJson, type LoadTransport } from './paced-load.ts';

export interface MqttTransportOptions {
  /** mqtt://127.0.0.1:<port> of kedge's embedded listener (a function: the port may change). */
  url: () => string;
  /** MQTT topic prefix; loop c publishes on `${prefix}/${c}`. */
  prefix: string;
  pad?: number;
  /** Longest wait for a PUBACK before the connection is given up; default 15 s. */
  ackTimeoutMs?: number;
}

export class MqttTransport implements LoadTransport {
  readonly source = 'mqtt';
  /** Connections opened, and connections given up (error, close, timeout). */
  connects = 0;
  drops = 0;
  private readonly clients = new Map<number, MqttClient>();
  private readonly ended = new WeakSet<MqttClient>();
  private readonly o: MqttTransportOptions;

  constructor(o: MqttTransportOptions) {
    this.o = o;
  }

  async send(loop: number, ids: number[]): Promise<number[]> {
    const client = await this.client(loop);
    const topic = `${this.o.prefix}/${loop}`;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>(
      (resolve) => (timer = setTimeout(resolve, this.o.ackTimeoutMs ?? 15_000)),
    );
    const acked: number[] = [];
    let failed = false;
    const sends = ids.map((id) =>
      client.publishAsync(topic, eventJson(id, this.o.pad ?? 100), { qos: 1 }).then(
        () => void acked.push(id),
        () => void (failed = true),
      ),
    );
    const all = Promise.all(sends);
    await Promise.race([all, timeout]);
    clearTimeout(timer);
    // Whatever is still in flight now is abandoned with the connection (never resent).
    if (failed || acked.length < ids.length) {
      this.drop(loop, client);
      await all;
    }
    return acked;
  }

  private async client(loop: number): Promise<MqttClient> {
    const existing = this.clients.get(loop);
    if (existing?.connected) return existing;
    if (existing) this.drop(loop, existing);
    this.connects++;
    const client = mqtt.connect(this.o.url(), {
      protocolVersion: 4,
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: 3_000,
      clientId: `kedge-fault-${process.pid}-${loop}-${this.connects}`,
    });
    // A closed stream never reconnects by itself (reconnectPeriod 0): give it up, which
    // fails every publish still waiting for its PUBACK.
    client.on('close', () => this.drop(loop, client));
    client.on('error', () => this.drop(loop, client));
    await new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve());
      client.once('close', () => reject(new Error('mqtt: connection closed before CONNACK')));
    });
    this.clients.set(loop, client);
    return client;
  }

  private drop(loop: number, client: MqttClient): void {
    if (this.clients.get(loop) === client) this.clients.delete(loop);
    if (this.ended.has(client)) return;
    this.ended.add(client);
    this.drops++;
    // Forced end with reconnectPeriod 0 and a clean session fails every pending callback.
    client.end(true);
  }

  async close(): Promise<void> {
    for (const [loop, c] of [...this.clients]) this.drop(loop, c);
  }
}
