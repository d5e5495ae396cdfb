/**
 * A hang outage for 2 minutes: every byte between kedge and Kafka black-holed by a
 * proxy (connections stay open, nothing moves, no error), then healed.
 */
import t from 'tap';
import { startKafka } from '../../scripts/kafka/kafka.ts';
import { AgentProc, cleanup } from '../helpers/agent.ts';
import { kafkaBehindProxy } from '../helpers/tcp-proxy.ts';
import { FAULTS, agentSetup, ensureTopic } from './scenario.ts';
import { runOutage } from './outage.ts';

const { proxy, kafkaOptions, bootstrap } = await kafkaBehindProxy();
const kafka = await startKafka(kafkaOptions);
const s = await agentSetup('hang', bootstrap);
await ensureTopic(kafka.bootstrap, s.httpTopic, 3);
await ensureTopic(kafka.bootstrap, s.mqttTopic, 3);
const agent = await AgentProc.start({ env: s.env });
t.teardown(async () => {
  await agent.stop();
  await proxy.close();
  await kafka.stop();
  cleanup(s.dir);
});

t.test(
  `Kafka traffic black-holed for ${FAULTS.outageMs / 1000} s under load: nothing acknowledged is lost`,
  async (tt) => {
    let failedAt = 0;
    let healedAt = 0;
    await runOutage(tt, {
      name: 'hang',
      setup: s,
      agent,
      readBootstrap: kafka.bootstrap,
      fail: async () => {
        proxy.blackhole();
        failedAt = proxy.now();
        tt.comment(`black-holed ${proxy.connections} open connection(s)`);
      },
      heal: async () => {
        healedAt = proxy.now();
        proxy.heal();
      },
    });
    // The outage was real: not one byte crossed the proxy, either way, while it lasted.
    tt.same(
      {
        up: proxy.bytes.up.between(failedAt, healedAt),
        down: proxy.bytes.down.between(failedAt, healedAt),
      },
      { up: 0, down: 0 },
      `no byte crossed the proxy between the fault and the heal (${((healedAt - failedAt) / 1000).toFixed(0)} s)`,
    );
    tt.ok(proxy.bytes.up.between(healedAt, proxy.now()) > 0, 'bytes flowed again after the heal');
    tt.ok(
      proxy.accepted > 0,
      `all of kedge's Kafka traffic went through the proxy (${proxy.accepted} connections)`,
    );
  },
);
