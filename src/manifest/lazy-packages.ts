/**
 * Packages the manifest loading path needs only sometimes, loaded on first use so a command that
 * does not need them does not pay for them (each costs tens of milliseconds of module compilation
 * at every CLI start): the `yaml` syntax tree (only to point at a line:col when a manifest is
 * wrong, or for text the fast parser leaves alone) and semver's range parser (only for a
 * `spec.version` that is not an exact version). All three are CommonJS packages, so loading them
 * synchronously through `require` gives the very module instances an `import` would.
 */
import { createRequire } from 'node:module';
import type * as YamlNamespace from 'yaml';
import type semverValidFunction from 'semver/functions/valid.js';
import type semverValidRangeFunction from 'semver/ranges/valid.js';

type YamlPackage = typeof YamlNamespace;
type SemverValid = typeof semverValidFunction;
type SemverValidRange = typeof semverValidRangeFunction;

const requireHere = createRequire(import.meta.url);
let yamlPackage: YamlPackage | undefined;
let semverValid: SemverValid | undefined;
let semverValidRange: SemverValidRange | undefined;

/** The `yaml` package (syntax trees with positions), loaded on first call. */
export function yamlSyntax(): YamlPackage {
  return (yamlPackage ??= requireHere('yaml') as YamlPackage);
}

/**
 * An optional `^` or `~` and one to three dot-separated numbers without leading zeros (at most 9
 * digits each): a subset of what semver.valid or semver.validRange accept.
 */
export const PLAIN_VERSION_OR_RANGE = /^[~^]?(0|[1-9][0-9]{0,8})(\.(0|[1-9][0-9]{0,8})){0,2}$/;

/**
 * True when `version` is an exact semver version (1.2.3) or a semver range (^1.2, >=1 <2), as
 * `semver.valid(v) !== null || semver.validRange(v) !== null`. The range parser (most of the
 * semver package) loads only for text that is not an exact version.
 */
export function isSemverVersionOrRange(version: string): boolean {
  // The usual forms (1.2.3, ^1.2.3, ~1.2, 1) are valid for semver as it is: accepted without
  // loading it (its range parser is a dozen files, about 10 ms at every `validate`).
  if (PLAIN_VERSION_OR_RANGE.test(version)) return true;
  semverValid ??= requireHere('semver/functions/valid.js') as SemverValid;
  if (semverValid(version) !== null) return true;
  semverValidRange ??= requireHere('semver/ranges/valid.js') as SemverValidRange;
  return semverValidRange(version) !== null;
}
