/**
 * Client mode's watch on the broker's own drop counter: a stock Mosquitto drops
 * messages for a subscriber whose queue is full, and says so only in its log and
 * in $SYS/. kedge shows it as a metric and warns when it grows.
 */
import type { MqttClient } from 'mqtt';
import type { Gauge } from 'prom-client';
import type { Logger } from '../observe/logger.ts';

/**
 * Mosquitto publishes how many messages it dropped (queue full: max_queued_messages,
 * max_queued_bytes), all clients together, every sys_interval. `#` does not match
 * `$SYS/` topics, so only this subscription brings it, and it is never stored.
 */
export const SYS_DROPPED_TOPIC = '$SYS/broker/publish/messages/dropped';

export class BrokerDropWatch {
  readonly #logger: Logger;
  readonly #gauge: Gauge;
  /** The broker's drop counter as last seen (null: not seen yet). */
  #dropped: number | null = null;

  constructor(logger: Logger, gauge: Gauge) {
    this.#logger = logger;
    this.#gauge = gauge;
  }

  /** Asks for the broker's drop counter; a broker without it refuses or never publishes: both fine. */
  subscribe(client: MqttClient): void {
    client.subscribe(SYS_DROPPED_TOPIC, { qos: 0 }, (err, granted) => {
      const ok = !err && (granted ?? []).every((g) => g.qos === 0);
      this.#logger.debug(
        { topic: SYS_DROPPED_TOPIC, ok, err: err?.message },
        'subscribed to the broker drop counter',
      );
    });
  }

  /** A message on SYS_DROPPED_TOPIC: its payload is the count as text. */
  note(text: string): void {
    const n = Number(text.trim());
    if (!Number.isFinite(n) || n < 0) return;
    const was = this.#dropped;
    this.#dropped = n;
    this.#gauge.set(n);
    // First value: drops since the broker started (perhaps while kedge was down); then only growth.
    if (n > (was ?? 0))
      this.#logger.warn(
        { dropped: n, new: n - (was ?? 0), since: was === null ? 'broker start' : 'last report' },
        'the MQTT broker is dropping messages (all its clients, kedge possibly among them): ' +
          'raise its max_queued_messages / max_queued_bytes (see docs/mqtt.md)',
      );
  }
}
