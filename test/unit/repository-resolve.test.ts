import fc from 'fast-check';
import semver from 'semver';
import { RepositoryError } from '../../src/repository/errors.js';
import {
  admitMaxPerNode,
  certificationLevel,
  checkMaxPerNode,
  checkUpdate,
  listAvailable,
  listUpdates,
  parseImageUrl,
  planUpdatePath,
  resolveModule,
  resolveVersion,
} from '../../src/repository/resolve.js';
import { pkg, repo, ver } from '../fixtures/repodata/builders.js';
import { errorOf as caughtError } from '../support/caught.js';

const core = { coreVersion: '3.5.0' };

const errorOf = (fn: () => unknown): RepositoryError => caughtError(RepositoryError, fn);

describe('listAvailable', () => {
  it('gives the alphabetically last repository priority when two carry the same source', () => {
    const a = repo('aaa', [pkg('webapp', [ver('1.0.0')])]);
    const z = repo('zzz', [pkg('webapp', [ver('2.0.0')])]);
    const out = listAvailable([a, z], core);
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({ id: 'webapp', repository: 'zzz', versions: [{ tag: '2.0.0' }] });
    expect(listAvailable([z, a], core)[0]?.repository).toBe('zzz');
  });

  it('skips disabled repositories entirely', () => {
    const out = listAvailable([repo('zzz', [pkg('webapp', [ver('2.0.0')])], { enabled: false }), repo('aaa', [pkg('webapp', [ver('1.0.0')])])], core);
    expect(out.map((m) => `${m.repository}:${m.versions[0]?.tag}`)).toEqual(['aaa:1.0.0']);
  });

  it('keeps packages with different sources and the same id, in priority order', () => {
    const out = listAvailable(
      [repo('default', [pkg('webapp', [ver('1.0.0')])]), repo('nethforge', [pkg('webapp', [ver('9.0.0')], { source: 'other.test/x/webapp' })])],
      core,
    );
    expect(out.map((m) => m.repository)).toEqual(['nethforge', 'default']);
  });

  it('drops prereleases unless the repository has testing, and says why', () => {
    const p = pkg('webapp', [ver('1.1.0-rc.1'), ver('1.0.0')]);
    const stable = listAvailable([repo('default', [p])], core)[0];
    expect(stable?.versions.map((v) => v.tag)).toEqual(['1.0.0']);
    expect(stable?.hidden).toEqual([{ tag: '1.1.0-rc.1', reason: 'prerelease', message: expect.stringContaining("repository 'default' has testing disabled") }]);
    const testing = listAvailable([repo('default', [p], { testing: true })], core)[0];
    expect(testing?.versions.map((v) => v.tag)).toEqual(['1.1.0-rc.1', '1.0.0']);
    expect(testing?.versions[0]?.prerelease).toBe(true);
  });

  it('drops tags that are not strict semantic versions, even in testing repositories', () => {
    const out = listAvailable([repo('default', [pkg('webapp', [ver('latest'), ver('v1.2.0'), ver('1.2'), ver('1.0.0')])], { testing: true })], core)[0];
    expect(out?.versions.map((v) => v.tag)).toEqual(['1.0.0']);
    expect(out?.hidden.map((h) => `${h.tag}:${h.reason}`)).toEqual(['latest:not_semver', 'v1.2.0:not_semver', '1.2:not_semver']);
  });

  it('drops versions whose min-core exceeds the core version and reports core_version_too_low when none is left', () => {
    const p = pkg('webapp', [ver('2.0.0', { 'org.nethserver.min-core': '3.6.0' }), ver('1.0.0', { 'org.nethserver.min-core': '3.5.0' })]);
    const out = listAvailable([repo('default', [p])], core)[0];
    expect(out?.versions.map((v) => v.tag)).toEqual(['1.0.0']);
    expect(out?.hidden[0]).toMatchObject({ tag: '2.0.0', reason: 'min_core', message: expect.stringContaining('needs core >= 3.6.0') });
    const none = listAvailable([repo('default', [p])], { coreVersion: '3.4.9' })[0];
    expect(none?.versions).toEqual([]);
    expect(none?.noVersionReason).toBe('core_version_too_low');
  });

  it('compares min-core with prerelease parts as NS8 does (3.2.0-0 is below 3.2.0)', () => {
    const p = pkg('loki', [ver('1.2.2', { 'org.nethserver.min-core': '3.2.0-0' })]);
    expect(listAvailable([repo('default', [p])], { coreVersion: '3.2.0' })[0]?.versions).toHaveLength(1);
    expect(listAvailable([repo('default', [p])], { coreVersion: '3.1.9' })[0]?.versions).toHaveLength(0);
  });

  it('treats an unparsable core version as 999.0.0, filtering nothing', () => {
    const p = pkg('webapp', [ver('2.0.0', { 'org.nethserver.min-core': '50.0.0' })]);
    expect(listAvailable([repo('default', [p])], { coreVersion: 'dev' })[0]?.versions).toHaveLength(1);
  });

  it('hides a version whose min-core label is not a version instead of failing the whole listing', () => {
    const p = pkg('webapp', [ver('2.0.0', { 'org.nethserver.min-core': 'soon' }), ver('1.0.0')]);
    const out = listAvailable([repo('default', [p])], core)[0];
    expect(out?.versions.map((v) => v.tag)).toEqual(['1.0.0']);
    expect(out?.hidden[0]?.reason).toBe('invalid_min_core');
  });

  it('sorts versions newest first whatever the repodata order', () => {
    const out = listAvailable([repo('default', [pkg('core', [ver('2.9.6'), ver('3.3.1'), ver('3.10.0'), ver('3.3.1')])])], core)[0];
    expect(out?.versions.map((v) => v.tag)).toEqual(['3.10.0', '3.3.1', '2.9.6']);
  });

  it('makes logo and screenshot URLs absolute under <repository>/<id>/', () => {
    const out = listAvailable([repo('default', [pkg('webapp', [ver('1.0.0')], { screenshots: ['screenshots/a b.png'] })])], core)[0];
    expect(out?.logo).toBe('https://default.example.org/ns8/updates/webapp/logo.png');
    expect(out?.screenshots).toEqual(['https://default.example.org/ns8/updates/webapp/screenshots/a%20b.png']);
  });

  it('falls back to the last segment of source when a package has no id', () => {
    const p = pkg('x', [ver('1.0.0')], { source: 'ghcr.io/nethserver/dokuwiki' });
    delete p.id;
    expect(listAvailable([repo('default', [p])], core)[0]?.id).toBe('dokuwiki');
  });
});

describe('certificationLevel', () => {
  it('follows NS8: distfeed 3 (4 for NethServer images), forge 2, others 1', () => {
    expect(certificationLevel('https://distfeed.nethserver.org/ns8/updates/', 'ghcr.io/other/x')).toBe(3);
    expect(certificationLevel('https://distfeed.nethserver.org/ns8/updates/', 'ghcr.io/nethserver/x')).toBe(4);
    expect(certificationLevel('https://forge.nethserver.org/ns8/updates/', 'ghcr.io/nethserver/x')).toBe(2);
    expect(certificationLevel('file:///srv/repo/', 'ghcr.io/nethserver/x')).toBe(1);
  });
});

describe('resolveVersion', () => {
  const webapp = pkg('webapp', [ver('2.0.0', { 'org.nethserver.min-from': '1.1.0' }), ver('1.1.0'), ver('1.0.0'), ver('2.1.0-rc.1'), ver('1.2.0-beta.1')]);
  const stable = listAvailable([repo('default', [webapp])], core);
  const testing = listAvailable([repo('default', [webapp], { testing: true })], core);

  it('resolves latest to the newest stable version with image, tag, repository and labels', () => {
    expect(resolveVersion('webapp', 'latest', stable)).toEqual({
      module: 'webapp',
      image: 'registry.test/ns8/webapp:2.0.0',
      source: 'registry.test/ns8/webapp',
      tag: '2.0.0',
      version: '2.0.0',
      repository: 'default',
      labels: { 'org.nethserver.min-from': '1.1.0' },
      prerelease: false,
    });
    expect(resolveVersion('webapp', undefined, stable).tag).toBe('2.0.0');
  });

  it('resolves latest to a newer prerelease when the repository has testing (as NS8 add-module)', () => {
    expect(resolveVersion('webapp', 'latest', testing)).toMatchObject({ tag: '2.1.0-rc.1', prerelease: true });
  });

  it('resolves an exact version', () => {
    expect(resolveVersion('webapp', '1.1.0', stable).image).toBe('registry.test/ns8/webapp:1.1.0');
  });

  it('resolves a range to the newest matching version', () => {
    expect(resolveVersion('webapp', '^1.0', stable).tag).toBe('1.1.0');
    expect(resolveVersion('webapp', '~1.0.0', stable).tag).toBe('1.0.0');
    expect(resolveVersion('webapp', '>=1.0.0 <2.0.0', stable).tag).toBe('1.1.0');
    expect(resolveVersion('webapp', '1.x', stable).tag).toBe('1.1.0');
  });

  it('lets ranges match prereleases only from testing repositories', () => {
    expect(resolveVersion('webapp', '^1.0', testing).tag).toBe('1.2.0-beta.1');
    expect(resolveVersion('webapp', '^1.0', stable).tag).toBe('1.1.0');
  });

  it('refuses an exact prerelease from a non-testing repository and says why', () => {
    const e = errorOf(() => resolveVersion('webapp', '2.1.0-rc.1', stable));
    expect(e.code).toBe('version_not_found');
    expect(e.message).toContain("2.1.0-rc.1 is a prerelease and repository 'default' has testing disabled");
  });

  it('lists the available versions when nothing matches', () => {
    const e = errorOf(() => resolveVersion('webapp', '^3', stable));
    expect(e.code).toBe('version_not_found');
    expect(e.message).toBe(`module 'webapp' has no version matching "^3": repository 'default' (registry.test/ns8/webapp) offers 2.0.0, 1.1.0, 1.0.0`);
  });

  it('names the min-core rule when the wanted version needs a newer core', () => {
    const avail = listAvailable([repo('default', [pkg('webapp', [ver('2.0.0', { 'org.nethserver.min-core': '9.0.0' }), ver('1.0.0')])])], core);
    const e = errorOf(() => resolveVersion('webapp', '2.0.0', avail));
    expect(e.message).toContain('2.0.0 needs core >= 9.0.0 (org.nethserver.min-core); core is 3.5.0');
  });

  it('says which repositories were searched when the module is unknown, with similar names', () => {
    const e = errorOf(() => resolveVersion('web', 'latest', stable));
    expect(e.code).toBe('module_not_found');
    expect(e.message).toContain('searched: default');
    expect(e.message).toContain('similar: webapp');
  });

  it('rejects a version spec that is neither latest, a version nor a range', () => {
    const e = errorOf(() => resolveVersion('webapp', 'newest', stable));
    expect(e.code).toBe('invalid_version_spec');
    expect(e.message).toContain("module 'webapp'");
  });

  it('falls through to a lower-priority package when the first has no matching version', () => {
    const avail = listAvailable(
      [repo('zzz', [pkg('webapp', [ver('3.0.0', { 'org.nethserver.min-core': '99.0.0' })], { source: 'z.test/webapp' })]), repo('aaa', [pkg('webapp', [ver('1.0.0')])])],
      core,
    );
    expect(resolveVersion('webapp', 'latest', avail)).toMatchObject({ repository: 'aaa', tag: '1.0.0' });
  });

  it('always returns the newest matching offered version (property)', () => {
    const tagArb = fc.tuple(fc.nat(5), fc.nat(5), fc.nat(5)).map(([a, b, c]) => `${a}.${b}.${c}`);
    fc.assert(
      fc.property(fc.uniqueArray(tagArb, { minLength: 1, maxLength: 15 }), fc.constantFrom('latest', '^1', '~2.1', '>=3.0.0', '4.x'), (tags, spec) => {
        const avail = listAvailable([repo('r', [pkg('m', tags.map((t) => ver(t)))])], core);
        const want = spec === 'latest' ? semver.maxSatisfying(tags, '*') : semver.maxSatisfying(tags, spec);
        if (want === null) {
          expect(() => resolveVersion('m', spec, avail)).toThrow(RepositoryError);
        } else {
          expect(resolveVersion('m', spec, avail).tag).toBe(want);
        }
      }),
    );
  });
});

describe('resolveModule', () => {
  it('uses a full image URL as-is, bypassing repositories', () => {
    expect(resolveModule({ image: '127.0.0.1:5000/ns8ctl-examples/webapp:1.1.0' }, [])).toEqual({
      module: 'webapp',
      image: '127.0.0.1:5000/ns8ctl-examples/webapp:1.1.0',
      source: '127.0.0.1:5000/ns8ctl-examples/webapp',
      tag: '1.1.0',
      version: '1.1.0',
      repository: undefined,
      labels: undefined,
      prerelease: false,
    });
  });

  it('treats a module name containing / as an image URL, as NS8 add-module', () => {
    expect(resolveModule({ module: 'ghcr.io/nethserver/dokuwiki:1.0.0' }, []).image).toBe('ghcr.io/nethserver/dokuwiki:1.0.0');
    expect(resolveModule('ghcr.io/nethserver/dokuwiki', []).image).toBe('ghcr.io/nethserver/dokuwiki:latest');
  });

  it('resolves a bare string as a module name', () => {
    const avail = listAvailable([repo('default', [pkg('webapp', [ver('1.0.0')])])], core);
    expect(resolveModule('webapp', avail).tag).toBe('1.0.0');
  });
});

describe('parseImageUrl', () => {
  it('tells a registry port from a tag and keeps digests', () => {
    expect(parseImageUrl('127.0.0.1:5000/a/b')).toEqual({ source: '127.0.0.1:5000/a/b', tag: undefined, digest: undefined });
    expect(parseImageUrl('docker://127.0.0.1:5000/a/b:1.0')).toEqual({ source: '127.0.0.1:5000/a/b', tag: '1.0', digest: undefined });
    expect(parseImageUrl('ghcr.io/a/b@sha256:abc')).toEqual({ source: 'ghcr.io/a/b', tag: undefined, digest: 'sha256:abc' });
  });
});

describe('checkMaxPerNode', () => {
  const labels = { 'org.nethserver.max-per-node': '1' };

  it('refuses a second instance on the same node with a message naming instance, node, limit and occupant', () => {
    const res = checkMaxPerNode({ id: 'webapp2', module: 'webapp', node: 1 }, labels, [{ id: 'webapp1', module: 'webapp', node: 1 }]);
    expect(res).toEqual({
      ok: false,
      code: 'max_per_node_exceeded',
      message: 'webapp2: module webapp allows at most 1 instance per node (org.nethserver.max-per-node=1); node 1 already has webapp1; place it on another node',
    });
  });

  it('allows it on another node, for another module, or without the label', () => {
    expect(checkMaxPerNode({ id: 'webapp2', module: 'webapp', node: 2 }, labels, [{ id: 'webapp1', module: 'webapp', node: 1 }]).ok).toBe(true);
    expect(checkMaxPerNode({ id: 'webapp2', module: 'webapp', node: 1 }, labels, [{ id: 'mail1', module: 'mail', node: 1 }]).ok).toBe(true);
    expect(checkMaxPerNode({ id: 'webapp2', module: 'webapp', node: 1 }, {}, [{ id: 'webapp1', module: 'webapp', node: 1 }]).ok).toBe(true);
  });

  it('ignores the candidate itself in the list of others', () => {
    expect(checkMaxPerNode({ id: 'webapp1', module: 'webapp', node: 1 }, labels, [{ id: 'webapp1', module: 'webapp', node: 1 }]).ok).toBe(true);
  });

  it('admits existing instances first, then new ones by instance number', () => {
    const res = admitMaxPerNode([
      { id: 'webapp3', module: 'webapp', node: 1, labels: { 'org.nethserver.max-per-node': '2' } },
      { id: 'webapp10', module: 'webapp', node: 1, labels: { 'org.nethserver.max-per-node': '2' } },
      { id: 'webapp7', module: 'webapp', node: 1, labels: { 'org.nethserver.max-per-node': '2' }, existing: true },
    ]);
    expect(res.get('webapp7')?.ok).toBe(true);
    expect(res.get('webapp3')?.ok).toBe(true);
    expect(res.get('webapp10')).toMatchObject({ ok: false, message: expect.stringContaining('node 1 already has webapp3, webapp7') });
  });
});

describe('checkUpdate', () => {
  const inst = { id: 'webapp1', image: 'registry.test/ns8/webapp:1.0.0' };
  const mod = listAvailable([repo('default', [pkg('webapp', [ver('2.0.0', { 'org.nethserver.min-from': '1.1.0' }), ver('1.1.0'), ver('1.0.0')])])], core)[0];

  it('allows a plain upgrade', () => {
    expect(checkUpdate(inst, { image: 'registry.test/ns8/webapp:1.1.0', labels: {} }, core)).toEqual({ ok: true, kind: 'upgrade' });
  });

  it('says nothing changes for the same image', () => {
    expect(checkUpdate(inst, { image: inst.image }, core)).toEqual({ ok: true, kind: 'none' });
  });

  it('refuses when the running version is below min-from and names the intermediate version', () => {
    const res = checkUpdate(inst, { image: 'registry.test/ns8/webapp:2.0.0', labels: { 'org.nethserver.min-from': '1.1.0' } }, { ...core, available: mod });
    expect(res).toEqual({
      ok: false,
      kind: 'upgrade',
      code: 'min_from_not_met',
      message: 'webapp1: cannot update 1.0.0 -> 2.0.0: 2.0.0 can only update instances running >= 1.1.0 (org.nethserver.min-from); update through 1.1.0 first (set version: 1.1.0)',
    });
  });

  it('allows the jump once the running version meets min-from', () => {
    expect(checkUpdate({ id: 'webapp1', image: 'registry.test/ns8/webapp:1.1.0' }, { image: 'registry.test/ns8/webapp:2.0.0', labels: { 'org.nethserver.min-from': '1.1.0' } }, core).ok).toBe(true);
  });

  it('refuses when min-core exceeds the core version', () => {
    const res = checkUpdate(inst, { image: 'registry.test/ns8/webapp:1.1.0', labels: { 'org.nethserver.min-core': '4.0.0' } }, core);
    expect(res).toMatchObject({ ok: false, code: 'min_core_not_met', message: expect.stringContaining('needs core >= 4.0.0') });
  });

  it('refuses a min-from check against a running tag that is not a version', () => {
    const res = checkUpdate({ id: 'webapp1', image: 'registry.test/ns8/webapp:latest' }, { image: 'registry.test/ns8/webapp:2.0.0', labels: { 'org.nethserver.min-from': '1.1.0' } }, core);
    expect(res).toMatchObject({ ok: false, code: 'current_version_unknown' });
  });

  it('refuses another module and downgrades (unless allowed)', () => {
    expect(checkUpdate(inst, { image: 'registry.test/ns8/mail:2.0.0' }, core)).toMatchObject({ ok: false, code: 'module_mismatch' });
    expect(checkUpdate({ id: 'webapp1', image: 'registry.test/ns8/webapp:2.0.0' }, { image: 'registry.test/ns8/webapp:1.1.0' }, core)).toMatchObject({ ok: false, kind: 'downgrade', code: 'downgrade_refused' });
    expect(checkUpdate({ id: 'webapp1', image: 'registry.test/ns8/webapp:2.0.0' }, { image: 'registry.test/ns8/webapp:1.1.0' }, { ...core, allowDowngrade: true })).toEqual({ ok: true, kind: 'downgrade' });
  });

  it('accepts a registry move of the same module', () => {
    expect(checkUpdate(inst, { image: '127.0.0.1:5000/x/webapp:1.1.0' }, core)).toEqual({ ok: true, kind: 'upgrade' });
  });
});

describe('planUpdatePath', () => {
  it('steps through the newest version each min-from allows', () => {
    const mod = listAvailable(
      [repo('r', [pkg('m', [ver('3.0.0', { 'org.nethserver.min-from': '2.0.0' }), ver('2.1.0', { 'org.nethserver.min-from': '1.5.0' }), ver('2.0.0', { 'org.nethserver.min-from': '1.5.0' }), ver('1.5.0'), ver('1.0.0')])])],
      core,
    )[0];
    if (!mod) throw new Error('no module');
    expect(planUpdatePath('1.0.0', '3.0.0', mod)).toEqual(['1.5.0', '2.1.0', '3.0.0']);
    expect(planUpdatePath('1.0.0', '1.5.0', mod)).toEqual(['1.5.0']);
    expect(planUpdatePath('2.0.0', '1.0.0', mod)).toBeUndefined();
  });

  it('returns undefined when no intermediate version exists', () => {
    const mod = listAvailable([repo('r', [pkg('m', [ver('2.0.0', { 'org.nethserver.min-from': '1.1.0' }), ver('1.0.0')])])], core)[0];
    if (!mod) throw new Error('no module');
    expect(planUpdatePath('1.0.0', '2.0.0', mod)).toBeUndefined();
  });
});

describe('listUpdates', () => {
  const avail = listAvailable(
    [repo('default', [pkg('webapp', [ver('2.1.0-rc.1', { 'org.nethserver.min-from': '1.1.0' }), ver('2.0.0', { 'org.nethserver.min-from': '1.1.0' }), ver('1.1.0'), ver('1.0.0')])], { testing: true })],
    core,
  );

  it('offers the newest stable version the running one may move to, and reports blocked ones', () => {
    const [u] = listUpdates([{ id: 'webapp1', image: 'registry.test/ns8/webapp:1.0.0', versionSpec: '~1.0.0' }], avail, core);
    expect(u).toMatchObject({ id: 'webapp1', module: 'webapp', current: '1.0.0', update: '1.1.0' });
    expect(u).not.toHaveProperty('inSpec');
    expect(u).not.toHaveProperty('testingUpdate');
    expect(u?.blocked.map((b) => `${b.tag}:${b.code}`)).toEqual(['2.1.0-rc.1:min_from_not_met', '2.0.0:min_from_not_met']);
  });

  it('reports a newer prerelease from a testing repository as testingUpdate', () => {
    const [u] = listUpdates([{ id: 'webapp2', image: 'registry.test/ns8/webapp:1.1.0', versionSpec: '^2' }], avail, core);
    expect(u).toMatchObject({ update: '2.0.0', testingUpdate: '2.1.0-rc.1', inSpec: '2.1.0-rc.1', blocked: [] });
  });

  it('skips instances on unknown sources or non-version tags', () => {
    expect(listUpdates([{ id: 'x1', image: 'other.test/x:1.0.0' }, { id: 'webapp3', image: 'registry.test/ns8/webapp:dev' }], avail, core)).toEqual([]);
  });

  it('returns an instance already on the newest version with no update', () => {
    const [u] = listUpdates([{ id: 'webapp4', image: 'registry.test/ns8/webapp:2.1.0-rc.1' }], avail, core);
    expect(u).toEqual({ id: 'webapp4', module: 'webapp', current: '2.1.0-rc.1', blocked: [] });
  });
});
