import { describe, expect, it } from '@jest/globals';
import { plan } from '../../src/plan/planner.js';
import { renderPlanText } from '../../src/plan/render.js';
import { emptyState } from '../../src/state/cluster-state.js';
import { appliedState, desired, mod, node, repo } from '../support/plan-fixtures.js';

const opts = { applySet: 'default', prune: false };
const prune = { applySet: 'default', prune: true };
const text = (p: ReturnType<typeof plan>): string => renderPlanText(p, { color: false });

describe('renderPlanText', () => {
  it('prints a create with every spec leaf and the summary', () => {
    const p = plan(desired(mod('dokuwiki1', { version: '1.2.3', volumes: { data: '/srv/wiki' }, configuration: { title: 'Wiki', pages: [1, 2] } })), emptyState(), opts);
    expect(text(p)).toBe(
      [
        '+ Module/dokuwiki1 (create)',
        '    # new object',
        '    + spec.configuration.pages: [1,2]',
        '    + spec.configuration.title: "Wiki"',
        '    + spec.module: "dokuwiki"',
        '    + spec.node: 1',
        '    + spec.version: "1.2.3"',
        '    + spec.volumes.data: "/srv/wiki"',
        '',
        'Plan: 1 to create, 0 to update, 0 to delete.',
        '',
      ].join('\n'),
    );
  });

  it('prints an update as field-level changes, additions and removals, with reasons', () => {
    const s = appliedState([mod('webapp1', { version: '1.0.0', volumes: { data: '/srv/d', logs: '/srv/l' } }, { tier: 'a' })]);
    const p = plan(desired(mod('webapp1', { version: '1.1.0', volumes: { logs: '/srv/l' }, configuration: { x: 1 } }, { tier: 'b', 'app.kubernetes.io/name': 'w' })), s, opts);
    expect(text(p)).toBe(
      [
        '~ Module/webapp1 (update)',
        '    # spec.configuration added',
        '    # spec.version changed',
        '    # spec.volumes changed',
        '    # metadata.labels changed',
        '    + metadata.labels["app.kubernetes.io/name"]: "w"',
        '    ~ metadata.labels.tier: "a" -> "b"',
        '    + spec.configuration.x: 1',
        '    ~ spec.version: "1.0.0" -> "1.1.0"',
        '    - spec.volumes.data',
        '',
        'Plan: 0 to create, 1 to update, 0 to delete.',
        '',
      ].join('\n'),
    );
  });

  it('prints a bookkeeping-only update as its reasons alone', () => {
    const s = appliedState([mod('dokuwiki1')]);
    s.moduleNode.set('dokuwiki1', '2');
    expect(text(plan(desired(mod('dokuwiki1')), s, opts))).toBe(
      ['~ Module/dokuwiki1 (update)', '    # cluster/module_node[dokuwiki1] is 2, want 1', '', 'Plan: 0 to create, 1 to update, 0 to delete.', ''].join('\n'),
    );
  });

  it('prints deletes with their data policy, DATA DELETED in capitals', () => {
    const s = appliedState([mod('old1'), mod('gone1', { removalPolicy: 'Delete' }), repo('extra', 'https://e.example/'), mod('keep1'), node(1, 'leader')]);
    expect(text(plan(desired(mod('keep1'), node(1, 'leader')), s, prune))).toBe(
      [
        '- Module/gone1 (delete, DATA DELETED)',
        '    # no longer in the manifests of apply set "default"',
        '    # removalPolicy is Delete: the instance home and volumes are erased',
        '',
        '- Module/old1 (delete, data preserved)',
        '    # no longer in the manifests of apply set "default"',
        '    # removalPolicy is Preserve: the instance home and volumes are kept',
        '',
        '- Repository/extra (delete)',
        '    # no longer in the manifests of apply set "default"',
        '',
        'Plan: 0 to create, 0 to update, 3 to delete.',
        '',
      ].join('\n'),
    );
  });

  it('says that nothing changes when the state matches', () => {
    const objs = [mod('dokuwiki1'), node(1, 'leader')];
    expect(text(plan(desired(...objs), appliedState(objs), opts))).toBe('No changes. Desired state matches.\n');
  });

  it('lists what prune would delete when prune is off', () => {
    const s = appliedState([mod('keep1'), mod('old1')]);
    expect(text(plan(desired(mod('keep1')), s, opts))).toBe(
      [
        '1 object of apply set "default" is no longer in the manifests and is kept (--prune deletes it): Module/old1',
        '',
        'No changes. Desired state matches.',
        '',
      ].join('\n'),
    );
  });

  it('prints blocked objects with their message and counts them in the summary', () => {
    const s = appliedState([mod('dokuwiki1')], { finalizers: ['node-agent'], deleting: { removalPolicy: 'Preserve' } });
    const out = text(plan(desired(mod('dokuwiki1'), mod('webapp1')), s, opts));
    expect(out).toContain('! Module/dokuwiki1 (blocked)\n    # Module/dokuwiki1 is being removed (removalPolicy Preserve, waiting for node-agent);');
    expect(out.endsWith('\nPlan: 1 to create, 0 to update, 0 to delete. 1 blocked (see "!" above).\n')).toBe(true);
    expect(text(plan(desired(mod('dokuwiki1')), s, opts)).endsWith('\nNo changes planned; 1 blocked (see "!" above).\n')).toBe(true);
  });

  it('masks secret values in create, update and reason lines', () => {
    const s = appliedState([
      mod('webapp1', { configuration: { admin_password: 'old-pw', smtp: { user: 'u', pass: 'smtp-pw-one' } } }),
      repo('private', 'https://bob:hunter2@repo.example/'),
    ]);
    s.repositories.set('private', { url: 'https://bob:oldpw@repo.example/', status: '1', testing: '0' });
    const p = plan(
      desired(
        repo('private', 'https://bob:hunter2@repo.example/'),
        mod('webapp1', { configuration: { admin_password: 'new-pw', smtp: { user: 'u', pass: 'smtp-pw-two' } } }),
        mod('dokuwiki1', { configuration: { apiToken: 'tok-123', tokens: { a: 'tok-456' }, ssh_key_file: '/k', list: [{ secret: 'in-array' }] } }),
      ),
      s,
      opts,
    );
    const out = text(p);
    for (const leaked of ['old-pw', 'new-pw', 'smtp-pw-one', 'smtp-pw-two', 'tok-123', 'tok-456', 'in-array', 'hunter2', 'oldpw', '"/k"']) expect(out).not.toContain(leaked);
    expect(out).toContain('    ~ spec.configuration.admin_password: (sensitive value) -> (sensitive value)\n');
    expect(out).toContain('    ~ spec.configuration.smtp.pass: (sensitive value) -> (sensitive value)\n');
    expect(out).toContain('    + spec.configuration.apiToken: (sensitive value)\n');
    expect(out).toContain('    + spec.configuration.tokens: (sensitive value)\n');
    expect(out).toContain('    + spec.configuration.list: [{"secret":"(sensitive value)"}]\n');
    expect(out).toContain('    # cluster/repository/private[url] is "https://bob:(sensitive value)@repo.example/", want "https://bob:(sensitive value)@repo.example/"\n');
  });

  it('colours only when asked', () => {
    const p = plan(desired(mod('dokuwiki1')), emptyState(), opts);
    expect(renderPlanText(p, { color: false })).not.toContain('\u001b[');
    const coloured = renderPlanText(p, { color: true });
    expect(coloured).toContain('\u001b[32m+ Module/dokuwiki1 (create)\u001b[0m');
    expect(coloured.replace(new RegExp(String.fromCharCode(27) + '\\[[0-9]+m', 'g'), '')).toBe(renderPlanText(p, { color: false }));
  });
});
