/**
 * NS8's `state/environment` format: one unquoted `KEY=VALUE` line per variable, split at the first
 * `=`, lines without `=` ignored (ns8-core-facts §6). systemd reads the same file raw through
 * `EnvironmentFile=`, so a value with a newline (or a NUL) could smuggle extra variables: those are
 * refused, never escaped.
 */
import { Ns8ctlError } from '../errors.js';

/** A variable name systemd and shells accept. */
const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Throws `environment_value_invalid` naming the instance and variable when a name is not a valid
 * variable name or a value contains a newline, carriage return or NUL.
 */
export function assertEnvironment(id: string, env: Record<string, string>): void {
  for (const [k, v] of Object.entries(env)) {
    if (!NAME.test(k)) {
      throw new Ns8ctlError('environment_value_invalid', `${id}: environment variable name ${JSON.stringify(k)} is not allowed (letters, digits and _ only, not starting with a digit)`);
    }
    if (/[\n\r\0]/.test(v)) {
      throw new Ns8ctlError(
        'environment_value_invalid',
        `${id}: the value of ${k} contains a newline, carriage return or NUL; state/environment is read raw by systemd, so such values are refused`,
      );
    }
  }
}

/** Renders the file: sorted by name, `KEY=VALUE\n` each. Validates first (see assertEnvironment). */
export function renderEnvironment(id: string, env: Record<string, string>): string {
  assertEnvironment(id, env);
  return Object.keys(env)
    .sort()
    .map((k) => `${k}=${env[k]}\n`)
    .join('');
}

/** Parses the file as NS8's agent does: split at the first `=`, skip lines without one. */
export function parseEnvironment(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const at = line.indexOf('=');
    if (at <= 0) continue;
    out[line.slice(0, at)] = line.slice(at + 1);
  }
  return out;
}

/** True when both maps hold the same names and values. */
export function sameEnvironment(a: Record<string, string> | undefined, b: Record<string, string> | undefined): boolean {
  if (!a || !b) return a === b;
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => Object.hasOwn(b, k) && a[k] === b[k]);
}

/** Names whose values differ between `a` (observed) and `b` (wanted), sorted: for drift reports. */
export function changedNames(a: Record<string, string> | undefined, b: Record<string, string>): string[] {
  const names = new Set([...Object.keys(a ?? {}), ...Object.keys(b)]);
  return [...names].filter((k) => (a ?? {})[k] !== b[k]).sort();
}
