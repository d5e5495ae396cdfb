/**
 * The one door from every ingest source into the log: it appends, waits for
 * the commit and counts. Sources acknowledge only after `submit` resolves.
 */
import type { AppendResult, EventInput, EventLog, Lane } from '../log/types.ts';
import type { Metrics } from '../observe/metrics.ts';

export class IngestSink {
  private readonly log: EventLog;
  private readonly metrics: Metrics;
  private accepting = true;
  private readonly priorityTopics: ReadonlySet<string>;

  /** `priorityTopics` (KEDGE_PRIORITY_TOPICS, without the topic prefix): their events go to the priority lane. */
  constructor(log: EventLog, metrics: Metrics, priorityTopics: readonly string[] = []) {
    this.log = log;
    this.metrics = metrics;
    this.priorityTopics = new Set(priorityTopics);
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
    const res = await this.log.append(events);
    this.metrics.commitSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
    // Count per topic once per request, not per event: requests are usually one topic.
    const perTopic = new Map<string, { n: number; bytes: number; source: string }>();
    for (const e of events) {
      const k = `${e.source}\u0000${e.topic}`;
      const cur = perTopic.get(k) ?? { n: 0, bytes: 0, source: e.source };
      cur.n++;
      cur.bytes += e.value.length + (e.key?.length ?? 0);
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
