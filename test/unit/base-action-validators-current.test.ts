/**
 * The base actions' precompiled validators (src/agent/generated/base-action-validators.ts) are
 * what ajv makes of src/agent/base-action-schemas.ts with the agent validator's options; a schema
 * edit without `npm run gen:schemas` fails here. And they report what a run-time compile reports,
 * so NS8-shaped validation errors are the same whichever runs.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateBaseActionValidators } from '../../src/agent/base-action-codegen.js';
import { BASE_ACTION_SCHEMAS } from '../../src/agent/base-action-schemas.js';
import { createBaseActions } from '../../src/agent/base-actions.js';
import { compileSchema, toNs8Errors } from '../../src/configuration/schema-validation.js';

const here = path.dirname(fileURLToPath(import.meta.url));

test('the generated base-action validators match the schemas (run npm run gen:schemas after editing them)', () => {
  const file = path.resolve(here, '..', '..', 'src', 'agent', 'generated', 'base-action-validators.ts');
  expect(readFileSync(file, 'utf8') === generateBaseActionValidators()).toBe(true);
});

test('create-module, update-module and get-status carry precompiled validators that report what a run-time compile reports', () => {
  const actions = new Map(createBaseActions().map((a) => [a.name, a]));
  const cases: [string, 'inputValidate' | 'outputValidate', object, unknown, unknown][] = [
    ['create-module', 'inputValidate', BASE_ACTION_SCHEMAS.createModuleInput, { images: ['a', 'a', ''], volumes: { data: 'relative', ok: '/srv' } }, { images: ['ghcr.io/x/y:1'], volumes: { data: '/srv' } }],
    ['update-module', 'inputValidate', BASE_ACTION_SCHEMAS.updateModuleInput, { module_url: '', force: 'yes' }, { module_url: 'ghcr.io/x/y:2', force: false }],
    ['get-status', 'outputValidate', BASE_ACTION_SCHEMAS.getStatusOutput, { instance: 1, services: [{ name: 'x' }] }, { instance: 'web1', ui_name: '', node: '1', node_ui_name: '', services: [], images: [], volumes: [] }],
  ];
  for (const [action, which, schema, bad, good] of cases) {
    const pre = actions.get(action)?.[which];
    expect(pre).toBeDefined();
    const runtime = compileSchema(schema, `test ${action}`);
    expect(pre!(bad)).toBe(false);
    expect(runtime(bad)).toBe(false);
    expect(pre!.errors).toEqual(runtime.errors);
    expect(toNs8Errors(pre!.errors, bad)).toEqual(toNs8Errors(runtime.errors, bad));
    expect(pre!.errors!.length).toBeGreaterThan(1);
    expect(pre!(good)).toBe(true);
    expect(runtime(good)).toBe(true);
  }
});
