import { describe, expect, it } from '@jest/globals';
import { withSecretNames } from '../../src/configuration/configuration-validation.js';
import { MASK } from '../../src/runtime/mask.js';
import { plan } from '../../src/plan/planner.js';
import { renderPlanJson, renderPlanText } from '../../src/plan/render.js';
import { emptyState } from '../../src/state/cluster-state.js';
import { appliedState, desired, mod } from '../support/plan-fixtures.js';

const opts = { applySet: 'default', prune: false };
const marks = (ids: Record<string, string[]>): { secretNames: Map<string, string[]> } => ({ secretNames: new Map(Object.entries(ids)) });

describe('schema-marked secret names in rendered plans', () => {
  it('masks a harmless-looking name the schema marks, in text, patch and after, only for that Module', () => {
    const base = plan(desired(mod('pin1', { configuration: { pin: '4711', title: 'x' } }), mod('other1', { configuration: { pin: '1234' } })), emptyState(), opts);
    const p = withSecretNames(base, marks({ pin1: ['pin'] }));
    const text = renderPlanText(p, { color: false });
    expect(text).toContain(`+ spec.configuration.pin: ${MASK}\n`);
    expect(text).toContain('+ spec.configuration.title: "x"');
    expect(text).not.toContain('4711');
    // Another Module whose schema does not mark `pin` keeps the name rule only.
    expect(text).toContain('+ spec.configuration.pin: "1234"');
    const json = renderPlanJson(p) as { changes: { id: string; patch: { value: unknown }[]; after: { spec: { configuration: unknown } } }[] };
    const change = json.changes.find((c) => c.id === 'pin1')!;
    expect(change.after.spec.configuration).toEqual({ pin: MASK, title: 'x' });
    expect(JSON.stringify(change.patch)).not.toContain('4711');
  });

  it('masks both sides of an update and leaves the plan itself (what apply writes) unchanged', () => {
    const s = appliedState([mod('pin1', { configuration: { pin: '4711' } })]);
    const base = plan(desired(mod('pin1', { configuration: { pin: '9999' } })), s, opts);
    const p = withSecretNames(base, marks({ pin1: ['pin'] }));
    expect(renderPlanText(p, { color: false })).toContain(`~ spec.configuration.pin: ${MASK} -> ${MASK}\n`);
    expect(JSON.stringify(renderPlanJson(p))).not.toMatch(/4711|9999/);
    expect(p.changes[0]!.after).toEqual(base.changes[0]!.after);
    expect(withSecretNames(base, marks({}))).toBe(base);
  });
});
