import net from 'node:net';
import { Redis } from 'ioredis';
import { RedisError } from '../errors.js';
import type { CommandRunner } from '../host/runner.js';
import { ADMIN_USER, readAdminPassword, startEmbeddedRedis } from './embedded-redis.js';

export interface ConnectOptions {
  /** `--redis URL`; wins over the environment. */
  url?: string | undefined;
  stateDir: string;
  env?: NodeJS.ProcessEnv;
  runner: CommandRunner;
  /** Connection name shown in CLIENT LIST (NS8 agents use their agent id). */
  name?: string;
  /** When false, never start the embedded server: fail if nothing answers (default true). */
  startEmbedded?: boolean;
}

export interface Connection {
  redis: Redis;
  /** The URL connected to, password masked: for messages. */
  url: string;
  /** True when ns8ctl started or reused its own embedded server. */
  embedded: boolean;
}

/** Masks the password of a redis URL for messages. */
export function maskUrl(url: string): string {
  return url.replace(/(redis(?:s)?:\/\/[^:@/]*:)[^@]*@/, '$1***@');
}

async function answers(host: string, port: number, timeoutMs = 300): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

async function open(url: string, name: string | undefined, password?: string): Promise<Redis> {
  const redis = new Redis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 2,
    enableOfflineQueue: true,
    retryStrategy: (times) => (times > 3 ? null : 100 * times),
    ...(name ? { connectionName: name } : {}),
    ...(password ? { username: ADMIN_USER, password } : {}),
  });
  // ioredis retries, then rejects with a bare "Connection is closed.": the first socket error
  // (ECONNREFUSED, ENOTFOUND, ...) says why, so it is kept for the message and as the cause.
  let socketError: Error | undefined;
  const remember = (e: Error): void => {
    socketError ??= e;
  };
  redis.on('error', remember);
  try {
    await redis.connect();
    await redis.ping();
  } catch (err) {
    redis.disconnect();
    throw unreachable(url, err as Error, socketError);
  }
  // Later errors are reported through the command that fails.
  redis.off('error', remember);
  redis.on('error', () => undefined);
  return redis;
}

/**
 * The error for a failed connection to `url`: names the URL (password masked), the socket error
 * when there was one (`connect ECONNREFUSED 127.0.0.1:6390`) and what ioredis finally said,
 * with a hint for authentication failures. The cause is the socket error, else `err`.
 */
export function unreachable(url: string, err: Error, socketError?: Error): RedisError {
  const final = err.message;
  const first = socketError && socketError.message !== final ? socketError : undefined;
  const code = (first as NodeJS.ErrnoException | undefined)?.code;
  const why = first ? `${first.message}${code && !first.message.includes(code) ? ` (${code})` : ''}; ${final}` : final;
  const hint = /NOAUTH|WRONGPASS|NOPERM/.test(why)
    ? ' (check the user and password in the URL)'
    : /ENOTFOUND|EAI_AGAIN/.test(why)
      ? ' (check the host name in the URL)'
      : /ECONNREFUSED/.test(why)
        ? ' (is redis-server running and listening there?)'
        : '';
  return new RedisError('redis_unreachable', `cannot connect to Redis at ${maskUrl(url)}: ${why}${hint}`, { cause: first ?? err });
}

/**
 * Connects to the Redis ns8ctl should use: `--redis URL`, else `NS8CTL_REDIS_URL`, else whatever
 * answers on 127.0.0.1:6379 (`NS8CTL_EMBEDDED_PORT` changes the port), else an embedded
 * redis-server started from PATH with persistence under the state dir (reused next time, with
 * the admin password kept in a root-only file there).
 */
export async function connectRedis(opts: ConnectOptions): Promise<Connection> {
  const env = opts.env ?? process.env;
  const given = opts.url ?? env.NS8CTL_REDIS_URL;
  if (given) return { redis: await open(given, opts.name), url: maskUrl(given), embedded: false };
  const port = Number(env.NS8CTL_EMBEDDED_PORT ?? 6379);
  const url = `redis://127.0.0.1:${port}`;
  let password = readAdminPassword(opts.stateDir);
  if (!(await answers('127.0.0.1', port))) {
    if (opts.startEmbedded === false) throw new RedisError('redis_not_running', `no Redis URL given and nothing answers on ${url}`);
    ({ password } = await startEmbeddedRedis(opts.stateDir, port, opts.runner));
    const deadline = Date.now() + 10_000;
    while (!(await answers('127.0.0.1', port))) {
      if (Date.now() > deadline) throw new RedisError('redis_server_failed', `the embedded redis-server did not answer on ${url} within 10 s`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return { redis: await open(url, opts.name, password), url, embedded: true };
  }
  // Something answers: ours (we have its password) or a plain local Redis.
  if (password) {
    try {
      return { redis: await open(url, opts.name, password), url, embedded: true };
    } catch {
      // Not the server this state dir started: fall through to an anonymous connection.
    }
  }
  return { redis: await open(url, opts.name), url, embedded: false };
}
