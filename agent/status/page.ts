/**
 * The status page at GET /: one self-contained HTML page (inline CSS and JS, nothing fetched
 * but /v1/status) that shows the status document and refreshes it every 2 s. It is a view of
 * /v1/status and nothing more, so it follows the same access rule: no token, like /v1/status
 * (the document carries no event data and no secret), and it has no control that changes
 * anything (pause and resume stay behind the token, on the admin API).
 *
 * Every figure is an element with `data-field="<path in the status document>"` and the raw
 * value as JSON in `data-value`, beside the human text: test/status-page.test.ts reads the
 * page in a real browser and compares those with /v1/status.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

/**
 * Only inline script and style, only /v1/status to fetch, images only from data: URLs (the
 * favicon). Nothing from elsewhere can load even if a status string were crafted to try.
 */
export const STATUS_PAGE_CSP =
  "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:";

/** How often the page asks /v1/status, ms. */
export const STATUS_PAGE_REFRESH_MS = 2_000;

/** How many polls the page's link strip remembers (two minutes at one poll per 2 s). */
export const STATUS_PAGE_HISTORY = 60;

/** Answers GET or HEAD / with the page (the caller checked the method). */
export function sendStatusPage(req: IncomingMessage, res: ServerResponse): void {
  const body = Buffer.from(STATUS_PAGE_HTML, 'utf8');
  res.writeHead(200, {
    'content-type': 'text/html; charset=utf-8',
    'content-length': body.length,
    'cache-control': 'no-store',
    'content-security-policy': STATUS_PAGE_CSP,
    'x-content-type-options': 'nosniff',
    'x-frame-options': 'DENY',
    'referrer-policy': 'no-referrer',
  });
  res.end(req.method === 'HEAD' ? undefined : body);
}

const CSS = `
:root{--up:#1a7f37;--degraded:#b7791f;--down:#c62828;--idle:#5b6b7f;--none:#c9ced6;--fg:#1d2430;--mute:#5d6778;--bg:#f4f6f9;--card:#fff;--line:#e2e6ec}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.3em 1em;padding:.7em 1em;background:#1d2430;color:#fff}
header h1{font-size:1.15em;margin:0}
header .meta{color:#c4cad4;font-size:.9em;overflow-wrap:anywhere}
#banner{display:none;margin:.8em 1em 0;padding:.6em .8em;border-radius:6px;background:#fdecea;color:#8a1c1c;border:1px solid #f5c2c0;font-weight:600}
#banner.show{display:block}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,19em),1fr));gap:.8em;padding:.8em 1em 1.5em}
main.stale{opacity:.45;filter:grayscale(1)}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.7em .9em;min-width:0}
section.wide{grid-column:1/-1}
h2{font-size:.8em;letter-spacing:.06em;text-transform:uppercase;color:var(--mute);margin:0 0 .5em}
.big{font-size:1.6em;font-weight:650;font-variant-numeric:tabular-nums}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15em .8em;margin:0}
dt{color:var(--mute)}
dd{margin:0;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
.state{display:inline-block;padding:.05em .55em;border-radius:1em;color:#fff;background:var(--idle);font-weight:600}
.state.up,.state.listening,.state.connected{background:var(--up)}
.state.degraded,.state.connecting{background:var(--degraded)}
.state.down,.state.failed,.state.unreachable{background:var(--down)}
#strip{display:flex;gap:2px;height:1.4em;margin:.5em 0 .2em}
#strip span{flex:1 1 0;border-radius:2px;background:var(--none)}
#strip .up{background:var(--up)}#strip .degraded{background:var(--degraded)}#strip .down,#strip .unreachable{background:var(--down)}
#strip .paused,#strip .outside-window,#strip .starting{background:var(--idle)}
.hint{color:var(--mute);font-size:.85em}
.bar{height:.6em;background:var(--line);border-radius:.3em;overflow:hidden;margin:.3em 0}
.bar i{display:block;height:100%;background:var(--up)}
.bar.warn i{background:var(--degraded)}.bar.full i{background:var(--down)}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:.2em .5em .2em 0;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--mute);font-weight:500;font-size:.9em}
ul{margin:.2em 0 0;padding-left:1.1em}
.warn-list li{color:#8a5a00}
`;

/*
 * The page's script. Plain ES2017, no modules: it must run from the inline <script> under the
 * CSP above. Strings from the document (errors, topics) go in with textContent, never as HTML.
 */
const JS = `
'use strict';
var REFRESH_MS = ${STATUS_PAGE_REFRESH_MS}, HISTORY = ${STATUS_PAGE_HISTORY};
var samples = [], last = null, lastAt = null, timer = null, busy = false;
// A token in the fragment (#token=...) is never sent to the server with the page request;
// when /v1/status is ever behind the token, the page sends it as the bearer header.
var token = (/(?:^#|&)token=([^&]*)/.exec(location.hash) || [])[1] || null;
function $(id) { return document.getElementById(id); }
function get(doc, path) {
  var parts = path.split('.'), v = doc;
  for (var i = 0; i < parts.length; i++) { if (v === null || v === undefined) return undefined; v = v[parts[i]]; }
  return v;
}
function int(n) { return Number(n).toLocaleString('en-US'); }
function num(n) { return Number(n).toLocaleString('en-US', { maximumFractionDigits: 1 }); }
// The same forms as \`kedge status\` (agent/units.ts formatBytes, formatDuration): 1.2MiB, 4m10s.
function bytes(n) {
  if (n === null || n === undefined) return '—';
  var u = [['TiB', 1099511627776], ['GiB', 1073741824], ['MiB', 1048576], ['KiB', 1024]];
  for (var i = 0; i < u.length; i++) if (Math.abs(n) >= u[i][1]) return Number((n / u[i][1]).toFixed(1)) + u[i][0];
  return Math.round(n) + 'B';
}
// Seconds precision below an hour, minutes above, like kedge status.
function dur(s) {
  if (s === null || s === undefined) return '—';
  var unit = s >= 3600 ? 60 : 1, rest = Math.round(s / unit) * unit, out = '';
  var parts = [['w', 604800], ['d', 86400], ['h', 3600], ['m', 60], ['s', 1]];
  for (var i = 0; i < parts.length; i++) {
    var q = Math.floor(rest / parts[i][1]);
    if (q > 0) { out += q + parts[i][0]; rest -= q * parts[i][1]; }
  }
  return out || '0s';
}
function eta(s, events) {
  if (events === 0) return 'drained';
  return s === null || s === undefined ? '— (not draining)' : dur(s);
}
function when(iso) {
  if (!iso) return '—';
  var ago = (Date.now() - Date.parse(iso)) / 1000;
  return iso.replace('T', ' ').replace(/\\.\\d+Z$/, 'Z') + (ago >= 0 ? ' (' + dur(ago) + ' ago)' : '');
}
// One figure: the human text, and the raw value as JSON for whoever checks the page.
function fig(el, value, text) {
  el.setAttribute('data-value', JSON.stringify(value === undefined ? null : value));
  el.textContent = text;
  return el;
}
function cell(tag, path, value, text) {
  var el = document.createElement(tag);
  if (path) el.setAttribute('data-field', path);
  return path ? fig(el, value, text) : (el.textContent = text, el);
}
var FORMAT = {
  'uptime_seconds': dur,
  'link.since': when, 'link.last_error_at': when, 'link.last_forward_at': when,
  'backlog.bytes': bytes, 'lanes.priority.backlog_bytes': bytes, 'lanes.bulk.backlog_bytes': bytes,
  'backlog.oldest_age_seconds': dur,
  'rates.ingest_events_per_second': function (v) { return num(v) + '/s'; },
  'rates.forward_events_per_second': function (v) { return num(v) + '/s'; },
  'disk.bytes': bytes, 'disk.quota_bytes': function (v) { return v === null ? 'no quota' : bytes(v); },
  'disk.written_bytes': bytes,
  'disk.write_amplification': function (v) { return v.toFixed(2) + '×'; },
  'disk.used_ratio': function (v) { return v === null ? '—' : (v * 100).toFixed(1) + ' %'; },
  'link.paused': function (v) { return v ? 'yes (operator)' : 'no'; },
  'link.consecutive_failures': int, 'drops.bytes': bytes
};
function show(doc) {
  var nodes = document.querySelectorAll('[data-field]');
  for (var i = 0; i < nodes.length; i++) {
    var el = nodes[i], path = el.getAttribute('data-field');
    if (el.closest('.rows')) continue;
    var v = get(doc, path), f = FORMAT[path];
    var text = v === null || v === undefined ? '—' : f ? f(v) : typeof v === 'number' ? int(v) : String(v);
    if (/eta_seconds$/.test(path)) text = eta(v, get(doc, path.replace(/eta_seconds$/, path.indexOf('lanes.') === 0 ? 'backlog_events' : 'events')));
    fig(el, v, text);
    if (el.classList.contains('state')) el.className = 'state ' + String(v);
  }
  var used = doc.disk && doc.disk.used_ratio, bar = $('disk-bar');
  bar.className = 'bar' + (used >= 0.9 ? ' full' : used >= 0.7 ? ' warn' : '');
  bar.firstChild.style.width = used === null || used === undefined ? '0' : Math.min(100, used * 100) + '%';
  rows('link-history', (doc.link.history || []).slice(-8).reverse(), function (h) {
    var li = document.createElement('li');
    li.textContent = h.at.replace('T', ' ').replace(/\\.\\d+Z$/, 'Z') + '  ' + h.from + ' → ' + h.state + (h.reason ? ' (' + h.reason + ')' : '');
    return li;
  });
  $('drop-reasons').textContent = doc.drops && doc.drops.by_reason
    ? Object.keys(doc.drops.by_reason).map(function (k) { return k + ' ' + int(doc.drops.by_reason[k]); }).join(', ')
    : '';
  rows('dead-recent', doc.dead_letters.recent || [], function (d) {
    var li = document.createElement('li');
    li.textContent = '#' + d.seq + ' ' + d.topic + ': ' + d.reason;
    return li;
  });
  mqtt(doc.mqtt || {});
  destinations(doc.destinations || []);
  rows('warnings', doc.warnings || [], function (w) { var li = document.createElement('li'); li.textContent = w; return li; });
  $('warnings-box').hidden = !(doc.warnings && doc.warnings.length);
}
function rows(id, list, make) {
  var box = $(id);
  while (box.firstChild) box.removeChild(box.firstChild);
  for (var i = 0; i < list.length; i++) box.appendChild(make(list[i], i));
}
function mqtt(m) {
  var box = $('mqtt-rows');
  while (box.firstChild) box.removeChild(box.firstChild);
  var parts = [['client', m.client], ['broker', m.broker]];
  var any = false;
  for (var i = 0; i < parts.length; i++) {
    var name = parts[i][0], x = parts[i][1];
    if (!x) continue;
    any = true;
    var dt = document.createElement('dt'); dt.textContent = name; box.appendChild(dt);
    var dd = document.createElement('dd');
    var st = cell('span', 'mqtt.' + name + '.state', x.state, String(x.state));
    st.className = 'state ' + x.state; dd.appendChild(st);
    if (name === 'broker') {
      dd.appendChild(document.createTextNode(' '));
      dd.appendChild(cell('span', 'mqtt.broker.clients', x.clients, int(x.clients) + ' clients'));
    }
    if (x.ingested !== undefined) {
      dd.appendChild(document.createTextNode(', '));
      dd.appendChild(cell('span', 'mqtt.' + name + '.ingested', x.ingested, int(x.ingested) + ' ingested'));
    }
    if (x.last_error) {
      var e = document.createElement('div'); e.className = 'hint'; e.textContent = 'last error: ' + x.last_error; dd.appendChild(e);
    }
    box.appendChild(dd);
  }
  $('mqtt-none').hidden = any;
}
function destinations(list) {
  $('dest-box').hidden = list.length < 2;
  rows('dest-rows', list.length < 2 ? [] : list, function (d, i) {
    var tr = document.createElement('tr'), p = 'destinations.' + i + '.';
    tr.appendChild(cell('td', p + 'name', d.name, d.name));
    var s = document.createElement('td');
    var st = cell('span', p + 'link.state', d.link.state, d.link.state); st.className = 'state ' + d.link.state;
    s.appendChild(st); tr.appendChild(s);
    tr.appendChild(cell('td', p + 'backlog.events', d.backlog.events, int(d.backlog.events)));
    tr.appendChild(cell('td', p + 'backlog.eta_seconds', d.backlog.eta_seconds, eta(d.backlog.eta_seconds, d.backlog.events)));
    tr.appendChild(cell('td', p + 'dead_letters', d.dead_letters, int(d.dead_letters)));
    tr.appendChild(cell('td', p + 'dropped_events', d.dropped_events, int(d.dropped_events)));
    return tr;
  });
}
function remember(state) {
  samples.push(state);
  if (samples.length > HISTORY) samples.shift();
  drawStrip();
}
function drawStrip() {
  var strip = $('strip');
  while (strip.firstChild) strip.removeChild(strip.firstChild);
  for (var i = 0; i < HISTORY; i++) {
    var s = samples[i - HISTORY + samples.length], el = document.createElement('span');
    if (s) { el.className = s; el.title = s; }
    strip.appendChild(el);
  }
  strip.setAttribute('data-samples', JSON.stringify(samples));
}
function stale(msg) {
  $('main').classList.add('stale');
  var b = $('banner');
  b.textContent = 'Agent unreachable: ' + msg + (lastAt ? ' — figures below are from ' + lastAt.toLocaleTimeString() : '');
  b.classList.add('show');
  document.body.setAttribute('data-state', 'unreachable');
  remember('unreachable');
}
function poll() {
  if (busy) return;
  busy = true;
  var ctl = new AbortController(), t = setTimeout(function () { ctl.abort(); }, REFRESH_MS * 2);
  fetch('/v1/status', { cache: 'no-store', signal: ctl.signal, headers: token ? { authorization: 'Bearer ' + decodeURIComponent(token) } : {} })
    .then(function (r) {
      if (!r.ok) throw new Error('HTTP ' + r.status + (r.status === 401 ? ' (add #token=<KEDGE_HTTP_TOKEN> to the address)' : ''));
      return r.json();
    })
    .then(function (doc) {
      last = doc; lastAt = new Date();
      show(doc);
      remember(doc.link.state);
      $('main').classList.remove('stale');
      $('banner').classList.remove('show');
      $('updated').textContent = lastAt.toLocaleTimeString();
      document.title = doc.agent_id + ' · ' + doc.link.state + ' · kedge';
      document.body.setAttribute('data-state', 'ok');
      document.body.setAttribute('data-polls', String(Number(document.body.getAttribute('data-polls') || 0) + 1));
    })
    .catch(function (e) { stale(e && e.name === 'AbortError' ? 'no answer within ' + (REFRESH_MS * 2 / 1000) + ' s' : String(e && e.message || e)); })
    .then(function () { clearTimeout(t); busy = false; });
}
drawStrip();
poll();
timer = setInterval(poll, REFRESH_MS);
`;

/** The page. `data-field` names a path in the status document; see the module comment. */
export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>kedge status</title>
<style>${CSS}</style>
</head>
<body data-state="loading" data-polls="0">
<header>
  <h1>kedge <span data-field="agent_id">…</span></h1>
  <span class="meta">version <span data-field="version">…</span> · up <span data-field="uptime_seconds">…</span> · updated <span id="updated">never</span> · every ${STATUS_PAGE_REFRESH_MS / 1000} s</span>
</header>
<div id="banner" role="alert"></div>
<main id="main">
  <section>
    <h2>Kafka link</h2>
    <div class="big"><span class="state" data-field="link.state">…</span></div>
    <div id="strip" aria-label="link state at the last polls, oldest left"></div>
    <div class="hint">last ${STATUS_PAGE_HISTORY} polls, oldest left</div>
    <dl>
      <dt>since</dt><dd data-field="link.since">…</dd>
      <dt>paused</dt><dd data-field="link.paused">…</dd>
      <dt>last forward</dt><dd data-field="link.last_forward_at">…</dd>
      <dt>last error</dt><dd data-field="link.last_error">…</dd>
      <dt>error at</dt><dd data-field="link.last_error_at">…</dd>
      <dt>failures in a row</dt><dd data-field="link.consecutive_failures">…</dd>
    </dl>
    <div class="hint">changes, newest first:</div>
    <ul id="link-history" class="rows"></ul>
  </section>
  <section>
    <h2>Backlog</h2>
    <div class="big"><span data-field="backlog.events">…</span> events</div>
    <dl>
      <dt>size</dt><dd data-field="backlog.bytes">…</dd>
      <dt>oldest</dt><dd data-field="backlog.oldest_age_seconds">…</dd>
      <dt>ETA</dt><dd data-field="backlog.eta_seconds">…</dd>
    </dl>
    <div class="scroll"><table>
      <tr><th>lane</th><th>events</th><th>size</th><th>ETA</th></tr>
      <tr><td>priority</td><td data-field="lanes.priority.backlog_events">…</td><td data-field="lanes.priority.backlog_bytes">…</td><td data-field="lanes.priority.eta_seconds">…</td></tr>
      <tr><td>bulk</td><td data-field="lanes.bulk.backlog_events">…</td><td data-field="lanes.bulk.backlog_bytes">…</td><td data-field="lanes.bulk.eta_seconds">…</td></tr>
    </table></div>
    <div class="hint">ETA: backlog at the current drain rate; — when not draining</div>
  </section>
  <section>
    <h2>Rates</h2>
    <dl>
      <dt>ingest</dt><dd data-field="rates.ingest_events_per_second">…</dd>
      <dt>forward</dt><dd data-field="rates.forward_events_per_second">…</dd>
      <dt>last seq</dt><dd data-field="log.last_seq">…</dd>
    </dl>
    <div class="hint">events per second over the last minute</div>
  </section>
  <section>
    <h2>Disk quota</h2>
    <div class="big" data-field="disk.used_ratio">…</div>
    <div id="disk-bar" class="bar"><i></i></div>
    <dl>
      <dt>used</dt><dd data-field="disk.bytes">…</dd>
      <dt>quota</dt><dd data-field="disk.quota_bytes">…</dd>
      <dt>written</dt><dd data-field="disk.written_bytes">…</dd>
      <dt>write ampl.</dt><dd data-field="disk.write_amplification">…</dd>
    </dl>
    <div class="hint">write amplification: bytes written to disk per byte ingested (SD-card wear)</div>
  </section>
  <section>
    <h2>Drops and dead letters</h2>
    <dl>
      <dt>dropped</dt><dd><span data-field="drops.events">…</span> <span class="hint" id="drop-reasons"></span></dd>
      <dt>dead letters</dt><dd data-field="dead_letters.events">…</dd>
    </dl>
    <ul id="dead-recent" class="rows"></ul>
  </section>
  <section>
    <h2>MQTT</h2>
    <dl id="mqtt-rows" class="rows"></dl>
    <div id="mqtt-none" class="hint">MQTT is off (no client, no broker)</div>
  </section>
  <section id="dest-box" class="wide" hidden>
    <h2>Destinations</h2>
    <div class="scroll"><table>
      <thead><tr><th>name</th><th>link</th><th>backlog</th><th>ETA</th><th>dead</th><th>dropped</th></tr></thead>
      <tbody id="dest-rows" class="rows"></tbody>
    </table></div>
  </section>
  <section id="warnings-box" class="wide" hidden>
    <h2>Warnings</h2>
    <ul id="warnings" class="rows warn-list"></ul>
  </section>
</main>
<script>${JS}</script>
</body>
</html>
`;
