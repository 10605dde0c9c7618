/**
 * What `diff` shows is what the node agent pulls: a `{module, version}` spec planned by the apply
 * pipeline (preparePlan, as `ns8ctl diff` runs it) and converged by the node agent resolves to the
 * same image URL, which the agent pulls, installs and records in the Module status. Real redis-server, a file://
 * repository whose webapp images are in a registry of its own on loopback, real podman as a
 * useradd'ed user.
 */
import { promises as fs, readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Redis } from 'ioredis';
import { applyPlan, preparePlan } from '../../src/apply/pipeline.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { createNodeAgentDeps } from '../../src/node-agent/deps.js';
import { parseEnvironment } from '../../src/node-agent/environment-file.js';
import { reconcileNodeOnce } from '../../src/node-agent/reconcile.js';
import { readModuleStatus } from '../../src/node-agent/status.js';
import { makeImageResolver } from '../../src/repository/image-resolver.js';
import { keys } from '../../src/state/keys.js';
import type { ExampleImages } from '../support/example-images.js';
import { removeTestUsers } from '../support/host-podman.js';
import { startNodeAgentTestHost, stopNodeAgentTestHost } from '../support/node-agent-host.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import type { TestRedis } from '../support/redis-server.js';
import type { TestRegistry } from '../support/registry.js';

const id = `webapp${process.pid % 10000}7`;
let redis: TestRedis;
let admin: Redis;
let registry: TestRegistry;
let images: ExampleImages;
let root: string;

beforeAll(async () => {
  ({ redis, registry, images, admin, root } = await startNodeAgentTestHost('ns8ctl-resolution-agreement-'));
  // The sample repository offers webapp 1.0.0, 1.1.0, 2.0.0 and 2.1.0-rc.1, in this test's registry.
  const sample = readFileSync(new URL('../fixtures/repodata/sample.json', import.meta.url), 'utf8').replaceAll('127.0.0.1:5000', registry.address);
  await fs.mkdir(path.join(root, 'repo'));
  await fs.writeFile(path.join(root, 'repo', 'repodata.json'), sample);
  await admin.hset(keys.repository('local'), { url: pathToFileURL(path.join(root, 'repo')).href, status: '1', testing: '0' });
}, 300_000);

afterAll(async () => {
  await removeTestUsers([id]);
  admin?.disconnect();
  await stopNodeAgentTestHost({ redis, registry, root });
}, 120_000);

test('the image diff shows for a {module, version} spec is the image the node agent converges on and records in status', async () => {
  const file = path.join(root, 'webapp.yaml');
  await fs.writeFile(file, ['apiVersion: ns8ctl.nethserver.org/v1', 'kind: Node', 'metadata:', '  name: node1', 'spec:', '  id: 1', '---', 'apiVersion: ns8ctl.nethserver.org/v1', 'kind: Module', 'metadata:', `  name: ${id}`, 'spec:', '  node: 1', '  module: webapp', "  version: '^1'", ''].join('\n'));
  const opts = { applySet: 'default', prune: false, configuration: false as const, coreVersion: '3.21.0' };
  const prepared = await preparePlan([file], admin, opts);
  const shown = prepared.plan.changes.find((c) => c.kind === 'Module' && c.id === id)?.resolved?.image;
  // `^1` picks the highest 1.x the repository offers: a range, so both sides had to choose.
  expect(shown).toBe(images.webapp['1.1.0']);
  await applyPlan(prepared, admin, { ...opts, forcePrune: false, runner: new ProcessRunner() });

  const agentOpts = { node: 1, concurrency: 1, insecureRegistries: [registry.address] };
  const deps = createNodeAgentDeps(agentOpts, {
    redis: admin,
    runner: new ProcessRunner(100_000),
    layout: tempHostLayout(root),
    resolveImage: makeImageResolver(admin, { coreVersion: '3.21.0' }),
    coreVersion: async () => '3.21.0',
    log: () => undefined,
    delay: async () => undefined,
  });
  const result = await reconcileNodeOnce(agentOpts, deps);
  const r = result.instances.find((i) => i.id === id);
  expect(r?.error?.message).toBeUndefined();
  expect(r?.outcome).toBe('converged');
  const status = await readModuleStatus(admin, id);
  expect(status?.imageUrl).toBe(shown);
  expect(status?.targetImage).toBeUndefined();
  expect(r?.setback).toBeUndefined();
  // What the instance was installed from: the environment NS8 reads, and the node's module-image cache.
  const env = parseEnvironment(await fs.readFile(path.join(root, 'home', id, '.config', 'state', 'environment'), 'utf8'));
  expect(env.IMAGE_URL).toBe(shown);
  expect((await deps.podman.cache.lookup(shown!))?.digest).toBe(env.IMAGE_DIGEST);
}, 300_000);
