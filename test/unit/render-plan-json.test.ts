import { describe, expect, it } from '@jest/globals';
import { plan } from '../../src/plan/planner.js';
import { renderPlanJson } from '../../src/plan/render.js';
import { emptyState } from '../../src/state/cluster-state.js';
import { appliedState, desired, mod, repo } from '../support/plan-fixtures.js';

const opts = { applySet: 'default', prune: false };

describe('renderPlanJson', () => {
  it('gives the whole plan as one document with stable field names and nulls for absent values', () => {
    const doc = renderPlanJson(plan(desired(mod('dokuwiki1')), emptyState(), opts));
    expect(JSON.parse(JSON.stringify(doc))).toEqual({
      apiVersion: 'ns8ctl.nethserver.org/v1',
      kind: 'Plan',
      applySet: 'default',
      prune: false,
      empty: false,
      summary: { create: 1, update: 0, delete: 0, blocked: 0, updates: 0, updatesRefused: 0 },
      pruneRatio: { prune: 0, inventory: 0 },
      pruneCandidates: [],
      changes: [
        {
          action: 'create',
          key: 'Module/dokuwiki1',
          kind: 'Module',
          id: 'dokuwiki1',
          reasons: ['new object'],
          specChanged: true,
          generation: 1,
          dataPolicy: null,
          source: { file: 'manifests/test.yaml', doc: 0, line: 1, col: 1 },
          patch: [
            { op: 'add', path: '/module', value: 'dokuwiki' },
            { op: 'add', path: '/node', value: 1 },
          ],
          before: null,
          after: { apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: 'dokuwiki1' }, spec: { module: 'dokuwiki', node: 1 } },
          bookkeeping: [
            { type: 'hset', key: 'cluster/module_node', field: 'dokuwiki1', value: '1' },
            { type: 'sequence-at-least', key: 'cluster/module_sequence/dokuwiki', module: 'dokuwiki', value: 1 },
            { type: 'uuid-ensure', key: 'cluster/module_uuid', id: 'dokuwiki1' },
          ],
          inventory: { add: 'default', remove: [] },
          resolved: null,
          resolutionError: null,
        },
      ],
      blocked: [],
      updates: [],
      warnings: [],
    });
  });

  it('describes a delete with its data policy and an empty plan as empty', () => {
    const s = appliedState([mod('old1', { removalPolicy: 'Delete' })]);
    const doc = renderPlanJson(plan([], s, { applySet: 'default', prune: true })) as { changes: Record<string, unknown>[] };
    expect(doc.changes[0]).toMatchObject({ action: 'delete', dataPolicy: 'deleted', generation: null, source: null, after: null, patch: [], inventory: { add: null, remove: ['default'] } });
    expect(renderPlanJson(plan([], emptyState(), opts))).toMatchObject({ empty: true, changes: [], summary: { create: 0, update: 0, delete: 0, blocked: 0 } });
  });

  it('masks secrets in patch values, before, after, reasons and bookkeeping, and leaves the plan itself intact', () => {
    const s = appliedState([mod('webapp1', { configuration: { db: { password: 'old-secret-pw' }, plain: 1 } }), repo('private', 'https://u:repo-pw-1@r.example/')]);
    s.repositories.set('private', { url: 'https://u:repo-pw-0@r.example/', status: '1', testing: '0' });
    const p = plan(
      desired(mod('webapp1', { configuration: { db: { password: 'new-secret-pw' }, plain: 2, extra: { token: 'tok-new' } } }), repo('private', 'https://u:repo-pw-1@r.example/')),
      s,
      opts,
    );
    const json = JSON.stringify(renderPlanJson(p));
    for (const leaked of ['old-secret-pw', 'new-secret-pw', 'tok-new', 'repo-pw-0', 'repo-pw-1']) expect(json).not.toContain(leaked);
    const doc = renderPlanJson(p) as { changes: { patch: unknown[]; before: unknown; after: unknown; bookkeeping: unknown[]; reasons: string[] }[] };
    const webapp = doc.changes[1]!;
    expect(webapp.patch).toEqual(
      expect.arrayContaining([
        { op: 'replace', path: '/configuration/db/password', value: '(sensitive value)' },
        { op: 'add', path: '/configuration/extra', value: { token: '(sensitive value)' } },
        { op: 'replace', path: '/configuration/plain', value: 2 },
      ]),
    );
    expect(webapp.before).toMatchObject({ spec: { configuration: { db: { password: '(sensitive value)' }, plain: 1 } } });
    expect(webapp.after).toMatchObject({ spec: { configuration: { db: { password: '(sensitive value)' }, plain: 2 } } });
    expect(doc.changes[0]!.bookkeeping).toEqual([
      { type: 'hset', key: 'cluster/repository/private', field: 'url', value: 'https://u:(sensitive value)@r.example/' },
      { type: 'del', key: 'cluster/repository_cache/private' },
    ]);
    // apply still needs the real values
    expect(JSON.stringify(p)).toContain('new-secret-pw');
  });
});
