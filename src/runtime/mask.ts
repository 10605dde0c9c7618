/**
 * The one rule set for secrets, used by everything ns8ctl shows or stores for people to read:
 * plans, diffs, `get` output, events, errors, logs, and (with NS8's `XXX`) task contexts.
 *
 * A value is secret when
 * 1. a schema marks it: `format: password`, `writeOnly: true` or `secret: true` on its property
 *    (NS8's `validate-input.json` marks passwords with `format: password`); or
 * 2. the key holding it, or any key above it, has a secret-looking name (`isSecretKey`); or
 * 3. it is the password of a URL's userinfo (`scheme://user:PASSWORD@host`, the userinfo ends at
 *    the LAST `@` of the authority) or the value of a secret-named query or `NAME=value`
 *    parameter (`?password=...`, `&token=...`, `ADMIN_PASSWORD=...`).
 * docs/security.md states these rules; docs/plan.md shows them in plans.
 */

import { setOwn } from './canonical.js';
import { MASK, isSecretKey, maskStringWith } from './mask-url.js';

// The string rules live in mask-url.ts (no imports at all); re-exported here so this stays the one
// place to import the rules from.
export { MASK, isSecretKey, maskString, maskUrl } from './mask-url.js';

/** What NS8 replaces secrets with in stored task contexts (kept for compatibility with NS8 tools). */
export const NS8_MASK = 'XXX';

/** True when any key on the path (object keys, outermost first) is secret by name. */
export function isSecretPath(path: readonly string[]): boolean {
  return path.some(isSecretKey);
}

/**
 * True when a JSON Schema (the part describing one value) marks its value as secret:
 * `format: password` (NS8's validate-input.json), `writeOnly: true`, or a `secret: true` annotation.
 */
export function isSecretSchema(schema: unknown): boolean {
  if (schema === null || typeof schema !== 'object') return false;
  const s = schema as Record<string, unknown>;
  return s['format'] === 'password' || s['writeOnly'] === true || s['secret'] === true;
}

/**
 * Property names a JSON Schema marks secret (see isSecretSchema), at any depth (`properties`,
 * `items`, `additionalProperties`, `allOf/anyOf/oneOf`, `if/then/else`, `definitions`).
 * Bounded: at most 10 000 schema nodes are visited, so a huge or self-referencing schema cannot
 * stall masking.
 */
export function secretNamesOfSchema(schema: unknown): Set<string> {
  const out = new Set<string>();
  const stack: unknown[] = [schema];
  let budget = 10_000;
  while (stack.length > 0 && budget-- > 0) {
    const s = stack.pop();
    if (s === null || typeof s !== 'object') continue;
    if (Array.isArray(s)) {
      stack.push(...s);
      continue;
    }
    const o = s as Record<string, unknown>;
    const props = o['properties'];
    if (props && typeof props === 'object') {
      for (const [name, sub] of Object.entries(props as Record<string, unknown>)) {
        if (isSecretSchema(sub)) out.add(name);
        stack.push(sub);
      }
    }
    for (const k of ['items', 'additionalProperties', 'allOf', 'anyOf', 'oneOf', 'if', 'then', 'else', 'definitions', '$defs', 'patternProperties']) {
      const sub = o[k];
      if (sub && typeof sub === 'object') stack.push(k === 'definitions' || k === '$defs' || k === 'patternProperties' ? Object.values(sub) : sub);
    }
  }
  return out;
}

/** Options of maskSecrets. */
export interface MaskOptions {
  /** Replacement text (default MASK; NS8_MASK for task contexts). */
  mask?: string;
  /** Extra key names whose values are secret, e.g. from secretNamesOfSchema(validate-input.json). */
  secretNames?: ReadonlySet<string>;
}

/**
 * A deep copy of `value` in which every value under a secret key (by name, or listed in
 * `opts.secretNames`) is the mask (whatever its type), and URL passwords and secret parameters in
 * strings are masked. Arrays and other keys are kept. Never throws for JSON data; non-plain
 * objects are copied as their enumerable own properties.
 */
export function maskSecrets<T>(value: T, opts: MaskOptions = {}): T {
  const mask = opts.mask ?? MASK;
  const names = opts.secretNames;
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') return maskStringWith(v, mask);
    if (Array.isArray(v)) return v.map(walk);
    if (v !== null && typeof v === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) setOwn(out, k, (isSecretKey(k) || names?.has(k) === true) && x !== undefined ? mask : walk(x));
      return out;
    }
    return v;
  };
  return walk(value) as T;
}

/**
 * Masks a raw task JSON string the way NS8 stores `task/<agent>/<id>/context`: parsed, masked with
 * `XXX` and re-serialised; a string that is not JSON is returned unchanged only when it holds no
 * secret-looking word, else replaced by `XXX` (never store what we cannot mask).
 */
export function maskTaskJson(raw: string): string {
  try {
    return JSON.stringify(maskSecrets(JSON.parse(raw) as unknown, { mask: NS8_MASK }));
  } catch {
    return /password|passwd|secret|token|key|pass|pwd|credential/i.test(raw) ? NS8_MASK : raw;
  }
}
