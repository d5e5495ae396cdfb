/**
 * The durable event log: the only way into `agent/log/`.
 * Ingest calls `append`; the forwarder `readBatch`/`ack`/`deadLetter`.
 */
export { openLog, DB_FILE } from './sqlite-log.ts';
export { LOCK_FILE } from './lockfile.ts';
export { RESERVE_FILE, DEFAULT_RESERVE_BYTES } from './reserve.ts';
export { LogOpenError, LogWriteError, LANES } from './types.ts';
export {
  DeadLetterReplayUnsupported,
  DeadLetterUnknownDestination,
} from './dead-letter-store.ts';
export type {
  AppendResult,
  DeadLetter,
  DeadLetterAdmin,
  DeadLetterEntry,
  DeadLetterRow,
  DeadLetterFilter,
  DeadLetterGroup,
  DropReason,
  DropReport,
  EventInput,
  EventLog,
  EventSource,
  Lane,
  LaneStats,
  LogOptions,
  LogStats,
  StorageDriverName,
  StoredEvent,
  SyncMode,
} from './types.ts';
