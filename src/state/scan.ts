import type { Redis } from 'ioredis';

/**
 * Every key matching `pattern` (SCAN, never KEYS: the server is not blocked), unique and sorted.
 * Bounded: stops after 10,000 SCAN rounds whatever the server answers.
 */
export async function scanKeys(redis: Redis, pattern: string, count = 1000): Promise<string[]> {
  const out = new Set<string>();
  let cursor = '0';
  let rounds = 0;
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', count);
    for (const k of batch) out.add(k);
    cursor = next;
  } while (cursor !== '0' && ++rounds < 10_000);
  return [...out].sort();
}

/** The `<name>` parts of the keys `<prefix><name>` (names holding a `/` left out unless `nested`). */
export async function scanNames(redis: Redis, prefix: string, opts: { nested?: boolean; count?: number } = {}): Promise<string[]> {
  return (await scanKeys(redis, `${prefix}*`, opts.count)).map((k) => k.slice(prefix.length)).filter((n) => n !== '' && (opts.nested || !n.includes('/')));
}
