/**
 * The node agent's step handlers that write Redis, one at a time, against a real redis-server;
 * podman, systemd and useradd are the fakes of test/support/node-agent-fakes.ts over a temp
 * layout (test/unit/node-agent-steps.test.ts covers the handlers that need no Redis).
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from '@jest/globals';
import { mkdtempSync, rmSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { finalizeTask, taskQueueKey } from '../../src/agent/task-store.js';
import { Ns8ctlError } from '../../src/errors.js';
import { applyStep, type StepContext } from '../../src/node-agent/applier.js';
import { RedisDesiredSource } from '../../src/node-agent/desired-source.js';
import { advanceMove, CLONES_KEY, openClone } from '../../src/node-agent/move/record.js';
import type { Step } from '../../src/node-agent/types.js';
import { channels, keys } from '../../src/state/keys.js';
import { readEvents } from '../../src/state/events.js';
import { putDesiredModule } from '../support/desired-module.js';
import { fakeNodeAgent, type FakeNodeAgent } from '../support/node-agent-fakes.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { until } from '../support/wait-for.js';

const ID = 'web1';
const URL = '127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0';
let redis: TestRedis;
let admin: Redis;
let root: string;
let f: FakeNodeAgent;
let ctx: StepContext;

const step = <K extends Step['kind']>(kind: K, fields: Omit<Extract<Step, { kind: K }>, 'id' | 'kind' | 'reason'>): Step => ({ id: ID, kind, reason: 'test', ...fields }) as unknown as Step;

beforeAll(async () => {
  redis = await startRedis();
  admin = redis.client();
}, 60_000);

afterAll(async () => {
  admin?.disconnect();
  await redis?.stop();
});

beforeEach(async () => {
  await admin.flushall();
  root = mkdtempSync(path.join(tmpdir(), 'ns8ctl-steps-redis-'));
  f = await fakeNodeAgent(root);
  f.deps.redis = admin;
  ctx = { deps: f.deps, node: 1, id: ID, rootfull: false, imageUrl: URL };
  await applyStep(step('create-user', {}), ctx);
  await applyStep(step('create-install-dir', {}), ctx);
});

afterEach(() => rmSync(root, { recursive: true, force: true }));

const stateDir = (): string => path.join(f.layout.homeBase, ID, '.config', 'state');

describe('credentials', () => {
  test('apply-acl creates the module/<id> ACL user with the password of state/agent.env and records its line; delete-acl removes it', async () => {
    await applyStep(step('write-agent-env', {}), ctx);
    const password = /REDIS_PASSWORD=(\S+)/.exec(await fs.readFile(path.join(stateDir(), 'agent.env'), 'utf8'))?.[1] ?? '';
    expect(password).toMatch(/^[A-Za-z0-9_-]{16,}$/);
    await applyStep(step('apply-acl', {}), ctx);
    expect(await admin.call('ACL', 'LIST')).toEqual(expect.arrayContaining([expect.stringMatching(/^user module\/web1 on /)]));
    const line = (await f.deps.records.get(ID))?.aclLine ?? '';
    expect(line).toMatch(/^user module\/web1 on /);
    // The password is stored hashed, never in clear.
    expect(line).not.toContain(password);
    await applyStep(step('delete-acl', {}), ctx);
    expect(((await admin.call('ACL', 'LIST')) as string[]).some((l) => l.startsWith('user module/web1 '))).toBe(false);
  });

  test('apply-acl refuses an agent.env without REDIS_PASSWORD and creates no user', async () => {
    await fs.writeFile(path.join(stateDir(), 'agent.env'), 'AGENT_ID=module/web1\n');
    await expect(applyStep(step('apply-acl', {}), ctx)).rejects.toMatchObject({ code: 'agent_env_invalid' });
    expect(((await admin.call('ACL', 'LIST')) as string[]).some((l) => l.startsWith('user module/web1 '))).toBe(false);
  });

  test('set-flags replaces the flags set; no flags deletes it', async () => {
    await admin.sadd(keys.moduleFlags(ID), 'stale');
    await applyStep(step('set-flags', { flags: ['rootless', 'no_data_backup'] }), ctx);
    expect((await admin.smembers(keys.moduleFlags(ID))).sort()).toEqual(['no_data_backup', 'rootless']);
    await applyStep(step('set-flags', { flags: [] }), ctx);
    expect(await admin.exists(keys.moduleFlags(ID))).toBe(0);
  });

  test("set-authorizations replaces the module's authorizations and gives it NS8's owner and reader roles", async () => {
    await admin.sadd(`cluster/authorizations/module/${ID}`, 'old@node:x');
    await applyStep(step('set-authorizations', { authorizations: ['traefik@node:routeadm'] }), ctx);
    expect(await admin.smembers(`cluster/authorizations/module/${ID}`)).toEqual(['traefik@node:routeadm']);
    expect(await admin.smembers(`module/${ID}/roles/owner`)).toEqual(['*']);
    expect((await admin.smembers(`module/${ID}/roles/reader`)).length).toBeGreaterThan(0);
  });

  test('set-default-instance takes the free default-instance keys and leaves the ones another instance holds', async () => {
    await admin.set('cluster/default_instance/webapp', 'web9');
    await applyStep(step('set-default-instance', { module: 'webapp', cluster: true, node: true }), ctx);
    expect(await admin.get('cluster/default_instance/webapp')).toBe('web9');
    expect(await admin.get('node/1/default_instance/webapp')).toBe(ID);
  });
});

describe('environment mirror and ports', () => {
  test('mirror-environment replaces module/<id>/environment; an empty environment deletes it', async () => {
    await admin.hset(keys.moduleEnvironment(ID), { STALE: '1' });
    await applyStep(step('mirror-environment', { env: { MODULE_ID: ID, TCP_PORT: '20001' } }), ctx);
    expect(await admin.hgetall(keys.moduleEnvironment(ID))).toEqual({ MODULE_ID: ID, TCP_PORT: '20001' });
    await applyStep(step('mirror-environment', { env: {} }), ctx);
    expect(await admin.exists(keys.moduleEnvironment(ID))).toBe(0);
  });

  test('allocate-ports gives a range of the demanded size in the node range, the same one again, and never one another instance holds; free-ports releases both protocols', async () => {
    await applyStep(step('allocate-ports', { proto: 'tcp', demand: 3 }), ctx);
    const mine = await admin.hget(keys.nodePorts(1), `${ID}/tcp`);
    expect(mine).toMatch(/^\d+-\d+$/);
    const [a, b] = (mine as string).split('-').map(Number) as [number, number];
    expect(b - a + 1).toBe(3);
    expect(a).toBeGreaterThanOrEqual(20000);
    await applyStep(step('allocate-ports', { proto: 'tcp', demand: 3 }), ctx);
    expect(await admin.hget(keys.nodePorts(1), `${ID}/tcp`)).toBe(mine);
    await applyStep(step('allocate-ports', { proto: 'tcp', demand: 2 }), { ...ctx, id: 'web2' });
    const other = ((await admin.hget(keys.nodePorts(1), 'web2/tcp')) as string).split('-').map(Number) as [number, number];
    expect(other[0] > b || other[1] < a).toBe(true);
    await applyStep(step('allocate-ports', { proto: 'udp', demand: 1 }), ctx);
    await applyStep(step('free-ports', {}), ctx);
    expect(await admin.hmget(keys.nodePorts(1), `${ID}/tcp`, `${ID}/udp`)).toEqual([null, null]);
    expect(await admin.hget(keys.nodePorts(1), 'web2/tcp')).not.toBeNull();
  });

  test("allocate-ports keeps the ports of an instance NS8 runs here without ns8ctl out of the new range", async () => {
    await admin.hset(keys.moduleNode(), 'ns8app1', '1');
    await admin.hset(keys.moduleEnvironment('ns8app1'), { TCP_PORT: '20000', TCP_PORTS_RANGE: '20000-20004' });
    await applyStep(step('allocate-ports', { proto: 'tcp', demand: 2 }), ctx);
    const [a] = ((await admin.hget(keys.nodePorts(1), `${ID}/tcp`)) as string).split('-').map(Number) as [number, number];
    expect(a).toBeGreaterThan(20004);
    expect(f.logs.join('\n')).toMatch(/ports of instances ns8ctl does not manage reserved on node 1: ns8app1\/tcp=20000-20004/);
  });

  test('set-ports-demand records the demand in the cluster hash; demand 0 removes the field', async () => {
    await applyStep(step('set-ports-demand', { proto: 'tcp', demand: 2 }), ctx);
    expect(await admin.hget(keys.tcpPortsDemand(), ID)).toBe('2');
    await applyStep(step('set-ports-demand', { proto: 'tcp', demand: 0 }), ctx);
    expect(await admin.hexists(keys.tcpPortsDemand(), ID)).toBe(0);
  });
});

/** Answers the next task of module/web1 with `exitCode` (as the module agent would), once. */
async function answerNextTask(exitCode: number, error = ''): Promise<string> {
  const agent = redis.client();
  try {
    const popped = (await agent.brpop(taskQueueKey(`module/${ID}`), 20)) as [string, string] | null;
    if (!popped) throw new Error('no task was queued');
    const task = JSON.parse(popped[1]) as { id: string; action: string };
    await finalizeTask(admin, `module/${ID}`, task.id, { status: exitCode === 0 ? 'completed' : 'aborted', exitCode, output: '', error }, 100);
    return task.action;
  } finally {
    agent.disconnect();
  }
}

describe('lifecycle actions through the module agent', () => {
  test('run-lifecycle sends the action to the instance agent and clears the owed action once it completed; a module without the action (exit 8) is fine', async () => {
    await f.deps.records.update(ID, { lifecycle: { action: 'create-module', image: URL } });
    const answered = answerNextTask(8);
    await applyStep(step('run-lifecycle', { action: 'create-module', data: {} }), ctx);
    expect(await answered).toBe('create-module');
    expect((await f.deps.records.get(ID))?.lifecycle).toBeUndefined();
    expect(f.logs.join('\n')).toMatch(/web1: the module has no create-module action: nothing to run/);
  }, 30_000);

  test('a failed run-lifecycle names the exit code and the end of the error output, and is owed again without its task id', async () => {
    await f.deps.records.update(ID, { lifecycle: { action: 'update-module', image: URL } });
    const answered = answerNextTask(2, 'step 1\nstep 2 failed: no database');
    await expect(applyStep(step('run-lifecycle', { action: 'update-module', data: {} }), ctx)).rejects.toMatchObject({
      code: 'lifecycle_action_failed',
      message: expect.stringMatching(/web1: update-module failed with exit code 2 .*step 2 failed: no database/),
    });
    await answered;
    expect((await f.deps.records.get(ID))?.lifecycle).toEqual({ action: 'update-module', image: URL });
  }, 30_000);

  test('while started units settle, a unit failing ends the wait for an unanswered task with that failure, and the task stays owed by its id', async () => {
    await f.deps.records.update(ID, { lifecycle: { action: 'create-module', image: URL } });
    let fail!: (e: Ns8ctlError) => void;
    const done = new Promise<Ns8ctlError | undefined>((r) => (fail = r));
    const settling: StepContext = { ...ctx, deps: { ...ctx.deps, lifecycleTimeoutMs: 600_000 }, settling: { step: step('start-units', { units: ['agent.service'] }), done } };
    const run = applyStep(step('run-lifecycle', { action: 'create-module', data: {} }), settling);
    // Nobody answers (the module agent is the unit that failed): the task was submitted and recorded.
    await until('the task is recorded', async () => (await f.deps.records.get(ID))?.lifecycle?.taskId !== undefined);
    fail(new Ns8ctlError('unit_failed', `${ID}: unit agent.service did not start: agent.service is failed`));
    await expect(run).rejects.toMatchObject({ code: 'unit_failed', message: expect.stringContaining('agent.service did not start') });
    expect((await f.deps.records.get(ID))?.lifecycle?.taskId).toEqual(expect.any(String));
  }, 30_000);
});

describe('the node-agent finalizer on the desired Module (the real source)', () => {
  beforeEach(() => {
    f.deps.source = new RedisDesiredSource(admin);
  });

  test('add-finalizer holds the Module before anything is created and records the node; a Module being deleted or gone is refused', async () => {
    await putDesiredModule(admin, ID, { image: URL, node: 1 }, { node: 1, uuid: { set: 'u-1' } });
    await applyStep(step('add-finalizer', {}), ctx);
    expect(await admin.hget(keys.desired('Module', ID), 'finalizers')).toBe('node-agent');
    expect(await f.deps.records.get(ID)).toMatchObject({ node: 1, imageUrl: URL });
    await putDesiredModule(admin, 'web2', { image: URL, node: 1 }, { fields: { deleting: '2026-12-05T00:00:00Z' } });
    await expect(applyStep(step('add-finalizer', {}), { ...ctx, id: 'web2' })).rejects.toMatchObject({ code: 'module_deleting' });
    await expect(applyStep(step('add-finalizer', {}), { ...ctx, id: 'web3' })).rejects.toMatchObject({ code: 'module_deleting' });
    expect(await admin.hget(keys.desired('Module', 'web2'), 'finalizers')).toBeNull();
  });

  test('release-finalizer lets a deleting Module go with its NS8 bookkeeping; a Module not being deleted only loses the finalizer', async () => {
    await putDesiredModule(admin, ID, { image: URL, node: 1 }, { node: 1, uuid: { set: 'u-1' }, fields: { finalizers: 'node-agent' } });
    await applyStep(step('release-finalizer', {}), ctx);
    expect(await admin.hget(keys.desired('Module', ID), 'finalizers')).toBe('');
    expect(await admin.hget(keys.moduleNode(), ID)).toBe('1');
    await admin.hset(keys.desired('Module', ID), { finalizers: 'node-agent', deleting: '2026-12-05T00:00:00Z' });
    await admin.hset(keys.moduleConfiguration(ID), { digest: 'd' });
    await applyStep(step('release-finalizer', {}), ctx);
    expect(await admin.exists(keys.desired('Module', ID), keys.moduleConfiguration(ID))).toBe(0);
    expect(await admin.sismember(keys.desiredIndex('Module'), ID)).toBe(0);
    expect(await admin.hget(keys.moduleNode(), ID)).toBeNull();
    expect(await admin.hget(keys.moduleUuid(), ID)).toBeNull();
  });
});

describe('events and removal', () => {
  test("publish-added and publish-removed announce the instance with NS8's payload; publish-added is recorded", async () => {
    const sub = redis.client();
    const got: { channel: string; message: string }[] = [];
    try {
      sub.on('message', (channel: string, message: string) => void got.push({ channel, message }));
      await sub.subscribe(channels.moduleAdded, channels.moduleRemoved);
      await applyStep(step('publish-added', {}), ctx);
      await applyStep(step('publish-removed', {}), ctx);
      await until('both events received', () => got.length === 2);
      expect(got).toEqual([
        { channel: channels.moduleAdded, message: JSON.stringify({ module: ID, node: 1 }) },
        { channel: channels.moduleRemoved, message: JSON.stringify({ module: ID, node: 1 }) },
      ]);
      expect((await f.deps.records.get(ID))?.announced).toBe(true);
    } finally {
      sub.disconnect();
    }
  });

  test("delete-module-keys removes the instance's keys, status, demand, authorizations, configuration record and default-instance keys, and nothing of another instance", async () => {
    await admin.hset(keys.moduleEnvironment(ID), { A: '1' });
    await admin.sadd(keys.moduleFlags(ID), 'rootless');
    await admin.hset(keys.moduleStatus(ID), { conditions: '[]' });
    await admin.hset(keys.tcpPortsDemand(), ID, '1', 'web2', '1');
    await admin.sadd(`cluster/authorizations/module/${ID}`, 'x@node:y');
    await admin.hset(keys.moduleConfiguration(ID), { digest: 'd' });
    await admin.set('cluster/default_instance/webapp', ID);
    await admin.set('node/1/default_instance/other', 'web2');
    await admin.hset(keys.moduleEnvironment('web2'), { A: '2' });
    await applyStep(step('delete-module-keys', {}), ctx);
    expect(await admin.keys(`module/${ID}/*`)).toEqual([]);
    for (const k of [keys.moduleStatus(ID), `cluster/authorizations/module/${ID}`, keys.moduleConfiguration(ID), 'cluster/default_instance/webapp']) expect(await admin.exists(k)).toBe(0);
    expect(await admin.hgetall(keys.tcpPortsDemand())).toEqual({ web2: '1' });
    expect(await admin.get('node/1/default_instance/other')).toBe('web2');
    expect(await admin.hgetall(keys.moduleEnvironment('web2'))).toEqual({ A: '2' });
  });

  test('run-destroy-module without a module agent answering times out and counts the attempt; after the last attempt the removal goes on without it', async () => {
    const run = (): Promise<void> => applyStep(step('run-destroy-module', { data: { module_id: ID, preserve_data: false } }), ctx);
    await expect(run()).rejects.toMatchObject({ code: 'task_timeout' });
    const first = (await f.deps.records.get(ID))?.destroy;
    expect(first?.attempts).toBe(1);
    // The task stays queued for the agent: the next attempt waits for the same one, never a second.
    expect(first?.taskId).toEqual(expect.any(String));
    await expect(run()).rejects.toMatchObject({ code: 'task_timeout' });
    expect(await admin.llen(`module/${ID}/tasks`)).toBe(1);
    await run();
    expect((await f.deps.records.get(ID))?.destroy).toMatchObject({ attempts: 3, done: true });
    expect(f.logs.join('\n')).toMatch(/destroy-module failed 3 times, removing the instance without it/);
  }, 30_000);
});

describe('completing a move on the target', () => {
  test('complete-move marks the record done, names this node in cluster/module_node and records module-moved with the downtime', async () => {
    const c2 = { ...ctx, node: 2 };
    await admin.hset('ns8ctl/moves', ID, JSON.stringify({ from: 1, to: 2, state: 'sent', downtimeFrom: f.deps.now().getTime() - 4000 }));
    await admin.hset(keys.moduleNode(), ID, '1');
    await applyStep(step('complete-move', { from: 1 }), c2);
    expect(JSON.parse((await admin.hget('ns8ctl/moves', ID))!)).toMatchObject({ state: 'done' });
    expect(await admin.hget(keys.moduleNode(), ID)).toBe('2');
    expect((await f.deps.records.get(ID))?.move).toEqual({ from: 1, done: true, completed: true });
    const [ev] = (await readEvents(admin)).filter((e) => e.name === 'module-moved');
    expect(ev?.message).toMatch(/moved from node 1 to node 2; services were down [0-9.]+ s/);
  });

  test('complete-move after a crash that came once the source had already cleaned up (no record left) still finishes the bookkeeping', async () => {
    await admin.hset(keys.moduleNode(), ID, '1');
    await applyStep(step('complete-move', { from: 1 }), { ...ctx, node: 2 });
    expect(await admin.hget(keys.moduleNode(), ID)).toBe('2');
    expect((await f.deps.records.get(ID))?.move).toMatchObject({ completed: true });
  });

  test('complete-move refuses a record that now names another target', async () => {
    await admin.hset('ns8ctl/moves', ID, JSON.stringify({ from: 1, to: 3, state: 'sent' }));
    await expect(applyStep(step('complete-move', { from: 1 }), { ...ctx, node: 2 })).rejects.toThrow(/no move to node 2 is recorded/);
  });
});

describe('clone records', () => {
  test('a clone record is opened once (a second open finds the first), moves only from the state it expects, and a null field is removed from it', async () => {
    const first = await openClone(admin, ID, { from: 1, to: 2, source: 'webapp9', state: 'requested' });
    const again = await openClone(admin, ID, { from: 3, to: 2, source: 'webapp9', state: 'requested' });
    expect(again).toEqual(first);
    expect(await advanceMove(admin, ID, 'receiving', { state: 'sent' }, CLONES_KEY)).toBe(false);
    expect(await advanceMove(admin, ID, 'requested', { state: 'requested', lastError: 'rsync: connection refused' }, CLONES_KEY)).toBe(true);
    expect(JSON.parse((await admin.hget(CLONES_KEY, ID))!)).toMatchObject({ lastError: 'rsync: connection refused' });
    expect(await advanceMove(admin, ID, 'requested', { state: 'source-ready', volumes: ['data'], lastError: null }, CLONES_KEY)).toBe(true);
    const rec = JSON.parse((await admin.hget(CLONES_KEY, ID))!) as Record<string, unknown>;
    expect(rec).toEqual({ from: 1, to: 2, source: 'webapp9', state: 'source-ready', volumes: ['data'] });
    // A move record of the same id is another hash: untouched.
    expect(await admin.hexists('ns8ctl/moves', ID)).toBe(0);
  });

  test('complete-move of a clone removes its record and password, leaves cluster/module_node alone and records module-cloned with the source and its downtime', async () => {
    await admin.hset(CLONES_KEY, ID, JSON.stringify({ from: 1, to: 2, source: 'webapp9', state: 'sent', downtimeMs: 1500 }));
    await admin.hset(keys.moveSecrets(), ID, 'receiver-password');
    await admin.hset(keys.moduleNode(), ID, '2');
    await applyStep(step('complete-move', { from: 1, source: 'webapp9' }), { ...ctx, node: 2 });
    expect(await admin.hexists(CLONES_KEY, ID)).toBe(0);
    expect(await admin.hexists(keys.moveSecrets(), ID)).toBe(0);
    expect(await admin.hget(keys.moduleNode(), ID)).toBe('2');
    expect((await f.deps.records.get(ID))?.move).toEqual({ from: 1, done: true, completed: true, source: 'webapp9' });
    const [ev] = (await readEvents(admin)).filter((e) => e.name === 'module-cloned');
    expect(ev?.message).toBe(`${ID} cloned from webapp9 on node 1 to node 2; webapp9's services were stopped 1.5 s for the final pass`);
    expect(JSON.stringify(await readEvents(admin))).not.toContain('receiver-password');
  });
});
