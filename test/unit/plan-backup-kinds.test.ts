/**
 * The planner and the text renderer with BackupDestination, BackupSchedule and a Module's
 * restoreFrom / cloneFrom / updatePolicy: order, creation-only fields, and the refusal to delete a
 * destination something still names.
 */
import { describe, expect, it } from '@jest/globals';
import { API_VERSION } from '../../src/manifest/types.js';
import type { BackupDestinationObject, BackupScheduleObject, BackupScheduleSpec } from '../../src/manifest/types.js';
import { plan, planDeletion } from '../../src/plan/planner.js';
import { renderPlanText } from '../../src/plan/render.js';
import { emptyState } from '../../src/state/cluster-state.js';
import { appliedState, desired, mod, node } from '../support/plan-fixtures.js';

const opts = { applySet: 'default', prune: false };
const prune = { applySet: 'default', prune: true };

const dest = (name: string, url = `/srv/backup/${name}`): BackupDestinationObject => ({ apiVersion: API_VERSION, kind: 'BackupDestination', metadata: { name }, spec: { url } });
const sched = (name: string, spec: Partial<BackupScheduleSpec> = {}): BackupScheduleObject => ({
  apiVersion: API_VERSION,
  kind: 'BackupSchedule',
  metadata: { name },
  spec: { destination: 'offsite', instances: ['webapp1'], schedule: 'daily', retention: { keepLast: 7 }, ...spec },
});

describe('plan: backup kinds', () => {
  it('creates Node, BackupDestination, BackupSchedule, Module in that order and deletes them in reverse, with no NS8 bookkeeping for the backup kinds', () => {
    const all = [node(1, 'n1'), mod('webapp1'), sched('nightly'), dest('offsite')];
    const p = plan(desired(...all), emptyState(), opts);
    expect(p.changes.map((c) => `${c.action} ${c.key}`)).toEqual(['create Node/1', 'create BackupDestination/offsite', 'create BackupSchedule/nightly', 'create Module/webapp1']);
    expect(p.changes[1]!.bookkeeping).toEqual([]);
    expect(p.changes[2]!.bookkeeping).toEqual([]);
    const gone = plan(desired(node(1, 'n1')), appliedState(all), prune);
    expect(gone.changes.map((c) => `${c.action} ${c.key}`)).toEqual(['delete Module/webapp1', 'delete BackupSchedule/nightly', 'delete BackupDestination/offsite']);
    expect(gone.blocked).toEqual([]);
  });

  it('a create line says where the new instance gets its data: a snapshot or another instance', () => {
    const p = plan(desired(mod('webapp2', { restoreFrom: { destination: 'offsite', snapshot: 'latest' } }), mod('webapp3', { cloneFrom: 'webapp1' })), appliedState([dest('offsite')]), opts);
    expect(p.changes.map((c) => c.reasons)).toEqual([
      ['new object', 'restore from offsite (latest)'],
      ['new object', 'clone of webapp1'],
    ]);
    const text = renderPlanText(p, { color: false });
    expect(text).toContain('+ Module/webapp2 (create)\n    # new object\n    # restore from offsite (latest)\n');
    expect(text).toContain('    # clone of webapp1\n');
  });

  it('changing restoreFrom, cloneFrom or updatePolicy of an existing instance is an update that says no task runs', () => {
    const before = mod('webapp1');
    const p = plan(desired(mod('webapp1', { restoreFrom: { destination: 'offsite', snapshot: 'latest' }, cloneFrom: 'webapp9', updatePolicy: { backupFirst: true } })), appliedState([before, dest('offsite')]), opts);
    expect(p.changes).toHaveLength(1);
    expect(p.changes[0]!.action).toBe('update');
    expect(p.changes[0]!.reasons).toEqual([
      'spec.cloneFrom added (cloneFrom is used only at creation: no task, the running instance is not touched)',
      'spec.restoreFrom added (restoreFrom is used only at creation: no task, the running instance is not touched)',
      'spec.updatePolicy added (updatePolicy applies to the next update: no task now)',
    ]);
  });

  it('refuses (blocked) to prune a destination a remaining BackupSchedule or Module restoreFrom names, and deletes it once nothing does', () => {
    const state = appliedState([dest('offsite'), sched('nightly'), mod('webapp2', { restoreFrom: { destination: 'offsite', snapshot: 'latest' } })]);
    const p = plan(desired(sched('nightly'), mod('webapp2', { restoreFrom: { destination: 'offsite', snapshot: 'latest' } })), state, prune);
    expect(p.changes).toEqual([]);
    expect(p.blocked).toEqual([
      {
        key: 'BackupDestination/offsite',
        message:
          'BackupDestination/offsite cannot be deleted: BackupSchedule/nightly, Module/webapp2 still name it; delete those BackupSchedules or point them at another destination, and drop spec.restoreFrom from webapp2 (it is used only when an instance is created) first',
      },
    ]);
    // The schedule pruned in the same plan no longer counts; the Module's restoreFrom dropped too.
    const ok = plan(desired(mod('webapp2')), state, prune);
    expect(ok.blocked).toEqual([]);
    expect(ok.changes.map((c) => `${c.action} ${c.key}`)).toEqual(['update Module/webapp2', 'delete BackupSchedule/nightly', 'delete BackupDestination/offsite']);
  });

  it('`delete backupdestination` is blocked the same way while a stored schedule names it', () => {
    const state = appliedState([dest('offsite'), sched('nightly')]);
    const p = planDeletion(state, 'BackupDestination/offsite');
    expect(p.changes).toEqual([]);
    expect(p.blocked.map((b) => b.message)).toEqual([expect.stringContaining('BackupSchedule/nightly still names it')]);
    expect(planDeletion(appliedState([dest('offsite')]), 'BackupDestination/offsite').changes.map((c) => c.key)).toEqual(['BackupDestination/offsite']);
  });

  it('a URL password in a destination is masked in the plan text', () => {
    const p = plan(desired(dest('offsite', 'rest:https://alice:Very-Secret-9@backup.example.org:8000/ns8')), emptyState(), opts);
    const text = renderPlanText(p, { color: false });
    expect(text).toContain('+ spec.url: "rest:https://alice:(sensitive value)@backup.example.org:8000/ns8"');
    expect(text).not.toContain('Very-Secret-9');
  });
});
