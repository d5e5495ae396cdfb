/**
 * `kedge repair [--env-file F] [--json]`: the command line of repair.ts. Finds the data
 * dir from the configuration, runs the repair and prints what it did and what to do next.
 * Exit codes (docs/repair.md): 0 intact or everything saved, 1 some seq ranges lost,
 * 2 usage error or kedge still running, 3 nothing readable (nothing changed).
 */
import type { Config } from '../config.ts';
import { repairLog } from './repair.ts';
import type { RepairReport } from './repair.ts';
import { LogOpenError } from './types.ts';

export const REPAIR_USAGE = `usage: kedge repair [--env-file PATH] [--json]

With kedge stopped: save every readable event of a damaged log (KEDGE_DATA_DIR/kedge.db)
into a new log with the same seqs, kedge-ids, cursors and dead letters. The damaged files
are kept beside it as kedge.db.damaged-<time>. An intact log is left untouched.
exit 0: intact, or every event saved; 1: some seq ranges lost; 2: usage error or kedge running;
3: nothing readable (nothing changed)
`;

/** What the tool needs of cli.ts (its ToolContext). */
export interface RepairToolContext {
  config(envFile: string | null): Config;
  fail(msg: string, code?: number): never;
}

export const REPAIR_EXIT = { ok: 0, some: 1, usage: 2, nothing: 3 } as const;

export async function repairTool(argv: string[], ctx: RepairToolContext): Promise<number> {
  let envFile: string | null = null;
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    if (x === '--help' || x === '-h') {
      process.stdout.write(REPAIR_USAGE);
      return 0;
    }
    if (x === '--json') json = true;
    else if (x === '--env-file') {
      const v = argv[++i];
      if (!v) ctx.fail('repair: --env-file needs a path, e.g. --env-file /etc/kedge/kedge.env');
      envFile = v;
    } else if (x.startsWith('--env-file=')) envFile = x.slice('--env-file='.length);
    else ctx.fail(`repair: unknown argument "${x}" (see kedge repair --help)`);
  }
  const cfg = ctx.config(envFile);
  let report: RepairReport;
  try {
    report = await repairLog({ dir: cfg.dataDir, driver: cfg.storage });
  } catch (err) {
    if (err instanceof LogOpenError) ctx.fail(`repair: ${err.message}`, REPAIR_EXIT.usage);
    throw err;
  }
  process.stdout.write(json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
  switch (report.outcome) {
    case 'intact':
    case 'saved-all':
      return REPAIR_EXIT.ok;
    case 'saved-some':
      return REPAIR_EXIT.some;
    case 'nothing-readable':
      return REPAIR_EXIT.nothing;
  }
}

const SHOW_RANGES = 10;
const n = (x: number) => x.toLocaleString('en-US');
const range = ([a, b]: [number, number]) => (a === b ? `${a}` : `${a}-${b}`);

/** The human report: what was saved, what was lost, where the damaged files are, what next. */
export function formatReport(r: RepairReport): string {
  const file = `${r.dataDir}/kedge.db`;
  const swap = r.interruptedSwap
    ? `an interrupted kedge repair was completed: the repaired log is now ${file}; damaged files kept as: ${r.interruptedSwap.keptAside.join(', ') || 'none'}\n`
    : '';
  if (r.outcome === 'intact')
    return `${swap}${file} is intact: nothing to repair${swap ? ' further' : ', nothing changed'}.\n`;
  const lines: string[] = [`${swap}${file} was damaged (${r.damage}).`];
  if (r.outcome === 'nothing-readable') {
    lines.push(
      'Nothing readable: no event, cursor or setting could be read from it. Nothing was changed.',
      `To start on a new, empty log (the events in it are lost), keep the files aside and start kedge:`,
      `  mv ${file} ${file}.damaged; [ -e ${file}-wal ] && mv ${file}-wal ${file}.damaged-wal`,
      'With KEDGE_AGENT_ID set, change it too: the new log counts seqs from 1 again, and kedge-id <agent-id>:<seq> would repeat ids Kafka already has.',
    );
    return `${lines.join('\n')}\n`;
  }
  lines.push(
    `saved ${n(r.events.saved)} events (bulk ${n(r.events.bulk)}, priority ${n(r.events.priority)}), with their seqs and kedge-ids`,
  );
  if (r.lost.events > 0) {
    const shown = r.lost.ranges.slice(0, SHOW_RANGES).map((x) => `missing seq ${range(x)}`);
    const more = r.lost.ranges.length - shown.length;
    lines.push(
      `missing ${n(r.lost.events)} events in ${n(r.lost.ranges.length)} seq range${r.lost.ranges.length === 1 ? '' : 's'} (damaged, or dropped earlier by quota/retention):`,
      ...shown.map((s) => `  ${s}`),
      ...(more > 0 ? [`  … and ${n(more)} more ranges (--json lists them all)`] : []),
    );
  } else lines.push('missing: none');
  if (!r.lastSeqKnown)
    lines.push(
      `the log's last seq was unreadable: events after seq ${r.lastSeq} may be lost unseen`,
    );
  const cur = Object.entries(r.cursors)
    .map(([d, s]) => `${d}=${s}`)
    .join(', ');
  lines.push(`cursors carried over: ${cur || 'none'}`);
  if (r.cursorsMissing.length > 0)
    lines.push(
      `cursors unreadable (start from the oldest saved event; Kafka may see resends, same kedge-id): ${r.cursorsMissing.join(', ')}`,
    );
  if (r.destinationCursors > 0)
    lines.push(`destination cursors carried over: ${r.destinationCursors}`);
  lines.push(
    `dead letters carried over: ${n(r.deadLetters)}${r.destinationDeadLetters > 0 ? ` (and ${n(r.destinationDeadLetters)} destination dead letters)` : ''}`,
  );
  if (r.deadLettersDamaged)
    lines.push(
      'the dead-letter table was damaged: some dead letters may be lost, also ones whose seq is in no missing range (kedge dead-letters list shows those carried over)',
    );
  if (r.destinationDeadLettersDamaged)
    lines.push(
      "the destinations' dead-letter table was damaged: some of their dead letters may be lost (kedge dead-letters list shows those carried over)",
    );
  lines.push(
    r.agentId !== null
      ? `agent id carried over: ${r.agentId}`
      : 'agent id unreadable: set KEDGE_AGENT_ID to the old id, or new records get a new kedge-id prefix',
  );
  if (r.wal.present)
    lines.push(
      `WAL: ${r.wal.committedFrames} committed frames used${r.wal.stoppedBecause ? `; ${r.wal.stoppedBecause}: ${r.wal.ignoredFrames} frames after it ignored` : ''}`,
    );
  lines.push(`damaged files kept as: ${r.keptAside.join(', ')}`);
  lines.push(
    'next: start kedge again (systemctl start kedge): it forwards the saved events in seq order with their original kedge-ids.',
  );
  return `${lines.join('\n')}\n`;
}
