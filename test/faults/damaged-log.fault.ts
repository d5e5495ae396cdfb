/**
 * A damaged log, as a user would meet it: kedge stopped, kedge.db truncated or
 * overwritten with garbage, kedge started again. It must refuse to start, exit
 * non-zero, name the file and say what to do, and leave the file as it was: never a
 * silent start on a new, empty log.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import {
  cpSync,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  truncateSync,
  writeSync,
  closeSync,
} from 'node:fs';
import { join } from 'node:path';
import { AgentProc, REPO, cleanup, freeLoopbackPort, post, tempDir } from '../helpers/agent.ts';
import { run } from '../helpers/proc.ts';
import { NODE_FLAGS } from '../../agent/runtime-flags.ts';
import { timing } from './scenario.ts';

const t0 = Date.now();
const root = tempDir('kedge-fault-damaged-');
const pristine = join(root, 'pristine');
// Kafka unreachable (port 1 refuses): every event stays in the log, so the file holds data.
const baseEnv = {
  KEDGE_AGENT_ID: 'fault-damaged',
  KEDGE_KAFKA_BROKERS: '127.0.0.1:1',
  KEDGE_HEARTBEAT_TOPIC: '',
};
t.teardown(() => cleanup(root));

const EVENTS = 20_000;
{
  const agent = await AgentProc.start({ env: { ...baseEnv, KEDGE_DATA_DIR: pristine } });
  for (let r = 0; r < EVENTS / 500; r++) {
    const body = Array.from({ length: 500 }, (_, i) =>
      JSON.stringify({ id: r * 500 + i, pad: 'p'.repeat(150) }),
    ).join('\n');
    const res = await post(
      `${agent.base}/v1/topics/damaged?key=k${r % 4}`,
      body,
      'application/x-ndjson',
    );
    if (res.status !== 200)
      throw new Error(`setup: ingest answered ${res.status}: ${JSON.stringify(res.body)}`);
  }
  const st = await agent.status();
  if (st.backlog.events !== EVENTS)
    throw new Error(`setup: backlog ${st.backlog.events}, expected ${EVENTS}`);
  const stopped = await agent.stop();
  if (stopped.code !== 0) throw new Error(`setup: kedge exited with ${stopped.code} on SIGTERM`);
}

const sha = (f: string): string => createHash('sha256').update(readFileSync(f)).digest('hex');

function overwrite(file: string, at: number, len: number): void {
  const fd = openSync(file, 'r+');
  writeSync(fd, randomBytes(len), 0, len, at);
  closeSync(fd);
}

interface Damage {
  what: string;
  apply(db: string): void;
}

const size = statSync(join(pristine, 'kedge.db')).size;
const damages: Damage[] = [
  {
    what: 'truncated to half its size',
    apply: (db) => truncateSync(db, Math.floor(size / 2 / 4096) * 4096 + 100),
  },
  { what: 'truncated to zero bytes', apply: (db) => truncateSync(db, 0) },
  { what: 'garbage over its first 4 KiB (the header)', apply: (db) => overwrite(db, 0, 4096) },
  {
    what: 'garbage over 64 KiB in the middle',
    apply: (db) => overwrite(db, Math.floor(size / 2 / 4096) * 4096, 65_536),
  },
];

t.comment(
  `kedge.db with ${EVENTS} unforwarded events: ${size} bytes; files: ${readdirSync(pristine).join(', ')}`,
);

for (const d of damages) {
  t.test(`kedge.db ${d.what}: kedge refuses to start and says what to do`, async (tt) => {
    const dir = join(root, d.what.replace(/[^a-z0-9]+/gi, '-'));
    cpSync(pristine, dir, { recursive: true });
    const db = join(dir, 'kedge.db');
    d.apply(db);
    const before = sha(db);
    const port = await freeLoopbackPort();
    const res = await run(process.execPath, [...NODE_FLAGS, join(REPO, 'agent/cli.ts'), 'run'], {
      env: {
        PATH: process.env.PATH ?? '',
        ...baseEnv,
        KEDGE_DATA_DIR: dir,
        KEDGE_HTTP_LISTEN: `127.0.0.1:${port}`,
      },
      timeoutMs: 20_000,
    });
    tt.equal(res.signal, null, 'kedge exits by itself (it did not run on until the 20 s timeout)');
    tt.ok(res.code !== null && res.code !== 0, `exit code is non-zero (${res.code})`);
    const msg = res.output;
    tt.match(msg, db, 'the message names the damaged file');
    tt.match(msg, /damaged|corrupt|not a kedge database/i, 'the message says the file is damaged');
    tt.match(msg, /mv |move it aside|restore/i, 'the message says what to do');
    tt.match(msg, /kedge repair/, 'the message names `kedge repair`');
    tt.notMatch(msg, /kedge running/, 'kedge never reported running');
    tt.equal(
      existsSync(db) ? sha(db) : 'gone',
      before,
      'the damaged file is left exactly as it was (evidence kept, nothing overwritten)',
    );
    tt.comment(msg.trim().split('\n').slice(-2).join('\n'));

    // What the message says to do: kedge repair, then start kedge again.
    const rep = await run(
      process.execPath,
      [...NODE_FLAGS, join(REPO, 'agent/cli.ts'), 'repair', '--json'],
      { env: { PATH: process.env.PATH ?? '', KEDGE_DATA_DIR: dir }, timeoutMs: 60_000 },
    );
    if (d.what === 'truncated to zero bytes') {
      tt.equal(rep.code, 3, 'kedge repair: nothing readable, exit 3');
      tt.equal(sha(db), before, 'the empty file is left as it was');
      return;
    }
    tt.ok(rep.code === 0 || rep.code === 1, `kedge repair saved events (exit ${rep.code})`);
    const report = JSON.parse(
      rep.output.slice(rep.output.indexOf('{'), rep.output.lastIndexOf('}') + 1),
    );
    tt.ok(
      report.events.saved > 0,
      `${report.events.saved} events saved, ${report.lost.events} lost`,
    );
    tt.equal(
      report.events.saved + report.lost.events,
      EVENTS,
      'saved + lost = every event the log held',
    );
    const aside = readdirSync(dir).find(
      (f) => f.startsWith('kedge.db.damaged-') && !f.endsWith('-wal'),
    );
    tt.equal(aside && sha(join(dir, aside)), before, 'the damaged file is kept aside as it was');
    const agent = await AgentProc.start({ env: { ...baseEnv, KEDGE_DATA_DIR: dir } });
    const st = await agent.status();
    await agent.stop();
    tt.equal(
      st.backlog.events,
      report.events.saved,
      'kedge starts again with the saved events as its backlog',
    );
  });
}

t.test('the undamaged copy still opens with every event', async (tt) => {
  const agent = await AgentProc.start({ env: { ...baseEnv, KEDGE_DATA_DIR: pristine } });
  const st = await agent.status();
  await agent.stop();
  tt.equal(st.backlog.events, EVENTS, `the intact log still holds all ${EVENTS} events`);
  timing(tt, 'damaged-log', t0);
});
