/**
 * validate accepts the usual version forms (1.2.3, ^1.2, ~1) without loading semver: only text
 * semver itself accepts may take that path, so the verdict is semver's for every text.
 */
import { createRequire } from 'node:module';
import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { isSemverVersionOrRange, PLAIN_VERSION_OR_RANGE } from '../../src/manifest/lazy-packages.js';

const requireHere = createRequire(import.meta.url);
const valid = requireHere('semver/functions/valid.js') as (v: string) => string | null;
const validRange = requireHere('semver/ranges/valid.js') as (v: string) => string | null;
const semverSays = (v: string): boolean => valid(v) !== null || validRange(v) !== null;

describe('spec.version: plain forms without semver', () => {
  it('every text the fast path accepts is valid for semver', () => {
    fc.assert(fc.property(fc.stringMatching(PLAIN_VERSION_OR_RANGE), (v) => expect(semverSays(v)).toBe(true)), { numRuns: 1000 });
    for (const v of ['1', '^1', '~1.2', '^1.0.0', '0.0.0', '999999999.999999999.999999999']) expect(PLAIN_VERSION_OR_RANGE.test(v)).toBe(true);
  });

  it('gives semver verdict for any text, plain or not', () => {
    const part = fc.constantFrom('1', '01', '0', '2', 'x', '*', '1234567890123456789', '-rc.1', '+b');
    const text = fc.tuple(fc.constantFrom('', '^', '~', '>=', '<', 'v', '=', ' '), fc.array(part, { minLength: 0, maxLength: 4 }), fc.constantFrom('.', ' ', '-', '||')).map(([p, parts, sep]) => p + parts.join(sep));
    fc.assert(fc.property(text, (v) => expect(isSemverVersionOrRange(v)).toBe(semverSays(v))), { numRuns: 2000 });
    expect(isSemverVersionOrRange('^1.0.0')).toBe(true);
    expect(isSemverVersionOrRange('1.2.3.4')).toBe(false);
    expect(isSemverVersionOrRange('latest')).toBe(false);
  });
});
