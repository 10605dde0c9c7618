/**
 * The small client behind `get`, `diff` and `validate` (src/state/lite-redis.ts) against a real
 * redis-server, side by side with the ioredis client the other commands use: same replies, same
 * errors, and everything it does not serve itself goes through ioredis.
 */
import { observeResolution } from '../../src/apply/pipeline.js';
import { RedisError } from '../../src/errors.js';
import { ProcessRunner } from '../../src/host/runner.js';
import type { DesiredObject, ManifestObject } from '../../src/manifest/types.js';
import { plan } from '../../src/plan/planner.js';
import { connectRedis, type Connection } from '../../src/state/connect.js';
import { keys } from '../../src/state/keys.js';
import { readClusterState, runningImagesOf } from '../../src/state/read-state.js';
import { putDesiredModule } from '../support/desired-module.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';

type Pair = [Error | null, unknown];
const shown = (pairs: Pair[] | null): unknown[] => (pairs ?? []).map(([err, v]) => (err ? { error: err.message } : v));

const BIG = 'é✓x'.repeat(1_000_000);

let server: TestRedis;
let lite: Connection;
let full: Connection;
const connect = (o: { lite?: boolean; commandTimeoutMs?: number; name?: string } = {}): Promise<Connection> =>
  connectRedis({ url: server.url, stateDir: '/nonexistent', runner: new ProcessRunner(), ...o });

beforeAll(async () => {
  server = await startRedis();
  const c = server.client();
  const wide: Record<string, string> = { constructor: 'c', empty: '' };
  for (let i = 0; i < 3000; i++) wide[`f${i}`] = `value ${i} ✓`;
  await c.hset('h', wide);
  await c.hset('h', '__proto__', 'p');
  await c.set('a', 'é unicode ✓');
  await c.set('big', BIG);
  await c.sadd('s', ...Array.from({ length: 500 }, (_, i) => `m${i}`));
  await c.rpush('l', 'x', 'y', 'z');
  await c.set('ttl', 'v', 'EX', 1000);
  lite = await connect({ lite: true, name: 'lite-test' });
  full = await connect();
});

afterAll(async () => {
  lite.redis.disconnect();
  full.redis.disconnect();
  await server.stop();
});

describe('the small Redis client answers as ioredis does', () => {
  test('each read command gives the same reply, missing keys, unusual field names and big values included', async () => {
    const calls: [string, (string | number)[]][] = [
      ['get', ['a']],
      ['get', ['big']],
      ['get', ['nope']],
      ['mget', ['a', 'nope', 'big']],
      ['hgetall', ['h']],
      ['hgetall', ['nope']],
      ['hget', ['h', '__proto__']],
      ['hget', ['h', 'nope']],
      ['hmget', ['h', 'f1', 'empty', 'nope']],
      ['hstrlen', ['h', 'f2999']],
      ['hexists', ['h', 'f1']],
      ['hlen', ['h']],
      ['smembers', ['s']],
      ['smembers', ['nope']],
      ['sismember', ['s', 'm3']],
      ['scard', ['s']],
      ['lrange', ['l', 0, -1]],
      ['exists', ['a', 'nope', 'big']],
      ['type', ['h']],
      ['pttl', ['nope']],
      ['scan', ['0', 'MATCH', 'nope*', 'COUNT', 1000]],
      ['ping', []],
    ];
    for (const [name, args] of calls) {
      const call = (c: Connection): Promise<unknown> => (c.redis as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[name]!(...args);
      expect([name, await call(lite)]).toEqual([name, await call(full)]);
    }
    // HGETALL builds the same object, own `__proto__` field included.
    const h = (await lite.redis.hgetall('h')) as Record<string, string>;
    expect(Object.getOwnPropertyDescriptor(h, '__proto__')?.value).toBe('p');
    expect(Object.keys(h)).toHaveLength(3003);
    // ACL (the embedded server's user rule) is served too.
    expect(await lite.redis.call('ACL', 'WHOAMI')).toEqual(await full.redis.call('ACL', 'WHOAMI'));
  });

  test('a pipeline gives the same [error, value] pairs, a wrong-type error in the middle included', async () => {
    const fill = (c: Connection): Promise<Pair[] | null> =>
      c.redis.pipeline().get('a').hgetall('h').hgetall('nope').smembers('s').get('h').hget('h', 'f7').hmget('h', 'f1', 'nope').exists('a', 'nope').get('big').scan('0').exec();
    const [fromLite, fromFull] = [await fill(lite), await fill(full)];
    expect(shown(fromLite)).toEqual(shown(fromFull));
    expect(fromLite![4]![0]!.message).toMatch(/^WRONGTYPE/);
    expect(await lite.redis.pipeline().exec()).toEqual([]);
    await expect(lite.redis.get('h')).rejects.toThrow(/^WRONGTYPE/);
  });

  test('a command it does not serve goes to ioredis on the same database, and its reads see those writes', async () => {
    expect(await lite.redis.set('w', '1')).toBe('OK');
    expect(await lite.redis.get('w')).toBe('1');
    const mixed = (c: Connection, v: string): Promise<Pair[] | null> => c.redis.pipeline().get('w').set('w', v).get('w').hgetall('nope').exec();
    expect(shown(await mixed(lite, '2'))).toEqual(['1', 'OK', '2', {}]);
    expect(shown(await mixed(full, '3'))).toEqual(['2', 'OK', '3', {}]);
  });

  test('a read sent after Redis dropped its connection is answered through a new connection', async () => {
    const own = await connect({ lite: true, name: 'lite-dropped' });
    try {
      const clients = (await full.redis.client('LIST')) as string;
      const id = /id=(\d+) .*name=lite-dropped /.exec(clients)?.[1];
      expect(id).toBeDefined();
      await full.redis.client('KILL', 'ID', id!);
      expect(await own.redis.get('a')).toBe('é unicode ✓');
      expect(shown(await own.redis.pipeline().get('a').exists('a').exec())).toEqual(['é unicode ✓', 1]);
    } finally {
      own.redis.disconnect();
    }
  });

  test('a read of a stopped server fails as an ioredis read does: redis_timeout naming the URL', async () => {
    const own = await connect({ lite: true, commandTimeoutMs: 500 });
    const pid = Number(/process_id:(\d+)/.exec(await full.redis.info('server'))?.[1]);
    process.kill(pid, 'SIGSTOP');
    try {
      const err = (await own.redis.get('x').catch((e: unknown) => e)) as RedisError;
      expect(err).toBeInstanceOf(RedisError);
      expect(err.message).toBe(`Redis at ${server.url} did not answer GET within 0.5 s: is the server stopped (SIGSTOP, a paused container) or overloaded? Check it, then run the command again`);
      expect(err.exitCode).toBe(3);
    } finally {
      process.kill(pid, 'SIGCONT');
      own.redis.disconnect();
    }
  });
});

describe('the running images read with the cluster state', () => {
  const module = (id: string, image: string): DesiredObject => ({
    object: { apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: id }, spec: { image, node: 1 } } as ManifestObject,
    source: { file: 'test.yaml', line: 1, col: 1, doc: 0 },
  }) as DesiredObject;

  test('are the images the resolution step reads itself, over both clients, for stored, new and unknown instances', async () => {
    const image = 'ghcr.io/nethserver/webapp:1.0.0';
    const c = full.redis;
    await c.select(2);
    try {
      for (const id of ['webapp1', 'webapp2', 'webapp3']) await putDesiredModule(c, id, { image, node: 1 });
      await c.hset(keys.moduleEnvironment('webapp1'), 'IMAGE_URL', 'ghcr.io/nethserver/webapp:0.9.0');
      await c.hset(keys.moduleStatus('webapp1'), 'imageUrl', 'ghcr.io/nethserver/webapp:0.8.0');
      await c.hset(keys.moduleStatus('webapp2'), 'imageUrl', 'ghcr.io/nethserver/webapp:0.7.0');
      await c.hset(keys.moduleEnvironment('webapp3'), 'IMAGE_URL', '');
      await c.hset(keys.moduleStatus('webapp4'), 'imageUrl', 'ghcr.io/nethserver/webapp:0.6.0');
      const desired = ['webapp1', 'webapp2', 'webapp3', 'webapp4', 'webapp5'].map((id) => module(id, image));
      const instances = desired.map((d) => d.object.metadata.name);
      const onDb2 = await connectRedis({ url: `${server.url}/2`, stateDir: '/nonexistent', runner: new ProcessRunner(), lite: true });
      try {
        const before = await readClusterState(c);
        const state = await readClusterState(onDb2.redis, { instances });
        const viaFull = await readClusterState(c, { instances });
        // The same state as without the images (and as ioredis reads it).
        expect(state).toEqual(before);
        expect(viaFull).toEqual(before);
        const base = plan(desired, state, { applySet: 'default', prune: false });
        const own = await observeResolution(c, desired, base, { imageLabels: false, configuration: false });
        const reused = await observeResolution(onDb2.redis, desired, base, { imageLabels: false, configuration: false }, state);
        expect(own.inputs.running).toEqual(
          new Map([
            ['webapp1', 'ghcr.io/nethserver/webapp:0.9.0'],
            ['webapp2', 'ghcr.io/nethserver/webapp:0.7.0'],
            ['webapp4', 'ghcr.io/nethserver/webapp:0.6.0'],
          ]),
        );
        expect(reused.inputs.running).toEqual(own.inputs.running);
        expect(runningImagesOf(state, instances)).toEqual(own.inputs.running);
        expect(runningImagesOf(viaFull, instances)).toEqual(own.inputs.running);
        // Instances it was not asked for: the caller reads them itself.
        expect(runningImagesOf(state, ['webapp6'])).toBeUndefined();
        expect(runningImagesOf(before, ['webapp1'])).toBeUndefined();
      } finally {
        onDb2.redis.disconnect();
      }
    } finally {
      await c.flushdb();
      await c.select(0);
    }
  });
});
