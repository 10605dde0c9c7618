/**
 * The JSON Schemas of schemas/*.schema.json and their validators, compiled ahead of time by ajv
 * (all errors, verbose so that error translation sees the failing value and its schema) into
 * generated/schema-validators.ts (see schema-codegen.ts): no compiler is loaded at run time.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AnySchemaObject, ValidateFunction } from 'ajv';
import * as validators from './generated/schema-validators.js';
import { Ns8ctlError } from '../errors.js';
import type { Kind } from './types.js';

/** Schema file of each kind, relative to the package's `schemas/` directory. */
export const SCHEMA_FILES: Record<Kind, string> = {
  Module: 'module.schema.json',
  Repository: 'repository.schema.json',
  Node: 'node.schema.json',
  BackupDestination: 'backupdestination.schema.json',
  BackupSchedule: 'backupschedule.schema.json',
};

/**
 * The package's `schemas/` directory: found by walking up from this module, so it works from
 * `src/manifest/` (tests) and `dist/src/manifest/` (built package) alike.
 * @throws Ns8ctlError `schemas_missing` (internal) when the installation lacks it.
 */
export function schemasDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, 'schemas');
    if (existsSync(join(candidate, SCHEMA_FILES.Module))) return candidate;
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw new Ns8ctlError('schemas_missing', `schemas/${SCHEMA_FILES.Module} not found above ${fileURLToPath(import.meta.url)}; the installation is incomplete`, { user: false });
}

/** A compiled schema with its source, for error translation. */
export interface CompiledSchema {
  schema: AnySchemaObject;
  validate: ValidateFunction;
}

const compiled = new Map<Kind, CompiledSchema>();

/**
 * The schema of one kind (read on first use and cached) with its precompiled validator.
 * @throws Ns8ctlError `schemas_missing` when the schema files are not installed.
 */
export function kindSchema(kind: Kind): CompiledSchema {
  const hit = compiled.get(kind);
  if (hit) return hit;
  const schema = JSON.parse(readFileSync(join(schemasDir(), SCHEMA_FILES[kind]), 'utf8')) as AnySchemaObject;
  const entry = { schema, validate: (validators as unknown as Record<Kind, ValidateFunction>)[kind] };
  compiled.set(kind, entry);
  return entry;
}
