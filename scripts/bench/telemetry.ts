/**
 * Plausible sensor telemetry, for compression figures that mean something:
 * a fleet of devices across sites, each reporting on its own clock with
 * jitter; readings that drift (a random walk) with measurement noise; a few
 * string fields (status, firmware, unit) that change rarely; an occasional
 * alarm. Not repeated bytes, and not random bytes either: what a codec sees
 * from a real fleet is in between. Seeded, so every run sends the same events.
 * Used by the `codecs` benchmark and by test/codecs.test.ts.
 */

export interface TelemetryEvent {
  /** The device id: the Kafka key, so order per device is what Kafka keeps. */
  key: string;
  /** One JSON object, exactly as JSON.stringify writes it (so an envelope re-serialises it to the same bytes). */
  value: string;
  /** Kafka headers; values hold no ',' or '=' (kcat prints headers as "k=v,k=v"). */
  headers: Record<string, string>;
}

export interface TelemetryOptions {
  seed?: number;
  /** Devices in the fleet (default 200). */
  devices?: number;
  /** First timestamp, ms since the epoch (default a fixed date: runs are reproducible). */
  startMs?: number;
}

const SITES = [
  'hamburg-port',
  'rotterdam-dc',
  'lyon-plant',
  'vessel-aurora',
  'cell-site-417',
  'brno-line',
];
const KINDS = [
  {
    kind: 'env',
    unit: 'C',
    fields: [
      ['temp_c', 21, 6, 2],
      ['humidity_pct', 45, 15, 1],
      ['co2_ppm', 620, 200, 0],
    ],
  },
  {
    kind: 'motor',
    unit: 'mm/s',
    fields: [
      ['vibration_rms', 2.5, 1.2, 3],
      ['current_a', 11, 4, 2],
      ['temp_c', 48, 10, 1],
    ],
  },
  {
    kind: 'power',
    unit: 'kW',
    fields: [
      ['power_kw', 42, 15, 3],
      ['voltage_v', 230, 4, 1],
      ['pf', 0.93, 0.05, 3],
    ],
  },
  {
    kind: 'flow',
    unit: 'l/min',
    fields: [
      ['flow_lpm', 120, 30, 1],
      ['pressure_bar', 4.2, 0.8, 3],
      ['temp_c', 17, 5, 2],
    ],
  },
] as const satisfies readonly {
  kind: string;
  unit: string;
  fields: readonly (readonly [string, number, number, number])[];
}[];
const FIRMWARE = ['3.2.1', '3.2.4', '3.3.0', '4.0.0-rc2'];
const STATUSES = ['ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'degraded', 'calibrating'];

interface Device {
  id: string;
  site: string;
  kind: (typeof KINDS)[number];
  firmware: string;
  periodMs: number;
  nextTs: number;
  seq: number;
  levels: number[];
  status: string;
  battery: number;
}

/** Deterministic xorshift32 in [0, 1). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

const round = (v: number, digits: number) => Number(v.toFixed(digits));

export class TelemetryGenerator {
  private readonly rnd: () => number;
  private readonly devices: Device[];
  /** Events made so far. */
  count = 0;

  constructor(o: TelemetryOptions = {}) {
    this.rnd = rng(o.seed ?? 42);
    const start = o.startMs ?? Date.UTC(2026, 10, 24, 6, 0, 0);
    const n = o.devices ?? 200;
    this.devices = Array.from({ length: n }, (_, i) => {
      const kind = KINDS[i % KINDS.length];
      const site = SITES[Math.floor(this.rnd() * SITES.length)];
      return {
        id: `${site}/${kind.kind}-${String(i).padStart(4, '0')}`,
        site,
        kind,
        firmware: FIRMWARE[Math.floor(this.rnd() * FIRMWARE.length)],
        periodMs: [1000, 2000, 5000, 10_000][i % 4],
        nextTs: start + Math.floor(this.rnd() * 10_000),
        seq: Math.floor(this.rnd() * 100_000),
        levels: kind.fields.map(([, base, spread]) => base + (this.rnd() - 0.5) * spread),
        status: 'ok',
        battery: 60 + 40 * this.rnd(),
      };
    });
  }

  /** The next event, from a device picked at random (each on its own clock). */
  next(): TelemetryEvent {
    const r = this.rnd;
    const d = this.devices[Math.floor(r() * this.devices.length)];
    d.nextTs += d.periodMs + Math.round((r() - 0.5) * 80); // clock jitter
    d.seq++;
    const readings: Record<string, number> = {};
    d.kind.fields.forEach(([name, base, spread, digits], k) => {
      // random walk pulled back to its base, plus noise: close to the last value, never the same bytes
      d.levels[k] += (r() - 0.5) * spread * 0.05 + (base - d.levels[k]) * 0.01;
      readings[name] = round(d.levels[k] + (r() - 0.5) * spread * 0.02, digits);
    });
    if (r() < 0.01) d.status = STATUSES[Math.floor(r() * STATUSES.length)];
    d.battery = Math.max(5, d.battery - r() * 0.01);
    const doc: Record<string, unknown> = {
      device: d.id,
      site: d.site,
      type: d.kind.kind,
      seq: d.seq,
      ts: new Date(d.nextTs).toISOString(),
      readings,
      unit: d.kind.unit,
      status: d.status,
      battery_pct: round(d.battery, 1),
      rssi_dbm: -50 - Math.floor(r() * 45),
      fw: d.firmware,
    };
    if (r() < 0.02)
      doc.alarm = {
        code: `E${100 + Math.floor(r() * 40)}`,
        message: 'threshold exceeded on ' + d.kind.fields[Math.floor(r() * 3)][0],
        since: new Date(d.nextTs - Math.floor(r() * 60_000)).toISOString(),
      };
    this.count++;
    return {
      key: d.id,
      value: JSON.stringify(doc),
      headers: {
        'content-type': 'application/json',
        schema: `telemetry.${d.kind.kind}.v2`,
        site: d.site,
      },
    };
  }

  /** `n` events. */
  take(n: number): TelemetryEvent[] {
    return Array.from({ length: n }, () => this.next());
  }
}

/** A `{"records":[...]}` body for kedge's HTTP ingest; values are sent as JSON and re-serialised to the same bytes. */
export function envelopeBody(events: TelemetryEvent[]): string {
  return `{"records":[${events.map((e) => `{"key":${JSON.stringify(e.key)},"value":${e.value},"headers":${JSON.stringify(e.headers)}}`).join(',')}]}`;
}
