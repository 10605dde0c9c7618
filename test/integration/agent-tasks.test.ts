/**
 * The module agent against a real redis-server with real step processes (shell scripts in temp
 * dirs): ordering and override, schemas, agent commands, masking, exit codes, cancel, busy.
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { runAgent, type AgentHandle } from '../../src/agent/agent.js';
import { runTask, submitTask, waitForTask } from '../../src/agent/task-client.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { until } from '../support/wait-for.js';

const AGENT = 'module/web1';
let redisServer: TestRedis;
let admin: Redis;
let root: string;
let base: string;
let inst: string;
let state: string;
let agent: AgentHandle;
let logLines: string[];

function step(dir: string, name: string, body: string, executable = true): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, name), `#!/bin/sh\n${body}\n`);
  chmodSync(path.join(dir, name), executable ? 0o755 : 0o644);
}

async function waitForFile(file: string): Promise<void> {
  await until(`${file} appeared`, () => existsSync(file), { timeoutMs: 10_000 });
}

function startAgent(extra: Partial<Parameters<typeof runAgent>[0]> = {}): AgentHandle {
  const a = runAgent(
    { agentId: AGENT, installDir: root, stateDir: state, actionsDirs: [base, inst], pollSeconds: 1, drainMs: 200, env: { PATH: process.env.PATH, REDIS_PORT: String(redisServer.port) }, log: (l) => logLines.push(l), ...extra },
    { redis: redisServer.client(), runner: new ProcessRunner() },
  );
  return a;
}

beforeAll(async () => {
  redisServer = await startRedis();
  admin = redisServer.client();
});
afterAll(async () => {
  await redisServer.stop();
});

beforeEach(async () => {
  await admin.flushall();
  logLines = [];
  root = mkdtempSync(path.join(tmpdir(), 'agent-it-'));
  base = path.join(root, 'base-actions');
  inst = path.join(root, 'actions');
  state = path.join(root, 'state');
  mkdirSync(state, { recursive: true });
  writeFileSync(path.join(state, 'environment'), 'OLD=1\nMODULE_ID=web1\n');
  agent = startAgent();
  await agent.start();
});
afterEach(async () => {
  await agent.stop();
  rmSync(root, { recursive: true, force: true });
});

describe('module agent tasks', () => {
  it('runs steps alphabetically across base and instance dirs, the instance file winning a name clash', async () => {
    step(path.join(base, 'ordered'), '10a', 'printf a');
    step(path.join(inst, 'ordered'), '20b', 'printf b');
    step(path.join(base, 'ordered'), '30c', 'printf BASE');
    step(path.join(inst, 'ordered'), '30c', 'printf c');
    const r = await runTask(admin, AGENT, 'ordered');
    expect(r).toMatchObject({ status: 'completed', exitCode: 0, output: 'abc' });
    expect(await admin.get(`task/${AGENT}/${r.taskId}/output`)).toBe('abc');
    expect(await admin.get(`task/${AGENT}/${r.taskId}/exit_code`)).toBe('0');
    expect(await admin.ttl(`task/${AGENT}/${r.taskId}/output`)).toBeGreaterThan(8 * 3600 - 60);
  });

  it('gives steps the task data on stdin and the agent variables, in the state dir', async () => {
    step(path.join(inst, 'envcheck'), '10env', 'printf "%s\\n" "$AGENT_TASK_ID" "$AGENT_TASK_ACTION" "$AGENT_ID" "$AGENT_INSTALL_DIR" "$AGENT_STATE_DIR" "$AGENT_COMFD" "$MODULE_ID" "$PWD"; cat');
    const r = await runTask(admin, AGENT, 'envcheck', { data: { a: [1, 2] } });
    expect(r.output.split('\n')).toEqual([r.taskId, 'envcheck', AGENT, root, state, '3', 'web1', state, '{"a":[1,2]}']);
  });

  it('applies set-env and unset-env at once, so later steps see them, and mirrors the file to Redis in the end', async () => {
    step(path.join(inst, 'env-cmds'), '10set', `echo 'set-env GREETING "hello world"' >&$AGENT_COMFD\necho 'set-env ZED 1' >&$AGENT_COMFD\necho 'unset-env OLD' >&$AGENT_COMFD`);
    step(path.join(inst, 'env-cmds'), '20read', 'printf "%s|%s" "$GREETING" "${OLD-unset}"');
    const r = await runTask(admin, AGENT, 'env-cmds');
    expect(r.output).toBe('hello world|unset');
    expect(readFileSync(path.join(state, 'environment'), 'utf8')).toBe('GREETING=hello world\nMODULE_ID=web1\nZED=1\n');
    expect(await admin.hgetall(`${AGENT}/environment`)).toEqual({ GREETING: 'hello world', MODULE_ID: 'web1', ZED: '1' });
  });

  it('refuses set-env of a value with a newline, says so in the task error, and keeps the file', async () => {
    step(path.join(inst, 'env-bad'), '10set', `printf 'set-env EVIL "a\\nPATH=/x"\\n' >&$AGENT_COMFD\necho 'set-env "BAD NAME" 1' >&$AGENT_COMFD`);
    const r = await runTask(admin, AGENT, 'env-bad');
    expect(r.exitCode).toBe(0);
    expect(r.error).toMatch(/unterminated quoted field/);
    expect(r.error).toMatch(/variable name "BAD NAME" is not valid/);
    expect(readFileSync(path.join(state, 'environment'), 'utf8')).toBe('OLD=1\nMODULE_ID=web1\n');
  });

  it('dump-env mirrors the environment to Redis while the step still runs', async () => {
    step(
      path.join(inst, 'dump'),
      '10dump',
      `echo 'set-env DUMPED yes' >&$AGENT_COMFD\necho dump-env >&$AGENT_COMFD\nfor i in $(seq 100); do [ "$(redis-cli -p $REDIS_PORT hget ${AGENT}/environment DUMPED)" = yes ] && { printf mirrored; exit 0; }; sleep 0.05; done\nexit 1`,
    );
    const r = await runTask(admin, AGENT, 'dump');
    expect(r).toMatchObject({ exitCode: 0, output: 'mirrored' });
  });

  it('checks the input schema first: bad input ends validation-failed (10) with NS8 errors, no step runs', async () => {
    const marker = path.join(root, 'ran');
    mkdirSync(path.join(inst, 'validated'), { recursive: true });
    writeFileSync(path.join(inst, 'validated', 'validate-input.json'), JSON.stringify({ type: 'object', required: ['name'], properties: { name: { type: 'string' }, port: { type: 'integer' } } }));
    writeFileSync(path.join(inst, 'validated', 'validate-output.json'), JSON.stringify({ type: 'object', required: ['ok'], properties: { ok: { type: 'boolean' } } }));
    step(path.join(inst, 'validated'), '10run', `touch ${marker}\ncat >/dev/null\n[ -n "$BAD_OUTPUT" ] && printf '{"ok":"yes"}' || printf '{"ok":true}'`);
    const bad = await runTask(admin, AGENT, 'validated', { data: { port: 'x' } });
    expect(bad).toMatchObject({ status: 'validation-failed', exitCode: 10 });
    expect(JSON.parse(bad.output)).toEqual(
      expect.arrayContaining([
        { parameter: 'name', error: 'name_required', value: null, field: 'name' },
        { parameter: 'port', error: 'port_invalid_type', value: 'x', field: 'port' },
      ]),
    );
    expect(existsSync(marker)).toBe(false);
    const good = await runTask(admin, AGENT, 'validated', { data: { name: 'n' } });
    expect(good).toMatchObject({ status: 'completed', exitCode: 0, output: '{"ok":true}' });
  });

  it('checks the output schema last: a step printing the wrong shape aborts the task with 1', async () => {
    mkdirSync(path.join(inst, 'badout'), { recursive: true });
    writeFileSync(path.join(inst, 'badout', 'validate-output.json'), JSON.stringify({ type: 'object', required: ['ok'] }));
    step(path.join(inst, 'badout'), '10run', 'printf "[1,2]"');
    const r = await runTask(admin, AGENT, 'badout');
    expect(r).toMatchObject({ status: 'aborted', exitCode: 1, output: '[1,2]' });
    expect(r.error).toMatch(/Validation errors: \(root\): \(root\)_invalid_type/);
  });

  it('set-status validation-failed stops the action with 10 unless the step exits non-zero', async () => {
    const marker = path.join(root, 'never');
    step(path.join(inst, 'vfail'), '10check', `echo 'set-status validation-failed' >&$AGENT_COMFD\nprintf '[{"field":"name","error":"name_taken"}]'`);
    step(path.join(inst, 'vfail'), '20never', `touch ${marker}`);
    const r = await runTask(admin, AGENT, 'vfail');
    expect(r).toMatchObject({ status: 'validation-failed', exitCode: 10 });
    expect(existsSync(marker)).toBe(false);
    step(path.join(inst, 'vfail2'), '10check', `echo 'set-status validation-failed' >&$AGENT_COMFD\nexit 4`);
    expect(await runTask(admin, AGENT, 'vfail2')).toMatchObject({ status: 'validation-failed', exitCode: 4 });
  });

  it('aborts at the first failing step with its exit code and keeps its stderr', async () => {
    const marker = path.join(root, 'never');
    step(path.join(inst, 'fails'), '10fail', 'echo "disk full" >&2; exit 3');
    step(path.join(inst, 'fails'), '20never', `touch ${marker}`);
    const r = await runTask(admin, AGENT, 'fails');
    expect(r).toMatchObject({ status: 'aborted', exitCode: 3, error: 'disk full\n' });
    expect(existsSync(marker)).toBe(false);
  });

  it('skips a step that cannot be executed, with a warning, as NS8 does', async () => {
    step(path.join(inst, 'skip'), '10noexec', 'printf never', false);
    step(path.join(inst, 'skip'), '20ok', 'printf ok');
    const r = await runTask(admin, AGENT, 'skip');
    expect(r).toMatchObject({ status: 'completed', exitCode: 0, output: 'ok' });
    expect(r.error).toMatch(/skipped step 10noexec: EACCES/);
  });

  it('answers an unknown action, or a crafted name, with 8 and runs nothing outside the actions dir', async () => {
    const marker = path.join(root, 'escaped');
    step(path.join(root, 'outside'), '10evil', `touch ${marker}`);
    const unknown = await runTask(admin, AGENT, 'no-such-action');
    expect(unknown).toMatchObject({ status: 'aborted', exitCode: 8, error: 'Action no-such-action is not defined\n' });
    const crafted = await runTask(admin, AGENT, '../outside');
    expect(crafted).toMatchObject({ status: 'aborted', exitCode: 8 });
    expect(existsSync(marker)).toBe(false);
  });

  it('stores the task context with every secret masked, for 8 hours once finished', async () => {
    step(path.join(inst, 'secret'), '10noop', 'cat >/dev/null');
    const r = await runTask(admin, AGENT, 'secret', { data: { user: 'admin', password: 'hunter2', nested: [{ api_token: 'tok-123' }], sshKey: 'k' } });
    const context = (await admin.get(`task/${AGENT}/${r.taskId}/context`)) ?? '';
    expect(context).not.toMatch(/hunter2|tok-123/);
    expect(JSON.parse(context).data).toEqual({ user: 'admin', password: 'XXX', nested: [{ api_token: 'XXX' }], sshKey: 'XXX' });
    expect(await admin.ttl(`task/${AGENT}/${r.taskId}/context`)).toBeGreaterThan(8 * 3600 - 60);
    expect(logLines.join('\n')).not.toMatch(/hunter2|tok-123/);
  });

  it('publishes weighted progress: pending, running, step shares, completed 100', async () => {
    step(path.join(inst, 'progress'), '10a', `echo 'set-weight 20b 3' >&$AGENT_COMFD\necho 'set-progress 50' >&$AGENT_COMFD`);
    step(path.join(inst, 'progress'), '20b', 'true');
    const seen: string[] = [];
    const r = await runTask(admin, AGENT, 'progress', { onProgress: (s, p) => seen.push(`${s} ${p}`) });
    expect(r.exitCode).toBe(0);
    expect(seen).toEqual(['pending 0', 'running 0', 'running 12', 'running 25', 'running 100', 'completed 100']);
  });

  it('lists its actions, built-ins included', async () => {
    step(path.join(base, 'get-status'), '20read', 'true');
    step(path.join(inst, 'configure-module'), '20cfg', 'true');
    const r = await runTask(admin, AGENT, 'list-actions');
    expect(JSON.parse(r.output)).toEqual(['cancel-task', 'configure-module', 'get-status', 'list-actions']);
  });

  it('cancel-task sends SIGTERM to the running step and its children; the step decides the exit code', async () => {
    const started = path.join(root, 'started');
    step(path.join(inst, 'long'), '10wait', `trap 'printf TERM; exit 7' TERM\ntouch ${started}\nwhile true; do sleep 0.1; done`);
    const longId = await submitTask(admin, AGENT, 'long');
    await waitForFile(started);
    expect(agent.running()).toContain(longId);
    const cancel = await runTask(admin, AGENT, 'cancel-task', { data: { task: longId } });
    expect(cancel.exitCode).toBe(0);
    expect(await waitForTask(admin, AGENT, longId)).toMatchObject({ status: 'aborted', exitCode: 7, output: 'TERM' });
    expect(await runTask(admin, AGENT, 'cancel-task', { data: { task: 'not-running' } })).toMatchObject({ exitCode: 2 });
    expect(await runTask(admin, AGENT, 'cancel-task', { data: {} })).toMatchObject({ exitCode: 10, status: 'validation-failed' });
  });

  it('refuses a task with exit code 11 when all its slots stay busy', async () => {
    await agent.stop();
    agent = startAgent({ maxConcurrency: 1, overloadWaitMs: 20 });
    await agent.start();
    const started = path.join(root, 'started');
    step(path.join(inst, 'long'), '10wait', `touch ${started}\nwhile true; do sleep 0.1; done`);
    step(path.join(inst, 'quick'), '10q', 'printf q');
    const longId = await submitTask(admin, AGENT, 'long');
    await waitForFile(started);
    const busy = await runTask(admin, AGENT, 'quick');
    expect(busy).toMatchObject({ status: 'aborted', exitCode: 11, error: 'Agent is busy\n' });
    // cancel-task itself needs a slot too: free it from outside by killing the step's group
    const pid = Number((await new ProcessRunner().run(['pgrep', '-f', `${inst}/long/10wait`])).stdout.trim().split('\n')[0]);
    process.kill(-pid, 'SIGTERM');
    expect((await waitForTask(admin, AGENT, longId)).status).toBe('aborted');
    expect(await runTask(admin, AGENT, 'quick')).toMatchObject({ exitCode: 0, output: 'q' });
  });
});

describe('task permissions', () => {
  beforeEach(async () => {
    step(path.join(inst, 'get-thing'), '10get', 'printf thing');
    step(path.join(inst, 'configure-module'), '10cfg', 'printf configured');
    await admin.sadd(`${AGENT}/roles/reader`, 'get-*', 'list-*');
    await admin.hset(`${AGENT}/grants`, 'module/reader1', 'reader');
  });

  it('runs a task from another instance when one of its roles allows the action', async () => {
    expect(await runTask(admin, AGENT, 'get-thing', { user: 'module/reader1' })).toMatchObject({ exitCode: 0, output: 'thing' });
  });

  it("refuses with NS8's module_permission_denied (32) when no role allows it, running nothing", async () => {
    const denied = await runTask(admin, AGENT, 'configure-module', { user: 'module/reader1' });
    expect(denied).toMatchObject({ status: 'aborted', exitCode: 32, output: '' });
    expect(denied.error).toMatch(/^module_permission_denied: module\/reader1 holds role reader on module\/web1, which does not allow action configure-module/);
    const stranger = await runTask(admin, AGENT, 'get-thing', { user: 'module/stranger1' });
    expect(stranger).toMatchObject({ exitCode: 32 });
    expect(stranger.error).toMatch(/module\/stranger1 holds no role on module\/web1/);
  });

  it('runs tasks without a user (the cluster, ns8ctl) unchecked', async () => {
    expect(await runTask(admin, AGENT, 'configure-module')).toMatchObject({ exitCode: 0, output: 'configured' });
  });
});
