/**
 * HTTP ingest and the local API on one listener. Ingest answers only after
 * the log committed the request's events (all of them, or none).
 */
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import type { AddressInfo, Socket } from 'node:net';
import { isValidTopic } from '../config.ts';
import type { ListenAddress } from '../config.ts';
import { type AppendResult, LogWriteError } from '../log/types.ts';
import { RateLimitedLog, type Logger } from '../observe/logger.ts';
import type { Metrics } from '../observe/metrics.ts';
import { bodyKind, eventsFromBody } from './bodies.ts';
import { IngestError } from './errors.ts';
import { eventsFromRestProxy, restFormat, restProxyAnswer } from './rest-proxy.ts';
import type { IngestSink } from './sink.ts';
import { tokenMatches } from './token.ts';
import { drain, methodNotAllowed, onlyGet, sendJson } from './http-reply.ts';

/**
 * Routes another part of the agent mounts on this listener (the admin API: status,
 * metrics, pause and resume, built in agent/status/admin.ts); ingest knows only this shape.
 * Answers the request and returns true when `path` is one of its routes, else returns
 * false and the request goes on to ingest. `authorize` checks the bearer token like
 * ingest does: false when it has answered 401.
 */
export type MountedRoutes = (
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  authorize: () => boolean,
) => Promise<boolean>;

export interface HttpIngestOptions {
  listen: ListenAddress;
  token: string | null;
  maxBody: number;
  tlsCert: string | null;
  tlsKey: string | null;
  sink: IngestSink;
  /** The admin API on the same listener, same token (none: only ingest, /healthz and /readyz). */
  admin?: MountedRoutes;
  metrics: Metrics;
  logger: Logger;
  /** Protection against slow and idle clients; defaults in DEFAULT_HTTP_LIMITS (tests shorten them). */
  limits?: Partial<HttpLimits>;
}

/** Timeouts and the connection cap that keep slow or idle clients from pinning the agent. */
export interface HttpLimits {
  /** A connection must deliver a request's complete headers within this (else 408 and closed). */
  headersTimeoutMs: number;
  /** ... and the complete request, body included (a body trickled byte by byte is cut off). */
  requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: number;
  /** Open connections beyond this are closed at once (the OS backlog is not an unbounded queue). */
  maxConnections: number;
}

export const DEFAULT_HTTP_LIMITS: HttpLimits = {
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 30_000,
  maxConnections: 512,
};

const TOPIC_PATH = /^\/v1\/topics\/([^/]*)$/;
const REST_PROXY_PATH = /^\/topics\/([^/]*)$/;

export class HttpIngest {
  private readonly opts: HttpIngestOptions;
  /** A full disk or quota refuses every request: one line a minute with the count, not one per request. */
  private readonly refusedLog = new RateLimitedLog(60_000);
  private server: Server | null = null;

  constructor(opts: HttpIngestOptions) {
    this.opts = opts;
  }

  async start(): Promise<AddressInfo> {
    const o = this.opts;
    const handler = (req: IncomingMessage, res: ServerResponse) => {
      this.handle(req, res).catch((e) => {
        o.logger.error({ err: e }, 'http handler failed');
        if (!res.headersSent)
          sendJson(res, 500, { error: 'internal', detail: 'internal error; see the agent log' });
        else res.destroy();
      });
    };
    const lim = { ...DEFAULT_HTTP_LIMITS, ...o.limits };
    const serverOpts = {
      // Slow or idle clients must not pin resources for ever. Node starts these
      // clocks at a request's first byte; a connection that never sends one is
      // closed by the silent-connection timer below.
      requestTimeout: lim.requestTimeoutMs,
      headersTimeout: lim.headersTimeoutMs,
      keepAliveTimeout: lim.keepAliveTimeoutMs,
      // Node checks the two timeouts above only every connectionsCheckingInterval
      // (default 30 s, which would double them); check often, it is a cheap list walk.
      connectionsCheckingInterval: Math.max(
        100,
        Math.min(1_000, Math.floor(lim.headersTimeoutMs / 4)),
      ),
      maxHeaderSize: 16 * 1024,
    };
    this.server =
      o.tlsCert && o.tlsKey
        ? createHttpsServer(
            {
              ...serverOpts,
              handshakeTimeout: lim.headersTimeoutMs,
              cert: readFileSync(o.tlsCert),
              key: readFileSync(o.tlsKey),
            },
            handler,
          )
        : createHttpServer(serverOpts, handler);
    this.server.maxConnections = lim.maxConnections;
    // Measured: Node's headersTimeout never fires for a connection that sends
    // nothing at all, so a thousand silent sockets would hold every slot under
    // maxConnections for ever. A connection that has not delivered a complete
    // request head within headersTimeout is closed. (socket.bytesRead cannot
    // tell: the HTTP parser reads the socket natively and it stays 0.)
    const served = new WeakSet<object>();
    this.server.on('request', (req: IncomingMessage) => served.add(req.socket));
    const guard = (socket: Socket) => {
      const timer = setTimeout(() => {
        if (!served.has(socket)) socket.destroy();
      }, lim.headersTimeoutMs);
      timer.unref();
      socket.once('close', () => clearTimeout(timer));
    };
    // With TLS, a silent TCP connection is closed by handshakeTimeout; the guard starts after the handshake.
    this.server.on(o.tlsCert && o.tlsKey ? 'secureConnection' : 'connection', guard);
    const server = this.server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(o.listen.port, o.listen.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return server.address() as AddressInfo;
  }

  /** Stops accepting connections; requests already inside finish (they wait for their commit). */
  async stop(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = null;
    await new Promise<void>((resolve) => {
      s.close(() => resolve());
      s.closeIdleConnections();
    });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const o = this.opts;
    // The path is taken raw: WHATWG URL parsing would resolve `..` and `%2E%2E`
    // segments, and a topic named ".." must be refused, not routed elsewhere.
    const rawUrl = req.url ?? '/';
    const q = rawUrl.indexOf('?');
    const path = q === -1 ? rawUrl : rawUrl.slice(0, q);
    const query = new URLSearchParams(q === -1 ? '' : rawUrl.slice(q + 1));
    const method = req.method ?? 'GET';

    if (path === '/healthz') return onlyGet(req, res, () => sendJson(res, 200, { status: 'ok' }));
    if (path === '/readyz') {
      return onlyGet(req, res, () =>
        o.sink.ready
          ? sendJson(res, 200, { status: 'ready' })
          : sendJson(res, 503, {
              error: 'not_ready',
              detail: 'the log is not open or kedge is shutting down',
            }),
      );
    }
    if (o.admin && (await o.admin(req, res, path, () => this.authorized(req, res)))) return;

    const v1 = TOPIC_PATH.exec(path);
    const rest = v1 ? null : REST_PROXY_PATH.exec(path);
    if (!v1 && !rest) {
      await drain(req);
      return sendJson(res, 404, {
        error: 'not_found',
        detail: `no such endpoint: ${path} (ingest is POST /v1/topics/{topic})`,
      });
    }
    if (method !== 'POST') return methodNotAllowed(req, res, 'POST');
    if (!this.authorized(req, res)) return;

    try {
      const topic = decodeTopic((v1 ?? rest)![1]);
      if (!o.sink.ready)
        throw new IngestError(503, 'shutting_down', 'kedge is shutting down; retry shortly', {
          'retry-after': '5',
        });
      // The REST proxy content type is checked before the body is read, so a wrong client fails fast.
      const fmt = rest ? restFormat(req.headers['content-type']) : null;
      const body = await readBody(req, o.maxBody);
      const events = rest
        ? eventsFromRestProxy(fmt!, body, topic)
        : eventsFromBody(bodyKind(req.headers['content-type']), body, topic, queryKey(query));
      let result: AppendResult;
      try {
        result = await o.sink.submit(events);
      } catch (e) {
        if (e instanceof LogWriteError) {
          const suppressed = this.refusedLog.shouldLog();
          if (suppressed >= 0)
            o.logger.warn(
              { err: e.message, code: e.code, suppressed },
              'append refused: request answered with an error, nothing stored',
            );
          if (e.code === 'KEDGE_DISK_FULL' || e.code === 'KEDGE_QUOTA_FULL')
            throw new IngestError(507, 'insufficient_storage', e.message, { 'retry-after': '30' });
          throw new IngestError(503, 'log_unavailable', e.message, { 'retry-after': '5' });
        }
        throw e;
      }
      if (rest) return sendJson(res, 200, restProxyAnswer(result));
      return sendJson(res, 200, {
        accepted: events.length,
        first_seq: result.firstSeq,
        last_seq: result.lastSeq,
      });
    } catch (e) {
      if (!(e instanceof IngestError)) throw e;
      o.metrics.rejected.inc({ source: 'http', reason: e.error });
      if (!req.complete) {
        // The rest of the body is not read: close the connection after answering.
        res.setHeader('connection', 'close');
        res.once('finish', () => req.socket.destroySoon?.());
      }
      const payload: Record<string, unknown> = { error: e.error, detail: e.detail };
      if (rest) {
        payload.error_code = e.status * 100 + 1;
        payload.message = e.detail;
      }
      for (const [k, v] of Object.entries(e.headers)) res.setHeader(k, v);
      return sendJson(res, e.status, payload);
    }
  }

  private authorized(req: IncomingMessage, res: ServerResponse): boolean {
    const token = this.opts.token;
    if (token === null) return true;
    const h = req.headers.authorization ?? '';
    const m = /^Bearer\s+(.+)$/i.exec(h);
    if (m && tokenMatches(m[1].trim(), token)) return true;
    this.opts.metrics.rejected.inc({ source: 'http', reason: 'unauthorized' });
    res.setHeader('www-authenticate', 'Bearer realm="kedge"');
    res.setHeader('connection', 'close');
    req.resume();
    sendJson(res, 401, {
      error: 'unauthorized',
      detail: 'missing or wrong bearer token (Authorization: Bearer <KEDGE_HTTP_TOKEN>)',
    });
    return false;
  }
}

function decodeTopic(raw: string): string {
  let topic: string;
  try {
    topic = decodeURIComponent(raw);
  } catch {
    throw new IngestError(400, 'bad_topic', 'the topic in the path is not valid percent-encoding');
  }
  if (!isValidTopic(topic)) {
    throw new IngestError(
      400,
      'bad_topic',
      `topic "${topic.slice(0, 300)}" is not a valid Kafka topic name (1-249 characters of a-z A-Z 0-9 . _ -, not "." or "..")`,
    );
  }
  return topic;
}

function queryKey(query: URLSearchParams): Buffer | null {
  const k = query.get('key');
  return k === null ? null : Buffer.from(k, 'utf8');
}

/**
 * Reads the whole body, refusing (413) once it is larger than the limit. A body
 * that is too large is still read and thrown away up to a bound, so the client
 * gets the 413 instead of a broken pipe; past the bound the connection is cut.
 */
function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) {
    return Promise.reject(
      new IngestError(
        413,
        'payload_too_large',
        `the body is ${declared} bytes; the limit is ${max} bytes (KEDGE_HTTP_MAX_BODY)`,
      ),
    );
  }
  const discardCap = Math.max(4 * max, 4 * 1024 * 1024);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    let settled = false;
    const tooLargeError = () =>
      new IngestError(
        413,
        'payload_too_large',
        `the body is larger than the limit of ${max} bytes (KEDGE_HTTP_MAX_BODY)`,
      );
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (tooLarge) {
        if (size > discardCap && !settled) {
          settled = true;
          req.pause();
          reject(tooLargeError());
        }
        return;
      }
      if (size > max) {
        tooLarge = true;
        chunks.length = 0;
        return;
      }
      chunks.push(c);
    });
    req.once('end', () => {
      if (settled) return;
      settled = true;
      if (tooLarge) reject(tooLargeError());
      else resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size));
    });
    req.once('error', (e) => {
      if (!settled)
        reject(
          new IngestError(400, 'bad_request', `the request body could not be read: ${e.message}`),
        );
      settled = true;
    });
    req.once('aborted', () => {
      if (!settled) reject(new IngestError(400, 'bad_request', 'the client aborted the request'));
      settled = true;
    });
  });
}
