/**
 * A real headless Chromium (the Debian package `chromium`), driven over the DevTools protocol
 * with Node's built-in WebSocket: open a page, evaluate script in it, emulate a phone screen,
 * take screenshots. One browser per test file; `close()` in teardown ends it and its children.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const CHROMIUM = process.env.KEDGE_TEST_CHROMIUM ?? '/usr/bin/chromium';

export class CdpError extends Error {}

interface Pending {
  resolve: (v: any) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class Chromium {
  private readonly child: ChildProcess;
  private readonly ws: WebSocket;
  private readonly profile: string;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  readonly stderr: string[];
  /** DevTools events (those of domains a page enabled, e.g. Network), oldest first. */
  readonly events: { method: string; params: any; sessionId?: string }[] = [];

  private constructor(child: ChildProcess, ws: WebSocket, profile: string, stderr: string[]) {
    this.child = child;
    this.ws = ws;
    this.profile = profile;
    this.stderr = stderr;
    ws.addEventListener('message', (ev) => {
      const m = JSON.parse(String(ev.data));
      if (m.id === undefined && m.method) {
        this.events.push({ method: m.method, params: m.params, sessionId: m.sessionId });
        return;
      }
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.error) p.reject(new CdpError(`${m.error.message} (${m.error.code})`));
      else p.resolve(m.result);
    });
  }

  /** Starts the browser and connects to it; throws if it is not listening within `timeoutMs`. */
  static async launch(timeoutMs = 60_000): Promise<Chromium> {
    const profile = mkdtempSync(join(tmpdir(), 'kedge-chromium-'));
    const child = spawn(
      CHROMIUM,
      [
        '--headless=new',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-dev-shm-usage',
        '--no-first-run',
        '--no-default-browser-check',
        '--remote-debugging-port=0',
        `--user-data-dir=${profile}`,
        'about:blank',
      ],
      // Its own process group, so close() can end the renderers and helpers with it.
      { stdio: ['ignore', 'ignore', 'pipe'], detached: true },
    );
    const stderr: string[] = [];
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`chromium not listening after ${timeoutMs} ms: ${stderr.join('')}`)),
        timeoutMs,
      );
      child.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`chromium exited with ${code}: ${stderr.join('')}`));
      });
      child.stderr!.on('data', (d: Buffer) => {
        stderr.push(d.toString());
        const m = /DevTools listening on (ws:\/\/\S+)/.exec(stderr.join(''));
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
    }).catch((e) => {
      killGroup(child);
      rmSync(profile, { recursive: true, force: true });
      throw e;
    });
    const ws = new WebSocket(url);
    await new Promise<void>((resolve, reject) => {
      ws.addEventListener('open', () => resolve(), { once: true });
      ws.addEventListener('error', () => reject(new Error(`cannot connect to ${url}`)), {
        once: true,
      });
    });
    return new Chromium(child, ws, profile, stderr);
  }

  /** One DevTools command; `sessionId` addresses a page (see open()). */
  send(method: string, params: object = {}, sessionId?: string, timeoutMs = 60_000): Promise<any> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CdpError(`${method}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }

  /** Opens `url` in a new tab of `width`×`height` CSS pixels; its requests are recorded (requests()). */
  async open(url: string, width = 1280, height = 1000): Promise<Page> {
    const { targetId } = await this.send('Target.createTarget', { url: 'about:blank' });
    const { sessionId } = await this.send('Target.attachToTarget', { targetId, flatten: true });
    const page = new Page(this, sessionId);
    await this.send('Network.enable', {}, sessionId);
    await page.resize(width, height);
    await this.send('Page.navigate', { url }, sessionId);
    return page;
  }

  /** Closes the browser, then ends whatever of its process group is left. */
  async close(): Promise<void> {
    await this.send('Browser.close', {}, undefined, 5_000).catch(() => {});
    this.ws.close();
    const exited = new Promise<void>((r) =>
      this.child.exitCode !== null || this.child.signalCode !== null
        ? r()
        : this.child.once('exit', () => r()),
    );
    const t = setTimeout(() => killGroup(this.child), 5_000);
    await exited;
    clearTimeout(t);
    killGroup(this.child);
    rmSync(this.profile, { recursive: true, force: true });
  }
}

function killGroup(child: ChildProcess): void {
  try {
    if (child.pid) process.kill(-child.pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

export class Page {
  private readonly browser: Chromium;
  private readonly sessionId: string;

  constructor(browser: Chromium, sessionId: string) {
    this.browser = browser;
    this.sessionId = sessionId;
  }

  /** The requests the page sent so far: URL and headers, as the browser put them on the wire. */
  requests(): { url: string; headers: Record<string, string> }[] {
    return this.browser.events
      .filter((e) => e.sessionId === this.sessionId && e.method === 'Network.requestWillBeSent')
      .map((e) => ({ url: e.params.request.url, headers: e.params.request.headers }));
  }

  /** The value of a script expression (awaited when it is a promise). */
  async evaluate<T = any>(expression: string): Promise<T> {
    const r = await this.browser.send(
      'Runtime.evaluate',
      { expression, returnByValue: true, awaitPromise: true },
      this.sessionId,
    );
    if (r.exceptionDetails)
      throw new CdpError(
        `${expression.slice(0, 80)}: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`,
      );
    return r.result.value as T;
  }

  /** Waits (bounded) until `expression` is truthy in the page; returns its value. */
  async waitFor<T = any>(expression: string, timeoutMs: number, what: string): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let last: unknown;
    for (;;) {
      try {
        last = await this.evaluate(expression);
        if (last) return last as T;
      } catch (e) {
        last = e;
      }
      if (Date.now() > deadline)
        throw new Error(`${what}: not so after ${timeoutMs} ms (last: ${String(last)})`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** The viewport in CSS pixels; `mobile` also makes the page use its viewport meta tag. */
  async resize(width: number, height: number, mobile = false): Promise<void> {
    await this.browser.send(
      'Emulation.setDeviceMetricsOverride',
      { width, height, deviceScaleFactor: 1, mobile },
      this.sessionId,
    );
  }

  /** A PNG of the whole page. */
  async screenshot(): Promise<Buffer> {
    const r = await this.browser.send(
      'Page.captureScreenshot',
      { format: 'png', captureBeyondViewport: true },
      this.sessionId,
    );
    return Buffer.from(r.data, 'base64');
  }
}
