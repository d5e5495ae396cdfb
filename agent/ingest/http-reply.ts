/** Small answers shared by the HTTP listener's routes (ingest here, the admin API in agent/status/admin.ts). */
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Reads and discards what is left of the request body. */
export async function drain(req: IncomingMessage): Promise<void> {
  if (req.complete) return;
  req.resume();
  await new Promise<void>((resolve) => {
    req.once('end', resolve);
    req.once('error', () => resolve());
    req.once('close', () => resolve());
  });
}

/** GET or HEAD only (else 405); the body is drained before `fn` answers. */
export async function onlyGet(
  req: IncomingMessage,
  res: ServerResponse,
  fn: () => void | Promise<void>,
): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') return methodNotAllowed(req, res, 'GET');
  await drain(req);
  await fn();
}

export function methodNotAllowed(req: IncomingMessage, res: ServerResponse, allow: string): void {
  req.resume();
  res.setHeader('allow', allow);
  sendJson(res, 405, {
    error: 'method_not_allowed',
    detail: `${req.method} is not allowed here; use ${allow}`,
  });
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}
