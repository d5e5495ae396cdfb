/**
 * V8 flags kedge runs with (the single executable embeds them via the SEA
 * config's execArgv; `npm start` and the tests pass them on the command line).
 * Measured: without them RSS climbs to ~180-290 MB while draining a backlog
 * although the live heap stays ~15-30 MB — V8 simply grows the young generation
 * and collects the old one lazily. A 1 MB semi-space and a 256 MB old-space
 * limit keep RSS near 110-120 MB with no measurable throughput cost; Buffers
 * (request bodies, record batches) are outside the old-space limit.
 */
export const NODE_FLAGS: readonly string[] = [
  '--max-semi-space-size=1',
  '--max-old-space-size=256',
];

/**
 * V8 heap limits of the Kafka thread (agent/kafka/kafka-thread.ts), which encodes and
 * compresses every batch: its garbage is short-lived record objects, so a young
 * generation larger than the main thread's 1 MB semi-space keeps scavenges rare
 * (see docs/operations.md for the measurements). They hold only because
 * kafka-thread.ts clears the process-wide --max-semi-space-size and --max-old-space-size
 * before starting the thread; the flags would override them.
 */
export const KAFKA_THREAD_LIMITS = {
  maxYoungGenerationSizeMb: 12,
  maxOldGenerationSizeMb: 128,
} as const;
