/**
 * Client mode: kedge subscribes to the device's broker (usually Mosquitto)
 * with a persistent session, and acknowledges a message (PUBACK) only once
 * the event is committed to the log.
 *
 * Pipelining: MQTT.js hands us one PUBLISH at a time (`client.handleMessage`)
 * and would send the PUBACK when we call back. We append, call back at once
 * without letting MQTT.js acknowledge, and take the next message, up to a
 * window (RECEIVE_MAXIMUM); the appends of one socket read share one group
 * commit. The window (ack-window.ts) sends the PUBACKs itself, in arrival
 * order, each only after its commit. When an append fails, neither that
 * message nor any after it is acknowledged and the connection is dropped: the
 * broker keeps the unacknowledged messages in the session and redelivers them,
 * in order, on the next connection. Messages are appended in arrival order, so
 * per-topic order is preserved.
 */
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import type { EventInput } from '../log/types.ts';
import type { IngestSink } from './sink.ts';
import type { Metrics } from '../observe/metrics.ts';
import { RateLimitedLog, type Logger } from '../observe/logger.ts';
import { MqttEventMapper, mqttMetrics, type MqttMetrics, type MqttRefusal } from './mqtt-topic.ts';
import { Backoff } from '../backoff.ts';
import { redactUrl } from '../redact.ts';
import { waitAtMost } from '../deadline.ts';
import { type AckSlot, type AckWindow, connectionWindow, RECEIVE_MAXIMUM } from './ack-window.ts';
import { BrokerDropWatch, SYS_DROPPED_TOPIC } from './mqtt-sys.ts';

export { RECEIVE_MAXIMUM };

export interface MqttClientIngestOptions {
  /** mqtt://, mqtts://, ws://, wss:// (KEDGE_MQTT_URL). */
  url: string;
  /** Topic filters to subscribe to at QoS 1 (KEDGE_MQTT_TOPICS). */
  topics: string[];
  /** The session's client id; keep it stable, the broker keeps the session under it. Default `kedge-<agentId>`. */
  clientId?: string;
  agentId: string;
  username: string | null;
  password: string | null;
  /** Every message to this Kafka topic (KEDGE_MQTT_KAFKA_TOPIC); null: derived from the MQTT topic. */
  kafkaTopic: string | null;
  /** Length of KEDGE_TOPIC_PREFIX, so derived names stay within Kafka's 249 characters. */
  topicPrefixLength: number;
  /** Payloads above this many bytes are dropped (acknowledged, counted, logged). */
  maxPayload: number;
  /** `skip`: retained messages the broker replays on subscribe are not stored. */
  retained: 'skip' | 'ingest';
  sink: IngestSink;
  metrics: Metrics;
  logger: Logger;
  /** MQTT 5 session expiry (seconds) asked of the broker; default 7 days. MQTT 3.1.1 sessions never expire on their own (Mosquitto: persistent_client_expiration). */
  sessionExpirySeconds?: number;
  /** Protocol to try first; default 5, falling back to 3.1.1 when the broker refuses it. */
  protocolVersion?: 4 | 5;
  /** Reconnect backoff: first delay, cap (ms). Defaults 500 ms, 30 s. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  keepaliveSeconds?: number;
  connectTimeoutMs?: number;
  /** `start()` waits at most this long for the first subscription before returning (the broker may be down: kedge keeps trying). Default 5 s. */
  startWaitMs?: number;
}

export type MqttLinkState = 'starting' | 'connecting' | 'up' | 'down' | 'stopped';

export interface MqttClientStatus {
  mode: 'client';
  /** The broker URL without credentials. */
  url: string;
  client_id: string;
  /** 5 or 4 (= 3.1.1) once connected; null before. */
  protocol: 4 | 5 | null;
  state: MqttLinkState;
  /** When the state last changed (ISO). */
  since: string;
  subscribed: boolean;
  last_error: string | null;
  last_error_at: string | null;
  connects: number;
  /** PUBLISH packets received (including redeliveries, skipped and refused ones). */
  received: number;
  ingested: number;
  retained_skipped: number;
  refused_oversize: number;
  append_failures: number;
}

const DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600;
/** Tells MQTT.js "next packet, no PUBACK": the ack window sends it after the commit. */
const ACK_DEFERRED = new Error('PUBACK deferred until the commit');
/** CONNACK codes meaning "I do not speak this protocol version": 3.1.1 returnCode 1, MQTT 5 reasonCode 0x84. */
const UNSUPPORTED_PROTOCOL = new Set([1, 0x84]);

export class MqttClientIngest {
  private readonly opts: MqttClientIngestOptions;
  private readonly mapper: MqttEventMapper;
  private readonly m: MqttMetrics;
  private readonly logger: Logger;
  private readonly clientId: string;
  private client: MqttClient | null = null;
  private protocol: 4 | 5;
  private negotiated: 4 | 5 | null = null;
  private state: MqttLinkState = 'starting';
  private since = Date.now();
  private subscribed = false;
  private stopping = false;
  private firstSubscribe = true;
  private backoff: Backoff | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  /** The last append issued; commits finish in order, so when it settled every earlier one did. */
  private inflight: Promise<unknown> | null = null;
  /** The current connection's messages between arrival and PUBACK; closed with its connection. */
  private window: AckWindow | null = null;
  /** Set while appends fail: a successful connect does not reset the backoff then, a commit does. */
  private appendFailing = false;
  private lastError: string | null = null;
  private lastErrorAt: number | null = null;
  private readonly counts = {
    connects: 0,
    received: 0,
    ingested: 0,
    retainedSkipped: 0,
    oversize: 0,
    appendFailures: 0,
  };
  private readonly oversizeLog = new RateLimitedLog(10_000);
  private readonly failLog = new RateLimitedLog(10_000);
  private readonly errorLog = new RateLimitedLog(10_000);
  private subscribedWaiters: (() => void)[] = [];
  private readonly brokerDrops: BrokerDropWatch;

  constructor(opts: MqttClientIngestOptions) {
    this.opts = opts;
    this.logger = opts.logger.child({ component: 'mqtt-client' });
    this.mapper = new MqttEventMapper({
      kafkaTopic: opts.kafkaTopic,
      prefixLength: opts.topicPrefixLength,
    });
    this.m = mqttMetrics(opts.metrics.registry);
    this.clientId = opts.clientId ?? `kedge-${opts.agentId}`;
    this.protocol = opts.protocolVersion ?? 5;
    this.brokerDrops = new BrokerDropWatch(this.logger, this.m.brokerDropped);
    this.m.linkUp.set(0);
  }

  /** Starts connecting; resolves once subscribed, or after `startWaitMs` while kedge keeps trying in the background. */
  async start(): Promise<void> {
    if (this.client) throw new Error('MqttClientIngest already started');
    this.setState('connecting');
    const client = mqtt.connect(this.opts.url, this.clientOptions());
    this.client = client;
    // Our handler replaces MQTT.js's no-op: the PUBACK (or the next packet) waits for the commit.
    client.handleMessage = (packet, cb) => this.onMessage(packet, cb);
    client.on('connect', (connack) => this.onConnect(connack.sessionPresent));
    client.on('error', (err) => this.onError(err));
    client.on('close', () => this.onClose());
    // MQTT 5 brokers say why they end a session (e.g. 0x8B server shutting down).
    client.on('disconnect', (p) =>
      this.noteError(`broker sent DISCONNECT (reason code ${p.reasonCode ?? 0})`),
    );
    await this.whenSubscribed(this.opts.startWaitMs ?? 5_000);
  }

  /**
   * Stops taking messages, lets the append in flight commit and its PUBACK go
   * out, then disconnects. The session stays on the broker, which queues what
   * arrives until kedge is back.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const client = this.client;
    if (client) {
      if (this.inflight) await waitAtMost(this.inflight, 5_000, { ignoreErrors: true });
      // Let the PUBACK of that last message reach the socket before DISCONNECT.
      await new Promise((r) => setImmediate(r));
      await waitAtMost(
        new Promise<void>((resolve) => client.end(false, {}, () => resolve())),
        2_000,
        { ignoreErrors: true },
      );
      if (!client.disconnected)
        await waitAtMost(
          new Promise<void>((resolve) => client.end(true, {}, () => resolve())),
          1_000,
          { ignoreErrors: true },
        );
    }
    this.subscribed = false;
    this.m.linkUp.set(0);
    this.setState('stopped');
    for (const w of this.subscribedWaiters.splice(0)) w();
  }

  /** For /v1/status. */
  status(): MqttClientStatus {
    return {
      mode: 'client',
      url: redactUrl(this.opts.url),
      client_id: this.clientId,
      protocol: this.negotiated,
      state: this.state,
      since: new Date(this.since).toISOString(),
      subscribed: this.subscribed,
      last_error: this.lastError,
      last_error_at: this.lastErrorAt === null ? null : new Date(this.lastErrorAt).toISOString(),
      connects: this.counts.connects,
      received: this.counts.received,
      ingested: this.counts.ingested,
      retained_skipped: this.counts.retainedSkipped,
      refused_oversize: this.counts.oversize,
      append_failures: this.counts.appendFailures,
    };
  }

  /** Resolves when subscribed (or stopped), or after `timeoutMs`; never rejects. */
  whenSubscribed(timeoutMs: number): Promise<boolean> {
    if (this.subscribed || this.stopping) return Promise.resolve(this.subscribed);
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.subscribedWaiters = this.subscribedWaiters.filter((w) => w !== done);
        resolve(false);
      }, timeoutMs);
      const done = () => {
        clearTimeout(t);
        resolve(this.subscribed);
      };
      this.subscribedWaiters.push(done);
    });
  }

  private clientOptions(): IClientOptions {
    const o: IClientOptions = {
      clientId: this.clientId,
      clean: false,
      protocolVersion: this.protocol,
      // We run the reconnect loop ourselves (capped backoff, protocol fallback).
      reconnectPeriod: 0,
      resubscribe: false,
      keepalive: this.opts.keepaliveSeconds ?? 30,
      connectTimeout: this.opts.connectTimeoutMs ?? 10_000,
    };
    if (this.opts.username !== null) o.username = this.opts.username;
    if (this.opts.password !== null) o.password = this.opts.password;
    if (this.protocol === 5)
      o.properties = {
        sessionExpiryInterval: this.opts.sessionExpirySeconds ?? DEFAULT_SESSION_EXPIRY_S,
        receiveMaximum: RECEIVE_MAXIMUM,
      };
    return o;
  }

  /** The window of the connection MQTT.js is reading from; a new one for each connection. */
  private windowFor(client: MqttClient): AckWindow {
    const stream = client.stream;
    if (this.window?.stream !== stream) {
      this.window?.close();
      this.window = connectionWindow(client);
    }
    return this.window;
  }

  /**
   * MQTT.js calls this for each PUBLISH, one at a time, and reads the next
   * packet only when `cb` is called; called without an error it also sends
   * the PUBACK. So for QoS 0 and 1 we call back at once with ACK_DEFERRED
   * (no PUBACK, next packet please) while the window has room, and the window
   * writes the PUBACKs itself, in arrival order, after the commits. QoS 2
   * (which a broker does not send to a QoS 1 subscription) keeps MQTT.js's
   * path: its PUBCOMP goes out when `cb` is called, in the message's turn.
   */
  private onMessage(packet: IPublishPacket, cb: (err?: Error) => void): void {
    const topic = packet.topic.toString();
    if (topic === SYS_DROPPED_TOPIC && packet.qos === 0) {
      // The broker's statistics, not an event (subscribed at QoS 0: no PUBACK), not counted
      // as received: `received` counts the device's messages.
      this.brokerDrops.note(packet.payload.toString());
      cb();
      return;
    }
    this.counts.received++;
    const client = this.client;
    // Shutting down: no append, no PUBACK; the broker redelivers after the restart.
    if (this.stopping || !this.opts.sink.ready || !client) return;
    const window = this.windowFor(client);
    // A message before this one was refused: the connection is being dropped.
    if (window.refused) return;
    const qos = packet.qos;
    const payload = packet.payload;
    const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
    const slot = window.add(packet.messageId ?? 0, qos, size);
    if (qos === 2) slot.release = () => cb();
    else window.admit(() => cb(ACK_DEFERRED));
    if (packet.retain && this.opts.retained === 'skip') {
      // With Retain As Published off (both protocol versions), the broker sets
      // RETAIN only on messages it replays because of a (re)subscription.
      this.counts.retainedSkipped++;
      this.m.retainedSkipped.inc();
      window.done(slot);
      return;
    }
    if (size > this.opts.maxPayload) {
      // It will never fit: acknowledging drops it for good (counted, logged)
      // instead of having the broker redeliver it forever and block the session.
      this.counts.oversize++;
      this.refuse('oversize');
      const n = this.oversizeLog.shouldLog();
      if (n >= 0)
        this.logger.warn(
          {
            mqttTopic: topic.slice(0, 200),
            bytes: size,
            maxPayload: this.opts.maxPayload,
            suppressed: n,
          },
          'MQTT payload larger than KEDGE_MQTT_MAX_PAYLOAD dropped (acknowledged, not stored)',
        );
      window.done(slot);
      return;
    }
    let event: EventInput;
    try {
      event = this.mapper.event(topic, payload);
    } catch (err) {
      // Cannot happen with a parsed packet; never let it reach MQTT.js's parser loop.
      this.appendFailed(err, window, slot);
      return;
    }
    // Appends issued in the same tick share one transaction and one fsync (the log's group commit).
    const p = this.opts.sink.submit([event]).then(
      () => {
        this.counts.ingested++;
        if (this.appendFailing) {
          this.appendFailing = false;
          this.backoff?.reset();
        }
        window.done(slot);
      },
      (err: unknown) => this.appendFailed(err, window, slot),
    );
    // Commits finish in submit order: the last append is the one stop() waits for.
    this.inflight = p;
    void p.finally(() => {
      if (this.inflight === p) this.inflight = null;
    });
  }

  /**
   * QoS 1/2: no PUBACK for it or anything after it on this connection, and drop
   * the connection so the broker redelivers them in order (MQTT.js has no way
   * to ask for one message again). QoS 0 has no ack: counted, gone.
   */
  private appendFailed(err: unknown, window: AckWindow, slot: AckSlot): void {
    const qos = slot.qos;
    this.counts.appendFailures++;
    this.refuse('log');
    const code = (err as { code?: string })?.code;
    this.noteError(
      `log refused an MQTT message: ${code ?? ''} ${(err as Error)?.message ?? String(err)}`.trim(),
    );
    const n = this.failLog.shouldLog();
    if (n >= 0)
      this.logger.error(
        { err, code, qos, suppressed: n },
        qos > 0
          ? 'log append failed: MQTT message not acknowledged, reconnecting so the broker redelivers it'
          : 'log append failed: QoS 0 MQTT message lost',
      );
    if (qos === 0) {
      window.done(slot);
      return;
    }
    this.appendFailing = true;
    // Nothing from it on is acknowledged on this connection; once what came
    // before it is (after its commit), the window drops the connection.
    // Backoff grows while appends keep failing (disk full, reject-new); see scheduleReconnect.
    window.refuse(slot);
  }

  private onConnect(sessionPresent: boolean): void {
    this.counts.connects++;
    this.negotiated = this.protocol;
    if (!this.appendFailing) this.backoff?.reset();
    this.setState('up');
    this.m.linkUp.set(1);
    this.logger.info(
      { clientId: this.clientId, protocol: this.protocol === 5 ? '5' : '3.1.1', sessionPresent },
      'connected to MQTT broker',
    );
    // Subscribe on a new session, and once per process run so a changed KEDGE_MQTT_TOPICS takes effect.
    // On a resumed session the subscriptions exist already; re-subscribing would make a 3.1.1 broker replay retained messages.
    if (!sessionPresent || this.firstSubscribe) this.subscribe();
    else this.markSubscribed();
  }

  private subscribe(): void {
    const client = this.client;
    if (!client) return;
    // rh 1 (MQTT 5): replay retained messages only when the subscription is new.
    const map = Object.fromEntries(this.opts.topics.map((t) => [t, { qos: 1 as const, rh: 1 }]));
    this.brokerDrops.subscribe(client);
    client.subscribe(map, (err, granted) => {
      if (err) {
        this.noteError(`subscribe failed: ${err.message}`);
        this.logger.error({ err }, 'MQTT subscribe failed');
        return;
      }
      const refused = (granted ?? []).filter((g) => g.qos === 128 || g.qos > 2);
      const downgraded = (granted ?? []).filter((g) => g.qos === 0);
      if (refused.length > 0) {
        this.noteError(`broker refused subscription to ${refused.map((g) => g.topic).join(', ')}`);
        this.logger.error(
          { filters: refused.map((g) => g.topic) },
          'MQTT broker refused subscriptions (check its ACL)',
        );
      }
      if (downgraded.length > 0)
        this.logger.warn(
          { filters: downgraded.map((g) => g.topic) },
          'MQTT broker granted QoS 0 only: those messages are not redelivered after an outage',
        );
      this.firstSubscribe = false;
      this.markSubscribed();
    });
  }

  private markSubscribed(): void {
    this.subscribed = true;
    for (const w of this.subscribedWaiters.splice(0)) w();
  }

  private onError(err: Error & { code?: number | string }): void {
    const code = err.code;
    if (
      this.protocol === 5 &&
      typeof code === 'number' &&
      UNSUPPORTED_PROTOCOL.has(code) &&
      this.negotiated === null
    ) {
      // Decided on the broker's explicit refusal only: a network error must not downgrade the session for good.
      this.logger.warn(
        { url: redactUrl(this.opts.url) },
        'MQTT broker does not speak MQTT 5: using 3.1.1',
      );
      this.protocol = 4;
      this.backoff?.reset();
      return;
    }
    this.noteError(err.message);
    const n = this.errorLog.shouldLog();
    if (n >= 0)
      this.logger.warn({ err: err.message, code, suppressed: n }, 'MQTT connection error');
  }

  private onClose(): void {
    // A commit that finishes after its connection is gone must not PUBACK on the
    // next one, where the broker may have reused the packet id for a message not
    // yet stored: the broker redelivers it instead (stored twice: at-least-once).
    this.window?.close();
    const wasUp = this.state === 'up';
    this.subscribed = false;
    this.m.linkUp.set(0);
    if (this.stopping) return;
    if (wasUp && (this.lastErrorAt === null || Date.now() - this.lastErrorAt > 1_000))
      this.noteError('connection to the MQTT broker closed');
    this.setState(this.counts.connects === 0 && !wasUp ? 'connecting' : 'down');
    if (wasUp)
      this.logger.warn({ lastError: this.lastError }, 'MQTT broker connection lost: reconnecting');
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.reconnectTimer || this.stopping) return;
    // Capped exponential with jitter: a fleet that lost the same broker must not come back in lockstep.
    this.backoff ??= new Backoff(
      this.opts.reconnectMinMs ?? 500,
      this.opts.reconnectMaxMs ?? 30_000,
    );
    const delay = this.backoff.next();
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      const client = this.client;
      if (!client || this.stopping) return;
      this.m.reconnects.inc();
      // Options are re-read by MQTT.js on every connect: this is where the protocol fallback takes effect.
      Object.assign(client.options, this.clientOptions());
      if (this.protocol === 4) delete client.options.properties;
      this.setState(this.state === 'down' ? 'down' : 'connecting');
      client.reconnect();
    }, delay);
  }

  private refuse(reason: MqttRefusal): void {
    this.m.refused.inc({ mode: 'client', reason });
  }

  private noteError(msg: string): void {
    this.lastError = msg;
    this.lastErrorAt = Date.now();
  }

  private setState(s: MqttLinkState): void {
    if (s === this.state) return;
    this.state = s;
    this.since = Date.now();
  }
}
