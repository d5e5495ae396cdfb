// A real Apache Kafka broker (KRaft) for development and tests: jars from Maven Central via
// scripts/kafka/pom.xml, one or three combined broker+controller nodes on free loopback ports.
// Importing this module has no side effects; process hooks are installed on first start.
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Kafka, logLevel } from 'kafkajs';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const POM_PATH = path.join(REPO_ROOT, 'scripts/kafka/pom.xml');
const MARKER = '.kedge-jars-complete';
const HOST = '127.0.0.1';

/** Errors a developer can act on; `code` is stable. */
export class KafkaHarnessError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'KafkaHarnessError';
    this.code = code;
  }
}

/** The Kafka version pinned in scripts/kafka/pom.xml. */
export function kafkaVersion(): string {
  const pom = fs.readFileSync(POM_PATH, 'utf8');
  const m = pom.match(/<kafka\.version>\s*([^<\s]+)\s*<\/kafka\.version>/);
  if (!m) throw new KafkaHarnessError('KEDGE_KAFKA_POM', `no <kafka.version> in ${POM_PATH}`);
  return m[1];
}

/** Where the jars live: $KEDGE_KAFKA_CACHE, or <repo>/.cache/kafka-<version>/libs. */
export function kafkaLibsDir(): string {
  const env = process.env.KEDGE_KAFKA_CACHE;
  return env
    ? path.resolve(env)
    : path.join(REPO_ROOT, '.cache', `kafka-${kafkaVersion()}`, 'libs');
}

/** The Kafka distribution's own command-line tools (the console consumer): a pom of their own, a folder of their own, never on a broker's classpath. */
export const TOOLS_POM_PATH = path.join(REPO_ROOT, 'scripts/kafka/tools-pom.xml');

/** Where the tools' jars live: beside the broker's, in <repo>/.cache/kafka-<version>/tools. */
export function kafkaToolsDir(): string {
  return path.join(path.dirname(kafkaLibsDir()), 'tools');
}

function pomHash(pom: string): string {
  return createHash('sha256').update(fs.readFileSync(pom)).digest('hex');
}

function jarsComplete(dir: string, hash: string, sentinel: string): boolean {
  try {
    return (
      fs.readFileSync(path.join(dir, MARKER), 'utf8').trim() === hash &&
      fs.existsSync(path.join(dir, sentinel))
    );
  } catch {
    return false;
  }
}

function runCapture(
  cmd: string,
  args: string[],
  opts: { cwd?: string; timeoutMs?: number } = {},
): Promise<{ code: number | null; output: string; error?: NodeJS.ErrnoException }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = opts.timeoutMs
      ? setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs)
      : undefined;
    child.once('error', (error: NodeJS.ErrnoException) => {
      if (timer) clearTimeout(timer);
      resolve({ code: null, output, error });
    });
    child.once('close', (code) => {
      if (timer) clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

const tailOf = (s: string, n: number): string => s.trimEnd().split('\n').slice(-n).join('\n');

/**
 * Makes sure the Kafka jars pinned by scripts/kafka/pom.xml are in the cache folder and returns
 * it. Runs Maven only when the folder is missing, incomplete or was filled from another pom
 * (a marker file holds the pom's hash, written after a successful fetch).
 */
export async function ensureKafkaJars(opts: { log?: (msg: string) => void } = {}): Promise<string> {
  const version = kafkaVersion();
  return ensureJars(
    POM_PATH,
    kafkaLibsDir(),
    `kafka_2.13-${version}.jar`,
    `Kafka ${version}`,
    opts,
  );
}

/**
 * The same for the Kafka distribution's tools (scripts/kafka/tools-pom.xml): the console
 * consumer, an independent reader that speaks TLS and SCRAM (Debian's kcat cannot SCRAM
 * to Kafka 4). Checks that the tools pom pins the broker's Kafka version.
 */
export async function ensureKafkaToolsJars(
  opts: { log?: (msg: string) => void } = {},
): Promise<string> {
  const version = kafkaVersion();
  const pom = fs.readFileSync(TOOLS_POM_PATH, 'utf8');
  if (!pom.includes(`<kafka.version>${version}</kafka.version>`))
    throw new KafkaHarnessError(
      'KEDGE_KAFKA_POM',
      `${TOOLS_POM_PATH} must pin <kafka.version>${version}</kafka.version>, as ${POM_PATH} does`,
    );
  return ensureJars(
    TOOLS_POM_PATH,
    kafkaToolsDir(),
    `kafka-tools-${version}.jar`,
    `Kafka ${version} tools`,
    opts,
  );
}

async function ensureJars(
  pomPath: string,
  dir: string,
  sentinel: string,
  what: string,
  opts: { log?: (msg: string) => void },
): Promise<string> {
  const hash = pomHash(pomPath);
  if (jarsComplete(dir, hash, sentinel)) return dir;

  opts.log?.(`kedge: fetching ${what} jars with Maven into ${dir}`);
  await fsp.mkdir(path.dirname(dir), { recursive: true });
  // Fetch into a fresh sibling folder and swap it in, so a half-done fetch (or an older
  // version's jars) never ends up on a broker's classpath.
  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    const res = await runCapture('mvn', [
      '-q',
      '-B',
      '-f',
      pomPath,
      'dependency:copy-dependencies',
      `-DoutputDirectory=${tmp}`,
      '-DincludeScope=runtime',
    ]);
    if (res.error?.code === 'ENOENT') {
      throw new KafkaHarnessError(
        'KEDGE_KAFKA_NO_MAVEN',
        'kedge: Maven (mvn) is not installed; it fetches the Kafka broker jars from Maven Central. ' +
          'Install it (apt-get install -y maven) or set KEDGE_KAFKA_CACHE to a folder filled by ensureKafkaJars on a machine that has it.',
      );
    }
    if (res.error)
      throw new KafkaHarnessError(
        'KEDGE_KAFKA_FETCH',
        `kedge: could not run mvn: ${res.error.message}`,
      );
    if (res.code !== 0 || !fs.existsSync(path.join(tmp, sentinel))) {
      throw new KafkaHarnessError(
        'KEDGE_KAFKA_FETCH',
        `kedge: mvn failed to fetch ${what} jars (exit ${res.code}):\n${tailOf(res.output, 40)}`,
      );
    }
    await fsp.writeFile(path.join(tmp, MARKER), hash + '\n');
    if (jarsComplete(dir, hash, sentinel)) return dir; // another process won the race
    const old = `${dir}.old-${process.pid}-${randomBytes(4).toString('hex')}`;
    if (fs.existsSync(dir)) await fsp.rename(dir, old);
    try {
      await fsp.rename(tmp, dir);
    } catch (e) {
      if (!jarsComplete(dir, hash, sentinel)) throw e;
    }
    await fsp.rm(old, { recursive: true, force: true });
    return dir;
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Process bookkeeping: no broker may outlive the process that started it.

const liveChildren = new Set<ChildProcess>();
/** Temp cluster folders of running clusters, removed on exit too. */
const ownedDirs = new Set<string>();
let hooksInstalled = false;

/** Synchronous, for 'exit' and signal handlers: SIGKILL every JVM, remove temp folders. */
function cleanupNow(): void {
  for (const c of liveChildren) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
  for (const d of ownedDirs) {
    try {
      fs.rmSync(d, { recursive: true, force: true, maxRetries: 2 });
    } catch {
      /* swept by the next startKafka */
    }
  }
}

let signalsToCaller = false;
/**
 * For programs that stop the cluster themselves on a signal (dev.ts: Ctrl-C stops cleanly).
 * By default a SIGINT/SIGTERM/SIGHUP SIGKILLs every broker of this process at once.
 */
export function leaveSignalsToCaller(): void {
  signalsToCaller = true;
}

function installProcessHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', cleanupNow);
  const sigs = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (signalsToCaller) return;
    cleanupNow();
    // Step aside and raise it again: whoever else listens (tap's signal-exit) gets it as if
    // we had never been there, and with no one else the default action ends the process.
    for (const s of sigs) process.removeListener(s, onSignal);
    process.kill(process.pid, sig);
  };
  for (const sig of sigs) process.on(sig, onSignal);
}

const OWNER_FILE = 'kedge-owner.pid';
/**
 * Removes temp cluster folders left by processes that died without cleaning up (SIGKILL),
 * so a reused CI machine does not fill /tmp.
 */
function sweepStaleDirs(): void {
  let entries: string[];
  try {
    entries = fs.readdirSync(os.tmpdir()).filter((e) => e.startsWith('kedge-kafka-'));
  } catch {
    return;
  }
  for (const e of entries) {
    const dir = path.join(os.tmpdir(), e);
    try {
      const pid = Number(fs.readFileSync(path.join(dir, OWNER_FILE), 'utf8'));
      if (pid > 0 && pid !== process.pid && !fs.existsSync(`/proc/${pid}`))
        fs.rmSync(dir, { recursive: true, force: true });
    } catch {
      /* not ours, or in use */
    }
  }
}

let pdeathsigPrefix: string[] | undefined;
/**
 * `setpriv --pdeathsig KILL` (util-linux) makes the kernel SIGKILL the JVM when this process
 * dies, even by SIGKILL, when no exit handler runs. Falls back to plain java without it.
 */
function deathSignalPrefix(): string[] {
  if (pdeathsigPrefix === undefined) {
    const r = spawnSync('setpriv', ['--pdeathsig', 'KILL', 'true'], { stdio: 'ignore' });
    pdeathsigPrefix = r.status === 0 ? ['setpriv', '--pdeathsig', 'KILL'] : [];
  }
  return pdeathsigPrefix;
}

/** n distinct free loopback ports, none of them in `avoid`. */
async function freePorts(n: number, avoid: ReadonlySet<number> = new Set()): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    const ports: number[] = [];
    while (ports.length < n) {
      const srv = net.createServer();
      servers.push(srv);
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen({ port: 0, host: HOST, exclusive: true }, () => resolve());
      });
      const port = (srv.address() as net.AddressInfo).port;
      if (!avoid.has(port)) ports.push(port);
    }
    return ports;
  } finally {
    await Promise.all(
      servers.map((s) => new Promise<void>((r) => (s.listening ? s.close(() => r()) : r()))),
    );
  }
}

/** Kafka cluster ids are 16 random bytes in URL-safe base64 without padding (not starting with '-'). */
function newClusterId(): string {
  for (;;) {
    const id = randomBytes(16).toString('base64url');
    if (!id.startsWith('-')) return id;
  }
}

/** The java binary's real path (through PATH and symlinks), or null if it is not found. */
function resolveJava(java: string): string | null {
  const candidates = java.includes('/')
    ? [java]
    : (process.env.PATH ?? '')
        .split(':')
        .filter(Boolean)
        .map((d) => path.join(d, java));
  for (const c of candidates) {
    try {
      fs.accessSync(c, fs.constants.X_OK);
      return fs.realpathSync(c);
    } catch {
      /* next */
    }
  }
  return null;
}

const cdsClaimed = new Set<string>();
/**
 * JVM class-data sharing: the first run of a role (broker, format) records the classes it
 * loaded into an archive (-XX:ArchiveClassesAtExit, written when the JVM exits cleanly), later
 * runs map it (-XX:SharedArchiveFile). On a loaded 2-core machine this cut broker start-up
 * from ~30 s to ~8 s. The archive is keyed by the JDK binary and the jar folder; a stale one
 * only costs a warning in stdout.log. KEDGE_KAFKA_CDS=0 turns it off.
 */
function cdsArgs(
  java: string,
  libs: string,
  role: string,
): { args: string[]; onExit: (signal: NodeJS.Signals | null) => void } {
  const none = { args: [], onExit: () => {} };
  if (process.env.KEDGE_KAFKA_CDS === '0') return none;
  const real = resolveJava(java);
  if (!real) return none;
  let stamp = '';
  try {
    stamp = String(fs.statSync(real).mtimeMs);
  } catch {
    return none;
  }
  const key = createHash('sha256')
    .update([real, stamp, libs, role].join('\0'))
    .digest('hex')
    .slice(0, 16);
  const dir = path.join(path.dirname(libs), 'cds');
  const file = path.join(dir, `${role}-${key}.jsa`);
  if (fs.existsSync(file)) return { args: [`-XX:SharedArchiveFile=${file}`], onExit: () => {} };
  if (cdsClaimed.has(file)) return none; // another JVM of ours is recording it
  cdsClaimed.add(file);
  try {
    fs.mkdirSync(dir, { recursive: true });
    for (const e of fs.readdirSync(dir)) {
      const m = e.match(/\.tmp-(\d+)-/); // left by a process killed while recording
      if (m && !fs.existsSync(`/proc/${m[1]}`)) fs.rmSync(path.join(dir, e), { force: true });
    }
  } catch {
    return none;
  }
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  return {
    args: [`-XX:ArchiveClassesAtExit=${tmp}`],
    onExit: (signal) => {
      cdsClaimed.delete(file);
      try {
        // SIGKILL may have cut the dump short; only a clean exit leaves a whole archive.
        if (signal !== 'SIGKILL' && fs.statSync(tmp).size > 1 << 20) fs.renameSync(tmp, file);
        else fs.rmSync(tmp, { force: true });
      } catch {
        fs.rmSync(tmp, { force: true });
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------

export interface NodeInfo {
  id: number;
  host: string;
  port: number;
  controllerPort: number;
  dir: string;
}

/** An extra listener on every node, e.g. SASL_SSL for the TLS/SASL tests. */
export interface ExtraListener {
  /** Listener name, upper case, not PLAINTEXT or CONTROLLER (e.g. "SASL_SSL", "EXTERNAL"). */
  name: string;
  /** Security protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL. */
  protocol: string;
  /** Default: a free port. */
  port?: number;
  /** Extra server.properties lines, written verbatim (e.g. `listener.name.sasl_ssl.…`). */
  props?: Record<string, string>;
}

export type ScramMechanism = 'SCRAM-SHA-256' | 'SCRAM-SHA-512';

export interface ScramUser {
  mechanism: ScramMechanism;
  name: string;
  password: string;
}

/**
 * Secured listeners, each node: `SSL` (TLS, server authentication only), `MTLS` (TLS, client
 * certificate required, signed by `tls.caFile`) and `SASL_SSL` (TLS plus SASL PLAIN and/or
 * SCRAM-SHA-256/512). PLAINTEXT stays for inter-broker traffic, `bootstrap` and the harness.
 * Address them with cluster.bootstrapFor(SECURE_LISTENERS.sasl) etc.
 */
export interface KafkaSecurityOptions {
  /**
   * PEM files. Kafka reads the key as PKCS#8, unencrypted, or encrypted with `keyPassword` (Java 17
   * cannot decrypt openssl 3's default PBES2 encryption: "PBES2 SecretKeyFactory not available").
   */
  tls: { certFile: string; keyFile: string; keyPassword?: string; caFile: string };
  /** SASL/PLAIN users (name → password), kept in the listener's JAAS config. */
  plainUsers?: Record<string, string>;
  /** SCRAM credentials, written into the cluster metadata when the storage is formatted. */
  scramUsers?: ScramUser[];
}

export const SECURE_LISTENERS = { tls: 'SSL', mtls: 'MTLS', sasl: 'SASL_SSL' } as const;

/** `kafka-storage format --add-scram` arguments for these users (the StorageTool syntax). */
export function scramFormatArgs(users: readonly ScramUser[]): string[] {
  const args: string[] = [];
  for (const u of users) {
    // The tool's [name=…,password=…] syntax has no escaping for these.
    for (const [what, v] of [
      ['name', u.name],
      ['password', u.password],
    ] as const) {
      if (!/^[A-Za-z0-9._~!@#%^*+-]+$/.test(v)) {
        throw new KafkaHarnessError(
          'KEDGE_KAFKA_OPTS',
          `SCRAM user ${what} ${JSON.stringify(v)} has characters the format tool cannot take (use letters, digits and ._~!@#%^*+-)`,
        );
      }
    }
    args.push('--add-scram', `${u.mechanism}=[name=${u.name},password=${u.password}]`);
  }
  return args;
}

/** JAAS strings are double-quoted; a quote or backslash inside would end or escape them. */
function jaasQuote(v: string): string {
  if (/["\\\n]/.test(v))
    throw new KafkaHarnessError(
      'KEDGE_KAFKA_OPTS',
      `SASL/PLAIN credential ${JSON.stringify(v)} contains a quote, backslash or newline`,
    );
  return `"${v}"`;
}

/** The listeners and their server.properties for `security`; `keystore` is the combined PEM key store file. */
export function securityListeners(sec: KafkaSecurityOptions, keystore: string): ExtraListener[] {
  const tlsProps: Record<string, string> = {
    'ssl.keystore.type': 'PEM',
    'ssl.keystore.location': keystore,
    'ssl.truststore.type': 'PEM',
    'ssl.truststore.location': sec.tls.caFile,
    ...(sec.tls.keyPassword ? { 'ssl.key.password': sec.tls.keyPassword } : {}),
  };
  const mechanisms: string[] = [];
  const sasl: Record<string, string> = {};
  const plain = Object.entries(sec.plainUsers ?? {});
  if (plain.length > 0) {
    mechanisms.push('PLAIN');
    const users = plain.map(([name, pw]) => `user_${name}=${jaasQuote(pw)}`).join(' ');
    sasl['listener.name.sasl_ssl.plain.sasl.jaas.config'] =
      `org.apache.kafka.common.security.plain.PlainLoginModule required ${users};`;
  }
  for (const m of ['SCRAM-SHA-256', 'SCRAM-SHA-512'] as const) {
    if (!(sec.scramUsers ?? []).some((u) => u.mechanism === m)) continue;
    mechanisms.push(m);
    sasl[`listener.name.sasl_ssl.${m.toLowerCase()}.sasl.jaas.config`] =
      'org.apache.kafka.common.security.scram.ScramLoginModule required;';
  }
  const listeners: ExtraListener[] = [
    { name: SECURE_LISTENERS.tls, protocol: 'SSL', props: tlsProps },
    {
      name: SECURE_LISTENERS.mtls,
      protocol: 'SSL',
      props: { 'listener.name.mtls.ssl.client.auth': 'required' },
    },
  ];
  if (mechanisms.length > 0) {
    listeners.push({
      name: SECURE_LISTENERS.sasl,
      protocol: 'SASL_SSL',
      props: { 'listener.name.sasl_ssl.sasl.enabled.mechanisms': mechanisms.join(','), ...sasl },
    });
  }
  return listeners;
}

export interface StartKafkaOptions {
  brokers?: 1 | 3;
  /** Base folder for the node folders; default a new temp folder, removed by stop(). A given folder is kept. */
  dir?: string;
  /** server.properties entries for every node, applied last (they override the defaults). */
  extraProps?: Record<string, string>;
  /** Extra listeners per node (the PLAINTEXT one stays, for inter-broker traffic and `bootstrap`). */
  listenersFn?: (node: NodeInfo) => ExtraListener[];
  /** Extra `kafka.tools.StorageTool format` arguments, e.g. `['--add-scram', 'SCRAM-SHA-256=[name=u,password=p]']`. */
  formatArgs?: string[];
  /** TLS and SASL listeners (SSL, MTLS, SASL_SSL) on every node, and SCRAM users; see KafkaSecurityOptions. */
  security?: KafkaSecurityOptions;
  /** JVM max heap; default 512m for one broker, 384m per node for three. */
  heap?: string;
  /**
   * 'fast-start' (default) runs the JVM with the C1 compiler only (-XX:TieredStopAtLevel=1):
   * the broker is up in a fraction of the time on 2 cores, at some cost in peak throughput.
   * Benchmarks that measure Kafka throughput should ask for 'full'.
   */
  jit?: 'fast-start' | 'full';
  jvmArgs?: string[];
  /** How long to wait for the cluster to answer; default 120 s (1 broker) or 180 s (3): a loaded 2-core machine is slow. */
  startTimeoutMs?: number;
}

export interface KafkaNode extends NodeInfo {
  /** pid of the JVM (the latest one, after startNode); null before the first start. */
  pid: number | null;
  running: boolean;
  /** Port per listener name: PLAINTEXT, CONTROLLER and the extra ones. */
  listeners: Record<string, number>;
}

export interface KafkaCluster {
  /** "127.0.0.1:port[,127.0.0.1:port...]" of the PLAINTEXT listeners. */
  readonly bootstrap: string;
  readonly nodes: KafkaNode[];
  readonly clusterId: string;
  readonly dir: string;
  readonly version: string;
  /** Bootstrap string of an extra listener, e.g. bootstrapFor('SASL_SSL'). */
  bootstrapFor(listener: string): string;
  /** SIGTERM (controlled shutdown) and wait; SIGKILL after graceMs (default 60 s). */
  stopNode(id: number, graceMs?: number): Promise<void>;
  /** SIGKILL and wait for the exit. */
  killNode(id: number): Promise<void>;
  /** Start a stopped node again (same ports and data) and wait until it serves. */
  startNode(id: number): Promise<void>;
  /** Stop every node (SIGTERM, SIGKILL after 15 s) and remove the temp folder. */
  stop(): Promise<void>;
  /** Last n lines (default 50) of the broker log of one node, or of every node. */
  logTail(n?: number, id?: number): string;
}

function propsText(props: Record<string, string>): string {
  return (
    Object.entries(props)
      .map(([k, v]) => `${k}=${v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`)
      .join('\n') + '\n'
  );
}

function log4jConfig(logFile: string): string {
  return `<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="${logFile}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
`;
}

function readTail(file: string, n: number): string {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const len = Math.min(size, 256 * 1024);
      const buf = Buffer.alloc(len);
      fs.readSync(fd, buf, 0, len, size - len);
      return tailOf(buf.toString('utf8'), n);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return '';
  }
}

interface NodeState {
  node: KafkaNode;
  child: ChildProcess | null;
  exited: Promise<void>;
}

/**
 * Starts a KRaft cluster of 1 or 3 combined broker+controller nodes on loopback and waits until
 * every node answers a metadata request listing all brokers.
 */
export async function startKafka(opts: StartKafkaOptions = {}): Promise<KafkaCluster> {
  // A port picked as free can be taken by someone else before the JVM binds it: try again.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startKafkaOnce(opts);
    } catch (e) {
      const bindRace =
        e instanceof KafkaHarnessError &&
        e.code === 'KEDGE_KAFKA_START' &&
        /BindException|Address already in use/.test(e.message);
      if (!bindRace || attempt >= 3) throw e;
    }
  }
}

async function startKafkaOnce(opts: StartKafkaOptions): Promise<KafkaCluster> {
  const count = opts.brokers ?? 1;
  if (count !== 1 && count !== 3)
    throw new KafkaHarnessError('KEDGE_KAFKA_OPTS', `brokers must be 1 or 3, not ${count}`);
  const libs = await ensureKafkaJars();
  const version = kafkaVersion();
  const java = process.env.JAVA_HOME ? path.join(process.env.JAVA_HOME, 'bin', 'java') : 'java';
  const ownDir = opts.dir === undefined;
  installProcessHooks();
  if (ownDir) sweepStaleDirs();
  const base = opts.dir
    ? path.resolve(opts.dir)
    : await fsp.mkdtemp(path.join(os.tmpdir(), 'kedge-kafka-'));
  await fsp.mkdir(base, { recursive: true });
  if (ownDir) {
    await fsp.writeFile(path.join(base, OWNER_FILE), String(process.pid));
    if (!process.env.KEDGE_KAFKA_KEEP) ownedDirs.add(base);
  }
  const removeBase = async (): Promise<void> => {
    ownedDirs.delete(base);
    if (ownDir && !process.env.KEDGE_KAFKA_KEEP)
      await fsp.rm(base, { recursive: true, force: true });
  };
  const heap = opts.heap ?? (count === 1 ? '512m' : '384m');
  const startTimeoutMs = opts.startTimeoutMs ?? (count === 1 ? 120_000 : 180_000);
  const rf = String(count === 1 ? 1 : 3);
  const minIsr = String(count === 1 ? 1 : 2);

  const jitArgs = opts.jit === 'full' ? [] : ['-XX:TieredStopAtLevel=1'];
  const jvmBase = (dir: string): string[] => [
    `-Dlog4j2.configurationFile=${path.join(dir, 'log4j2.xml')}`,
    `-Dkafka.logs.dir=${dir}`,
    '-Djava.awt.headless=true',
    '-cp',
    path.join(libs, '*'),
  ];

  let clusterId = newClusterId();
  const states: NodeState[] = [];
  // Config and format; on any failure remove the folder again.
  try {
    const ports = await freePorts(count * 2);
    const taken = new Set(ports);
    const infos: NodeInfo[] = [];
    for (let i = 0; i < count; i++) {
      const id = i + 1;
      infos.push({
        id,
        host: HOST,
        port: ports[2 * i],
        controllerPort: ports[2 * i + 1],
        dir: path.join(base, `node-${id}`),
      });
    }
    const voters = infos.map((n) => `${n.id}@${HOST}:${n.controllerPort}`).join(',');

    for (const info of infos) {
      const extra = [...(opts.listenersFn?.(info) ?? [])];
      if (opts.security) {
        // One PEM file holding the key and the certificate chain: Kafka's file-based PEM key store.
        const keystore = path.join(info.dir, 'keystore.pem');
        await fsp.mkdir(info.dir, { recursive: true });
        await fsp.writeFile(
          keystore,
          fs.readFileSync(opts.security.tls.keyFile, 'utf8').trimEnd() +
            '\n' +
            fs.readFileSync(opts.security.tls.certFile, 'utf8'),
          { mode: 0o600 },
        );
        extra.push(...securityListeners(opts.security, keystore));
      }
      const needPorts = extra.filter((l) => l.port === undefined).length;
      const extraPorts = needPorts ? await freePorts(needPorts, taken) : [];
      for (const p of extraPorts) taken.add(p);
      const listeners: Record<string, number> = {
        PLAINTEXT: info.port,
        CONTROLLER: info.controllerPort,
      };
      const listen = [
        `PLAINTEXT://${HOST}:${info.port}`,
        `CONTROLLER://${HOST}:${info.controllerPort}`,
      ];
      const advertised = [`PLAINTEXT://${HOST}:${info.port}`];
      const protoMap = ['PLAINTEXT:PLAINTEXT', 'CONTROLLER:PLAINTEXT'];
      let listenerProps: Record<string, string> = {};
      for (const l of extra) {
        const name = l.name.toUpperCase();
        if (name in listeners)
          throw new KafkaHarnessError('KEDGE_KAFKA_OPTS', `listener name ${name} is taken`);
        const port = l.port ?? extraPorts.shift()!;
        listeners[name] = port;
        listen.push(`${name}://${HOST}:${port}`);
        advertised.push(`${name}://${HOST}:${port}`);
        protoMap.push(`${name}:${l.protocol}`);
        listenerProps = { ...listenerProps, ...l.props };
      }
      const props: Record<string, string> = {
        'process.roles': 'broker,controller',
        'node.id': String(info.id),
        'controller.quorum.voters': voters,
        listeners: listen.join(','),
        'advertised.listeners': advertised.join(','),
        'controller.listener.names': 'CONTROLLER',
        'inter.broker.listener.name': 'PLAINTEXT',
        'listener.security.protocol.map': protoMap.join(','),
        'log.dirs': path.join(info.dir, 'data'),
        'num.partitions': '3',
        'default.replication.factor': rf,
        'min.insync.replicas': minIsr,
        'offsets.topic.replication.factor': rf,
        'offsets.topic.num.partitions': '10',
        'transaction.state.log.replication.factor': rf,
        'transaction.state.log.min.isr': minIsr,
        'transaction.state.log.num.partitions': '10',
        'share.coordinator.state.topic.replication.factor': rf,
        'share.coordinator.state.topic.min.isr': minIsr,
        'unclean.leader.election.enable': 'false',
        'auto.create.topics.enable': 'true',
        'group.initial.rebalance.delay.ms': '0',
        // A node killed with SIGKILL can register again (and its partitions fail over) only once
        // its old session expires: 5 s instead of the default 9 s keeps restart tests short.
        'broker.session.timeout.ms': '5000',
        'broker.heartbeat.interval.ms': '1000',
        'num.network.threads': '2',
        'num.io.threads': '4',
        ...listenerProps,
        ...opts.extraProps,
      };
      await fsp.mkdir(info.dir, { recursive: true });
      await fsp.writeFile(path.join(info.dir, 'server.properties'), propsText(props));
      await fsp.writeFile(
        path.join(info.dir, 'log4j2.xml'),
        log4jConfig(path.join(info.dir, 'server.log')),
      );
      const node: KafkaNode = { ...info, pid: null, running: false, listeners };
      states.push({ node, child: null, exited: Promise.resolve() });
    }

    // Reuse formatted data in a caller-given folder (dev broker with --dir); format otherwise.
    const existing = states
      .map((s) => path.join(s.node.dir, 'data', 'meta.properties'))
      .filter((f) => fs.existsSync(f));
    if (existing.length > 0) {
      const m = fs.readFileSync(existing[0], 'utf8').match(/^cluster\.id=(.+)$/m);
      if (m) clusterId = m[1].trim();
    }
    await Promise.all(
      states.map(async ({ node }) => {
        if (fs.existsSync(path.join(node.dir, 'data', 'meta.properties'))) return;
        const cds = cdsArgs(java, libs, 'format');
        const res = await runCapture(
          java,
          [
            ...jitArgs,
            ...cds.args,
            ...jvmBase(node.dir),
            'kafka.tools.StorageTool',
            'format',
            '-t',
            clusterId,
            '-c',
            path.join(node.dir, 'server.properties'),
            ...(opts.formatArgs ?? []),
            ...scramFormatArgs(opts.security?.scramUsers ?? []),
          ],
          { timeoutMs: 120_000 },
        );
        cds.onExit(res.code === null ? 'SIGKILL' : null);
        await fsp.writeFile(path.join(node.dir, 'format.log'), res.output);
        if (res.error?.code === 'ENOENT') {
          throw new KafkaHarnessError(
            'KEDGE_KAFKA_NO_JAVA',
            `kedge: ${java} not found; Kafka needs Java 17+ (apt-get install -y openjdk-17-jre-headless)`,
          );
        }
        if (res.code !== 0) {
          throw new KafkaHarnessError(
            'KEDGE_KAFKA_FORMAT',
            `kedge: formatting Kafka node ${node.id} failed (exit ${res.code}):\n${tailOf(res.output, 30)}`,
          );
        }
      }),
    );
  } catch (e) {
    await removeBase();
    throw e;
  }

  const stateOf = (id: number): NodeState => {
    const s = states.find((x) => x.node.id === id);
    if (!s)
      throw new KafkaHarnessError(
        'KEDGE_KAFKA_OPTS',
        `no Kafka node ${id} (nodes: ${states.map((x) => x.node.id).join(', ')})`,
      );
    return s;
  };

  const launch = (s: NodeState): void => {
    if (s.child)
      throw new KafkaHarnessError(
        'KEDGE_KAFKA_STATE',
        `Kafka node ${s.node.id} is already running`,
      );
    installProcessHooks();
    const out = fs.openSync(path.join(s.node.dir, 'stdout.log'), 'a');
    const cds = cdsArgs(java, libs, 'broker');
    const args = [
      ...deathSignalPrefix(),
      java,
      `-Xmx${heap}`,
      '-Xms128m',
      '-XX:+UseG1GC',
      '-XX:MaxGCPauseMillis=20',
      '-XX:+ExitOnOutOfMemoryError',
      ...jitArgs,
      ...cds.args,
      ...(opts.jvmArgs ?? []),
      ...jvmBase(s.node.dir),
      'kafka.Kafka',
      path.join(s.node.dir, 'server.properties'),
    ];
    // Not detached: the JVM stays in our process group, so a Ctrl-C in the terminal reaches it too.
    const child = spawn(args[0], args.slice(1), { stdio: ['ignore', out, out], cwd: s.node.dir });
    fs.closeSync(out);
    s.child = child;
    s.node.pid = child.pid ?? null;
    s.node.running = true;
    liveChildren.add(child);
    s.exited = new Promise<void>((resolve) => {
      const done = (_code?: number | null, signal?: NodeJS.Signals | null): void => {
        liveChildren.delete(child);
        cds.onExit(signal ?? null);
        if (s.child === child) {
          s.child = null;
          s.node.running = false;
        }
        resolve();
      };
      child.once('exit', done);
      child.once('error', () => done(null, 'SIGKILL'));
    });
  };

  const logTail = (n = 50, id?: number): string => {
    const pick = id === undefined ? states : [stateOf(id)];
    return pick
      .map(({ node }) => {
        const parts = [
          `--- kafka node ${node.id} (${node.dir}/server.log) ---`,
          readTail(path.join(node.dir, 'server.log'), n),
        ];
        const out = readTail(path.join(node.dir, 'stdout.log'), Math.min(n, 20));
        if (out) parts.push(`--- kafka node ${node.id} stdout/stderr ---`, out);
        return parts.join('\n');
      })
      .join('\n');
  };

  /** Each of `ids` answers a metadata request that lists every broker in `want`. */
  const waitServing = async (ids: number[], want: number[], timeoutMs: number): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    let lastErr = '';
    const pending = new Set(ids);
    while (pending.size > 0) {
      for (const id of [...pending]) {
        const s = stateOf(id);
        if (!s.child) {
          throw new KafkaHarnessError(
            'KEDGE_KAFKA_START',
            `kedge: Kafka node ${id} exited during startup\n${logTail(40, id)}`,
          );
        }
        const admin = new Kafka({
          clientId: 'kedge-harness',
          brokers: [`${HOST}:${s.node.port}`],
          logLevel: logLevel.NOTHING,
          connectionTimeout: 1000,
          requestTimeout: 3000,
          retry: { retries: 0 },
        }).admin();
        try {
          await admin.connect();
          const c = await admin.describeCluster();
          const have = new Set(c.brokers.map((b) => b.nodeId));
          if (want.every((w) => have.has(w))) pending.delete(id);
          else
            lastErr = `node ${id} sees brokers [${[...have].join(',')}], want [${want.join(',')}]`;
        } catch (e) {
          lastErr = `node ${id}: ${(e as Error).message}`;
        } finally {
          await admin.disconnect().catch(() => {});
        }
      }
      if (pending.size === 0) break;
      if (Date.now() > deadline) {
        throw new KafkaHarnessError(
          'KEDGE_KAFKA_START',
          `kedge: Kafka did not become ready within ${timeoutMs} ms (${lastErr})\n${logTail(40)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  };

  const signalAndWait = async (s: NodeState, graceMs: number): Promise<void> => {
    const child = s.child;
    if (!child) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await s.exited;
    clearTimeout(timer);
  };

  const allIds = states.map((s) => s.node.id);
  let stopped = false;
  const stopAll = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    // In parallel: stopping KRaft nodes one by one can leave the last ones waiting for a quorum.
    await Promise.all(states.map((s) => signalAndWait(s, 15_000)));
    await removeBase();
  };

  try {
    for (const s of states) launch(s);
    await waitServing(allIds, allIds, startTimeoutMs);
  } catch (e) {
    await Promise.all(
      states.map((s) => {
        s.child?.kill('SIGKILL');
        return s.exited;
      }),
    );
    await removeBase();
    throw e;
  }

  const bootstrapFor = (listener: string): string =>
    states
      .map(({ node }) => {
        const p = node.listeners[listener.toUpperCase()];
        if (p === undefined)
          throw new KafkaHarnessError(
            'KEDGE_KAFKA_OPTS',
            `no listener ${listener} on node ${node.id}`,
          );
        return `${HOST}:${p}`;
      })
      .join(',');

  return {
    bootstrap: bootstrapFor('PLAINTEXT'),
    nodes: states.map((s) => s.node),
    clusterId,
    dir: base,
    version,
    bootstrapFor,
    async stopNode(id, graceMs = 60_000) {
      await signalAndWait(stateOf(id), graceMs);
    },
    async killNode(id) {
      const s = stateOf(id);
      s.child?.kill('SIGKILL');
      await s.exited;
    },
    async startNode(id) {
      if (stopped) throw new KafkaHarnessError('KEDGE_KAFKA_STATE', 'cluster was stopped');
      const s = stateOf(id);
      launch(s);
      // Ask the restarted node itself: the others may still list its old registration.
      await waitServing([id], [id], startTimeoutMs);
    },
    stop: stopAll,
    logTail,
  };
}

/**
 * Creates a topic and waits for its partition leaders. replicationFactor defaults to the
 * number of brokers (at most 3). Resolves false if the topic already existed.
 */
export async function createTopic(
  bootstrap: string,
  topic: string,
  partitions: number,
  replicationFactor?: number,
  configs?: Record<string, string>,
): Promise<boolean> {
  const admin = new Kafka({
    clientId: 'kedge-harness',
    brokers: bootstrap.split(','),
    logLevel: logLevel.NOTHING,
  }).admin();
  await admin.connect();
  try {
    const rf = replicationFactor ?? Math.min(3, (await admin.describeCluster()).brokers.length);
    return await admin.createTopics({
      waitForLeaders: true,
      topics: [
        {
          topic,
          numPartitions: partitions,
          replicationFactor: rf,
          configEntries: Object.entries(configs ?? {}).map(([name, value]) => ({ name, value })),
        },
      ],
    });
  } finally {
    await admin.disconnect();
  }
}
