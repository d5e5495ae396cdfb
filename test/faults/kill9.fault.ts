/**
 * kill -9 of the agent 20 times at random moments under sustained HTTP and MQTT
 * (QoS 1) load, restarted each time on the same data dir. Every event that got a 200
 * or a PUBACK must be in Kafka, in order per key; duplicates only as resends.
 */
import t from 'tap';
import { startKafka } from '../../scripts/kafka/kafka.ts';
import { AgentProc, cleanup, sleep } from '../helpers/agent.ts';
import { assertDelivery, compareWithKafka } from '../helpers/ack-ledger.ts';
import { FAULTS, agentSetup, startLoads, timing, ensureTopic } from './scenario.ts';

const t0 = Date.now();
const kafka = await startKafka({ brokers: 1 });
const s = await agentSetup('kill9', kafka.bootstrap);
await ensureTopic(kafka.bootstrap, s.httpTopic, 3);
await ensureTopic(kafka.bootstrap, s.mqttTopic, 3);
let agent = await AgentProc.start({ env: s.env });
t.teardown(async () => {
  await agent.stop();
  await kafka.stop();
  cleanup(s.dir);
});

t.test(
  `kill -9 ${FAULTS.kills} times under HTTP and MQTT load: nothing acknowledged is lost`,
  async (tt) => {
    const loads = startLoads(tt, s, () => agent);
    const perRound: number[] = [];
    const delays: number[] = [];
    for (let round = 0; round < FAULTS.kills; round++) {
      const before = loads.ledger.ackedCount;
      // Random moment: 0.3 to 3 s after the agent became ready.
      const delay = Math.round(300 + Math.random() * 2_700);
      delays.push(delay);
      await sleep(delay);
      const exit = (await agent.kill9()) as { signal: string | null };
      if (exit.signal !== 'SIGKILL')
        tt.fail(`round ${round}: agent ended by ${exit.signal}, not by SIGKILL`);
      perRound.push(loads.ledger.ackedCount - before);
      agent = await AgentProc.start({ env: s.env, port: agent.port });
    }
    await sleep(1_000);
    tt.comment(`kill delays (ms): ${delays.join(' ')}`);
    tt.comment(`events acknowledged between kills: ${perRound.join(' ')}`);
    tt.comment(await loads.stop());
    tt.ok(
      perRound.every((n) => n > 0),
      'events were acknowledged between every two kills (the load was sustained)',
    );
    tt.ok(
      (loads.ledger.bySource.get('mqtt') ?? 0) > 0 && (loads.ledger.bySource.get('http') ?? 0) > 0,
      'both HTTP and MQTT events were acknowledged',
    );
    const drained = Date.now();
    await agent.waitDrained(300_000);
    tt.comment(
      `backlog drained ${((Date.now() - drained) / 1000).toFixed(1)} s after the load stopped`,
    );
    const rep = await compareWithKafka(kafka.bootstrap, [s.httpTopic, s.mqttTopic], loads.ledger);
    assertDelivery(tt, rep);
    timing(tt, 'kill9', t0, `${FAULTS.kills} kills, ${rep.duplicates} duplicates`);
  },
);
