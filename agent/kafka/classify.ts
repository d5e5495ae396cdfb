/**
 * What a kafkajs error means: `classifySendError` tells the forwarder what to do
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

/** One link of an error's `cause` chain, as kafkajs and Node build them. */
interface ErrorLink {
  type?: unknown;
  name?: unknown;
  code?: unknown;
  message?: unknown;
  cause?: unknown;
  errors?: unknown;
}

/** `e`, its cause, the cause's cause…, at most `depth` links. */
function* causeChain(e: unknown, depth = 8): Generator<ErrorLink> {
  let cur = e as ErrorLink | null | undefined;
  for (let i = 0; cur && i < depth; cur = cur.cause as ErrorLink | null | undefined, i++) yield cur;
}

/**
 * Every link of a kafkajs error: the error, the members of an aggregate (`errors`),
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
  let grace: string | null = null;
  let timeout = false;
  for (const cur of errorTree(e)) {
    if (typeof cur.type === 'string') {
      if (PERMANENT_ERRORS.has(cur.type)) return { kind: 'permanent', type: cur.type };
      if (grace === null && GRACE_ERRORS.has(cur.type)) grace = cur.type;
    }
    if (cur instanceof DeadlineError || cur.name === 'KafkaJSRequestTimeoutError') timeout = true;
  }
  if (grace !== null) return { kind: 'unknown-topic', type: grace };
  return { kind: timeout ? 'timeout' : 'transient', type: null };
}

/**
 * The kafkajs error chain for status and logs, led by what an operator should check when
 * the cause is a TLS or SASL failure (those never heal by retrying).
 */
export function describeKafkaError(e: unknown): string {
  const parts: string[] = [];
  const seen = new Set<string>();
  for (const cur of causeChain(e, 6)) {
    // Node suggests a Node flag for untrusted certificates; the fix for kedge is KEDGE_KAFKA_CA_FILE.
    const msg = String(cur.message ?? String(cur)).replace(
      /; if the root CA is installed locally, try running Node\.js with --use-system-ca/,
      '',
    );
    if (seen.has(msg)) continue;
    seen.add(msg);
    parts.push(`${cur.type ?? cur.name ?? 'Error'}: ${msg}`);
  }
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

/** One line naming the thing to fix, for TLS and SASL failures anywhere in a kafkajs error chain; null otherwise. */
export function securityHint(e: unknown): string | null {
  for (const cur of errorTree(e)) {
    if (cur.type === 'UNSUPPORTED_SASL_MECHANISM') {
      return 'authentication failed: Kafka does not offer KEDGE_KAFKA_SASL_MECHANISM on this listener (check the mechanism and KEDGE_KAFKA_BROKERS)';
    }
    if (
      cur.name === 'KafkaJSSASLAuthenticationError' ||
      cur.type === 'SASL_AUTHENTICATION_FAILED'
    ) {
      return 'authentication failed: Kafka refused the SASL username or password (check KEDGE_KAFKA_USERNAME, KEDGE_KAFKA_PASSWORD and KEDGE_KAFKA_SASL_MECHANISM)';
    }
    const text = `${String(cur.code ?? '')} ${String(cur.message ?? '')}`;
    for (const [re, hint] of TLS_HINTS) if (re.test(text)) return hint;
  }
  return null;
}
