/**
 * What both MQTT modes share: MQTT message → log event (topic mapping, key,
 * `mqtt-topic` header), and the kedge_mqtt_* metrics. Client and broker mode
 * may run side by side in one agent, so the metrics are created once per
 * registry and looked up by the second mode.
 */
import { createHash } from 'node:crypto';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { EventInput } from '../log/types.ts';

/** Kafka's limit on a topic name. */
export const KAFKA_TOPIC_MAX = 249;

export interface TopicMapping {
  /** Every message goes to this Kafka topic (KEDGE_MQTT_KAFKA_TOPIC); null: derive from the MQTT topic. */
  kafkaTopic: string | null;
  /** Length of KEDGE_TOPIC_PREFIX: the forwarder prepends it, so a mapped name must leave room for it. */
  prefixLength: number;
}

/**
 * MQTT topic → Kafka topic name (without the prefix): `/` becomes `.`, every
 * character Kafka refuses becomes `_`. Names too long for 249 - prefixLength
 * keep their head and end in `_` + 8 hex digits of a hash of the whole MQTT
 * topic, so two long topics that share a head do not merge into one Kafka topic.
 * Never returns "", "." or "..".
 */
export function kafkaTopicName(mqttTopic: string, prefixLength = 0): string {
  const max = Math.max(1, KAFKA_TOPIC_MAX - Math.max(0, prefixLength));
  // Per code point (`u`): one `_` for an emoji, not two.
  let name = mqttTopic.replace(/\//g, '.').replace(/[^a-zA-Z0-9._-]/gu, '_');
  if (name.length > max) {
    const hash = createHash('sha256').update(mqttTopic, 'utf8').digest('hex').slice(0, 8);
    name =
      max > hash.length + 1
        ? `${name.slice(0, max - hash.length - 1)}_${hash}`
        : name.slice(0, max);
  }
  // `.` and `..` are the only all-legal names Kafka still refuses (MQTT topics "/" and "//").
  if (name === '' || name === '.' || name === '..') name = '_'.repeat(Math.max(1, name.length));
  return name;
}

/** Builds log events from MQTT messages; caches the topic mapping (a device publishes to few topics, very often). */
export class MqttEventMapper {
  private readonly mapping: TopicMapping;
  private readonly cache = new Map<string, string>();
  private static readonly CACHE_MAX = 10_000;

  constructor(mapping: TopicMapping) {
    this.mapping = mapping;
  }

  kafkaTopic(mqttTopic: string): string {
    if (this.mapping.kafkaTopic !== null) return this.mapping.kafkaTopic;
    let name = this.cache.get(mqttTopic);
    if (name === undefined) {
      name = kafkaTopicName(mqttTopic, this.mapping.prefixLength);
      // A device that puts ids in topic names could make the cache grow forever: start over instead.
      if (this.cache.size >= MqttEventMapper.CACHE_MAX) this.cache.clear();
      this.cache.set(mqttTopic, name);
    }
    return name;
  }

  /** Key = the MQTT topic's bytes, header `mqtt-topic` = the MQTT topic, value = the payload bytes exactly. */
  event(mqttTopic: string, payload: Buffer | Uint8Array | string): EventInput {
    const value = Buffer.isBuffer(payload)
      ? payload
      : typeof payload === 'string'
        ? Buffer.from(payload, 'utf8')
        : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
    return {
      topic: this.kafkaTopic(mqttTopic),
      key: Buffer.from(mqttTopic, 'utf8'),
      value,
      headers: { 'mqtt-topic': mqttTopic },
      source: 'mqtt',
    };
  }
}

export type MqttMode = 'client' | 'broker';

/** Why an MQTT message or connection was refused. */
export type MqttRefusal =
  /** payload above KEDGE_MQTT_MAX_PAYLOAD */
  | 'oversize'
  /** the log refused the append (disk full, reject-new, write error): no PUBACK */
  | 'log'
  /** kedge is shutting down: no PUBACK */
  | 'stopping'
  /** wrong or missing credentials (broker mode) */
  | 'auth'
  /** MQTT 5 CONNECT to the 3.1.1-only embedded broker */
  | 'protocol'
  /** publish to the reserved $SYS/ tree (broker mode) */
  | 'sys-topic'
  /** a packet that could not be parsed (broker mode: connection closed) */
  | 'malformed';

export interface MqttMetrics {
  refused: Counter<'mode' | 'reason'>;
  retainedSkipped: Counter;
  linkUp: Gauge;
  reconnects: Counter;
  clients: Gauge;
  brokerDropped: Gauge;
}

/** The kedge_mqtt_* metrics on `registry`, created on first use. */
export function mqttMetrics(registry: Registry): MqttMetrics {
  const get = <T>(name: string, make: () => T): T =>
    (registry.getSingleMetric(name) as T | undefined) ?? make();
  const registers = [registry];
  return {
    refused: get(
      'kedge_mqtt_refused_total',
      () =>
        new Counter({
          name: 'kedge_mqtt_refused_total',
          help: 'MQTT messages or connections refused (nothing stored); reason oversize = payload above KEDGE_MQTT_MAX_PAYLOAD, dropped for good',
          labelNames: ['mode', 'reason'] as const,
          registers,
        }),
    ),
    retainedSkipped: get(
      'kedge_mqtt_retained_skipped_total',
      () =>
        new Counter({
          name: 'kedge_mqtt_retained_skipped_total',
          help: 'Retained messages replayed by the broker on subscribe and not stored (KEDGE_MQTT_RETAINED=skip)',
          registers,
        }),
    ),
    linkUp: get(
      'kedge_mqtt_link_up',
      () =>
        new Gauge({
          name: 'kedge_mqtt_link_up',
          help: 'Client mode: 1 while connected and subscribed to the MQTT broker, else 0',
          registers,
        }),
    ),
    reconnects: get(
      'kedge_mqtt_reconnects_total',
      () =>
        new Counter({
          name: 'kedge_mqtt_reconnects_total',
          help: 'Client mode: connection attempts after the first',
          registers,
        }),
    ),
    clients: get(
      'kedge_mqtt_clients',
      () =>
        new Gauge({
          name: 'kedge_mqtt_clients',
          help: 'Embedded broker: connected MQTT clients',
          registers,
        }),
    ),
    brokerDropped: get(
      'kedge_mqtt_broker_dropped_messages',
      () =>
        new Gauge({
          name: 'kedge_mqtt_broker_dropped_messages',
          help: "Client mode: messages the broker says it dropped since it started, all clients (Mosquitto's $SYS/broker/publish/messages/dropped); 0 until the broker publishes it",
          registers,
        }),
    ),
  };
}
