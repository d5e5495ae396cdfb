/**
 * The shape of a loaded configuration, apart from the code that fills it: settings.ts (each
 * variable's parser and printer) and config.ts (loading, cross-variable rules) both use it.
 */
import type { RouteDef } from './route-syntax.ts';
import type { ListenAddress, TimeWindow } from './setting-values.ts';
import type { StorageDriverName, SyncMode } from './storage-modes.ts';

/** KEDGE_KAFKA_SASL_MECHANISM's values. */
export const SASL_MECHANISMS = ['plain', 'scram-sha-256', 'scram-sha-512'] as const;

/** KEDGE_KAFKA_CLIENT's values: the Kafka client library behind the producer interface. */
export const KAFKA_CLIENTS = ['kafkajs', 'platformatic'] as const;
export type KafkaClientName = (typeof KAFKA_CLIENTS)[number];

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type Compression = 'none' | 'gzip' | 'snappy' | 'lz4' | 'zstd';
export type SaslMechanism = (typeof SASL_MECHANISMS)[number];

/** One Kafka cluster kedge forwards to (KEDGE_DESTINATIONS), with its own link policy. */
export interface DestinationConfig {
  name: string;
  kafka: Config['kafka'];
  forward: { rate: number | null; windows: TimeWindow[] };
}

export interface Config {
  dataDir: string;
  /** null: generate once and keep in the data dir. */
  agentId: string | null;
  sync: SyncMode;
  storage: StorageDriverName;
  logLevel: LogLevel;

  http: {
    /** null: HTTP disabled (KEDGE_HTTP_LISTEN empty). */
    listen: ListenAddress | null;
    token: string | null;
    maxBody: number;
    tlsCert: string | null;
    tlsKey: string | null;
  };

  kafka: {
    client: KafkaClientName;
    brokers: string[];
    tls: boolean;
    caFile: string | null;
    certFile: string | null;
    keyFile: string | null;
    sasl: { mechanism: SaslMechanism; username: string; password: string } | null;
    compression: Compression;
    topicPrefix: string;
  };

  mqtt: {
    url: string | null;
    topics: string[];
    listen: ListenAddress | null;
    username: string | null;
    password: string | null;
    kafkaTopic: string | null;
    maxPayload: number;
    retained: 'skip' | 'ingest';
    tlsCert: string | null;
    tlsKey: string | null;
  };

  forward: {
    /** bytes per second; null = unlimited */
    rate: number | null;
    /** empty = always */
    windows: TimeWindow[];
    priorityTopics: string[];
  };

  retention: {
    diskQuota: number;
    /** ms; null = unlimited */
    maxAge: number | null;
    whenFull: 'drop-oldest' | 'reject-new';
  };

  /** null: KEDGE_DESTINATIONS unset, one destination named `kafka` (kafka, forward above). */
  destinations: DestinationConfig[] | null;
  /** KEDGE_ROUTE_*, sorted by name; empty: every topic unchanged to every destination. */
  routes: RouteDef[];

  heartbeat: {
    /** null = disabled (empty topic) */
    topic: string | null;
    intervalMs: number;
  };

  /** Path of the env file the config was read from, if any (for the permission warning). */
  envFile: string | null;
}
