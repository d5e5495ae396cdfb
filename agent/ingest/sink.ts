/**
 * The one door from every ingest source into the log: it appends, waits for
 * the commit and counts. Sources acknowledge only after `submit` resolves.
 */
import type { AppendResult, EventInput, EventLog, Lane } from '../log/types.ts';
import type { Metrics } from '../observe/metrics.ts';
import type { Logger } from '../observe/logger.ts';
import type { TapBus } from '../observe/tap-bus.ts';
import { LogWriteError } from '../log/types.ts';
import { eventBytes } from '../event-size.ts';

/** Refusals that last until space comes back: logged once when they begin and once when they end. */
const STORAGE_FULL = new Set(['KEDGE_QUOTA_FULL', 'KEDGE_DISK_FULL']);

export class IngestSink {
  private readonly log: EventLog;
  private readonly metrics: Metrics;
  private accepting = true;
  private readonly priorityTopics: ReadonlySet<string>;
  private readonly logger: Logger | null;
  /** The code of the storage refusal in force (quota reached, disk full), or null. */
  private full: string | null = null;
  /** `kedge tap` viewers see each request's events after its commit (null: no tap). */
  private readonly tap: TapBus | null;

  /** `priorityTopics` (KEDGE_PRIORITY_TOPICS, without the topic prefix): their events go to the priority lane. */
  constructor(
    log: EventLog,
    metrics: Metrics,
    priorityTopics: readonly string[] = [],
    logger: Logger | null = null,
    tap: TapBus | null = null,
  ) {
    this.log = log;
    this.metrics = metrics;
    this.priorityTopics = new Set(priorityTopics);
    this.logger = logger;
    this.tap = tap;
  }

  /** One line when ingest starts being refused for lack of space, one when it is accepted again. */
  private noteStorage(code: string | null, detail?: string): void {
    if (code === this.full) return;
    const was = this.full;
    this.full = code;
    if (code)
      this.logger?.warn(
        { code, detail },
        code === 'KEDGE_QUOTA_FULL'
          ? 'disk quota reached: new events are refused (HTTP 507, no MQTT PUBACK) until forwarding frees space'
          : 'disk full: new events are refused (HTTP 507, no MQTT PUBACK) until space comes back',
      );
    else if (was) this.logger?.info({ was }, 'space available again: new events are accepted');
  }

  /** False once shutdown began: sources answer 503 / send no PUBACK. */
  get ready(): boolean {
    return this.accepting;
  }

  stopAccepting(): void {
    this.accepting = false;
  }

  /** Appends all events in one all-or-nothing unit; rejects with LogWriteError when the log refuses. */
  async submit(events: EventInput[]): Promise<AppendResult> {
    const started = process.hrtime.bigint();
    if (this.priorityTopics.size > 0) {
      const lane = (topic: string): Lane => (this.priorityTopics.has(topic) ? 'priority' : 'bulk');
      for (const e of events) e.lane = lane(e.topic);
    }
    let res: AppendResult;
    try {
      res = await this.log.append(events);
    } catch (e) {
      if (e instanceof LogWriteError && STORAGE_FULL.has(e.code))
        this.noteStorage(e.code, e.message);
      throw e;
    }
    if (this.full) this.noteStorage(null);
    // After the commit, so a viewer sees only stored events, with their seq; never awaited.
    // A viewer's fault must never turn a stored (and about to be acknowledged) request into an
    // error: the client would send it again.
    if (this.tap !== null && this.tap.viewers > 0) {
      try {
        this.tap.publish(events, res.firstSeq);
      } catch (e) {
        this.logger?.warn({ err: e }, 'kedge tap: a viewer failed; the events are stored');
      }
    }
    this.metrics.commitSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
    // Count per topic once per request, not per event: requests are usually one topic.
    const perTopic = new Map<string, { n: number; bytes: number; source: string }>();
    for (const e of events) {
      const k = `${e.source}\u0000${e.topic}`;
      const cur = perTopic.get(k) ?? { n: 0, bytes: 0, source: e.source };
      cur.n++;
      cur.bytes += eventBytes(e);
      perTopic.set(k, cur);
    }
    for (const [k, v] of perTopic) {
      const topic = k.slice(k.indexOf('\u0000') + 1);
      this.metrics.ingestedEvents.inc({ source: v.source, topic }, v.n);
      this.metrics.ingestedBytes.inc({ source: v.source, topic }, v.bytes);
    }
    return res;
  }
}
