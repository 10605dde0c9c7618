/**
 * Checks for names that reach a file path, a Redis key or a shell-free command line: object ids
 * given on the command line or read back from Redis, and apply set names. A name that passes
 * cannot hold `/`, `..`, spaces, glob characters or control characters, so `path.join(dir, id)`
 * stays inside `dir` and `ns8ctl/inventory/<set>` stays one key. The rules match the schemas
 * (schemas/*.schema.json) and docs/manifests.md.
 */
import path from 'node:path';
import { UsageError } from '../errors.js';
import type { Kind } from './types.js';

/** NS8 instance id `<module><N>` (schemas/module.schema.json metadata.name), at most 32 characters. */
export const INSTANCE_ID = /^[a-z]([a-z0-9_-]*[a-z_-])?[1-9][0-9]*$/;
/** Repository name (schemas/repository.schema.json), at most 63 characters. */
export const REPOSITORY_NAME = /^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/;
/** BackupDestination and BackupSchedule name (schemas/backup*.schema.json): a DNS label, at most 63 characters. */
export const BACKUP_OBJECT_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** Node id: a positive decimal integer without leading zero that is a safe integer. */
export const NODE_ID = /^[1-9][0-9]{0,14}$/;
/**
 * Apply set (and source) name: letters, digits, `.`, `_`, `-`, starting with a letter or digit,
 * at most 63 characters: the same rule as controller source names, whose name is their apply set.
 */
export const APPLY_SET_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

const RULES: Record<Kind, { re: RegExp; max: number; words: string }> = {
  Module: { re: INSTANCE_ID, max: 32, words: 'an instance id <module><N> such as dokuwiki1: lowercase letters, digits, "-", "_", at most 32 characters' },
  Repository: { re: REPOSITORY_NAME, max: 63, words: 'a repository name: lowercase letters, digits, ".", "_", "-", starting and ending with a letter or digit, at most 63 characters' },
  Node: { re: NODE_ID, max: 15, words: 'a node id: an integer >= 1' },
  BackupDestination: { re: BACKUP_OBJECT_NAME, max: 63, words: 'a backup destination name: lowercase letters, digits and "-", starting and ending with a letter or digit, at most 63 characters' },
  BackupSchedule: { re: BACKUP_OBJECT_NAME, max: 63, words: 'a backup schedule name: lowercase letters, digits and "-", starting and ending with a letter or digit, at most 63 characters' },
};

/** True when `id` is a valid id of an object of `kind`. */
export function isValidObjectId(kind: Kind, id: string): boolean {
  const r = RULES[kind];
  return id.length <= r.max && r.re.test(id);
}

/**
 * Returns `id` when it is a valid id of a `kind` object (see the module doc).
 * @throws UsageError naming the id (JSON-quoted, so control characters show) and the rule.
 */
export function assertObjectId(kind: Kind, id: string): string {
  if (!isValidObjectId(kind, id)) throw new UsageError(`${kind.toLowerCase()} id ${JSON.stringify(id)} is not valid: expected ${RULES[kind].words}`);
  return id;
}

/**
 * Returns `name` when it is a valid apply set name (APPLY_SET_NAME).
 * @throws UsageError naming the flag, the value and the rule.
 */
export function assertApplySetName(name: string, flag = '--applyset'): string {
  if (!APPLY_SET_NAME.test(name)) {
    throw new UsageError(`${flag} ${JSON.stringify(name)} is not valid: an apply set name uses letters, digits, ".", "_" and "-", starts with a letter or digit and has at most 63 characters (${APPLY_SET_NAME.source})`);
  }
  return name;
}

/**
 * `dir/<name>`, refusing a name that is not one plain path component or a result outside `dir`:
 * a guard for every file named after an id.
 * @throws UsageError when `name` would leave `dir`.
 */
export function fileInside(dir: string, name: string): string {
  const file = path.join(dir, name);
  const rel = path.relative(path.resolve(dir), path.resolve(file));
  if (name !== path.basename(name) || name.startsWith('.') || rel.startsWith('..') || path.isAbsolute(rel) || name.includes('\0')) {
    throw new UsageError(`${JSON.stringify(name)} is not a plain file name inside ${dir}: refusing to touch it`);
  }
  return file;
}
