/**
 * Explicit removal requests: the only things that make the node agent remove an instance.
 *
 * - The desired object's `deleting` mark (set by `ns8ctl delete` / prune while the `node-agent`
 *   finalizer is held): JSON `{"removalPolicy":"Preserve"|"Delete","by":"<who>","at":"<ISO-8601>",
 *   "why":"<reason>"}`; the older `{"removalPolicy":...}` form is still read.
 * - A removal the agent already recorded on the host (`InstanceRecord.removing`): an interrupted
 *   removal resumes even if desired state is gone.
 * - For an orphan (an instance the node runs whose desired object is missing, so there is nothing
 *   to mark): STRING `ns8ctl/removal/module/<id>` holding the same JSON. The agent honours it only
 *   while the instance has no desired object; it moves the request into its host record (so the
 *   removal resumes after a crash) and then deletes the key.
 *
 * A missing desired object is never a removal request.
 */
import type { Redis } from 'ioredis';
import { RedisError, RefusedError, UsageError } from '../errors.js';
import { isValidObjectId } from '../manifest/names.js';
import type { RemovalPolicy } from '../manifest/types.js';
import { channels, keys } from '../state/keys.js';

/** Who asked for a removal, when, why, and what happens to the data. */
export interface DeletionMark {
  removalPolicy: RemovalPolicy;
  /** Who asked (`ns8ctl delete` by `root@host`, `prune of source default`, ...); absent in the older form. */
  by?: string;
  /** ISO-8601 time of the request; absent in the older form. */
  at?: string;
  /** Why, in the requester's words; absent in the older form. */
  why?: string;
}

/** STRING key of an orphan's removal request (JSON DeletionMark). */
export function removalRequestKey(id: string): string {
  return `ns8ctl/removal/module/${id}`;
}

const TEXT_MAX = 500;

function text(v: unknown): string | undefined {
  return typeof v === 'string' && v.trim() !== '' ? v.slice(0, TEXT_MAX) : undefined;
}

/**
 * Reads a deletion mark from its stored JSON text or an already parsed value. Accepts the older
 * `{removalPolicy}` form; an unknown or missing policy reads as `Preserve` (keeping data is the
 * safe reading). Undefined for text that is not a JSON object.
 */
export function parseDeletionMark(raw: unknown): DeletionMark | undefined {
  let v: unknown = raw;
  if (typeof raw === 'string') {
    try {
      v = JSON.parse(raw);
    } catch {
      return undefined;
    }
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) return undefined;
  const o = v as Record<string, unknown>;
  const mark: DeletionMark = { removalPolicy: o.removalPolicy === 'Delete' ? 'Delete' : 'Preserve' };
  const by = text(o.by);
  const at = text(o.at);
  const why = text(o.why);
  if (by) mark.by = by;
  if (at) mark.at = at;
  if (why) mark.why = why;
  return mark;
}

/** `requested by X at T: why` (the parts that are known), or `requested (no requester recorded)`. */
export function describeRequest(mark: DeletionMark): string {
  const parts = [mark.by ? `by ${mark.by}` : '', mark.at ? `at ${mark.at}` : ''].filter(Boolean).join(' ');
  const head = parts ? `requested ${parts}` : 'requested (no requester recorded)';
  return mark.why ? `${head}: ${mark.why}` : head;
}

/** `removing (data preserved)` / `removing (DATA DELETED)`. */
export function policyText(policy: RemovalPolicy): string {
  return policy === 'Delete' ? 'DATA DELETED' : 'data preserved';
}

/** The pending removal requests of `ids` (one MGET); ids without one are absent. Bad JSON is ignored. */
export async function readRemovalRequests(redis: Redis, ids: readonly string[]): Promise<Map<string, DeletionMark>> {
  const out = new Map<string, DeletionMark>();
  if (!ids.length) return out;
  let values: (string | null)[];
  try {
    values = await redis.mget(...ids.map(removalRequestKey));
  } catch (err) {
    throw new RedisError('redis_command_failed', `reading removal requests: ${(err as Error).message}`, { cause: err });
  }
  ids.forEach((id, i) => {
    // A request is only ever honoured for an id that can name a host path (see id-guard.ts).
    if (!isValidObjectId('Module', id)) return;
    const mark = values[i] ? parseDeletionMark(values[i]) : undefined;
    if (mark) out.set(id, mark);
  });
  return out;
}

/** Deletes an orphan's removal request (once the host record carries it). */
export async function clearRemovalRequest(redis: Redis, id: string): Promise<void> {
  await redis.del(removalRequestKey(id));
}

const REQUEST = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
return 1
`;

const ID = /^[a-z][a-z0-9_-]{0,31}$/;

/**
 * Asks the node agents to remove orphan `id` (an instance a node runs without a desired object):
 * writes `ns8ctl/removal/module/<id>`, unless a desired Module `id` exists (atomically checked:
 * that one is removed through its deletion mark, `ns8ctl delete module <id>`). Returns the mark
 * written. The agent that runs the instance removes it at its next pass (or at once, woken by
 * `ns8ctl/event/desired-state-changed`).
 * @throws RefusedError `module_not_orphaned` when a desired object exists; UsageError for an invalid id.
 */
export async function requestOrphanRemoval(redis: Redis, id: string, request: { removalPolicy: RemovalPolicy; by: string; why: string }, now: Date = new Date()): Promise<DeletionMark> {
  if (!ID.test(id)) throw new UsageError(`instance id ${JSON.stringify(id)} is not a valid NS8 instance id (a lowercase letter, then letters, digits, '_' or '-')`);
  const mark: DeletionMark = { removalPolicy: request.removalPolicy, by: request.by, at: now.toISOString(), why: request.why };
  const set = Number(await redis.eval(REQUEST, 2, keys.desired('Module', id), removalRequestKey(id), JSON.stringify(mark)));
  if (set !== 1) {
    throw new RefusedError('module_not_orphaned', `Module ${id} has a desired object: it is not an orphan; remove it with \`ns8ctl delete module ${id}\` (its deletion mark records who, when and why)`);
  }
  await redis.publish(channels.desiredChanged, JSON.stringify({ keys: [`Module/${id}`] })).catch(() => 0);
  return mark;
}
