/**
 * The benchmark's scenarios, in the order they run. To add one (MQTT ingest,
 * codecs, executable size and start time...), write a module exporting a
 * `Scenario` (lib/types.ts) next to these and list it here; run.ts, the JSON
 * and RESULTS.md pick it up.
 */
import type { Scenario } from '../lib/types.ts';
import { ingestNdjson } from './ingest-ndjson.ts';
import { ingestSingle } from './ingest-single.ts';
import { forwardBacklog } from './forward-backlog.ts';
import { e2eLatency } from './e2e-latency.ts';
import { rss } from './rss.ts';
import { mqttIngest } from './mqtt.ts';
import { executable } from './executable.ts';
import { codecs } from './codecs.ts';
import { rateDrain } from './rate-drain.ts';
import { routes } from './routes.ts';

export const SCENARIOS: readonly Scenario[] = [
  ingestNdjson,
  ingestSingle,
  forwardBacklog,
  e2eLatency,
  rss,
  mqttIngest,
  executable,
  codecs,
  rateDrain,
  routes,
];
