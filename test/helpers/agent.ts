/**
 * Runs the real agent (agent/cli.ts, or a built executable) as a child process,
 * the way an operator does, and talks to it over its HTTP API.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { freePort } from './ports.ts';
import { request, Agent as UndiciAgent } from 'undici';
import { NODE_FLAGS } from '../../agent/runtime-flags.ts';

export const REPO = resolve(import.meta.dirname, '../..');

/** A free port on 127.0.0.1 (the shared helper in ports.ts). */
export const freeLoopbackPort = (): Promise<number> => freePort('127.0.0.1');

/**
 * The Kafka client the agents of a test run use: KEDGE_KAFKA_CLIENT of the test run
 * (`KEDGE_KAFKA_CLIENT=platformatic npx tap test/e2e-kafka.test.ts`), passed on to
 * every agent a test starts unless the test sets it itself; unset, the agent's default.
 */
export const TEST_KAFKA_CLIENT: Record<string, string> = process.env.KEDGE_KAFKA_CLIENT
  ? { KEDGE_KAFKA_CLIENT: process.env.KEDGE_KAFKA_CLIENT }
  : {};

export function tempDir(prefix = 'kedge-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export interface AgentProcOptions {
  env: Record<string, string>;
  /** Command to run instead of `node agent/cli.ts` (e.g. a built executable). */
  command?: string[];
  args?: string[];
}

export class AgentProc {
  readonly child: ChildProcess;
  readonly port: number;
  readonly base: string;
  readonly lines: string[] = [];
  readonly stderr: string[] = [];
  private exitP: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(child: ChildProcess, port: number) {
    this.child = child;
    this.port = port;
    this.base = `http://127.0.0.1:${port}`;
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        this.lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
    child.stderr!.on('data', (d: Buffer) => this.stderr.push(d.toString()));
    this.exitP = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  }

  static async start(o: AgentProcOptions & { port?: number }): Promise<AgentProc> {
    const port = o.port ?? (await freeLoopbackPort());
    const cmd = o.command ?? [process.execPath, ...NODE_FLAGS, join(REPO, 'agent/cli.ts')];
    const child = spawn(cmd[0], [...cmd.slice(1), 'run', ...(o.args ?? [])], {
      env: {
        PATH: process.env.PATH ?? '',
        KEDGE_HTTP_LISTEN: `127.0.0.1:${port}`,
        KEDGE_LOG_LEVEL: 'info',
        KEDGE_HEARTBEAT_TOPIC: '',
        ...TEST_KAFKA_CLIENT,
        ...o.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const a = new AgentProc(child, port);
    await a.waitReady();
    return a;
  }

  async waitReady(timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.child.exitCode !== null)
        throw new Error(
          `agent exited with ${this.child.exitCode}: ${this.stderr.join('')}\n${this.lines.slice(-20).join('\n')}`,
        );
      try {
        const r = await request(`${this.base}/readyz`, { headersTimeout: 1000 });
        await r.body.text();
        if (r.statusCode === 200) return;
      } catch {
        /* not up yet */
      }
      await sleep(50);
    }
    throw new Error(
      `agent not ready after ${timeoutMs} ms: ${this.stderr.join('')}\n${this.lines.slice(-20).join('\n')}`,
    );
  }

  async status(): Promise<any> {
    const r = await request(`${this.base}/v1/status`);
    return r.body.json();
  }

  /** POST /v1/forwarding/pause or /resume; throws unless the agent answers 200. */
  async forwarding(action: 'pause' | 'resume'): Promise<void> {
    const r = await request(`${this.base}/v1/forwarding/${action}`, { method: 'POST' });
    await r.body.dump();
    if (r.statusCode !== 200) throw new Error(`${action}: HTTP ${r.statusCode}`);
  }

  /** Waits until the backlog is empty (everything acknowledged by Kafka). */
  async waitDrained(timeoutMs: number): Promise<any> {
    const deadline = Date.now() + timeoutMs;
    let s: any;
    while (Date.now() < deadline) {
      s = await this.status();
      if (s.backlog.events === 0) return s;
      await sleep(200);
    }
    throw new Error(`backlog not drained after ${timeoutMs} ms: ${JSON.stringify(s)}`);
  }

  exited() {
    return this.exitP;
  }

  kill9(): Promise<unknown> {
    this.child.kill('SIGKILL');
    return this.exitP;
  }

  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }> {
    const t = Date.now();
    if (this.child.exitCode !== null || this.child.signalCode !== null)
      return { ...(await this.exitP), ms: 0 };
    this.child.kill('SIGTERM');
    const killer = setTimeout(() => this.child.kill('SIGKILL'), 15_000);
    const r = await this.exitP;
    clearTimeout(killer);
    return { ...r, ms: Date.now() - t };
  }
}

export interface PostResult {
  status: number;
  body: any;
  headers: Record<string, string | string[] | undefined>;
}

export const httpPool = new UndiciAgent({ connections: 128, pipelining: 1 });

export async function post(
  url: string,
  body: string | Buffer,
  contentType?: string,
  headers: Record<string, string> = {},
): Promise<PostResult> {
  const h: Record<string, string> = { ...headers };
  if (contentType) h['content-type'] = contentType;
  const r = await request(url, { method: 'POST', body, headers: h, dispatcher: httpPool });
  const text = await r.body.text();
  let parsed: any = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    /* not json */
  }
  return { status: r.statusCode, body: parsed, headers: r.headers };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
