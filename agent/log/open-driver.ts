/**
 * Opens a database with one of the two drivers. Kept apart from driver.ts (the
 * interface both drivers implement, and import) so that the drivers and the
 * file that loads them import nothing in a circle.
 */
import type { DriverOpenOptions, SqlDb } from './driver.ts';
import type { StorageDriverName } from './types.ts';

/** Open a database with the named driver. The caller must hold the data-dir lock first (the wasm driver clears stale locks). */
export async function openDriver(name: StorageDriverName, opts: DriverOpenOptions): Promise<SqlDb> {
  if (name === 'wasm') {
    const { openWasm } = await import('./driver-wasm.ts');
    return openWasm(opts);
  }
  const { openNodeSqlite } = await import('./driver-node.ts');
  return openNodeSqlite(opts);
}
