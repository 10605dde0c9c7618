/**
 * Declarative configuration of a module instance: `spec.configuration` is the input of the
 * instance's `configure-module` action. These pure functions validate it against the action's
 * `validate-input.json` (at plan time, with precise pointers) and compare it with what
 * `get-configuration` returns (for the Drifted condition), without I/O.
 */
import type { ErrorObject } from 'ajv';
import { isSecretSchema, maskString, secretNamesOfSchema } from '../runtime/mask.js';
import { MASK, isSecretKey } from '../runtime/mask-ns8.js';
import { compileSchema, errorPathSegments } from './schema-validation.js';

/** A configuration problem: where (JSON pointer, prefixed with `basePointer`) and what is allowed. */
export interface ConfigurationProblem {
  pointer: string;
  message: string;
}

/** One differing field between desired and actual configuration. */
export interface ConfigurationChange {
  /** JSON pointer into the configuration (`/hosts/0`). */
  pointer: string;
  /** `missing`: desired has it, actual lacks it; `extra`: only actual has it (strict mode); `changed`: both differ. */
  kind: 'missing' | 'extra' | 'changed';
  /** Desired value (masked for secret-looking keys); absent for `extra`. */
  desired?: unknown;
  /** Actual value (masked for secret-looking keys); absent for `missing`. */
  actual?: unknown;
}

/** Result of diffConfiguration: equal when `changes` is empty. */
export interface ConfigurationDiff {
  equal: boolean;
  changes: ConfigurationChange[];
}

const escapePointer = (s: string): string => s.replace(/~/g, '~0').replace(/\//g, '~1');
const pointerOf = (segs: readonly string[]): string => segs.map((s) => '/' + escapePointer(s)).join('');

function show(value: unknown): string {
  const s = maskString(JSON.stringify(value) ?? 'undefined');
  return s.length > 60 ? s.slice(0, 57) + '...' : s;
}

function describe(e: ErrorObject, value: unknown, secret: boolean): string {
  const p = e.params as Record<string, unknown>;
  const got = secret ? '' : ` (got ${show(value)})`;
  switch (e.keyword) {
    case 'required':
      return `required field ${JSON.stringify(p['missingProperty'])} is missing`;
    case 'additionalProperties': {
      return `field ${JSON.stringify(p['additionalProperty'])} is not allowed`;
    }
    case 'type':
      return `must be ${String(p['type'])}${got}`;
    case 'enum':
      return `must be one of ${(p['allowedValues'] as unknown[]).map((v) => JSON.stringify(v)).join(', ')}${got}`;
    case 'const':
      return `must be ${JSON.stringify(p['allowedValue'])}${got}`;
    case 'format':
      return `must be a valid ${String(p['format'])}${got}`;
    case 'pattern':
      return `must match the pattern ${String(p['pattern'])}${got}`;
    default:
      return `${e.message ?? 'is invalid'}${got}`;
  }
}

function allowedProperties(schema: unknown, segs: readonly string[]): string[] | undefined {
  let cur: unknown = schema;
  for (const s of segs) {
    if (!cur || typeof cur !== 'object') return undefined;
    const c = cur as Record<string, unknown>;
    const props = c['properties'] as Record<string, unknown> | undefined;
    if (props && s in props) cur = props[s];
    else if (c['items'] && /^\d+$/.test(s)) cur = c['items'];
    else return undefined;
  }
  if (!cur || typeof cur !== 'object') return undefined;
  const props = (cur as Record<string, unknown>)['properties'];
  return props && typeof props === 'object' ? Object.keys(props).sort() : undefined;
}

/**
 * Validates a Module's `spec.configuration` against the instance's configure-module input schema
 * (draft-07). Returns every problem (never throws for invalid configuration); a schema that cannot
 * be compiled is reported as one problem at `basePointer`. Secret values never appear in messages.
 */
export function validateConfiguration(config: unknown, schemaJson: unknown, opts: { basePointer?: string; origin?: string } = {}): ConfigurationProblem[] {
  const base = opts.basePointer ?? '';
  let validate;
  try {
    validate = compileSchema(schemaJson, opts.origin ?? 'configure-module/validate-input.json');
  } catch (err) {
    return [{ pointer: base, message: (err as Error).message }];
  }
  if (validate(config)) return [];
  const problems: ConfigurationProblem[] = [];
  const seen = new Set<string>();
  // Secret by name or because the schema marks the property (format: password, writeOnly, secret).
  const schemaSecrets = secretNamesOfSchema(schemaJson);
  const secretName = (k: string): boolean => isSecretKey(k) || schemaSecrets.has(k);
  for (const e of validate.errors ?? []) {
    if (e.keyword === 'if') continue;
    const parentSegs = e.instancePath === '' ? [] : e.instancePath.slice(1).split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
    const segs = errorPathSegments(e);
    let value: unknown = config;
    for (const s of parentSegs) value = value && typeof value === 'object' ? (value as Record<string, unknown>)[s] : undefined;
    let message = describe(e, value, parentSegs.some(secretName) || isSecretSchema(e.parentSchema));
    if (e.keyword === 'additionalProperties') {
      const allowed = allowedProperties(schemaJson, parentSegs);
      if (allowed) message += `; allowed: ${allowed.join(', ')}`;
    }
    const pointer = base + pointerOf(e.keyword === 'additionalProperties' ? segs : e.keyword === 'required' ? parentSegs : segs);
    const key = `${pointer}\u0000${message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    problems.push({ pointer, message });
  }
  return problems;
}

/** Sorts object keys recursively (arrays keep their order) for stable comparison and display. */
export function normalizeConfiguration(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(normalizeConfiguration);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value as Record<string, unknown>).sort()) out[k] = normalizeConfiguration((value as Record<string, unknown>)[k]);
    return out;
  }
  return value;
}

function withDefaults(value: unknown, schema: unknown): unknown {
  if (schema === undefined) return value;
  const copy = structuredClone(value);
  try {
    compileSchema(schema, 'configuration schema', [], { useDefaults: true })(copy);
  } catch {
    return value;
  }
  return copy;
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/**
 * Compares desired configuration with actual (get-configuration output) after normalising both:
 * keys sorted, schema `default`s filled in (when `schema` is given). Rules:
 * - only fields the desired configuration names are compared, unless `strict` (get-configuration
 *   may return more than configure-module takes);
 * - a secret-looking field (`*password`, `*token`, ...) that actual does not return is write-only
 *   and not drift; when both have it and they differ it is reported with both values masked;
 * - arrays are compared as whole values, in order.
 */
export function diffConfiguration(desired: unknown, actual: unknown, opts: { schema?: unknown; strict?: boolean } = {}): ConfigurationDiff {
  const d = normalizeConfiguration(withDefaults(desired, opts.schema));
  const a = normalizeConfiguration(withDefaults(actual, opts.schema));
  const changes: ConfigurationChange[] = [];
  const schemaSecrets = secretNamesOfSchema(opts.schema);
  const isSecret = (k: string): boolean => isSecretKey(k) || schemaSecrets.has(k);
  const walk = (dv: unknown, av: unknown, segs: string[], secret: boolean): void => {
    if (isObject(dv) && isObject(av)) {
      for (const k of Object.keys(dv)) {
        const ks = secret || isSecret(k);
        if (!(k in av)) {
          if (ks) continue; // write-only secret
          changes.push({ pointer: pointerOf([...segs, k]), kind: 'missing', desired: dv[k] });
          continue;
        }
        walk(dv[k], av[k], [...segs, k], ks);
      }
      if (opts.strict) {
        for (const k of Object.keys(av)) if (!(k in dv)) changes.push({ pointer: pointerOf([...segs, k]), kind: 'extra', actual: secret || isSecret(k) ? MASK : av[k] });
      }
      return;
    }
    if (JSON.stringify(dv) !== JSON.stringify(av)) {
      changes.push({ pointer: pointerOf(segs), kind: 'changed', desired: secret ? MASK : dv, actual: secret ? MASK : av });
    }
  };
  walk(d, a, [], false);
  return { equal: changes.length === 0, changes };
}

/** One line per change, e.g. `~ /wiki_name: "Old" -> "New"`, for status messages and plans. */
export function formatConfigurationDiff(diff: ConfigurationDiff): string[] {
  return diff.changes.map((c) =>
    c.kind === 'missing' ? `- ${c.pointer || '/'}: missing (desired ${show(c.desired)})` : c.kind === 'extra' ? `+ ${c.pointer || '/'}: not in desired (${show(c.actual)})` : `~ ${c.pointer || '/'}: ${show(c.actual)} -> ${show(c.desired)}`,
  );
}
