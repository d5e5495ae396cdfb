/**
 * Records Kafka will not take: the per-topic grace for refusals that may heal
 * (unknown topic, missing ACL) and the pass that sends a refused batch one record at
 * a time, so only the refused records go to the dead-letter table (counted, logged)
 * and the rest go through, in order.
 */
import { classifySendError, describeKafkaError, type SendErrorClass } from '../kafka/classify.ts';
import type { ForwardLog, Lane, StoredEvent } from '../log/types.ts';
import type { Logger } from '../observe/logger.ts';
import type { ForwardMetrics } from '../observe/metrics.ts';

/** What the dead-letter pass needs from the forwarder loop. */
export interface DeadLetterOptions {
  log: ForwardLog;
  metrics: ForwardMetrics;
  logger: Logger;
  topicPrefix: string;
  /** ForwarderOptions.unknownTopicGraceMs. */
  graceMs: number;
  /** Sends one event, within the send deadline. */
  send(ev: StoredEvent): Promise<void>;
  /** Records in the log what Kafka acknowledged; false when the log could not (retried by the next turn). */
  acknowledge(batch: StoredEvent[], lane: Lane): boolean;
  /** A send failed for another reason than a refusal: link state, new producer, backoff. */
  failed(e: unknown, c: SendErrorClass): Promise<void>;
  /** The log could not record a dead letter: link state, backoff. */
  storageFailed(what: string, e: unknown): Promise<void>;
  /** The forwarder is stopping: the pass ends after the send in flight. */
  stopping(): boolean;
}

export class DeadLetters {
  private readonly o: DeadLetterOptions;
  /**
   * Per topic: performance.now() when Kafka first refused it with a GRACE_ERRORS type
   * since its last successful send. Monotonic, so an NTP step cannot end a grace early;
   * cleared by any success on that topic, so an old blip cannot shorten a new one's grace.
   */
  private readonly refusedSince = new Map<string, number>();

  constructor(o: DeadLetterOptions) {
    this.o = o;
  }

  /** Starts the grace clock of each topic Kafka refused (if not running); true when one of them has run out. */
  graceOver(topics: Iterable<string>): boolean {
    const now = performance.now();
    let over = false;
    for (const topic of topics) {
      const since = this.refusedSince.get(topic);
      if (since === undefined) this.refusedSince.set(topic, now);
      else if (now - since >= this.o.graceMs) over = true;
    }
    return over;
  }

  /** Kafka took an event of `topic`: a later refusal starts a new grace. */
  accepted(topic: string): void {
    this.refusedSince.delete(topic);
  }

  /**
   * Kafka refused something in the batch for good. Send the records one by one,
   * in order, so only the refused ones are dead-lettered and the rest go through.
   */
  async isolate(batch: StoredEvent[], lane: Lane): Promise<void> {
    const o = this.o;
    // Topics whose grace ran out in this pass: their other events are not sent again one by one.
    const deadTopics = new Map<string, { type: string; detail: string }>();
    const dead = new Map<
      string,
      { topic: string; reason: string; count: number; firstSeq: number; bytes: number }
    >();
    const report = () => {
      // One line per topic and reason for the pass, not one per event.
      for (const d of dead.values()) {
        o.logger.error(
          {
            topic: o.topicPrefix + d.topic,
            reason: d.reason,
            events: d.count,
            firstSeq: d.firstSeq,
            bytes: d.bytes,
          },
          'Kafka refused events for good; moved them to the dead-letter table (see /v1/status)',
        );
      }
    };
    for (const ev of batch) {
      if (o.stopping()) return report();
      let refusal = deadTopics.get(ev.topic);
      if (!refusal) {
        try {
          await o.send(ev);
          if (!o.acknowledge([ev], lane)) return report(); // retried by the next turn
          continue;
        } catch (e) {
          const c = classifySendError(e);
          const dead =
            c.kind === 'permanent' || (c.kind === 'unknown-topic' && this.graceOver([ev.topic]));
          if (!dead || c.type === null) {
            report();
            await o.failed(e, c);
            return;
          }
          refusal = { type: c.type, detail: describeKafkaError(e) };
          if (c.kind === 'unknown-topic') deadTopics.set(ev.topic, refusal);
        }
      }
      {
        const permanent = refusal.type;
        const reason = `${permanent}: ${refusal.detail}`;
        try {
          o.log.deadLetter(ev, reason);
        } catch (e) {
          // Not recorded: the next pass sends it again and finds the same refusal.
          report();
          await o.storageFailed('move a refused event to the dead-letter table', e);
          return;
        }
        o.metrics.deadLettered.inc({ topic: ev.topic, reason: permanent });
        const k = `${ev.topic}\u0000${permanent}`;
        const d = dead.get(k) ?? {
          topic: ev.topic,
          reason: permanent,
          count: 0,
          firstSeq: ev.seq,
          bytes: 0,
        };
        d.count++;
        d.bytes += ev.value.length;
        dead.set(k, d);
      }
    }
    report();
  }
}
