// Fetches the pinned Kafka broker jars into the cache (Maven runs only if they are missing)
// and prints the folder. Used by .ci/run before the tests, so a slow first download is not
// charged to a test's timeout.
import { ensureKafkaJars, ensureKafkaToolsJars, kafkaVersion } from './kafka.ts';

try {
  const t0 = Date.now();
  const dir = await ensureKafkaJars({ log: (m) => console.error(m) });
  console.log(`kedge: Kafka ${kafkaVersion()} jars in ${dir} (${Date.now() - t0} ms)`);
  const t1 = Date.now();
  const tools = await ensureKafkaToolsJars({ log: (m) => console.error(m) });
  console.log(`kedge: Kafka ${kafkaVersion()} tools in ${tools} (${Date.now() - t1} ms)`);
} catch (e) {
  console.error((e as Error).message);
  process.exit(1);
}
