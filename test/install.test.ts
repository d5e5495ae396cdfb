/**
 * install.sh from the real x64 tarball, into scratch roots (DESTDIR): the
 * expected files with their modes (env file 0600), a second run that changes
 * nothing, an operator's env file never overwritten, a broken env file
 * reported, --uninstall keeping config and data, --purge deleting them, and the
 * kedge user created in a root that has an /etc/passwd.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  writeFileSync,
} from 'node:fs';
import { join, relative } from 'node:path';
import { cleanup, tempDir } from './helpers/agent.ts';
import { PKG, artifactsFor, ensureBuilt } from './helpers/exe.ts';

ensureBuilt();
const { tarball, exe } = artifactsFor('x64');
const dir = tempDir('kedge-install-test-');
t.teardown(() => cleanup(dir));

const untar = spawnSync('tar', ['-xzf', tarball, '-C', dir]);
if (untar.status !== 0) throw new Error(`tar: ${untar.stderr}`);
const src = join(dir, `kedge-${PKG.version}-linux-x64`);
const installSh = join(src, 'install.sh');

function install(root: string | null, ...args: string[]) {
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
  if (root !== null) env.DESTDIR = root;
  const r = spawnSync('sh', [installSh, ...args], { env, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** path → "mode size sha256" (or the link target), for every entry under root. */
function snapshot(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (p: string): void => {
    const st = lstatSync(p);
    const rel = relative(root, p) || '.';
    if (st.isSymbolicLink()) out[rel] = `link -> ${readlinkSync(p)}`;
    else if (st.isDirectory()) {
      out[rel] = `dir ${(st.mode & 0o7777).toString(8)}`;
      for (const n of readdirSync(p)) walk(join(p, n));
    } else
      out[rel] =
        `file ${(st.mode & 0o7777).toString(8)} ${st.size} ${createHash('sha256').update(readFileSync(p)).digest('hex').slice(0, 16)}`;
  };
  walk(root);
  return out;
}

const mode = (p: string) => (lstatSync(p).mode & 0o7777).toString(8);

t.test('the tarball holds what install.sh needs', async (tt) => {
  tt.same(readdirSync(src).sort(), [
    'README.md',
    'THIRD_PARTY_NOTICES',
    'install.sh',
    'kedge',
    'kedge.env.example',
    'kedge.service',
  ]);
  tt.equal(mode(join(src, 'kedge')), '755');
  tt.equal(mode(join(src, 'install.sh')), '755');
  tt.ok(
    readFileSync(join(src, 'kedge')).equals(readFileSync(exe)),
    'the same executable as dist/kedge-linux-x64',
  );
  const help = install(null, '--help');
  tt.equal(help.code, 0);
  tt.match(help.out, /--uninstall/);
  tt.equal(install(null, '--frobnicate').code, 2, 'unknown option: exit 2');
});

t.test('install into a scratch root', async (tt) => {
  const root = join(dir, 'root');
  const r = install(root);
  tt.equal(r.code, 0, r.err);
  const bin = join(root, 'usr/local/bin/kedge');
  const envFile = join(root, 'etc/kedge/kedge.env');
  const unit = join(root, 'etc/systemd/system/kedge.service');
  tt.ok(readFileSync(bin).equals(readFileSync(exe)), 'binary installed');
  tt.equal(mode(bin), '755');
  tt.equal(mode(envFile), '600', 'env file 0600: it may hold secrets');
  tt.equal(
    readFileSync(envFile, 'utf8'),
    readFileSync(join(src, 'kedge.env.example'), 'utf8'),
    'env file is the example',
  );
  tt.equal(mode(unit), '644');
  tt.equal(readFileSync(unit, 'utf8'), readFileSync(join(src, 'kedge.service'), 'utf8'));
  tt.equal(mode(join(root, 'var/lib/kedge')), '750', 'data dir 0750');
  tt.equal(
    readlinkSync(join(root, 'etc/systemd/system/multi-user.target.wants/kedge.service')),
    '/etc/systemd/system/kedge.service',
    'enabled for boot',
  );
  tt.match(r.out, /configuration OK/, 'ran check-config');
  tt.match(r.out, /skipped the kedge user/, 'says why no user was made');
  tt.match(r.out, /journalctl -u kedge -f/, 'says where the logs are');
  tt.match(r.out, new RegExp(`version ${PKG.version.replace(/\./g, '\\.')}`));

  const before = snapshot(root);
  const again = install(root);
  tt.equal(again.code, 0, again.err);
  tt.same(snapshot(root), before, 'a second run changes nothing');
  tt.match(again.out, /unchanged .*usr\/local\/bin\/kedge/);
  tt.match(again.out, /kept the existing .*kedge\.env/);

  writeFileSync(envFile, 'KEDGE_SYNC=normal\nKEDGE_HTTP_TOKEN=s3cret\n');
  const third = install(root);
  tt.equal(third.code, 0, third.err);
  tt.equal(
    readFileSync(envFile, 'utf8'),
    'KEDGE_SYNC=normal\nKEDGE_HTTP_TOKEN=s3cret\n',
    "an operator's env file is never overwritten",
  );
  tt.notMatch(third.out + third.err, /s3cret/, 'secrets never printed');

  writeFileSync(envFile, 'KEDGE_SYNC=sometimes\n');
  const broken = install(root);
  tt.equal(broken.code, 1, 'a broken env file fails the install');
  tt.match(broken.err, /KEDGE_SYNC/, 'and the problem is listed');
  tt.match(broken.out, /fix \/etc\/kedge\/kedge\.env/);
  writeFileSync(envFile, '# operator settings\n');

  // kedge writes its log into the data dir; uninstall must keep it.
  writeFileSync(join(root, 'var/lib/kedge/kedge.db'), 'events');
  const un = install(root, '--uninstall');
  tt.equal(un.code, 0, un.err);
  tt.notOk(existsSync(bin), 'binary removed');
  tt.notOk(existsSync(unit), 'unit removed');
  tt.notOk(
    existsSync(join(root, 'etc/systemd/system/multi-user.target.wants/kedge.service')),
    'boot link removed',
  );
  tt.equal(
    readFileSync(join(root, 'var/lib/kedge/kedge.db'), 'utf8'),
    'events',
    'the data is kept',
  );
  tt.equal(readFileSync(envFile, 'utf8'), '# operator settings\n', 'the env file is kept');
  tt.match(un.out, /kept/);
  tt.equal(install(root, '--uninstall').code, 0, 'uninstall twice is fine');

  tt.equal(install(root).code, 0, 'reinstall');
  tt.equal(readFileSync(envFile, 'utf8'), '# operator settings\n', 'reinstall keeps the env file');
  const purge = install(root, '--purge');
  tt.equal(purge.code, 0, purge.err);
  tt.notOk(existsSync(join(root, 'var/lib/kedge')), 'purge deletes the data');
  tt.notOk(existsSync(join(root, 'etc/kedge')), 'purge deletes /etc/kedge');
  tt.notOk(existsSync(bin));
});

t.test('--root works like DESTDIR', async (tt) => {
  const root = join(dir, 'root-opt');
  const r = install(null, '--no-start', '--root', root);
  tt.equal(r.code, 0, r.err);
  tt.ok(existsSync(join(root, 'usr/local/bin/kedge')));
  tt.match(r.out, /not starting \(--no-start\)/);
  tt.notOk(
    existsSync(join(root, 'etc/systemd/system/multi-user.target.wants')),
    '--no-start does not enable',
  );
});

t.test(
  'creates the kedge system user in a root with /etc/passwd',
  { skip: process.getuid?.() !== 0 && 'useradd --root needs root' },
  async (tt) => {
    const root = join(dir, 'root-users');
    mkdirSync(join(root, 'etc'), { recursive: true });
    writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    writeFileSync(join(root, 'etc/group'), 'root:x:0:\n');
    const r = install(root);
    tt.equal(r.code, 0, r.err);
    tt.match(r.out, /created system user kedge/);
    const pw = readFileSync(join(root, 'etc/passwd'), 'utf8')
      .split('\n')
      .find((l) => l.startsWith('kedge:'));
    tt.ok(pw, 'kedge in passwd');
    const [, , uid, , , home, shell] = pw!.split(':');
    tt.ok(Number(uid) < 1000, 'a system uid');
    tt.equal(home, '/var/lib/kedge');
    tt.equal(shell, '/usr/sbin/nologin');
    tt.match(readFileSync(join(root, 'etc/group'), 'utf8'), /^kedge:/m, 'and its group');
    const again = install(root);
    tt.match(again.out, /user kedge exists/);
    tt.equal(
      readFileSync(join(root, 'etc/passwd'), 'utf8').match(/^kedge:/gm)?.length,
      1,
      'created once',
    );
  },
);

t.test(
  'without DESTDIR a non-root user is refused',
  { skip: process.getuid?.() === 0 && !hasSetpriv() && 'needs setpriv to drop root' },
  async (tt) => {
    const env = { PATH: '/usr/bin:/bin' };
    // A copy nobody can read and run (the tarball folder is in a 0700 temp dir).
    const pub = tempDir('kedge-install-pub-');
    tt.teardown(() => cleanup(pub));
    chmodSync(pub, 0o755);
    copyFileSync(installSh, join(pub, 'install.sh'));
    const r =
      process.getuid?.() === 0
        ? spawnSync(
            'setpriv',
            ['--reuid=65534', '--regid=65534', '--clear-groups', 'sh', join(pub, 'install.sh')],
            { env, encoding: 'utf8' },
          )
        : spawnSync('sh', [join(pub, 'install.sh')], { env, encoding: 'utf8' });
    tt.equal(r.status, 1);
    tt.match(r.stderr, /run as root/);
  },
);

function hasSetpriv(): boolean {
  return spawnSync('sh', ['-c', 'command -v setpriv'], { stdio: 'ignore' }).status === 0;
}
