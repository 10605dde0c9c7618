import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { API_VERSION, objectKey } from '../../src/manifest/types.js';
import type { DesiredObject, ManifestObject, ModuleObject, NodeObject, RepositoryObject } from '../../src/manifest/types.js';
import { compareNatural, jsonEqual } from '../../src/runtime/canonical.js';
import { applyPlanToState, plan } from '../../src/plan/planner.js';
import { renderPlanJson, renderPlanText } from '../../src/plan/render.js';
import { emptyState } from '../../src/state/cluster-state.js';
import type { ClusterState, StoredObject } from '../../src/state/cluster-state.js';
import { desired, uuidFor } from '../support/plan-fixtures.js';

// ---- generators: small value pools so objects collide with the state often -------------------

const MODULES = ['dokuwiki', 'webapp', 'samba'] as const;
const REPOS = ['default', 'nethforge', 'extra'] as const;
const SECRET = 'S3CR3T';
const secretValue = fc.integer({ min: 0, max: 99 }).map((n) => `${SECRET}-${n}`);
const plainValue = fc.oneof(fc.integer({ min: 0, max: 3 }), fc.constantFrom('a', 'b'), fc.boolean(), fc.constant(null), fc.array(fc.integer({ min: 0, max: 2 }), { maxLength: 2 }));

/** Builds an object from optional parts, leaving a field out (not `undefined`) when absent. */
function compact<T extends object>(o: T): { [K in keyof T]: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as { [K in keyof T]: Exclude<T[K], undefined> };
}

const labels = fc.option(fc.dictionary(fc.constantFrom('tier', 'team', 'app.kubernetes.io/name'), fc.constantFrom('a', 'b')), { nil: undefined });

const configuration = fc.option(
  fc.record(
    {
      admin_password: secretValue,
      apiToken: secretValue,
      size: plainValue,
      nested: fc.record({ x: plainValue, credentials: fc.record({ user: fc.constant('u'), pw: secretValue }) }, { requiredKeys: [] }),
      url: fc.constantFrom('https://u:' + SECRET + '@h.example/', 'https://h.example/'),
    },
    { requiredKeys: [] },
  ),
  { nil: undefined },
);

const moduleObject: fc.Arbitrary<ModuleObject> = fc
  .record({
    module: fc.constantFrom(...MODULES),
    n: fc.integer({ min: 1, max: 4 }),
    node: fc.integer({ min: 1, max: 3 }),
    version: fc.option(fc.constantFrom('latest', '1.0.0', '^1.2'), { nil: undefined }),
    volumes: fc.option(fc.dictionary(fc.constantFrom('data', 'logs'), fc.constantFrom('/srv/a', '/srv/b')), { nil: undefined }),
    configuration,
    removalPolicy: fc.option(fc.constantFrom('Preserve' as const, 'Delete' as const), { nil: undefined }),
    labels,
  })
  .map((r) => ({
    apiVersion: API_VERSION,
    kind: 'Module' as const,
    metadata: compact({ name: `${r.module}${r.n}`, labels: r.labels }),
    spec: compact({ module: r.module, node: r.node, version: r.version, volumes: r.volumes, configuration: r.configuration, removalPolicy: r.removalPolicy }),
  }));

const repositoryObject: fc.Arbitrary<RepositoryObject> = fc
  .record({
    name: fc.constantFrom(...REPOS),
    url: fc.constantFrom('https://a.example/', 'https://b.example/', `https://u:${SECRET}@c.example/`),
    enabled: fc.option(fc.boolean(), { nil: undefined }),
    testing: fc.option(fc.boolean(), { nil: undefined }),
    labels,
  })
  .map((r) => ({
    apiVersion: API_VERSION,
    kind: 'Repository' as const,
    metadata: compact({ name: r.name, labels: r.labels }),
    spec: compact({ url: r.url, enabled: r.enabled, testing: r.testing }),
  }));

const nodeObject: fc.Arbitrary<NodeObject> = fc
  .record({
    id: fc.integer({ min: 1, max: 3 }),
    name: fc.constantFrom('leader', 'worker', 'n3'),
    flags: fc.option(fc.subarray(['nomodules', 'x']), { nil: undefined }),
    address: fc.option(fc.constantFrom('10.0.0.1', 'node2.example'), { nil: undefined }),
  })
  .map((r) => ({
    apiVersion: API_VERSION,
    kind: 'Node' as const,
    metadata: { name: r.name },
    spec: compact({ id: r.id, flags: r.flags, address: r.address }),
  }));

const anyObject: fc.Arbitrary<ManifestObject> = fc.oneof(moduleObject, repositoryObject, nodeObject);
const objectSet = fc.uniqueArray(anyObject, { selector: objectKey, maxLength: 10 });
const desiredSet: fc.Arbitrary<DesiredObject[]> = objectSet.map((objs) => desired(...objs));

const instanceIds = MODULES.flatMap((m) => [1, 2, 3, 4].map((n) => `${m}${n}`));
const ghostKeys = ['Module/ghost1', 'Repository/ghost', 'Node/9'];

/** Arbitrary observed state: stored objects, inventories (with ghosts), drifted NS8 keys. */
const clusterState: fc.Arbitrary<ClusterState> = fc
  .record({
    objects: fc.array(
      fc.record({
        object: anyObject,
        generation: fc.integer({ min: 1, max: 5 }),
        applySet: fc.constantFrom('default', 'other'),
        finalizers: fc.subarray(['node-agent']),
        deleting: fc.option(fc.constantFrom('Preserve' as const, 'Delete' as const), { nil: undefined }),
      }),
      { maxLength: 10 },
    ),
    inventoryPick: fc.array(fc.tuple(fc.constantFrom('default', 'other'), fc.nat(), fc.boolean()), { maxLength: 14 }),
    moduleSequence: fc.dictionary(fc.constantFrom(...MODULES), fc.integer({ min: 0, max: 5 })),
    moduleNode: fc.dictionary(fc.constantFrom(...instanceIds), fc.constantFrom('1', '2', '3')),
    moduleUuid: fc.dictionary(fc.constantFrom(...instanceIds), fc.constantFrom('u1', 'u2')),
    repositories: fc.dictionary(
      fc.constantFrom(...REPOS),
      fc.record({ url: fc.constantFrom('https://a.example/', 'https://z.example/'), status: fc.constantFrom('1', '0', 'true'), testing: fc.constantFrom('1', '0') }, { requiredKeys: [] }),
    ),
    nodeUiName: fc.dictionary(fc.constantFrom('1', '2', '3'), fc.constantFrom('leader', 'worker', 'old')),
    nodeFlags: fc.dictionary(fc.constantFrom('1', '2', '3'), fc.subarray(['nomodules', 'x', 'y'])),
  })
  .map((r) => {
    const s = emptyState();
    for (const o of r.objects) {
      const st: StoredObject = { key: objectKey(o.object), object: o.object, generation: o.generation, source: 'old.yaml', revision: '', applySet: o.applySet, finalizers: o.finalizers };
      if (o.deleting) st.deleting = { removalPolicy: o.deleting };
      s.objects.set(st.key, st);
    }
    const candidates = [...s.objects.keys(), ...ghostKeys];
    for (const [set, i, ghost] of r.inventoryPick) {
      const key = ghost ? ghostKeys[i % ghostKeys.length]! : candidates[i % candidates.length]!;
      s.inventory.set(set, (s.inventory.get(set) ?? new Set()).add(key));
    }
    for (const [k, v] of Object.entries(r.moduleSequence)) s.moduleSequence.set(k, v);
    for (const [k, v] of Object.entries(r.moduleNode)) s.moduleNode.set(k, v);
    for (const [k, v] of Object.entries(r.moduleUuid)) s.moduleUuid.set(k, v);
    for (const [k, v] of Object.entries(r.repositories)) s.repositories.set(k, v as Record<string, string>);
    for (const [k, v] of Object.entries(r.nodeUiName)) s.nodeUiName.set(k, v);
    for (const [k, v] of Object.entries(r.nodeFlags)) s.nodeFlags.set(k, v);
    return s;
  });

/** Stored Modules (not being removed) whose desired node differs: the planner refuses these moves. */
function movedModules(d: readonly DesiredObject[], s: ClusterState): string[] {
  return d.flatMap(({ object }) => {
    const st = s.objects.get(objectKey(object));
    return object.kind === 'Module' && st && !st.deleting && st.object.kind === 'Module' && st.object.spec.node !== object.spec.node ? [object.metadata.name] : [];
  });
}

/** Desired objects and a state, with every stored Module desired on its stored node (no refused move). */
const scenario: fc.Arbitrary<readonly [DesiredObject[], ClusterState]> = fc.tuple(desiredSet, clusterState).map(([d, s]) => {
  const kept = d.map((x) => {
    const st = s.objects.get(objectKey(x.object));
    if (x.object.kind !== 'Module' || st?.object.kind !== 'Module') return x;
    return { ...x, object: { ...x.object, spec: { ...x.object.spec, node: st.object.spec.node } } };
  });
  return [kept, s] as const;
});

/** The same state with every map and set rebuilt in reverse insertion order. */
function reversedState(s: ClusterState): ClusterState {
  const rev = <K, V>(m: Map<K, V>): Map<K, V> => new Map([...m].reverse());
  return {
    objects: rev(s.objects),
    inventory: new Map([...s.inventory].reverse().map(([k, v]) => [k, new Set([...v].reverse())])),
    moduleSequence: rev(s.moduleSequence),
    moduleNode: rev(s.moduleNode),
    moduleUuid: rev(s.moduleUuid),
    repositories: rev(s.repositories),
    nodeUiName: rev(s.nodeUiName),
    nodeFlags: new Map([...s.nodeFlags].reverse().map(([k, v]) => [k, [...v].reverse()])),
    moving: new Set([...s.moving].reverse()),
  };
}

/** Objects whose Modules sit on no node a desired Node flags `nomodules` (the planner blocks those). */
const placeable = (objs: readonly ManifestObject[]): boolean => {
  const closed = new Set(objs.flatMap((o) => (o.kind === 'Node' && o.spec.flags?.includes('nomodules') ? [o.spec.id] : [])));
  return objs.every((o) => o.kind !== 'Module' || !closed.has(o.spec.node));
};

/** Nodes flagged `nomodules` once `d` is applied to `s`: a desired Node's spec.flags, else NS8's record. */
const closedNodes = (d: readonly DesiredObject[], s: ClusterState): Set<string> => {
  const flags = new Map(s.nodeFlags);
  for (const x of d) if (x.object.kind === 'Node' && x.object.spec.flags !== undefined) flags.set(String(x.object.spec.id), x.object.spec.flags);
  return new Set([...flags].filter(([, f]) => f.includes('nomodules')).map(([n]) => n));
};

const options = fc.record({ applySet: fc.constantFrom('default', 'other'), prune: fc.boolean() });
const runs = { numRuns: 250 };

describe('planner properties', () => {
  it('plans a move (recorded for the node agents; refused only onto a nomodules node) for exactly the stored Modules whose node changes', () => {
    fc.assert(
      fc.property(desiredSet, clusterState, options, (d, s, o) => {
        const target = (id: string): string => String((d.find((x) => x.object.metadata.name === id)!.object as { spec: { node: number } }).spec.node);
        const closed = closedNodes(d, s);
        const moved = movedModules(d, s).filter((id) => s.moduleNode.get(id) !== undefined && s.moduleNode.get(id) !== target(id));
        const p = plan(d, s, o);
        const recorded = p.changes.flatMap((c) => c.bookkeeping.filter((b) => b.type === 'hset' && b.key === 'ns8ctl/moves').map(() => c.id));
        expect(recorded.sort(compareNatural)).toEqual(moved.filter((id) => !closed.has(target(id))).sort(compareNatural));
        const refused = p.blocked.filter((b) => b.code === 'node_nomodules').map((b) => b.key);
        for (const id of moved.filter((m) => closed.has(target(m)))) expect(refused).toContain(`Module/${id}`);
      }),
      runs,
    );
  });

  it('plans nothing more once the plan has been applied (the plan after apply is empty)', () => {
    fc.assert(
      fc.property(scenario, options, ([d, s], o) => {
        const first = plan(d, s, o);
        const again = plan(d, applyPlanToState(s, first, uuidFor), o);
        expect(again.changes).toEqual([]);
        expect(again.blocked).toEqual(first.blocked);
      }),
      runs,
    );
  });

  it('leaves every desired object stored, in the inventory, with its NS8 bookkeeping in place after apply', () => {
    fc.assert(
      fc.property(scenario, options, ([d, s], o) => {
        const p = plan(d, s, o);
        const after = applyPlanToState(s, p, uuidFor);
        const blocked = new Set(p.blocked.map((b) => b.key));
        for (const { object } of d) {
          const key = objectKey(object);
          if (blocked.has(key)) continue;
          expect(jsonEqual(after.objects.get(key)?.object, object)).toBe(true);
          expect(after.objects.get(key)?.applySet).toBe(o.applySet);
          expect(after.inventory.get(o.applySet)?.has(key)).toBe(true);
          for (const [set, members] of after.inventory) if (set !== o.applySet) expect(members.has(key)).toBe(false);
          if (object.kind === 'Module') {
            const id = object.metadata.name;
            const m = /^(.*?)([1-9][0-9]*)$/.exec(id)!;
            expect(after.moduleNode.get(id)).toBe(String(object.spec.node));
            expect(after.moduleSequence.get(m[1]!)).toBeGreaterThanOrEqual(Number(m[2]));
            expect(after.moduleUuid.get(id)).toBe(s.moduleUuid.get(id) ?? uuidFor(id));
          } else if (object.kind === 'Repository') {
            expect(after.repositories.get(object.metadata.name)).toMatchObject({
              url: object.spec.url,
              status: object.spec.enabled === false ? '0' : '1',
              testing: object.spec.testing ? '1' : '0',
            });
          } else if (object.kind === 'Node') {
            const id = String(object.spec.id);
            expect(after.nodeUiName.get(id)).toBe(object.metadata.name);
            if (object.spec.flags) expect([...(after.nodeFlags.get(id) ?? [])].sort()).toEqual([...object.spec.flags].sort());
            else expect(after.nodeFlags.get(id)).toEqual(s.nodeFlags.get(id));
          }
        }
      }),
      runs,
    );
  });

  it('reaches the empty plan from an empty cluster in one apply, with nothing blocked', () => {
    fc.assert(
      fc.property(desiredSet.filter((d) => placeable(d.map((x) => x.object))), options, (d, o) => {
        const first = plan(d, emptyState(), o);
        expect(first.blocked).toEqual([]);
        expect(first.changes.every((c) => c.action === 'create')).toBe(true);
        expect(plan(d, applyPlanToState(emptyState(), first, uuidFor), o).changes).toEqual([]);
      }),
      runs,
    );
  });

  it('gives deep-equal plans for the same input, whatever the order of desired objects and state maps', () => {
    fc.assert(
      fc.property(scenario, options, fc.integer(), ([d, s], o, seed) => {
        const shuffled = [...d].sort((a, b) => ((objectKey(a.object).length * 31 + seed) % 7) - ((objectKey(b.object).length * 17 + seed) % 5));
        const reference = plan(d, s, o);
        expect(plan(d, s, o)).toEqual(reference);
        expect(plan([...d].reverse(), reversedState(s), o)).toEqual(reference);
        expect(plan(shuffled, s, o)).toEqual(reference);
      }),
      runs,
    );
  });

  it('never deletes anything outside the apply set inventory, and deletes nothing without prune', () => {
    fc.assert(
      fc.property(scenario, options, ([d, s], o) => {
        const p = plan(d, s, o);
        const inventory = s.inventory.get(o.applySet) ?? new Set();
        const desiredKeys = new Set(d.map((x) => objectKey(x.object)));
        for (const c of p.changes.filter((x) => x.action === 'delete')) {
          expect(inventory.has(c.key)).toBe(true);
          expect(desiredKeys.has(c.key)).toBe(false);
        }
        if (!o.prune) expect(p.summary.delete).toBe(0);
        expect(p.pruneRatio).toEqual({ prune: p.summary.delete, inventory: inventory.size });
      }),
      runs,
    );
  });

  it('orders creates and updates Node, Repository, Module and puts deletes last in reverse kind order', () => {
    const rank = { Node: 0, Repository: 1, BackupDestination: 2, BackupSchedule: 3, Module: 4 } as const;
    fc.assert(
      fc.property(scenario, options, ([d, s], o) => {
        const p = plan(d, s, o);
        const writes = p.changes.filter((c) => c.action !== 'delete');
        const deletes = p.changes.filter((c) => c.action === 'delete');
        expect(p.changes).toEqual([...writes, ...deletes]);
        for (let i = 1; i < writes.length; i++) expect(rank[writes[i]!.kind]).toBeGreaterThanOrEqual(rank[writes[i - 1]!.kind]);
        for (let i = 1; i < deletes.length; i++) expect(rank[deletes[i]!.kind]).toBeLessThanOrEqual(rank[deletes[i - 1]!.kind]);
        expect(p.summary).toEqual({
          create: p.changes.filter((c) => c.action === 'create').length,
          update: writes.length - p.changes.filter((c) => c.action === 'create').length,
          delete: deletes.length,
        });
      }),
      runs,
    );
  });

  it('bumps the generation exactly when the spec changed', () => {
    fc.assert(
      fc.property(scenario, options, ([d, s], o) => {
        for (const c of plan(d, s, o).changes.filter((x) => x.action === 'update')) {
          const st = s.objects.get(c.key)!;
          const changed = !jsonEqual(st.object.spec, c.after!.spec);
          expect(c.specChanged).toBe(changed);
          expect(c.generation).toBe(st.generation + (changed ? 1 : 0));
          expect(c.patch.length > 0).toBe(changed);
        }
      }),
      runs,
    );
  });

  it('sees a metadata-only change as an update with specChanged false and an empty patch', () => {
    fc.assert(
      fc.property(objectSet.filter((o) => o.length > 0 && placeable(o)), fc.constantFrom('x', 'y'), (objs, tag) => {
        const o = { applySet: 'default', prune: true };
        const applied = applyPlanToState(emptyState(), plan(desired(...objs), emptyState(), o), uuidFor);
        const relabelled = objs.map((obj) => ({ ...obj, metadata: { ...obj.metadata, annotations: { note: tag } } }) as ManifestObject);
        const p = plan(desired(...relabelled), applied, o);
        expect(p.changes).toHaveLength(objs.length);
        for (const c of p.changes) {
          expect(c).toMatchObject({ action: 'update', specChanged: false, patch: [], bookkeeping: [] });
          expect(c.generation).toBe(1);
        }
      }),
      runs,
    );
  });

  it('never creates or moves a Module onto a node flagged nomodules, and blocks only those placements with node_nomodules', () => {
    fc.assert(
      fc.property(scenario, options, ([d, s], o) => {
        const nodes = closedNodes(d, s);
        const closed = (node: number): boolean => nodes.has(String(node));
        const p = plan(d, s, o);
        for (const c of p.changes) {
          if (c.kind !== 'Module' || c.action === 'delete' || c.after?.kind !== 'Module' || !closed(c.after.spec.node)) continue;
          const before = s.objects.get(c.key)?.object;
          // Only an instance already there: stored on that node, or recorded there by NS8.
          if (before?.kind === 'Module') expect(before.spec.node).toBe(c.after.spec.node);
          else expect(s.moduleNode.get(c.id)).toBe(String(c.after.spec.node));
        }
        for (const b of p.blocked.filter((x) => x.code === 'node_nomodules')) {
          const m = d.find((x) => objectKey(x.object) === b.key)?.object;
          expect(m?.kind === 'Module' && closed(m.spec.node)).toBe(true);
        }
      }),
      runs,
    );
  });

  it('shows no secret value in the text or JSON rendering of any plan', () => {
    fc.assert(
      fc.property(scenario, options, fc.boolean(), ([d, s], o, color) => {
        const p = plan(d, s, o);
        expect(renderPlanText(p, { color })).not.toContain(SECRET);
        expect(JSON.stringify(renderPlanJson(p))).not.toContain(SECRET);
      }),
      runs,
    );
  });
});
