import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import type { DesiredObject, ModuleObject } from '../../src/manifest/types.js';
import { applyPlanToState, isEmpty, plan } from '../../src/plan/planner.js';
import { renderPlanJson, renderPlanText, summaryLine } from '../../src/plan/render.js';
import { annotatePlan, usesRepository, type ResolutionCatalog, type ResolutionInputs } from '../../src/plan/resolution.js';
import { emptyState, type ClusterState } from '../../src/state/cluster-state.js';
import type { Plan } from '../../src/plan/types.js';
import { listAvailable, type RepositorySnapshot } from '../../src/repository/resolve.js';
import { pkg, repo, ver } from '../fixtures/repodata/builders.js';
import { appliedState, desired, mod, uuidFor } from '../support/plan-fixtures.js';

const opts = { applySet: 'default', prune: false };
const WEBAPP = 'registry.test/ns8/webapp';
const VAULT = 'registry.test/ns8/vault';

const webappVersions = [
  ver('2.1.0-rc.1', { 'org.nethserver.min-from': '1.1.0' }),
  ver('2.0.0', { 'org.nethserver.min-from': '1.1.0' }),
  ver('1.2.0'),
  ver('1.1.0'),
  ver('1.0.0'),
];

function catalogOf(snapshots: RepositorySnapshot[], failures: ResolutionCatalog['failures'] = []): ResolutionCatalog {
  return { available: listAvailable(snapshots, { coreVersion: '3.21.0' }), coreVersion: '3.21.0', failures };
}

const defaultRepo = (testing = false): RepositorySnapshot =>
  repo('default', [pkg('webapp', webappVersions), pkg('vault', [ver('1.0.0', { 'org.nethserver.max-per-node': '1' })])], { testing });

const catalog = catalogOf([defaultRepo()]);

function annotated(objs: ModuleObject[] | DesiredObject[], state: ClusterState, inputs: ResolutionInputs, prune = false): Plan {
  const d = (objs.length && 'source' in objs[0]! ? objs : desired(...(objs as ModuleObject[]))) as DesiredObject[];
  return annotatePlan(plan(d, state, { applySet: 'default', prune }), d, state, inputs);
}

const text = (p: Plan): string => renderPlanText(p, { color: false });

describe('annotatePlan: resolving Module images', () => {
  it('resolves module + version range to the newest matching version and shows it on the change', () => {
    const p = annotated([mod('webapp1', { version: '^1.0' })], emptyState(), { catalog });
    expect(p.changes[0]?.resolved).toEqual({ image: `${WEBAPP}:1.2.0`, tag: '1.2.0', version: '1.2.0', repository: 'default', prerelease: false });
    expect(text(p)).toContain(`    # resolves to ${WEBAPP}:1.2.0 (repository default)\n`);
    expect(renderPlanJson(p)).toMatchObject({ changes: [{ resolved: { image: `${WEBAPP}:1.2.0`, version: '1.2.0', repository: 'default' }, resolutionError: null }] });
  });

  it('offers a prerelease only when the repository has testing', () => {
    expect(annotated([mod('webapp1')], emptyState(), { catalog }).changes[0]?.resolved?.version).toBe('2.0.0');
    const testing = annotated([mod('webapp1')], emptyState(), { catalog: catalogOf([defaultRepo(true)]) });
    expect(testing.changes[0]?.resolved).toMatchObject({ version: '2.1.0-rc.1', prerelease: true });
    expect(text(testing)).toContain(`# resolves to ${WEBAPP}:2.1.0-rc.1 (repository default, prerelease)`);
  });

  it('takes a full image URL as it is, without a catalog', () => {
    const p = annotated([mod('webapp1', { module: undefined, image: 'registry.test/other/webapp:3.0.0' } as never)], emptyState(), {});
    expect(p.changes[0]?.resolved).toEqual({ image: 'registry.test/other/webapp:3.0.0', tag: '3.0.0', version: '3.0.0', repository: null, prerelease: false });
    expect(text(p)).toContain('# resolves to registry.test/other/webapp:3.0.0 (full image URL)');
  });

  it('leaves repository modules unresolved and unblocked when no catalog was loaded', () => {
    const d = desired(mod('webapp1', { version: '^9' }));
    const base = plan(d, emptyState(), opts);
    const p = annotatePlan(base, d, emptyState(), {});
    expect(p.changes).toEqual(base.changes);
    expect(p.blocked).toEqual([]);
    expect(p.updates).toEqual([]);
  });

  it('blocks a new Module whose module no enabled repository offers, naming the repositories searched', () => {
    const p = annotated([mod('nextcloud1'), mod('webapp1')], emptyState(), { catalog });
    expect(p.changes.map((c) => c.key)).toEqual(['Module/webapp1']);
    expect(p.summary).toEqual({ create: 1, update: 0, delete: 0 });
    expect(p.blocked).toEqual([{ key: 'Module/nextcloud1', message: expect.stringContaining("module 'nextcloud' is not offered by any enabled repository (searched: default)") }]);
    expect(isEmpty(p)).toBe(false);
    expect(summaryLine(p)).toBe('Plan: 1 to create, 0 to update, 0 to delete. 1 blocked (see "!" above).');
  });

  it('blocks an edited version range nothing satisfies, listing the versions offered', () => {
    const s = appliedState([mod('webapp1', { version: '^1.0' })]);
    const p = annotated([mod('webapp1', { version: '^3.0' })], s, { catalog });
    expect(p.changes).toEqual([]);
    expect(p.blocked[0]?.message).toBe(
      `cannot resolve the image of webapp1: module 'webapp' has no version matching "^3.0": repository 'default' (${WEBAPP}) offers 2.0.0, 1.2.0, 1.1.0, 1.0.0`,
    );
  });

  it('only warns when an unchanged Module no longer resolves: the running instance is left alone', () => {
    const s = appliedState([mod('webapp1', { version: '^1.0' })]);
    const p = annotated([mod('webapp1', { version: '^1.0' })], s, { catalog: catalogOf([repo('default', [pkg('vault', [ver('1.0.0')])])]) });
    expect(p.blocked).toEqual([]);
    expect(isEmpty(p)).toBe(true);
    expect(p.warnings).toEqual([expect.stringMatching(/^Module\/webapp1: image not resolved at plan time: module 'webapp' is not offered .*the instance is left as it is$/)]);
    expect(text(p)).toContain("? Module/webapp1: image not resolved at plan time: module 'webapp'");
  });

  it('only warns when a repository could not be read, since the module may be there', () => {
    const failures = [{ repository: 'forge', message: "repository 'forge': cannot download http://127.0.0.1:9/repodata.json: ECONNREFUSED" }];
    const p = annotated([mod('nextcloud1')], emptyState(), { catalog: catalogOf([defaultRepo()], failures) });
    expect(p.blocked).toEqual([]);
    expect(p.changes[0]?.resolutionError).toEqual({ code: 'module_not_found', message: expect.stringContaining("some repositories could not be read: repository 'forge'") });
    expect(p.warnings).toEqual([]);
    expect(text(p)).toContain('    # image not resolved: ');
    const s = appliedState([mod('nextcloud1')]);
    const unchanged = annotated([mod('nextcloud1')], s, { catalog: catalogOf([defaultRepo()], failures) });
    expect(unchanged.warnings).toEqual([expect.stringMatching(/^Module\/nextcloud1: image not resolved at plan time: .*; the node agent resolves it when it reconciles$/)]);
  });

  it('blocks an invalid version spec even when repositories failed', () => {
    const p = annotated([mod('webapp1', { version: 'newest' })], emptyState(), { catalog: catalogOf([defaultRepo()], [{ repository: 'x', message: 'x failed' }]) });
    expect(p.blocked[0]?.message).toContain('is not "latest", an exact version');
  });

  it('knows which specs go through repositories', () => {
    expect(usesRepository({ module: 'webapp' })).toBe(true);
    expect(usesRepository({ module: 'ghcr.io/x/webapp' })).toBe(false);
    expect(usesRepository({ image: 'ghcr.io/x/webapp:1.0.0' })).toBe(false);
  });
});

describe('annotatePlan: org.nethserver.max-per-node', () => {
  it('blocks a second instance on a node that allows one, naming node, limit and occupant', () => {
    const s = appliedState([mod('vault1')]);
    const p = annotated([mod('vault1'), mod('vault2'), mod('vault3', { node: 2 })], s, { catalog });
    expect(p.changes.map((c) => c.key)).toEqual(['Module/vault3']);
    expect(p.blocked).toEqual([
      { key: 'Module/vault2', message: 'vault2: module vault allows at most 1 instance per node (org.nethserver.max-per-node=1); node 1 already has vault1; place it on another node' },
    ]);
  });

  it('admits the lowest-numbered of two new instances, whatever the manifest order', () => {
    const d = desired(mod('vault7'), mod('vault2'));
    const a = annotated(d, emptyState(), { catalog });
    const b = annotated([...d].reverse(), emptyState(), { catalog });
    expect(a).toEqual(b);
    expect(a.changes.map((c) => c.key)).toEqual(['Module/vault2']);
    expect(a.blocked.map((x) => x.key)).toEqual(['Module/vault7']);
  });

  it('counts instances NS8 records that ns8ctl does not manage, and never blocks an existing instance', () => {
    const s = emptyState();
    s.moduleNode.set('vault4', '1');
    expect(annotated([mod('vault5')], s, { catalog }).blocked[0]?.message).toContain('node 1 already has vault4');
    const both = appliedState([mod('vault1'), mod('vault2')]);
    expect(annotated([mod('vault1'), mod('vault2')], both, { catalog }).blocked).toEqual([]);
  });

  it('frees the slot of an instance the same plan prunes, but not of one still being removed', () => {
    const s = appliedState([mod('vault1')]);
    expect(annotated([mod('vault2')], s, { catalog }, true).blocked).toEqual([]);
    const removing = appliedState([mod('vault1')], { finalizers: ['node-agent'] });
    expect(annotated([mod('vault2')], removing, { catalog }, true).blocked.map((b) => b.key)).toEqual(['Module/vault2']);
  });

  it('enforces the limit for a full image URL whose labels the catalog publishes for the same source and tag', () => {
    const url = (id: string, node = 1): ModuleObject => mod(id, { module: undefined, image: `${VAULT}:1.0.0`, node } as never);
    const p = annotated([url('vault1'), url('vault2'), url('vault3', 2)], emptyState(), { catalog });
    expect(p.changes.map((c) => c.key)).toEqual(['Module/vault1', 'Module/vault3']);
    expect(p.blocked).toEqual([
      { key: 'Module/vault2', message: 'vault2: module vault allows at most 1 instance per node (org.nethserver.max-per-node=1); node 1 already has vault1; place it on another node' },
    ]);
    // Another tag of the same source is not in the catalog: its labels are unknown, no limit.
    const other = (id: string): ModuleObject => mod(id, { module: undefined, image: `${VAULT}:9.9.9` } as never);
    expect(annotated([other('vault1'), other('vault2')], emptyState(), { catalog }).blocked).toEqual([]);
  });

  it('enforces the limit for a full image URL from the observed image labels', () => {
    const image = 'registry.test/private/solo:2.0.0';
    const url = (id: string, node = 1): ModuleObject => mod(id, { module: undefined, image, node } as never);
    const imageLabels = new Map([[image, { 'org.nethserver.max-per-node': '1' }]]);
    const p = annotated([url('solo1'), url('solo2'), url('solo3', 2)], emptyState(), { imageLabels });
    expect(p.blocked.map((b) => b.key)).toEqual(['Module/solo2']);
    expect(p.blocked[0]?.message).toContain('node 1 already has solo1');
    // Existing instances are never blocked, even over the limit.
    const s = appliedState([url('solo1'), url('solo2')]);
    expect(annotated([url('solo1'), url('solo2')], s, { imageLabels }).blocked).toEqual([]);
    // Without the labels nothing is known and nothing is blocked.
    expect(annotated([url('solo1'), url('solo2')], emptyState(), {}).blocked).toEqual([]);
  });

});

describe('annotatePlan: version updates of running instances', () => {
  const running = (m: Record<string, string>): Map<string, string> => new Map(Object.entries(m));

  it('notices a new release inside the range without making the plan non-empty', () => {
    const s = appliedState([mod('webapp1', { version: '^1.0' })]);
    const p = annotated([mod('webapp1', { version: '^1.0' })], s, { catalog, running: running({ webapp1: `${WEBAPP}:1.0.0` }) });
    expect(isEmpty(p)).toBe(true);
    expect(p.updates).toEqual([
      {
        key: 'Module/webapp1',
        id: 'webapp1',
        kind: 'upgrade',
        from: '1.0.0',
        fromImage: `${WEBAPP}:1.0.0`,
        to: '1.2.0',
        resolved: { image: `${WEBAPP}:1.2.0`, tag: '1.2.0', version: '1.2.0', repository: 'default', prerelease: false },
      },
    ]);
    expect(text(p)).toBe(
      [
        '↑ Module/webapp1 update 1.0.0 -> 1.2.0',
        `    # resolves to ${WEBAPP}:1.2.0 (repository default)`,
        `    # running ${WEBAPP}:1.0.0; the node agent performs the update`,
        '',
        'No changes. Desired state matches. 1 version update pending.',
        '',
      ].join('\n'),
    );
    expect(renderPlanJson(p)).toMatchObject({ empty: true, summary: { updates: 1, updatesRefused: 0 }, updates: [{ key: 'Module/webapp1', kind: 'upgrade', from: '1.0.0', to: '1.2.0', refused: null }] });
  });

  it('notices an edited version next to the update change and counts it in the summary', () => {
    const s = appliedState([mod('webapp1', { version: '1.0.0' })]);
    const p = annotated([mod('webapp1', { version: '1.1.0' })], s, { catalog, running: running({ webapp1: `${WEBAPP}:1.0.0` }) });
    expect(p.summary.update).toBe(1);
    expect(p.updates?.map((u) => `${u.from}->${u.to}`)).toEqual(['1.0.0->1.1.0']);
    expect(summaryLine(p)).toBe('Plan: 0 to create, 1 to update, 0 to delete. 1 version update pending.');
  });

  it('says why the node agent will refuse an update min-from forbids, and how to get there', () => {
    const s = appliedState([mod('webapp1', { version: '2.0.0' })]);
    const p = annotated([mod('webapp1', { version: '2.0.0' })], s, { catalog, running: running({ webapp1: `${WEBAPP}:1.0.0` }) });
    expect(p.updates?.[0]?.refused).toEqual({
      code: 'min_from_not_met',
      message: 'webapp1: cannot update 1.0.0 -> 2.0.0: 2.0.0 can only update instances running >= 1.1.0 (org.nethserver.min-from); update through 1.2.0 first (set version: 1.2.0)',
    });
    const t = text(p);
    expect(t).toContain('↑ Module/webapp1 update 1.0.0 -> 2.0.0 (refused)\n');
    expect(t).toContain('    # webapp1: cannot update 1.0.0 -> 2.0.0: 2.0.0 can only update instances running >= 1.1.0');
    expect(summaryLine(p)).toBe('No changes. Desired state matches. 1 version update refused (see above).');
  });

  it('marks a downgrade as refused with a down arrow', () => {
    const s = appliedState([mod('webapp1', { version: '1.0.0' })]);
    const p = annotated([mod('webapp1', { version: '1.0.0' })], s, { catalog, running: running({ webapp1: `${WEBAPP}:1.2.0` }) });
    expect(p.updates?.[0]).toMatchObject({ kind: 'downgrade', refused: { code: 'downgrade_refused' } });
    expect(text(p)).toContain('↓ Module/webapp1 downgrade 1.2.0 -> 1.0.0 (refused)');
  });

  it('holds the update of a suspended Module', () => {
    const s = appliedState([mod('webapp1', { suspend: true })]);
    const p = annotated([mod('webapp1', { suspend: true })], s, { catalog, running: running({ webapp1: `${WEBAPP}:1.2.0` }) });
    expect(p.updates?.[0]?.refused?.code).toBe('suspended');
  });

  it('has nothing to say when the running image is the resolved one, or unknown', () => {
    const s = appliedState([mod('webapp1', { version: '^1' }), mod('vault1')]);
    const p = annotated([mod('webapp1', { version: '^1' }), mod('vault1')], s, { catalog, running: running({ webapp1: `${WEBAPP}:1.2.0` }) });
    expect(p.updates).toEqual([]);
    expect(text(p)).toBe('No changes. Desired state matches.\n');
  });

  it('notices a full image URL change with labels unknown (the node agent inspects the image)', () => {
    const m = mod('webapp1', { module: undefined, image: `${WEBAPP}:2.0.0` } as never);
    const p = annotated([m], appliedState([m]), { running: running({ webapp1: `${WEBAPP}:1.0.0` }) });
    expect(p.updates?.[0]).toMatchObject({ kind: 'upgrade', from: '1.0.0', to: '2.0.0', resolved: { repository: null } });
    expect(p.updates?.[0]?.refused).toBeUndefined();
  });
});

describe('annotatePlan: properties', () => {
  const moduleArb = fc
    .record({
      module: fc.constantFrom('webapp', 'vault', 'nextcloud'),
      n: fc.integer({ min: 1, max: 4 }),
      node: fc.integer({ min: 1, max: 2 }),
      version: fc.option(fc.constantFrom('latest', '^1.0', '1.1.0', '^3'), { nil: undefined }),
    })
    .map((r) => mod(`${r.module}${r.n}`, { module: r.module, node: r.node, ...(r.version ? { version: r.version } : {}) }));
  const setArb = fc.uniqueArray(moduleArb, { selector: (m) => m.metadata.name, maxLength: 8 });
  const runningArb = fc.dictionary(fc.constantFrom('webapp1', 'webapp2', 'vault1'), fc.constantFrom(`${WEBAPP}:1.0.0`, `${WEBAPP}:1.2.0`, `${VAULT}:1.0.0`));

  it('is deterministic, leaves nothing but the same blocks after its apply, and never puts two vaults on a node', () => {
    fc.assert(
      fc.property(setArb, fc.shuffledSubarray([0, 1, 2, 3, 4, 5, 6, 7]), runningArb, (mods, order, run) => {
        const inputs: ResolutionInputs = { catalog, running: new Map(Object.entries(run)) };
        const d = desired(...mods);
        const shuffled = [...order.filter((i) => i < d.length).map((i) => d[i]!), ...d.filter((_, i) => !order.includes(i))];
        const p = annotated(d, emptyState(), inputs);
        expect(annotated(shuffled, emptyState(), inputs)).toEqual(p);
        // Apply what is not blocked (as the controller does), then plan again.
        const after = applyPlanToState(emptyState(), p, uuidFor);
        const again = annotated(d, after, inputs);
        expect(again.changes).toEqual([]);
        expect(again.blocked.map((b) => b.key)).toEqual(p.blocked.map((b) => b.key));
        const vaults = [...after.objects.values()].flatMap((o) => (o.object.kind === 'Module' && o.object.spec.module === 'vault' ? [o.object.spec.node] : []));
        expect(new Set(vaults).size).toBe(vaults.length);
      }),
      { numRuns: 200 },
    );
  });
});
