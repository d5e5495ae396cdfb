/**
 * The log's schema, versioned with `PRAGMA user_version`. Each entry of
 * MIGRATIONS takes the database from version i to i+1 inside one
 * transaction; add new lanes/columns by appending a migration, never by
 * editing an old one (devices in the field upgrade from any earlier version).
 */
import type { SqlDb } from './driver.ts';
import { LogOpenError } from './types.ts';

/** The one destination today; the cursors table allows more. */
export const DEST_KAFKA = 'kafka';
/** The priority lane's cursor row (schema 2). */
export const DEST_KAFKA_PRIORITY = 'kafka:priority';

export const MIGRATIONS: ReadonlyArray<(db: SqlDb) => void> = [
  // 0 → 1: events, the destination cursor, dead letters, meta.
  (db) => {
    db.exec(`
      CREATE TABLE events(
        seq INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        key BLOB,
        value BLOB NOT NULL,
        headers TEXT,
        ts INTEGER NOT NULL,
        size INTEGER NOT NULL
      );
      CREATE TABLE cursors(dest TEXT PRIMARY KEY, seq INTEGER NOT NULL);
      CREATE TABLE dead_letters(
        seq INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        key BLOB,
        value BLOB NOT NULL,
        headers TEXT,
        ts INTEGER NOT NULL,
        size INTEGER NOT NULL,
        reason TEXT NOT NULL,
        dead_at INTEGER NOT NULL
      );
      CREATE TABLE meta(k TEXT PRIMARY KEY, v TEXT);
      INSERT INTO cursors(dest, seq) VALUES ('${DEST_KAFKA}', 0);
    `);
  },
  // 1 → 2: the priority lane. A table of its own (same columns) so the bulk
  // lane's hot path stays one table; seqs stay one counter across both lanes.
  // Existing rows are bulk events. Dead letters remember their lane.
  (db) => {
    db.exec(`
      CREATE TABLE events_priority(
        seq INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        key BLOB,
        value BLOB NOT NULL,
        headers TEXT,
        ts INTEGER NOT NULL,
        size INTEGER NOT NULL
      );
      INSERT INTO cursors(dest, seq) VALUES ('kafka:priority', 0);
      ALTER TABLE dead_letters ADD COLUMN lane TEXT NOT NULL DEFAULT 'bulk';
    `);
  },
  // 2 → 3: several destinations (KEDGE_DESTINATIONS). Each has a cursor per lane, saved with
  // its routes' state at that position and the first seq its open windows keep; the lanes'
  // own cursor rows become the floor over them. A destination's dead letters are copies (the
  // event stays in the log for the others), so they get a table of their own.
  (db) => {
    db.exec(`
      CREATE TABLE dest_cursors(
        dest TEXT NOT NULL,
        lane TEXT NOT NULL,
        seq INTEGER NOT NULL,
        keep INTEGER,
        state TEXT,
        PRIMARY KEY(dest, lane)
      );
      CREATE TABLE dest_dead_letters(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        dest TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kedge_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        key BLOB,
        value BLOB NOT NULL,
        headers TEXT,
        ts INTEGER NOT NULL,
        size INTEGER NOT NULL,
        reason TEXT NOT NULL,
        dead_at INTEGER NOT NULL,
        lane TEXT NOT NULL
      );
    `);
  },
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** The integer value of a read-only pragma, e.g. `page_size`. */
export function pragmaInt(db: SqlDb, name: string): number {
  const st = db.prepare(`PRAGMA ${name}`);
  try {
    const row = st.get([]);
    return row ? Number(Object.values(row)[0]) : 0;
  } finally {
    st.finalize();
  }
}

export function userVersion(db: SqlDb): number {
  return pragmaInt(db, 'user_version');
}

/** Number of objects in sqlite_schema: 0 for a brand-new (or empty) file. */
export function schemaObjectCount(db: SqlDb): number {
  const st = db.prepare('SELECT count(*) AS n FROM sqlite_schema');
  try {
    return Number(st.get([])?.n ?? 0);
  } finally {
    st.finalize();
  }
}

/** Bring the schema to SCHEMA_VERSION, one transaction per step. */
export function migrate(db: SqlDb, file: string): void {
  const from = userVersion(db);
  if (from > SCHEMA_VERSION) {
    throw new LogOpenError(
      `${file} was written by a newer kedge (schema ${from}, this one knows up to ${SCHEMA_VERSION}); run that version or move the file aside`,
      'KEDGE_LOG_TOO_NEW',
    );
  }
  for (let v = from; v < SCHEMA_VERSION; v++) {
    db.exec('BEGIN IMMEDIATE');
    try {
      MIGRATIONS[v](db);
      db.exec(`PRAGMA user_version = ${v + 1}`);
      db.exec('COMMIT');
    } catch (err) {
      try {
        db.exec('ROLLBACK');
      } catch {
        // SQLite may already have rolled back.
      }
      throw err;
    }
  }
}
