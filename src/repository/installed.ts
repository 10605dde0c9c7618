/**
 * Installed instances as NS8 records them (`module/<id>/environment`: IMAGE_URL, NODE_ID), and the
 * updates available to them. For `get modules -o wide` and the reconciler's update decisions.
 */
import type { Redis } from 'ioredis';
import { RedisError } from '../errors.js';
import { keys } from '../state/keys.js';
import { loadAvailable, type AvailableCatalog, type ResolverOptions } from './image-resolver.js';
import { listUpdates, type InstalledInstance, type InstanceUpdates } from './resolve.js';
import { scanKeys } from '../state/scan.js';

/**
 * Reads every `module/<id>/environment` that has an IMAGE_URL (sorted by id).
 * @throws RedisError when Redis fails.
 */
export async function readInstalledInstances(redis: Redis): Promise<InstalledInstance[]> {
  const pattern = keys.moduleEnvironment('*');
  try {
    const found = await scanKeys(redis, pattern, 500);
    const ids = [...new Set(found.map((k) => k.slice('module/'.length, -'/environment'.length)))].filter((id) => id && !id.includes('/')).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
    const p = redis.pipeline();
    for (const id of ids) p.hmget(keys.moduleEnvironment(id), 'IMAGE_URL', 'NODE_ID');
    const res = (await p.exec()) ?? [];
    const out: InstalledInstance[] = [];
    ids.forEach((id, i) => {
      const [image, node] = (res[i]?.[1] ?? []) as (string | null)[];
      if (!image) return;
      out.push({ id, image, ...(node && /^\d+$/.test(node) ? { node: Number(node) } : {}) });
    });
    return out;
  } catch (err) {
    throw new RedisError('redis_failed', `reading ${pattern}: ${(err as Error).message}`, { cause: err, user: false });
  }
}

/**
 * Updates available to the installed instances (resolve.listUpdates over the repositories in
 * Redis). `versionSpecs` (instance id -> Module `version`) fills `inSpec`. When no instance is
 * installed the repositories are not read at all and `catalog` is undefined.
 * @throws RedisError when Redis fails; repository failures are in `catalog.failures` (and
 *   reported to `onWarning`).
 */
export async function updatesFromRedis(
  redis: Redis,
  opts: ResolverOptions & { versionSpecs?: ReadonlyMap<string, string> } = {},
): Promise<{ updates: InstanceUpdates[]; catalog?: AvailableCatalog }> {
  const instances = await readInstalledInstances(redis);
  if (instances.length === 0) return { updates: [] };
  const catalog = await loadAvailable(redis, opts);
  const withSpecs = instances.map((i) => {
    const spec = opts.versionSpecs?.get(i.id);
    return spec !== undefined ? { ...i, versionSpec: spec } : i;
  });
  return { updates: listUpdates(withSpecs, catalog.available, { coreVersion: catalog.coreVersion }), catalog };
}
