/**
 * A 3-broker KRaft cluster (replication factor 3, min.insync.replicas=2): the leader
 * of a partition kedge is writing to is killed (SIGKILL) under load. Producing with
 * acks=all, nothing acknowledged may be lost across the leader election.
 */
import t from 'tap';
import { Kafka, logLevel } from 'kafkajs';
import { startKafka } from '../../scripts/kafka/kafka.ts';
import { AgentProc, cleanup, sleep } from '../helpers/agent.ts';
import { assertDelivery, compareWithKafka } from '../helpers/ack-ledger.ts';
import { consume } from '../helpers/kcat.ts';
import { agentSetup, startLoads, timing, ensureTopic } from './scenario.ts';

const t0 = Date.now();
const kafka = await startKafka({ brokers: 3 });
const s = await agentSetup('leader', kafka.bootstrap);
const topicConfig = { 'min.insync.replicas': '2' };
await ensureTopic(kafka.bootstrap, s.httpTopic, 3, 3, topicConfig);
await ensureTopic(kafka.bootstrap, s.mqttTopic, 3, 3, topicConfig);
const agent = await AgentProc.start({ env: s.env });
t.teardown(async () => {
  await agent.stop();
  await kafka.stop();
  cleanup(s.dir);
});

/** Runs `f` with a kafkajs admin client (connected to whichever brokers are up). */
async function withAdmin<T>(f: (admin: ReturnType<Kafka['admin']>) => Promise<T>): Promise<T> {
  const admin = new Kafka({
    clientId: 'kedge-fault',
    brokers: kafka.bootstrap.split(','),
    logLevel: logLevel.NOTHING,
  }).admin();
  await admin.connect();
  try {
    return await f(admin);
  } finally {
    await admin.disconnect();
  }
}

/** Partitions of `topic` that `broker` leads. */
async function ledBy(topic: string, broker: number): Promise<number[]> {
  return withAdmin(async (admin) => {
    const md = await admin.fetchTopicMetadata({ topics: [topic] });
    return md.topics[0].partitions.filter((p) => p.leader === broker).map((p) => p.partitionId);
  });
}

/**
 * High watermark per partition of `topic`. Right after an election a broker may still
 * answer NOT_LEADER / LEADER_NOT_AVAILABLE for a partition whose leader moved, so the
 * read is retried (at most 30 times, 1 s apart) until every partition answers.
 */
async function highWatermarks(topic: string): Promise<Map<number, number>> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 30; attempt++) {
    try {
      return await withAdmin(async (admin) => {
        const offsets = await admin.fetchTopicOffsets(topic);
        return new Map(offsets.map((o) => [o.partition, Number(o.high)]));
      });
    } catch (err) {
      lastError = err;
      await sleep(1_000);
    }
  }
  throw new Error(`high watermarks of ${topic} unreadable for 30 s: ${String(lastError)}`);
}

/**
 * Waits (at most until `deadline`) until no partition of `topic` is led by `broker`
 * and every partition has a leader: the election covers all of the dead broker's
 * partitions, not only partition 0. Returns the partitions still without a new leader.
 */
async function electedAway(topic: string, broker: number, deadline: number): Promise<number[]> {
  let pending: number[] = [];
  while (Date.now() < deadline) {
    try {
      pending = await withAdmin(async (admin) => {
        const md = await admin.fetchTopicMetadata({ topics: [topic] });
        return md.topics[0].partitions
          .filter((p) => p.leader === broker || p.leader < 0)
          .map((p) => p.partitionId);
      });
      if (pending.length === 0) return pending;
    } catch {
      /* metadata from a node that is still electing: ask again */
    }
    await sleep(1_000);
  }
  return pending;
}

/** Leader and ISR of partition 0 of `topic`, asked with kafkajs admin. */
async function partitionZero(
  topic: string,
): Promise<{ leader: number; isr: number[]; replicas: number[] }> {
  return withAdmin(async (admin) => {
    const md = await admin.fetchTopicMetadata({ topics: [topic] });
    const p = md.topics[0].partitions.find((x) => x.partitionId === 0)!;
    return { leader: p.leader, isr: p.isr, replicas: p.replicas };
  });
}

t.test(
  'partition leader killed under load (RF 3, min.insync.replicas 2): nothing acknowledged is lost',
  async (tt) => {
    const before = await partitionZero(s.httpTopic);
    tt.equal(
      before.replicas.length,
      3,
      `partition 0 has 3 replicas (${before.replicas}), ISR ${before.isr}`,
    );
    // The partitions the doomed broker leads: the failover must hit the test's own keys.
    const doomed = await ledBy(s.httpTopic, before.leader);
    const loads = startLoads(tt, s, () => agent);
    await sleep(8_000);
    const ackedBefore = loads.ledger.ackedCount;
    await kafka.killNode(before.leader);
    const killedAt = Date.now();
    tt.comment(
      `killed broker ${before.leader}, leader of ${s.httpTopic}-0, after ${ackedBefore} acknowledged events`,
    );
    // The election waits for the dead broker's session (5 s in the harness) to expire.
    let after = before;
    while (Date.now() - killedAt < 60_000) {
      await sleep(1_000);
      try {
        after = await partitionZero(s.httpTopic);
        if (after.leader !== before.leader && after.leader >= 0) break;
      } catch {
        /* metadata from a node that is still electing: ask again */
      }
    }
    tt.not(
      after.leader,
      before.leader,
      `a new leader took over: broker ${after.leader} (ISR ${after.isr})`,
    );
    const leaderless = await electedAway(s.httpTopic, before.leader, killedAt + 60_000);
    tt.same(
      leaderless,
      [],
      `every partition the killed broker led (${doomed.join(', ')}) has a new leader`,
    );
    // While the old leader stays down, its partitions keep growing under their new leaders.
    const hwElected = await highWatermarks(s.httpTopic);
    await sleep(15_000);
    const hwLater = await highWatermarks(s.httpTopic);
    const grew = doomed.filter((p) => (hwLater.get(p) ?? 0) > (hwElected.get(p) ?? 0));
    tt.ok(
      grew.length > 0,
      `partitions ${doomed.join(', ')} (led by the killed broker) grew while it was down: ${doomed
        .map((p) => `${p}: ${hwElected.get(p)} → ${hwLater.get(p)}`)
        .join('; ')}`,
    );
    const during = loads.ledger.ackedCount - ackedBefore;
    tt.ok(during > 0, `${during} events acknowledged after the leader was killed`);
    await kafka.startNode(before.leader);
    await sleep(3_000);
    tt.comment(await loads.stop());
    await agent.waitDrained(240_000);
    const rep = await compareWithKafka(kafka.bootstrap, [s.httpTopic, s.mqttTopic], loads.ledger, {
      rereads: 5,
    });
    assertDelivery(tt, rep);
    // The test's keys really lived on the killed leader's partitions (kcat, independently).
    const recs = await consume(kafka.bootstrap, s.httpTopic, { timeoutMs: 60_000 });
    const keysThere = new Set(
      recs.filter((r) => doomed.includes(r.partition)).map((r) => r.key?.toString()),
    );
    tt.ok(
      keysThere.size > 0,
      `keys ${[...keysThere].join(', ')} are in partitions ${doomed.join(', ')}, which the killed broker led`,
    );
    timing(tt, 'leader-failover', t0, `${rep.duplicates} duplicates`);
  },
);
