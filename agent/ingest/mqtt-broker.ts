/**
 * Embedded broker mode: kedge itself accepts MQTT 3.1.1 publishers (aedes on
 * a net/tls server), for devices without a broker of their own.
 *
 * Every PUBLISH is appended inside aedes' `authorizePublish` hook: aedes
 * writes the QoS 1 PUBACK (QoS 2 PUBREC) only after that hook calls back, so
 * the acknowledgement means "committed to the log". aedes dispatches all
 * packets of one socket read at once, so they (and those of other
 * connections) share the log's group commit. Appends are issued in arrival
 * order per connection whatever the QoS (kedge promises ingest order per key),
 * though QoS 2 first has to ask aedes' store whether it is a retransmission.
 * When the log refuses, the hook fails and aedes closes the connection without
 * an ack: MQTT 3.1.1 has no negative acknowledgement, and the publisher
 * resends after reconnecting.
 * Local fan-out to subscribers still happens after the append (aedes publishes
 * once the hook passed), so devices can also talk to each other through kedge.
 */
import {
  createServer as createNetServer,
  type AddressInfo,
  type Server,
  type Socket,
} from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { readFileSync } from 'node:fs';
import type { EventEmitter } from 'node:events';
import { Aedes, type Client, type PublishPacket } from 'aedes';
import type { EventInput } from '../log/types.ts';
import type { IngestSink } from './sink.ts';
import type { Metrics } from '../observe/metrics.ts';
import { RateLimitedLog, type Logger } from '../observe/logger.ts';
import { tokenMatches } from './token.ts';
import { ArrivalOrder } from './arrival-order.ts';
import {
  guardPacketSize,
  MalformedTopicError,
  OversizeError,
  type ParserInternals,
  PublishRefusedError,
  protocolErrorKind,
  remoteOf,
} from './mqtt-guards.ts';
import { MqttEventMapper, mqttMetrics, type MqttMetrics, type MqttRefusal } from './mqtt-topic.ts';

export interface MqttBrokerIngestOptions {
  /** KEDGE_MQTT_LISTEN (the config defaults the host to loopback). */
  listen: { host: string; port: number };
  /** When set, publishers must present these credentials (KEDGE_MQTT_USERNAME / KEDGE_MQTT_PASSWORD). */
  username: string | null;
  password: string | null;
  /** Every message to this Kafka topic (KEDGE_MQTT_KAFKA_TOPIC); null: derived from the MQTT topic. */
  kafkaTopic: string | null;
  /** Length of KEDGE_TOPIC_PREFIX, so derived names stay within Kafka's 249 characters. */
  topicPrefixLength: number;
  /** A PUBLISH with a larger payload closes the connection, nothing stored (KEDGE_MQTT_MAX_PAYLOAD). */
  maxPayload: number;
  /** PEM files: listen with TLS (KEDGE_MQTT_TLS_CERT / KEDGE_MQTT_TLS_KEY). */
  tlsCert: string | null;
  tlsKey: string | null;
  /** Used for the broker id (`kedge-<agentId>`, seen in $SYS/ topics). */
  agentId: string;
  sink: IngestSink;
  metrics: Metrics;
  logger: Logger;
  /** Time a new connection gets to send CONNECT; default 10 s. */
  connectTimeoutMs?: number;
  /** Open TCP connections beyond this are closed at once; default 1024. */
  maxConnections?: number;
  /** `stop()` waits at most this long for appends in flight to commit and be acknowledged; default 5 s. */
  drainTimeoutMs?: number;
}

export interface MqttBrokerStatus {
  mode: 'broker';
  listen: string;
  tls: boolean;
  state: 'starting' | 'listening' | 'stopped';
  since: string;
  /** Connected (CONNACKed) clients now. */
  clients: number;
  connections_total: number;
  /** PUBLISH packets that reached the append step or were refused. */
  received: number;
  ingested: number;
  refused: Record<MqttRefusal, number>;
  last_error: string | null;
  last_error_at: string | null;
}

const SYS_PREFIX = '$SYS/';

export class MqttBrokerIngest {
  private readonly opts: MqttBrokerIngestOptions;
  private readonly logger: Logger;
  private readonly mapper: MqttEventMapper;
  private readonly m: MqttMetrics;
  private broker: Aedes | null = null;
  private server: Server | null = null;
  private address: AddressInfo | null = null;
  private state: MqttBrokerStatus['state'] = 'starting';
  private since = Date.now();
  private stopping = false;
  private pending = 0;
  private drained: (() => void) | null = null;
  private lastError: string | null = null;
  private lastErrorAt: number | null = null;
  private readonly sockets = new Set<Socket>();
  /** Per connection, while a PUBLISH of it still waits to issue its append: settles once the latest one has. */
  private readonly arrivalOrder = new ArrivalOrder((err) =>
    this.noteError(`MQTT append could not be issued: ${(err as Error)?.message ?? String(err)}`),
  );
  private readonly counts = { connections: 0, received: 0, ingested: 0 };
  private readonly refusedCounts: Record<MqttRefusal, number> = {
    oversize: 0,
    log: 0,
    stopping: 0,
    auth: 0,
    protocol: 0,
    'sys-topic': 0,
    malformed: 0,
  };
  private readonly logs = {
    oversize: new RateLimitedLog(10_000),
    auth: new RateLimitedLog(10_000),
    append: new RateLimitedLog(10_000),
    client: new RateLimitedLog(10_000),
    protocol: new RateLimitedLog(60_000),
  };

  constructor(opts: MqttBrokerIngestOptions) {
    this.opts = opts;
    this.logger = opts.logger.child({ component: 'mqtt-broker' });
    this.mapper = new MqttEventMapper({
      kafkaTopic: opts.kafkaTopic,
      prefixLength: opts.topicPrefixLength,
    });
    this.m = mqttMetrics(opts.metrics.registry);
  }

  /** Starts aedes and listens; resolves with the bound address, rejects (e.g. address in use) with a message an operator can act on. */
  async start(): Promise<AddressInfo> {
    if (this.broker) throw new Error('MqttBrokerIngest already started');
    const o = this.opts;
    let tls: { cert: Buffer; key: Buffer } | null = null;
    if (o.tlsCert && o.tlsKey) {
      try {
        tls = { cert: readFileSync(o.tlsCert), key: readFileSync(o.tlsKey) };
      } catch (err) {
        throw new Error(
          `KEDGE_MQTT_TLS_CERT/KEDGE_MQTT_TLS_KEY: cannot read ${(err as NodeJS.ErrnoException).path ?? 'the files'} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
          { cause: err },
        );
      }
    }
    const broker = new Aedes({
      id: `kedge-${o.agentId}`,
      connectTimeout: o.connectTimeoutMs ?? 10_000,
      preConnect: (client, packet, cb) => {
        if (packet.protocolVersion === 5) {
          // aedes answers CONNACK "unacceptable protocol version"; make it visible to the operator.
          this.refuse('protocol');
          if (this.logs.protocol.shouldLog() >= 0)
            this.logger.warn(
              { clientId: packet.clientId, remote: remoteOf(client) },
              'MQTT 5 client refused: the embedded broker speaks MQTT 3.1.1 (set the client to protocol version 4)',
            );
        }
        // No broker-side sessions: aedes keeps them in memory, and a subscriber
        // that asked for one and never came back would grow it without bound.
        // CONNACK then says "session not present", which 3.1.1 clients handle
        // (resubscribe); publishers resend unacknowledged messages from their own store.
        packet.clean = true;
        cb(null, true);
      },
      authenticate: (client, username, password, cb) =>
        this.authenticate(client, username, password, cb),
      authorizePublish: (client, packet, cb) => this.authorizePublish(client, packet, cb),
    });
    // aedes emits 'error' for persistence failures; an unhandled 'error' event would kill the agent.
    (broker as EventEmitter).on('error', (err: Error) => this.noteError(`broker: ${err.message}`));
    broker.on('clientError', (client, err) => this.onClientError(client, err));
    broker.on('connectionError', (client, err) => this.onClientError(client, err));
    broker.on('clientReady', () => this.m.clients.set(broker.connectedClients));
    broker.on('clientDisconnect', () => this.m.clients.set(broker.connectedClients));
    await broker.listen();
    this.broker = broker;

    const onSocket = (socket: Socket) => this.onConnection(socket);
    const server = tls ? createTlsServer(tls, onSocket) : createNetServer(onSocket);
    this.server = server;
    // Every TCP connection, TLS handshake or not, so stop() can close them all
    // (server.close() alone waits for idle ones, e.g. a stuck handshake, for minutes).
    server.on('connection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
      // Errors before aedes wraps the socket (e.g. a TLS handshake reset) must not be unhandled.
      socket.on('error', () => {});
    });
    if (this.tls) server.on('tlsClientError', (err) => this.onClientError(null, err));
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: o.listen.host, port: o.listen.port }, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      await new Promise<void>((r) => broker.close(() => r()));
      this.broker = null;
      const code = (err as NodeJS.ErrnoException).code;
      const why =
        code === 'EADDRINUSE'
          ? 'address already in use (another MQTT broker running?)'
          : code === 'EACCES'
            ? 'permission denied'
            : code === 'EADDRNOTAVAIL'
              ? 'no such local address'
              : (err as Error).message;
      throw new Error(`KEDGE_MQTT_LISTEN ${o.listen.host}:${o.listen.port}: ${why}`, {
        cause: err,
      });
    }
    server.on('error', (err) => this.noteError(`listener: ${err.message}`));
    // Past the cap the OS still accepts, Node closes at once: idle sockets cannot exhaust file descriptors.
    server.maxConnections = o.maxConnections ?? 1024;
    this.address = server.address() as AddressInfo;
    this.setState('listening');
    this.logger.info(
      {
        listen: `${this.address.address}:${this.address.port}`,
        tls: this.tls,
        auth: this.opts.username !== null,
      },
      'embedded MQTT broker listening',
    );
    return this.address;
  }

  /**
   * Stops accepting connections and publishes, lets appends already in flight
   * commit and their PUBACKs go out, then closes every connection.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const server = this.server;
    const closed = server ? new Promise<void>((r) => server.close(() => r())) : Promise.resolve();
    if (this.pending > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, this.opts.drainTimeoutMs ?? 5_000);
        this.drained = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    // Let the last PUBACKs reach the sockets before aedes destroys them.
    await new Promise((r) => setImmediate(r));
    const broker = this.broker;
    if (broker) await new Promise<void>((r) => broker.close(() => r()));
    for (const s of this.sockets) s.destroy();
    await closed;
    this.m.clients.set(0);
    this.setState('stopped');
  }

  /** The bound address (null before `start()`). */
  addressInfo(): AddressInfo | null {
    return this.address;
  }

  /** For /v1/status. */
  status(): MqttBrokerStatus {
    const a = this.address;
    return {
      mode: 'broker',
      listen: a ? `${a.address}:${a.port}` : `${this.opts.listen.host}:${this.opts.listen.port}`,
      tls: this.tls,
      state: this.state,
      since: new Date(this.since).toISOString(),
      clients: this.broker && !this.broker.closed ? this.broker.connectedClients : 0,
      connections_total: this.counts.connections,
      received: this.counts.received,
      ingested: this.counts.ingested,
      refused: { ...this.refusedCounts },
      last_error: this.lastError,
      last_error_at: this.lastErrorAt === null ? null : new Date(this.lastErrorAt).toISOString(),
    };
  }

  private get tls(): boolean {
    return Boolean(this.opts.tlsCert && this.opts.tlsKey);
  }

  private onConnection(socket: Socket): void {
    const broker = this.broker;
    if (!broker || this.stopping) {
      socket.destroy();
      return;
    }
    this.counts.connections++;
    const client = broker.handle(socket) as Client & { _parser?: ParserInternals };
    guardPacketSize(client, this.opts.maxPayload, {
      oversize: (cmd, length) =>
        this.oversize(client, cmd === 'publish' ? '(not read)' : `(${cmd} packet)`, length),
      malformed: () => this.refuse('malformed'),
    });
  }

  private authenticate(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
    cb: (err: (Error & { returnCode: number }) | null, ok: boolean | null) => void,
  ): void {
    const o = this.opts;
    if (o.username === null) {
      cb(null, true);
      return;
    }
    // Both comparisons always run (constant time, no early exit on the user name).
    // latin1 maps bytes to characters one to one, so the password is compared byte for byte.
    const userOk = tokenMatches(username ?? '', o.username);
    const passOk = tokenMatches(
      password ? password.toString('latin1') : '',
      Buffer.from(o.password ?? '', 'utf8').toString('latin1'),
    );
    if (userOk && passOk) {
      cb(null, true);
      return;
    }
    this.refuse('auth');
    const n = this.logs.auth.shouldLog();
    if (n >= 0)
      this.logger.warn(
        { clientId: client.id, remote: remoteOf(client), suppressed: n },
        'MQTT client refused: wrong or missing username/password',
      );
    // CONNACK return code 5, "not authorized".
    cb(Object.assign(new Error('not authorized'), { returnCode: 5 }), null);
  }

  private authorizePublish(
    client: Client | null,
    packet: PublishPacket,
    cb: (err?: Error | null) => void,
  ): void {
    const done = (err: Error | null) => {
      try {
        cb(err);
      } catch (e) {
        this.noteError(`aedes publish callback threw: ${(e as Error).message}`);
      }
    };
    const topic = packet.topic;
    // The parser decodes topics leniently: ill-formed UTF-8 arrives as U+FFFD. Storing it would
    // invent a topic the publisher never sent; MQTT says close the connection, and so we do.
    if (topic.includes('\uFFFD') || topic.includes('\u0000')) {
      this.refuse('malformed');
      done(new MalformedTopicError('PUBLISH topic is not well-formed UTF-8 (or contains U+0000)'));
      return;
    }
    if (topic.startsWith(SYS_PREFIX)) {
      // aedes' own default rule, kept: $SYS/ is the broker's.
      this.refuse('sys-topic');
      done(new PublishRefusedError(`${SYS_PREFIX} topic is reserved`));
      return;
    }
    this.counts.received++;
    const payload = packet.payload;
    const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
    if (size > this.opts.maxPayload) {
      this.oversize(client, topic, size);
      done(
        new OversizeError(
          `payload of ${size} bytes exceeds KEDGE_MQTT_MAX_PAYLOAD (${this.opts.maxPayload})`,
        ),
      );
      return;
    }
    if (this.stopping || !this.opts.sink.ready) {
      // No ack: the connection closes and the publisher resends to the next kedge.
      this.refuse('stopping');
      done(new PublishRefusedError('kedge is shutting down'));
      return;
    }
    // Counted from here, not from the append: stop() must also wait for messages queued behind a QoS 2 lookup.
    this.pending++;
    const broker = this.broker;
    // A QoS 2 retransmission of a packet already stored (PUBREC lost) must not be appended twice.
    const stored =
      packet.qos === 2 && client && broker
        ? (broker as Aedes & { persistence: IncomingStore }).persistence
            .incomingGetPacket(client, packet)
            .then(
              () => true,
              () => false,
            )
        : null;
    this.arrivalOrder.issue(client, stored, (duplicate) => {
      if (!duplicate) {
        this.append(client, packet, done);
        return;
      }
      this.settle();
      done(null);
    });
  }

  /** Called with `pending` already counted for this message. */
  private append(
    client: Client | null,
    packet: PublishPacket,
    done: (err: Error | null) => void,
  ): void {
    let event: EventInput;
    try {
      event = this.mapper.event(packet.topic, packet.payload);
    } catch (err) {
      this.settle();
      done(err as Error);
      return;
    }
    this.opts.sink.submit([event]).then(
      () => {
        this.counts.ingested++;
        this.settle();
        done(null);
      },
      (err: unknown) => {
        this.refuse('log');
        const code = (err as { code?: string })?.code;
        this.noteError(
          `log refused an MQTT message: ${code ?? ''} ${(err as Error)?.message ?? String(err)}`.trim(),
        );
        const n = this.logs.append.shouldLog();
        if (n >= 0)
          this.logger.error(
            { err, code, clientId: client?.id, suppressed: n },
            'log append failed: MQTT message not acknowledged, connection closed',
          );
        this.settle();
        done(err instanceof Error ? err : new Error(String(err)));
      },
    );
  }

  private settle(): void {
    this.pending--;
    if (this.pending === 0 && this.drained) {
      const d = this.drained;
      this.drained = null;
      d();
    }
  }

  private oversize(client: Client | null, topic: string, size: number): void {
    this.refuse('oversize');
    const n = this.logs.oversize.shouldLog();
    if (n >= 0) {
      this.logger.warn(
        {
          clientId: client?.id,
          remote: client ? remoteOf(client) : undefined,
          mqttTopic: topic.slice(0, 200),
          bytes: size,
          maxPayload: this.opts.maxPayload,
          suppressed: n,
        },
        'MQTT payload larger than KEDGE_MQTT_MAX_PAYLOAD refused: connection closed, nothing stored',
      );
    }
  }

  private onClientError(client: Client | null, err: Error): void {
    const kind = protocolErrorKind(err);
    if (kind !== null) this.opts.metrics.mqttProtocolErrors.inc({ kind });
    if (err instanceof OversizeError) return; // counted and logged where it was detected
    const n = this.logs.client.shouldLog();
    if (n >= 0)
      this.logger.info(
        {
          clientId: client?.id ?? null,
          remote: client ? remoteOf(client) : undefined,
          err: err.message,
          suppressed: n,
        },
        'MQTT client connection closed on error',
      );
  }

  private refuse(reason: MqttRefusal): void {
    this.refusedCounts[reason]++;
    this.m.refused.inc({ mode: 'broker', reason });
  }

  private noteError(msg: string): void {
    this.lastError = msg;
    this.lastErrorAt = Date.now();
    this.logger.error(msg);
  }

  private setState(s: MqttBrokerStatus['state']): void {
    this.state = s;
    this.since = Date.now();
  }
}

/** aedes-persistence's QoS 2 store of packets awaiting PUBREL (untyped in aedes' declarations). */
interface IncomingStore {
  incomingGetPacket(client: Client, packet: PublishPacket): Promise<unknown>;
}
