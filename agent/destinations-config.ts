/**
 * KEDGE_DESTINATIONS' per-destination settings (KEDGE_<N>_KAFKA_BROKERS, KEDGE_<N>_…) and the
 * routes (KEDGE_ROUTE_<NAME>). A destination's settings are the unprefixed ones with its own
 * prefixed values laid over them, parsed by the same rows of settings.ts, so every rule and
 * every message is the one the unprefixed setting has (naming the prefixed variable).
 */
import type { Config, DestinationConfig } from './config-types.ts';
import { parseRoute, RouteSyntaxError, type RouteDef } from './route-syntax.ts';
import { Field } from './setting-values.ts';
import { type EnvVarName, settingOf } from './settings.ts';

/** What a destination may set for itself, as KEDGE_<N>_<rest of the name>. */
export const PER_DESTINATION: readonly EnvVarName[] = [
  'KEDGE_KAFKA_CLIENT',
  'KEDGE_KAFKA_BROKERS',
  'KEDGE_KAFKA_TLS',
  'KEDGE_KAFKA_CA_FILE',
  'KEDGE_KAFKA_CERT_FILE',
  'KEDGE_KAFKA_KEY_FILE',
  'KEDGE_KAFKA_SASL_MECHANISM',
  'KEDGE_KAFKA_USERNAME',
  'KEDGE_KAFKA_PASSWORD',
  'KEDGE_COMPRESSION',
  'KEDGE_FORWARD_RATE',
  'KEDGE_FORWARD_WINDOWS',
];

/** The one destination's name when KEDGE_DESTINATIONS is unset. */
export const DEFAULT_DESTINATION = 'kafka';

/** KEDGE_<N>_<rest>: the name of `base` for destination `name`. */
export function destinationVar(name: string, base: EnvVarName): string {
  return `KEDGE_${name.toUpperCase()}_${base.slice('KEDGE_'.length)}`;
}

const ROUTE_RE = /^KEDGE_ROUTE_([A-Z0-9_]+)$/;

/** Is `name` a variable this module reads, given the destinations? */
export function isDestinationVariable(name: string, destinations: readonly string[]): boolean {
  if (ROUTE_RE.test(name)) return true;
  return destinations.some((d) => PER_DESTINATION.some((b) => destinationVar(d, b) === name));
}

/**
 * The parsed per-destination settings: for each destination, the env with its own values laid
 * over the unprefixed ones, and the name each setting was read from (for messages).
 */
export function destinationEnv(
  vars: Record<string, string | undefined>,
  name: string,
): { env: Record<string, string | undefined>; from: Map<EnvVarName, string> } {
  const env = { ...vars };
  const from = new Map<EnvVarName, string>();
  for (const base of PER_DESTINATION) {
    const own = destinationVar(name, base);
    if (vars[own] !== undefined && vars[own]?.trim() !== '') {
      env[base] = vars[own];
      from.set(base, own);
    }
  }
  return { env, from };
}

/** Parses the per-destination rows for one destination; problems name the variable they came from. */
export function parseDestinationValues(
  vars: Record<string, string | undefined>,
  name: string,
  problems: string[],
): { values: Record<string, unknown>; env: Record<string, string | undefined> } {
  const { env, from } = destinationEnv(vars, name);
  const values: Record<string, unknown> = {};
  for (const base of PER_DESTINATION) {
    const s = settingOf(base);
    values[base] = s.parse(new Field(from.get(base) ?? base, env[base], s.default, problems));
  }
  const brokers = destinationVar(name, 'KEDGE_KAFKA_BROKERS');
  if (!from.has('KEDGE_KAFKA_BROKERS'))
    problems.push(
      `${brokers} is not set (each destination in KEDGE_DESTINATIONS needs its own brokers, e.g. ${brokers}=kafka1:9092)`,
    );
  return { values, env };
}

/**
 * Every KEDGE_ROUTE_<NAME>, parsed and checked against the destinations; one problem per bad
 * route, with the column of the error. Sorted by name.
 */
export function parseRoutes(
  vars: Record<string, string | undefined>,
  destinations: readonly string[],
  problems: string[],
): RouteDef[] {
  const out: RouteDef[] = [];
  for (const [name, raw] of Object.entries(vars)) {
    const m = ROUTE_RE.exec(name);
    if (!m || raw === undefined) continue;
    if (raw.trim() === '') {
      problems.push(
        `${name} is empty (expected "<pattern> -> <destination> [| step]…", e.g. sensors.# -> ${destinations[0]})`,
      );
      continue;
    }
    try {
      const r = parseRoute(m[1].toLowerCase(), raw);
      if (!destinations.includes(r.destination)) {
        problems.push(
          `${name}: at column ${r.destinationColumn}: no destination ${JSON.stringify(r.destination)} (${destinations.length === 1 && destinations[0] === DEFAULT_DESTINATION ? 'without KEDGE_DESTINATIONS the one destination is kafka' : `KEDGE_DESTINATIONS is ${destinations.join(',')}`})`,
        );
        continue;
      }
      out.push(r);
    } catch (e) {
      if (!(e instanceof RouteSyntaxError)) throw e;
      problems.push(`${name}: ${e.message}`);
    }
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** The destinations' configs from their parsed values (only called when there are no problems). */
export function toDestination(
  name: string,
  v: Record<string, unknown>,
  base: Config['kafka'],
  tlsGiven: boolean,
): DestinationConfig {
  const mechanism = v.KEDGE_KAFKA_SASL_MECHANISM as
    | NonNullable<Config['kafka']['sasl']>['mechanism']
    | null;
  const user = v.KEDGE_KAFKA_USERNAME as string | null;
  const password = v.KEDGE_KAFKA_PASSWORD as string | null;
  return {
    name,
    kafka: {
      client: v.KEDGE_KAFKA_CLIENT as Config['kafka']['client'],
      brokers: v.KEDGE_KAFKA_BROKERS as string[],
      tls: (v.KEDGE_KAFKA_TLS as boolean | null) ?? tlsGiven,
      caFile: v.KEDGE_KAFKA_CA_FILE as string | null,
      certFile: v.KEDGE_KAFKA_CERT_FILE as string | null,
      keyFile: v.KEDGE_KAFKA_KEY_FILE as string | null,
      sasl:
        mechanism !== null && user !== null && password !== null
          ? { mechanism, username: user, password }
          : null,
      compression: v.KEDGE_COMPRESSION as Config['kafka']['compression'],
      topicPrefix: base.topicPrefix,
    },
    forward: {
      rate: v.KEDGE_FORWARD_RATE as number | null,
      windows: v.KEDGE_FORWARD_WINDOWS as DestinationConfig['forward']['windows'],
    },
  };
}

/** The destinations kedge forwards to: the configured ones, or the one `kafka` built from the unprefixed settings. */
export function effectiveDestinations(cfg: Config): DestinationConfig[] {
  return (
    cfg.destinations ?? [{ name: DEFAULT_DESTINATION, kafka: cfg.kafka, forward: cfg.forward }]
  );
}

/** Routes of one destination; null when kedge has no routes at all (every event unchanged). */
export function routesOf(cfg: Config, destination: string): RouteDef[] | null {
  if (cfg.routes.length === 0) return null;
  return cfg.routes.filter((r) => r.destination === destination);
}
