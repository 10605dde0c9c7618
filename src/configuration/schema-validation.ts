/**
 * JSON Schema (draft-07) validation of action input/output, as NS8's agent does it with
 * gojsonschema, on ajv: all errors, formats from ajv-formats, `validator-definitions.json` of the
 * instance preloaded so schemas can `$ref` its definitions. Errors are converted to NS8's shape
 * `{parameter, error: "<parameter>_<type>", value, field}` that UIs and scripts already read.
 */
import { promises as fs } from 'node:fs';
import { createRequire } from 'node:module';
import type { Ajv, ErrorObject, ValidateFunction } from 'ajv';
import { AgentError } from '../errors.js';
import { isSecretSchema } from '../runtime/mask.js';
import { MASK, isSecretKey, maskSecrets } from '../runtime/mask-ns8.js';

type FormatsPlugin = (ajv: Ajv) => Ajv;
type AjvPackages = { Ajv: typeof Ajv; addFormats: FormatsPlugin };
let ajvPackages: AjvPackages | undefined;

/**
 * ajv and ajv-formats (CommonJS, about a hundred files to compile), loaded on the first schema
 * compiled: `validate` and `diff` import this module for every Module with a configuration, but
 * need ajv only when a configure-module schema was found for one.
 */
function loadAjv(): AjvPackages {
  if (!ajvPackages) {
    const require = createRequire(import.meta.url);
    const formats = require('ajv-formats') as { default?: FormatsPlugin } & FormatsPlugin;
    ajvPackages = { Ajv: (require('ajv') as { Ajv: typeof Ajv }).Ajv, addFormats: formats.default ?? formats };
  }
  return ajvPackages;
}

/** One input/output validation problem, in NS8's format. */
export interface Ns8ValidationError {
  /** Top-level input field (`name` for `name.first`), `(root)` for the whole document. */
  parameter: string;
  /** `<parameter>_<type>`, e.g. `email_format`, `port_invalid_type`, `name_required`. */
  error: string;
  /** The offending value (null when missing). */
  value: unknown;
  /** Dotted path (`users.0.name`), `(root)` for the document itself. */
  field: string;
}

/**
 * Creates an ajv instance configured like the agent's validator (draft-07, all errors, formats).
 * `code` is for ahead-of-time compilation (ajv's standalone mode) with the same options.
 */
export function createValidatorAjv(opts: { useDefaults?: boolean; code?: { source: true; esm: true; lines: true } } = {}): Ajv {
  const { Ajv, addFormats } = loadAjv();
  const ajv = new Ajv({ allErrors: true, verbose: true, strict: false, useDefaults: opts.useDefaults ?? false, validateSchema: true, ...(opts.code ? { code: opts.code } : {}) });
  addFormats(ajv);
  return ajv;
}

/**
 * Compiles a schema (with optional extra definition documents). Throws AgentError
 * `schema_invalid` naming `origin` when the schema itself is broken.
 */
export function compileSchema(schema: unknown, origin: string, definitions: unknown[] = [], opts: { useDefaults?: boolean } = {}): ValidateFunction {
  const ajv = createValidatorAjv(opts);
  try {
    for (const d of definitions) if (d && typeof d === 'object') ajv.addSchema(d as object);
    return ajv.compile(schema as object);
  } catch (err) {
    throw new AgentError('schema_invalid', `JSON Schema ${origin} cannot be used: ${(err as Error).message}`, { cause: err });
  }
}

const compiled = new Map<string, ValidateFunction>();
const CACHE_LIMIT = 200;

/**
 * compileSchema with a bounded cache keyed by the schema and definitions text, so an agent does
 * not recompile the same action schema for every task (ajv compilation costs milliseconds).
 * Validators compiled with defaults are not cached (they mutate their input by design).
 */
export function compileSchemaCached(schema: unknown, origin: string, definitions: unknown[] = []): ValidateFunction {
  const key = JSON.stringify([schema, definitions]);
  const hit = compiled.get(key);
  if (hit) return hit;
  const validate = compileSchema(schema, origin, definitions);
  if (compiled.size >= CACHE_LIMIT) compiled.delete(compiled.keys().next().value as string);
  compiled.set(key, validate);
  return validate;
}

/** Reads and parses a JSON file; AgentError `schema_unreadable` on failure. */
export async function readJsonFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    throw new AgentError('schema_unreadable', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new AgentError('schema_unreadable', `${file} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

/** Reads `validator-definitions.json` when present (NS8 ignores a missing file). */
export async function readDefinitions(file: string | undefined): Promise<unknown[]> {
  if (!file) return [];
  try {
    await fs.access(file);
  } catch {
    return [];
  }
  return [await readJsonFile(file)];
}

const TYPE_OF_KEYWORD: Record<string, string> = {
  type: 'invalid_type',
  required: 'required',
  enum: 'enum',
  const: 'const',
  minLength: 'string_gte',
  maxLength: 'string_lte',
  pattern: 'pattern',
  format: 'format',
  minimum: 'number_gte',
  maximum: 'number_lte',
  exclusiveMinimum: 'number_gt',
  exclusiveMaximum: 'number_lt',
  multipleOf: 'multiple_of',
  additionalProperties: 'additional_property_not_allowed',
  minItems: 'array_min_items',
  maxItems: 'array_max_items',
  uniqueItems: 'unique',
  additionalItems: 'array_no_additional_items',
  contains: 'contains',
  minProperties: 'array_min_properties',
  maxProperties: 'array_max_properties',
  dependencies: 'missing_dependency',
  propertyNames: 'invalid_property_name',
  oneOf: 'number_one_of',
  anyOf: 'number_any_of',
  allOf: 'number_all_of',
  not: 'number_not',
  if: 'condition_else',
};

/** JSON pointer segments of an ajv error, including the missing/extra property when there is one. */
export function errorPathSegments(e: ErrorObject): string[] {
  const segs = e.instancePath === '' ? [] : e.instancePath.slice(1).split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
  const params = e.params as Record<string, unknown>;
  if (e.keyword === 'required' && typeof params['missingProperty'] === 'string') segs.push(params['missingProperty']);
  if (e.keyword === 'additionalProperties' && typeof params['additionalProperty'] === 'string') segs.push(params['additionalProperty']);
  if (e.keyword === 'dependencies' && typeof params['missingProperty'] === 'string') segs.push(params['missingProperty']);
  return segs;
}

function valueAt(doc: unknown, segs: readonly string[]): unknown {
  let cur: unknown = doc;
  for (const s of segs) {
    if (cur === null || typeof cur !== 'object') return null;
    cur = (cur as Record<string, unknown>)[s];
  }
  return cur === undefined ? null : cur;
}

/**
 * Converts ajv errors to NS8's `{parameter, error, value, field}` list (document order kept).
 * Values under secret-looking keys are replaced by `XXX`: the list is stored as task output.
 */
export function toNs8Errors(errors: readonly ErrorObject[] | null | undefined, doc: unknown): Ns8ValidationError[] {
  const out: Ns8ValidationError[] = [];
  for (const e of errors ?? []) {
    if (e.keyword === 'if') continue; // ajv reports the failing then/else branch separately
    const segs = errorPathSegments(e);
    const field = segs.length === 0 ? '(root)' : segs.join('.');
    const parameter = segs[0] ?? '(root)';
    const type = TYPE_OF_KEYWORD[e.keyword] ?? e.keyword;
    const value = segs.some(isSecretKey) || isSecretSchema(e.parentSchema) ? MASK : maskSecrets(valueAt(doc, segs));
    out.push({ parameter, error: `${parameter}_${type}`, value, field });
  }
  return out;
}
