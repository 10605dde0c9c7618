/**
 * Secret masking for everything ns8ctl shows: plans, diffs, logs and events. A value is secret
 * when the key holding it (or any key above it) looks secret, and passwords inside URLs
 * (`https://user:pw@host/`) are secret too. docs/plan.md lists the rules.
 */

import { setOwn } from './canonical.js';

/** What a secret value is replaced with. */
export const MASK = '(sensitive value)';

/** NS8's rule (agent task context): a key ending in one of these, case-insensitive. */
const NS8_SUFFIX = /(password|secret|token|key|pass)$/i;
/** Anywhere in the key name. */
const CONTAINS = /(password|passwd|passphrase|secret|token|apikey|api_key|credential|private_?key)/i;
/** As a whole word of a snake/kebab/camel-case name (`ssh_key_file`, `keyData`, `db-pwd`). */
const WORDS = new Set(['key', 'keys', 'pass', 'pwd', 'psk']);

/**
 * True when a value stored under key `name` must not be shown. Matches NS8's agent rule (the
 * name ends in password/secret/token/key/pass) plus names containing password, passwd,
 * passphrase, secret, token, apikey, api_key, credential, private(_)key, or having a word
 * key/keys/pass/pwd/psk; all case-insensitive. Errs on the side of masking.
 */
export function isSecretKey(name: string): boolean {
  if (NS8_SUFFIX.test(name) || CONTAINS.test(name)) return true;
  const words = name
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .toLowerCase()
    .split(/[^a-z0-9]+/);
  return words.some((w) => WORDS.has(w));
}

/** True when any key on the path (object keys, outermost first) is secret. */
export function isSecretPath(path: readonly string[]): boolean {
  return path.some(isSecretKey);
}

const URL_PASSWORD = /\b([a-z][a-z0-9+.-]*:\/\/[^\s/:@]*):([^\s/@]+)@/gi;

/** Masks the password part of URLs inside a string (`https://u:(sensitive value)@host/`). */
export function maskString(s: string): string {
  return s.replace(URL_PASSWORD, `$1:${MASK}@`);
}

/**
 * A deep copy of `value` in which every value under a secret-looking key is `MASK` (whatever its
 * type) and URL passwords in strings are masked. Arrays and other keys are kept. Never throws for
 * JSON data; non-plain objects are copied as their enumerable own properties.
 */
export function maskSecrets<T>(value: T): T {
  return maskValue(value) as T;
}

function maskValue(value: unknown): unknown {
  if (typeof value === 'string') return maskString(value);
  if (Array.isArray(value)) return value.map(maskValue);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) setOwn(out, k, isSecretKey(k) && v !== undefined ? MASK : maskValue(v));
    return out;
  }
  return value;
}
