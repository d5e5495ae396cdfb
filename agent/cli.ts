#!/usr/bin/env node
/**
 * kedge run | check-config | status | version
 * User mistakes end in one line naming the thing and the fix (exit 2), never a stack trace.
 */
import { statSync } from 'node:fs';
import { ConfigError, formatConfig, loadConfig, type Config } from './config.ts';
import { mergeEnv, readEnvFile } from './env-file.ts';
import { Agent } from './agent.ts';
import { createLogger } from './observe/logger.ts';
import { CodecUnavailableError, LogOpenError } from './errors.ts';
import { KEDGE_VERSION } from './version.ts';
import { runStatus } from './status/cli.ts';
import { tapTool } from './status/tap-cli.ts';
import { deadLettersTool } from './status/dead-letters-cli.ts';
import { repairTool } from './log/repair-cli.ts';

const USAGE = `usage: kedge <command> [options]

commands:
  run [--env-file PATH]            run the agent (default command)
  check-config [--env-file PATH]   validate the configuration and print it (secrets redacted)
  status [--json] [--watch [--count N]] [--env-file PATH]
                                   show link state, backlog and rates of the running agent;
                                   exit 0 healthy, 1 degraded (Kafka link degraded or down), 3 unreachable;
                                   --watch redraws every second (Ctrl-C or --count N screens to stop)
  tap [pattern] [--limit N] [--json] [--env-file PATH]
                                   follow the events as they are stored (topic pattern: * one
                                   segment, # the rest); exit 0 at --limit or Ctrl-C, 3 unreachable
  repair [--env-file PATH] [--json]
                                   with kedge stopped: save every readable event of a damaged log into
                                   a new one (damaged files kept aside); exit 0 all saved or intact,
                                   1 some seq ranges lost, 3 nothing readable
  dead-letters list|show|replay|purge [--topic T] [--reason R] [--from SEQ] [--to SEQ] [--json]
                                   what Kafka refused for good: list grouped with count and age,
                                   show one, replay (original kedge-id) or purge; exit 0 done,
                                   1 nothing matched, 3 no agent and the data dir locked (--help)
  version                          print versions (also --version)
`;

interface Args {
  command: string;
  envFile: string | null;
  json: boolean;
  watch: boolean;
  count: number | null;
}

function fail(msg: string, code = 2): never {
  process.stderr.write(`kedge: ${msg}\n`);
  process.exit(code);
}

const NO_ARGS: Args = { command: 'run', envFile: null, json: false, watch: false, count: null };

function parseArgs(argv: string[]): Args {
  const a: Args = { command: 'run', envFile: null, json: false, watch: false, count: null };
  let sawCommand = false;
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    // `node agent/cli.ts -- run --env-file F`: Node itself reads a script argument named
    // --env-file unless it comes after `--`, so from source the separator is allowed.
    if (x === '--') continue;
    if (x === '--version' || x === '-v') a.command = 'version';
    else if (x === '--help' || x === '-h' || x === 'help') a.command = 'help';
    else if (x === '--env-file') {
      const v = argv[++i];
      if (!v) fail('--env-file needs a path, e.g. --env-file /etc/kedge/kedge.env');
      a.envFile = v;
    } else if (x.startsWith('--env-file=')) a.envFile = x.slice('--env-file='.length);
    else if (x === '--json') a.json = true;
    else if (x === '--watch') a.watch = true;
    else if (x === '--count' || x.startsWith('--count=')) {
      const v = x === '--count' ? argv[++i] : x.slice('--count='.length);
      if (!v || !/^[1-9]\d*$/.test(v))
        fail(
          `--count needs a whole number of screens, e.g. --count 10 (got ${JSON.stringify(v ?? '')})`,
        );
      a.count = Number(v);
    } else if (!x.startsWith('-') && !sawCommand) {
      a.command = x;
      sawCommand = true;
    } else fail(`unknown argument "${x}"\n${USAGE}`);
  }
  return a;
}

function loadOrExit(args: Args): Config {
  let env: Record<string, string | undefined> = process.env;
  if (args.envFile) {
    const f = readEnvFile(args.envFile);
    if (f.problems.length) {
      process.stderr.write(
        `kedge: the env file has problems:\n${f.problems.map((p) => `  - ${p}`).join('\n')}\n`,
      );
      process.exit(2);
    }
    env = mergeEnv(process.env, f.vars);
  }
  try {
    return loadConfig(env, { envFile: args.envFile });
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(
        `kedge: the configuration has ${e.problems.length} problem${e.problems.length === 1 ? '' : 's'}:\n${e.problems.map((p) => `  - ${p}`).join('\n')}\n`,
      );
      process.exit(2);
    }
    throw e;
  }
}

function storageDriverAvailable(): string {
  try {
    // node:sqlite exists in the embedded Node 24; absent elsewhere.
    process.getBuiltinModule('node:sqlite');
    return 'sqlite (node:sqlite), wasm (node-sqlite3-wasm)';
  } catch {
    return 'wasm (node-sqlite3-wasm)';
  }
}

async function run(args: Args): Promise<void> {
  const cfg = loadOrExit(args);
  const logger = createLogger(cfg.logLevel);
  if (args.envFile) {
    try {
      const mode = statSync(args.envFile).mode;
      if (mode & 0o077)
        logger.warn(
          { envFile: args.envFile, mode: (mode & 0o777).toString(8) },
          'the env file is readable by group or others and may hold secrets: chmod 600 it',
        );
    } catch {
      /* already reported by readEnvFile */
    }
  }
  const agent = new Agent(cfg, logger);
  try {
    await agent.start();
  } catch (e) {
    if (e instanceof LogOpenError || e instanceof CodecUnavailableError) fail(e.message);
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EADDRINUSE')
      fail(
        `cannot listen on ${cfg.http.listen?.host}:${cfg.http.listen?.port}: the address is in use (another kedge? set KEDGE_HTTP_LISTEN)`,
      );
    if (err.code === 'EACCES' && err.syscall === 'listen')
      fail(
        `no permission to listen on port ${cfg.http.listen?.port} (ports below 1024 need CAP_NET_BIND_SERVICE; pick a higher port)`,
      );
    if (err.code === 'EACCES' || err.code === 'EROFS')
      fail(
        `cannot write the data dir ${cfg.dataDir}: ${err.message} (set KEDGE_DATA_DIR to a writable folder)`,
      );
    throw e;
  }
  logger.info(
    { version: KEDGE_VERSION, node: process.version, arch: process.arch },
    'kedge running',
  );
  let stopping = false;
  const onSignal = (sig: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal: sig }, 'stopping');
    // Whatever happens, exit within 10 s: the log is safe at any instant.
    setTimeout(() => {
      logger.error('stop took too long; exiting anyway (nothing acknowledged is lost)');
      process.exit(1);
    }, 10_000).unref();
    agent.stop().then(
      () => {
        logger.info('stopped');
        process.exit(0);
      },
      (e) => {
        logger.error({ err: e }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
}

/**
 * The operator's tools each parse their own arguments (they have options of their own), so a
 * tool is one entry here and one module; `kedge <tool> --help` prints the tool's usage.
 * A tool returns its exit code; it reaches the configuration through `config(envFile)`.
 */
export interface ToolContext {
  /** The configuration from the environment and, if given, an env file; exits 2 on problems. */
  config(envFile: string | null): Config;
  fail(msg: string, code?: number): never;
}
type Tool = (argv: string[], ctx: ToolContext) => Promise<number>;
const TOOLS: Record<string, Tool> = {
  repair: repairTool,
  tap: tapTool,
  'dead-letters': deadLettersTool,
};

async function main(): Promise<void> {
  const argv = process.argv
    .slice(2)
    .filter((x, i, all) => !(x === '--' && all.indexOf('--') === i));
  const tool = argv[0] !== undefined ? TOOLS[argv[0]] : undefined;
  if (tool) {
    process.exitCode = await tool(argv.slice(1), {
      config: (envFile) => loadOrExit({ ...NO_ARGS, envFile }),
      fail,
    });
    return;
  }
  const args = parseArgs(argv);
  switch (args.command) {
    case 'run':
      return run(args);
    case 'check-config': {
      const cfg = loadOrExit(args);
      process.stdout.write(formatConfig(cfg) + '\n');
      process.stderr.write('kedge: configuration OK\n');
      return;
    }
    case 'status':
      process.exitCode = await runStatus(loadOrExit(args), {
        json: args.json,
        watch: args.watch,
        count: args.count,
      });
      return;
    case 'version':
      process.stdout.write(
        `kedge ${KEDGE_VERSION}\nnode ${process.version}\narch ${process.platform}-${process.arch}\nstorage ${storageDriverAvailable()}\n`,
      );
      return;
    case 'help':
      process.stdout.write(USAGE);
      return;
    default:
      fail(`unknown command "${args.command}"\n${USAGE}`);
  }
}

main().catch((e) => {
  process.stderr.write(`kedge: unexpected error: ${(e as Error)?.stack ?? e}\n`);
  process.exit(1);
});
