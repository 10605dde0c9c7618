/**
 * The pure parts of the write path: preconditions and deletion marks made from a plan, the
 * re-plan rule after a conflict, and the sentences that name the other writer.
 */
import { checkReplan, type PreparedPlan } from '../../src/apply/pipeline.js';
import { expectOp, planToWrites } from '../../src/apply/to-writes.js';
import { ConflictError } from '../../src/errors.js';
import { plan, planDeletion } from '../../src/plan/planner.js';
import type { ClusterState } from '../../src/state/cluster-state.js';
import { parseDeletionMark } from '../../src/state/read-state.js';
import { describeConflict, type WriteOp } from '../../src/state/write-state.js';
import { appliedState, desired, mod, node, stored } from '../support/plan-fixtures.js';

const conflict = new ConflictError('Module/webapp1 was changed by another writer (now apply set default) while this write was being made; nothing was written');
const prepared = (d: ReturnType<typeof desired>, state: ClusterState): PreparedPlan => ({ desired: d, state, plan: plan(d, state, { applySet: 'default', prune: true }) });

describe('preconditions and deletion marks', () => {
  it('a precondition covers the stored JSON, apply set, deletion mark and every inventory listing the object', () => {
    const state = appliedState([mod('webapp1')]);
    state.inventory.set('other', new Set(['Module/webapp1']));
    state.objects.get('Module/webapp1')!.deleting = { removalPolicy: 'Delete', by: 'a@h', at: 't', why: 'ns8ctl delete' };
    state.objects.get('Module/webapp1')!.deletingJson = '{"removalPolicy":"Delete","by":"a@h","at":"t","why":"ns8ctl delete"}';
    expect(expectOp(state, 'Module/webapp1')).toEqual({
      op: 'expect',
      key: 'ns8ctl/desired/module/webapp1',
      label: 'Module/webapp1',
      object: JSON.stringify(state.objects.get('Module/webapp1')!.object),
      applyset: 'default',
      deleting: '{"removalPolicy":"Delete","by":"a@h","at":"t","why":"ns8ctl delete"}',
      member: 'Module/webapp1',
      inventories: ['default', 'other'],
    });
    expect(expectOp(state, 'Module/webapp9')).toMatchObject({ object: '', applyset: '', deleting: '', inventories: [] });
  });

  it('a delete waiting for finalizers is marked with who, when and why', () => {
    const state = appliedState([mod('webapp1'), mod('webapp2')], { finalizers: ['node-agent'] });
    const at = new Date('2026-12-05T06:00:00.000Z');
    const marks = (ops: WriteOp[]): unknown[] => ops.flatMap((o) => (o.op === 'delete' ? [JSON.parse(o.deleting)] : []));
    const pruned = plan(desired(mod('webapp1')), state, { applySet: 'default', prune: true });
    expect(marks(planToWrites(pruned, state, { revisionOf: () => '', actor: 'alice@host', now: at }))).toEqual([
      { removalPolicy: 'Preserve', by: 'alice@host', at: '2026-12-05T06:00:00.000Z', why: 'pruned: no longer in the manifests of apply set default' },
    ]);
    const deleted = planDeletion(state, 'Module/webapp2', { removalPolicy: 'Delete' });
    expect(marks(planToWrites(deleted, state, { revisionOf: () => '', actor: 'source default', now: at, why: 'remove-module' }))).toEqual([
      { removalPolicy: 'Delete', by: 'source default', at: '2026-12-05T06:00:00.000Z', why: 'remove-module' },
    ]);
    expect(marks(planToWrites(deleted, state, { revisionOf: () => '', now: at }))[0]).toMatchObject({ by: expect.stringContaining('@'), why: 'ns8ctl delete' });
  });

  it('reads the older {removalPolicy} form and falls back to Preserve for an unknown policy', () => {
    expect(parseDeletionMark('Module', 'x1', '{"removalPolicy":"Delete"}')).toEqual({ removalPolicy: 'Delete' });
    expect(parseDeletionMark('Module', 'x1', '{"removalPolicy":"Shred","by":"a@h","why":7}')).toEqual({ removalPolicy: 'Preserve', by: 'a@h' });
    expect(() => parseDeletionMark('Module', 'x1', '{')).toThrow('the deletion mark of Module/x1 in ns8ctl/desired/module/x1 is not valid JSON');
  });

  it('names the other writer and what it did, without spec values', () => {
    const base = { label: 'Module/webapp1', applyset: 'other', source: '/m/a.yaml', generation: '2', deleting: '' };
    expect(describeConflict({ ...base, field: 'object', expected: '', actual: '{"spec":{"pw":"s3cret"}}' })).toBe(
      'Module/webapp1 was created by another writer (apply set other, source /m/a.yaml, generation 2) while this write was being made; nothing was written',
    );
    expect(describeConflict({ ...base, field: 'applyset', expected: 'default', actual: 'other' })).toContain('its apply set is now "other" (was "default")');
    expect(describeConflict({ ...base, field: 'deleting', expected: '', actual: '{"removalPolicy":"Preserve","by":"a@h","at":"t","why":"ns8ctl delete"}' })).toContain('was marked for deletion by a@h at t (ns8ctl delete)');
    expect(describeConflict({ ...base, field: 'inventories', expected: 'default', actual: 'default\nother' })).toContain('now listed by default, other (was default)');
    expect(describeConflict({ label: 'Module/webapp3', field: 'value', key: 'cluster/module_sequence/webapp', expected: '2', actual: '3' })).toContain('cluster/module_sequence/webapp moved from 2 to 3');
  });
});

describe('re-planning after a conflict (checkReplan)', () => {
  it('lets concurrent updates of the same object re-plan', () => {
    const before = appliedState([node(1, 'n1'), mod('webapp1')]);
    const after = appliedState([node(1, 'n1'), mod('webapp1', { version: '2' })]);
    const d = desired(node(1, 'n1'), mod('webapp1', { version: '3' }));
    expect(() => checkReplan(prepared(d, before), prepared(d, after), conflict)).not.toThrow();
  });

  it('refuses a create whose object another writer created meanwhile', () => {
    const before = appliedState([node(1, 'n1')]);
    const after = appliedState([node(1, 'n1')]);
    after.objects.set('Module/webapp1', stored(mod('webapp1'), { source: '(add-module)' }));
    after.inventory.get('default')!.add('Module/webapp1');
    const d = desired(node(1, 'n1'), mod('webapp1', { version: '2' }));
    expect(() => checkReplan(prepared(d, before), prepared(d, after), conflict)).toThrow(/^Module\/webapp1 was created by another writer while this apply ran \(now apply set "default", source \(add-module\), generation 1\); this apply planned to create it; nothing was written/);
  });

  it('refuses an update of an object another writer deleted, or took into another apply set', () => {
    const before = appliedState([node(1, 'n1'), mod('webapp1')]);
    const d = desired(node(1, 'n1'), mod('webapp1', { version: '2' }));
    const gone = appliedState([node(1, 'n1')]);
    expect(() => checkReplan(prepared(d, before), prepared(d, gone), conflict)).toThrow('Module/webapp1 was deleted by another writer while this apply ran; this apply planned to update it');
    const taken = appliedState([node(1, 'n1'), mod('webapp1')]);
    taken.objects.get('Module/webapp1')!.applySet = 'other';
    expect(() => checkReplan(prepared(d, before), prepared(d, taken), conflict)).toThrow('Module/webapp1 was taken into apply set "other" by another writer while this apply ran');
  });

  it('refuses a change the reviewed plan did not have (it would overwrite the other writer unseen)', () => {
    const before = appliedState([node(1, 'n1'), mod('webapp1'), mod('webapp2')]);
    const after = appliedState([node(1, 'n1'), mod('webapp1'), mod('webapp2', { version: '9' })]);
    const d = desired(node(1, 'n1'), mod('webapp1', { version: '2' }), mod('webapp2'));
    expect(() => checkReplan(prepared(d, before), prepared(d, after), conflict)).toThrow('Module/webapp2 was changed by another writer while this apply ran');
  });
});
