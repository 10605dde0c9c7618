/**
 * Redis connections for processes that run for months: duplicates of the CLI's connection (same
 * URL, credentials and TLS) that reconnect forever with capped backoff instead of giving up
 * after a few tries, and fail a command quickly while disconnected (the work queue retries it).
 */
import type { Redis } from 'ioredis';
import { RedisError } from '../errors.js';

/** Reconnect delay: 100 ms doubling to 5 s. */
export function reconnectDelay(times: number): number {
  return Math.min(5000, 100 * 2 ** Math.min(times, 6));
}

/**
 * A new connection like `base`, reconnecting forever. `name` shows in CLIENT LIST.
 * `commandTimeoutMs`: a command without an answer after this long rejects ("Command timed out"),
 * so a Redis that hangs (connected but silent) cannot hold a step, or a stop, forever. Leave it
 * out for connections that run blocking commands or only subscribe.
 * @throws RedisError `redis_unreachable` when the first connection fails.
 */
export async function longLivedConnection(base: Redis, name: string, opts: { commandTimeoutMs?: number } = {}): Promise<Redis> {
  const r = base.duplicate({
    lazyConnect: true,
    connectionName: name,
    retryStrategy: reconnectDelay,
    maxRetriesPerRequest: 1,
    enableOfflineQueue: true,
    ...(opts.commandTimeoutMs !== undefined ? { commandTimeout: opts.commandTimeoutMs } : {}),
  });
  r.on('error', () => undefined); // reported by the commands that fail
  try {
    await r.connect();
  } catch (err) {
    r.disconnect();
    throw new RedisError('redis_unreachable', `cannot open the ${name} connection to Redis: ${(err as Error).message}`, { cause: err });
  }
  return r;
}
