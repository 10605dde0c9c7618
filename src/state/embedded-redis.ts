import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import path from 'node:path';
import type { CommandRunner } from '../host/runner.js';
import { RedisError } from '../errors.js';

/** Name of the admin ACL user ns8ctl uses on a Redis it manages. */
export const ADMIN_USER = 'ns8ctl';

/** Files of the embedded server inside the state directory. */
export function embeddedPaths(stateDir: string): { dir: string; acl: string; password: string; pid: string; log: string } {
  const dir = path.join(stateDir, 'redis');
  return {
    dir,
    acl: path.join(dir, 'users.acl'),
    password: path.join(dir, 'admin.password'),
    pid: path.join(dir, 'redis.pid'),
    log: path.join(dir, 'redis.log'),
  };
}

/** Reads the admin password of a Redis that ns8ctl manages, if this state dir has one. */
export function readAdminPassword(stateDir: string): string | undefined {
  const p = embeddedPaths(stateDir).password;
  return existsSync(p) ? readFileSync(p, 'utf8').trim() : undefined;
}

/**
 * The seeds' access model as an ACL file: `default` may read `cluster/*`, `node/*`, `module/*`
 * (and ns8ctl's own status keys) and subscribe, nothing else; the `ns8ctl` admin user can do all.
 */
export function renderAclFile(adminPassword: string): string {
  const sha = createHash('sha256').update(adminPassword).digest('hex');
  return [
    'user default on nopass resetkeys ~cluster/* ~node/* ~module/* ~ns8ctl/* resetchannels &* nocommands +@read +@connection +subscribe +psubscribe -@admin',
    `user ${ADMIN_USER} on #${sha} ~* &* +@all`,
    '',
  ].join('\n');
}

/**
 * Starts a persistent redis-server (from PATH) bound to 127.0.0.1:`port`, data and ACLs under the
 * state dir, daemonized so the next ns8ctl run reuses it. Creates the admin password (mode 0600) on
 * first start. Fails with a clear install hint when redis-server is missing.
 */
export async function startEmbeddedRedis(stateDir: string, port: number, runner: CommandRunner): Promise<{ password: string }> {
  const p = embeddedPaths(stateDir);
  mkdirSync(p.dir, { recursive: true, mode: 0o700 });
  let password = readAdminPassword(stateDir);
  if (!password) {
    password = randomBytes(24).toString('hex');
    writeFileSync(p.password, password + '\n', { mode: 0o600 });
  }
  chmodSync(p.password, 0o600);
  if (!existsSync(p.acl)) writeFileSync(p.acl, renderAclFile(password), { mode: 0o600 });
  const argv = [
    'redis-server', '--port', String(port), '--bind', '127.0.0.1', '--dir', p.dir,
    '--appendonly', 'yes', '--save', '', '--aclfile', p.acl, '--daemonize', 'yes',
    '--pidfile', p.pid, '--logfile', p.log, '--notify-keyspace-events', 'Kh',
  ];
  try {
    await runner.run(argv, { purpose: 'start embedded redis-server', mutating: true, timeoutMs: 30_000 });
  } catch (err) {
    const missing = (err as { code?: string }).code === 'command_missing' || /ENOENT/.test(String((err as Error).message));
    if (missing) {
      throw new RedisError('redis_server_missing',
        'no Redis URL was given (--redis or NS8CTL_REDIS_URL), nothing answers on 127.0.0.1:' + port +
        ', and redis-server is not installed to start an embedded one. Install it (Debian: `apt-get install redis-server`) or pass --redis URL.',
        { cause: err });
    }
    throw new RedisError('redis_server_failed', `could not start the embedded redis-server on 127.0.0.1:${port}: ${(err as Error).message} (log: ${p.log})`, { cause: err });
  }
  return { password };
}
