/**
 * Observed status of module instances, in Redis HASH `keys.moduleStatus(id)`: `conditions` (JSON
 * array of {type, status, reason, message, lastTransitionTime}), `observedGeneration`, `node`,
 * `imageUrl`, `imageDigest`, `targetImage` (only while it differs from `imageUrl`: an update under
 * way, failed or refused), `ports` (JSON {tcp?, udp?} as `start-end`), `units` (JSON array of
 * {name, enabled, active}), `drift` (JSON array of repaired drift lines). Written only when
 * something in it changed, so an unchanged reconcile writes nothing.
 */
import type { Redis } from 'ioredis';
import { keys } from '../state/keys.js';
import type { Condition, ModuleStatus } from './types.js';

function json<T>(v: string | undefined, dflt: T): T {
  if (!v) return dflt;
  try {
    return JSON.parse(v) as T;
  } catch {
    return dflt;
  }
}

/** Parses a status hash; undefined when empty. */
export function parseStatus(id: string, h: Record<string, string>): ModuleStatus | undefined {
  if (!h || Object.keys(h).length === 0) return undefined;
  return {
    id,
    node: Number(h.node ?? 0),
    observedGeneration: Number(h.observedGeneration ?? 0),
    conditions: json<Condition[]>(h.conditions, []),
    imageUrl: h.imageUrl ?? '',
    imageDigest: h.imageDigest ?? '',
    ...(h.targetImage ? { targetImage: h.targetImage } : {}),
    ports: json<ModuleStatus['ports']>(h.ports, {}),
    units: json<ModuleStatus['units']>(h.units, []),
    drift: json<string[]>(h.drift, []),
  };
}

/** The hash fields of a status. */
export function statusFields(s: ModuleStatus): Record<string, string> {
  return {
    node: String(s.node),
    observedGeneration: String(s.observedGeneration),
    conditions: JSON.stringify(s.conditions),
    imageUrl: s.imageUrl,
    imageDigest: s.imageDigest,
    ...(s.targetImage ? { targetImage: s.targetImage } : {}),
    ports: JSON.stringify(s.ports),
    units: JSON.stringify(s.units),
    drift: JSON.stringify(s.drift),
  };
}

/**
 * Carries `lastTransitionTime` over from `prev` for conditions whose status did not change, and
 * stamps `now` on the ones that did (kstatus convention).
 */
export function stampTransitions(prev: ModuleStatus | undefined, next: ModuleStatus, now: Date): ModuleStatus {
  const conditions = next.conditions.map((c) => {
    const old = prev?.conditions.find((p) => p.type === c.type);
    const t = old && old.status === c.status && old.lastTransitionTime ? old.lastTransitionTime : now.toISOString();
    return { ...c, lastTransitionTime: t };
  });
  return { ...next, conditions };
}

/** True when two statuses say the same thing (transition times aside). */
export function sameStatus(a: ModuleStatus | undefined, b: ModuleStatus): boolean {
  if (!a) return false;
  const strip = (s: ModuleStatus): string => JSON.stringify(statusFields({ ...s, conditions: s.conditions.map(({ lastTransitionTime: _t, ...c }) => c) }));
  return strip(a) === strip(b);
}

/** Writes `next` unless it equals `prev`; returns the status now stored. */
export async function writeStatus(redis: Redis, prev: ModuleStatus | undefined, next: ModuleStatus, now: Date): Promise<ModuleStatus> {
  if (sameStatus(prev, next)) return prev!;
  const stamped = stampTransitions(prev, next, now);
  const key = keys.moduleStatus(next.id);
  await redis.multi().del(key).hset(key, statusFields(stamped)).exec();
  return stamped;
}

/** Deletes an instance's status (after removal). */
export async function deleteStatus(redis: Redis, id: string): Promise<void> {
  await redis.del(keys.moduleStatus(id));
}

/**
 * Reads the observed status of instances for `ns8ctl get modules`: one pipeline whatever the
 * number of ids. Ids without status are absent from the map.
 */
export async function readModuleStatuses(redis: Redis, ids: readonly string[]): Promise<Map<string, ModuleStatus>> {
  const out = new Map<string, ModuleStatus>();
  if (!ids.length) return out;
  const p = redis.pipeline();
  for (const id of ids) p.hgetall(keys.moduleStatus(id));
  const res = (await p.exec()) ?? [];
  ids.forEach((id, i) => {
    const s = parseStatus(id, (res[i]?.[1] ?? {}) as Record<string, string>);
    if (s) out.set(id, s);
  });
  return out;
}

/** One instance's status, or undefined. */
export async function readModuleStatus(redis: Redis, id: string): Promise<ModuleStatus | undefined> {
  return (await readModuleStatuses(redis, [id])).get(id);
}

/** The condition of a type, if present. */
export function condition(s: ModuleStatus | undefined, type: Condition['type']): Condition | undefined {
  return s?.conditions.find((c) => c.type === type);
}

/**
 * A short summary for table output: `Ready`, `Degraded: <reason>`, `Progressing`, or `Unknown`.
 * Meant for the STATUS column of `ns8ctl get modules`.
 */
export function summarizeStatus(s: ModuleStatus | undefined): string {
  if (!s) return 'Unknown';
  if (condition(s, 'Ready')?.status === 'True') return 'Ready';
  const deg = condition(s, 'Degraded');
  if (deg?.status === 'True') return `Degraded: ${deg.reason}`;
  if (condition(s, 'Progressing')?.status === 'True') return 'Progressing';
  return condition(s, 'Ready')?.reason ?? 'Unknown';
}
