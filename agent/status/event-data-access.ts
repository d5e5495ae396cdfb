/**
 * Who may use the admin routes that carry event data (GET /v1/tap, /v1/dead-letters[/…]).
 * With KEDGE_HTTP_TOKEN set, the token decides, as everywhere. Without one, `authorize()` lets
 * every request through, which is right for ingest on the default 127.0.0.1 listener but would
 * let anyone on the network watch payloads or purge dead letters once the listener is on a
 * non-loopback address. So, without a token, these routes answer only requests from a loopback
 * address (the CLI runs on the device); any other source gets 403 `token_required`.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { sendJson } from '../ingest/http-reply.ts';

/** What a request from another host gets when no token is configured. */
export const TOKEN_REQUIRED_DETAIL =
  'set KEDGE_HTTP_TOKEN to use /v1/tap and /v1/dead-letters from another host';

/** A peer address as node reports it: 127.0.0.0/8, ::1, or IPv4-mapped 127.x (::ffff:127.x). */
export function isLoopbackAddress(addr: string | undefined): boolean {
  if (addr === undefined) return false;
  const a = addr.toLowerCase();
  return a === '::1' || /^127\./.test(a) || /^::ffff:127\./.test(a);
}

/**
 * The decision alone: may a request from `remote` use the event-data routes, before the token
 * check? Always with a token configured (the token check decides); without, loopback only.
 */
export function eventDataAllowed(tokenConfigured: boolean, remote: string | undefined): boolean {
  return tokenConfigured || isLoopbackAddress(remote);
}

/**
 * An `authorize` for the event-data routes: 403 `token_required` to a non-loopback peer when
 * no token is configured, else the listener's own `authorize` (the token check). False when it
 * has answered.
 */
export function eventDataAuthorizer(
  req: IncomingMessage,
  res: ServerResponse,
  tokenConfigured: boolean,
  authorize: () => boolean,
): () => boolean {
  return () => {
    if (!eventDataAllowed(tokenConfigured, req.socket.remoteAddress)) {
      req.resume();
      sendJson(res, 403, { error: 'token_required', detail: TOKEN_REQUIRED_DETAIL });
      return false;
    }
    return authorize();
  };
}
