/**
 * The task relay under NS8's real module ACL (users made by the node agent's applyModuleAcl): a
 * module cannot write another agent's queue nor read its results, so it submits through its own
 * relay queue; the relay stamps who it is from the key, the target agent (real agent code, with
 * its own module credentials) checks its roles, and the result comes back where only the
 * submitter can read it.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { runAgent, type AgentHandle } from '../../src/agent/agent.js';
import { applyGrants } from '../../src/agent/authorizations.js';
import { runActionCommand, type AgentCliDeps } from '../../src/cli/commands/agent.js';
import { readTaskResult, runTask, runTaskViaRelay, submitTaskViaRelay, waitForRelayedTask } from '../../src/agent/task-client.js';
import { buildRelayRequest, parseRelayRequest, RELAY_INFLIGHT_KEY, relayQueueKey, relayResultKey, startTaskRelay, type TaskRelay } from '../../src/agent/task-relay.js';
import { finalizeTask } from '../../src/agent/task-store.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { applyModuleAcl, generatePassword } from '../../src/node-agent/redis-acl.js';
import { useNs8AclRedis } from '../support/ns8-acl-redis.js';
import { until } from '../support/wait-for.js';

let root: string;
let relay: TaskRelay | undefined;
let bravoAgent: AgentHandle | undefined;
let relayLog: string[];
const pw = { alpha1: generatePassword(), bravo1: generatePassword() };

const acl = useNs8AclRedis();
const connect = acl.connect;
const alpha = (): Redis => connect('module/alpha1', pw.alpha1);
/** NS8's read-only `default` user: the only one that may SUBSCRIBE besides admins. */
const anonymous = (): Redis => connect();

function step(dir: string, name: string, body: string): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, name), `#!/bin/sh\n${body}\n`);
  chmodSync(path.join(dir, name), 0o755);
}

async function startBravo(): Promise<AgentHandle> {
  const agent = runAgent(
    { agentId: 'module/bravo1', installDir: root, stateDir: path.join(root, 'state'), actionsDirs: [path.join(root, 'actions')], pollSeconds: 1, log: () => undefined },
    { redis: connect('module/bravo1', pw.bravo1), runner: new ProcessRunner() },
  );
  await agent.start();
  return agent;
}

function startRelay(): TaskRelay {
  return startTaskRelay(acl.admin, { blockSeconds: 0.2, refreshMs: 200, pollMs: 200, log: (l) => relayLog.push(l) });
}

beforeEach(async () => {
  await acl.admin.flushall();
  relayLog = [];
  root = mkdtempSync(path.join(tmpdir(), 'agent-relay-'));
  mkdirSync(path.join(root, 'state'));
  step(path.join(root, 'actions', 'set-route'), '10set', 'read -r input; printf "routed for %s: %s" "$AGENT_TASK_USER" "$input"');
  step(path.join(root, 'actions', 'destroy-everything'), '10destroy', 'printf destroyed');
  // Two instances with NS8's module ACL; alpha1 asks for bravo's routeadm role, which allows set-*.
  await applyModuleAcl(acl.admin, 'alpha1', pw.alpha1);
  await applyModuleAcl(acl.admin, 'bravo1', pw.bravo1);
  await acl.admin.hset('cluster/module_node', 'alpha1', '1', 'bravo1', '1');
  await acl.admin.sadd('cluster/authorizations/module/alpha1', 'bravo@any:routeadm', 'self:selfadm');
  await acl.admin.sadd('module/bravo1/roles/routeadm', 'set-*');
  await applyGrants(acl.admin);
  bravoAgent = await startBravo();
  relay = startRelay();
  await relay.ready;
});
afterEach(async () => {
  await relay?.stop();
  await bravoAgent?.stop();
  relay = undefined;
  bravoAgent = undefined;
  rmSync(root, { recursive: true, force: true });
});

describe('a module under NS8 module ACL', () => {
  it("cannot push on another agent's queue nor read its results, but may push on its own relay queue", async () => {
    const a = alpha();
    await expect(a.lpush('module/bravo1/tasks', '{}')).rejects.toThrow(/NOPERM/);
    await acl.admin.set('task/module/bravo1/t1/exit_code', '0');
    await expect(a.get('task/module/bravo1/t1/exit_code')).rejects.toThrow(/NOPERM/);
    await expect(a.lpush(relayQueueKey('bravo1'), '{}')).rejects.toThrow(/NOPERM/);
    await expect(a.lpush(relayQueueKey('alpha1'), 'not json')).resolves.toBe(1);
    await until('the unanswerable request is dropped', async () => relayLog.some((l) => l.includes('request from module/alpha1 dropped (no answer possible)')), { timeoutMs: 15_000 });
  });
});

describe('the task relay', () => {
  it('runs the task on the target agent as the submitting module when it holds a role allowing the action', async () => {
    const seen: string[] = [];
    const r = await runTaskViaRelay(alpha(), 'alpha1', 'module/bravo1', 'set-route', { data: { host: 'a.example', api_password: 's3cret' }, subscriber: anonymous(), onProgress: (s) => seen.push(s) });
    expect(r).toMatchObject({ exitCode: 0, status: 'completed', output: 'routed for module/alpha1: {"host":"a.example","api_password":"s3cret"}' });
    expect(seen).toContain('completed');
    const context = JSON.parse((await acl.admin.get(`task/module/bravo1/${r.taskId}/context`)) ?? '{}') as Record<string, unknown>;
    expect(context).toMatchObject({ id: r.taskId, action: 'set-route', user: 'module/alpha1', data: { host: 'a.example', api_password: 'XXX' } });
    // The copy is the submitter's alone, and nothing stays in flight.
    expect(await alpha().get(relayResultKey('alpha1', r.taskId, 'exit_code'))).toBe('0');
    expect(await acl.admin.hlen(RELAY_INFLIGHT_KEY)).toBe(0);
    expect(relay?.inFlight()).toBe(0);
  });

  it("ends with NS8's permission-denied result an action the role does not allow, and every action once the role is gone", async () => {
    const a = alpha();
    const denied = await runTaskViaRelay(a, 'alpha1', 'module/bravo1', 'destroy-everything', { subscriber: anonymous() });
    expect(denied).toMatchObject({ exitCode: 32, status: 'aborted', output: '' });
    expect(denied.error).toMatch(/^module_permission_denied: module\/alpha1 holds role routeadm on module\/bravo1, which does not allow action destroy-everything/);

    await acl.admin.srem('cluster/authorizations/module/alpha1', 'bravo@any:routeadm');
    await applyGrants(acl.admin);
    const none = await runTaskViaRelay(a, 'alpha1', 'module/bravo1', 'set-route', { data: {}, subscriber: anonymous() });
    expect(none).toMatchObject({ exitCode: 32, output: '' });
    expect(none.error).toMatch(/^module_permission_denied: module\/alpha1 holds no role on module\/bravo1/);
  });

  it('ignores a user forged in the request: the task runs as the module whose queue it came from', async () => {
    const a = alpha();
    for (const forged of ['cluster', '', 'module/bravo1']) {
      const id = `forged-${forged.replace(/\W/g, '_') || 'empty'}`;
      const waiting = waitForRelayedTask(a, 'alpha1', id, {
        pollMs: 100,
        afterSubscribe: async () => {
          await a.lpush(relayQueueKey('alpha1'), JSON.stringify({ id, agent_id: 'module/bravo1', action: 'destroy-everything', data: {}, user: forged }));
        },
      });
      const r = await waiting;
      expect(r).toMatchObject({ exitCode: 32, output: '' });
      expect(r.error).toMatch(/^module_permission_denied: module\/alpha1 /);
      expect(JSON.parse((await acl.admin.get(`task/module/bravo1/${id}/context`)) ?? '{}')).toMatchObject({ user: 'module/alpha1' });
    }
    expect(relayLog.filter((l) => l.includes('carries a "user" field: ignored'))).toHaveLength(3);
  });

  it("answers malformed requests in the submitter's own result keys with NS8's validation output, never forwarding them", async () => {
    const a = alpha();
    const cases: Array<[Record<string, unknown>, Record<string, unknown>]> = [
      [{ id: 'bad-action', agent_id: 'module/bravo1', action: '../../bin/sh' }, { parameter: 'action', error: 'action_invalid', value: '../../bin/sh', field: 'action' }],
      [{ id: 'bad-agent', agent_id: 'module/../bravo1', action: 'set-route' }, { parameter: 'agent_id', error: 'agent_id_invalid', value: 'module/../bravo1' }],
      [{ id: 'no-agent', action: 'set-route' }, { parameter: 'agent_id', error: 'agent_id_required' }],
      [{ id: 'ghost', agent_id: 'module/ghost9', action: 'set-route' }, { parameter: 'agent_id', error: 'agent_id_not_found', value: 'module/ghost9' }],
      [{ id: 'bad-extra', agent_id: 'module/bravo1', action: 'set-route', extra: [1] }, { parameter: 'extra', error: 'extra_invalid_type' }],
    ];
    for (const [request, expected] of cases) {
      const id = request['id'] as string;
      const r = await waitForRelayedTask(a, 'alpha1', id, { pollMs: 100, afterSubscribe: async () => void (await a.lpush(relayQueueKey('alpha1'), JSON.stringify(request))) });
      expect(r).toMatchObject({ exitCode: 10, status: 'validation-failed' });
      expect(JSON.parse(r.output)).toEqual([expect.objectContaining(expected)]);
      expect(r.error).toMatch(/^task relay: /);
    }
    expect(await acl.admin.keys('task/module/bravo1/*')).toEqual([]);
    expect(() => buildRelayRequest('module/bravo1', '../x')).toThrow(/cannot be relayed: action: action_invalid/);
  });

  it("refuses an id already used on the target without touching that task's keys", async () => {
    const earlier = await runTask(acl.admin, 'module/bravo1', 'set-route', { id: 'shared-1', data: {} });
    expect(earlier.exitCode).toBe(0);
    const r = await runTaskViaRelay(alpha(), 'alpha1', 'module/bravo1', 'set-route', { id: 'shared-1', data: {}, pollMs: 100 });
    expect(r).toMatchObject({ exitCode: 10 });
    expect(JSON.parse(r.output)).toEqual([{ parameter: 'id', error: 'id_already_used', value: 'shared-1', field: 'id' }]);
    expect(await readTaskResult(acl.admin, 'module/bravo1', 'shared-1')).toMatchObject({ exitCode: 0, output: earlier.output });
  });

  it("forwards to node and cluster agents only what the module's roles there allow, as NS8's api-server", async () => {
    const a = alpha();
    const denied = await runTaskViaRelay(a, 'alpha1', 'node/1', 'allocate-ports', { data: { ports: 1 }, subscriber: anonymous() });
    expect(denied).toMatchObject({ exitCode: 32 });
    expect(denied.error).toMatch(/^module_permission_denied: module\/alpha1 holds no role on node\/1/);
    expect(await acl.admin.llen('node/1/tasks')).toBe(0);
    expect((await runTaskViaRelay(a, 'alpha1', 'cluster', 'remove-module', { data: {}, pollMs: 100 })).exitCode).toBe(32);
    expect(await acl.admin.llen('cluster/tasks')).toBe(0);

    await acl.admin.hset('roles/module/alpha1', 'node/1', 'portsadm');
    await acl.admin.sadd('node/1/roles/portsadm', 'allocate-ports');
    const id = await submitTaskViaRelay(a, 'alpha1', 'node/1', 'allocate-ports', { data: { ports: 1 } });
    const popped = (await acl.admin.brpop('node/1/tasks', 10)) as [string, string] | null;
    expect(JSON.parse(popped?.[1] ?? '{}')).toMatchObject({ id, action: 'allocate-ports', data: { ports: 1 }, user: 'module/alpha1' });
    // The node agent finishes it as every NS8 agent does; the relay hands the result back.
    await finalizeTask(acl.admin, 'node/1', id, { status: 'completed', exitCode: 0, output: '{"ports":[20001]}', error: '' }, 100);
    expect(await waitForRelayedTask(a, 'alpha1', id, { pollMs: 100 })).toMatchObject({ exitCode: 0, output: '{"ports":[20001]}' });
  });

  it('keeps relaying after its connections are killed', async () => {
    const clients = String(await acl.admin.call('CLIENT', 'LIST')).split('\n').filter((l) => / name=ns8ctl-task-relay/.test(l));
    expect(clients).toHaveLength(3);
    for (const line of clients) await acl.admin.call('CLIENT', 'KILL', 'ID', /\bid=(\d+)/.exec(line)?.[1] ?? '');
    const r = await runTaskViaRelay(alpha(), 'alpha1', 'module/bravo1', 'set-route', { data: {}, subscriber: anonymous() });
    expect(r).toMatchObject({ exitCode: 0, output: 'routed for module/alpha1: {}' });
  });

  it('hands back the result of a task forwarded by a relay that stopped before it finished', async () => {
    await bravoAgent?.stop();
    const a = alpha();
    const id = await submitTaskViaRelay(a, 'alpha1', 'module/bravo1', 'set-route', { data: { n: 1 } });
    await until('the relay forwards the task', async () => (await acl.admin.llen('module/bravo1/tasks')) === 1, { timeoutMs: 15_000 });
    expect(await acl.admin.hkeys(RELAY_INFLIGHT_KEY)).toEqual([`alpha1/${id}`]);
    await relay?.stop();
    relay = startRelay();
    await relay.ready;
    bravoAgent = await startBravo();
    expect(await waitForRelayedTask(a, 'alpha1', id, { pollMs: 100, subscriber: anonymous() })).toMatchObject({ exitCode: 0, output: 'routed for module/alpha1: {"n":1}' });
  });
});

describe('ns8ctl run-action with module credentials', () => {
  function deps(env: Record<string, string>): AgentCliDeps & { out: string[]; err: string[] } {
    const out: string[] = [];
    const err: string[] = [];
    return {
      out,
      err,
      stdout: (t) => out.push(t),
      stderr: (t) => err.push(t),
      env: { PATH: process.env.PATH, REDIS_ADDRESS: `127.0.0.1:${acl.server.port}`, ...env },
      isTTY: false,
      runner: new ProcessRunner(),
      connect: () => Promise.reject(new Error('run-action with module credentials must not use the admin connection')),
    };
  }
  const moduleEnv = (): Record<string, string> => ({ REDIS_USER: 'module/alpha1', REDIS_PASSWORD: pw.alpha1 });

  it("submits through the relay as the module (REDIS_USER, as runagent gives) and exits with the task's code", async () => {
    const ok = deps(moduleEnv());
    expect(await runActionCommand('bravo1', 'set-route', { data: '{"host":"h"}', output: 'json' }, ok)).toBe(0);
    expect(JSON.parse(ok.out.join(''))).toMatchObject({ agent: 'module/bravo1', action: 'set-route', status: 'completed', exitCode: 0, output: 'routed for module/alpha1: {"host":"h"}' });

    const no = deps(moduleEnv());
    expect(await runActionCommand('bravo1', 'destroy-everything', {}, no)).toBe(32);
    expect(no.err.join('')).toMatch(/module_permission_denied: module\/alpha1 holds role routeadm/);
  });

  it('refuses --as and a module user without a password', async () => {
    await expect(runActionCommand('bravo1', 'set-route', { as: 'cluster' }, deps(moduleEnv()))).rejects.toThrow(/--as cannot be used with module credentials/);
    await expect(runActionCommand('bravo1', 'set-route', {}, deps({ REDIS_USER: 'module/alpha1' }))).rejects.toThrow(/REDIS_PASSWORD is empty/);
  });
});

describe('parseRelayRequest', () => {
  it('accepts module, node and cluster targets, fills defaults, drops unknown fields and flags a user field', () => {
    const r = parseRelayRequest(JSON.stringify({ id: 't1', agent_id: 'node/1', action: 'allocate-ports', user: 'cluster', queue: 'x' }));
    expect(r).toEqual({ ok: true, forgedUser: true, request: { id: 't1', agent_id: 'node/1', action: 'allocate-ports', data: {}, extra: {}, parent: '' } });
    expect(parseRelayRequest(JSON.stringify({ id: 't2', agent_id: 'cluster', action: 'x', data: [1], parent: 't1' }))).toMatchObject({ ok: true, forgedUser: false });
  });

  it('gives no id to answer on for a request that is not an object or has no valid id', () => {
    for (const raw of ['[1]', 'nope', JSON.stringify({ id: 'a/b', agent_id: 'cluster', action: 'x' }), JSON.stringify({ agent_id: 'cluster', action: 'x' })]) {
      const r = parseRelayRequest(raw);
      expect(r.ok).toBe(false);
      expect(r.ok ? 'valid' : r.id).toBeUndefined();
    }
  });

  it('refuses an oversized request and a parent that is not a task id, with the id to answer on', () => {
    const big = parseRelayRequest(JSON.stringify({ id: 't3', agent_id: 'cluster', action: 'x', data: 'y'.repeat(100), parent: 'a b' }), { maxBytes: 50 });
    expect(big).toMatchObject({ ok: false, id: 't3' });
    expect(big.ok ? [] : big.problems.map((p) => p.error)).toEqual(['task_too_large', 'parent_invalid']);
  });
});
