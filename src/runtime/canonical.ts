/**
 * Value helpers the planner and renderer share: canonical JSON (sorted keys, no `undefined`),
 * deep equality on that form, and a natural order for ids (`dokuwiki2` before `dokuwiki10`).
 */

/**
 * A deep copy of a JSON-like value with object keys sorted and `undefined` members dropped, so two
 * values that mean the same JSON compare equal and produce the same patch. Never throws for JSON data.
 */
export function canonicalize<T>(value: T): T {
  return canonicalValue(value) as T;
}

/** `obj[key] = value` that also works for the key `__proto__` (an own property, never the prototype). */
export function setOwn(obj: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  else obj[key] = value;
}

function canonicalValue(value: unknown): unknown {
  if (Array.isArray(value)) return value.map((v) => (v === undefined ? null : canonicalValue(v)));
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[k];
      if (v !== undefined) setOwn(out, k, canonicalValue(v));
    }
    return out;
  }
  return value;
}

/**
 * `JSON.stringify(canonicalize(value))` without building the copy: the text a desired object is
 * stored as, and a cheap equality key. For JSON data only (no toJSON, no cycles).
 */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) {
    let out = '[';
    for (let i = 0; i < value.length; i++) {
      const v: unknown = value[i];
      out += (i > 0 ? ',' : '') + (v === undefined ? 'null' : canonicalJson(v));
    }
    return out + ']';
  }
  if (value !== null && typeof value === 'object') {
    let out = '{';
    for (const k of jsKeyOrder(Object.keys(value).sort())) {
      const v = (value as Record<string, unknown>)[k];
      if (v !== undefined) out += (out.length > 1 ? ',' : '') + JSON.stringify(k) + ':' + canonicalJson(v);
    }
    return out + '}';
  }
  return JSON.stringify(value) ?? 'null';
}

const ARRAY_INDEX = /^(0|[1-9][0-9]*)$/;

/**
 * The order JavaScript enumerates keys inserted in `sorted` order: array-index keys (`"0"`,
 * `"12"`) first, numerically, then the rest as inserted. Keeps canonicalJson byte-equal to
 * JSON.stringify(canonicalize(...)).
 */
function jsKeyOrder(sorted: string[]): string[] {
  // Only a key starting with a digit can be an index: the usual object (none) is returned as it
  // is, without a regex test and two filtered copies per object.
  if (!sorted.some(startsWithDigit)) return sorted;
  const isIndex = (k: string): boolean => ARRAY_INDEX.test(k) && Number(k) < 4294967295;
  const indexes = sorted.filter(isIndex).sort((a, b) => Number(a) - Number(b));
  return indexes.length ? [...indexes, ...sorted.filter((k) => !isIndex(k))] : sorted;
}

function startsWithDigit(k: string): boolean {
  const c = k.charCodeAt(0);
  return c >= 0x30 && c <= 0x39;
}

/**
 * True when `a` and `b` are the same JSON value (key order ignored): exactly
 * `canonicalJson(a) === canonicalJson(b)`, decided by walking both values instead of building
 * either text (the planner compares every desired object with its stored one, and nearly all
 * are equal). Members whose value is undefined are absent, as in the text; leaves compare by
 * their JSON text (NaN, Infinity and undefined in an array are all `null`, -0 is `0`).
 */
export function jsonEqual(a: unknown, b: unknown): boolean {
  const aArray = Array.isArray(a);
  if (aArray || Array.isArray(b)) {
    if (!aArray || !Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!jsonEqual(a[i], b[i])) return false;
    return true;
  }
  const aObject = a !== null && typeof a === 'object';
  if (aObject || (b !== null && typeof b === 'object')) {
    if (!aObject || b === null || typeof b !== 'object') return false;
    return membersEqual(a as Record<string, unknown>, b as Record<string, unknown>);
  }
  if (a === b) return true;
  // A string's text starts with a quote, no other leaf's does.
  if (typeof a === 'string' || typeof b === 'string') return false;
  return (JSON.stringify(a) ?? 'null') === (JSON.stringify(b) ?? 'null');
}

const isEnumerableOwn = Object.prototype.propertyIsEnumerable;

/** Same defined members (own enumerable keys whose value is not undefined), each jsonEqual. */
function membersEqual(a: Record<string, unknown>, b: Record<string, unknown>): boolean {
  let defined = 0;
  for (const k of Object.keys(a)) {
    const v = a[k];
    if (v === undefined) continue;
    defined++;
    if (!isEnumerableOwn.call(b, k)) return false;
    const w = b[k];
    if (w === undefined || !jsonEqual(v, w)) return false;
  }
  for (const k of Object.keys(b)) if (b[k] !== undefined) defined--;
  return defined === 0;
}

/** A string split for natural comparison: digit runs become numbers (BigInt past 15 digits). */
export type NaturalTokens = { text: string; parts: (string | number | bigint)[]; lengths: number[] };

const isDigit = (c: number): boolean => c >= 0x30 && c <= 0x39;

/** Splits `s` once (digit runs and the text between), so that many comparisons (a sort) split nothing. */
export function naturalTokens(s: string): NaturalTokens {
  const parts: (string | number | bigint)[] = [];
  const lengths: number[] = [];
  for (let i = 0; i < s.length; ) {
    const start = i;
    const digits = isDigit(s.charCodeAt(i));
    while (i < s.length && isDigit(s.charCodeAt(i)) === digits) i++;
    const run = s.slice(start, i);
    // Up to 15 digits a number holds exactly; longer runs compare as BigInt (`<` is exact across both).
    parts.push(digits ? (run.length <= 15 ? Number(run) : BigInt(run)) : run);
    lengths.push(run.length);
  }
  return { text: s, parts, lengths };
}

/** `compareNatural` on pre-split strings. */
export function compareTokens(a: NaturalTokens, b: NaturalTokens): number {
  const n = Math.min(a.parts.length, b.parts.length);
  for (let i = 0; i < n; i++) {
    const x = a.parts[i]!;
    const y = b.parts[i]!;
    const xText = typeof x === 'string';
    const yText = typeof y === 'string';
    if (!xText && !yText) {
      if (x < y) return -1;
      if (x > y) return 1;
      const lx = a.lengths[i] as number;
      const ly = b.lengths[i] as number;
      if (lx !== ly) return lx < ly ? -1 : 1; // `01` after `1`: total order on distinct strings
      continue;
    }
    if (x === y) continue;
    if (!xText) return -1; // digits sort before other text, as in code-unit order
    if (!yText) return 1;
    return x < y ? -1 : 1;
  }
  if (a.parts.length !== b.parts.length) return a.parts.length < b.parts.length ? -1 : 1;
  return a.text < b.text ? -1 : a.text > b.text ? 1 : 0;
}

/**
 * Natural, locale-independent order: digit runs compare as numbers (`webapp2` < `webapp10`),
 * everything else by UTF-16 code unit. Total and deterministic.
 */
export function compareNatural(a: string, b: string): number {
  return compareTokens(naturalTokens(a), naturalTokens(b));
}

/**
 * `list` sorted by `compareNatural` of `keyOf(item)`, each key split once: a sort of n items
 * compares about n log n times, and `compareNatural` splits both strings at every comparison.
 */
export function sortNatural<T>(list: readonly T[], keyOf: (item: T) => string): T[] {
  return list
    .map((item) => ({ item, tokens: naturalTokens(keyOf(item)) }))
    .sort((a, b) => compareTokens(a.tokens, b.tokens))
    .map((x) => x.item);
}
