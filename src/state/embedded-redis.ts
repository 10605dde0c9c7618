import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import type { CommandRunner } from '../host/runner.js';
import { EXIT_REDIS, RedisError } from '../errors.js';

/** Name of the admin ACL user ns8ctl uses on a Redis it manages. */
export const ADMIN_USER = 'ns8ctl';

/**
 * Keys the passwordless `default` user may read (NS8's `cluster/*`, `node/*`, `module/*`, and the
 * ns8ctl keys that hold status, never secrets). Not listed, so unreadable without credentials:
 * `ns8ctl/desired/*` (objects with `spec.configuration`, passwords included),
 * `ns8ctl/configuration/*` (hashes of configurations and task ids), `ns8ctl/inventory/*`,
 * `ns8ctl/inventories`, `ns8ctl/relay/*` (relayed task payloads) and any key added later.
 */
export const DEFAULT_USER_KEY_PATTERNS: readonly string[] = [
  'cluster/*', 'node/*', 'module/*',
  'ns8ctl/status/*', 'ns8ctl/conditions/*', 'ns8ctl/events', 'ns8ctl/node/*', 'ns8ctl/cluster/epoch',
  'ns8ctl/source/*', 'ns8ctl/suspend/*', 'ns8ctl/controller/leader',
];

/**
 * ACL rule of `default` while the server runs: NS8's read-only rule (read commands, connection
 * commands, subscribe on every channel, nothing of `@admin`) on the keys above. SCAN and KEYS stay
 * allowed as in NS8 (its Python agent lists service providers with SCAN as `default`): they show
 * key names, never values.
 */
export const DEFAULT_USER_RULE: readonly string[] = [
  'on', 'nopass', 'resetkeys', ...DEFAULT_USER_KEY_PATTERNS.map((p) => `~${p}`),
  'resetchannels', '&*', 'nocommands', '+@read', '+@connection', '+subscribe', '+psubscribe', '-@admin',
];

/**
 * ACL rule of `default` in the ACL file a server starts with. Redis 7.0 replays the append-only
 * file as a fake client of user `default`, and EXEC re-checks the ACLs of the queued commands, so
 * with the read-only rule every MULTI/EXEC (each multi-write Lua script is logged as one) is
 * refused on replay and lost. While the file loads, `default` is therefore allowed everything but
 * switched off (`off`: no connection can be or become `default`, so unauthenticated clients get
 * NOAUTH); `applyDefaultUserRule` sets the read-only rule once loading is finished.
 */
export const DEFAULT_USER_LOADING_RULE = 'user default off nopass ~* &* +@all';

/** Files of the embedded server inside the state directory. */
export function embeddedPaths(stateDir: string): { dir: string; acl: string; password: string; pid: string; log: string; socket: string; aof: string } {
  const dir = path.join(stateDir, 'redis');
  return {
    dir,
    acl: path.join(dir, 'users.acl'),
    password: path.join(dir, 'admin.password'),
    pid: path.join(dir, 'redis.pid'),
    log: path.join(dir, 'redis.log'),
    socket: path.join(dir, 'redis.sock'),
    aof: path.join(dir, 'appendonlydir'),
  };
}

/**
 * Reads the admin password of a Redis that ns8ctl manages, or undefined when this state dir never
 * had an embedded server. Fails with `redis_password_missing` (naming the file and what to do)
 * when the server's ACL file exists but the password file is gone or empty: a new password would
 * not match the one the server knows.
 */
export function readAdminPassword(stateDir: string): string | undefined {
  const p = embeddedPaths(stateDir);
  const password = existsSync(p.password) ? readFileSync(p.password, 'utf8').trim() : '';
  if (password) return password;
  if (existsSync(p.acl)) {
    throw new RedisError(
      'redis_password_missing',
      `the admin password file ${p.password} is missing or empty, but the embedded Redis in ${p.dir} was set up with one (${p.acl} names user ${ADMIN_USER}). ` +
        `Restore the file from a backup; or, to set a new password (the data is kept), stop the embedded redis-server (kill the pid in ${p.pid}) and delete ${p.acl}: the next ns8ctl command makes a new password`,
      { exitCode: EXIT_REDIS },
    );
  }
  return undefined;
}

/**
 * The ACL file a server starts with: `default` as `DEFAULT_USER_LOADING_RULE`, the `ns8ctl` admin
 * user with the password's SHA-256. Nodes and the embedded server use the same file.
 */
export function renderAclFile(adminPassword: string): string {
  const sha = createHash('sha256').update(adminPassword).digest('hex');
  return [DEFAULT_USER_LOADING_RULE, `user ${ADMIN_USER} on #${sha} ~* &* +@all`, ''].join('\n');
}

/**
 * Pure: an ACL file as `ACL SAVE` left it (read-only `default`, module users, admin), with the
 * `default` line replaced by `DEFAULT_USER_LOADING_RULE` (added when missing). Every other line is
 * kept as is, so users created at run time survive the restart.
 */
export function aclFileForStart(content: string): string {
  const lines = content.split('\n').filter((l) => l.trim() !== '' && !/^\s*user\s+default(\s|$)/.test(l));
  return [DEFAULT_USER_LOADING_RULE, ...lines, ''].join('\n');
}

/**
 * Makes every file under `dir` 0600 and every directory 0700 (the directory itself included),
 * whatever modes they had: the append-only files and the ACL file hold desired state and
 * password hashes. Symbolic links are left alone (never followed). Bounded by the tree's size.
 */
export function restrictTree(dir: string): void {
  chmodSync(dir, 0o700);
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) restrictTree(p);
    else if (entry.isFile()) chmodSync(p, 0o600);
  }
}

function writeAtomic(file: string, content: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, content, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
}

/** Reads at most the last `max` bytes of `file` (empty when missing). */
function tail(file: string, from: number, max = 4096): string {
  if (!existsSync(file)) return '';
  const size = statSync(file).size;
  const start = Math.max(from, size - max);
  if (size <= start) return '';
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(size - start);
    readSync(fd, buf, 0, buf.length, start);
    return buf.toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/** Longest Unix socket path Linux accepts (sun_path is 108 bytes with the NUL). */
const MAX_SOCKET_PATH = 107;

/** Options of `startEmbeddedRedis`. */
export interface EmbeddedStart {
  /** TCP port on 127.0.0.1 for NS8 tools (ns8ctl itself uses the Unix socket). */
  port: number;
  /** Resolves once the server answers on its socket; the caller bounds it. */
  waitReady: () => Promise<void>;
}

/**
 * Starts a persistent redis-server (from PATH), daemonized so the next ns8ctl run reuses it:
 * data, ACL file, log and Unix socket (mode 0700) in `<state-dir>/redis`, TCP on 127.0.0.1:`port`.
 * Before it starts: the state dir and `redis/` are made 0700 and every file in them 0600 (and the
 * server runs with umask 077, so files it creates later are 0600 too), the admin password is
 * created on first start, and the ACL file's `default` line is set to the loading rule
 * (`aclFileForStart`). Persistence: append-only file, fsync before each write is acknowledged
 * (`appendfsync always`). The caller must then call `applyDefaultUserRule` as admin.
 * Fails with a clear install hint when redis-server is missing, with the log's last lines when it
 * does not come up.
 */
export async function startEmbeddedRedis(stateDir: string, opts: EmbeddedStart, runner: CommandRunner): Promise<{ password: string }> {
  const p = embeddedPaths(stateDir);
  if (p.socket.length > MAX_SOCKET_PATH) {
    throw new RedisError('state_dir_too_long', `the state directory ${stateDir} is too long for the embedded Redis' Unix socket (${p.socket} is ${p.socket.length} characters; at most ${MAX_SOCKET_PATH}): pass a shorter --state-dir or NS8CTL_STATE_DIR`, { exitCode: EXIT_REDIS });
  }
  mkdirSync(p.dir, { recursive: true, mode: 0o700 });
  chmodSync(stateDir, 0o700);
  if (lstatSync(p.dir).isSymbolicLink()) throw new RedisError('state_dir_unsafe', `${p.dir} is a symbolic link; the embedded Redis keeps secrets there, so it must be a real directory`, { exitCode: EXIT_REDIS });
  restrictTree(p.dir);
  let password = readAdminPassword(stateDir);
  if (!password) {
    password = randomBytes(24).toString('hex');
    writeAtomic(p.password, password + '\n');
  }
  writeAtomic(p.acl, existsSync(p.acl) ? aclFileForStart(readFileSync(p.acl, 'utf8')) : renderAclFile(password));
  const logStart = existsSync(p.log) ? statSync(p.log).size : 0;
  const argv = [
    '/bin/sh', '-c', 'umask 077 && exec "$@"', 'redis-server',
    'redis-server', '--port', String(opts.port), '--bind', '127.0.0.1',
    '--unixsocket', p.socket, '--unixsocketperm', '700', '--dir', p.dir,
    '--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--aclfile', p.acl, '--daemonize', 'yes',
    '--pidfile', p.pid, '--logfile', p.log, '--notify-keyspace-events', 'Kh',
  ];
  try {
    await runner.run(argv, { purpose: 'start embedded redis-server', mutating: true, timeoutMs: 30_000 });
  } catch (err) {
    const text = `${(err as Error).message} ${(err as { stderr?: string }).stderr ?? ''}`;
    if (/redis-server: (not found|No such file)|command_missing|ENOENT/.test(text) || (err as { code?: string }).code === 'command_missing') {
      throw new RedisError('redis_server_missing',
        `no Redis URL was given (--redis or NS8CTL_REDIS_URL), the embedded Redis of ${stateDir} is not running, and redis-server is not installed to start it. Install it (Debian: \`apt-get install redis-server\`) or pass --redis URL.`,
        { cause: err, exitCode: EXIT_REDIS });
    }
    throw new RedisError('redis_server_failed', `could not start the embedded redis-server (${p.socket}, 127.0.0.1:${opts.port}): ${(err as Error).message} (log: ${p.log})`, { cause: err, exitCode: EXIT_REDIS });
  }
  try {
    await opts.waitReady();
  } catch (err) {
    const log = tail(p.log, logStart).trim().split('\n').slice(-4).join(' | ');
    throw new RedisError('redis_server_failed', `the embedded redis-server did not come up on ${p.socket}: ${(err as Error).message}${log ? `; its log (${p.log}) says: ${log}` : ` (log: ${p.log})`}`, { cause: err, exitCode: EXIT_REDIS });
  }
  return { password };
}

/**
 * Gives `default` its read-only rule once the data set is loaded: waits (bounded by `timeoutMs`)
 * until `INFO persistence` says `loading:0` (before that, the AOF replay must still see the
 * loading rule), sets `DEFAULT_USER_RULE`, and saves the ACL file when the rule changed, so the
 * file matches the running server until the next start rewrites its `default` line. Idempotent,
 * and it also upgrades a server running an older rule. `redis` must be an admin connection.
 */
export async function applyDefaultUserRule(redis: Redis, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await redis.info('persistence');
    if (/^loading:0\r?$/m.test(info)) break;
    if (Date.now() > deadline) throw new RedisError('redis_loading', `Redis is still loading its data after ${timeoutMs / 1000} s; try again later`, { exitCode: EXIT_REDIS });
    await new Promise((r) => setTimeout(r, 100));
  }
  const defaultLine = async (): Promise<string | undefined> => ((await redis.call('ACL', 'LIST')) as string[]).find((l) => l.startsWith('user default '));
  const before = await defaultLine();
  await redis.call('ACL', 'SETUSER', 'default', 'reset', ...DEFAULT_USER_RULE);
  if ((await defaultLine()) !== before) await redis.call('ACL', 'SAVE');
}
