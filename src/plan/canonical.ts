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

function canonicalValue(value: unknown): unknown {
  if (Array.isArray(value)) return value.map((v) => (v === undefined ? null : canonicalValue(v)));
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[k];
      if (v !== undefined) out[k] = canonicalValue(v);
    }
    return out;
  }
  return value;
}

/** True when `a` and `b` are the same JSON value (key order ignored). */
export function jsonEqual(a: unknown, b: unknown): boolean {
  return JSON.stringify(canonicalValue(a)) === JSON.stringify(canonicalValue(b));
}

/**
 * Natural, locale-independent order: digit runs compare as numbers (`webapp2` < `webapp10`),
 * everything else by UTF-16 code unit. Total and deterministic.
 */
export function compareNatural(a: string, b: string): number {
  const ra = a.match(/\d+|\D+/g) ?? [];
  const rb = b.match(/\d+|\D+/g) ?? [];
  const n = Math.min(ra.length, rb.length);
  for (let i = 0; i < n; i++) {
    const x = ra[i] as string;
    const y = rb[i] as string;
    if (x === y) continue;
    const dx = /^\d/.test(x);
    const dy = /^\d/.test(y);
    if (dx && dy) {
      const nx = BigInt(x);
      const ny = BigInt(y);
      if (nx !== ny) return nx < ny ? -1 : 1;
      if (x.length !== y.length) return x.length < y.length ? -1 : 1;
      continue;
    }
    return x < y ? -1 : 1;
  }
  if (ra.length !== rb.length) return ra.length < rb.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}
