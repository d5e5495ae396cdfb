/**
 * The status page at GET / in a real headless Chromium against the real agent and a real Kafka
 * broker: every figure the page shows (its `data-field` elements) equals /v1/status, per lane
 * and while a rate-capped backlog drains with an ETA; the page loads nothing but itself and
 * /v1/status; it fits a 320 px phone screen; it says "unreachable" when the agent stops; it
 * follows /v1/status's access rule (no token) on an agent with KEDGE_HTTP_TOKEN. Screenshots
 * go to .cache/artifacts/.
 */
import t from 'tap';
import type { Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { startKafka } from '../scripts/kafka/kafka.ts';
import { STATUS_PAGE_CSP } from '../agent/status/page.ts';
import {
  AgentProc,
  REPO,
  cleanup,
  freeLoopbackPort,
  post,
  sleep,
  tempDir,
} from './helpers/agent.ts';
import { CHROMIUM, Chromium, type Page } from './helpers/chromium.ts';
import { hasCommand } from './helpers/exe.ts';

if (!hasCommand(CHROMIUM)) {
  t.fail(`${CHROMIUM} is missing: apt-get install chromium (bash .ci/run installs it)`);
  process.exit(1);
}

const ARTIFACTS = join(REPO, '.cache/artifacts');
mkdirSync(ARTIFACTS, { recursive: true });
const TOKEN = 'page-test-token-0123456789';

const kafka = await startKafka({ brokers: 1 });
const dirs = [tempDir(), tempDir()];
const agent = await AgentProc.start({
  env: {
    KEDGE_DATA_DIR: dirs[0],
    KEDGE_KAFKA_BROKERS: kafka.bootstrap,
    KEDGE_AGENT_ID: 'page-agent',
    KEDGE_PRIORITY_TOPICS: 'page.alerts',
    KEDGE_MQTT_LISTEN: `127.0.0.1:${await freeLoopbackPort()}`,
    KEDGE_DISK_QUOTA: '64MiB',
    // 1.2 MB of backlog take ~20 s: the ETA is shown while it drains.
    KEDGE_FORWARD_RATE: '64KiB/s',
  },
});
const tokenAgent = await AgentProc.start({
  env: {
    KEDGE_DATA_DIR: dirs[1],
    KEDGE_KAFKA_BROKERS: kafka.bootstrap,
    KEDGE_AGENT_ID: 'token-agent',
    KEDGE_HTTP_TOKEN: TOKEN,
    // Two destinations (the same broker will do): the page shows a row for each.
    KEDGE_DESTINATIONS: 'site,cloud',
    KEDGE_SITE_KAFKA_BROKERS: kafka.bootstrap,
    KEDGE_CLOUD_KAFKA_BROKERS: kafka.bootstrap,
  },
});
const browser = await Chromium.launch();
t.teardown(async () => {
  await browser.close();
  await agent.stop();
  await tokenAgent.stop();
  await kafka.stop();
  for (const d of dirs) cleanup(d);
});

/** `n` NDJSON events of ~200 random (incompressible) bytes to `topic`, in requests of 2,000. */
async function ingest(topic: string, n: number): Promise<void> {
  for (let done = 0; done < n; done += 2_000) {
    const body = Array.from({ length: Math.min(2_000, n - done) }, (_, i) =>
      JSON.stringify({ i: done + i, pad: randomBytes(90).toString('hex') }),
    ).join('\n');
    const r = await post(`${agent.base}/v1/topics/${topic}`, body, 'application/x-ndjson');
    if (r.status !== 200) throw new Error(`ingest: HTTP ${r.status} ${JSON.stringify(r.body)}`);
  }
}

interface Shown {
  field: string;
  value: unknown;
  text: string;
}

/** Every figure on the page: its path in the status document, raw value and text. */
const READ_FIGURES = `[...document.querySelectorAll('[data-field]')].map((e) => ({
  field: e.getAttribute('data-field'),
  value: e.hasAttribute('data-value') ? JSON.parse(e.getAttribute('data-value')) : '(never filled)',
  text: e.textContent,
}))`;

function at(doc: any, path: string): unknown {
  return path.split('.').reduce((v, k) => (v === null || v === undefined ? v : v[k]), doc);
}

/** Figures that move between two reads of the status: how far apart page and document may be. */
function tolerance(field: string, want: number): number | null {
  if (/uptime_seconds|oldest_age_seconds$/.test(field)) return 10;
  if (/_per_second$/.test(field)) return Math.max(2, want * 0.5);
  if (/^disk\./.test(field)) return Math.max(0.01, want * 0.1);
  return null;
}

function compare(
  tt: Test,
  shown: Shown[],
  doc: any,
  loose: (field: string) => boolean = () => false,
): void {
  const bad: string[] = [];
  for (const s of shown) {
    const want = at(doc, s.field);
    if (want === undefined) {
      bad.push(`${s.field}: not in /v1/status`);
      continue;
    }
    const tol = typeof want === 'number' ? tolerance(s.field, want) : null;
    const ok =
      loose(s.field) ||
      (tol !== null && typeof s.value === 'number'
        ? Math.abs(s.value - (want as number)) <= tol
        : JSON.stringify(s.value) === JSON.stringify(want));
    if (!ok)
      bad.push(`${s.field}: page ${JSON.stringify(s.value)}, status ${JSON.stringify(want)}`);
  }
  tt.same(bad, [], `all ${shown.length} figures on the page match /v1/status`);
}

function field(shown: Shown[], name: string): Shown {
  const s = shown.find((x) => x.field === name);
  if (!s) throw new Error(`the page shows no ${name}`);
  return s;
}

async function savePng(tt: Test, page: Page, name: string): Promise<void> {
  const png = await page.screenshot();
  const file = join(ARTIFACTS, name);
  writeFileSync(file, png);
  tt.comment(`screenshot: ${file} (${png.length} bytes)`);
  tt.ok(
    png.length > 2_000 && png.subarray(0, 8).equals(Buffer.from('89504e470d0a1a0a', 'hex')),
    `${name} is a PNG of ${png.length} bytes`,
  );
}

/** Waits for the page's next successful poll after now. */
async function nextPoll(page: Page): Promise<void> {
  const n = await page.evaluate<number>('Number(document.body.dataset.polls)');
  await page.waitFor(`Number(document.body.dataset.polls) > ${n}`, 60_000, 'the page polled');
}

t.test('GET / serves one self-contained page', async (tt) => {
  const r = await request(`${agent.base}/`);
  const html = await r.body.text();
  tt.equal(r.statusCode, 200);
  tt.match(r.headers['content-type'], /^text\/html; charset=utf-8/);
  tt.equal(r.headers['content-security-policy'], STATUS_PAGE_CSP, 'CSP header');
  tt.equal(
    STATUS_PAGE_CSP,
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
  );
  tt.equal(r.headers['cache-control'], 'no-store');
  tt.notMatch(
    html,
    /\b(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?\/\//i,
    'no external src/href',
  );
  tt.notMatch(html, /@import|url\(\s*["']?(?:https?:)?\/\//i, 'no external CSS');
  tt.same(
    [...html.matchAll(/fetch\(\s*([^,)]+)/g)].map((m) => m[1]),
    ["'/v1/status'"],
    'the script fetches only /v1/status',
  );
  const head = await request(`${agent.base}/`, { method: 'HEAD' });
  tt.equal(head.statusCode, 200, 'HEAD /');
  tt.equal((await head.body.text()).length, 0, 'HEAD has no body');
  tt.equal(head.headers['content-length'], String(Buffer.byteLength(html)));
  const p = await request(`${agent.base}/`, { method: 'POST', body: 'x' });
  tt.equal(p.statusCode, 405, 'POST / is refused');
  await p.body.dump();
});

t.test('the figures shown are /v1/status, paused with a backlog per lane', async (tt) => {
  // Some traffic through a link that is up, so rates and last forward are non-trivial.
  await ingest('page.bulk', 50);
  await ingest('page.alerts', 5);
  await agent.waitDrained(60_000);
  await agent.forwarding('pause');
  await ingest('page.bulk', 6_000);
  await ingest('page.alerts', 40);

  const page = await browser.open(`${agent.base}/`);
  // Two polls: the second one is certainly after the backlog above.
  await page.waitFor('Number(document.body.dataset.polls) >= 2', 60_000, 'the page polled twice');
  await nextPoll(page);
  const [shown, doc] = await Promise.all([page.evaluate<Shown[]>(READ_FIGURES), agent.status()]);
  tt.equal(doc.backlog.events, 6_040, 'the agent holds the paused backlog');
  compare(tt, shown, doc);
  const names = new Set(shown.map((s) => s.field));
  for (const f of [
    'agent_id',
    'version',
    'uptime_seconds',
    'link.state',
    'link.since',
    'link.last_error',
    'link.last_forward_at',
    'backlog.events',
    'backlog.eta_seconds',
    'lanes.priority.backlog_events',
    'lanes.priority.eta_seconds',
    'lanes.bulk.backlog_events',
    'lanes.bulk.eta_seconds',
    'rates.ingest_events_per_second',
    'rates.forward_events_per_second',
    'disk.bytes',
    'disk.quota_bytes',
    'disk.used_ratio',
    'drops.events',
    'dead_letters.events',
    'mqtt.broker.state',
    'mqtt.broker.clients',
  ])
    tt.ok(names.has(f), `the page shows ${f}`);
  tt.equal(field(shown, 'link.state').text, 'paused');
  tt.equal(field(shown, 'backlog.events').text, '6,040');
  tt.equal(field(shown, 'lanes.priority.backlog_events').text, '40');
  tt.equal(field(shown, 'lanes.bulk.backlog_events').text, '6,000');
  tt.match(field(shown, 'backlog.eta_seconds').text, /^—/, 'no ETA while paused');
  tt.equal(field(shown, 'mqtt.broker.state').value, 'listening');
  tt.equal(field(shown, 'disk.quota_bytes').text, '64MiB', 'bytes as kedge status shows them');
  tt.match(field(shown, 'disk.used_ratio').text, /^\d+\.\d %$/);
  tt.match(field(shown, 'link.last_forward_at').text, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(/);
  tt.ok((field(shown, 'rates.ingest_events_per_second').value as number) > 0, 'ingest rate > 0');

  const strip = await page.evaluate<string[]>(
    'JSON.parse(document.getElementById("strip").dataset.samples)',
  );
  tt.ok(strip.length >= 3 && strip.at(-1) === 'paused', `link strip: ${strip.join(',')}`);
  const loaded = await page.evaluate<string[]>(
    "performance.getEntriesByType('resource').map((e) => e.name)",
  );
  tt.same(
    [...new Set(loaded.map((u) => new URL(u).pathname))],
    ['/v1/status'],
    'the browser loaded nothing but /v1/status',
  );
  await savePng(tt, page, 'status-page.png');

  // A 320 px phone: one column, nothing wider than the screen.
  await page.resize(320, 640, true);
  await sleep(500);
  const width = await page.evaluate<number>('document.documentElement.scrollWidth');
  tt.ok(width <= 320, `fits a 320 px screen (scrollWidth ${width})`);
  tt.ok(
    await page.evaluate('document.getElementById("dest-box").hidden'),
    'one destination: no destinations table',
  );
  await savePng(tt, page, 'status-page-phone.png');
  await page.resize(1280, 1000);

  // Draining at 64 KiB/s: an ETA per lane, priority first.
  await agent.forwarding('resume');
  const draining = await page.waitFor<Shown[]>(
    `(() => { const f = ${READ_FIGURES}; const e = f.find((x) => x.field === 'lanes.bulk.eta_seconds'); return typeof e.value === 'number' && e.value > 0 ? f : null; })()`,
    60_000,
    'the page shows an ETA while the backlog drains',
  );
  const now = await agent.status();
  const eta = field(draining, 'lanes.bulk.eta_seconds');
  tt.match(eta.text, /^(\d+[wdhms])+$/, `bulk ETA shown as a duration: ${eta.text}`);
  tt.ok(
    (field(draining, 'backlog.events').value as number) > 0 &&
      (field(draining, 'backlog.events').value as number) <= 6_040,
    'backlog shown while draining',
  );
  // Everything moves now: the same set of figures, values within the drain's reach.
  compare(tt, draining, now, (f) =>
    /backlog|eta_seconds|lanes\.|rates\.|last_forward|link\.|disk\.|log\./.test(f),
  );
  await agent.waitDrained(120_000);
  await page.waitFor(
    `document.querySelector('[data-field="backlog.events"]').dataset.value === '0'`,
    60_000,
    'the page shows the backlog drained',
  );
  tt.match(
    await page.evaluate<string>(
      `document.querySelector('[data-field="backlog.eta_seconds"]').textContent`,
    ),
    /drained/,
  );
  tt.equal(
    await page.evaluate<string>(`document.querySelector('[data-field="link.state"]').textContent`),
    'up',
  );
});

t.test(
  'with KEDGE_HTTP_TOKEN: the page needs no token, like /v1/status; destinations',
  async (tt) => {
    const noAuth = async (path: string) => {
      const r = await request(`${tokenAgent.base}${path}`);
      await r.body.dump();
      return r.statusCode;
    };
    tt.equal(await noAuth('/v1/status'), 200, '/v1/status without a token');
    tt.equal(await noAuth('/'), 200, 'the page without a token: the same rule');
    const pause = await request(`${tokenAgent.base}/v1/forwarding/pause`, { method: 'POST' });
    await pause.body.dump();
    tt.equal(pause.statusCode, 401, 'the token is on: pause without it is refused');
    const r = await post(
      `${tokenAgent.base}/v1/topics/page.two`,
      '{"a":1}\n{"a":2}',
      'application/x-ndjson',
      {
        authorization: `Bearer ${TOKEN}`,
      },
    );
    tt.equal(r.status, 200, 'ingest with the token');
    await tokenAgent.waitDrained(60_000);
    // A token in the fragment (never sent with the page request) is sent as the bearer header.
    const page = await browser.open(`${tokenAgent.base}/#token=${TOKEN}`);
    await page.waitFor('Number(document.body.dataset.polls) >= 2', 60_000, 'the page polled');
    const [shown, doc] = await Promise.all([
      page.evaluate<Shown[]>(READ_FIGURES),
      tokenAgent.status(),
    ]);
    tt.equal(field(shown, 'agent_id').value, 'token-agent');
    compare(tt, shown, doc);
    tt.same(
      ['destinations.0.name', 'destinations.1.name'].map((f) => field(shown, f).text),
      ['site', 'cloud'],
      'a row per destination',
    );
    tt.equal(field(shown, 'destinations.1.link.state').value, doc.destinations[1].link.state);
    tt.ok(
      await page.evaluate('!document.getElementById("dest-box").hidden'),
      'the destinations table is shown',
    );
    await savePng(tt, page, 'status-page-destinations.png');
    const sent = page.requests();
    const statusReq = sent.find((r) => new URL(r.url).pathname === '/v1/status');
    tt.equal(
      statusReq?.headers.Authorization ?? statusReq?.headers.authorization,
      `Bearer ${TOKEN}`,
      'the fragment token went as the bearer header',
    );
    tt.ok(
      sent.filter((r) => new URL(r.url).pathname === '/').every((r) => !r.url.includes(TOKEN)),
      'the page request itself carries no token (a fragment is not sent)',
    );
    tt.equal(await page.evaluate('document.body.dataset.state'), 'ok');
  },
);

t.test('the agent stops: "unreachable", the last figures kept greyed', async (tt) => {
  const page = await browser.open(`${agent.base}/`);
  await page.waitFor('Number(document.body.dataset.polls) >= 1', 60_000, 'the page polled');
  const before = await page.evaluate<Shown[]>(READ_FIGURES);
  await agent.stop();
  await page.waitFor(
    `document.body.dataset.state === 'unreachable'`,
    60_000,
    'the page noticed the agent is gone',
  );
  const banner = await page.evaluate<string>('document.getElementById("banner").textContent');
  tt.match(banner, /^Agent unreachable/);
  tt.ok(
    await page.evaluate('getComputedStyle(document.getElementById("banner")).display !== "none"'),
    'the banner is visible',
  );
  tt.ok(
    await page.evaluate('document.getElementById("main").classList.contains("stale")'),
    'figures greyed',
  );
  const after = await page.evaluate<Shown[]>(READ_FIGURES);
  tt.equal(field(after, 'agent_id').value, 'page-agent', 'last figures still shown');
  tt.equal(field(after, 'backlog.events').value, field(before, 'backlog.events').value);
  const strip = await page.evaluate<string[]>(
    'JSON.parse(document.getElementById("strip").dataset.samples)',
  );
  tt.equal(strip.at(-1), 'unreachable', 'the strip records it');
  await savePng(tt, page, 'status-page-unreachable.png');
});
