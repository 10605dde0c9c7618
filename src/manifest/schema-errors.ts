/**
 * Turns ajv errors into diagnostics that name the value at fault and what is allowed, using the
 * schema itself (property lists, enums, descriptions) so messages stay true when schemas change.
 */
import type { ErrorObject } from 'ajv';
import { MASK, isSecretPath, isSecretSchema, maskString } from '../runtime/mask.js';
import { escapePointerSegment } from './locate.js';
import type { LocateMode } from './locate.js';

/** A diagnostic before it has a file and a position: pointer, how to locate it, message. */
export interface PointedMessage {
  pointer: string;
  mode: LocateMode;
  message: string;
}

type SchemaLike = Record<string, unknown>;

/** JSON type name of a value, as JSON Schema spells it (`integer` for whole numbers). */
export function jsonTypeOf(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'number';
  return typeof value;
}

/** Longest excerpt of a value shown in a message; a longer value is cut and its length given. */
export const SHOWN_VALUE_CHARS = 40;

/**
 * Short printable form of a value for messages: JSON for scalars, cut to SHOWN_VALUE_CHARS with
 * URL passwords and secret parameters masked; a type word for containers. A value may be a file
 * read by mistake, so it is never echoed in full.
 */
export function showValue(value: unknown): string {
  if (Array.isArray(value)) return 'a list';
  if (value !== null && typeof value === 'object') return 'a mapping';
  const s = maskString(JSON.stringify(value) ?? String(value));
  const chars = [...s];
  return chars.length > SHOWN_VALUE_CHARS ? `${chars.slice(0, SHOWN_VALUE_CHARS - 3).join('')}... (${chars.length} characters)` : s;
}

/** Segments of a JSON pointer, unescaped. */
function segmentsOf(pointer: string): string[] {
  return pointer === '' ? [] : pointer.slice(1).split('/').map((x) => x.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/** Levenshtein distance, for "did you mean". */
function distance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0] ?? 0;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j] ?? 0;
      prev[j] = Math.min(up + 1, (prev[j - 1] ?? 0) + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length] ?? 0;
}

/** The closest allowed word to a wrong one, when it is close enough to be a typo. */
export function closest(word: string, allowed: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const a of allowed) {
    const d = a.toLowerCase() === word.toLowerCase() ? 0 : distance(word, a);
    if (d < bestD) {
      bestD = d;
      best = a;
    }
  }
  return bestD <= (word.length <= 3 ? 1 : 2) ? best : undefined;
}

function didYouMean(word: string, allowed: readonly string[]): string {
  const c = closest(word, allowed);
  return c === undefined ? '' : ` (did you mean "${c}"?)`;
}

/** What a schema accepts, in words: `integer >= 1`, `one of Preserve, Delete`, or its description. */
export function describeExpected(schema: SchemaLike | undefined): string {
  if (!schema) return 'a valid value';
  if ('const' in schema) return JSON.stringify(schema['const']);
  if (Array.isArray(schema['enum'])) return 'one of ' + (schema['enum'] as unknown[]).map(String).join(', ');
  const type = typeof schema['type'] === 'string' ? (schema['type'] as string) : undefined;
  const parts: string[] = [];
  if (type) parts.push(type === 'object' ? 'a mapping' : type === 'array' ? 'a list' : type);
  if (typeof schema['minimum'] === 'number') parts.push(`>= ${schema['minimum'] as number}`);
  if (typeof schema['maximum'] === 'number') parts.push(`<= ${schema['maximum'] as number}`);
  return parts.join(' ') || (typeof schema['description'] === 'string' ? (schema['description'] as string) : 'a valid value');
}

function fieldName(pointer: string): string {
  const i = pointer.lastIndexOf('/');
  return pointer.slice(i + 1).replace(/~1/g, '/').replace(/~0/g, '~');
}

/**
 * Translates the errors of one ajv run into messages. `propertyNames` wrappers, `oneOf` branch
 * noise and duplicates are dropped; the module/image `oneOf` and the image-excludes-version
 * `dependencies` rule get messages of their own.
 */
export function translateSchemaErrors(errors: readonly ErrorObject[]): PointedMessage[] {
  const out: PointedMessage[] = [];
  for (const e of errors) {
    // Sub-errors of a oneOf branch or of a dependencies/not are explained by the parent error.
    if (/\/oneOf\/\d+\//.test(e.schemaPath) || /\/dependencies\/[^/]+\/not\//.test(e.schemaPath)) continue;
    if (e.keyword === 'propertyNames') continue;
    const view = viewOf(e);
    const propertyName = (e as ErrorObject & { propertyName?: string }).propertyName;
    if (propertyName !== undefined) out.push(invalidKeyMessage(view, propertyName));
    else out.push(((Object.hasOwn(TRANSLATORS, e.keyword) ? TRANSLATORS[e.keyword] : undefined) ?? translateOther)(view));
  }
  return dedupe(out);
}

/** One ajv error with what every translator needs. */
interface ErrorView {
  e: ErrorObject;
  path: string;
  parentSchema: SchemaLike | undefined;
  description: string | undefined;
  /** Shows a value, masked when it is secret (by its key or its schema). */
  showValue: (v: unknown) => string;
}

function viewOf(e: ErrorObject): ErrorView {
  const path = e.instancePath;
  const parentSchema = e.parentSchema as SchemaLike | undefined;
  const description = typeof parentSchema?.['description'] === 'string' ? (parentSchema['description'] as string) : undefined;
  // A value under a secret key, or one its schema marks secret, is never shown.
  const secret = isSecretPath(segmentsOf(path)) || isSecretSchema(parentSchema);
  return { e, path, parentSchema, description, showValue: (v: unknown): string => (secret ? MASK : showValueOf(v)) };
}

/** An invalid key of a map (volume name, label key): point at the key. */
function invalidKeyMessage({ e, path, description }: ErrorView, propertyName: string): PointedMessage {
  return {
    pointer: `${path}/${escapePointerSegment(propertyName)}`,
    mode: 'key',
    message: `invalid name ${showValueOf(propertyName)} in ${path || '/'}: expected ${description ?? describeKeyRule(e)}`,
  };
}

function translateOther({ e, path, description, showValue }: ErrorView): PointedMessage {
  return { pointer: path, mode: 'value', message: `${fieldName(path) || 'document'}: ${showValue(e.data)} ${e.message ?? 'is not valid'}${description ? `: expected ${description}` : ''}` };
}

function translateLength({ e, path, showValue }: ErrorView): PointedMessage {
  const limit = (e.params as { limit: number }).limit;
  const len = typeof e.data === 'string' ? [...e.data].length : 0;
  const rule = e.keyword === 'maxLength' ? `at most ${limit}` : `at least ${limit}`;
  return { pointer: path, mode: 'value', message: `${fieldName(path)}: ${showValue(e.data)} is ${len} characters long; ${rule} allowed` };
}

function translateRange({ e, path, showValue }: ErrorView): PointedMessage {
  const p = e.params as { comparison: string; limit: number };
  return { pointer: path, mode: 'value', message: `${fieldName(path)}: ${showValue(e.data)} is out of range; must be ${p.comparison} ${p.limit}` };
}

/** The message of each ajv keyword that has one of its own (others: translateOther). */
const TRANSLATORS: Readonly<Partial<Record<string, (v: ErrorView) => PointedMessage>>> = {
  additionalProperties: ({ e, path, parentSchema }) => {
    const name = String((e.params as { additionalProperty: string }).additionalProperty);
    const allowed = Object.keys((parentSchema?.['properties'] as SchemaLike | undefined) ?? {});
    return { pointer: `${path}/${escapePointerSegment(name)}`, mode: 'key', message: `unknown field ${showValueOf(name)} in ${path || '/'}; allowed: ${allowed.join(', ')}${didYouMean(name, allowed)}` };
  },
  required: ({ e, path, parentSchema }) => {
    const name = String((e.params as { missingProperty: string }).missingProperty);
    const propSchema = (parentSchema?.['properties'] as Record<string, SchemaLike> | undefined)?.[name];
    return { pointer: `${path}/${escapePointerSegment(name)}`, mode: 'value', message: `missing required field ${JSON.stringify(name)} in ${path || '/'}: expected ${describeExpected(propSchema)}` };
  },
  type: ({ e, path, parentSchema, showValue }) => {
    const expected = describeExpected(parentSchema ?? { type: (e.params as { type: string }).type });
    return { pointer: path, mode: 'value', message: `${fieldName(path) || 'document'}: expected ${expected}, got ${jsonTypeOf(e.data)}${isScalar(e.data) && e.data !== null ? ' ' + showValue(e.data) : ''}` };
  },
  const: ({ e, path, showValue }) => {
    const allowed = (e.params as { allowedValue: unknown }).allowedValue;
    return { pointer: path, mode: 'value', message: `${fieldName(path)} must be ${JSON.stringify(allowed)}; got ${showValue(e.data)}` };
  },
  enum: ({ e, path, showValue }) => {
    const allowed = ((e.params as { allowedValues: unknown[] }).allowedValues ?? []).map(String);
    return { pointer: path, mode: 'value', message: `${fieldName(path)}: ${showValue(e.data)} is not allowed; allowed: ${allowed.join(', ')}${typeof e.data === 'string' ? didYouMean(e.data, allowed) : ''}` };
  },
  pattern: ({ e, path, parentSchema, description, showValue }) => ({
    pointer: path,
    mode: 'value',
    message: `${fieldName(path)}: ${showValue(e.data)} is not valid: expected ${description ?? `a string matching ${String(parentSchema?.['pattern'])}`}`,
  }),
  maxLength: translateLength,
  minLength: translateLength,
  minimum: translateRange,
  maximum: translateRange,
  uniqueItems: ({ e, path, showValue }) => {
    const p = e.params as { i: number; j: number };
    const [first, second] = [Math.min(p.i, p.j), Math.max(p.i, p.j)];
    const items = Array.isArray(e.data) ? (e.data as unknown[]) : [];
    return { pointer: `${path}/${second}`, mode: 'value', message: `${fieldName(path)}: ${showValue(items[second])} is listed twice (items ${first} and ${second}); items must be unique` };
  },
  oneOf: ({ e, path }) => {
    const data = (e.data ?? {}) as Record<string, unknown>;
    if ('module' in data && 'image' in data) {
      return { pointer: `${path}/image`, mode: 'key', message: `"module" and "image" are mutually exclusive: give a module name looked up in the repositories, or a full image URL, not both` };
    }
    return { pointer: path, mode: 'key', message: `missing "module" or "image" in ${path || '/'}: give exactly one, a module name (dokuwiki) or a full image URL (ghcr.io/nethserver/dokuwiki:1.2.3)` };
  },
  not: ({ e, path }) => {
    const m = /\/dependencies\/([^/]+)\/not$/.exec(e.schemaPath);
    if (m?.[1] === 'image') {
      return { pointer: `${path}/version`, mode: 'key', message: `"version" is not allowed with "image": the image tag selects the version; use "module" with "version", or put the tag in the image URL` };
    }
    return { pointer: path, mode: 'value', message: `${fieldName(path) || 'document'}: ${e.message ?? 'is not valid'}` };
  },
};

const showValueOf = showValue;

function isScalar(v: unknown): boolean {
  return v === null || typeof v !== 'object';
}

function describeKeyRule(e: ErrorObject): string {
  const p = e.params as { limit?: number; pattern?: string };
  if (e.keyword === 'minLength') return `at least ${p.limit ?? 1} characters`;
  if (e.keyword === 'maxLength') return `at most ${p.limit ?? 0} characters`;
  if (e.keyword === 'pattern') return `a name matching ${p.pattern ?? ''}`;
  return e.message ?? 'a valid name';
}

function dedupe(list: PointedMessage[]): PointedMessage[] {
  const seen = new Set<string>();
  return list.filter((m) => {
    const k = `${m.pointer}\0${m.message}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

