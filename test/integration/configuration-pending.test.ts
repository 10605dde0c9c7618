/**
 * configure-module without blocking the controller, against a real redis-server and a REAL module
 * agent (runAgent) started only when the test wants an answer: a task is submitted once and
 * remembered, a reconcile gives its work-queue slot back while the task waits, the result of that
 * same task is read later, a task no agent took is withdrawn after the timeout, a changed
 * configuration replaces a queued task, and an abort (SIGTERM) ends the wait at once.
 */
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { runAgent, type AgentHandle } from '../../src/agent/agent.js';
import { applyPlan, preparePlan } from '../../src/apply/pipeline.js';
import { findCondition } from '../../src/controller/conditions.js';
import { Controller } from '../../src/controller/controller.js';
import { EventRecorder, readEvents } from '../../src/state/events.js';
import { createLogger } from '../../src/runtime/log.js';
import { reconcileModuleSummary, type ModuleReconcilerDeps } from '../../src/controller/module-reconciler.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { keys } from '../../src/state/keys.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait-for.js';

const ID = 'pendemo1';
const QUEUE = `module/${ID}/tasks`;

const manifest = (greeting: string): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Node
metadata: {name: node1}
spec: {id: 1}
---
apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata:
  name: ${ID}
spec:
  image: 127.0.0.1:1/ns8ctl-test/pendemo:1.0.0
  node: 1
  configuration:
    greeting: ${greeting}
`;

let server: TestRedis;
let redis: Redis;
let root: string;
let installDir: string;
let clock = Date.parse('2025-05-01T10:00:00Z');

const configureRuns = (): string[] => {
  try {
    return readFileSync(path.join(installDir, 'state', 'configure.log'), 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
};

function startAgent(): Promise<AgentHandle> {
  const a = runAgent(
    { agentId: `module/${ID}`, installDir, stateDir: path.join(installDir, 'state'), actionsDirs: [path.join(installDir, 'actions')], pollSeconds: 1, log: () => undefined },
    { redis: server.client(), runner: new ProcessRunner() },
  );
  return a.start().then(() => a);
}

/** What the node agent would write once the instance runs the stored generation. */
async function agentReady(): Promise<void> {
  const generation = await redis.hget(keys.desired('Module', ID), 'generation');
  await redis.hset(keys.moduleStatus(ID), {
    node: '1',
    observedGeneration: generation ?? '0',
    conditions: JSON.stringify([
      { type: 'Ready', status: 'True', reason: 'Running', message: 'running' },
      { type: 'Degraded', status: 'False', reason: 'Running', message: '' },
    ]),
  });
}

async function apply(greeting: string): Promise<void> {
  const file = path.join(root, 'm.yaml');
  writeFileSync(file, manifest(greeting));
  const prepared = await preparePlan([file], redis, { applySet: 'default', prune: false, configuration: false });
  await applyPlan(prepared, redis, { applySet: 'default', prune: false, forcePrune: false, runner: new ProcessRunner() });
  await agentReady();
}

function deps(opts: { waitMs?: number; signal?: AbortSignal; requeue?: (ms: number) => void } = {}): ModuleReconcilerDeps {
  return {
    redis,
    events: new EventRecorder(redis, { now: () => new Date(clock) }),
    now: () => new Date(clock),
    ...(opts.requeue ? { requeueAfter: opts.requeue } : {}),
    configuration: { selfHeal: () => false, driftCheckEveryMs: 3_600_000, taskTimeoutMs: 60_000, taskWaitMs: opts.waitMs ?? 200, ...(opts.signal ? { signal: opts.signal } : {}) },
  };
}

const queued = async (): Promise<{ id: string; action: string; data: { greeting?: string } }[]> => (await redis.lrange(QUEUE, 0, -1)).map((j) => JSON.parse(j) as { id: string; action: string; data: { greeting?: string } });
const pendingTask = async (): Promise<string | null> => redis.hget(keys.moduleConfiguration(ID), 'pendingTask');

beforeAll(async () => {
  server = await startRedis();
  redis = server.client();
  root = mkdtempSync(path.join(tmpdir(), 'ns8ctl-confpend-'));
  installDir = path.join(root, 'var', ID);
  mkdirSync(path.join(installDir, 'actions', 'configure-module'), { recursive: true });
  mkdirSync(path.join(installDir, 'state'));
  writeFileSync(path.join(installDir, 'state', 'environment'), `MODULE_ID=${ID}\n`);
  const step = path.join(installDir, 'actions', 'configure-module', '20configure');
  writeFileSync(step, '#!/bin/sh\ncat >> configure.log\necho >> configure.log\n');
  chmodSync(step, 0o755);
});

afterAll(async () => {
  await server.stop();
  rmSync(root, { recursive: true, force: true });
});

describe('configure-module tasks that take a while', () => {
  it('submits configure-module once while no agent answers, gives the slot back, and later reads that same task', async () => {
    await apply('Hello');
    let requeue: number | undefined;
    const first = await reconcileModuleSummary(ID, deps({ requeue: (ms) => (requeue = ms) }));
    expect(findCondition(first?.conditions, 'Reconciling')).toMatchObject({ status: 'True', reason: 'Configuring' });
    expect(findCondition(first?.conditions, 'Reconciling')?.message).toContain('waits for the module agent');
    expect(requeue).toBeGreaterThanOrEqual(1000);
    const tasks = await queued();
    expect(tasks.map((t) => t.action)).toEqual(['configure-module']);
    expect(await pendingTask()).toBe(tasks[0]!.id);

    // More reconciles meanwhile: no second task.
    await reconcileModuleSummary(ID, deps());
    await reconcileModuleSummary(ID, deps());
    expect((await queued()).map((t) => t.id)).toEqual([tasks[0]!.id]);

    const agent = await startAgent();
    try {
      await waitFor('the agent ran the task', async () => (await redis.exists(`task/module/${ID}/${tasks[0]!.id}/exit_code`)) === 1);
    } finally {
      await agent.stop();
    }
    const done = await reconcileModuleSummary(ID, deps());
    expect(findCondition(done?.conditions, 'Ready')).toMatchObject({ status: 'True', reason: 'Converged' });
    expect(await redis.hget(keys.moduleConfiguration(ID), 'appliedTask')).toBe(tasks[0]!.id);
    expect(await pendingTask()).toBeNull();
    expect(configureRuns()).toEqual(['{"greeting":"Hello"}']);
    expect((await readEvents(redis)).filter((e) => e.name === 'module-configured')).toHaveLength(1);
  });

  it('withdraws a task no agent took within the timeout, and submits a new one only on the retry', async () => {
    await apply('Second');
    await reconcileModuleSummary(ID, deps());
    const [task] = await queued();
    expect(task?.data.greeting).toBe('Second');
    clock += 61_000;
    const err = await reconcileModuleSummary(ID, deps()).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'task_timeout' });
    expect((err as Error).message).toContain(`withdrawn from ${QUEUE}`);
    expect(await queued()).toEqual([]);
    expect(await pendingTask()).toBeNull();
    // The summary says why while the work queue backs off.
    const summary = JSON.parse((await redis.hget(keys.objectConditions('Module', ID), 'conditions')) ?? '[]') as { type: string; reason: string }[];
    expect(summary.find((c) => c.type === 'Reconciling')?.reason).toBe('Configuring');
    await reconcileModuleSummary(ID, deps());
    expect((await queued()).map((t) => t.data.greeting)).toEqual(['Second']);
  });

  it('replaces a queued task when spec.configuration changes, instead of adding one', async () => {
    const before = await queued();
    expect(before).toHaveLength(1);
    await apply('Third');
    await reconcileModuleSummary(ID, deps());
    const after = await queued();
    expect(after.map((t) => t.data.greeting)).toEqual(['Third']);
    expect(after[0]!.id).not.toBe(before[0]!.id);
  });

  it('ends the wait at once when aborted, keeping the task pending for the next reconcile', async () => {
    const stop = new AbortController();
    const id = await pendingTask();
    setTimeout(() => stop.abort(), 100);
    // The wait would be 10 minutes; only the abort can end it within the test's time.
    await reconcileModuleSummary(ID, deps({ waitMs: 600_000, signal: stop.signal }));
    expect(await pendingTask()).toBe(id);
    expect((await queued()).map((t) => t.id)).toEqual([id]);

    const agent = await startAgent();
    try {
      await waitFor('the agent ran the task', async () => (await redis.exists(`task/module/${ID}/${id}/exit_code`)) === 1);
    } finally {
      await agent.stop();
    }
    await reconcileModuleSummary(ID, deps());
    // Of all the reconciles above, exactly one more configure-module ran: the latest configuration.
    expect(configureRuns()).toEqual(['{"greeting":"Hello"}', '{"greeting":"Third"}']);
  });

  it('lets a controller stop at once while a module agent task waits for an agent', async () => {
    const m = path.join(root, 'ctl');
    mkdirSync(m);
    writeFileSync(path.join(m, 'm.yaml'), manifest('Fourth'));
    const c = new Controller(
      { sources: [{ name: 'default', kind: 'directory', paths: [m], prune: false, selfHeal: true }], resyncMs: 0, leaseMs: 5000, concurrency: 2, configuration: { taskWaitMs: 600_000, taskTimeoutMs: 600_000 } },
      { redis: server.client(), runner: new ProcessRunner(), logger: createLogger('json', () => undefined), configurationSchemas: { find: async () => undefined } },
    );
    await c.start();
    try {
      await waitFor('the new configuration applied', async () => (await redis.hget(keys.desired('Module', ID), 'object'))?.includes('Fourth'));
      await agentReady();
      c.trigger(`Module/${ID}`);
      // Depending on timing the first task is configure-module, or a drift check (get-configuration) of the previous one.
      await waitFor('a task submitted', async () => (await queued()).length > 0 && (await pendingTask()) !== null);
    } finally {
      // The reconcile waits on a 10-minute task wait: stop must not.
      await c.stop();
    }
    expect(c.isLeader).toBe(false);
    expect(await redis.exists('ns8ctl/controller/leader')).toBe(0);
    expect(await pendingTask()).toBe((await queued())[0]!.id);
  });
});
