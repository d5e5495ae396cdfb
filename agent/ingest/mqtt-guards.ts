/**
 * The embedded broker's protection against clients that break MQTT: the packet-size guard
 * hooked into aedes' parser, kedge's own refusal errors, and which connection errors count
 * as protocol errors. mqtt-broker.ts uses these; they hold no state of their own beyond the
 * marks on parser errors.
 */
import type { Socket } from 'node:net';
import type { Client } from 'aedes';
import { KedgeError } from '../errors.ts';

/** Largest non-PUBLISH packet we accept (CONNECT with will, SUBSCRIBE with many filters). */
const MAX_CONTROL_PACKET = 1024 * 1024;
/** PUBLISH overhead above the payload: topic length (2) + topic (≤ 65535) + packet id (2). */
const PUBLISH_OVERHEAD = 2 + 65_535 + 2;

export class OversizeError extends KedgeError {
  constructor(message: string) {
    super('KEDGE_MQTT_OVERSIZE', message);
  }
}

/** A PUBLISH kedge refused on purpose ($SYS/, shutting down): counted as a refusal, not a protocol error. */
export class PublishRefusedError extends KedgeError {
  constructor(message: string) {
    super('KEDGE_MQTT_REFUSED', message);
  }
}

/** A PUBLISH whose topic is ill-formed UTF-8 or holds U+0000: MQTT 3.1.1 [MQTT-1.5.3-1/2] says close the connection. */
export class MalformedTopicError extends KedgeError {
  constructor(message: string) {
    super('KEDGE_MQTT_MALFORMED_TOPIC', message);
  }
}

/** Errors the packet parser raised for a connection (an unparsable packet). */
const parseErrors = new WeakSet<Error>();

/**
 * Which protocol error an aedes connection error is, or null when it is not
 * the client breaking MQTT: socket errors (ECONNRESET), kedge's own refusals
 * (oversize, log, $SYS/, shutdown) and bad credentials are counted elsewhere.
 */
export function protocolErrorKind(
  err: Error & { code?: unknown; errorCode?: unknown },
): string | null {
  if (parseErrors.has(err)) return err instanceof OversizeError ? null : 'malformed';
  if (err instanceof MalformedTopicError) return 'malformed';
  if (typeof err.code === 'string') return null;
  if (err.errorCode === 4 || err.errorCode === 5) return null;
  if (err.message === 'connect did not arrive in time') return 'connect_timeout';
  if (err.message === 'keep alive timeout') return 'keepalive_timeout';
  // A packet before CONNECT, a second CONNECT ("Invalid protocol"), an unacceptable protocol level
  // (CONNACK code 1..3), a wildcard or empty topic in a PUBLISH: whatever aedes refused in the packet stream.
  return 'protocol';
}

/**
 * aedes buffers a whole packet before it parses it; a publisher announcing a
 * 200 MB packet would make us hold 200 MB. Check the announced length as
 * soon as the fixed header is read, and close the connection when even the
 * largest possible topic could not bring the payload under the limit. The
 * exact payload check happens in authorizePublish.
 */
export function guardPacketSize(
  client: Client & { _parser?: ParserInternals },
  maxPayload: number,
  on: {
    /** A packet announced too large for the limit (the connection is closed). */
    oversize(cmd: string, length: number): void;
    /** Any other packet the parser could not read. */
    malformed(): void;
  },
): void {
  const parser = client._parser;
  if (!parser) return;
  // A parse error ends the connection (aedes closes it): count it as malformed, except our own oversize refusal.
  // prependListener: the mark must be set before aedes' own listener reports the error as connectionError.
  parser.prependListener('error', (err: Error) => {
    parseErrors.add(err);
    if (!(err instanceof OversizeError)) on.malformed();
  });
  if (typeof parser._parseLength !== 'function' || typeof parser._emitError !== 'function') return;
  const original = parser._parseLength;
  const maxPublish = maxPayload + PUBLISH_OVERHEAD;
  parser._parseLength = function (this: ParserInternals): boolean {
    const ok = original.call(this);
    if (ok) {
      const { cmd, length } = this.packet;
      if (length > (cmd === 'publish' ? maxPublish : Math.max(MAX_CONTROL_PACKET, maxPublish))) {
        on.oversize(cmd, length);
        this._emitError(new OversizeError(`${cmd} packet of ${length} bytes exceeds the limit`));
        return false;
      }
    }
    return ok;
  };
}

/** The bits of mqtt-packet's parser (aedes' `client._parser`) the size guard hooks into. */
export interface ParserInternals {
  packet: { cmd: string; length: number };
  _parseLength(): boolean;
  _emitError(err: Error): void;
  prependListener(event: 'error', listener: (err: Error) => void): unknown;
}

export function remoteOf(client: Client): string | undefined {
  const c = client?.conn as Socket | undefined;
  return c?.remoteAddress ? `${c.remoteAddress}:${c.remotePort}` : undefined;
}
