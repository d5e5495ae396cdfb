/**
 * The ack ledger and the one comparison every fault scenario ends with.
 *
 * Load generators take event ids from a ledger (plain integers, unique across every
 * source and topic of a scenario) and record each id that got an acknowledgement
 * (HTTP 2xx, MQTT PUBACK). At the end, `compareWithKafka` reads the topics with kcat,
 * an independent client, streaming (a 5-million-event backlog never sits in memory as
 * records), and reports what a user would check: nothing acknowledged is missing,
 * order per key holds, and every duplicate carries an already-seen `kedge-id`.
 *
 * Events must carry their id as `"id":<integer>` in a JSON value; `pad` fields and
 * keys must not contain tabs or newlines (kcat prints one record per line here).
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Test } from 'tap';

/** A growable bit set over non-negative integers: 5 million ids cost 625 KB. */
export class IdBits {
  private bits = new Uint8Array(1 << 16);

  set(i: number): void {
    if (i >> 3 >= this.bits.length) {
      let n = this.bits.length;
      while (i >> 3 >= n) n *= 2;
      const grown = new Uint8Array(n);
      grown.set(this.bits);
      this.bits = grown;
    }
    this.bits[i >> 3] |= 1 << (i & 7);
  }

  has(i: number): boolean {
    return i >> 3 < this.bits.length && (this.bits[i >> 3] & (1 << (i & 7))) !== 0;
  }
}

export class AckLedger {
  /** Ids handed out so far are 0 … issued − 1. */
  issued = 0;
  /** Ids that got an acknowledgement. */
  readonly acked = new IdBits();
  ackedCount = 0;
  /** Events sent without an acknowledgement (error, timeout, refusal): may or may not be stored. */
  unacked = 0;
  /** Acknowledgement counts per source label (e.g. http, mqtt). */
  readonly bySource = new Map<string, number>();

  /** Hands out `n` consecutive new ids; returns the first. */
  take(n: number): number {
    const first = this.issued;
    this.issued += n;
    return first;
  }

  ack(ids: Iterable<number>, source: string): void {
    let n = 0;
    for (const id of ids) {
      if (this.acked.has(id)) continue;
      this.acked.set(id);
      n++;
    }
    this.ackedCount += n;
    this.bySource.set(source, (this.bySource.get(source) ?? 0) + n);
  }

  /** Acknowledges the range first … first + n − 1. */
  ackRange(first: number, n: number, source: string): void {
    const ids = {
      *[Symbol.iterator]() {
        for (let i = 0; i < n; i++) yield first + i;
      },
    };
    this.ack(ids, source);
  }

  fail(n: number): void {
    this.unacked += n;
  }

  summary(): string {
    const src = [...this.bySource].map(([s, n]) => `${s} ${n}`).join(', ');
    return `${this.ackedCount} acknowledged (${src}), ${this.unacked} sent without acknowledgement`;
  }
}

export interface LedgerReport {
  /** Records read from Kafka (all copies). */
  records: number;
  /** Distinct event ids read. */
  unique: number;
  acknowledged: number;
  /** Acknowledged ids read from Kafka. */
  deliveredAcked: number;
  /** Acknowledged ids not in Kafka: the count and the first few. */
  missing: number;
  missingSample: number[];
  /** Copies beyond the first. */
  duplicates: number;
  /** Copies whose kedge-id differs from the first copy's: a new event, not a resend (must be 0). */
  foreignDuplicates: number;
  /** A later copy (lower kedge seq) of a key after a higher one, first copies only (must be empty). */
  orderViolations: string[];
  /** Records without a kedge-id header or a readable id (must be 0). */
  malformed: number;
  /** Ids read that the ledger never handed out (must be 0). */
  unknownIds: number;
  /** Records whose kedge-id (agent:seq) an earlier record of a DIFFERENT event already carried: a seq reused (must be 0). */
  reusedKedgeIds: number;
  /** Lowest and highest kedge seq of the events read (first copies), and how many distinct seqs; null when none. */
  seqMin: number | null;
  seqMax: number | null;
}

export class KafkaReadError extends Error {
  readonly code = 'FAULTS_KCAT';
  constructor(message: string) {
    super(message);
    this.name = 'KafkaReadError';
  }
}

// One record per line: partition, offset, key, headers, value. The values are the load
// generators' compact JSON, so tabs and newlines never occur inside a field.
const FORMAT = '%p\\t%o\\t%k\\t%h\\t%s\\n';
const ID_RE = /"id":(\d+)/;

/**
 * Incremental comparison: feed kcat lines (FORMAT) of each topic in offset order per
 * partition, then finish(). Exported for its own unit test.
 */
export class LedgerChecker {
  private readonly ledger: AckLedger;
  private readonly seen = new IdBits();
  // First copy's kedge-id per event id: agent index + seq, so millions of ids fit in numbers.
  private readonly firstSeqArr: Float64Array;
  private readonly firstAgent: Uint8Array;
  private readonly agents: string[] = [];
  private readonly lastSeqByKey = new Map<string, number>();
  /** Per topic and key: its partition, and the sender's id of its latest first copy. */
  private readonly partitionByKey = new Map<string, string>();
  private readonly lastIdByKey = new Map<string, number>();
  readonly report: LedgerReport;

  constructor(ledger: AckLedger) {
    this.ledger = ledger;
    this.firstSeqArr = new Float64Array(ledger.issued);
    this.firstAgent = new Uint8Array(ledger.issued);
    this.report = {
      records: 0,
      unique: 0,
      acknowledged: ledger.ackedCount,
      deliveredAcked: 0,
      missing: 0,
      missingSample: [],
      duplicates: 0,
      foreignDuplicates: 0,
      orderViolations: [],
      malformed: 0,
      unknownIds: 0,
      reusedKedgeIds: 0,
      seqMin: null,
      seqMax: null,
    };
  }

  /** Event id + 1 per kedge seq, one array per agent id (seqs are dense from 1). */
  private readonly idBySeq: Float64Array[] = [];

  /** Remembers which event `agent:seq` names; counts a second, different event under it. */
  private checkKedgeId(ai: number, seq: number, id: number): void {
    if (!Number.isSafeInteger(seq) || seq < 0) return;
    let arr = this.idBySeq[ai] ?? new Float64Array(1024);
    if (seq >= arr.length) {
      const grown = new Float64Array(Math.max(seq + 1, arr.length * 2));
      grown.set(arr);
      arr = grown;
    }
    this.idBySeq[ai] = arr;
    if (arr[seq] === 0) arr[seq] = id + 1;
    else if (arr[seq] !== id + 1) this.report.reusedKedgeIds++;
  }

  line(topic: string, line: string): void {
    const r = this.report;
    r.records++;
    const f = line.split('\t');
    const m = f.length >= 5 ? ID_RE.exec(f[4]) : null;
    const kid = f.length >= 5 ? /(?:^|,)kedge-id=([^,]*)/.exec(f[3])?.[1] : undefined;
    const colon = kid?.lastIndexOf(':') ?? -1;
    if (!m || kid === undefined || colon < 0) {
      r.malformed++;
      return;
    }
    const id = Number(m[1]);
    if (id >= this.ledger.issued) {
      r.unknownIds++;
      return;
    }
    const agent = kid.slice(0, colon);
    const seq = Number(kid.slice(colon + 1));
    let ai = this.agents.indexOf(agent);
    if (ai < 0) {
      if (this.agents.length >= 255)
        throw new KafkaReadError('more than 255 distinct agent ids in kedge-id headers');
      ai = this.agents.push(agent) - 1;
    }
    this.checkKedgeId(ai, seq, id);
    if (this.seen.has(id)) {
      r.duplicates++;
      if (this.firstSeqArr[id] !== seq || this.firstAgent[id] !== ai) r.foreignDuplicates++;
      return;
    }
    this.seen.set(id);
    this.firstSeqArr[id] = seq;
    this.firstAgent[id] = ai;
    r.unique++;
    if (r.seqMin === null || seq < r.seqMin) r.seqMin = seq;
    if (r.seqMax === null || seq > r.seqMax) r.seqMax = seq;
    if (this.ledger.acked.has(id)) r.deliveredAcked++;
    // Order per key, across all partitions: a key lives in one partition, and there its
    // events come in the order its one sequential sender sent them (event ids grow per
    // sender: PacedLoad gives each loop its own key), and in kedge's seq order.
    const key = `${topic}/${f[2]}`;
    const part = this.partitionByKey.get(key);
    if (part === undefined) this.partitionByKey.set(key, f[0]);
    else if (part !== f[0] && r.orderViolations.length < 20)
      r.orderViolations.push(`key ${key}: in partitions ${part} and ${f[0]}`);
    const prevId = this.lastIdByKey.get(key);
    if (prevId !== undefined && id < prevId && r.orderViolations.length < 20)
      r.orderViolations.push(`key ${key}: event ${id} (sent earlier) after event ${prevId}`);
    this.lastIdByKey.set(key, Math.max(id, prevId ?? id));
    const k = `${topic}/${f[0]}/${f[2]}`;
    const prev = this.lastSeqByKey.get(k);
    if (prev !== undefined && seq < prev && r.orderViolations.length < 20)
      r.orderViolations.push(`key ${k}: seq ${seq} after ${prev}`);
    this.lastSeqByKey.set(k, seq);
  }

  finish(): LedgerReport {
    const r = this.report;
    for (let id = 0; id < this.ledger.issued; id++) {
      if (this.ledger.acked.has(id) && !this.seen.has(id)) {
        r.missing++;
        if (r.missingSample.length < 10) r.missingSample.push(id);
      }
    }
    return r;
  }
}

/** Streams one topic from the beginning to the end of every partition into `onLine`. */
function readTopic(
  bootstrap: string,
  topic: string,
  onLine: (line: string) => void,
  timeoutMs: number,
): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'kcat',
      ['-C', '-b', bootstrap, '-t', topic, '-o', 'beginning', '-e', '-q', '-f', FORMAT],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4096)));
    const rl = createInterface({ input: child.stdout, crlfDelay: Infinity });
    rl.on('line', onLine);
    child.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        e.code === 'ENOENT'
          ? new KafkaReadError('kcat is not installed (apt-get install -y kcat)')
          : e,
      );
    });
    // 'close' comes after stdout ended, so every line went through onLine.
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

export interface CompareOptions {
  /** Per read of one topic; default 120 s. */
  timeoutMs?: number;
  /**
   * Read again (from the beginning) while acknowledged ids are missing, this many times,
   * 2 s apart: with replication the high watermark can trail the producer's ack briefly.
   */
  rereads?: number;
}

/**
 * Reads every topic with kcat and compares with the ledger. Call it once the agent's
 * backlog is empty (everything acknowledged by Kafka).
 */
export async function compareWithKafka(
  bootstrap: string,
  topics: string[],
  ledger: AckLedger,
  opts: CompareOptions = {},
): Promise<LedgerReport> {
  const rereads = opts.rereads ?? 2;
  for (let attempt = 0; ; attempt++) {
    const checker = new LedgerChecker(ledger);
    for (const topic of topics) {
      const res = await readTopic(
        bootstrap,
        topic,
        (l) => checker.line(topic, l),
        opts.timeoutMs ?? 120_000,
      );
      if (res.code !== 0)
        throw new KafkaReadError(
          `kcat exited with ${res.code} reading ${topic}: ${res.stderr.trim()}`,
        );
    }
    const rep = checker.finish();
    if (rep.missing === 0 || attempt >= rereads) return rep;
    await new Promise((r) => setTimeout(r, 2_000));
  }
}

/** One line for the test log. */
export function describeReport(rep: LedgerReport): string {
  return (
    `${rep.records} records read, ${rep.unique} distinct events, ${rep.deliveredAcked}/${rep.acknowledged} acknowledged delivered, ` +
    `${rep.missing} missing, ${rep.duplicates} duplicates (${rep.foreignDuplicates} with a new kedge-id), ${rep.reusedKedgeIds} reused kedge-ids, ${rep.orderViolations.length} order violations`
  );
}

/**
 * The assertions every scenario shares. `dropped`: events the agent counted as dropped by
 * its retention policy; acknowledged events may be missing only up to that count.
 */
export function assertDelivery(t: Test, rep: LedgerReport, opts: { dropped?: number } = {}): void {
  const dropped = opts.dropped ?? 0;
  t.comment(describeReport(rep));
  t.ok(rep.acknowledged > 0, `${rep.acknowledged} events acknowledged`);
  if (dropped === 0)
    t.equal(
      rep.missing,
      0,
      `no acknowledged event missing (first missing ids: ${rep.missingSample.join(', ') || 'none'})`,
    );
  else
    t.ok(
      rep.missing <= dropped,
      `acknowledged events missing (${rep.missing}) are at most the ${dropped} counted as dropped`,
    );
  t.equal(
    rep.foreignDuplicates,
    0,
    `every duplicate (${rep.duplicates}) carries an already-seen kedge-id`,
  );
  t.same(
    rep.orderViolations,
    [],
    "order per key holds: each key in one partition, its events in its sender's order and in kedge seq order",
  );
  t.equal(
    rep.reusedKedgeIds,
    0,
    'no kedge-id ever names two different events (a seq is never reused, across restarts too)',
  );
  t.equal(rep.malformed, 0, 'every record has a kedge-id header and an event id');
  t.equal(rep.unknownIds, 0, 'no record with an id the load generators never sent');
}
