/**
 * The topology: log ← ingest sources; log → forwarder → Kafka; observe on the side.
 * Each stage is constructed here, started in dependency order and stopped in reverse.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { AddressInfo } from 'node:net';
import { redactedConfig, type Config } from './config.ts';
import { openLog } from './log/index.ts';
import type { EventLog } from './log/types.ts';
import { IngestSink } from './ingest/sink.ts';
import { DEFAULT_HTTP_LIMITS, HttpIngest, type HttpLimits } from './ingest/http.ts';
import { MqttClientIngest } from './ingest/mqtt-client.ts';
import { MqttBrokerIngest } from './ingest/mqtt-broker.ts';
import { Forwarder } from './forward/forwarder.ts';
import { DestinationForwardLog } from './forward/destination-log.ts';
import { DEFAULT_DESTINATION, effectiveDestinations, routesOf } from './destinations-config.ts';
import type { DestinationConfig } from './config-types.ts';
import type { DestinationLog } from './log/types.ts';
import { KafkaThread } from './kafka/kafka-thread.ts';
import { KAFKA_THREAD_LIMITS } from './runtime-flags.ts';
import { Metrics } from './observe/metrics.ts';
import type { Logger } from './observe/logger.ts';
import { buildStatus, RateMeter } from './status/document.ts';
import { type DestinationStatus, DestinationMeter } from './status/destinations.ts';
import { DropTracker } from './observe/drops.ts';
import {
  counterTotal,
  registerWriteMetrics,
  WriteAmplificationMeter,
} from './observe/write-amplification.ts';
import { Heartbeat } from './status/heartbeat.ts';
import { adminRoutes } from './status/admin.ts';
import { TapBus } from './observe/tap-bus.ts';
import { KEDGE_VERSION } from './version.ts';
import { waitAtMost } from './deadline.ts';

export interface AgentTuning {
  maxBatchEvents: number;
  maxBatchBytes: number;
  requestTimeoutMs: number;
  backoffMinMs: number;
  backoffMaxMs: number;
  /** See ForwarderOptions.unknownTopicGraceMs. */
  unknownTopicGraceMs: number;
  /** SIGTERM: everything must be closed within this. */
  stopDeadlineMs: number;
  /** HTTP timeouts and connection cap (slow and idle clients); see HttpLimits. */
  httpLimits: HttpLimits;
  /** Embedded MQTT broker: time a new connection gets to send CONNECT. */
  mqttConnectTimeoutMs: number;
  /** Wall clock for transfer windows (tests inject a fake one); default Date.now. */
  now?: () => number;
  /** The log's clock: ingest time, retention, and when routes' windows close (tests inject one); default Date.now. */
  logNow?: () => number;
}

/** One destination's forwarding: its forwarder, its Kafka thread, its view of the log (several). */
interface Outlet {
  name: string;
  config: DestinationConfig;
  forwarder: Forwarder;
  kafka: KafkaThread;
  dest: DestinationLog | null;
  /** Its drain rate for the ETA (several destinations or routes). */
  meter: DestinationMeter | null;
}

export const DEFAULT_TUNING: AgentTuning = {
  maxBatchEvents: 2_000,
  // Kafka's default max.message.bytes is ~1 MB per partition batch; stay below it.
  maxBatchBytes: 512 * 1024,
  requestTimeoutMs: 30_000,
  backoffMinMs: 250,
  backoffMaxMs: 30_000,
  stopDeadlineMs: 9_000,
  unknownTopicGraceMs: 120_000,
  httpLimits: DEFAULT_HTTP_LIMITS,
  mqttConnectTimeoutMs: 10_000,
};

export class Agent {
  readonly cfg: Config;
  readonly logger: Logger;
  readonly tuning: AgentTuning;
  readonly metrics: Metrics;
  private log: EventLog | null = null;
  private http: HttpIngest | null = null;
  /** One per destination (one, `kafka`, without KEDGE_DESTINATIONS): the first also carries the heartbeat. */
  private outlets: Outlet[] = [];
  private sink: IngestSink | null = null;
  /** `kedge tap` viewers: the sink publishes committed events, GET /v1/tap attaches viewers. */
  private readonly tap = new TapBus();
  private rates: RateMeter | null = null;
  private writes: WriteAmplificationMeter | null = null;
  private drops: DropTracker | null = null;
  private heartbeat: Heartbeat | null = null;
  private mqttClient: MqttClientIngest | null = null;
  private mqttBroker: MqttBrokerIngest | null = null;
  mqttAddress: AddressInfo | null = null;
  private readonly startedAt = Date.now();
  private readonly warnings: string[] = [];
  agentId = '';
  httpAddress: AddressInfo | null = null;

  constructor(cfg: Config, logger: Logger, tuning: Partial<AgentTuning> = {}) {
    this.cfg = cfg;
    this.logger = logger;
    this.tuning = { ...DEFAULT_TUNING, ...tuning };
    this.metrics = new Metrics({ destinations: cfg.destinations?.map((d) => d.name) ?? null });
  }

  /** Per destination: link, backlog and what its routes keep (several destinations or routes). */
  private destinationStatus(): DestinationStatus[] {
    return this.outlets.map((o) =>
      o.meter!.status(
        o.forwarder.status(),
        (routesOf(this.cfg, o.name) ?? []).map((r) => r.name),
      ),
    );
  }

  async start(): Promise<void> {
    const cfg = this.cfg;
    const log = await openLog({
      dir: cfg.dataDir,
      driver: cfg.storage,
      sync: cfg.sync,
      quotaBytes: cfg.retention.diskQuota,
      whenFull: cfg.retention.whenFull,
      retentionMs: cfg.retention.maxAge,
      now: this.tuning.logNow,
    });
    // Before anything else: retention may drop at the first tick after open.
    const drops = new DropTracker(this.metrics, this.logger);
    this.drops = drops;
    log.onDrop((d) => drops.record(d));
    this.log = log;
    this.agentId = cfg.agentId ?? log.meta('agent_id') ?? generateAgentId();
    if (log.meta('agent_id') !== this.agentId) log.setMeta('agent_id', this.agentId);

    const stats = log.stats();
    this.logger.info(
      {
        agentId: this.agentId,
        dataDir: cfg.dataDir,
        storage: cfg.storage,
        sync: cfg.sync,
        backlog: stats.backlogEvents,
        lastSeq: stats.lastSeq,
      },
      'log open',
    );

    this.sink = new IngestSink(
      log,
      this.metrics,
      cfg.forward.priorityTopics,
      this.logger,
      this.tap,
    );
    const dests = effectiveDestinations(cfg);
    // One destination without routes reads the log itself; otherwise each destination has its
    // own cursors (and routes) over the log (agent/forward/destination-log.ts).
    const views =
      cfg.destinations !== null || cfg.routes.length > 0
        ? log.destinations(dests.map((d) => d.name))
        : null;
    for (const [i, d] of dests.entries()) {
      // Every producer runs in a Kafka thread: encoding, compression and waiting on Kafka never
      // hold up HTTP, MQTT or the log's commits on this thread. One per destination, so each
      // destination's wire bytes (its rate cap) are its own.
      const kafka = new KafkaThread({ logger: this.logger, resourceLimits: KAFKA_THREAD_LIMITS });
      const logger = views === null ? this.logger : this.logger.child({ destination: d.name });
      const metrics = this.metrics.forDestination(d.name);
      const dest = views?.[i] ?? null;
      const view =
        dest === null
          ? null
          : new DestinationForwardLog({
              log,
              dest,
              routes: routesOf(cfg, d.name),
              agentId: this.agentId,
              now: this.tuning.logNow ?? Date.now,
              onFiltered: (counts) => {
                for (const [k, n] of counts) {
                  const [route, step] = k.split('/');
                  this.metrics.routeFiltered.inc({ route, step }, n);
                }
              },
              pauseKey:
                d.name === DEFAULT_DESTINATION
                  ? 'forwarding.paused'
                  : `forwarding.paused.${d.name}`,
            });
      const forwarder = new Forwarder({
        log: view ?? log,
        sink: kafka.sink({
          kafka: d.kafka,
          clientId: views === null ? `kedge-${this.agentId}` : `kedge-${this.agentId}-${d.name}`,
          requestTimeoutMs: this.tuning.requestTimeoutMs,
        }),
        agentId: this.agentId,
        topicPrefix: cfg.kafka.topicPrefix,
        maxBatchEvents: this.tuning.maxBatchEvents,
        maxBatchBytes: this.tuning.maxBatchBytes,
        sendDeadlineMs: this.tuning.requestTimeoutMs + 5_000,
        backoffMinMs: this.tuning.backoffMinMs,
        backoffMaxMs: this.tuning.backoffMaxMs,
        unknownTopicGraceMs: this.tuning.unknownTopicGraceMs,
        metrics,
        logger,
        windows: d.forward.windows,
        rateBytesPerSecond: d.forward.rate,
        wire: kafka.wire,
        now: this.tuning.now,
      });
      const meter = dest === null ? null : new DestinationMeter(dest);
      meter?.start();
      this.outlets.push({ name: d.name, config: d, forwarder, kafka, dest, meter });
    }
    const fwd = this.outlets[0].forwarder;
    const kafka = this.outlets[0].kafka;
    this.metrics.bindSources(log, fwd);
    if (cfg.destinations !== null)
      this.metrics.bindDestinations(
        this.outlets.map((o) => ({
          name: o.name,
          linkState: () => o.forwarder.linkState(),
          lanes: () => o.dest!.lanes(),
        })),
      );
    // Disk writes per ingested byte, counted from here: the log is open, its one-off writes done.
    const writes = new WriteAmplificationMeter({
      ingestedBytes: () => counterTotal(this.metrics.ingestedBytes),
    });
    this.writes = writes;
    await writes.start();
    registerWriteMetrics(this.metrics.registry, writes);
    this.rates = new RateMeter(log);
    this.rates.start();
    const rates = this.rates;
    const status = () =>
      buildStatus(
        {
          agentId: this.agentId,
          version: KEDGE_VERSION,
          startedAt: this.startedAt,
          log,
          forwarder: () => fwd.status(),
          destinations: views === null ? null : () => this.destinationStatus(),
          config: redactedConfig(cfg),
          warnings: () => this.warnings,
          drops: () => drops.summary(),
          mqtt: () => ({
            client: this.mqttClient?.status() ?? null,
            broker: this.mqttBroker?.status() ?? null,
          }),
          heartbeat: () => this.heartbeat?.status() ?? null,
          writes: () => writes.snapshot(),
        },
        rates,
      );

    if (cfg.http.listen) {
      if (!isLoopback(cfg.http.listen.host) && !cfg.http.token) {
        const w = `HTTP listens on ${cfg.http.listen.host}:${cfg.http.listen.port} (not loopback) without KEDGE_HTTP_TOKEN: anyone on the network can write events`;
        this.warnings.push(w);
        this.logger.warn(w);
      }
      this.http = new HttpIngest({
        listen: cfg.http.listen,
        token: cfg.http.token,
        maxBody: cfg.http.maxBody,
        tlsCert: cfg.http.tlsCert,
        tlsKey: cfg.http.tlsKey,
        sink: this.sink,
        metrics: this.metrics,
        logger: this.logger,
        limits: this.tuning.httpLimits,
        admin: adminRoutes({
          status,
          metrics: this.metrics,
          forwarders: new Map(this.outlets.map((o) => [o.name, o.forwarder])),
          deadLetters: () => log.deadLetterAdmin(this.agentId),
          tap: this.tap,
          tokenConfigured: cfg.http.token !== null,
          logger: this.logger,
        }),
      });
      this.httpAddress = await this.http.start();
      this.logger.info(
        { listen: `${this.httpAddress.address}:${this.httpAddress.port}` },
        'http ingest listening',
      );
    }
    if (cfg.mqtt.listen) {
      if (!isLoopback(cfg.mqtt.listen.host) && !cfg.mqtt.username) {
        const w = `MQTT listens on ${cfg.mqtt.listen.host}:${cfg.mqtt.listen.port} (not loopback) without KEDGE_MQTT_USERNAME/KEDGE_MQTT_PASSWORD: anyone on the network can publish events`;
        this.warnings.push(w);
        this.logger.warn(w);
      }
      this.mqttBroker = new MqttBrokerIngest({
        listen: cfg.mqtt.listen,
        username: cfg.mqtt.username,
        password: cfg.mqtt.password,
        kafkaTopic: cfg.mqtt.kafkaTopic,
        topicPrefixLength: cfg.kafka.topicPrefix.length,
        maxPayload: cfg.mqtt.maxPayload,
        tlsCert: cfg.mqtt.tlsCert,
        tlsKey: cfg.mqtt.tlsKey,
        agentId: this.agentId,
        sink: this.sink,
        metrics: this.metrics,
        logger: this.logger,
        connectTimeoutMs: this.tuning.mqttConnectTimeoutMs,
      });
      this.mqttAddress = await this.mqttBroker.start();
    }
    if (cfg.mqtt.url) {
      this.mqttClient = new MqttClientIngest({
        url: cfg.mqtt.url,
        topics: cfg.mqtt.topics,
        agentId: this.agentId,
        username: cfg.mqtt.username,
        password: cfg.mqtt.password,
        kafkaTopic: cfg.mqtt.kafkaTopic,
        topicPrefixLength: cfg.kafka.topicPrefix.length,
        maxPayload: cfg.mqtt.maxPayload,
        retained: cfg.mqtt.retained,
        sink: this.sink,
        metrics: this.metrics,
        logger: this.logger,
      });
      // Waits at most a few seconds: a broker that is down does not block startup.
      await this.mqttClient.start();
    }
    for (const o of this.outlets) {
      this.logger.info(
        {
          ...(views === null ? {} : { destination: o.name }),
          brokers: o.config.kafka.brokers.join(','),
          client: o.config.kafka.client,
          compression: o.config.kafka.compression,
          ...(views === null ? {} : { routes: (routesOf(cfg, o.name) ?? []).map((r) => r.name) }),
        },
        'forwarding to Kafka',
      );
      o.forwarder.start();
    }
    if (cfg.heartbeat.topic) {
      this.heartbeat = new Heartbeat({
        // Prefixed like every topic kedge writes: prefix-scoped ACLs then cover it too.
        topic: cfg.kafka.topicPrefix + cfg.heartbeat.topic,
        intervalMs: cfg.heartbeat.intervalMs,
        agentId: this.agentId,
        // Its own producer and connections: a heartbeat never queues behind a forwarder batch.
        sink: kafka.sink({
          kafka: this.outlets[0].config.kafka,
          clientId: `kedge-${this.agentId}-heartbeat`,
          requestTimeoutMs: 10_000,
        }),
        link: () => fwd.status(),
        onLinkChange: (listener) => fwd.onStateChange(listener),
        status,
        logger: this.logger,
        sendTimeoutMs: 15_000,
      });
      this.heartbeat.start();
    }
  }

  /**
   * Stop accepting, let requests already inside finish their commit, finish the
   * send in flight, close the log. Whatever is not forwarded stays in the log.
   */
  async stop(): Promise<void> {
    const deadline = Date.now() + this.tuning.stopDeadlineMs;
    this.sink?.stopAccepting();
    await Promise.all([
      waitAtMost(this.mqttClient?.stop() ?? Promise.resolve(), 4_000),
      waitAtMost(this.mqttBroker?.stop() ?? Promise.resolve(), 4_000),
    ]);
    // Tap streams never end by themselves: close them, or the listener would wait for them.
    this.tap.closeAll();
    await waitAtMost(this.http?.stop() ?? Promise.resolve(), 3_000);
    await waitAtMost(this.heartbeat?.stop() ?? Promise.resolve(), 2_500);
    await Promise.all(
      this.outlets.map((o) =>
        waitAtMost(o.forwarder.stop(), Math.max(500, deadline - Date.now() - 1_500)),
      ),
    );
    await Promise.all(this.outlets.map((o) => waitAtMost(o.kafka.close(), 1_000)));
    for (const o of this.outlets) o.meter?.stop();
    this.outlets = [];
    this.rates?.stop();
    this.writes?.stop();
    await this.log?.close();
    this.drops?.stop();
    this.log = null;
  }
}

function generateAgentId(): string {
  const host =
    hostname()
      .replace(/[^A-Za-z0-9._-]/g, '_')
      .slice(0, 40) || 'kedge';
  return `${host}-${randomBytes(4).toString('hex')}`;
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127\./.test(host);
}
