/**
 * Hand-written SVG charts (no chart library): a line chart for values over
 * time and a horizontal bar chart for comparisons, both with optional target
 * lines. Plain SVG 1.1 with inline styles, readable in a browser and on GitHub.
 */
import type { ChartSpec } from './types.ts';

const W = 760;
const PALETTE = [
  '#1f77b4',
  '#ff7f0e',
  '#2ca02c',
  '#9467bd',
  '#8c564b',
  '#17becf',
  '#e377c2',
  '#7f7f7f',
];
const REF = '#b00020';
const FONT = 'font-family="Helvetica, Arial, sans-serif"';

function esc(s: string): string {
  return s
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;');
}

/** A "nice" step (1, 2, 2.5 or 5 × 10^k) giving about `count` ticks over `range`. */
function niceStep(range: number, count: number): number {
  if (!(range > 0)) return 1;
  const raw = range / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

function ticks(max: number, count = 5): { max: number; step: number; values: number[] } {
  const step = niceStep(max, count);
  const top = Math.max(step, Math.ceil(max / step) * step);
  const values: number[] = [];
  for (let v = 0; v <= top + step / 1e6; v += step) values.push(v);
  return { max: top, step, values };
}

function label(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e6) return `${+(v / 1e6).toFixed(2)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toFixed(1)}k`;
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return `${+v.toFixed(1)}`;
  return `${+v.toFixed(2)}`;
}

function lineChart(c: Extract<ChartSpec, { kind: 'line' }>): string {
  const H = 380;
  const m = {
    l: 70,
    r: 20,
    t: 40,
    b: 50 + 18 * Math.ceil((c.series.length + (c.refs?.length ?? 0)) / 3),
  };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const pts = c.series
    .flatMap((s) => s.points)
    .filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const xmin = pts.length ? Math.min(...pts.map((p) => p.x)) : 0;
  const xmaxRaw = pts.length ? Math.max(...pts.map((p) => p.x)) : 1;
  const ymaxRaw = Math.max(1e-9, ...pts.map((p) => p.y), ...(c.refs ?? []).map((r) => r.y * 1.05));
  const yt = ticks(ymaxRaw);
  const xt = ticks(Math.max(1e-9, xmaxRaw - Math.min(0, xmin)), 8);
  const x0 = Math.min(0, xmin);
  const X = (x: number) => m.l + ((x - x0) / (xt.max || 1)) * pw;
  const Y = (y: number) => m.t + ph - (y / yt.max) * ph;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ${FONT} font-size="12">`,
  );
  out.push(`<rect width="${W}" height="${H}" fill="#fff"/>`);
  out.push(
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(c.title)}</text>`,
  );
  for (const v of yt.values) {
    out.push(
      `<line x1="${m.l}" x2="${m.l + pw}" y1="${Y(v).toFixed(1)}" y2="${Y(v).toFixed(1)}" stroke="#e5e5e5"/>`,
    );
    out.push(
      `<text x="${m.l - 6}" y="${(Y(v) + 4).toFixed(1)}" text-anchor="end" fill="#444">${label(v)}</text>`,
    );
  }
  for (const v of xt.values) {
    const x = X(v + x0);
    out.push(
      `<line x1="${x.toFixed(1)}" x2="${x.toFixed(1)}" y1="${m.t + ph}" y2="${m.t + ph + 4}" stroke="#444"/>`,
    );
    out.push(
      `<text x="${x.toFixed(1)}" y="${m.t + ph + 17}" text-anchor="middle" fill="#444">${label(v + x0)}</text>`,
    );
  }
  out.push(
    `<line x1="${m.l}" x2="${m.l + pw}" y1="${m.t + ph}" y2="${m.t + ph}" stroke="#444"/><line x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${m.t + ph}" stroke="#444"/>`,
  );
  out.push(
    `<text x="${m.l + pw / 2}" y="${m.t + ph + 34}" text-anchor="middle" fill="#222">${esc(c.xLabel)}</text>`,
  );
  out.push(
    `<text transform="translate(16 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle" fill="#222">${esc(c.yLabel)}</text>`,
  );
  for (const r of c.refs ?? []) {
    out.push(
      `<line x1="${m.l}" x2="${m.l + pw}" y1="${Y(r.y).toFixed(1)}" y2="${Y(r.y).toFixed(1)}" stroke="${REF}" stroke-dasharray="6 4"/>`,
    );
  }
  c.series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const p = s.points.filter((q) => Number.isFinite(q.x) && Number.isFinite(q.y));
    if (p.length === 0) return;
    const d = p.map((q) => `${X(q.x).toFixed(1)},${Y(q.y).toFixed(1)}`).join(' ');
    out.push(
      `<polyline points="${d}" fill="none" stroke="${color}" stroke-width="${s.dashed ? 1.5 : 2}"${s.dashed ? ' stroke-dasharray="5 3"' : ''}/>`,
    );
  });
  // Legend under the plot, three entries per row.
  const entries = [
    ...c.series.map((s, i) => ({
      text: s.label,
      color: PALETTE[i % PALETTE.length],
      dashed: !!s.dashed,
    })),
    ...(c.refs ?? []).map((r) => ({
      text: `${r.label} (${label(r.y)})`,
      color: REF,
      dashed: true,
    })),
  ];
  entries.forEach((e, i) => {
    const col = i % 3;
    const row = Math.floor(i / 3);
    const lx = m.l + col * (pw / 3);
    const ly = m.t + ph + 50 + row * 18;
    out.push(
      `<line x1="${lx}" x2="${lx + 22}" y1="${ly - 4}" y2="${ly - 4}" stroke="${e.color}" stroke-width="2"${e.dashed ? ' stroke-dasharray="5 3"' : ''}/>`,
    );
    out.push(`<text x="${lx + 28}" y="${ly}" fill="#222">${esc(e.text)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}

function barChart(c: Extract<ChartSpec, { kind: 'bars' }>): string {
  const rowH = 26;
  const groups = [...new Set(c.bars.map((b) => b.group ?? ''))];
  const m = {
    l: 250,
    r: 90,
    t: 40,
    b: 40 + (c.refs?.length ? 18 : 0) + (groups.length > 1 ? 18 : 0),
  };
  const H = m.t + m.b + rowH * c.bars.length;
  const pw = W - m.l - m.r;
  const vmax = Math.max(1e-9, ...c.bars.map((b) => b.value), ...(c.refs ?? []).map((r) => r.y));
  const xt = ticks(vmax, 6);
  const X = (v: number) => m.l + (v / xt.max) * pw;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ${FONT} font-size="12">`,
  );
  out.push(`<rect width="${W}" height="${H}" fill="#fff"/>`);
  out.push(
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(c.title)}</text>`,
  );
  const plotBottom = m.t + rowH * c.bars.length;
  for (const v of xt.values) {
    out.push(
      `<line x1="${X(v).toFixed(1)}" x2="${X(v).toFixed(1)}" y1="${m.t}" y2="${plotBottom}" stroke="#e5e5e5"/>`,
    );
    out.push(
      `<text x="${X(v).toFixed(1)}" y="${plotBottom + 15}" text-anchor="middle" fill="#444">${label(v)}</text>`,
    );
  }
  c.bars.forEach((b, i) => {
    const y = m.t + i * rowH;
    const color = PALETTE[groups.indexOf(b.group ?? '') % PALETTE.length];
    const w = Math.max(0, X(b.value) - m.l);
    const name = groups.length > 1 && b.group ? `${b.label}` : b.label;
    out.push(
      `<text x="${m.l - 8}" y="${y + rowH / 2 + 4}" text-anchor="end" fill="#222">${esc(name)}</text>`,
    );
    out.push(
      `<rect x="${m.l}" y="${y + 4}" width="${w.toFixed(1)}" height="${rowH - 8}" fill="${color}"/>`,
    );
    out.push(
      `<text x="${(m.l + w + 5).toFixed(1)}" y="${y + rowH / 2 + 4}" fill="#222">${label(b.value)} ${esc(c.unit)}</text>`,
    );
  });
  out.push(`<line x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${plotBottom}" stroke="#444"/>`);
  let ly = plotBottom + 34;
  for (const r of c.refs ?? []) {
    out.push(
      `<line x1="${X(r.y).toFixed(1)}" x2="${X(r.y).toFixed(1)}" y1="${m.t - 4}" y2="${plotBottom}" stroke="${REF}" stroke-dasharray="6 4" stroke-width="1.5"/>`,
    );
  }
  if (c.refs?.length) {
    out.push(
      `<text x="${m.l}" y="${ly}" fill="${REF}">dashed: ${esc(c.refs.map((r) => `${r.label} (${label(r.y)})`).join(', '))}</text>`,
    );
    ly += 18;
  }
  if (groups.length > 1) {
    let lx = m.l;
    for (const [i, g] of groups.entries()) {
      out.push(
        `<rect x="${lx}" y="${ly - 10}" width="12" height="12" fill="${PALETTE[i % PALETTE.length]}"/><text x="${lx + 16}" y="${ly}" fill="#222">${esc(g)}</text>`,
      );
      lx += 30 + g.length * 7;
    }
  }
  out.push('</svg>');
  return out.join('\n');
}

export function renderChart(c: ChartSpec): string {
  return c.kind === 'line' ? lineChart(c) : barChart(c);
}
