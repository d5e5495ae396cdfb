/**
 * Writes docs/configuration.md and packaging/kedge.env.example from the settings
 * table (agent/settings.ts): `npm run docs:settings`. test/settings.test.ts renders
 * both in memory and fails when the files on disk differ.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  ENV_VARS,
  type EnvVarName,
  GROUPS,
  type GroupId,
  settingOf,
} from '../../agent/settings.ts';
import { REDACTED } from '../../agent/redact.ts';

const ROOT = join(import.meta.dirname, '..', '..');
export const CONFIGURATION_MD = join(ROOT, 'docs/configuration.md');
export const ENV_EXAMPLE = join(ROOT, 'packaging/kedge.env.example');

const GENERATED =
  'Generated from agent/settings.ts by `npm run docs:settings`; edit the table, not this file.';

/** The settings of each group, groups in the order the table first names them. */
function grouped(): [GroupId, EnvVarName[]][] {
  const groups = new Map<GroupId, EnvVarName[]>();
  for (const name of ENV_VARS) {
    const g = settingOf(name).group;
    groups.set(g, [...(groups.get(g) ?? []), name]);
  }
  return [...groups];
}

function defaultCell(name: EnvVarName): string {
  const s = settingOf(name);
  const base = s.defaultDoc ?? (s.default === '' ? 'unset' : `\`${s.default}\``);
  return s.serviceDefault === undefined ? base : `${base} (service: \`${s.serviceDefault}\`)`;
}

export function renderConfigurationDoc(): string {
  const out = [
    '# Configuration',
    '',
    `<!-- ${GENERATED} -->`,
    '',
    'kedge reads `KEDGE_*` environment variables, and with `--env-file PATH` an env file in',
    'systemd `EnvironmentFile=` syntax (`KEY=VALUE`, `#`/`;` comments, single or double',
    'quotes, `export ` tolerated, trailing `\\` continues a line). Variables already in the',
    'process environment win over the file. Every setting is optional. The packaged',
    'example, `packaging/kedge.env.example`, lists them all with their defaults.',
    '',
    '`kedge check-config [--env-file PATH]` validates and prints the effective configuration,',
    `secrets shown as \`${REDACTED}\`. A bad configuration stops kedge at start with **every**`,
    'problem listed, one line each, exit code 2:',
    '',
    '```',
    'kedge: the configuration has 2 problems:',
    '  - KEDGE_SYNC "sometimes" is not valid (expected full or normal)',
    '  - KEDGE_FORWARD_RATE "fast" is not a rate (expected e.g. 64KiB/s or 1MB/s, or unlimited)',
    '```',
    '',
    'An unknown `KEDGE_*` name is a problem too (with a "did you mean" suggestion), so a typo',
    'never silently falls back to a default. Empty counts as unset, except where the table',
    'says empty disables something.',
    '',
    '- Sizes: `B`, `KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`, `TB`/`TiB` (KB = 1000, KiB = 1024); a plain number is bytes.',
    '- Durations: `ms s m h d w`, combinable (`1h30m`).',
    '- Rates: a size per second (`64KiB/s`).',
    '- Lists: comma-separated; spaces around entries are ignored.',
    '- Paths: relative ones are taken from the working directory; files must be readable at start.',
  ];
  for (const [group, names] of grouped()) {
    out.push('', `## ${GROUPS[group].title}`, '', GROUPS[group].intro, '');
    out.push('| variable | type | default | description |', '|---|---|---|---|');
    for (const name of names) {
      const s = settingOf(name);
      const doc = s.secret ? `${s.doc} Secret: never shown.` : s.doc;
      out.push(`| \`${name}\` | ${s.type} | ${defaultCell(name)} | ${doc} |`);
    }
  }
  return `${out.join('\n')}\n`;
}

/** `# ` comment lines of at most 80 columns. */
function comment(text: string): string[] {
  const lines: string[] = [];
  let line = '#';
  for (const word of text.replace(/`/g, '').split(/\s+/)) {
    if (line.length + 1 + word.length > 80 && line !== '#') {
      lines.push(line);
      line = '#';
    }
    line += ` ${word}`;
  }
  return [...lines, line];
}

/** Said in words where the commented-out value alone would mislead. */
function defaultNote(name: EnvVarName): string {
  const s = settingOf(name);
  if (s.serviceDefault !== undefined)
    return ` Default: ${s.default}; the service's (set in kedge.service): ${s.serviceDefault}.`;
  return s.defaultDoc === undefined ? '' : ` Default: ${s.defaultDoc}.`;
}

function rule(title: string): string {
  return `# ${'-'.repeat(Math.max(4, 74 - title.length))} ${title} --`;
}

export function renderEnvExample(): string {
  const out = [
    '# /etc/kedge/kedge.env: configuration of the kedge service.',
    `# ${GENERATED}`,
    '#',
    '# systemd EnvironmentFile= syntax: KEY=VALUE, one per line; "#" starts a comment;',
    '# quote values with spaces (\'single\' is literal, "double" understands \\" \\\\ \\n).',
    '# Every setting is optional: each line below is commented out and shows the',
    '# default. Uncomment and change what you need, then check and apply:',
    '#',
    '#   kedge check-config --env-file /etc/kedge/kedge.env',
    '#   systemctl restart kedge',
    '#   journalctl -u kedge -f',
    '#',
    '# This file may hold secrets (tokens, passwords): keep it mode 0600, owned by',
    '# root. systemd reads it before dropping privileges to the kedge user.',
    '# A setting in the process environment wins over the same setting here.',
    '# The reference: docs/configuration.md.',
  ];
  for (const [group, names] of grouped()) {
    out.push('', rule(GROUPS[group].title), '', ...comment(GROUPS[group].intro));
    for (const name of names) {
      const s = settingOf(name);
      out.push(
        '',
        ...comment(`${s.doc}${defaultNote(name)}`),
        `#${name}=${s.serviceDefault ?? s.default}`,
      );
    }
  }
  return `${out.join('\n')}\n`;
}

if (import.meta.main) {
  writeFileSync(CONFIGURATION_MD, renderConfigurationDoc());
  writeFileSync(ENV_EXAMPLE, renderEnvExample());
  process.stdout.write(`wrote ${CONFIGURATION_MD}\nwrote ${ENV_EXAMPLE}\n`);
}
