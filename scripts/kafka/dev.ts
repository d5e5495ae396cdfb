// A Kafka broker for development: `npm run kafka` (or `node scripts/kafka/dev.ts [--brokers 3] [--dir PATH]`).
// Prints KEDGE_KAFKA_BROKERS=... once it is ready and runs until Ctrl-C, then stops cleanly.
// Without --dir the data lives in a temp folder that is removed on exit.
import { parseArgs } from 'node:util';
import { leaveSignalsToCaller, startKafka } from './kafka.ts';

const { values } = parseArgs({
  options: {
    brokers: { type: 'string', default: '1' },
    dir: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  console.log('usage: node scripts/kafka/dev.ts [--brokers 1|3] [--dir PATH]');
  process.exit(0);
}
const brokers = Number(values.brokers);
if (brokers !== 1 && brokers !== 3) {
  console.error(`kedge: --brokers ${values.brokers} is not supported (expected 1 or 3)`);
  process.exit(2);
}

// Our own handlers, installed before the broker starts, so Ctrl-C means a clean stop.
let stopping: Promise<void> | null = null;
let cluster: Awaited<ReturnType<typeof startKafka>> | null = null;
const onSignal = (sig: NodeJS.Signals): void => {
  if (stopping) {
    console.error(`kedge: ${sig} again, exiting now`);
    process.exit(130); // the 'exit' hook SIGKILLs the JVMs
  }
  console.error(`kedge: ${sig}, stopping Kafka...`);
  stopping = (cluster ? cluster.stop() : Promise.resolve()).then(
    () => process.exit(0),
    (e: unknown) => {
      console.error((e as Error).message);
      process.exit(1);
    },
  );
};
leaveSignalsToCaller();
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);

try {
  const t0 = Date.now();
  cluster = await startKafka({ brokers, dir: values.dir });
  if (stopping) {
    await cluster.stop();
  } else {
    console.error(
      `kedge: Kafka ${cluster.version} (${brokers} broker${brokers > 1 ? 's' : ''}) ready in ${Date.now() - t0} ms; logs in ${cluster.dir}; Ctrl-C to stop`,
    );
    console.log(`KEDGE_KAFKA_BROKERS=${cluster.bootstrap}`);
  }
} catch (e) {
  console.error((e as Error).message);
  process.exit(1);
}
