/**
 * Status of a controller source in Redis HASH `ns8ctl/source/<name>` (see keys.sourceStatus).
 * Written only when something in it changed, so an idle resync writes nothing.
 */
import type { Redis } from 'ioredis';
import { keys } from '../state/keys.js';
import { sameConditions, stampConditions, type Condition } from './conditions.js';

export interface SourceStatus {
  name: string;
  kind: 'directory' | 'git';
  /** Git URL (password masked) or the watched paths joined by a space. */
  url: string;
  branch: string;
  path: string;
  prune: boolean;
  conditions: Condition[];
  /** Git commit whose manifests desired state holds (last good commit). */
  lastAppliedRevision: string;
  /** Last commit tried (differs from lastAppliedRevision while a bad commit is rejected). */
  lastAttemptedRevision: string;
  /** sha256 of the canonical desired objects last applied (tells drift from source changes). */
  lastAppliedDigest: string;
  /** ISO time of the last apply (or of the first reconcile that found desired state already equal). */
  lastAppliedTime: string;
  /** Code of the error of the last attempt, `` when it succeeded. */
  lastError: string;
  /** `Kind/id` of objects whose desired state differs from the source and was left so (no self-heal). */
  driftedKeys: string[];
}

function json<T>(v: string | undefined, d: T): T {
  if (!v) return d;
  try {
    return JSON.parse(v) as T;
  } catch {
    return d;
  }
}

/** Reads a source's status; undefined when it never ran. */
export async function readSourceStatus(redis: Redis, name: string): Promise<SourceStatus | undefined> {
  const h = await redis.hgetall(keys.sourceStatus(name));
  if (!h || Object.keys(h).length === 0) return undefined;
  return {
    name,
    kind: h.kind === 'git' ? 'git' : 'directory',
    url: h.url ?? '',
    branch: h.branch ?? '',
    path: h.path ?? '',
    prune: h.prune === 'true',
    conditions: json<Condition[]>(h.conditions, []),
    lastAppliedRevision: h.lastAppliedRevision ?? '',
    lastAttemptedRevision: h.lastAttemptedRevision ?? '',
    lastAppliedDigest: h.lastAppliedDigest ?? '',
    lastAppliedTime: h.lastAppliedTime ?? '',
    lastError: h.lastError ?? '',
    driftedKeys: json<string[]>(h.driftedKeys, []),
  };
}

function fields(s: SourceStatus): Record<string, string> {
  return {
    kind: s.kind,
    url: s.url,
    branch: s.branch,
    path: s.path,
    prune: String(s.prune),
    conditions: JSON.stringify(s.conditions),
    lastAppliedRevision: s.lastAppliedRevision,
    lastAttemptedRevision: s.lastAttemptedRevision,
    lastAppliedDigest: s.lastAppliedDigest,
    lastAppliedTime: s.lastAppliedTime,
    lastError: s.lastError,
    driftedKeys: JSON.stringify(s.driftedKeys),
  };
}

/** True when `a` and `b` are equal apart from transition times. */
export function sameSourceStatus(a: SourceStatus | undefined, b: SourceStatus): boolean {
  if (!a || !sameConditions(a.conditions, b.conditions)) return false;
  const { conditions: _a, ...ra } = fields(a);
  const { conditions: _b, ...rb } = fields(b);
  return JSON.stringify(ra) === JSON.stringify(rb);
}

/** Writes `next` (transition times stamped against `prev`) unless nothing changed; returns what is stored. */
export async function writeSourceStatus(redis: Redis, prev: SourceStatus | undefined, next: SourceStatus, now: Date): Promise<SourceStatus> {
  if (sameSourceStatus(prev, next)) return prev as SourceStatus;
  const stamped = { ...next, conditions: stampConditions(prev?.conditions, next.conditions, now) };
  const key = keys.sourceStatus(next.name);
  await redis.multi().del(key).hset(key, fields(stamped)).exec();
  return stamped;
}
