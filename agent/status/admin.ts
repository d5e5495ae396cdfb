/**
 * The admin API, mounted on the HTTP ingest listener (same address, TLS and token):
 * GET / (the status page), GET /v1/status, GET /metrics, POST /v1/forwarding/pause and /resume (these two
 * need the token when one is set; `?destination=N` pauses one destination, else all). agent.ts builds it and hands it to HttpIngest,
 * which knows only the MountedRoutes shape: ingest sits below status.
 */
import type { Forwarder } from '../forward/forwarder.ts';
import { drain, methodNotAllowed, onlyGet, sendJson } from '../ingest/http-reply.ts';
import type { MountedRoutes } from '../ingest/http.ts';
import type { Metrics } from '../observe/metrics.ts';
import type { AgentStatus } from './document.ts';
import type { TapBus } from '../observe/tap-bus.ts';
import { serveTap } from './tap.ts';
import { sendStatusPage } from './page.ts';
import type { DeadLetterAdmin } from '../log/index.ts';
import { deadLetterRoutes } from './dead-letter-routes.ts';
import { eventDataAuthorizer } from './event-data-access.ts';
import type { Logger } from '../observe/logger.ts';

export interface AdminSources {
  status(): AgentStatus;
  metrics: Metrics;
  /**
   * Each destination's forwarder, by name. `persisted: false` in the answer: in force, but not
   * yet saved (disk full); kedge keeps trying.
   */
  forwarders: ReadonlyMap<string, Pick<Forwarder, 'setPaused'>>;
  /** `kedge tap`'s bus (GET /v1/tap, tap.ts); absent: no tap route. */
  tap?: TapBus;
  /** `kedge dead-letters`: the log's dead-letter tables (dead-letter-routes.ts); absent: no such routes. */
  deadLetters?: () => DeadLetterAdmin;
  /**
   * KEDGE_HTTP_TOKEN is set. Without one, tap and dead-letter routes (event data) answer only
   * loopback peers (event-data-access.ts).
   */
  tokenConfigured: boolean;
  /** For the audit line of each dead-letter replay and purge. */
  logger?: Logger;
}

export function adminRoutes(src: AdminSources): MountedRoutes {
  return async (req, res, path, authorize) => {
    // Tap and dead letters carry event data: without a token, loopback peers only.
    const dataAuth = eventDataAuthorizer(req, res, src.tokenConfigured, authorize);
    const dl = src.deadLetters;
    if (
      dl &&
      (await deadLetterRoutes(
        { deadLetters: dl, metrics: src.metrics, logger: src.logger },
        req,
        res,
        path,
        dataAuth,
      ))
    )
      return true;
    if (path === '/metrics') {
      await onlyGet(req, res, async () => {
        const body = await src.metrics.registry.metrics();
        res.writeHead(200, { 'content-type': src.metrics.registry.contentType });
        res.end(body);
      });
      return true;
    }
    // A live tail of committed events (tap.ts); it shows payloads: the token when one is set, else loopback only.
    if (path === '/v1/tap' && src.tap) {
      await serveTap(req, res, { bus: src.tap, metrics: src.metrics }, dataAuth);
      return true;
    }
    if (path === '/v1/status') {
      await onlyGet(req, res, () => sendJson(res, 200, src.status()));
      return true;
    }
    // The status page (page.ts): a view of /v1/status, so the same rule, no token.
    if (path === '/') {
      await onlyGet(req, res, () => sendStatusPage(req, res));
      return true;
    }
    if (path === '/v1/forwarding/pause' || path === '/v1/forwarding/resume') {
      if (req.method !== 'POST') {
        methodNotAllowed(req, res, 'POST');
        return true;
      }
      if (!authorize()) return true;
      await drain(req);
      const pause = path.endsWith('pause');
      const q = new URLSearchParams((req.url ?? '').split('?')[1] ?? '');
      const only = q.get('destination');
      if (only !== null && !src.forwarders.has(only)) {
        sendJson(res, 404, {
          error: 'no_such_destination',
          detail: `no destination ${JSON.stringify(only)} (destinations: ${[...src.forwarders.keys()].join(', ')})`,
        });
        return true;
      }
      let persisted = true;
      for (const [name, f] of src.forwarders) {
        if (only !== null && name !== only) continue;
        persisted = (await f.setPaused(pause)).persisted && persisted;
      }
      sendJson(res, 200, {
        forwarding: pause ? 'paused' : 'running',
        persisted,
        ...(only !== null ? { destination: only } : {}),
      });
      return true;
    }
    return false;
  };
}
