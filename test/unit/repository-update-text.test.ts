import { effectiveRepositories } from '../../src/repository/fetch.js';
import type { InstanceUpdates } from '../../src/repository/resolve.js';
import { describeUpdate } from '../../src/repository/update-text.js';

const u = (extra: Partial<InstanceUpdates>): InstanceUpdates => ({ id: 'webapp1', module: 'webapp', current: '1.0.0', blocked: [], ...extra });

describe('describeUpdate (the UPDATE column of get modules -o wide)', () => {
  it('shows the newest version inside the spec, and a newer one outside it', () => {
    expect(describeUpdate(u({ update: '1.1.0', inSpec: '1.1.0' }), '^1.0')).toBe('1.1.0');
    expect(describeUpdate(u({ update: '2.0.0', inSpec: '1.1.0' }), '^1.0')).toBe('1.1.0, 2.0.0 outside ^1.0');
    expect(describeUpdate(u({ update: '2.0.0' }), '^1.0')).toBe('2.0.0 outside ^1.0');
  });

  it('shows the newest stable version for latest and for full image URLs', () => {
    expect(describeUpdate(u({ update: '2.0.0', inSpec: '2.1.0-rc.1' }), 'latest')).toBe('2.0.0');
    expect(describeUpdate(u({ update: '2.0.0' }), undefined)).toBe('2.0.0');
  });

  it('falls back to a testing update, then to the newest blocked version with the reason', () => {
    expect(describeUpdate(u({ testingUpdate: '1.1.0-rc.1' }), undefined)).toBe('1.1.0-rc.1 (testing)');
    expect(describeUpdate(u({ blocked: [{ tag: '2.0.0', code: 'min_from_not_met', message: 'x' }, { tag: '1.9.0', code: 'min_core_not_met', message: 'y' }] }), '^2')).toBe('2.0.0 (blocked: min-from)');
    expect(describeUpdate(u({ blocked: [{ tag: '2.0.0', code: 'something_new', message: 'x' }] }), undefined)).toBe('2.0.0 (blocked: something_new)');
  });

  it('is empty when up to date or unknown to the repositories', () => {
    expect(describeUpdate(u({}), '^1')).toBe('');
    expect(describeUpdate(undefined, '^1')).toBe('');
  });
});

describe('effectiveRepositories (repositories as a plan leaves them)', () => {
  const r = (name: string, url: string, enabled = true) => ({ name, url, enabled, testing: false });

  it('lets declared repositories replace configured ones, adds new ones, drops removed ones, sorted by name', () => {
    const current = [r('zeta', 'https://z/'), r('default', 'https://old/'), r('gone', 'https://g/')];
    expect(effectiveRepositories(current, { upsert: [r('default', 'https://new/', false), r('extra', 'https://e/')], remove: ['gone'] })).toEqual([
      r('default', 'https://new/', false),
      r('extra', 'https://e/'),
      r('zeta', 'https://z/'),
    ]);
    expect(effectiveRepositories(current, undefined).map((x) => x.name)).toEqual(['default', 'gone', 'zeta']);
  });
});
