/**
 * Crash: the agent is killed with SIGKILL during sustained ingest and restarted.
 * Every event that got a 2xx must reach Kafka; a duplicate may only be a resend
 * of the same log entry (the same kedge-id).
 */
import t from 'tap';
import { startKafka } from '../scripts/kafka/kafka.ts';
import { consume } from './helpers/kcat.ts';
import { AgentProc, cleanup, sleep, tempDir } from './helpers/agent.ts';
import { HttpLoad } from './helpers/load.ts';
import { checkDelivery } from './helpers/verify.ts';

const kafka = await startKafka({ brokers: 1 });
const dir = tempDir();
const env = { KEDGE_DATA_DIR: dir, KEDGE_KAFKA_BROKERS: kafka.bootstrap };
let agent = await AgentProc.start({ env });
t.teardown(async () => {
  await agent.stop();
  await kafka.stop();
  cleanup(dir);
});

for (const driver of ['sqlite', 'wasm'] as const) {
  t.test(
    `kill -9 under load (${driver} driver): every acknowledged event is delivered`,
    async (tt) => {
      await agent.stop();
      const topic = `crash-${driver}`;
      const denv = { ...env, KEDGE_STORAGE: driver };
      agent = await AgentProc.start({ env: denv, port: agent.port });
      const load = new HttpLoad({
        base: () => agent.base,
        topic,
        keys: 8,
        batch: 20,
        concurrency: 8,
        maxEvents: 400_000,
      });
      for (let round = 0; round < 3; round++) {
        await sleep(800 + Math.random() * 700);
        await agent.kill9();
        await sleep(200);
        agent = await AgentProc.start({ env: denv, port: agent.port });
      }
      await sleep(500);
      const res = await load.stop();
      tt.ok(res.acked.size > 1000, `${res.acked.size} events acknowledged across 3 crashes`);
      await agent.waitDrained(120_000);
      // Read to the end of every partition: duplicates make the count larger than the acked set.
      const recs = await consume(kafka.bootstrap, topic, { timeoutMs: 60_000 });
      const rep = checkDelivery(recs, res.acked, (r) => JSON.parse(r.value.toString()).id);
      tt.equal(
        rep.missing.length,
        0,
        `no acknowledged event missing (missing: ${rep.missing.slice(0, 5)})`,
      );
      tt.equal(
        rep.foreignDuplicates,
        0,
        `every duplicate (${rep.duplicates}) carries an already-seen kedge-id`,
      );
      tt.same(rep.orderViolations, [], 'order per key holds');
      tt.equal(
        rep.reusedKedgeIds,
        0,
        'no kedge-id names two different events (no seq reused across restarts)',
      );
    },
  );
}
