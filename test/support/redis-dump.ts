import type { Redis } from 'ioredis';

/** Every key with its type, value and TTL: equal dumps mean nothing changed in Redis. */
export async function dumpRedis(redis: Redis): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const names = (await redis.keys('*')).sort();
  for (const k of names) {
    const type = await redis.type(k);
    let value: unknown;
    if (type === 'string') value = await redis.get(k);
    else if (type === 'hash') value = await redis.hgetall(k);
    else if (type === 'set') value = (await redis.smembers(k)).sort();
    else if (type === 'list') value = await redis.lrange(k, 0, -1);
    else if (type === 'zset') value = await redis.zrange(k, '0', '-1', 'WITHSCORES');
    else value = `<${type}>`;
    out[k] = { type, value, ttl: await redis.ttl(k) };
  }
  return out;
}
