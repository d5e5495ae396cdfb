/**
 * What a Kafka client error means (kafkajs' or @platformatic/kafka's): `classifySendError` tells the forwarder what to do
 * about a failed send (retry, shrink the batch, dead-letter after a grace, dead-letter
 * now), `describeKafkaError` tells the operator what happened, in one line.
 */
import { DeadlineError } from '../deadline.ts';

/**
 * - `timeout`: no answer in time (ours or kafkajs'): a hang outage, or a batch too
 *   large for a slow link; retried, with a smaller batch.
 * - `permanent`: a refusal retrying will not fix (record too large, invalid topic):
 *   dead-lettered.
 * - `unknown-topic`: a refusal that may heal by itself (GRACE_ERRORS): retried
 *   until the topic's grace runs out, then dead-lettered.
 * - `transient`: anything else (connection lost, leader moved, broker down): retried.
 */
export type SendErrorKind = 'timeout' | 'permanent' | 'unknown-topic' | 'transient';

export interface SendErrorClass {
  kind: SendErrorKind;
  /** The Kafka error type behind `permanent` and `unknown-topic` (e.g. MESSAGE_TOO_LARGE), the dead-letter reason; null otherwise. */
  type: string | null;
}

/**
 * Refusals that may heal by themselves, so they get a grace period per topic before
 * they count as permanent: a topic not created yet (auto-creation racing, an operator
 * about to create it), an ACL not yet propagated to every broker.
 */
export const GRACE_ERRORS: ReadonlySet<string> = new Set([
  'UNKNOWN_TOPIC_OR_PARTITION',
  'TOPIC_AUTHORIZATION_FAILED',
]);

/** Refusals that retrying will not fix. */
const PERMANENT_ERRORS: ReadonlySet<string> = new Set([
  'MESSAGE_TOO_LARGE',
  'RECORD_LIST_TOO_LARGE',
  'INVALID_TOPIC_EXCEPTION',
  'INVALID_RECORD',
  'CORRUPT_MESSAGE',
  'INVALID_REQUIRED_ACKS',
  'POLICY_VIOLATION',
  'UNSUPPORTED_FOR_MESSAGE_FORMAT',
]);

/** One link of an error's `cause` chain, as kafkajs, @platformatic/kafka and Node build them. */
interface ErrorLink {
  /** kafkajs: the Kafka error type (e.g. MESSAGE_TOO_LARGE). */
  type?: unknown;
  /** @platformatic/kafka's ProtocolError: the Kafka error type. */
  apiId?: unknown;
  name?: unknown;
  code?: unknown;
  message?: unknown;
  cause?: unknown;
  errors?: unknown;
}

/**
 * The Kafka error type a link carries (kafkajs `type`, @platformatic/kafka `apiId`).
 * @platformatic/kafka turns a metadata answer of UNKNOWN_TOPIC_OR_PARTITION into a
 * UserError "Unknown topic <name>." without the protocol error: that message is all
 * there is to know it by (test/dead-letter-topic.test.ts runs it against a broker).
 */
function kafkaType(cur: ErrorLink): string | null {
  if (typeof cur.type === 'string') return cur.type;
  if (typeof cur.apiId === 'string') return cur.apiId;
  if (cur.code === 'PLT_KFK_USER' && /^Unknown topic .+\.$/.test(String(cur.message)))
    return 'UNKNOWN_TOPIC_OR_PARTITION';
  return null;
}

/**
 * No answer to a request in time. kafkajs: KafkaJSRequestTimeoutError. @platformatic/kafka:
 * its TimeoutError (class code PLT_KFK_TIMEOUT; the instance's `code` says NETWORK), but
 * not a connection attempt that timed out, which kafkajs reports as a connection error
 * (transient: a smaller batch would not help).
 */
function isRequestTimeout(cur: ErrorLink): boolean {
  if (cur instanceof DeadlineError || cur.name === 'KafkaJSRequestTimeoutError') return true;
  const ctor = (cur as { constructor?: { code?: unknown } }).constructor;
  return ctor?.code === 'PLT_KFK_TIMEOUT' && !/^Connection\b/.test(String(cur.message));
}

/**
 * Every link of a client error: the error, the members of an aggregate (`errors`),
 * then its cause, depth first, at most `depth` levels down.
 */
function* errorTree(e: unknown, depth = 8): Generator<ErrorLink> {
  const cur = e as ErrorLink | null | undefined;
  if (!cur || typeof cur !== 'object' || depth < 0) return;
  yield cur;
  if (Array.isArray(cur.errors)) for (const sub of cur.errors) yield* errorTree(sub, depth - 1);
  yield* errorTree(cur.cause, depth - 1);
}

/**
 * What a failed send means for the forwarder. A refusal anywhere in the error wins
 * over a timeout (Kafka did answer, for some of it), and a permanent one over one
 * that may heal.
 */
export function classifySendError(e: unknown): SendErrorClass {
  if (e instanceof RemoteKafkaError) return e.sendClass;
  let grace: string | null = null;
  let timeout = false;
  for (const cur of errorTree(e)) {
    const type = kafkaType(cur);
    if (type !== null) {
      if (PERMANENT_ERRORS.has(type)) return { kind: 'permanent', type };
      if (grace === null && GRACE_ERRORS.has(type)) grace = type;
    }
    if (isRequestTimeout(cur)) timeout = true;
  }
  if (grace !== null) return { kind: 'unknown-topic', type: grace };
  return { kind: timeout ? 'timeout' : 'transient', type: null };
}

/** A client error as plain data: what crosses from the Kafka thread (thread-protocol.ts). */
export interface ClassifiedFailure {
  sendClass: SendErrorClass;
  description: string;
  message: string;
  name: string;
}

/**
 * A client error from the Kafka thread (kafka-thread.ts), already classified and
 * described there: the client's error objects do not survive the copy between threads.
 */
export class RemoteKafkaError extends Error {
  readonly sendClass: SendErrorClass;
  readonly description: string;

  constructor(f: ClassifiedFailure) {
    super(f.message);
    this.name = f.name;
    this.sendClass = f.sendClass;
    this.description = f.description;
  }
}

/**
 * The client error chain for status and logs, led by what an operator should check when
 * the cause is a TLS or SASL failure (those never heal by retrying).
 */
export function describeKafkaError(e: unknown): string {
  if (e instanceof RemoteKafkaError) return e.description;
  const parts: string[] = [];
  const seen = new Set<string>();
  // The members of an aggregate too: @platformatic/kafka's retry loop and produce
  // answers (MultipleErrors, ResponseError) keep the broker's error there.
  for (const cur of errorTree(e, 6)) {
    if (parts.length >= 6) break;
    // Node suggests a Node flag for untrusted certificates; the fix for kedge is KEDGE_KAFKA_CA_FILE.
    const msg = String(cur.message ?? String(cur)).replace(
      /; if the root CA is installed locally, try running Node\.js with --use-system-ca/,
      '',
    );
    if (seen.has(msg)) continue;
    seen.add(msg);
    parts.push(`${kafkaType(cur) ?? cur.name ?? 'Error'}: ${msg}`);
  }
  if (parts.length === 0) parts.push(`Error: ${String(e)}`);
  const hint = securityHint(e);
  return (hint ? `${hint} [${parts.join(' <- ')}]` : parts.join(' <- ')).slice(0, 600);
}

const TLS_HINTS: [RegExp, string][] = [
  [
    /UNABLE_TO_VERIFY|SELF_SIGNED|UNABLE_TO_GET_ISSUER|CERT_UNTRUSTED|unable to verify|self[- ]signed certificate|unable to get (local )?issuer/i,
    "TLS certificate error: Kafka's certificate is not signed by a CA kedge trusts (check KEDGE_KAFKA_CA_FILE)",
  ],
  [
    /ALTNAME|does not match certificate|Hostname\/IP does not match/i,
    "TLS certificate error: Kafka's certificate does not name the address in KEDGE_KAFKA_BROKERS (use a name or IP the certificate lists)",
  ],
  [
    /CERT_HAS_EXPIRED|CERT_NOT_YET_VALID|certificate has expired|certificate is not yet valid/i,
    "TLS certificate error: Kafka's certificate has expired or is not valid yet",
  ],
  [
    /alert (bad certificate|certificate unknown|certificate required|unknown ca|certificate expired)|ALERT_(BAD_CERTIFICATE|CERTIFICATE_UNKNOWN|CERTIFICATE_REQUIRED|UNKNOWN_CA|CERTIFICATE_EXPIRED)/i,
    "TLS certificate error: Kafka refused kedge's client certificate (check KEDGE_KAFKA_CERT_FILE and KEDGE_KAFKA_KEY_FILE, and that Kafka trusts their CA)",
  ],
  [
    /WRONG_VERSION_NUMBER|wrong version number|packet length too long|unknown protocol/i,
    'TLS error: the broker port does not speak TLS (point KEDGE_KAFKA_BROKERS at the TLS listener, or set KEDGE_KAFKA_TLS=false)',
  ],
];

/** One line naming the thing to fix, for TLS and SASL failures anywhere in a client's error chain; null otherwise. */
export function securityHint(e: unknown): string | null {
  for (const cur of errorTree(e)) {
    const type = kafkaType(cur);
    if (type === 'UNSUPPORTED_SASL_MECHANISM') {
      return 'authentication failed: Kafka does not offer KEDGE_KAFKA_SASL_MECHANISM on this listener (check the mechanism and KEDGE_KAFKA_BROKERS)';
    }
    if (cur.name === 'KafkaJSSASLAuthenticationError' || type === 'SASL_AUTHENTICATION_FAILED') {
      return 'authentication failed: Kafka refused the SASL username or password (check KEDGE_KAFKA_USERNAME, KEDGE_KAFKA_PASSWORD and KEDGE_KAFKA_SASL_MECHANISM)';
    }
    const text = `${String(cur.code ?? '')} ${String(cur.message ?? '')}`;
    for (const [re, hint] of TLS_HINTS) if (re.test(text)) return hint;
  }
  return null;
}
