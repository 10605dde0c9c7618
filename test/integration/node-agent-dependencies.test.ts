/**
 * `spec.dependsOn`: an instance is created only once the instances it depends on are Ready (any
 * node), and the node agent loop tries it again as soon as one of them changes status (the
 * `module-status-changed` channel), not at its next retry. Real redis-server; the image lives in
 * a registry that refuses connections (127.0.0.1:1), so nothing is created on the host and an
 * instance past its dependencies stops at reading its labels.
 */
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { ProcessRunner } from '../../src/host/runner.js';
import { runNodeAgent } from '../../src/node-agent/agent-loop.js';
import { createNodeAgentDeps, type NodeAgentDeps } from '../../src/node-agent/deps.js';
import { reconcileNodeOnce, type NodeReconcileResult } from '../../src/node-agent/reconcile.js';
import { readModuleStatus } from '../../src/node-agent/status.js';
import { channels, keys } from '../../src/state/keys.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait-for.js';
import { putDesiredModule } from '../support/desired-module.js';

let redis: TestRedis;
let admin: Redis;
let root: string;
let deps: NodeAgentDeps;
const IMAGE = '127.0.0.1:1/ns8ctl-examples/webapp:1.0.0';

async function putModule(id: string, node: number, dependsOn: string[] = []): Promise<void> {
  await putDesiredModule(admin, id, { image: IMAGE, node, ...(dependsOn.length ? { dependsOn } : {}) }, { source: 't.yaml', uuid: { set: '11111111-2222-4333-8444-555555555555' } });
}

/** What the node agent of another node writes when its instance is (or is not) Ready. */
async function setReady(id: string, ready: boolean): Promise<void> {
  await admin.hset(keys.moduleStatus(id), { id, node: '2', conditions: JSON.stringify([{ type: 'Ready', status: ready ? 'True' : 'False', reason: ready ? 'Converged' : 'UnitFailed', message: '' }]) });
  await admin.publish(channels.moduleStatusChanged, JSON.stringify({ module: id, node: 2 }));
}

beforeAll(async () => {
  redis = await startRedis();
  admin = redis.client();
  root = await fs.mkdtemp(path.join(tmpdir(), 'ns8ctl-node-agent-deps-'));
  deps = createNodeAgentDeps({ node: 1 }, { redis: admin, runner: new ProcessRunner(), layout: tempHostLayout(root), log: () => undefined });
});
afterAll(async () => {
  admin?.disconnect();
  await redis?.stop();
  if (root) await fs.rm(root, { recursive: true, force: true });
});

test('an instance waits for its dependencies, then goes on; one NS8 runs without ns8ctl counts once NS8 has it', async () => {
  await putModule('openldap1', 2);
  await putModule('webapp1', 1, ['mail1', 'openldap1']);
  await admin.hset(keys.moduleNode(), 'mail1', '1'); // made by NS8, not by ns8ctl
  await setReady('openldap1', false);
  const first = (await reconcileNodeOnce({ node: 1 }, deps)).instances.find((i) => i.id === 'webapp1')!;
  expect(first).toMatchObject({ outcome: 'blocked', retry: true, applied: [], waitingFor: ['openldap1'] });
  expect(first.error?.code).toBe('dependency_not_ready');
  const st = (await readModuleStatus(admin, 'webapp1'))!;
  expect(st.conditions.find((c) => c.type === 'Ready')).toEqual(expect.objectContaining({ status: 'False', reason: 'DependencyNotReady', message: 'waits for openldap1 (Ready=False: UnitFailed) before it is created (spec.dependsOn)' }));
  expect(st.conditions.find((c) => c.type === 'Degraded')).toMatchObject({ status: 'False' });
  // Nothing was made for it on the host.
  expect(await fs.readdir(path.join(root, 'home')).catch(() => [])).toEqual([]);
  // A dependency that does not exist at all is said so.
  await putModule('webapp2', 1, ['ghost1']);
  expect((await reconcileNodeOnce({ node: 1 }, deps)).instances.find((i) => i.id === 'webapp2')!.error?.message).toContain('waits for ghost1 (no such instance yet)');
  await admin.srem(keys.desiredIndex('Module'), 'webapp2');

  await setReady('openldap1', true);
  const next = (await reconcileNodeOnce({ node: 1 }, deps)).instances.find((i) => i.id === 'webapp1')!;
  expect(next.waitingFor).toBeUndefined();
  expect(next.error?.code).not.toBe('dependency_not_ready');
});

test('the loop tries a waiting instance again as soon as a dependency changes status', async () => {
  await admin.flushall();
  await putModule('openldap1', 2);
  await putModule('webapp1', 1, ['openldap1']);
  await setReady('openldap1', false);
  const results: NodeReconcileResult[] = [];
  const subscriber = admin.duplicate();
  const handle = runNodeAgent({ node: 1, resyncMs: 600_000, subscriber, onReconcile: (r) => results.push(r) }, deps);
  try {
    const waiting = (r: NodeReconcileResult) => r.instances.some((i) => i.id === 'webapp1' && i.waitingFor?.length);
    await waitFor('webapp1 waits', () => results.some(waiting));
    const seen = results.length;
    // Another instance's status changes: no retry of webapp1 (it does not depend on it).
    await admin.publish(channels.moduleStatusChanged, JSON.stringify({ module: 'other1', node: 2 }));
    await new Promise((r) => setTimeout(r, 300));
    expect(results.slice(seen).some((r) => r.instances.some((i) => i.id === 'webapp1' && i.outcome !== 'skipped'))).toBe(false);
    // Its dependency becomes Ready: tried at once (the fallback retry is 30 s away).
    await setReady('openldap1', true);
    await waitFor('webapp1 past its dependencies', () => results.slice(seen).some((r) => r.instances.some((i) => i.id === 'webapp1' && i.outcome !== 'skipped' && !i.waitingFor)), 10_000);
  } finally {
    await handle.stop();
    subscriber.disconnect();
  }
}, 30_000);
