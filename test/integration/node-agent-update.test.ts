/**
 * Image updates through the node agent against the real host (issue 6): real redis-server, real
 * podman as a useradd'ed user, a registry of its own on loopback with the example images
 * (webapp 2.0.0 has `org.nethserver.min-from=1.1.0`). The registry is stopped for the last test.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { findCondition } from '../../src/controller/conditions.js';
import { EventRecorder, readEvents } from '../../src/state/events.js';
import { reconcileModuleSummary } from '../../src/controller/module-reconciler.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { createNodeAgentDeps, type NodeAgentDeps, type NodeAgentOptions } from '../../src/node-agent/deps.js';
import { parseEnvironment } from '../../src/node-agent/environment-file.js';
import { reconcileNodeOnce, type InstanceResult } from '../../src/node-agent/reconcile.js';
import { readModuleStatus } from '../../src/node-agent/status.js';
import { keys } from '../../src/state/keys.js';
import type { ExampleImages } from '../support/example-images.js';
import { removeTestUsers } from '../support/host-podman.js';
import type { TestRedis } from '../support/redis-server.js';
import type { TestRegistry } from '../support/registry.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import { putDesiredModule } from '../support/desired-module.js';
import { startNodeAgentTestHost, stopNodeAgentTestHost } from '../support/node-agent-host.js';

const host = new ProcessRunner();
const id = `webapp${process.pid % 10000}9`;
let redis: TestRedis;
let admin: Redis;
let registry: TestRegistry | undefined;
let images: ExampleImages;
let root: string;
let deps: NodeAgentDeps;
let opts: NodeAgentOptions;

async function putModule(image: string, generation: number): Promise<void> {
  await putDesiredModule(admin, id, { node: 1, image }, { generation, uuid: { ifAbsent: '00000000-0000-4000-8000-000000000009' }, node: 1 });
}

async function reconcile(): Promise<InstanceResult> {
  const res = await reconcileNodeOnce(opts, deps);
  return res.instances.find((i) => i.id === id)!;
}

async function environment(): Promise<Record<string, string>> {
  return parseEnvironment(await fs.readFile(path.join(root, 'home', id, '.config', 'state', 'environment'), 'utf8'));
}

/** Whether the node's module-image cache holds `url` (where module images go; users hold service images). */
async function cached(url: string): Promise<boolean> {
  return (await deps.podman.cache.lookup(url)) !== undefined;
}

async function userImages(): Promise<string[]> {
  const r = await host.run(['runuser', '-u', id, '--', 'sh', '-c', `cd /tmp && podman images --format '{{.Repository}}:{{.Tag}}'`], { allowFailure: true });
  return r.stdout.split('\n').filter(Boolean);
}

beforeAll(async () => {
  ({ redis, registry, images, admin, root } = await startNodeAgentTestHost('ns8ctl-node-agent-update-'));
  opts = { node: 1, concurrency: 1, insecureRegistries: [registry.address] };
  deps = createNodeAgentDeps(opts, {
    redis: admin,
    runner: new ProcessRunner(100_000),
    layout: tempHostLayout(root),
    coreVersion: async () => '3.21.0',
    log: () => undefined,
    delay: async () => undefined,
  });
}, 300_000);

afterAll(async () => {
  await removeTestUsers([id]);
  admin?.disconnect();
  await stopNodeAgentTestHost({ redis, registry, root });
}, 120_000);

test('webapp 1.0.0 is installed', async () => {
  await putModule(images.webapp['1.0.0'], 1);
  const r = await reconcile();
  expect(r.error?.message).toBeUndefined();
  expect((await environment()).IMAGE_URL).toBe(images.webapp['1.0.0']);
}, 180_000);

test('an update to 2.0.0 is refused (min-from 1.1.0): nothing touched, UpdateRefused names the label and versions', async () => {
  const before = await environment();
  await putModule(images.webapp['2.0.0'], 2);
  const r = await reconcile();
  expect(r).toMatchObject({ outcome: 'blocked', retry: false, applied: [] });
  const status = (await readModuleStatus(admin, id))!;
  const degraded = status.conditions.find((c) => c.type === 'Degraded')!;
  expect(degraded).toMatchObject({ status: 'True', reason: 'UpdateRefused' });
  expect(degraded.message).toMatch(/min-from/);
  expect(degraded.message).toContain('1.0.0 -> 2.0.0');
  expect(degraded.message).toContain('1.1.0');
  expect(status.imageUrl).toBe(images.webapp['1.0.0']);
  expect(await environment()).toEqual(before);
  expect(await userImages()).not.toContain(images.webapp['2.0.0']);
  expect(await cached(images.webapp['2.0.0'])).toBe(false);
}, 180_000);

test('an update to 1.1.0 proceeds: PREV_ variables set, IMAGE_URL and status name 1.1.0, old image removed', async () => {
  const before = await environment();
  expect(before.WEBAPP_HTTPD_IMAGE).toBe(images.webappHttpd['1.0.0']);
  expect(await cached(images.webapp['1.0.0'])).toBe(true);
  await putModule(images.webapp['1.1.0'], 3);
  const r = await reconcile();
  expect(r.error?.message).toBeUndefined();
  const env = await environment();
  expect(env.IMAGE_URL).toBe(images.webapp['1.1.0']);
  expect(env).toMatchObject({
    PREV_IMAGE_URL: before.IMAGE_URL,
    PREV_IMAGE_ID: before.IMAGE_ID,
    PREV_IMAGE_DIGEST: before.IMAGE_DIGEST,
    PREV_IMAGE_REOPODIGEST: before.IMAGE_REOPODIGEST,
    PREV_IMAGE_REPODIGEST: before.IMAGE_REPODIGEST,
    PREV_WEBAPP_HTTPD_IMAGE: before.WEBAPP_HTTPD_IMAGE,
  });
  expect(env.IMAGE_ID).not.toBe(before.IMAGE_ID);
  expect((await admin.hgetall(keys.moduleEnvironment(id))).PREV_IMAGE_URL).toBe(images.webapp['1.0.0']);
  expect((await readModuleStatus(admin, id))!.imageUrl).toBe(images.webapp['1.1.0']);
  expect(r.applied.map((s) => s.kind)).toContain('remove-old-images');
  // An update the desired state asked for is not drift: none reported, none summarised.
  expect(r.drift).toEqual([]);
  expect((await readModuleStatus(admin, id))!.drift).toEqual([]);
  const summary = await reconcileModuleSummary(id, { redis: admin, events: new EventRecorder(admin), now: () => new Date() });
  expect(findCondition(summary?.conditions, 'Drifted')).toMatchObject({ status: 'False', reason: 'NoDrift' });
  expect((await readEvents(admin)).filter((e) => e.name === 'module-drifted')).toEqual([]);
  expect(await cached(images.webapp['1.1.0'])).toBe(true);
  expect(await cached(images.webapp['1.0.0'])).toBe(false);
  // The PREV_ variables stay (until the next update) and the instance is stable.
  const again = await reconcile();
  expect(again.outcome).toBe('unchanged');
  expect(again.drift).toEqual([]);
  expect((await environment()).PREV_IMAGE_URL).toBe(images.webapp['1.0.0']);
}, 180_000);

test('with the registry down, an update keeps the instance on its version with the reason', async () => {
  await registry!.stop();
  registry = undefined;
  const before = await environment();
  await putModule(images.webapp['2.0.0'], 4);
  const r = await reconcile();
  expect(r.outcome).toBe('failed');
  const status = (await readModuleStatus(admin, id))!;
  expect(status.conditions.find((c) => c.type === 'Degraded')).toMatchObject({ status: 'True', reason: 'RegistryUnreachable' });
  expect(status.imageUrl).toBe(images.webapp['1.1.0']);
  expect(await environment()).toEqual(before);
}, 180_000);
