/**
 * The log's storage choices (KEDGE_SYNC, KEDGE_STORAGE), named in a base module so
 * that config.ts can name them without importing the log (which sits above config).
 */
export type SyncMode = 'full' | 'normal';
export type StorageDriverName = 'sqlite' | 'wasm';
