/**
 * The settings table (agent/settings.ts) is the one place a KEDGE_* variable is
 * declared: the generated docs and example env file must match it, and every
 * KEDGE_* name the docs, packaging and code mention must be a setting (or one of
 * the few non-settings below, each with its reason).
 */
import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { KEDGE_ERROR_CODES } from '../agent/errors.ts';
import { PER_DESTINATION } from '../agent/destinations-config.ts';
import { loadConfig } from '../agent/config.ts';
import { ENV_VARS, SECRET_VARS, SETTINGS, settingOf } from '../agent/settings.ts';
import {
  CONFIGURATION_MD,
  ENV_EXAMPLE,
  renderConfigurationDoc,
  renderEnvExample,
} from '../scripts/docs/settings.ts';

const ROOT = join(import.meta.dirname, '..');

/** KEDGE_ names that are not settings, and why they may appear. */
const NOT_SETTINGS = new Map<string, string>([
  ...KEDGE_ERROR_CODES.map((c): [string, string] => [c, 'an error code (agent/errors.ts)']),
  ['KEDGE_ERROR_CODES', 'the error code catalogue constant'],
  ['KEDGE_VERSION', 'the version constant in agent/version.ts'],
  ['KEDGE_SNYC', 'a typo, the example in suggestVariable'],
  ['KEDGE_BROKERS', 'a missing section, the example in suggestVariable'],
]);

/**
 * Names made from other names (agent/destinations-config.ts): routes, KEDGE_ROUTE_<NAME>, and a
 * destination's own settings, KEDGE_<N>_<rest of a per-destination setting> (KEDGE_N_… in docs).
 */
function isDynamicName(name: string): boolean {
  if (/^KEDGE_ROUTE_[A-Z0-9_]*\*?$/.test(name) || name === 'KEDGE_N_') return true;
  return PER_DESTINATION.some((b) => name !== b && name.endsWith(`_${b.slice('KEDGE_'.length)}`));
}

function filesUnder(dir: string, keep: (path: string) => boolean): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) out.push(...filesUnder(path, keep));
    else if (keep(path)) out.push(path);
  }
  return out;
}

t.test('docs/configuration.md and packaging/kedge.env.example match the table', async (t) => {
  const fix = 'run `npm run docs:settings` and commit the result';
  t.equal(readFileSync(CONFIGURATION_MD, 'utf8'), renderConfigurationDoc(), fix);
  t.equal(readFileSync(ENV_EXAMPLE, 'utf8'), renderEnvExample(), fix);
});

t.test('every KEDGE_ name mentioned is a setting or a known non-setting', async (t) => {
  const files = [
    join(ROOT, 'README.md'),
    ...filesUnder(join(ROOT, 'docs'), (p) => p.endsWith('.md')),
    ...filesUnder(join(ROOT, 'packaging'), () => true),
    ...filesUnder(join(ROOT, 'agent'), (p) => p.endsWith('.ts') || p.endsWith('.md')),
  ];
  const known = new Set<string>(ENV_VARS);
  const unknown: string[] = [];
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/KEDGE_[A-Z0-9_]+(\*)?/g)) {
      if (isDynamicName(m[0])) continue;
      // `KEDGE_MQTT_*` names a group: at least one setting must start with it.
      if (m[1]) {
        const prefix = m[0].slice(0, -1);
        if (!ENV_VARS.some((v) => v.startsWith(prefix)))
          unknown.push(`${relative(ROOT, file)}: ${m[0]}`);
        continue;
      }
      if (!known.has(m[0]) && !NOT_SETTINGS.has(m[0]))
        unknown.push(`${relative(ROOT, file)}: ${m[0]}`);
    }
  }
  t.strictSame(unknown, [], 'add the setting to agent/settings.ts, or the name to NOT_SETTINGS');
  for (const name of NOT_SETTINGS.keys()) t.notOk(known.has(name), `${name} is not also a setting`);
});

t.test('each row: a one-line doc, and its default parses and prints back', async (t) => {
  const defaults = loadConfig({});
  for (const name of ENV_VARS) {
    const s = settingOf(name);
    t.ok(s.doc.length > 0 && !s.doc.includes('\n'), `${name}: one-line doc`);
    t.notOk(s.doc.includes('|'), `${name}: doc fits a markdown table`);
    // The documented default is what an unset variable means.
    t.strictSame(
      loadConfig({ [name]: s.default }),
      defaults,
      `${name}=${s.default} is the default`,
    );
    if (!s.secret) t.equal(typeof s.show(defaults), 'string');
  }
  t.strictSame(
    [...SECRET_VARS].sort(),
    ['KEDGE_HTTP_TOKEN', 'KEDGE_KAFKA_PASSWORD', 'KEDGE_MQTT_PASSWORD'],
    'the secrets',
  );
  t.equal(Object.keys(SETTINGS).length, ENV_VARS.length);
});
