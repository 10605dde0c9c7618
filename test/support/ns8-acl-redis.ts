import { Redis } from 'ioredis';
import { startRedis, type TestRedis } from './redis-server.js';

/** A real redis-server with NS8's access model, for the whole test file (see useNs8AclRedis). */
export interface Ns8AclRedis {
  server: TestRedis;
  /** The `ns8admin` connection (every right), flushed by the file's own hooks as it needs. */
  admin: Redis;
  /** A new connection as `username` (none: NS8's read-only `default` user); closed after the file. */
  connect(username?: string, password?: string, name?: string): Redis;
}

/**
 * Registers beforeAll/afterAll: starts redis-server, creates the admin user `ns8admin`/`adminpw`
 * and makes `default` NS8's read-only public user (read cluster/node/module keys, subscribe).
 */
export function useNs8AclRedis(): Ns8AclRedis {
  const opened: Redis[] = [];
  const t = {
    connect(username?: string, password?: string, name?: string): Redis {
      const r = new Redis({ port: t.server.port, host: '127.0.0.1', maxRetriesPerRequest: 1, enableReadyCheck: false, ...(username ? { username } : {}), ...(password ? { password } : {}), ...(name ? { connectionName: name } : {}) });
      r.on('error', () => undefined);
      opened.push(r);
      return r;
    },
  } as Ns8AclRedis;
  beforeAll(async () => {
    t.server = await startRedis();
    const bootstrap = t.server.client();
    await bootstrap.call('ACL', 'SETUSER', 'ns8admin', 'on', '>adminpw', '~*', '&*', '+@all');
    await bootstrap.call('ACL', 'SETUSER', 'default', 'on', 'nopass', 'resetkeys', '~cluster/*', '~node/*', '~module/*', 'resetchannels', '&*', 'nocommands', '+@read', '+@connection', '+subscribe', '+psubscribe', '-@admin');
    bootstrap.disconnect();
    t.admin = t.connect('ns8admin', 'adminpw');
  });
  afterAll(async () => {
    for (const r of opened) r.disconnect();
    await t.server.stop();
  });
  return t;
}
