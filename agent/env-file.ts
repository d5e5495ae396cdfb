/**
 * systemd `EnvironmentFile=` syntax, so the same file serves `systemctl start kedge`
 * and `kedge run --env-file PATH`.
 *
 *   - `KEY=VALUE` per line; blank lines and lines starting with `#` or `;` are ignored
 *   - a leading `export ` is tolerated (files shared with shell scripts)
 *   - `'single'` quotes are literal; `"double"` quotes understand `\"` `\\` `\n` `\t` `\r`
 *     `\$` `` \` `` (any other backslash stays as written); both may span lines
 *   - unquoted values lose trailing whitespace; a trailing `\` continues the line
 *   - a later assignment of the same key wins, as in systemd
 *
 * Precedence (see `mergeEnv`): the real process environment wins, the env file fills
 * the rest. A value set explicitly for one run (`KEDGE_LOG_LEVEL=debug kedge run
 * --env-file …`) must not be silently overridden by the file on disk.
 */
import { readFileSync } from 'node:fs';

export interface EnvFileResult {
  vars: Record<string, string>;
  /** One line each, `PATH:LINE: what is wrong`. */
  problems: string[];
}

const KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function parseEnvFile(text: string, path: string): EnvFileResult {
  const vars: Record<string, string> = {};
  const problems: string[] = [];
  const src = text.replace(/^\uFEFF/, '').replace(/\r\n?/g, '\n');
  const n = src.length;
  let i = 0;
  let line = 1;

  const skipBlanks = (): void => {
    while (i < n && (src[i] === ' ' || src[i] === '\t')) i++;
  };
  const skipRestOfLine = (): void => {
    while (i < n && src[i] !== '\n') i++;
  };

  while (i < n) {
    skipBlanks();
    if (i >= n) break;
    if (src[i] === '\n') {
      i++;
      line++;
      continue;
    }
    if (src[i] === '#' || src[i] === ';') {
      skipRestOfLine();
      continue;
    }

    const startLine = line;
    const keyStart = i;
    while (i < n && src[i] !== '=' && src[i] !== '\n') i++;
    if (i >= n || src[i] !== '=') {
      problems.push(`${path}:${startLine}: expected KEY=VALUE`);
      continue; // at '\n' or EOF; the loop consumes it
    }
    let key = src.slice(keyStart, i).trim();
    const exported = /^export[ \t]+(.*)$/.exec(key);
    if (exported) key = exported[1].trim();
    i++; // '='
    skipBlanks();

    // Parse the value even when the key is bad, so a multi-line quoted value does
    // not turn into a cascade of bogus problems on the following lines.
    let value = '';
    let valueOk = true;
    const quote = src[i];
    if (quote === '"' || quote === "'") {
      i++;
      let closed = false;
      while (i < n) {
        const ch = src[i];
        if (ch === quote) {
          i++;
          closed = true;
          break;
        }
        if (ch === '\n') line++;
        if (quote === '"' && ch === '\\' && i + 1 < n) {
          const next = src[i + 1];
          i += 2;
          switch (next) {
            case '"':
            case '\\':
            case '$':
            case '`':
              value += next;
              break;
            case 'n':
              value += '\n';
              break;
            case 't':
              value += '\t';
              break;
            case 'r':
              // A raw CR would be read as a line break (CRLF files), so a CR in a value is written \r.
              value += '\r';
              break;
            case '\n':
              line++; // continuation inside quotes: drop backslash and newline
              break;
            default:
              value += '\\' + next;
          }
          continue;
        }
        value += ch;
        i++;
      }
      if (!closed) {
        const kind = quote === '"' ? 'double' : 'single';
        problems.push(
          `${path}:${startLine}: unterminated ${kind} quote (add the closing ${quote})`,
        );
        break; // it ran to the end of the file
      }
      skipBlanks();
      if (i < n && src[i] !== '\n') {
        problems.push(
          `${path}:${line}: unexpected text after the closing quote (quote the whole value)`,
        );
        valueOk = false;
        skipRestOfLine();
      }
    } else {
      while (i < n && src[i] !== '\n') {
        if (src[i] === '\\' && (i + 1 === n || src[i + 1] === '\n')) {
          // line continuation: drop the backslash and the newline
          if (i + 1 < n) line++;
          i += 2;
          continue;
        }
        value += src[i];
        i++;
      }
      value = value.replace(/[ \t]+$/, '');
    }

    if (!KEY_RE.test(key)) {
      const shown = key === '' ? 'nothing' : JSON.stringify(key);
      problems.push(
        `${path}:${startLine}: ${shown} before "=" is not a variable name (expected KEY=VALUE, KEY made of letters, digits and _)`,
      );
      continue;
    }
    if (valueOk) vars[key] = value;
  }

  return { vars, problems };
}

/** Reads and parses an env file. A missing or unreadable file is a problem naming the path, never a throw. */
export function readEnvFile(path: string): EnvFileResult {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    let why: string;
    if (code === 'ENOENT') why = 'env file not found';
    else if (code === 'EACCES' || code === 'EPERM')
      why = 'env file is not readable (permission denied)';
    else if (code === 'EISDIR') why = 'is a directory, expected an env file';
    else why = `cannot read env file (${(err as Error).message})`;
    return { vars: {}, problems: [`${path}: ${why}`] };
  }
  return parseEnvFile(text, path);
}

/**
 * Process environment wins; the env file fills in what the process does not set.
 * A variable set to the empty string in the process counts as set (it may mean
 * "disable", e.g. `KEDGE_HTTP_LISTEN=`).
 */
export function mergeEnv(
  processEnv: Record<string, string | undefined>,
  fileVars: Record<string, string>,
): Record<string, string | undefined> {
  const merged: Record<string, string | undefined> = { ...fileVars };
  for (const [k, v] of Object.entries(processEnv)) {
    if (v !== undefined) merged[k] = v;
  }
  return merged;
}
