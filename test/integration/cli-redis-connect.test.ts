import net from 'node:net';
import { RedisError } from '../../src/errors.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { connectRedis, maskUrl } from '../../src/state/connect.js';
import { runCli } from '../support/cli.js';
import { freePort, startRedis, type TestRedis } from '../support/redis-server.js';

describe('connection errors keep their cause', () => {
  it('names the socket error (ECONNREFUSED) and the URL, password masked, when nothing listens', async () => {
    const port = await freePort();
    const url = `redis://ns8ctl:s3cret@127.0.0.1:${port}`;
    const err = await connectRedis({ url, stateDir: '/nonexistent', runner: new ProcessRunner() }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RedisError);
    const e = err as RedisError;
    expect(e.code).toBe('redis_unreachable');
    expect(e.message).toMatch(new RegExp(`^cannot connect to Redis at redis://ns8ctl:\\(sensitive value\\)@127\\.0\\.0\\.1:${port}: connect ECONNREFUSED 127\\.0\\.0\\.1:${port}; Connection is closed\\. \\(is redis-server running and listening there\\?\\)$`));
    expect(e.message).not.toContain('s3cret');
    expect((e.cause as NodeJS.ErrnoException).code).toBe('ECONNREFUSED');
  });

  it('prints the cause on the command line', async () => {
    const port = await freePort();
    const res = await runCli(['get', 'modules'], { NS8CTL_REDIS_URL: `redis://127.0.0.1:${port}` });
    expect(res.code).toBe(3);
    expect(res.stderr).toBe(`error: cannot connect to Redis at redis://127.0.0.1:${port}: connect ECONNREFUSED 127.0.0.1:${port}; Connection is closed. (is redis-server running and listening there?)\n`);
    const json = await runCli(['get', 'modules', '-o', 'json'], { NS8CTL_REDIS_URL: `redis://127.0.0.1:${port}` });
    expect(JSON.parse(json.stdout)).toEqual({ error: 'redis_unreachable', message: expect.stringContaining('ECONNREFUSED') });
  });

  it('names an unknown host (ENOTFOUND or EAI_AGAIN from the resolver)', async () => {
    const err = (await connectRedis({ url: 'redis://ns8ctl-test-host.invalid:6379', stateDir: '/nonexistent', runner: new ProcessRunner() }).catch((e: unknown) => e)) as RedisError;
    expect(err).toBeInstanceOf(RedisError);
    expect(err.message).toMatch(/^cannot connect to Redis at redis:\/\/ns8ctl-test-host\.invalid:6379: getaddrinfo (ENOTFOUND|EAI_AGAIN) ns8ctl-test-host\.invalid; .*\(check the host name in the URL\)$/);
    expect(['ENOTFOUND', 'EAI_AGAIN']).toContain((err.cause as NodeJS.ErrnoException).code);
  });
});

describe('Redis connection faults: a clear error naming the masked URL, exit code 3, bounded time', () => {
  let redis: TestRedis;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => redis.stop());

  it.each([
    ['http://u:pw1@127.0.0.1:6379', 'scheme "http:" is not a Redis scheme', 'http://u:(sensitive value)@127.0.0.1:6379'],
    ['not a url', 'not a URL', 'not a url'],
    ['redis://127.0.0.1:99999', 'port "99999" is not a number from 1 to 65535', 'redis://127.0.0.1:99999'],
    ['redis://ns8ctl:pw1@127.0.0.1:6379/abc', 'the path "/abc" is not a database number', 'redis://ns8ctl:(sensitive value)@127.0.0.1:6379/abc'],
    ['redis://127.0.0.1:6379/?password=pw1', 'query parameters and fragments are not supported', 'redis://127.0.0.1:6379/?password=(sensitive value)'],
  ])('refuses %j before connecting', async (url, why, shown) => {
    const res = await runCli(['get', 'modules'], { NS8CTL_REDIS_URL: url });
    expect(res.code).toBe(3);
    expect(res.stderr).toContain(`invalid Redis URL ${JSON.stringify(shown)}: ${why}; expected redis://`);
    expect(res.stderr).not.toContain('pw1');
  });

  it('selects the database the URL names, and refuses one the server does not have', async () => {
    const node = 'apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: {name: node1}\nspec: {id: 1}\n';
    const applied = await runCli(['apply', '-f', '-'], { NS8CTL_REDIS_URL: `${redis.url}/3` }, node);
    expect(applied.code).toBe(0);
    const c = redis.client();
    expect(await c.exists('ns8ctl/desired/node/1')).toBe(0);
    await c.select(3);
    expect(await c.exists('ns8ctl/desired/node/1')).toBe(1);
    const res = await runCli(['get', 'nodes'], { NS8CTL_REDIS_URL: `${redis.url}/99` });
    expect(res.code).toBe(3);
    expect(res.stderr).toContain(`Redis at ${redis.url}/99 has no database 99 (it has 16: 0 to 15)`);
  });

  it('does not hang on a stopped (SIGSTOP) server: get and apply fail with redis_timeout', async () => {
    const pid = Number(/process_id:(\d+)/.exec(await redis.client().info('server'))?.[1]);
    process.kill(pid, 'SIGSTOP');
    try {
      const got = await connectRedis({ url: redis.url, stateDir: '/nonexistent', runner: new ProcessRunner(), connectTimeoutMs: 1000 }).catch((e: unknown) => e);
      expect(got).toBeInstanceOf(RedisError);
      expect((got as RedisError).code).toBe('redis_timeout');
      expect((got as RedisError).message).toBe(`cannot connect to Redis at ${redis.url}: the server accepted the connection but did not answer within 1 s: is it stopped (SIGSTOP, a paused container), overloaded, or not Redis?`);
      const res = await runCli(['apply', '-f', '-'], { NS8CTL_REDIS_URL: redis.url }, 'apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: {name: node1}\nspec: {id: 1}\n');
      expect(res.code).toBe(3);
      expect(res.stderr).toContain('did not answer within 10 s');
    } finally {
      process.kill(pid, 'SIGCONT');
    }
  });

  it('bounds a command to a server that stops after the connection was made', async () => {
    const conn = await connectRedis({ url: redis.url, stateDir: '/nonexistent', runner: new ProcessRunner(), commandTimeoutMs: 500 });
    const pid = Number(/process_id:(\d+)/.exec(await conn.redis.info('server'))?.[1]);
    process.kill(pid, 'SIGSTOP');
    try {
      const err = (await conn.redis.get('x').catch((e: unknown) => e)) as RedisError;
      expect(err).toBeInstanceOf(RedisError);
      expect(err.message).toBe(`Redis at ${redis.url} did not answer GET within 0.5 s: is the server stopped (SIGSTOP, a paused container) or overloaded? Check it, then run the command again`);
      expect(err.exitCode).toBe(3);
    } finally {
      process.kill(pid, 'SIGCONT');
      conn.redis.disconnect();
    }
  });

  it('says rediss:// needs TLS when the port speaks plain Redis', async () => {
    const err = (await connectRedis({ url: `rediss://127.0.0.1:${redis.port}`, stateDir: '/nonexistent', runner: new ProcessRunner(), connectTimeoutMs: 1000 }).catch((e: unknown) => e)) as RedisError;
    expect(err).toBeInstanceOf(RedisError);
    expect(err.message).toMatch(new RegExp(`^cannot connect to Redis at rediss://127\\.0\\.0\\.1:${redis.port}: .*(rediss:// needs a server that speaks TLS; if this is a plain Redis port, use redis://|TLS|SSL)`));
    expect(err.exitCode).toBe(3);
  });

  it('never waits on a listener that accepts and stays silent longer than the bound', async () => {
    const sockets: net.Socket[] = [];
    const silent = net.createServer((s) => void sockets.push(s));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as net.AddressInfo).port;
    try {
      const err = (await connectRedis({ url: `redis://127.0.0.1:${port}`, stateDir: '/nonexistent', runner: new ProcessRunner(), connectTimeoutMs: 800 }).catch((e: unknown) => e)) as RedisError;
      expect(err.code).toBe('redis_timeout');
      expect(err.exitCode).toBe(3);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });
});

describe('maskUrl', () => {
  it.each([
    ['redis://ns8ctl:s3cret@h:1', 'redis://ns8ctl:(sensitive value)@h:1'],
    ['redis://alice:p@ss@host:6379', 'redis://alice:(sensitive value)@host:6379'],
    ['redis://h:1/0?password=s3cret&x=1', 'redis://h:1/0?password=(sensitive value)&x=1'],
    ['rediss://:s3cret@h', 'rediss://:(sensitive value)@h'],
    ['redis://h:6379', 'redis://h:6379'],
  ])('%s -> %s', (url, masked) => expect(maskUrl(url)).toBe(masked));
});
