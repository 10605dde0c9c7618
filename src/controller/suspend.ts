/**
 * Suspension of one module instance or of a whole source, kept in Redis so every controller
 * replica and node agent sees it: STRING `ns8ctl/suspend/<module|source>/<name>` holding JSON
 * {reason, by, since, until?}, with a TTL when suspended `--for` a while (it then lapses by itself).
 * While it exists the controller does not change the target (a suspended module keeps its stored
 * desired object even if its manifest changes or leaves the source) and the node agent leaves the
 * instance's host state alone. Suspending and resuming record `module-suspended`,
 * `module-resumed`, `source-suspended` or `source-resumed` events.
 */
import type { Redis } from 'ioredis';
import { NotFoundError, RedisError, UsageError } from '../errors.js';
import { keys } from '../state/keys.js';
import type { EventRecorder } from '../state/events.js';
import { formatDuration } from '../runtime/duration.js';
import { scanNames } from '../state/scan.js';

export type SuspendKind = 'module' | 'source';

export interface Suspension {
  reason: string;
  /** Who suspended (user@host). */
  by: string;
  /** ISO time. */
  since: string;
  /** ISO time it lapses, when suspended for a while. */
  until?: string;
}

/** Parses the CLI's `[module ID | source NAME]`; no arguments mean the source `default`. */
export function parseSuspendTarget(resource: string | undefined, name: string | undefined): { kind: SuspendKind; name: string } {
  if (resource === undefined) return { kind: 'source', name: 'default' };
  const r = resource.toLowerCase();
  const kind: SuspendKind | undefined = r === 'module' || r === 'modules' || r === 'mod' ? 'module' : r === 'source' || r === 'sources' ? 'source' : undefined;
  if (!kind) throw new UsageError(`cannot suspend ${JSON.stringify(resource)}: use \`module <id>\` or \`source <name>\` (no arguments: the source "default")`);
  if (kind === 'module' && !name) throw new UsageError('which module? `ns8ctl suspend module <id>`');
  const n = name ?? 'default';
  if (!/^[A-Za-z0-9._-]+$/.test(n)) throw new UsageError(`${kind} name ${JSON.stringify(n)} may contain only letters, digits, '.', '_' and '-'`);
  return { kind, name: n };
}

function parse(v: string | null): Suspension | undefined {
  if (v === null) return undefined;
  try {
    const s = JSON.parse(v) as Suspension;
    return typeof s === 'object' && s !== null ? s : { reason: '', by: '', since: '' };
  } catch {
    // Anything stored there suspends, even text a human SET by hand.
    return { reason: v, by: '', since: '' };
  }
}

/**
 * Suspends a target. `forMs` sets an expiry. Returns the stored suspension.
 * @throws RedisError when Redis refuses the write.
 */
export async function suspendTarget(
  redis: Redis,
  events: EventRecorder | undefined,
  target: { kind: SuspendKind; name: string },
  opts: { reason?: string; by: string; now: Date; forMs?: number },
): Promise<Suspension> {
  const s: Suspension = {
    reason: opts.reason ?? '',
    by: opts.by,
    since: opts.now.toISOString(),
    ...(opts.forMs !== undefined ? { until: new Date(opts.now.getTime() + opts.forMs).toISOString() } : {}),
  };
  const key = keys.suspension(target.kind, target.name);
  try {
    if (opts.forMs !== undefined) await redis.set(key, JSON.stringify(s), 'PX', Math.max(1, Math.round(opts.forMs)));
    else await redis.set(key, JSON.stringify(s));
  } catch (err) {
    throw new RedisError('redis_write_failed', `suspending ${target.kind} ${target.name}: Redis refused SET ${key}: ${(err as Error).message}`, { cause: err });
  }
  await events?.record({
    name: `${target.kind}-suspended`,
    type: 'Normal',
    object: target.kind === 'module' ? `Module/${target.name}` : `source/${target.name}`,
    message: `${target.kind} ${target.name} suspended by ${opts.by}${s.reason ? `: ${s.reason}` : ''}${opts.forMs !== undefined ? ` for ${formatDuration(opts.forMs)}` : ''}`,
    data: { ...s },
  });
  return s;
}

/** Resumes a target. Returns false when it was not suspended (nothing recorded then). */
export async function resumeTarget(redis: Redis, events: EventRecorder | undefined, target: { kind: SuspendKind; name: string }, by: string): Promise<boolean> {
  const key = keys.suspension(target.kind, target.name);
  let n: number;
  try {
    n = await redis.del(key);
  } catch (err) {
    throw new RedisError('redis_write_failed', `resuming ${target.kind} ${target.name}: Redis refused DEL ${key}: ${(err as Error).message}`, { cause: err });
  }
  if (n === 0) return false;
  await events?.record({
    name: `${target.kind}-resumed`,
    type: 'Normal',
    object: target.kind === 'module' ? `Module/${target.name}` : `source/${target.name}`,
    message: `${target.kind} ${target.name} resumed by ${by}`,
    data: { by },
  });
  return true;
}

/** The suspension of one target, or undefined. */
export async function readSuspension(redis: Redis, kind: SuspendKind, name: string): Promise<Suspension | undefined> {
  return parse(await redis.get(keys.suspension(kind, name)));
}

/** Suspensions of many targets of one kind in one round trip (MGET); absent ones are left out. */
export async function readSuspensions(redis: Redis, kind: SuspendKind, names: readonly string[]): Promise<Map<string, Suspension>> {
  const out = new Map<string, Suspension>();
  if (names.length === 0) return out;
  const values = await redis.mget(...names.map((n) => keys.suspension(kind, n)));
  names.forEach((n, i) => {
    const s = parse(values[i] ?? null);
    if (s) out.set(n, s);
  });
  return out;
}

/**
 * What can be suspended: for `module`, the Modules in desired state; for `source`, the sources a
 * controller reported a status for and the apply sets that have an inventory. Sorted.
 * @throws RedisError when Redis cannot be read.
 */
export async function knownTargets(redis: Redis, kind: SuspendKind): Promise<string[]> {
  try {
    if (kind === 'module') return (await redis.smembers(keys.desiredIndex('Module'))).sort();
    const names = new Set(await redis.smembers(keys.inventories()));
    const prefix = keys.sourceStatus('');
    for (const n of await scanNames(redis, prefix, { nested: true })) names.add(n);
    return [...names].sort();
  } catch (err) {
    throw new RedisError('redis_read_failed', `listing the known ${kind}s: ${(err as Error).message}`, { cause: err });
  }
}

/** Edit distance (Levenshtein), for "did you mean". */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

/**
 * Refuses to suspend something that does not exist (a typo would otherwise suspend nothing and
 * say it worked): NotFoundError (exit 1) naming the closest known targets, and `--force` for
 * suspending ahead of time (a module or source not applied yet).
 * @throws NotFoundError when `target` is unknown; RedisError when Redis cannot be read.
 */
export async function assertTargetExists(redis: Redis, target: { kind: SuspendKind; name: string }): Promise<void> {
  const known = await knownTargets(redis, target.kind);
  if (known.includes(target.name)) return;
  const closest = [...known].sort((a, b) => distance(target.name, a) - distance(target.name, b) || (a < b ? -1 : a > b ? 1 : 0)).slice(0, 8);
  const what = target.kind === 'module' ? 'no module instance' : 'no source';
  const where = target.kind === 'module' ? 'in desired state' : 'known to the controller (no status, no apply set)';
  const list = known.length === 0 ? `there are none yet` : `${known.length > closest.length ? 'closest' : 'known'}: ${closest.join(', ')}${known.length > closest.length ? ` (${known.length} in all)` : ''}`;
  throw new NotFoundError(`${what} ${JSON.stringify(target.name)} ${where}; ${list}. \`ns8ctl suspend ${target.kind} ${target.name} --force\` suspends it anyway (before it is applied)`);
}
