/**
 * The node's service-image cache (src/node-agent/host/service-image-cache.ts) on the real host:
 * real registry on loopback, real skopeo and rootless podman, real useradd. A service image is
 * fetched from the registry once per node and imported by each instance user into its own
 * storage, so files keep their owners inside each user's containers.
 */
import { promises as fs, existsSync } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { ProcessRunner } from '../../src/host/runner.js';
import { createNodeAgentDeps, type NodeAgentDeps, type NodeAgentOptions } from '../../src/node-agent/deps.js';
import { serviceImageCacheDir } from '../../src/node-agent/host/podman.js';
import { findImage, readImageStore } from '../../src/host/image-store.js';
import { REF_TTL_MS, RunnerServiceImageCache } from '../../src/node-agent/host/service-image-cache.js';
import { userStorage } from '../../src/node-agent/layout.js';
import { reconcileNodeOnce } from '../../src/node-agent/reconcile.js';
import { keys } from '../../src/state/keys.js';
import type { ExampleImages } from '../support/example-images.js';
import { removeTestUsers } from '../support/host-podman.js';
import { createModuleUsers, runAsUser, subuidStart, userOwner } from '../support/module-users.js';
import { putDesiredModule } from '../support/desired-module.js';
import { startNodeAgentTestHost, stopNodeAgentTestHost } from '../support/node-agent-host.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import { RecordingRunner } from '../support/recording-runner.js';
import type { TestRedis } from '../support/redis-server.js';
import type { TestRegistry } from '../support/registry.js';
import { withImageBuildLock } from '../support/image-build-lock.js';

const host = new ProcessRunner();
const suffix = String(process.pid % 10000);
let redis: TestRedis;
let admin: Redis;
let registry: TestRegistry;
let images: ExampleImages;
let root: string;
const users: string[] = [];

beforeAll(async () => {
  ({ redis, registry, images, admin, root } = await startNodeAgentTestHost('ns8ctl-service-images-'));
}, 300_000);

afterAll(async () => {
  await removeTestUsers(users);
  await stopNodeAgentTestHost({ redis, registry, root });
}, 120_000);

type Rec = RecordingRunner['all'][number];
/** Registry fetches of `url` (skopeo from docker://, by root). */
const registryFetches = (all: readonly Rec[], url: string): number => all.filter((c) => c.argv[0] === 'skopeo' && c.argv[1] === 'copy' && c.argv.includes(`docker://${url}`)).length;
/** `podman pull` of `url`, by anyone. */
const pulls = (all: readonly Rec[], url: string): number => all.filter((c) => c.argv.includes('podman') && c.argv.includes('pull') && c.argv.includes(url)).length;
/** Imports from the node cache into a user's storage (skopeo run through runuser). */
const imports = (all: readonly Rec[], user: string): Rec[] => all.filter((c) => c.argv[0] === 'runuser' && c.argv[2] === user && c.argv.includes('skopeo') && c.argv.some((a) => a.startsWith('dir:')));

describe('the service-image cache on its own', () => {
  const a = `svcimg${suffix}a`;
  const b = `svcimg${suffix}b`;
  let url: string;

  beforeAll(async () => {
    // A service image whose data directory belongs to uid/gid 33 (a web server's cache).
    const ctx = path.join(root, 'ctx');
    await fs.mkdir(path.join(ctx, 'www', 'cache'), { recursive: true });
    await fs.writeFile(path.join(ctx, 'www', 'cache', 'inner'), 'kept\n');
    await fs.copyFile('/bin/busybox', path.join(ctx, 'busybox'));
    await fs.writeFile(path.join(ctx, 'Containerfile'), 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY --chown=33:33 www /var/www\n');
    url = `${registry.address}/ns8ctl-test/owned:1.0.0`;
    await withImageBuildLock(async () => {
      await host.run(['podman', 'build', '-q', '-t', url, ctx], { timeoutMs: 120_000 });
      await host.run(['podman', 'push', '-q', '--tls-verify=false', url], { timeoutMs: 120_000 });
      await host.run(['podman', 'rmi', url]);
    });
    users.push(a, b);
    await createModuleUsers(host, root, [a, b]);
  }, 300_000);

  test('fetches once for two users with different subuid ranges, and each container sees uid 33 own its directory and can write into it twice', async () => {
    expect(await subuidStart(a)).not.toBe(await subuidStart(b));
    const runner = new RecordingRunner();
    const cache = new RunnerServiceImageCache(runner, path.join(root, 'svc-cache'), () => ['--tls-verify=false']);
    const [ea, eb] = await Promise.all([cache.ensure(url, 'test'), cache.ensure(url, 'test')]);
    expect(ea).toBeDefined();
    expect(eb).toEqual(ea);
    expect(registryFetches(runner.all, url)).toBe(1);
    const remote = JSON.parse((await host.run(['skopeo', 'inspect', '--tls-verify=false', `docker://${url}`])).stdout) as { Digest: string };
    expect(ea!.digest).toBe(remote.Digest);
    for (const name of [a, b]) {
      const owner = await userOwner(name);
      await cache.importInto(ea!, owner, `test ${name}`);
      // Under its URL and the registry's digest, as a pull leaves it (the node agent's observation reads this).
      const local = findImage((await readImageStore(userStorage(owner.home))) ?? [], url);
      expect(local?.digest).toBe(remote.Digest);
      const out = await runAsUser(host, owner, ['podman', 'run', '--rm', '--user', '33:33', url, '/bin/busybox', 'sh', '-c', 'echo a > /var/www/cache/a && echo b > /var/www/cache/b && /bin/busybox stat -c %u:%g /var/www/cache /var/www/cache/inner /var/www/cache/b && /bin/busybox cat /var/www/cache/inner']);
      expect(out.trim().split('\n')).toEqual(['33:33', '33:33', '33:33', 'kept']);
    }
    expect(registryFetches(runner.all, url)).toBe(1);
    expect(pulls(runner.all, url)).toBe(0);
  }, 180_000);

  test('a killed fetch leaves no entry to import from, and the next fetch replaces it', async () => {
    const dir = path.join(root, 'svc-cache-2');
    const runner = new RecordingRunner();
    const cache = new RunnerServiceImageCache(runner, dir, () => ['--tls-verify=false']);
    // What a fetch killed half-way leaves: a fill directory, and an entry without its marker.
    const first = await cache.ensure(url, 'test');
    await fs.rm(path.join(first!.dir, 'complete'));
    await fs.mkdir(path.join(dir, '.fill-0123456789abcdef'));
    expect(await cache.lookup(url)).toBeUndefined();
    const again = await cache.ensure(url, 'test');
    expect(again?.digest).toBe(first!.digest);
    expect(existsSync(path.join(again!.dir, 'complete'))).toBe(true);
    expect(registryFetches(runner.all, url)).toBe(2);
  }, 120_000);

  test('declines (so the user pulls for itself) on a node without skopeo, for a digest reference, and where users cannot reach the cache', async () => {
    const real = new ProcessRunner();
    const noSkopeo = { history: real.history, run: (argv: string[], o?: Parameters<ProcessRunner['run']>[1]) => real.run(argv[0] === 'skopeo' ? ['ns8ctl-test-no-such-skopeo', ...argv.slice(1)] : argv, o) };
    expect(await new RunnerServiceImageCache(noSkopeo, path.join(root, 'svc-cache-4'), () => ['--tls-verify=false']).ensure(url, 'test')).toBeUndefined();
    const cache = new RunnerServiceImageCache(new RecordingRunner(), path.join(root, 'svc-cache-5'), () => ['--tls-verify=false']);
    expect(await cache.ensure(`${url.replace(/:1\.0\.0$/, '')}@sha256:${'0'.repeat(64)}`, 'test')).toBeUndefined();
    const closed = path.join(root, 'closed');
    await fs.mkdir(closed, { mode: 0o700 });
    const logged: string[] = [];
    const unreachable = new RunnerServiceImageCache(new RecordingRunner(), path.join(closed, 'svc-cache'), () => ['--tls-verify=false'], (l) => logged.push(l));
    expect(await unreachable.ensure(url, 'test')).toBeUndefined();
    expect(logged.join('\n')).toContain(`${closed} is not searchable by other users`);
    expect(existsSync(path.join(closed, 'svc-cache'))).toBe(false);
  }, 120_000);

  test('on a fresh node, the directories above the cache are made searchable but not listable, and users import from it', async () => {
    const fresh = path.join(root, 'fresh', 'var-lib-ns8ctl');
    const logged: string[] = [];
    const cache = new RunnerServiceImageCache(new RecordingRunner(), path.join(fresh, 'service-images'), () => ['--tls-verify=false'], (l) => logged.push(l));
    const entry = await cache.ensure(url, 'test');
    expect(entry).toBeDefined();
    expect(logged.join('\n')).not.toContain('not searchable');
    for (const d of [path.join(root, 'fresh'), fresh]) expect((await fs.stat(d)).mode & 0o777).toBe(0o711);
    await cache.importInto(entry!, await userOwner(a), `test ${a}`);
  }, 120_000);

  test('a tag moved in the registry reaches new imports once its ref is older than the ref lifetime', async () => {
    const moving = `${registry.address}/ns8ctl-test/moving:1`;
    const push = async (text: string): Promise<void> => {
      const ctx = path.join(root, `ctx-${text}`);
      await fs.mkdir(ctx, { recursive: true });
      await fs.writeFile(path.join(ctx, 'v'), text);
      await fs.writeFile(path.join(ctx, 'Containerfile'), 'FROM scratch\nCOPY v /v\n');
      await withImageBuildLock(async () => {
        await host.run(['podman', 'build', '-q', '-t', moving, ctx], { timeoutMs: 120_000 });
        await host.run(['podman', 'push', '-q', '--tls-verify=false', moving], { timeoutMs: 120_000 });
        await host.run(['podman', 'rmi', moving]);
      });
    };
    await push('one');
    const dir = path.join(root, 'svc-cache-6');
    const cache = new RunnerServiceImageCache(new RecordingRunner(), dir, () => ['--tls-verify=false']);
    const first = await cache.ensure(moving, 'test');
    await push('two');
    // Within the lifetime the node keeps the digest it fetched (as a user's storage keeps a pulled tag).
    expect((await cache.ensure(moving, 'test'))?.digest).toBe(first!.digest);
    const refs = path.join(dir, 'refs');
    for (const f of await fs.readdir(refs)) {
      const ref = JSON.parse(await fs.readFile(path.join(refs, f), 'utf8')) as { at: number };
      await fs.writeFile(path.join(refs, f), JSON.stringify({ ...ref, at: Date.now() - REF_TTL_MS - 1000 }));
    }
    const second = await cache.ensure(moving, 'test');
    const remote = JSON.parse((await host.run(['skopeo', 'inspect', '--tls-verify=false', `docker://${moving}`])).stdout) as { Digest: string };
    expect(second?.digest).toBe(remote.Digest);
    expect(second?.digest).not.toBe(first!.digest);
  }, 180_000);

  test('evicts entries no kept URL was fetched as, and keeps the others', async () => {
    const dir = path.join(root, 'svc-cache-3');
    const cache = new RunnerServiceImageCache(new RecordingRunner(), dir, () => ['--tls-verify=false']);
    const e = await cache.ensure(url, 'test');
    expect(await cache.evict(new Set([url]))).toEqual([]);
    expect(await cache.lookup(url)).toBeDefined();
    expect(await cache.evict(new Set())).toEqual([e!.digest]);
    expect(existsSync(e!.dir)).toBe(false);
    expect(await cache.lookup(url)).toBeUndefined();
  }, 120_000);
});

describe('the node agent with two instances of one module', () => {
  const ids = [`webapp${suffix}s1`, `webapp${suffix}s2`];
  let runner: RecordingRunner;
  let deps: NodeAgentDeps;
  let opts: NodeAgentOptions;
  let svc: string;

  beforeAll(async () => {
    svc = images.webappHttpd['1.0.0'];
    runner = new RecordingRunner();
    opts = { node: 1, concurrency: 4, insecureRegistries: [registry.address] };
    deps = createNodeAgentDeps(opts, { redis: admin, runner, layout: tempHostLayout(root, { uiBase: path.join(root, 'ui', 'apps') }), log: () => undefined, delay: async () => undefined });
    users.push(...ids);
    await removeTestUsers(ids);
  });

  const reconcile = async (): Promise<void> => {
    const res = await reconcileNodeOnce(opts, deps);
    const bad = res.instances.filter((i) => i.error);
    expect(bad.map((i) => `${i.id}: ${i.error!.message}`)).toEqual([]);
  };
  const userImage = async (id: string) => findImage((await readImageStore(userStorage((await userOwner(id)).home))) ?? [], svc);

  test('fetch the service image from the registry once, no user pulls it, and both users have it under the registry digest', async () => {
    for (const id of ids) await putDesiredModule(admin, id, { node: 1, image: images.webapp['1.0.0'] }, { generation: 1, node: 1, uuid: { ifAbsent: `00000000-0000-4000-8000-${id.padStart(12, '0').slice(-12)}` } });
    await reconcile();
    expect(registryFetches(runner.all, svc)).toBe(1);
    expect(pulls(runner.all, svc)).toBe(0);
    const remote = JSON.parse((await host.run(['skopeo', 'inspect', '--tls-verify=false', `docker://${svc}`])).stdout) as { Digest: string };
    for (const id of ids) {
      expect(imports(runner.all, id)).toHaveLength(1);
      expect((await userImage(id))?.digest).toBe(remote.Digest);
      // The service image runs as the user.
      const out = await runAsUser(host, await userOwner(id), ['podman', 'run', '--rm', svc, '/bin/busybox', 'echo', 'ran']);
      expect(out.trim()).toBe('ran');
    }
    // A pass with nothing to do imports nothing: the observation finds the imported image.
    const before = runner.all.length;
    await reconcile();
    expect(runner.all.slice(before).filter((c) => c.argv.includes('skopeo') || c.argv.includes('pull'))).toEqual([]);
  }, 300_000);

  test('an image removed from a user storage is imported again from the node cache, without the registry', async () => {
    const [id] = ids as [string, string];
    await runAsUser(host, await userOwner(id), ['podman', 'rmi', svc]);
    expect(await userImage(id)).toBeUndefined();
    const before = runner.all.length;
    await reconcile();
    expect(await userImage(id)).toBeDefined();
    const since = runner.all.slice(before);
    expect(imports(since, id)).toHaveLength(1);
    expect(registryFetches(since, svc)).toBe(0);
    expect(pulls(since, svc)).toBe(0);
  }, 180_000);

  test('a removed cache entry is fetched again when a user needs the image', async () => {
    const [, id] = ids as [string, string];
    const dir = serviceImageCacheDir(deps.layout);
    for (const n of await fs.readdir(dir)) if (/^[0-9a-f]{64}$/.test(n)) await fs.rm(path.join(dir, n), { recursive: true });
    await runAsUser(host, await userOwner(id), ['podman', 'rmi', svc]);
    const before = runner.all.length;
    await reconcile();
    const since = runner.all.slice(before);
    expect(registryFetches(since, svc)).toBe(1);
    expect(imports(since, id)).toHaveLength(1);
    expect(await userImage(id)).toBeDefined();
  }, 180_000);

  test('removing both instances evicts the service image from the node cache', async () => {
    for (const id of ids) await admin.hset(keys.desired('Module', id), 'deleting', JSON.stringify({ removalPolicy: 'Delete' }));
    await reconcile();
    const left = (await fs.readdir(serviceImageCacheDir(deps.layout))).filter((n) => /^[0-9a-f]{64}$/.test(n));
    expect(left).toEqual([]);
  }, 180_000);
});
