/**
 * The real parts a node-agent integration test stands on: this host prepared for podman, a real
 * redis-server and a real registry on loopback holding the example images, and a temp root for
 * the agent's host layout (see tempHostLayout) whose `home/` holds the users it creates.
 */
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import type { NodeAgentDeps, NodeAgentOptions } from '../../src/node-agent/deps.js';
import { reconcileNodeOnce, type InstanceResult } from '../../src/node-agent/reconcile.js';
import { ensureExampleImages, type ExampleImages } from './example-images.js';
import { preparePodmanHost } from './host-podman.js';
import { startRedis, type TestRedis } from './redis-server.js';
import { startRegistry, type TestRegistry } from './registry.js';

/** What {@link startNodeAgentTestHost} started; stop it with {@link stopNodeAgentTestHost}. */
export interface NodeAgentTestHost {
  redis: TestRedis;
  registry: TestRegistry;
  images: ExampleImages;
  /** An admin client of `redis` (closed by `redis.stop()`). */
  admin: Redis;
  /** A fresh temp dir, mode 0755, with `home/` (0755) inside: users' homes must be reachable. */
  root: string;
}

/**
 * Prepares podman (once per process), starts Redis and a registry, pushes the example images,
 * and makes the temp root `<tmpdir>/<prefix>XXXXXX`. When a step fails, whatever was started is
 * stopped and removed before the error is rethrown, so a failed beforeAll leaks nothing.
 *
 * @throws what the failing step throws (not root, podman/redis/registry missing, build failed).
 */
export async function startNodeAgentTestHost(prefix: string): Promise<NodeAgentTestHost> {
  await preparePodmanHost();
  const started: Partial<NodeAgentTestHost> = {};
  try {
    const [redis, registry] = await Promise.allSettled([startRedis(), startRegistry()]);
    if (redis.status === 'fulfilled') started.redis = redis.value;
    if (registry.status === 'fulfilled') started.registry = registry.value;
    if (redis.status === 'rejected') throw redis.reason;
    if (registry.status === 'rejected') throw registry.reason;
    started.images = await ensureExampleImages(registry.value.address);
    started.admin = redis.value.client();
    started.root = await fs.mkdtemp(path.join(tmpdir(), prefix));
    await fs.chmod(started.root, 0o755);
    await fs.mkdir(path.join(started.root, 'home'), { mode: 0o755 });
    return started as NodeAgentTestHost;
  } catch (err) {
    await stopNodeAgentTestHost(started);
    throw err;
  }
}

/**
 * Stops Redis and the registry and removes the temp root; any part may be missing (a beforeAll
 * that failed early), and is then skipped. Unix users the test made are the caller's to remove.
 */
export async function stopNodeAgentTestHost(host: { redis?: TestRedis | undefined; registry?: TestRegistry | undefined; root?: string | undefined }): Promise<void> {
  await host.redis?.stop();
  await host.registry?.stop();
  if (host.root) await fs.rm(host.root, { recursive: true, force: true });
}

/** One node agent pass (reconcileNodeOnce), its results by instance id. */
export async function reconcileById(opts: NodeAgentOptions, deps: NodeAgentDeps): Promise<Map<string, InstanceResult>> {
  const res = await reconcileNodeOnce(opts, deps);
  return new Map(res.instances.map((i) => [i.id, i]));
}
