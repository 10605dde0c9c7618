import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { canonicalJson, canonicalize, compareNatural, jsonEqual, sortNatural } from '../../src/runtime/canonical.js';
import { plan } from '../../src/plan/planner.js';
import { appliedState, desired, mod } from '../support/plan-fixtures.js';

describe('canonical JSON', () => {
  it('serialises exactly as JSON.stringify of the canonical copy, for any JSON value', () => {
    fc.assert(fc.property(fc.jsonValue(), (v) => expect(canonicalJson(v)).toBe(JSON.stringify(canonicalize(v)))), { numRuns: 500 });
    expect(canonicalJson({ b: 1, 10: 1, 2: 1, '': 1, '01': 1 })).toBe(JSON.stringify(canonicalize({ b: 1, 10: 1, 2: 1, '': 1, '01': 1 })));
  });

  it('puts array-index keys first whatever sorts before the digits (objects without such keys take a shortcut)', () => {
    const tricky = { '-x': 1, ' ': 2, '0': 3, '10': 4, '2': 5, '01': 6, '4294967295': 7, a: [{ '!': 1, '9': 2 }] };
    expect(canonicalJson(tricky)).toBe(JSON.stringify(canonicalize(tricky)));
    expect(canonicalJson(tricky)).toBe('{"0":3,"2":5,"10":4," ":2,"-x":1,"01":6,"4294967295":7,"a":[{"9":2,"!":1}]}');
    const keyChar = fc.constantFrom('0', '1', '9', '-', ' ', '!', '.', 'a', '~');
    const key = fc.array(keyChar, { minLength: 0, maxLength: 3 }).map((cs) => cs.join(''));
    fc.assert(fc.property(fc.dictionary(key, fc.jsonValue({ maxDepth: 2 })), (v) => expect(canonicalJson(v)).toBe(JSON.stringify(canonicalize(v)))), { numRuns: 300 });
  });

  it('jsonEqual is exactly equality of the canonical texts, for any pair of JSON-like values (undefined members, NaN, -0, Infinity, index-like and __proto__ keys)', () => {
    const reference = (a: unknown, b: unknown): boolean => canonicalJson(a) === canonicalJson(b);
    const key = fc.oneof(fc.constantFrom('a', 'b', '0', '10', '01', '__proto__', 'toString', ''), fc.string({ maxLength: 3 }));
    const leaf = fc.oneof(fc.constantFrom(undefined, null, NaN, -0, 0, Infinity, -Infinity, 1, '1', 'null', '0', true, false, ''), fc.integer(), fc.string({ maxLength: 4 }));
    const { value } = fc.letrec((tie) => ({
      value: fc.oneof({ depthSize: 'small' }, leaf, fc.array(tie('value'), { maxLength: 3 }), fc.dictionary(key, tie('value'), { maxKeys: 4 })),
    }));
    // A copy with keys in another order and undefined members dropped or added: equal texts.
    const reshaped = (v: unknown, seed: number): unknown => {
      if (Array.isArray(v)) return v.map((x, i) => reshaped(x, seed + i));
      if (v === null || typeof v !== 'object') return v;
      const out: Record<string, unknown> = {};
      const ks = Object.keys(v).reverse();
      for (const k of seed % 2 ? ks : ks.reverse()) {
        const x = (v as Record<string, unknown>)[k];
        if (x === undefined && seed % 3 === 0) continue;
        Object.defineProperty(out, k, { value: reshaped(x, seed + 1), enumerable: true, writable: true, configurable: true });
      }
      if (seed % 5 === 0) out.extraUndefined = undefined;
      return out;
    };
    fc.assert(fc.property(value, value, fc.nat(), (a, b, seed) => {
      expect(jsonEqual(a, b)).toBe(reference(a, b));
      const c = reshaped(a, seed);
      expect(jsonEqual(a, c)).toBe(reference(a, c));
      expect(jsonEqual(c, a)).toBe(reference(c, a));
    }), { numRuns: 2000 });
    expect(jsonEqual({ a: undefined }, {})).toBe(true);
    expect(jsonEqual([undefined], [null])).toBe(true);
    expect(jsonEqual([NaN], [null])).toBe(true);
    expect(jsonEqual(-0, 0)).toBe(true);
    expect(jsonEqual('1', 1)).toBe(false);
    expect(jsonEqual({ toString: 1 }, {})).toBe(false);
    expect(jsonEqual({}, { toString: 1 })).toBe(false);
    expect(jsonEqual([], {})).toBe(false);
  });

  it('ignores key order and undefined members', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { y: 2, x: 1 }], c: undefined } })).toBe('{"a":{"d":[1,{"x":1,"y":2}]},"b":1}');
    expect(jsonEqual({ a: 1, b: 2 }, { b: 2, a: 1 })).toBe(true);
    expect(jsonEqual([1, 2], [2, 1])).toBe(false);
  });
});

/** compareNatural as first written (regex split, every digit run a BigInt): the reference order. */
function referenceNatural(a: string, b: string): number {
  const split = (s: string): (string | bigint)[] => (s.match(/\d+|\D+/g) ?? []).map((r) => (/^\d/.test(r) ? BigInt(r) : r));
  const pa = split(a);
  const pb = split(b);
  const la = (a.match(/\d+|\D+/g) ?? []).map((r) => r.length);
  const lb = (b.match(/\d+|\D+/g) ?? []).map((r) => r.length);
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    const x = pa[i]!;
    const y = pb[i]!;
    if (typeof x === 'bigint' && typeof y === 'bigint') {
      if (x !== y) return x < y ? -1 : 1;
      if (la[i] !== lb[i]) return la[i]! < lb[i]! ? -1 : 1;
      continue;
    }
    if (x === y) continue;
    if (typeof x === 'bigint') return -1;
    if (typeof y === 'bigint') return 1;
    return x < y ? -1 : 1;
  }
  if (pa.length !== pb.length) return pa.length < pb.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

describe('compareNatural', () => {
  it('orders as the BigInt-per-run reference, short and long digit runs alike', () => {
    const run = fc.oneof(fc.constantFrom('a', 'b', '-', 'x1'), fc.stringMatching(/^[0-9]{1,20}$/));
    const id = fc.array(run, { maxLength: 4 }).map((rs) => rs.join(''));
    fc.assert(fc.property(id, id, (a, b) => expect(Math.sign(compareNatural(a, b))).toBe(referenceNatural(a, b))), { numRuns: 2000 });
    expect(compareNatural('a9007199254740993', 'a9007199254740992')).toBe(1);
    expect(compareNatural('a1234567890123456', 'a999999999999999')).toBe(1);
    expect(compareNatural('a01', 'a1')).toBe(1);
  });

  it('sortNatural orders like a sort by compareNatural', () => {
    const id = fc.array(fc.constantFrom('a', 'b', '0', '1', '2', '9', '-'), { maxLength: 6 }).map((cs) => cs.join(''));
    fc.assert(fc.property(fc.array(id, { maxLength: 30 }), (ids) => expect(sortNatural(ids, (x) => x)).toEqual([...ids].sort(compareNatural))), { numRuns: 300 });
    expect(sortNatural([{ n: 'webapp10' }, { n: 'webapp2' }], (o) => o.n)).toEqual([{ n: 'webapp2' }, { n: 'webapp10' }]);
  });

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
  it('the stored object text read from Redis, matching or stale or foreign, never hides a change or invents one', () => {
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
