/**
 * NS8's default instances (ns8-core-facts §1 step 8, §4 step 4): `cluster/default_instance/<module>`
 * and `node/<node>/default_instance/<module>` name the instance that `<module>@cluster` and
 * `<module>@node` authorization selectors grant to (src/agent/authorizations.ts reads them). An
 * instance takes each key only while it is missing (SET NX: the first instance of a module
 * keeps it); removal deletes every default-instance key whose value is the removed instance.
 */
import type { Redis } from 'ioredis';
import { RedisError } from '../errors.js';
import { imageModuleName } from '../repository/resolve.js';
import { scanKeys } from '../state/scan.js';

/** `cluster/default_instance/<module>`. */
export function clusterDefaultInstanceKey(module: string): string {
  return `cluster/default_instance/${module}`;
}

/** `node/<node>/default_instance/<module>`. */
export function nodeDefaultInstanceKey(node: number | string, module: string): string {
  return `node/${node}/default_instance/${module}`;
}

/** NS8's `image_id` of an image URL (`ghcr.io/x/webapp:1.0` -> `webapp`), which names the keys. */
export function defaultInstanceModule(imageUrl: string): string {
  return imageModuleName(imageUrl);
}

/**
 * Sets the keys that are missing to `id` (SET NX each, one MULTI). Returns the keys it set (none
 * when another instance holds them already).
 * @throws RedisError when Redis refuses.
 */
export async function claimDefaultInstance(redis: Redis, id: string, node: number, module: string, which: { cluster: boolean; node: boolean }): Promise<string[]> {
  const wanted = [...(which.cluster ? [clusterDefaultInstanceKey(module)] : []), ...(which.node ? [nodeDefaultInstanceKey(node, module)] : [])];
  if (!wanted.length) return [];
  const tx = redis.multi();
  for (const k of wanted) tx.set(k, id, 'NX');
  const res = (await tx.exec()) ?? [];
  const set: string[] = [];
  res.forEach(([err, v], i) => {
    if (err) throw new RedisError('redis_command_failed', `${id}: setting ${wanted[i]} failed: ${err.message}`, { cause: err });
    if (v === 'OK') set.push(wanted[i]!);
  });
  return set;
}

const RELEASE_SCRIPT = `
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    redis.call('DEL', k)
    n = n + 1
  end
end
return n
`;

/**
 * Deletes every `cluster/default_instance/<module>` and `node/<n>/default_instance/<module>` key whose value is
 * `id`, as NS8's remove-module does (a key another instance took meanwhile is kept: compared and
 * deleted in one script). Returns how many were deleted.
 * @throws RedisError when Redis refuses.
 */
export async function releaseDefaultInstance(redis: Redis, id: string): Promise<number> {
  try {
    const found = [...(await scanKeys(redis, 'cluster/default_instance/*')), ...(await scanKeys(redis, 'node/*/default_instance/*'))];
    if (!found.length) return 0;
    return Number(await redis.eval(RELEASE_SCRIPT, found.length, ...found, id));
  } catch (err) {
    if (err instanceof RedisError) throw err;
    throw new RedisError('redis_command_failed', `${id}: removing its default_instance keys failed: ${(err as Error).message}`, { cause: err });
  }
}
