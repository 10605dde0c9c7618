import { buildSources } from '../../src/controller/source-options.js';

const deps = { stateDir: '/var/lib/ns8ctl', cwd: '/srv' };

describe('allowEmpty from the command line', () => {
  test('off by default; --allow-empty is the default of every source; a source setting overrides it', () => {
    expect(buildSources({ filename: ['m'] }, deps)[0]!.allowEmpty).toBeUndefined();
    const all = buildSources({ source: ['a=/m/a', 'b=/m/b,no-allow-empty'], git: ['c=https://git.example/c.git,allow-empty'], allowEmpty: true }, deps);
    expect(all.map((s) => [s.name, s.allowEmpty ?? false])).toEqual([
      ['a', true],
      ['b', false],
      ['c', true],
    ]);
    expect(buildSources({ source: ['a=/m/a,prune,allow-empty'] }, deps)[0]).toMatchObject({ prune: true, allowEmpty: true });
  });

  test('the same source named twice with contradictory allow-empty settings is refused', () => {
    expect(() => buildSources({ source: ['a=/m/a,allow-empty', 'a=/m/b,no-allow-empty'] }, deps)).toThrow(/contradictory settings for source a/);
    expect(buildSources({ source: ['a=/m/a', 'a=/m/b,allow-empty'] }, deps)[0]).toMatchObject({ paths: ['/m/a', '/m/b'], allowEmpty: true });
  });
});
