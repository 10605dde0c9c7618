/**
 * Strict semantic-version handling for image tags and label values, as NS8 does it with
 * python-semver: `v1.2.3`, `1.2` or `=1.2.3` are not versions (node-semver would accept some).
 */
import semver from './semver-subset.js';
import type { SemVer } from 'semver';

const SEMVER_RE =
  /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$/;

const parsed = new Map<string, SemVer | null>();
const parsedWithPrerelease = new Map<string, SemVer | null>();
const PARSE_CACHE_LIMIT = 100_000;

/**
 * Parses `text` as a strict semantic version; undefined when it is not one. Results are memoised
 * (tags and label values repeat across modules): treat the returned SemVer as read-only.
 * `includePrerelease` gives an instance for `Range` objects built with that option (node-semver
 * re-parses a version on every comparison when the options differ).
 */
export function parseVersion(text: string | undefined, includePrerelease = false): SemVer | undefined {
  if (text === undefined) return undefined;
  const cache = includePrerelease ? parsedWithPrerelease : parsed;
  let v = cache.get(text);
  if (v === undefined) {
    v = null;
    if (SEMVER_RE.test(text)) {
      try {
        v = new semver.SemVer(text, { includePrerelease });
      } catch {
        v = null; // a numeric part beyond Number.MAX_SAFE_INTEGER
      }
    }
    if (cache.size >= PARSE_CACHE_LIMIT) cache.clear();
    cache.set(text, v);
  }
  return v ?? undefined;
}

/** True when `text` is a strict semantic version. */
export function isVersion(text: string | undefined): boolean {
  return parseVersion(text) !== undefined;
}

/** True when `text` is a strict semantic version with a prerelease part (`1.3.0-rc.1`). */
export function isPrerelease(text: string): boolean {
  const v = parseVersion(text);
  return v !== undefined && v.prerelease.length > 0;
}

/** Orders two strict versions newest first (for Array.sort). */
export function compareDesc(a: SemVer, b: SemVer): number {
  return semver.rcompare(a, b);
}

/** Core version NS8 assumes when the real one does not parse (so nothing is filtered out). */
export const UNPARSABLE_CORE_VERSION = '999.0.0';

/** The core version to compare min-core labels against: the given one, or 999.0.0 when it does not parse (as NS8). */
export function effectiveCoreVersion(coreVersion: string): SemVer {
  return parseVersion(coreVersion) ?? (semver.parse(UNPARSABLE_CORE_VERSION) as SemVer);
}
