/**
 * SqlDb on Node's built-in `node:sqlite` (DatabaseSync): native SQLite, the
 * fast default. Loaded lazily so that a runtime without it fails with an
 * error that says what to do instead of a module-resolution stack trace.
 */
import type { DatabaseSync, StatementSync } from 'node:sqlite';
import type { DriverOpenOptions, Row, SqlDb, SqlRunResult, SqlStmt } from './driver.ts';
import { blobsToBuffers } from './driver.ts';
import { LogOpenError } from './types.ts';

type NodeSqlite = typeof import('node:sqlite');

let loaded: NodeSqlite | undefined;

async function load(): Promise<NodeSqlite> {
  if (loaded) return loaded;
  try {
    loaded = await import('node:sqlite');
  } catch (err) {
    throw new LogOpenError(
      `this runtime (Node ${process.versions.node}) has no node:sqlite; set KEDGE_STORAGE=wasm to use the bundled WebAssembly SQLite instead`,
      'KEDGE_STORAGE_UNAVAILABLE',
      { cause: err },
    );
  }
  return loaded;
}

class NodeStmt implements SqlStmt {
  #stmt: StatementSync;
  constructor(stmt: StatementSync) {
    this.#stmt = stmt;
  }
  run(params: unknown[]): SqlRunResult {
    const r = this.#stmt.run(...(params as never[]));
    // Numbers unless setReadBigInts (never used here); no extra object per row.
    if (typeof r.lastInsertRowid === 'bigint') r.lastInsertRowid = Number(r.lastInsertRowid);
    return r as SqlRunResult;
  }
  get(params: unknown[]): Row | undefined {
    const row = this.#stmt.get(...(params as never[])) as Row | undefined;
    return row === undefined ? undefined : blobsToBuffers(row);
  }
  all(params: unknown[]): Row[] {
    const rows = this.#stmt.all(...(params as never[])) as Row[];
    for (const row of rows) blobsToBuffers(row);
    return rows;
  }
  finalize(): void {
    // node:sqlite has no explicit finalize: statements are finalized by GC or
    // when the database closes. Nothing to do; kept for the shared contract.
  }
}

class NodeDb implements SqlDb {
  readonly driver = 'sqlite' as const;
  #db: DatabaseSync;
  constructor(db: DatabaseSync) {
    this.#db = db;
  }
  exec(sql: string): void {
    this.#db.exec(sql);
  }
  prepare(sql: string): SqlStmt {
    return new NodeStmt(this.#db.prepare(sql));
  }
  close(): void {
    this.#db.close();
  }
}

export async function openNodeSqlite(opts: DriverOpenOptions): Promise<SqlDb> {
  const { DatabaseSync } = await load();
  // Foreign keys are not used; leave them off (the node:sqlite default is on).
  return new NodeDb(new DatabaseSync(opts.file, { enableForeignKeyConstraints: false }));
}
