import { describe, expect, it } from '@jest/globals';
import { RefusedError } from '../../src/errors.js';
import { applyPlanToState, checkPruneSafety, isEmpty, plan, planDeletion } from '../../src/plan/planner.js';
import { emptyState } from '../../src/state/cluster-state.js';
import { appliedState, desired, mod, node, repo, stored, uuidFor } from '../support/plan-fixtures.js';

const opts = { applySet: 'default', prune: false };

const prune = { applySet: 'default', prune: true };

describe('plan: creates', () => {
  it('creates every object of an empty cluster, Nodes then Repositories then Modules, with all NS8 bookkeeping', () => {
    const p = plan(desired(mod('dokuwiki1'), repo('default', 'https://r.example/'), node(1, 'leader', ['maintenance'])), emptyState(), opts);
    expect(p.changes.map((c) => `${c.action} ${c.key}`)).toEqual(['create Node/1', 'create Repository/default', 'create Module/dokuwiki1']);
    expect(p.summary).toEqual({ create: 3, update: 0, delete: 0 });
    const m = p.changes[2]!;
    expect(m.specChanged).toBe(true);
    expect(m.generation).toBe(1);
    expect(m.patch).toEqual([
      { op: 'add', path: '/module', value: 'dokuwiki' },
      { op: 'add', path: '/node', value: 1 },
    ]);
    expect(m.bookkeeping).toEqual([
      { type: 'hset', key: 'cluster/module_node', field: 'dokuwiki1', value: '1' },
      { type: 'sequence-at-least', key: 'cluster/module_sequence/dokuwiki', module: 'dokuwiki', value: 1 },
      { type: 'uuid-ensure', key: 'cluster/module_uuid', id: 'dokuwiki1' },
    ]);
    expect(m.inventory).toEqual({ add: 'default', remove: [] });
    expect(p.changes[1]!.bookkeeping).toEqual([
      { type: 'hset', key: 'cluster/repository/default', field: 'url', value: 'https://r.example/' },
      { type: 'hset', key: 'cluster/repository/default', field: 'status', value: '1' },
      { type: 'hset', key: 'cluster/repository/default', field: 'testing', value: '0' },
      { type: 'del', key: 'cluster/repository_cache/default' },
    ]);
    expect(p.changes[0]!.bookkeeping).toEqual([
      { type: 'set', key: 'node/1/ui_name', value: 'leader' },
      { type: 'set-members', key: 'node/1/flags', members: ['maintenance'] },
    ]);
  });

  it('orders ids naturally so dokuwiki2 comes before dokuwiki10', () => {
    const p = plan(desired(mod('dokuwiki10'), mod('dokuwiki2'), mod('dokuwiki1')), emptyState(), opts);
    expect(p.changes.map((c) => c.id)).toEqual(['dokuwiki1', 'dokuwiki2', 'dokuwiki10']);
  });

  it('never lowers the module sequence and keeps an existing uuid', () => {
    const s = emptyState();
    s.moduleSequence.set('dokuwiki', 7);
    s.moduleUuid.set('dokuwiki3', 'kept-uuid');
    s.moduleNode.set('dokuwiki3', '1');
    const p = plan(desired(mod('dokuwiki3')), s, opts);
    expect(p.changes[0]!.bookkeeping).toEqual([]);
    expect(p.changes[0]!.reasons[0]).toMatch(/NS8 already has instance dokuwiki3 on node 1 \(adopting it\)/);
  });

  it('blocks a new Module whose id NS8 already records on another node', () => {
    const s = emptyState();
    s.moduleNode.set('dokuwiki1', '2');
    const p = plan(desired(mod('dokuwiki1', { node: 1 })), s, opts);
    expect(p.changes).toEqual([]);
    expect(p.blocked).toEqual([
      {
        key: 'Module/dokuwiki1',
        message: 'Module/dokuwiki1 already exists in NS8 on node 2 (cluster/module_node) but the manifest places it on node 1; set spec.node: 2 to adopt the instance, or choose another id',
      },
    ]);
    expect(isEmpty(p)).toBe(false);
  });

  it('blocks a new Module on a node flagged nomodules, from NS8\'s node/<id>/flags or the desired Node', () => {
    const s = emptyState();
    s.nodeFlags.set('2', ['nomodules']);
    const p = plan(desired(mod('dokuwiki1', { node: 2 }), mod('dokuwiki2', { node: 1 })), s, opts);
    expect(p.changes.map((c) => `${c.action} ${c.key}`)).toEqual(['create Module/dokuwiki2']);
    expect(p.blocked).toEqual([
      {
        key: 'Module/dokuwiki1',
        code: 'node_nomodules',
        message: "cannot create dokuwiki1 on node 2: node 2 has the NS8 flag nomodules (node/2/flags; NS8's add-module refuses such a node, an NS7 machine being migrated); place it on another node, or remove nomodules from node 2's flags",
      },
    ]);
    // The desired Node decides: its flags are what the plan writes.
    const byManifest = plan(desired(node(1, 'leader', ['nomodules']), mod('dokuwiki1', { node: 1 })), emptyState(), opts);
    expect(byManifest.blocked[0]!.message).toContain('(spec.flags of Node "leader" in ');
    expect(plan(desired(node(2, 'worker', []), mod('dokuwiki1', { node: 2 })), s, opts).blocked).toEqual([]);
  });

  it('leaves an instance already on a nomodules node alone (stored, or adopted where NS8 runs it), and blocks a move there', () => {
    const s = appliedState([mod('dokuwiki1', { node: 2 }), mod('dokuwiki2', { node: 1 })]);
    s.nodeFlags.set('2', ['nomodules', 'x']);
    s.moduleNode.set('dokuwiki3', '2');
    const p = plan(desired(mod('dokuwiki1', { node: 2 }), mod('dokuwiki2', { node: 2 }), mod('dokuwiki3', { node: 2 })), s, opts);
    expect(p.changes.map((c) => `${c.action} ${c.key}`)).toEqual(['create Module/dokuwiki3']);
    expect(p.blocked).toEqual([
      expect.objectContaining({ key: 'Module/dokuwiki2', code: 'node_nomodules', message: expect.stringMatching(/^cannot move dokuwiki2 from node 1 to node 2: node 2 has the NS8 flag nomodules .*; set spec\.node back to 1 to keep it there, or remove nomodules from node 2's flags$/) }),
    ]);
  });

  it('refuses two desired objects with the same key', () => {
    expect(() => plan(desired(mod('dokuwiki1'), mod('dokuwiki1')), emptyState(), opts)).toThrow(/Module\/dokuwiki1 is desired twice/);
  });
});

describe('plan: updates', () => {
  it('is empty when the state already holds the desired objects and their bookkeeping', () => {
    const objs = [mod('dokuwiki1'), repo('default', 'https://r.example/'), node(1, 'leader')];
    const p = plan(desired(...objs), appliedState(objs), opts);
    expect(p.changes).toEqual([]);
    expect(isEmpty(p)).toBe(true);
  });

  it('ignores key order inside the spec', () => {
    const a = mod('webapp1', { configuration: { a: 1, b: { c: 2, d: 3 } } });
    const b = mod('webapp1', { configuration: { b: { d: 3, c: 2 }, a: 1 } });
    expect(plan(desired(b), appliedState([a]), opts).changes).toEqual([]);
  });

  it('updates a spec change with a JSON patch, a reason per field and a generation bump', () => {
    const s = appliedState([mod('webapp1', { version: '1.0.0', volumes: { data: '/srv/data' } })], { generation: 4 });
    const p = plan(desired(mod('webapp1', { version: '1.1.0', configuration: { x: 1 } })), s, opts);
    expect(p.changes).toHaveLength(1);
    const c = p.changes[0]!;
    expect(c.action).toBe('update');
    expect(c.specChanged).toBe(true);
    expect(c.generation).toBe(5);
    expect(c.reasons).toEqual(['spec.configuration added', 'spec.version changed', 'spec.volumes removed']);
    expect(c.patch).toEqual([
      { op: 'remove', path: '/volumes' },
      { op: 'replace', path: '/version', value: '1.1.0' },
      { op: 'add', path: '/configuration', value: { x: 1 } },
    ]);
    expect(c.bookkeeping).toEqual([]);
  });

  it('treats a label change as an update that leaves the generation alone', () => {
    const s = appliedState([mod('webapp1', {}, { tier: 'a' })], { generation: 3 });
    const c = plan(desired(mod('webapp1', {}, { tier: 'b' })), s, opts).changes[0]!;
    expect(c).toMatchObject({ action: 'update', specChanged: false, generation: 3, patch: [], reasons: ['metadata.labels changed'] });
  });

  it('repairs drifted NS8 bookkeeping and names the key in the reason', () => {
    const s = appliedState([mod('dokuwiki1')]);
    s.moduleNode.set('dokuwiki1', '2');
    s.moduleSequence.set('dokuwiki', 0);
    s.moduleUuid.delete('dokuwiki1');
    const c = plan(desired(mod('dokuwiki1')), s, opts).changes[0]!;
    expect(c.action).toBe('update');
    expect(c.specChanged).toBe(false);
    expect(c.reasons).toEqual([
      'cluster/module_node[dokuwiki1] is 2, want 1',
      'cluster/module_sequence/dokuwiki is 0, want at least 1',
      'cluster/module_uuid[dokuwiki1] is missing',
    ]);
    expect(c.bookkeeping.map((b) => b.type)).toEqual(['hset', 'sequence-at-least', 'uuid-ensure']);
  });

  it('expires the repository metadata cache when the URL changes, not when only the flags do', () => {
    const s = appliedState([repo('default', 'https://old.example/')]);
    const moved = plan(desired(repo('default', 'https://new.example/')), s, opts).changes[0]!;
    expect(moved.bookkeeping).toEqual([
      { type: 'hset', key: 'cluster/repository/default', field: 'url', value: 'https://new.example/' },
      { type: 'del', key: 'cluster/repository_cache/default' },
    ]);
    const flags = plan(desired(repo('default', 'https://old.example/', { testing: true })), s, opts).changes[0]!;
    expect(flags.bookkeeping).toEqual([{ type: 'hset', key: 'cluster/repository/default', field: 'testing', value: '1' }]);
  });

  it('repairs a repository hash written with another encoding', () => {
    const s = appliedState([repo('forge', 'https://f.example/', { enabled: false, testing: true })]);
    s.repositories.set('forge', { url: 'https://f.example/', status: 'false', testing: '1' });
    const c = plan(desired(repo('forge', 'https://f.example/', { enabled: false, testing: true })), s, opts).changes[0]!;
    expect(c.reasons).toEqual(['cluster/repository/forge[status] is "false", want "0"']);
    expect(c.bookkeeping).toEqual([{ type: 'hset', key: 'cluster/repository/forge', field: 'status', value: '0' }]);
  });

  it('repairs node ui_name and flags, and leaves flags alone when the spec does not list them', () => {
    const s = appliedState([node(1, 'leader', ['a'])]);
    s.nodeUiName.set('1', 'old');
    s.nodeFlags.set('1', ['b', 'a']);
    const c = plan(desired(node(1, 'leader', ['a'])), s, opts).changes[0]!;
    expect(c.reasons).toEqual(['node/1/ui_name is "old", want "leader"', 'node/1/flags is [a b], want [a]']);
    const unmanaged = appliedState([node(2, 'worker')]);
    unmanaged.nodeFlags.set('2', ['nomodules']);
    expect(plan(desired(node(2, 'worker')), unmanaged, opts).changes).toEqual([]);
  });

  it('adopts a stored object that is missing from the inventory, and moves one from another apply set', () => {
    const s = appliedState([mod('dokuwiki1')]);
    s.inventory.delete('default');
    const c = plan(desired(mod('dokuwiki1')), s, opts).changes[0]!;
    expect(c).toMatchObject({ action: 'update', specChanged: false, reasons: [`not in apply set "default"'s inventory (adopting it)`] });

    const other = appliedState([mod('dokuwiki1')], { applySet: 'team' });
    const m = plan(desired(mod('dokuwiki1')), other, opts).changes[0]!;
    expect(m.reasons).toEqual(['moves from apply set "team" to "default"', 'recorded apply set is "team", want "default"']);
    expect(m.inventory).toEqual({ add: 'default', remove: ['team'] });
  });

  it('plans a move when an existing Module changes node: the move recorded for the node agents, cluster/module_node left to them', () => {
    const s = appliedState([mod('dokuwiki1'), mod('webapp2', { node: 2 })]);
    const p = plan(desired(mod('dokuwiki1', { node: 2 }), mod('webapp2', { node: 2 })), s, opts);
    expect(p.changes.map((c) => `${c.action} ${c.key}`)).toEqual(['update Module/dokuwiki1']);
    const c = p.changes[0]!;
    expect(c.reasons).toEqual(expect.arrayContaining(['spec.node changed', expect.stringMatching(/^⇄ move node 1 -> 2: .*downtime/)]));
    expect(c.bookkeeping).toEqual([{ type: 'hset', key: 'ns8ctl/moves', field: 'dokuwiki1', value: JSON.stringify({ from: 1, to: 2, state: 'requested' }) }]);
  });

  it('leaves cluster/module_node to the node agents while a move is under way, and cancels the move when spec.node goes back', () => {
    // Applied with node 2 (move requested), NS8 still places it on node 1.
    const s = appliedState([mod('dokuwiki1', { node: 2 })]);
    s.moduleNode.set('dokuwiki1', '1');
    s.moving.add('dokuwiki1');
    expect(plan(desired(mod('dokuwiki1', { node: 2 })), s, opts).changes).toEqual([]);
    const back = plan(desired(mod('dokuwiki1', { node: 1 })), s, opts).changes[0]!;
    expect(back.bookkeeping).toEqual([{ type: 'hdel', key: 'ns8ctl/moves', field: 'dokuwiki1' }]);
    expect(back.reasons).toEqual(expect.arrayContaining([expect.stringMatching(/^move to node 2 cancelled: dokuwiki1 stays on node 1/)]));
  });

  it('lets a Module being removed wait (blocked) rather than refusing its node change', () => {
    const s = appliedState([mod('dokuwiki1')], { finalizers: ['node-agent'], deleting: { removalPolicy: 'Preserve' } });
    expect(plan(desired(mod('dokuwiki1', { node: 2 })), s, opts).blocked.map((b) => b.key)).toEqual(['Module/dokuwiki1']);
  });

  it('blocks an object that is being removed instead of recreating it', () => {
    const s = appliedState([mod('dokuwiki1')], { finalizers: ['node-agent'], deleting: { removalPolicy: 'Delete' } });
    const p = plan(desired(mod('dokuwiki1')), s, opts);
    expect(p.changes).toEqual([]);
    expect(p.blocked).toHaveLength(1);
    expect(p.blocked[0]!.message).toMatch(/^Module\/dokuwiki1 is being removed \(removalPolicy Delete, waiting for node-agent\)/);
  });
});

describe('plan: deletes and prune', () => {
  const inventory = [mod('keep1'), mod('old1'), mod('gone1', { removalPolicy: 'Delete' }), repo('extra', 'https://e.example/')];

  it('does not delete without prune but lists what prune would delete', () => {
    const p = plan(desired(mod('keep1')), appliedState(inventory), opts);
    expect(p.changes).toEqual([]);
    expect(p.pruneCandidates).toEqual(['Module/gone1', 'Module/old1', 'Repository/extra']);
    expect(p.pruneRatio).toEqual({ prune: 0, inventory: 4 });
  });

  it('deletes only inventory members, Modules before Repositories, with the data policy', () => {
    const s = appliedState(inventory);
    s.objects.set('Module/foreign1', stored(mod('foreign1'), { applySet: 'other' }));
    s.moduleNode.set('samba1', '1');
    const p = plan(desired(mod('keep1')), s, prune);
    expect(p.changes.map((c) => `${c.action} ${c.key} ${c.dataPolicy ?? ''}`)).toEqual([
      'delete Module/gone1 deleted',
      'delete Module/old1 preserved',
      'delete Repository/extra ',
    ]);
    expect(p.changes[1]!.bookkeeping).toEqual([
      { type: 'hdel', key: 'cluster/module_node', field: 'old1' },
      { type: 'hdel', key: 'cluster/module_uuid', field: 'old1' },
    ]);
    expect(p.changes[2]!.bookkeeping).toEqual([
      { type: 'del', key: 'cluster/repository/extra' },
      { type: 'del', key: 'cluster/repository_cache/extra' },
    ]);
    expect(p.pruneRatio).toEqual({ prune: 3, inventory: 4 });
    expect(p.summary).toEqual({ create: 0, update: 0, delete: 3 });
  });

  it('does not delete again an object already being removed', () => {
    const s = appliedState([mod('old1')], { finalizers: ['node-agent'], deleting: { removalPolicy: 'Preserve' } });
    expect(isEmpty(plan([], s, prune))).toBe(true);
  });

  it('removes a stale inventory entry that has no stored object', () => {
    const s = emptyState();
    s.inventory.set('default', new Set(['Module/ghost1']));
    const c = plan([], s, prune).changes[0]!;
    expect(c).toMatchObject({ action: 'delete', key: 'Module/ghost1', bookkeeping: [], dataPolicy: 'preserved' });
    expect(c.before).toBeUndefined();
  });

  it('blocks deleting a Node that still hosts a module', () => {
    const s = appliedState([node(2, 'worker'), mod('webapp1', { node: 2 }), mod('other1', { node: 1 })]);
    const p = plan(desired(mod('webapp1', { node: 2 })), s, prune);
    expect(p.changes.map((c) => c.key)).toEqual(['Module/other1']);
    expect(p.blocked).toEqual([{ key: 'Node/2', message: 'Node/2 cannot be deleted: module webapp1 is still placed on it; delete or move it first (a module being removed stays until its removal finishes)' }]);
  });

  it('keeps a Node while a module on it is only being removed (finalizers pending)', () => {
    const s = appliedState([node(2, 'worker'), mod('webapp1', { node: 2 })], { finalizers: ['node-agent'] });
    const p = plan([], s, prune);
    expect(p.changes.map((c) => c.key)).toEqual(['Module/webapp1']);
    expect(p.blocked.map((b) => b.key)).toEqual(['Node/2']);
    const later = plan([], applyPlanToState(s, p, uuidFor), prune);
    expect(later.changes).toEqual([]);
    expect(later.blocked).toEqual(p.blocked);
  });

  it('deletes a Node after its modules, once none is left on it', () => {
    const s = appliedState([node(2, 'worker'), mod('webapp1', { node: 2 })]);
    const p = plan([], s, prune);
    expect(p.changes.map((c) => c.key)).toEqual(['Module/webapp1', 'Node/2']);
    expect(p.changes[1]!.bookkeeping).toEqual([]);
  });
});

describe('planDeletion', () => {
  it('deletes one named object from every inventory that lists it, with its bookkeeping and data policy', () => {
    const s = appliedState([mod('dokuwiki1'), mod('keep1')]);
    s.inventory.set('team', new Set(['Module/dokuwiki1']));
    const p = planDeletion(s, 'Module/dokuwiki1');
    expect(p.changes).toHaveLength(1);
    expect(p.changes[0]).toMatchObject({
      action: 'delete',
      key: 'Module/dokuwiki1',
      dataPolicy: 'preserved',
      reasons: ['deleted on request', 'removalPolicy is Preserve: the instance home and volumes are kept'],
      inventory: { add: null, remove: ['default', 'team'] },
      bookkeeping: [
        { type: 'hdel', key: 'cluster/module_node', field: 'dokuwiki1' },
        { type: 'hdel', key: 'cluster/module_uuid', field: 'dokuwiki1' },
      ],
    });
    expect(p.pruneRatio).toEqual({ prune: 0, inventory: 0 });
    const after = applyPlanToState(s, p, uuidFor);
    expect(after.objects.has('Module/dokuwiki1')).toBe(false);
    expect(after.inventory.has('team')).toBe(false);
    expect(isEmpty(planDeletion(after, 'Module/dokuwiki1'))).toBe(true);
  });

  it('lets the caller ask for the data to be erased', () => {
    const p = planDeletion(appliedState([mod('dokuwiki1')]), 'Module/dokuwiki1', { removalPolicy: 'Delete' });
    expect(p.changes[0]!.dataPolicy).toBe('deleted');
  });

  it('plans nothing for an object already being removed, and blocks a Node that hosts modules', () => {
    const deleting = appliedState([mod('old1')], { finalizers: ['node-agent'], deleting: { removalPolicy: 'Preserve' } });
    expect(isEmpty(planDeletion(deleting, 'Module/old1'))).toBe(true);
    const p = planDeletion(appliedState([node(1, 'leader'), mod('webapp1')]), 'Node/1');
    expect(p.changes).toEqual([]);
    expect(p.blocked.map((b) => b.key)).toEqual(['Node/1']);
  });
});

describe('checkPruneSafety', () => {
  const objs = [mod('a1'), mod('b1'), mod('c1'), mod('d1')];

  it('allows pruning up to half of the inventory', () => {
    const p = plan(desired(mod('a1'), mod('b1')), appliedState(objs), prune);
    expect(() => checkPruneSafety(p, { forcePrune: false })).not.toThrow();
  });

  it('refuses pruning more than half, naming the counts and --force-prune', () => {
    const p = plan(desired(mod('a1')), appliedState(objs), prune);
    let err: unknown;
    try {
      checkPruneSafety(p, { forcePrune: false });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RefusedError);
    expect((err as RefusedError).code).toBe('prune_refused');
    expect((err as RefusedError).message).toMatch(/refusing to prune 3 of 4 objects in apply set "default" \(more than half of it\).*--force-prune/);
    expect(() => checkPruneSafety(p, { forcePrune: true })).not.toThrow();
  });

  it('refuses pruning the whole inventory, even a single object', () => {
    const p = plan([], appliedState([mod('a1')]), prune);
    expect(() => checkPruneSafety(p, { forcePrune: false })).toThrow(/refusing to prune 1 of 1 objects .*\(all of it\)/);
  });

  it('accepts a plan without deletes, also for an empty inventory', () => {
    expect(() => checkPruneSafety(plan([], emptyState(), prune), { forcePrune: false })).not.toThrow();
  });
});

describe('applyPlanToState', () => {
  it('simulates an apply so that planning again is empty, without touching the input state', () => {
    const before = appliedState([mod('old1'), mod('webapp1', { version: '1' })]);
    const snapshot = JSON.stringify([...before.objects]);
    const d = desired(node(1, 'leader'), mod('webapp1', { version: '2' }), mod('dokuwiki1'));
    const p = plan(d, before, prune);
    const after = applyPlanToState(before, p, uuidFor);
    expect(JSON.stringify([...before.objects])).toBe(snapshot);
    expect(isEmpty(plan(d, after, prune))).toBe(true);
    expect(after.objects.get('Module/webapp1')!.generation).toBe(2);
    expect(after.objects.has('Module/old1')).toBe(false);
    expect(after.moduleUuid.get('dokuwiki1')).toBe('uuid-dokuwiki1');
    expect([...after.inventory.get('default')!].sort()).toEqual(['Module/dokuwiki1', 'Module/webapp1', 'Node/1']);
  });

  it('only marks a deleted object with finalizers as deleting, and keeps its bookkeeping', () => {
    const s = appliedState([mod('old1', { removalPolicy: 'Delete' })], { finalizers: ['node-agent'] });
    const after = applyPlanToState(s, plan([], s, prune), uuidFor);
    expect(after.objects.get('Module/old1')!.deleting).toEqual({ removalPolicy: 'Delete' });
    expect(after.moduleNode.get('old1')).toBe('1');
    expect(after.inventory.has('default')).toBe(false);
  });
});
