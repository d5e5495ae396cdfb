/**
 * Write amplification of an ingest scenario: bytes the agent process wrote to storage
 * (/proc/<pid>/io, write_bytes - cancelled_write_bytes, the same reading the agent's own
 * kedge_disk_written_bytes_total makes) per key+value byte it ingested
 * (kedge_ingested_bytes_total), between open() and close(). Read from outside the agent,
 * so the figure needs no 5-second sample to come in.
 */
import { diskWrittenBytes, readProcIo } from '../../../agent/observe/write-amplification.ts';
import { formatBytes } from '../../../agent/units.ts';
import { BenchAgent } from './agent.ts';
import { figure } from './figures.ts';
import type { Figure } from './types.ts';

export interface WriteAmplificationResult {
  writtenBytes: number;
  ingestedBytes: number;
  /** written ÷ ingested; null when nothing was ingested or /proc/<pid>/io could not be read. */
  ratio: number | null;
  /** Why ratio is null. */
  error: string | null;
}

interface Reading {
  written: number;
  ingested: number;
}

async function reading(agent: BenchAgent): Promise<Reading> {
  // Disk first: anything ingested after it is counted in the next reading's disk bytes too.
  const written = diskWrittenBytes(readProcIo(`/proc/${agent.pid}/io`));
  const ingested = BenchAgent.metric(await agent.metricsText(), 'kedge_ingested_bytes_total') ?? 0;
  return { written, ingested };
}

/** Opens a window on `agent`; close() returns what it wrote per byte ingested in it. */
export async function writeWindow(
  agent: BenchAgent,
): Promise<{ close(): Promise<WriteAmplificationResult> }> {
  let start: Reading | null = null;
  let error: string | null = null;
  try {
    start = await reading(agent);
  } catch (e) {
    error = (e as Error).message;
  }
  return {
    async close() {
      if (!start) return { writtenBytes: 0, ingestedBytes: 0, ratio: null, error };
      try {
        const end = await reading(agent);
        const writtenBytes = end.written - start.written;
        const ingestedBytes = end.ingested - start.ingested;
        return {
          writtenBytes,
          ingestedBytes,
          ratio: ingestedBytes > 0 ? writtenBytes / ingestedBytes : null,
          error: ingestedBytes > 0 ? null : 'nothing ingested',
        };
      } catch (e) {
        return { writtenBytes: 0, ingestedBytes: 0, ratio: null, error: (e as Error).message };
      }
    },
  };
}

/** The figure every ingest scenario reports beside its rates. */
export function writeFigure(id: string, label: string, r: WriteAmplificationResult): Figure {
  return figure({
    id,
    label,
    value: r.ratio,
    unit: '×',
    digits: 2,
    note:
      r.ratio === null
        ? `not measured: ${r.error}`
        : `${formatBytes(r.writtenBytes)} written to disk (/proc/<pid>/io write_bytes - cancelled_write_bytes) for ${formatBytes(r.ingestedBytes)} of keys and values ingested; SD-card life: docs/operations.md`,
  });
}
