/**
 * NS8 hides secrets in stored task contexts: any object key ending in `password`, `secret`,
 * `token`, `key` or `pass` (case-insensitive) has its value replaced by the string `XXX`, at every
 * depth. The same rule masks task input in ns8ctl logs and configuration diffs.
 */
const SECRET_SUFFIXES = ['password', 'secret', 'token', 'key', 'pass'];

/** The replacement value NS8 uses. */
export const MASK = 'XXX';

/** True when a key's value must never be shown (`admin_password`, `apiKey`, `TOKEN`, ...). */
export function isSecretKey(key: string): boolean {
  const k = key.toLowerCase();
  return SECRET_SUFFIXES.some((s) => k.endsWith(s));
}

/** Returns a deep copy of `value` with every secret-looking key's value replaced by `XXX`. */
export function maskSecrets<T>(value: T): T {
  return maskAny(value) as T;
}

function maskAny(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(maskAny);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) out[k] = isSecretKey(k) ? MASK : maskAny(v);
    return out;
  }
  return value;
}

/**
 * Masks a raw task JSON string the way NS8 stores `task/<agent>/<id>/context`: parsed, masked and
 * re-serialised; a string that is not a JSON object is returned unchanged only when it holds no
 * secret-looking key name, else replaced by `XXX` (never store what we cannot mask).
 */
export function maskTaskJson(raw: string): string {
  try {
    return JSON.stringify(maskSecrets(JSON.parse(raw) as unknown));
  } catch {
    return SECRET_SUFFIXES.some((s) => raw.toLowerCase().includes(s)) ? MASK : raw;
  }
}
