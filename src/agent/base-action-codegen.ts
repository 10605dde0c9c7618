/**
 * Generates `src/agent/generated/base-action-validators.ts`: the base actions' schemas
 * (base-action-schemas.ts) compiled ahead of time with the agent validator's own options, so
 * they report exactly what a run-time compile would (a unit test checks both, and that the file
 * is current).
 */
import { createValidatorAjv } from '../configuration/schema-validation.js';
import { standaloneModule } from '../manifest/schema-codegen.js';
import { BASE_ACTION_SCHEMAS } from './base-action-schemas.js';

/** Exported name of each base-action schema's validator. */
export const BASE_ACTION_VALIDATORS = { createModuleInput: 'CreateModuleInput', updateModuleInput: 'UpdateModuleInput', getStatusOutput: 'GetStatusOutput' } as const;

/** The generated module's text. */
export function generateBaseActionValidators(): string {
  const ajv = createValidatorAjv({ code: { source: true, esm: true, lines: true } });
  for (const [key, name] of Object.entries(BASE_ACTION_VALIDATORS)) ajv.addSchema(BASE_ACTION_SCHEMAS[key as keyof typeof BASE_ACTION_SCHEMAS] as object, name);
  return standaloneModule(ajv, Object.values(BASE_ACTION_VALIDATORS), 'src/agent/base-action-codegen.ts from src/agent/base-action-schemas.ts');
}
