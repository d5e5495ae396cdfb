/**
 * The broker stopped for 2 minutes under HTTP and MQTT load, then started: ingest goes
 * on into the local log, everything acknowledged arrives after the restart.
 */
import t from 'tap';
import { startKafka } from '../../scripts/kafka/kafka.ts';
import { AgentProc, cleanup } from '../helpers/agent.ts';
import { FAULTS, agentSetup, ensureTopic } from './scenario.ts';
import { runOutage } from './outage.ts';

const kafka = await startKafka({ brokers: 1 });
const s = await agentSetup('broker-stop', kafka.bootstrap);
await ensureTopic(kafka.bootstrap, s.httpTopic, 3);
await ensureTopic(kafka.bootstrap, s.mqttTopic, 3);
const agent = await AgentProc.start({ env: s.env });
t.teardown(async () => {
  await agent.stop();
  await kafka.stop();
  cleanup(s.dir);
});

t.test(
  `broker stopped for ${FAULTS.outageMs / 1000} s under load: nothing acknowledged is lost`,
  async (tt) => {
    const node = kafka.nodes[0].id;
    await runOutage(tt, {
      name: 'broker-stop',
      setup: s,
      agent,
      readBootstrap: kafka.bootstrap,
      fail: () => kafka.stopNode(node),
      heal: () => kafka.startNode(node),
    });
  },
);
