import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { canonicalJson, canonicalize, compareNatural, jsonEqual } from '../../src/runtime/canonical.js';
import { plan } from '../../src/plan/planner.js';
import { appliedState, desired, mod } from '../support/plan-fixtures.js';

describe('canonical JSON', () => {
  it('serialises exactly as JSON.stringify of the canonical copy, for any JSON value', () => {
    fc.assert(fc.property(fc.jsonValue(), (v) => expect(canonicalJson(v)).toBe(JSON.stringify(canonicalize(v)))), { numRuns: 500 });
    expect(canonicalJson({ b: 1, 10: 1, 2: 1, '': 1, '01': 1 })).toBe(JSON.stringify(canonicalize({ b: 1, 10: 1, 2: 1, '': 1, '01': 1 })));
  });

  it('ignores key order and undefined members', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { y: 2, x: 1 }], c: undefined } })).toBe('{"a":{"d":[1,{"x":1,"y":2}]},"b":1}');
    expect(jsonEqual({ a: 1, b: 2 }, { b: 2, a: 1 })).toBe(true);
    expect(jsonEqual([1, 2], [2, 1])).toBe(false);
  });
});

describe('compareNatural', () => {
  it('orders numbers inside ids by value', () => {
    expect(['webapp10', 'webapp2', 'dokuwiki1', 'webapp1', 'web10app', 'web9app'].sort(compareNatural)).toEqual([
      'dokuwiki1',
      'web9app',
      'web10app',
      'webapp1',
      'webapp2',
      'webapp10',
    ]);
  });

  it('is a total order: antisymmetric, transitive, zero only for equal strings', () => {
    const s = fc.stringMatching(/^[a-c0-2]{0,5}$/);
    fc.assert(
      fc.property(s, s, s, (a, b, c) => {
        expect(Math.sign(compareNatural(a, b)) + Math.sign(compareNatural(b, a))).toBe(0);
        expect(compareNatural(a, b) === 0).toBe(a === b);
        if (compareNatural(a, b) <= 0 && compareNatural(b, c) <= 0) expect(compareNatural(a, c)).toBeLessThanOrEqual(0);
      }),
      { numRuns: 2000 },
    );
  });
});

describe('stored object text', () => {
  it('is used as a shortcut when it matches, and a stale or foreign text never hides a change or invents one', () => {
    const s = appliedState([mod('webapp1', { version: '1' })]);
    const st = s.objects.get('Module/webapp1')!;
    st.objectJson = canonicalJson(st.object);
    expect(plan(desired(mod('webapp1', { version: '1' })), s, { applySet: 'default', prune: false }).changes).toEqual([]);
    st.objectJson = '{"hand":"edited"}';
    expect(plan(desired(mod('webapp1', { version: '1' })), s, { applySet: 'default', prune: false }).changes).toEqual([]);
    const c = plan(desired(mod('webapp1', { version: '2' })), s, { applySet: 'default', prune: false }).changes[0]!;
    expect(c).toMatchObject({ action: 'update', specChanged: true, reasons: ['spec.version changed'] });
  });
});
