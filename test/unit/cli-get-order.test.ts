/**
 * `ns8ctl get` lists objects in the order of `localeCompare(key, 'en', { numeric: true })`; for
 * plain ids it sorts without an ICU collator, in the very same order.
 */
import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { sortLikeLocale } from '../../src/cli/commands/get.js';

const byLocale = (keys: string[]): string[] => [...keys].sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
const sorted = (keys: string[]): string[] => sortLikeLocale(keys, (k) => k.slice('Module/'.length), (k) => k);

describe('get: order of the listed objects', () => {
  it('sorts plain ids (letters and a number) exactly as the collator does', () => {
    const plain = fc.tuple(fc.stringMatching(/^[a-z]{1,4}$/), fc.option(fc.nat({ max: 2000 }), { nil: undefined })).map(([w, n]) => `Module/${w}${n ?? ''}`);
    fc.assert(fc.property(fc.uniqueArray(plain, { maxLength: 25 }), (keys) => expect(sorted(keys)).toEqual(byLocale(keys))), { numRuns: 500 });
    expect(sorted(['Module/webapp10', 'Module/webapp2', 'Module/web9', 'Module/web', 'Module/traefik1'])).toEqual([
      'Module/traefik1',
      'Module/web',
      'Module/web9',
      'Module/webapp2',
      'Module/webapp10',
    ]);
  });

  it('leaves other ids to the collator (a `-` sorts before a digit there, after the shorter id naturally)', () => {
    const keys = ['Module/nethvoice1', 'Module/nethvoice-proxy1', 'Module/a_b1', 'Module/a1'];
    expect(sorted(keys)).toEqual(byLocale(keys));
    expect(sorted(keys).indexOf('Module/nethvoice-proxy1')).toBeLessThan(sorted(keys).indexOf('Module/nethvoice1'));
  });
});
