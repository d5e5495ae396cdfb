/**
 * A real Mosquitto (the Debian package) for tests: its own config file, a free
 * loopback port, its own persistence folder (so persistent sessions survive a
 * Mosquitto restart too). Never the broker that may already run on 1883.
 * Killed when the test process exits, whatever happens.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { freePort } from './ports.ts';
import { spawnProc, type Proc } from './proc.ts';

export interface MosquittoOptions {
  /** Extra lines for mosquitto.conf (e.g. `max_inflight_messages 100`). */
  extraConfig?: string[];
  /** Default: a free port. */
  port?: number;
  /** Mosquitto binary; default `mosquitto` from PATH, else /usr/sbin/mosquitto. */
  bin?: string;
  /** Keep Mosquitto's own queue limits (max_queued_messages 1000) instead of raising them. */
  stockQueue?: boolean;
}

// Folders removed when the test process exits (the process itself is SIGKILLed by proc.ts then).
const dirs = new Set<string>();
process.once('exit', () => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

export class Mosquitto {
  readonly port: number;
  readonly url: string;
  /** Holds mosquitto.conf and the persistence folder. */
  readonly dir: string;
  private proc: Proc | null = null;
  private readonly bin: string;
  private readonly confPath: string;

  private constructor(port: number, dir: string, bin: string) {
    this.port = port;
    this.url = `mqtt://127.0.0.1:${port}`;
    this.dir = dir;
    this.bin = bin;
    this.confPath = join(dir, 'mosquitto.conf');
  }

  /** Writes the config and starts Mosquitto; resolves once it accepts TCP connections. */
  static async start(opts: MosquittoOptions = {}): Promise<Mosquitto> {
    const dir = mkdtempSync(join(tmpdir(), 'kedge-mosquitto-'));
    dirs.add(dir);
    const port = opts.port ?? (await freePort());
    const m = new Mosquitto(port, dir, opts.bin ?? findMosquitto());
    const conf = [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'persistence true',
      `persistence_location ${dir}/`,
      'autosave_interval 1',
      // Room for the messages queued for kedge's session while kedge is down (default 1000).
      ...(opts.stockQueue ? [] : ['max_queued_messages 1000000', 'max_queued_bytes 0']),
      // As root, Mosquitto 2 drops to user "mosquitto", which cannot write our temp dir.
      `user ${userInfo().username}`,
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      'log_type notice',
      'log_type information',
      ...(opts.extraConfig ?? []),
    ];
    writeFileSync(m.confPath, conf.join('\n') + '\n');
    await m.launch();
    return m;
  }

  get pid(): number {
    return this.proc?.pid ?? -1;
  }

  get running(): boolean {
    return this.proc !== null && this.proc.exitStatus() === null;
  }

  /** Mosquitto's own log so far. */
  output(): string {
    return this.proc?.output() ?? '';
  }

  /** SIGTERM (Mosquitto saves its persistence file), waits for the exit. */
  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (p) await p.stop(5_000);
  }

  /** SIGKILL: what was not autosaved is lost, like a power cut. */
  async kill(): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (p) await p.kill('SIGKILL');
  }

  /** Stops (gracefully unless `hard`) and starts again on the same port with the same persistence. */
  async restart(hard = false): Promise<void> {
    if (hard) await this.kill();
    else await this.stop();
    await this.launch();
  }

  /** Stops Mosquitto and deletes its folder. */
  async cleanup(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async launch(): Promise<void> {
    if (this.running) throw new Error('mosquitto already running');
    const p = spawnProc(this.bin, ['-c', this.confPath], { name: `mosquitto:${this.port}` });
    this.proc = p;
    try {
      await p.waitForLine(/mosquitto version .* running/, 10_000);
      await waitTcp(this.port, 10_000);
    } catch (err) {
      await p.kill('SIGKILL');
      this.proc = null;
      throw err;
    }
  }
}

function findMosquitto(): string {
  return process.env.MOSQUITTO_BIN ?? '/usr/sbin/mosquitto';
}

async function waitTcp(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline)
      throw new Error(`mosquitto: port ${port} not accepting connections after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
