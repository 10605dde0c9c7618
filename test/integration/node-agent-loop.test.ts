/**
 * The node agent loop with real Redis and the real host: woken by desired-state-changed, failing
 * instances retried with backoff while others converge, terminal failures waiting for a new
 * generation, and a clean stop.
 */
import type { Redis } from 'ioredis';
import { Ns8ctlError } from '../../src/errors.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { runNodeAgent, type NodeAgentHandle } from '../../src/node-agent/agent-loop.js';
import { createNodeAgentDeps, type NodeAgentDeps } from '../../src/node-agent/deps.js';
import type { NodeReconcileResult } from '../../src/node-agent/reconcile.js';
import { readModuleStatus } from '../../src/node-agent/status.js';
import { channels, keys } from '../../src/state/keys.js';
import type { ExampleImages } from '../support/example-images.js';
import { removeTestUsers } from '../support/host-podman.js';
import type { TestRedis } from '../support/redis-server.js';
import type { TestRegistry } from '../support/registry.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import { putDesiredModule } from '../support/desired-module.js';
import { until } from '../support/wait-for.js';
import { startNodeAgentTestHost, stopNodeAgentTestHost } from '../support/node-agent-host.js';

const suffix = String(process.pid % 10000);
let redis: TestRedis;
let admin: Redis;
let registry: TestRegistry;
let images: ExampleImages;
let root: string;
let deps: NodeAgentDeps;
const good = `webapp${suffix}7`;
const down = `bad${suffix}7`;
const terminal = `dokuwiki${suffix}7`;

async function putModule(id: string, spec: Record<string, unknown>, generation = 1): Promise<void> {
  await putDesiredModule(admin, id, { node: 1, ...spec }, { generation, source: 't.yaml', uuid: { ifAbsent: '11111111-2222-4333-8444-555555555555' } });
}

beforeAll(async () => {
  ({ redis, registry, images, admin, root } = await startNodeAgentTestHost('ns8ctl-node-agent-loop-'));
  deps = createNodeAgentDeps(
    { node: 1, insecureRegistries: [registry.address] },
    {
      redis: admin,
      runner: new ProcessRunner(),
      layout: tempHostLayout(root),
      log: () => undefined,
    },
  );
}, 300_000);

afterAll(async () => {
  await removeTestUsers([good]);
  await stopNodeAgentTestHost({ redis, registry, root });
}, 60_000);

test('the loop converges on a desired-state event, retries a failing instance with backoff, waits for a new generation after a terminal error, and stops', async () => {
  const results: NodeReconcileResult[] = [];
  const subscriber = redis.client();
  // Resync far away: every reconcile after the first comes from the event or from backoff.
  const handle: NodeAgentHandle = runNodeAgent({ node: 1, resyncMs: 3_600_000, backoffBaseMs: 50, backoffMaxMs: 200, subscriber, onReconcile: (r) => results.push(r) }, deps);
  try {
    await until('first (empty) reconcile', () => results.length >= 1, { timeoutMs: 60_000 });
    await putModule(good, { image: images.webapp['1.0.0'] });
    await putModule(down, { image: '127.0.0.1:1/ns8ctl-examples/webapp:1.0.0' });
    await putModule(terminal, { module: 'dokuwiki' });
    await admin.publish(channels.desiredChanged, JSON.stringify({ keys: [`Module/${good}`, `Module/${down}`, `Module/${terminal}`] }));

    const attempts = (id: string): number => results.filter((r) => r.instances.some((i) => i.id === id && i.outcome !== 'skipped')).length;
    await until('good converged', () => results.some((r) => r.instances.some((i) => i.id === good && i.outcome === 'converged')), { timeoutMs: 60_000 });
    await until('the failing instance retried at least 3 times', () => attempts(down) >= 3, { timeoutMs: 60_000 });
    // The good one is not redone while the failing one is retried.
    const later = results.slice(results.findIndex((r) => r.instances.some((i) => i.id === good && i.outcome === 'converged')) + 1);
    expect(later.flatMap((r) => r.instances.filter((i) => i.id === good).map((i) => i.outcome)).every((o) => o === 'unchanged' || o === 'skipped')).toBe(true);
    expect((await readModuleStatus(admin, down))!.conditions.find((c) => c.type === 'Degraded')?.reason).toBe('RegistryUnreachable');
    // A terminal error is tried once per generation.
    expect(attempts(terminal)).toBe(1);
    expect((await readModuleStatus(admin, terminal))!.conditions.find((c) => c.type === 'Degraded')).toMatchObject({ status: 'True', reason: 'ImageResolutionFailed', message: expect.stringContaining('"dokuwiki"') });
    // Fixing it (new generation) is picked up.
    await admin.hset(keys.desired('Module', terminal), 'generation', '2', 'object', JSON.stringify({ apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: terminal }, spec: { node: 1, image: '127.0.0.1:1/x/dokuwiki:1' } }));
    await admin.publish(channels.desiredChanged, '{}');
    await until('the terminal instance retried after its spec changed', () => attempts(terminal) >= 2, { timeoutMs: 60_000 });
  } finally {
    await handle.stop();
  }
  const n = results.length;
  await new Promise((r) => setTimeout(r, 300));
  expect(results.length).toBe(n);
  await handle.stop();
  subscriber.disconnect();
}, 180_000);

test('a terminal failure is rechecked without a spec change: a version a repository publishes later is picked up', async () => {
  const id = `dokuwiki${suffix}8`;
  const results: NodeReconcileResult[] = [];
  // The repositories do not carry the module at first; later they resolve it (to an unreachable
  // registry, so the instance then fails transiently, which is enough to see it was rechecked).
  let published = false;
  const resolving = createNodeAgentDeps({ node: 1 }, {
    ...deps,
    resolveImage: async (spec) => {
      if (!published) throw new Ns8ctlError('image_resolution_unavailable', `no repository carries ${String(spec.module)}`);
      return '127.0.0.1:1/ns8ctl-examples/dokuwiki:1.0.0';
    },
  });
  await putModule(id, { module: 'dokuwiki' });
  const outcomes = (): string[] => results.flatMap((r) => r.instances.filter((i) => i.id === id && i.outcome !== 'skipped').map((i) => (i.status?.conditions.find((c) => c.type === 'Degraded')?.reason ?? i.outcome)));
  const handle = runNodeAgent({ node: 1, resyncMs: 100, backoffBaseMs: 50, backoffMaxMs: 200, terminalRecheckMs: 500, onReconcile: (r) => results.push(r) }, resolving);
  try {
    await until('the terminal failure recorded', () => outcomes().includes('ImageResolutionFailed'), { timeoutMs: 60_000 });
    // Resyncs every 100 ms do not retry it (same generation) until the recheck is due.
    await until('a few resyncs', () => results.length >= 4, { timeoutMs: 60_000 });
    published = true;
    await until('rechecked after the repository published it', () => outcomes().includes('RegistryUnreachable'), { timeoutMs: 60_000 });
    expect(outcomes().filter((o) => o === 'ImageResolutionFailed').length).toBeLessThan(outcomes().length);
  } finally {
    await handle.stop();
    await admin.del(keys.desired('Module', id), keys.moduleStatus(id));
    await admin.srem(keys.desiredIndex('Module'), id);
  }
}, 120_000);
