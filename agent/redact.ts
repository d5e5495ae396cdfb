/**
 * Hiding secrets in text kedge shows (check-config, problems, /v1/status, logs).
 * A base module: it imports nothing from agent/, so every layer can use it.
 */

/** What a hidden secret reads as, everywhere. */
export const REDACTED = '[redacted]';

/**
 * Hides the credentials of a URL, parsable or not, whatever its scheme:
 * `mqtt://user:secret@host` → `mqtt://user:[redacted]@host`; userinfo without a
 * colon may be a token (`mqtt://token@host`) and is hidden whole. The userinfo
 * runs to the last `@`, so a password holding `/`, `?`, `#` or `@` is hidden too;
 * an `@` in a path or query may hide more than needed, never less. Idempotent.
 */
export function redactUrl(url: string): string {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(url)?.[0] ?? '';
  const rest = url.slice(scheme.length);
  const at = rest.lastIndexOf('@');
  if (at < 0) return url;
  const userinfo = rest.slice(0, at);
  const colon = userinfo.indexOf(':');
  const shown = colon < 0 ? REDACTED : `${userinfo.slice(0, colon + 1)}${REDACTED}`;
  return `${scheme}${shown}${rest.slice(at)}`;
}

/** redactUrl for a value that is a URL (`scheme://…`); any other text is returned as is. */
export function redactIfUrl(text: string): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? redactUrl(text) : text;
}
