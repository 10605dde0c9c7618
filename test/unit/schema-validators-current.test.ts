/**
 * The precompiled manifest validators (src/manifest/generated/schema-validators.ts) are what
 * ajv makes of the current schemas/*.schema.json; a schema edit without `npm run gen:schemas`
 * fails here. And they behave as a run-time compile does.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { generateSchemaValidators, MANIFEST_AJV_OPTIONS } from '../../src/manifest/schema-codegen.js';
import { kindSchema } from '../../src/manifest/schemas.js';

const here = path.dirname(fileURLToPath(import.meta.url));

test('the generated validators match the schemas (run npm run gen:schemas after editing schemas/)', () => {
  const file = path.resolve(here, '..', '..', 'src', 'manifest', 'generated', 'schema-validators.ts');
  expect(readFileSync(file, 'utf8') === generateSchemaValidators()).toBe(true);
});

test('a precompiled validator reports what a run-time compile reports', () => {
  const { schema, validate } = kindSchema('Module');
  const runtime = new Ajv(MANIFEST_AJV_OPTIONS).compile(schema);
  const bad = { apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: 'Webapp!' }, spec: { image: 42, node: 0, colour: 'red' } };
  expect(validate(bad)).toBe(false);
  expect(runtime(bad)).toBe(false);
  expect(validate.errors).toEqual(runtime.errors);
  expect(validate.errors!.length).toBeGreaterThan(2);
  const good = { apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: 'webapp1' }, spec: { image: 'ghcr.io/x/webapp:1.0.0', node: 1 } };
  expect(validate(good)).toBe(true);
});
