/** The CLI contract: version, check-config, bad config lists every problem and exits 2. */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, cleanup, tempDir } from './helpers/agent.ts';

const cli = join(REPO, 'agent/cli.ts');
const run = (args: string[], env: Record<string, string> = {}) =>
  spawnSync(process.execPath, [cli, '--', ...args], {
    env: { PATH: process.env.PATH ?? '', ...env },
    encoding: 'utf8',
    timeout: 20_000,
  });

const dir = tempDir();
t.teardown(() => cleanup(dir));

t.test('version', async (tt) => {
  for (const args of [['version'], ['--version']]) {
    const r = run(args);
    tt.equal(r.status, 0);
    tt.match(r.stdout, /^kedge \d+\.\d+\.\d+/m);
    tt.match(r.stdout, /node v24\./);
    tt.match(r.stdout, new RegExp(`arch linux-${process.arch}`));
    tt.match(r.stdout, /storage .*sqlite/);
  }
});

t.test('bad config: every problem listed, exit 2, no stack trace', async (tt) => {
  const env = {
    KEDGE_SYNC: 'sometimes',
    KEDGE_FORWARD_RATE: 'fast',
    KEDGE_HTTP_LISTEN: 'localhost:99999',
    KEDGE_DISK_QUOTA: 'lots',
    KEDGE_COMPRESSION: 'rar',
  };
  for (const cmd of ['check-config', 'run']) {
    const r = run([cmd], env);
    tt.equal(r.status, 2, `${cmd} exits 2`);
    for (const name of Object.keys(env)) tt.match(r.stderr, name, `${cmd} names ${name}`);
    tt.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
  }
});

t.test('env file: read, secrets redacted, bad lines named', async (tt) => {
  const f = join(dir, 'kedge.env');
  writeFileSync(
    f,
    '# kedge\nKEDGE_SYNC=normal\nKEDGE_HTTP_TOKEN="tok-abc-123"\nKEDGE_DATA_DIR=' +
      join(dir, 'data') +
      '\n',
    { mode: 0o600 },
  );
  const r = run(['check-config', '--env-file', f]);
  tt.equal(r.status, 0, r.stderr);
  tt.match(r.stdout, /KEDGE_SYNC=normal/);
  tt.notMatch(r.stdout + r.stderr, /tok-abc-123/, 'the token is redacted');
  writeFileSync(f, 'KEDGE_SYNC=normal\nthis is not an assignment\n');
  const bad = run(['check-config', '--env-file', f]);
  tt.equal(bad.status, 2);
  tt.match(bad.stderr, /kedge\.env:2/);
  const missing = run(['check-config', '--env-file', join(dir, 'nope.env')]);
  tt.equal(missing.status, 2);
  tt.match(missing.stderr, /nope\.env/);
});

t.test('unknown command is one line and exit 2', async (tt) => {
  const r = run(['frobnicate']);
  tt.equal(r.status, 2);
  tt.match(r.stderr, /unknown command "frobnicate"/);
});
