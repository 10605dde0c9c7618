import { createRequire } from 'node:module';
import net from 'node:net';
import type * as IoRedis from 'ioredis';
import type { Redis, RedisOptions as IoRedisOptions } from 'ioredis';

import { EXIT_REDIS, RedisError } from '../errors.js';
import type { CommandRunner } from '../host/runner.js';
import { ADMIN_USER, applyDefaultUserRule, embeddedPaths, readAdminPassword, startEmbeddedRedis } from './embedded-redis.js';
import { maskUrl } from '../runtime/mask-url.js';
import { liteHandshake, liteRedis } from './lite-redis.js';

/** ioredis options without the reply mapping (ns8ctl uses the default one). */
type RedisOptions = Omit<IoRedisOptions, 'replyMapping'>;

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
  /** Bound of connect + authenticate + PING + SELECT, ms (default 10000). */
  connectTimeoutMs?: number;
  /** Bound of each non-blocking command, ms (default 30000; blocking reads are not bounded). */
  commandTimeoutMs?: number;
  /**
   * Serve the read commands of one-shot commands through the small client of lite-redis.ts, so
   * ioredis is loaded only when something else is sent (default false). Not for TLS (rediss://).
   */
  lite?: boolean;
}

export interface Connection {
  redis: Redis;
  /** The URL connected to, password masked: for messages. */
  url: string;
  /** True when ns8ctl started or reused its own embedded server. */
  embedded: boolean;
}

/** The project's one URL rule (src/runtime/mask.ts re-exports it); kept exported here for callers of this module. */
export { maskUrl };

/** What `parseRedisUrl` found in a `redis://` or `rediss://` URL. */
export interface RedisTarget {
  host: string;
  port: number;
  db: number;
  tls: boolean;
  username?: string;
  password?: string;
}

const URL_FORMS = 'redis://HOST[:PORT][/DB] (credentials: USER:PASSWORD@ before HOST) or rediss://... (TLS)';

function badUrl(url: string, why: string): RedisError {
  return new RedisError('redis_url_invalid', `invalid Redis URL ${JSON.stringify(maskUrl(url.slice(0, 200)))}: ${why}; expected ${URL_FORMS} (--redis or NS8CTL_REDIS_URL)`, { exitCode: EXIT_REDIS });
}

/**
 * Parses a Redis URL strictly: scheme `redis:` or `rediss:`, a host, a port 1-65535 (default
 * 6379), an optional database number (`/3`, 0-999999), user and password percent-decoded, no
 * query or fragment. Anything else is a `redis_url_invalid` error naming the masked URL.
 */
export function parseRedisUrl(url: string): RedisTarget {
  if (url.length > 2048) throw badUrl(url, 'longer than 2048 characters');
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(url)?.[1]?.toLowerCase();
  if (!scheme) throw badUrl(url, 'not a URL');
  if (scheme !== 'redis' && scheme !== 'rediss') throw badUrl(url, `scheme "${scheme}:" is not a Redis scheme`);
  const authority = url.slice(scheme.length + 3).split(/[/?#]/, 1)[0] ?? '';
  const hostPort = authority.slice(authority.lastIndexOf('@') + 1);
  const portText = /:([^:\]]*)$/.exec(hostPort)?.[1];
  if (portText !== undefined && portText !== '') {
    const port = Number(portText);
    if (!/^\d{1,5}$/.test(portText) || port < 1 || port > 65535) throw badUrl(url, `port "${portText}" is not a number from 1 to 65535`);
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw badUrl(url, 'it does not parse as a URL');
  }
  if (!u.hostname) throw badUrl(url, 'no host');
  if (u.search || u.hash) throw badUrl(url, 'query parameters and fragments are not supported');
  const dbText = u.pathname.replace(/^\//, '');
  if (dbText !== '' && !/^\d{1,6}$/.test(dbText)) throw badUrl(url, `the path "/${dbText}" is not a database number`);
  const decode = (s: string): string => {
    try {
      return decodeURIComponent(s);
    } catch {
      throw badUrl(url, 'bad percent-encoding in the user or password');
    }
  };
  return {
    host: u.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: u.port ? Number(u.port) : 6379,
    db: dbText === '' ? 0 : Number(dbText),
    tls: scheme === 'rediss',
    ...(u.username ? { username: decode(u.username) } : {}),
    ...(u.password ? { password: decode(u.password) } : {}),
  };
}

async function answersTcp(host: string, port: number, timeoutMs = 300): Promise<boolean> {
  return probe(net.connect({ host, port }), timeoutMs);
}

async function answersSocket(file: string, timeoutMs = 300): Promise<boolean> {
  return probe(net.connect({ path: file }), timeoutMs);
}

async function probe(s: net.Socket, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** Commands that wait for data by design: never cut short by the command timeout. */
const BLOCKING = new Set(['blpop', 'brpop', 'brpoplpush', 'blmove', 'blmpop', 'bzpopmin', 'bzpopmax', 'bzmpop', 'wait', 'waitaof', 'subscribe', 'psubscribe', 'ssubscribe', 'monitor']);

function isBlocking(name: string, args: readonly unknown[]): boolean {
  const n = name.toLowerCase();
  if (BLOCKING.has(n)) return true;
  return (n === 'xread' || n === 'xreadgroup') && args.some((a) => String(a).toUpperCase() === 'BLOCK');
}

interface Explain {
  /** Masked URL for messages. */
  url: string;
  /** True when the connection has no credentials (`default` user). */
  anonymous: boolean;
  /** True when the URL came from --redis or NS8CTL_REDIS_URL. */
  given: boolean;
  stateDir: string;
}

type SendCommand = Redis['sendCommand'];
type SentCommand = Parameters<SendCommand>[0];

const requireHere = createRequire(import.meta.url);

type BoundedRedisClass = new (options: RedisOptions, explain: Explain) => Redis;
let boundedRedis: BoundedRedisClass | undefined;

/**
 * An ioredis client whose non-blocking commands time out (`commandTimeout`), and whose failures
 * say what to do: a command timeout names the URL (a stopped or overloaded server), a NOPERM on
 * a connection without credentials says which credentials reading desired state needs.
 * `duplicate()` keeps both. ioredis (a CommonJS package) is loaded on the first call: a command
 * served by the small client never loads it.
 */
function boundedRedisClass(): BoundedRedisClass {
  if (boundedRedis) return boundedRedis;
  const { Redis: Base } = requireHere('ioredis') as typeof IoRedis;
  boundedRedis = class BoundedRedis extends Base {
    constructor(options: RedisOptions, private readonly explain: Explain) {
      super(options);
    }

    /**
     * A second connection (subscribers, blocking readers) with the same bounds and reconnection.
     * Socket errors while Redis restarts are reported through the commands that fail, so they are
     * not also thrown as unhandled 'error' events.
     */
    override duplicate(override?: Partial<RedisOptions>): Redis {
      const copy = new BoundedRedis({ ...this.options, ...(override ?? {}) }, this.explain);
      copy.on('error', () => undefined);
      return copy;
    }

    override sendCommand(command: SentCommand, stream?: Parameters<SendCommand>[1]): unknown {
      // The explanation goes into the command's own rejection, so pipelines and MULTI get it too.
      const reject = command.reject.bind(command);
      const timeoutMs = this.options.commandTimeout;
      command.reject = (err: Error): void => reject(commandFault(err, command.name, this.explain, timeoutMs) as Error);
      let sent: unknown;
      if (isBlocking(command.name, command.args)) {
        const saved = this.options.commandTimeout;
        this.options.commandTimeout = undefined;
        try {
          sent = super.sendCommand(command, stream);
        } finally {
          this.options.commandTimeout = saved;
        }
      } else {
        sent = super.sendCommand(command, stream);
      }
      return sent;
    }
  };
  return boundedRedis;
}

function commandFault(err: unknown, command: string, e: Explain, timeoutMs: number | undefined): unknown {
  const message = (err as Error | undefined)?.message ?? '';
  if (message === 'Command timed out') {
    return new RedisError('redis_timeout', `Redis at ${e.url} did not answer ${command.toUpperCase()} within ${(timeoutMs ?? 0) / 1000} s: is the server stopped (SIGSTOP, a paused container) or overloaded? Check it, then run the command again`, { cause: err, exitCode: EXIT_REDIS });
  }
  if (e.anonymous && /^NOPERM/.test(message)) {
    const p = embeddedPaths(e.stateDir);
    return new RedisError(
      'redis_permission_denied',
      `Redis at ${e.url} refused ${command.toUpperCase()} to the default user (no credentials): desired objects and other keys that may hold secrets are readable only with credentials. ` +
        (e.given
          ? `Put a user and password that may read them in the URL (redis://USER:PASSWORD@host:port). `
          : `Run ns8ctl as the user (root) whose state dir holds that Redis' admin password (redis/admin.password; ${p.password} does not exist), or pass --redis redis://${ADMIN_USER}:PASSWORD@host:port (or NS8CTL_REDIS_URL). `) +
        `Redis said: ${message}`,
      { cause: err, exitCode: EXIT_REDIS },
    );
  }
  return err;
}

/** Backoff between reconnections of a proven connection: 100 ms, 200 ms, ... capped at 2 s, forever. */
export function reconnectDelay(times: number): number {
  return Math.min(100 * times, 2000);
}

/**
 * Opens a client and proves it talks to a Redis that accepts it, within `timeoutMs`: connect (TCP,
 * TLS or Unix socket), authenticate, PING, and SELECT the database when it is not 0. Every
 * failure is a `RedisError` with exit code EXIT_REDIS naming `shownUrl`.
 */
async function open(target: RedisOptions, shown: Explain, name: string | undefined, opts: { connectTimeoutMs: number; commandTimeoutMs: number; tls: boolean }): Promise<Redis> {
  const db = target.db ?? 0;
  const redis = new (boundedRedisClass())(
    {
      ...target,
      lazyConnect: true,
      connectTimeout: opts.connectTimeoutMs,
      commandTimeout: opts.commandTimeoutMs,
      maxRetriesPerRequest: 2,
      enableOfflineQueue: true,
      retryStrategy: (times) => (times > 3 ? null : 100 * times),
      // The ready check runs INFO, which NS8's read-only `default` may not (ioredis would warn).
      enableReadyCheck: !shown.anonymous,
      ...(name ? { connectionName: name } : {}),
    },
    shown,
  );
  // ioredis retries, then rejects with a bare "Connection is closed.": the first socket error
  // (ECONNREFUSED, ENOTFOUND, ...) says why, so it is kept for the message and as the cause.
  let socketError: Error | undefined;
  let connected = false;
  const remember = (e: Error): void => {
    socketError ??= e;
  };
  const onConnect = (): void => {
    connected = true;
  };
  redis.on('error', remember);
  redis.on('connect', onConnect);
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    // A reply that arrived while the event loop was busy is read (poll phase) before giving up.
    timer = setTimeout(() => setImmediate(() => reject(noAnswer(shown.url, opts.connectTimeoutMs, connected, opts.tls, socketError))), opts.connectTimeoutMs);
  });
  try {
    await Promise.race([
      (async () => {
        await redis.connect();
        await redis.ping();
        if (db !== 0) await selectDb(redis, db, shown.url);
      })(),
      deadline,
    ]);
  } catch (err) {
    redis.disconnect();
    if (err instanceof RedisError) throw err;
    throw unreachable(shown.url, err as Error, socketError);
  } finally {
    clearTimeout(timer);
  }
  // Once proven, the connection outlives Redis restarts: a long-running controller or node agent
  // reconnects with capped backoff for as long as it runs (restarts are normal), while each
  // command still fails within maxRetriesPerRequest reconnections, so one-shot commands stay bounded.
  redis.options.retryStrategy = reconnectDelay;
  // Later errors are reported through the command that fails.
  redis.off('error', remember);
  redis.off('connect', onConnect);
  redis.on('error', () => undefined);
  return redis;
}

/**
 * `open` through the small client (lite-redis.ts): connect, AUTH, CLIENT SETNAME, SELECT and PING
 * sent at once, within `connectTimeoutMs` (else the same `redis_timeout` error as `open`). Any
 * other failure (refused, wrong password, missing database, a server still loading) is left to
 * `open`, so its messages and retries are ioredis' own. The full ioredis client behind the small
 * one (see liteRedis) gets the options `open` gives a proven connection.
 */
async function openLite(target: RedisOptions, shown: Explain, name: string | undefined, opts: { connectTimeoutMs: number; commandTimeoutMs: number; tls: boolean }): Promise<Redis> {
  const db = target.db ?? 0;
  const socket = target.path ? net.connect({ path: target.path }) : net.connect({ host: target.host ?? '127.0.0.1', port: target.port ?? 6379 });
  socket.setNoDelay(true);
  let connected = false;
  socket.once('connect', () => (connected = true));
  const commands: [string, string[]][] = [];
  if (target.password !== undefined) commands.push(['AUTH', target.username ? [target.username, target.password] : [target.password]]);
  if (name) commands.push(['CLIENT', ['SETNAME', name]]);
  if (db !== 0) commands.push(['SELECT', [String(db)]]);
  commands.push(['PING', []]);
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<'timeout'>((resolve) => {
    // A reply that arrived while the event loop was busy is read (poll phase) before giving up.
    timer = setTimeout(() => setImmediate(() => resolve('timeout')), opts.connectTimeoutMs);
  });
  let replies: unknown[] | 'timeout' | undefined;
  try {
    replies = await Promise.race([liteHandshake(socket, commands), deadline]);
  } catch {
    replies = undefined;
  } finally {
    clearTimeout(timer);
  }
  if (replies === 'timeout') {
    socket.destroy();
    throw noAnswer(shown.url, opts.connectTimeoutMs, connected, false);
  }
  // A refused CLIENT SETNAME is ignored, as ioredis ignores it.
  const proven = replies !== undefined && replies.at(-1) === 'PONG' && replies.every((r, i) => !(r instanceof Error) || commands[i]![0] === 'CLIENT');
  if (!proven) {
    socket.destroy();
    return open(target, shown, name, opts);
  }
  return liteRedis(socket, {
    commandTimeoutMs: opts.commandTimeoutMs,
    fault: (err, command) => commandFault(err, command, shown, opts.commandTimeoutMs) as Error,
    full: () => {
      const full = new (boundedRedisClass())(
        {
          ...target,
          connectTimeout: opts.connectTimeoutMs,
          commandTimeout: opts.commandTimeoutMs,
          maxRetriesPerRequest: 2,
          enableOfflineQueue: true,
          retryStrategy: reconnectDelay,
          enableReadyCheck: !shown.anonymous,
          ...(name ? { connectionName: name } : {}),
        },
        shown,
      );
      full.on('error', () => undefined);
      return full;
    },
  });
}

async function selectDb(redis: Redis, db: number, url: string): Promise<void> {
  try {
    await redis.select(db);
  } catch (err) {
    const have = await redis.config('GET', 'databases').then((r) => (r as string[])[1]).catch(() => undefined);
    throw new RedisError('redis_db_missing', `Redis at ${url} has no database ${db}${have ? ` (it has ${have}: 0 to ${Number(have) - 1})` : ''}: ${(err as Error).message}. Use a database number it has (NS8 uses 0: leave the path out)`, { cause: err, exitCode: EXIT_REDIS });
  }
}

function noAnswer(url: string, ms: number, connected: boolean, tls: boolean, socketError?: Error): RedisError {
  const s = ms / 1000;
  const why = tls && !connected
    ? `no TLS handshake within ${s} s: rediss:// needs a server that speaks TLS; if this is a plain Redis port, use redis://`
    : connected
      ? `the server accepted the connection but did not answer within ${s} s: is it stopped (SIGSTOP, a paused container), overloaded, or not Redis?`
      : `no connection within ${s} s${socketError ? ` (${socketError.message})` : ''}: is the host reachable and the port right?`;
  return new RedisError('redis_timeout', `cannot connect to Redis at ${url}: ${why}`, { cause: socketError, exitCode: EXIT_REDIS });
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
  return new RedisError('redis_unreachable', `cannot connect to Redis at ${maskUrl(url)}: ${why}${hint}`, { cause: first ?? err, exitCode: EXIT_REDIS });
}

function targetOptions(t: RedisTarget): RedisOptions {
  return {
    host: t.host,
    port: t.port,
    db: t.db,
    ...(t.tls ? { tls: net.isIP(t.host) ? {} : { servername: t.host } } : {}),
    ...(t.username ? { username: t.username } : {}),
    ...(t.password !== undefined ? { password: t.password } : {}),
  };
}

/**
 * Connects to the Redis ns8ctl should use:
 * 1. `--redis URL`, else `NS8CTL_REDIS_URL` (validated by `parseRedisUrl`);
 * 2. else, when the state dir has an embedded server (its admin password file), that server over
 *    its Unix socket in the root-only state dir, started first when it is down. The admin
 *    password never goes over TCP: if the embedded server is down and something else listens on
 *    its TCP port, ns8ctl refuses (`redis_port_taken`) instead of authenticating to it;
 * 3. else whatever answers on 127.0.0.1:6379 (`NS8CTL_EMBEDDED_PORT` changes the port), without
 *    credentials (user `default`);
 * 4. else a new embedded redis-server (data, password, socket under the state dir).
 * Every connection is proven (PING, SELECT) within `connectTimeoutMs`; failures are `RedisError`s
 * with exit code EXIT_REDIS naming the masked URL and what to do.
 */
export async function connectRedis(opts: ConnectOptions): Promise<Connection> {
  const env = opts.env ?? process.env;
  const timeouts = { connectTimeoutMs: opts.connectTimeoutMs ?? 10_000, commandTimeoutMs: opts.commandTimeoutMs ?? 30_000 };
  const given = opts.url ?? env.NS8CTL_REDIS_URL;
  if (given) {
    const t = parseRedisUrl(given);
    const shown = { url: maskUrl(given), anonymous: !t.password, given: true, stateDir: opts.stateDir };
    return { redis: await (opts.lite && !t.tls ? openLite : open)(targetOptions(t), shown, opts.name, { ...timeouts, tls: t.tls }), url: shown.url, embedded: false };
  }
  const portText = env.NS8CTL_EMBEDDED_PORT ?? '6379';
  const port = Number(portText);
  if (!/^\d{1,5}$/.test(portText) || port < 1 || port > 65535) {
    throw new RedisError('redis_url_invalid', `NS8CTL_EMBEDDED_PORT=${JSON.stringify(portText.slice(0, 50))} is not a port number from 1 to 65535`, { exitCode: EXIT_REDIS });
  }
  const tcpUrl = `redis://127.0.0.1:${port}`;
  const p = embeddedPaths(opts.stateDir);
  const socketUrl = `unix://${p.socket}`;
  const embedded = async (password: string): Promise<Connection> => {
    const shown = { url: socketUrl, anonymous: false, given: false, stateDir: opts.stateDir };
    const redis = await (opts.lite ? openLite : open)({ path: p.socket, username: ADMIN_USER, password }, shown, opts.name, { ...timeouts, tls: false });
    try {
      await applyDefaultUserRule(redis);
    } catch (err) {
      redis.disconnect();
      throw err;
    }
    return { redis, url: socketUrl, embedded: true };
  };
  const start = async (): Promise<Connection> => {
    if (opts.startEmbedded === false) throw new RedisError('redis_not_running', `no Redis URL given, the embedded Redis of ${opts.stateDir} is not running and nothing answers on ${tcpUrl}: start it with any ns8ctl command that may start it (e.g. ns8ctl get modules), or pass --redis URL`, { exitCode: EXIT_REDIS });
    const waitReady = async (): Promise<void> => {
      const deadline = Date.now() + 10_000;
      while (!(await answersSocket(p.socket))) {
        if (Date.now() > deadline) throw new RedisError('redis_server_failed', `no answer on ${p.socket} within 10 s`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const { password } = await startEmbeddedRedis(opts.stateDir, { port, waitReady }, opts.runner);
    return embedded(password);
  };

  const password = readAdminPassword(opts.stateDir);
  if (password) {
    if (await answersSocket(p.socket)) return embedded(password);
    if (await answersTcp('127.0.0.1', port)) {
      throw new RedisError(
        'redis_port_taken',
        `the embedded Redis of ${opts.stateDir} is not running (nothing answers on ${p.socket}), and another process listens on its port ${tcpUrl}; ns8ctl does not send the admin password there. ` +
          `Stop that process, set NS8CTL_EMBEDDED_PORT to a free port, or pass --redis URL to use that server`,
        { exitCode: EXIT_REDIS },
      );
    }
    return start();
  }
  if (await answersTcp('127.0.0.1', port)) {
    // A plain local Redis (not one this state dir started): no credentials to send.
    const shown = { url: tcpUrl, anonymous: true, given: false, stateDir: opts.stateDir };
    return { redis: await (opts.lite ? openLite : open)({ host: '127.0.0.1', port }, shown, opts.name, { ...timeouts, tls: false }), url: tcpUrl, embedded: false };
  }
  return start();
}
