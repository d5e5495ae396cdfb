/**
 * What ships around the executables: the tarballs, the .debs (contents, modes,
 * control fields, conffile, maintainer scripts run against stub commands), the
 * systemd unit (`systemd-analyze verify`, the hardening, and the reason
 * MemoryDenyWriteExecute is absent), and the example env file against the
 * real config loader.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ENV_VARS, loadConfig } from '../agent/config.ts';
import { parseEnvFile } from '../agent/env-file.ts';
import { cleanup, tempDir } from './helpers/agent.ts';
import { ARCHES, PKG, ROOT, artifactsFor, ensureBuilt, hasCommand } from './helpers/exe.ts';

const UNIT = join(ROOT, 'packaging/kedge.service');
const EXAMPLE = join(ROOT, 'packaging/kedge.env.example');
const dir = tempDir('kedge-package-test-');
t.teardown(() => cleanup(dir));

const sh = (
  cmd: string,
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string } = {},
) => {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  return { code: r.status, out: r.stdout ?? '', err: r.stderr ?? '' };
};

/** `Key=value` lines of the [Service] section (repeated keys: all values). */
function serviceDirectives(unit: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  let section = '';
  for (const line of unit.split('\n')) {
    const s = /^\[(\w+)\]/.exec(line);
    if (s) section = s[1];
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (kv && section === 'Service') m.set(kv[1], [...(m.get(kv[1]) ?? []), kv[2]]);
  }
  return m;
}

t.test(
  'the example env file documents exactly the variables kedge reads, with their defaults',
  async (tt) => {
    const text = readFileSync(EXAMPLE, 'utf8');
    const documented = [...text.matchAll(/^#([A-Z][A-Z0-9_]*)=/gm)].map((m) => m[1]);
    tt.same([...documented].sort(), [...ENV_VARS].sort(), 'every variable once, and nothing else');
    tt.same(parseEnvFile(text, 'example').vars, {}, 'as shipped it sets nothing');
    // Uncommented, every line must mean the default (except the data dir: the unit sets /var/lib/kedge).
    const uncommented = text.replace(/^#(KEDGE_[A-Z0-9_]*=)/gm, '$1');
    const parsed = parseEnvFile(uncommented, 'example');
    tt.same(parsed.problems, []);
    delete parsed.vars.KEDGE_DATA_DIR;
    const withExample = loadConfig(parsed.vars);
    const defaults = loadConfig({});
    tt.same(
      { ...withExample, envFile: null },
      { ...defaults, envFile: null },
      'the documented values are the defaults',
    );
  },
);

t.test('the unit', async (tt) => {
  const unit = readFileSync(UNIT, 'utf8');
  const d = serviceDirectives(unit);
  const one = (k: string) => d.get(k)?.at(-1);
  tt.equal(one('User'), 'kedge', 'unprivileged user');
  tt.equal(one('ExecStart'), '/usr/local/bin/kedge run');
  tt.equal(one('EnvironmentFile'), '/etc/kedge/kedge.env');
  tt.equal(one('StateDirectory'), 'kedge', 'data in /var/lib/kedge');
  tt.equal(one('Restart'), 'always');
  tt.match(one('RestartSec') ?? '', /^\d+s$/);
  tt.ok(
    parseInt(one('TimeoutStopSec') ?? '0', 10) > 10,
    'TimeoutStopSec longer than the 10 s drain',
  );
  tt.equal(one('StandardOutput'), 'journal');
  for (const k of [
    'NoNewPrivileges',
    'ProtectHome',
    'PrivateTmp',
    'PrivateDevices',
    'ProtectKernelTunables',
    'ProtectKernelModules',
    'ProtectKernelLogs',
    'LockPersonality',
  ]) {
    tt.equal(one(k), 'yes', k);
  }
  tt.equal(one('ProtectSystem'), 'strict');
  tt.equal(one('RestrictAddressFamilies'), 'AF_INET AF_INET6 AF_UNIX');
  tt.equal(one('CapabilityBoundingSet'), '', 'no capabilities');
  tt.notOk(
    d.has('MemoryDenyWriteExecute'),
    'MemoryDenyWriteExecute is not set (V8 needs W+X, see below)',
  );
  tt.match(unit, /MemoryDenyWriteExecute=yes is deliberately NOT set: V8/, 'and the unit says why');
  tt.match(unit, /CAP_NET_BIND_SERVICE/, 'and how to allow a port below 1024');
});

t.test(
  'systemd-analyze verify',
  { skip: !hasCommand('systemd-analyze') && 'apt-get install -y systemd' },
  async (tt) => {
    ensureBuilt();
    const { exe } = artifactsFor('x64');
    // As shipped: the only possible complaint is the binary not being installed on this machine.
    const asIs = sh('systemd-analyze', ['verify', UNIT]);
    const complaints = (asIs.out + asIs.err).split('\n').filter(Boolean);
    if (asIs.code === 0) tt.same(complaints, [], 'packaging/kedge.service verifies');
    else {
      tt.ok(
        complaints.length > 0 &&
          complaints.every((l) =>
            /\/usr\/local\/bin\/kedge.*(not executable|No such file)/.test(l),
          ),
        `only the binary is missing here: ${complaints.join(' | ')}`,
      );
    }
    // Pointed at the built executable it must verify without a word.
    const unitDir = join(dir, 'verify');
    mkdirSync(unitDir, { recursive: true });
    const f = join(unitDir, 'kedge.service');
    writeFileSync(f, readFileSync(UNIT, 'utf8').replace('/usr/local/bin/kedge', exe));
    const r = sh('systemd-analyze', ['verify', f]);
    tt.equal(r.code, 0, r.out + r.err);
    tt.equal((r.out + r.err).trim(), '', 'no warnings');
    const sec = sh('systemd-analyze', ['security', '--offline=true', f]);
    const level = Number(
      /Overall exposure level for kedge\.service: ([\d.]+)/.exec(sec.out + sec.err)?.[1],
    );
    tt.comment(`systemd-analyze security: exposure ${level}`);
    tt.ok(level <= 3.5, `exposure level ${level} <= 3.5`);
  },
);

/** Why PR_SET_MDWE cannot be tried here, or false when it can. */
function mdweUnavailable(): string | false {
  if (!hasCommand('python3')) return 'python3 needed to call prctl(PR_SET_MDWE)';
  const probe = spawnSync(
    'python3',
    ['-c', 'import ctypes; print(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0))'],
    { encoding: 'utf8' },
  );
  return probe.stdout.trim() === '0' ? false : 'this kernel has no PR_SET_MDWE (Linux < 6.3)';
}

t.test(
  'MemoryDenyWriteExecute would kill kedge: V8 needs writable+executable memory',
  { skip: mdweUnavailable() },
  async (tt) => {
    ensureBuilt();
    const { exe } = artifactsFor('x64');
    // What systemd does for MemoryDenyWriteExecute=yes on kernels that have it: prctl(PR_SET_MDWE, REFUSE_EXEC_GAIN).
    const py =
      'import ctypes, os, sys\nassert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0\nos.execv(sys.argv[1], [sys.argv[1], "version"])\n';
    const r = spawnSync('python3', ['-c', py, exe], { encoding: 'utf8', timeout: 60_000 });
    tt.not(r.status, 0, 'the executable does not survive');
    tt.match(
      r.stderr,
      /SetPermissions|Fatal error/,
      'V8 aborts when it cannot make JIT code executable',
    );
    tt.notMatch(r.stdout, /^kedge /m);
  },
);

t.test('tarballs', async (tt) => {
  ensureBuilt();
  for (const arch of ARCHES) {
    const { tarball } = artifactsFor(arch);
    const top = `kedge-${PKG.version}-linux-${arch}`;
    const list = sh('tar', ['-tzvf', tarball]);
    tt.equal(list.code, 0, list.err);
    const entries = list.out
      .trim()
      .split('\n')
      .map((l) => {
        const f = l.split(/\s+/);
        return { mode: f[0], owner: f[1], name: f.slice(5).join(' ') };
      });
    tt.same(
      entries.map((e) => e.name).sort(),
      [
        `${top}/`,
        ...[
          'README.md',
          'THIRD_PARTY_NOTICES',
          'install.sh',
          'kedge',
          'kedge.env.example',
          'kedge.service',
        ].map((n) => `${top}/${n}`),
      ].sort(),
      `${arch}: one folder, six files`,
    );
    tt.ok(
      entries.every((e) => e.owner === '0/0'),
      `${arch}: owned by root (numeric 0/0)`,
    );
    const modeOf = (n: string) => entries.find((e) => e.name === `${top}/${n}`)?.mode;
    tt.equal(modeOf('kedge'), '-rwxr-xr-x');
    tt.equal(modeOf('install.sh'), '-rwxr-xr-x');
    tt.equal(modeOf('kedge.env.example'), '-rw-r--r--');
  }
});

t.test(
  '.deb packages',
  { skip: !hasCommand('dpkg-deb') && 'apt-get install -y dpkg-dev' },
  async (tt) => {
    ensureBuilt();
    for (const arch of ARCHES) {
      await tt.test(arch, async (st) => {
        const { deb, exe } = artifactsFor(arch);
        const debArch = arch === 'x64' ? 'amd64' : 'arm64';
        const field = (f: string) => sh('dpkg-deb', ['--field', deb, f]).out.trim();
        st.equal(field('Package'), 'kedge');
        st.equal(field('Version'), PKG.version);
        st.equal(field('Architecture'), debArch);
        st.match(field('Depends'), /libc6 \(>= 2\.\d+\)/);
        st.match(field('Depends'), /libstdc\+\+6/);
        st.match(field('Maintainer'), /<.+@.+>/);
        st.ok(Number(field('Installed-Size')) > 50_000, 'Installed-Size in KiB');

        const info = sh('dpkg-deb', ['--info', deb]).out;
        for (const s of ['postinst', 'prerm', 'postrm', 'conffiles', 'md5sums'])
          st.match(info, new RegExp(`\\s${s}\\s`), `control member ${s}`);

        const contents = sh('dpkg-deb', ['--contents', deb])
          .out.trim()
          .split('\n')
          .map((l) => {
            const f = l.split(/\s+/);
            return { mode: f[0], owner: f[1], name: f.slice(5).join(' ') };
          });
        const file = (n: string) => contents.find((c) => c.name === n);
        st.same(
          contents
            .filter((c) => !c.mode.startsWith('d'))
            .map((c) => c.name)
            .sort(),
          [
            './etc/kedge/kedge.env',
            './usr/bin/kedge',
            './usr/lib/systemd/system/kedge.service',
            './usr/share/doc/kedge/README.md',
            './usr/share/doc/kedge/THIRD_PARTY_NOTICES',
            './usr/share/doc/kedge/copyright',
            './usr/share/doc/kedge/kedge.env.example',
          ],
          'the files',
        );
        st.ok(
          contents.every((c) => c.owner === 'root/root'),
          'all owned by root',
        );
        st.equal(file('./usr/bin/kedge')?.mode, '-rwxr-xr-x');
        st.equal(file('./etc/kedge/kedge.env')?.mode, '-rw-------', 'env file 0600');
        st.equal(file('./usr/lib/systemd/system/kedge.service')?.mode, '-rw-r--r--');

        const x = join(dir, `deb-${arch}`);
        st.equal(sh('dpkg-deb', ['-x', deb, x]).code, 0);
        st.equal(sh('dpkg-deb', ['-e', deb, join(x, 'DEBIAN')]).code, 0);
        st.ok(
          readFileSync(join(x, 'usr/bin/kedge')).equals(readFileSync(exe)),
          'the executable from dist/',
        );
        const unit = readFileSync(join(x, 'usr/lib/systemd/system/kedge.service'), 'utf8');
        st.equal(
          unit,
          readFileSync(UNIT, 'utf8').replace(
            'ExecStart=/usr/local/bin/kedge run',
            'ExecStart=/usr/bin/kedge run',
          ),
          'the unit, with the binary in /usr/bin',
        );
        st.equal(
          readFileSync(join(x, 'etc/kedge/kedge.env'), 'utf8'),
          readFileSync(EXAMPLE, 'utf8'),
          'env file: the example, all commented',
        );
        st.equal(
          readFileSync(join(x, 'DEBIAN/conffiles'), 'utf8'),
          '/etc/kedge/kedge.env\n',
          'the env file is a conffile',
        );
        for (const s of ['postinst', 'prerm', 'postrm'])
          st.equal(sh('sh', ['-n', join(x, 'DEBIAN', s)]).code, 0, `${s} parses`);
        if (hasCommand('systemd-analyze')) {
          const f = join(x, 'verify.service');
          writeFileSync(f, unit.replace('/usr/bin/kedge', exe));
          const v = sh('systemd-analyze', ['verify', f]);
          st.equal(v.code, 0, `the packaged unit verifies: ${v.out}${v.err}`);
        }
      });
    }
  },
);

t.test(
  'maintainer scripts, run against stub commands',
  { skip: !hasCommand('dpkg-deb') && 'apt-get install -y dpkg-dev' },
  async (tt) => {
    ensureBuilt();
    const x = join(dir, 'scripts');
    tt.equal(sh('dpkg-deb', ['-e', artifactsFor('x64').deb, x]).code, 0);
    // Stubs log their argv; getent answers from $STUB_USER_EXISTS. Nothing real is touched.
    const stubs = join(dir, 'stubs');
    mkdirSync(stubs, { recursive: true });
    const log = join(dir, 'calls.log');
    for (const cmd of ['groupadd', 'useradd', 'userdel', 'chown', 'chmod', 'systemctl', 'rm']) {
      writeFileSync(join(stubs, cmd), `#!/bin/sh\necho "${cmd} $*" >> "${log}"\n`);
      chmodSync(join(stubs, cmd), 0o755);
    }
    writeFileSync(
      join(stubs, 'getent'),
      `#!/bin/sh\necho "getent $*" >> "${log}"\n[ "$STUB_USER_EXISTS" = 1 ]\n`,
    );
    chmodSync(join(stubs, 'getent'), 0o755);
    const run = (script: string, args: string[], userExists = false) => {
      writeFileSync(log, '');
      const r = sh('sh', [join(x, script), ...args], {
        env: { PATH: `${stubs}:/usr/bin:/bin`, STUB_USER_EXISTS: userExists ? '1' : '0' },
      });
      const calls = readFileSync(log, 'utf8')
        .trim()
        .split('\n')
        .filter(
          (l) =>
            l && !l.startsWith('getent') && !/^ch(own|mod) .*\/etc\/kedge\/kedge\.env$/.test(l),
        );
      return { ...r, calls };
    };

    const first = run('postinst', ['configure', '']);
    tt.equal(first.code, 0, first.err);
    tt.same(
      first.calls.slice(0, 3),
      [
        'groupadd --system kedge',
        'useradd --system --gid kedge --home-dir /var/lib/kedge --no-create-home --shell /usr/sbin/nologin --comment kedge edge agent kedge',
        'systemctl enable kedge.service',
      ],
      'first install: system user and group, service enabled',
    );

    const upgrade = run('postinst', ['configure', '0.0.9'], true);
    tt.equal(upgrade.code, 0);
    tt.notOk(
      upgrade.calls.some((c) => /^(useradd|groupadd)|enable/.test(c)),
      'upgrade: user exists, enablement left as the operator set it',
    );

    const prerm = run('prerm', ['remove']);
    tt.equal(prerm.code, 0);
    tt.ok(prerm.calls.includes('systemctl disable kedge.service'), 'remove: disabled');
    tt.same(run('prerm', ['upgrade']).calls, [], 'upgrade: prerm leaves it running');

    const remove = run('postrm', ['remove']);
    tt.equal(remove.code, 0);
    tt.notOk(
      remove.calls.some((c) => c.startsWith('rm')),
      'remove keeps the data',
    );
    const purge = run('postrm', ['purge']);
    tt.equal(purge.code, 0);
    tt.ok(
      purge.calls.includes('rm -rf /var/lib/kedge /etc/kedge'),
      'purge deletes data and config',
    );
    tt.notOk(
      purge.calls.some((c) => c.startsWith('userdel')),
      'the system user is kept',
    );

    tt.equal(run('postinst', ['bogus']).code, 1, 'unknown action refused');
    tt.same(
      readdirSync(x)
        .filter((f) => ['postinst', 'prerm', 'postrm'].includes(f))
        .sort(),
      ['postinst', 'postrm', 'prerm'],
    );
  },
);
