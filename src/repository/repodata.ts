/**
 * The NS8 repodata.json format: types mirroring schemas/repodata.schema.json, and parsing +
 * validation that report every problem with its JSON pointer and the repository's name.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import type { Ajv, ErrorObject, ValidateFunction } from 'ajv';
import { Ns8ctlError } from '../errors.js';
import { RepositoryError, type RepositoryProblem } from './errors.js';

/** One published version (image tag) of a package. */
export interface RepodataVersion {
  tag: string;
  /** True when the tag is a semver prerelease (informative; resolution parses the tag itself). */
  testing: boolean;
  labels: Record<string, string>;
}

export interface RepodataAuthor {
  name: string;
  email?: string;
}

export interface RepodataDocs {
  documentation_url: string;
  bug_url: string;
  code_url: string;
  terms_url?: string;
  relnotes_url?: string;
}

/** One package (module) of a repository, as repodata.json carries it. */
export interface RepodataPackage {
  id?: string;
  name: string;
  upstream_name?: string;
  description: Record<string, string>;
  logo: string | null;
  screenshots?: string[];
  categories: string[];
  authors: RepodataAuthor[];
  docs: RepodataDocs;
  /** Image URL without tag (`ghcr.io/nethserver/dokuwiki`). */
  source: string;
  versions: RepodataVersion[];
}

/** File name of a repository's metadata, relative to the repository URL. */
export const REPODATA_FILE = 'repodata.json';

let validator: ValidateFunction | undefined;

/**
 * Finds `schemas/<file>` by walking up from this module (works from `src/` in tests and from
 * `dist/src/` once built; the package ships `schemas/`).
 */
export function schemaPath(file: string): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, 'schemas', file);
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new Ns8ctlError('schema_missing', `schema file schemas/${file} not found above ${dirname(fileURLToPath(import.meta.url))}`, { user: false });
}

/** The parsed repodata JSON Schema. */
export function repodataSchema(): Record<string, unknown> {
  return JSON.parse(readFileSync(schemaPath('repodata.schema.json'), 'utf8')) as Record<string, unknown>;
}

function getValidator(): ValidateFunction {
  if (!validator) {
    // ajv (about sixty CommonJS files) loads with the first repodata read, not with every command that imports this module.
    const { Ajv: AjvClass } = createRequire(import.meta.url)('ajv') as { Ajv: typeof Ajv };
    const ajv = new AjvClass({ allErrors: true, strict: true, allowUnionTypes: true });
    validator = ajv.compile(repodataSchema());
  }
  return validator;
}

function describeError(e: ErrorObject, data: unknown): RepositoryProblem {
  let where = e.instancePath;
  let message = e.message ?? 'is invalid';
  if (e.keyword === 'required') {
    const missing = (e.params as { missingProperty: string }).missingProperty;
    where = `${where}/${missing}`;
    message = 'is required';
  } else if (e.keyword === 'type') {
    message = `must be ${(e.params as { type: string | string[] }).type.toString().replace(',', ' or ')}`;
  } else if (e.keyword === 'pattern') {
    message = `${JSON.stringify(valueAt(data, e.instancePath))} ${describePattern(e.instancePath)}`;
  }
  const pkg = /^\/(\d+)/.exec(where);
  const id = pkg ? packageLabel(data, Number(pkg[1])) : '';
  return { where: where || '/', message: id ? `${message} (package ${id})` : message };
}

function describePattern(pointer: string): string {
  if (pointer.endsWith('/source')) return 'is not an image URL without tag (registry/path/name, e.g. ghcr.io/nethserver/dokuwiki)';
  if (pointer.endsWith('/tag')) return 'is not an image tag (letters, digits, _ . -, at most 128 characters)';
  if (pointer.endsWith('/id')) return 'is not a package id (letters, digits, _ . -, starting with a letter or digit)';
  return 'has an invalid format';
}

function valueAt(data: unknown, pointer: string): unknown {
  let cur: unknown = data;
  for (const raw of pointer.split('/').slice(1)) {
    const part = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur;
}

function packageLabel(data: unknown, index: number): string {
  const p = Array.isArray(data) ? (data[index] as Record<string, unknown> | undefined) : undefined;
  const id = p && typeof p === 'object' ? (p.id ?? p.name ?? p.source) : undefined;
  return typeof id === 'string' ? `'${id}'` : '';
}

/**
 * Checks a parsed value against schemas/repodata.schema.json. Returns every problem found (empty
 * when valid), each with the JSON pointer of the offending value.
 */
export function checkRepodata(value: unknown): RepositoryProblem[] {
  const validate = getValidator();
  if (validate(value)) return [];
  return (validate.errors ?? []).map((e) => describeError(e, value));
}

/**
 * Parses and validates the text of a repodata.json belonging to repository `repo` (`from` says
 * where it was read, for messages).
 * @throws RepositoryError `repodata_is_not_json` (with the parser's message) or
 *   `repodata_is_not_valid_metadata` (with every problem as `problems`, pointer + message).
 */
export function parseRepodata(text: string, repo: string, from: string): RepodataPackage[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new RepositoryError('repodata_is_not_json', `repository '${repo}': ${from} is not JSON: ${(err as Error).message}`, { cause: err });
  }
  const problems = checkRepodata(value);
  if (problems.length) {
    const shown = problems.slice(0, 20).map((p) => `  ${p.where}  ${p.message}`);
    if (problems.length > 20) shown.push(`  ... and ${problems.length - 20} more`);
    throw new RepositoryError(
      'repodata_is_not_valid_metadata',
      `repository '${repo}': ${from} does not match the repodata schema (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n${shown.join('\n')}`,
      { problems },
    );
  }
  return value as RepodataPackage[];
}

/** The id a package is looked up by: `id`, or the last path segment of `source` when absent. */
export function packageId(pkg: Pick<RepodataPackage, 'id' | 'source'>): string {
  return pkg.id ?? pkg.source.split('/').pop() ?? pkg.source;
}
