/**
 * The JSON Schemas of schemas/*.schema.json, read once and compiled with ajv (all errors,
 * verbose so that error translation sees the failing value and its schema).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import type { AnySchemaObject, ValidateFunction } from 'ajv';
import { Ns8ctlError } from '../errors.js';
import type { Kind } from './types.js';

/** Schema file of each kind, relative to the package's `schemas/` directory. */
export const SCHEMA_FILES: Record<Kind, string> = {
  Module: 'module.schema.json',
  Repository: 'repository.schema.json',
  Node: 'node.schema.json',
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

let ajv: Ajv | undefined;
const compiled = new Map<Kind, CompiledSchema>();

/**
 * The compiled schema of one kind, compiled on first use and cached (compiling costs tens of
 * milliseconds per kind, so kinds a run never meets are not compiled).
 * @throws Ns8ctlError `schemas_missing` when the schema files are not installed.
 */
export function kindSchema(kind: Kind): CompiledSchema {
  const hit = compiled.get(kind);
  if (hit) return hit;
  ajv ??= new Ajv({ allErrors: true, verbose: true, strict: true, strictTypes: false, strictRequired: false });
  const schema = JSON.parse(readFileSync(join(schemasDir(), SCHEMA_FILES[kind]), 'utf8')) as AnySchemaObject;
  const entry = { schema, validate: ajv.compile(schema) };
  compiled.set(kind, entry);
  return entry;
}
