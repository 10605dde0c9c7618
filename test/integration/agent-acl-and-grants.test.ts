/**
 * The agent under NS8's Redis access model (real ACL users): it works with its module
 * credentials and cannot write other instances' keys; grants follow instances (applyGrants).
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { runAgent } from '../../src/agent/agent.js';
import { applyGrants } from '../../src/agent/authorizations.js';
import { runTask } from '../../src/agent/task-client.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { useNs8AclRedis } from '../support/ns8-acl-redis.js';

let root: string;

const acl = useNs8AclRedis();
const connect = acl.connect;

/** NS8's module ACL rule, exactly as cluster add-module writes it (ns8-core-facts §5). */
async function createModuleUser(id: string, password: string): Promise<void> {
  await acl.admin.call(
    'ACL', 'SETUSER', `module/${id}`, 'reset', 'on', `>${password}`, 'resetkeys', `~module/${id}/*`, `~task/module/${id}/*`, '%R~cluster/*', '%R~node/*', '%R~module/*', '%R~private/agents/*',
    'resetchannels', `&progress/module/${id}/*`, `&module/${id}/event/*`, '+@read', '+@write', '+@transaction', '+@connection', '+publish', '-@admin',
  );
}

function step(dir: string, name: string, body: string): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, name), `#!/bin/sh\n${body}\n`);
  chmodSync(path.join(dir, name), 0o755);
}

beforeEach(async () => {
  await acl.admin.flushall();
  root = mkdtempSync(path.join(tmpdir(), 'agent-acl-'));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

describe('module credentials', () => {
  it('are enough to run a whole task: pop, context, progress, results, environment mirror, client name', async () => {
    await createModuleUser('web1', 'pw-web1');
    const inst = path.join(root, 'actions');
    const state = path.join(root, 'state');
    mkdirSync(state);
    writeFileSync(path.join(state, 'environment'), 'MODULE_ID=web1\n');
    step(path.join(inst, 'hello'), '10hello', `echo 'set-env SEEN 1' >&$AGENT_COMFD\nprintf hello`);
    const agent = runAgent({ agentId: 'module/web1', installDir: root, stateDir: state, actionsDirs: [inst], pollSeconds: 1, log: () => undefined }, { redis: connect('module/web1', 'pw-web1'), runner: new ProcessRunner() });
    await agent.start();
    try {
      const seen: string[] = [];
      const r = await runTask(acl.admin, 'module/web1', 'hello', { data: { password: 'p' }, onProgress: (s) => seen.push(s) });
      expect(r).toMatchObject({ exitCode: 0, output: 'hello' });
      expect(seen).toContain('completed');
      expect(await acl.admin.hgetall('module/web1/environment')).toEqual({ MODULE_ID: 'web1', SEEN: '1' });
      expect(await acl.admin.get(`task/module/web1/${r.taskId}/context`)).toContain('"password":"XXX"');
      expect(String(await acl.admin.call('CLIENT', 'LIST'))).toMatch(/name=module\/web1 /);
    } finally {
      await agent.stop();
    }
  });

  it("cannot write another instance's keys, task queue, results or channels, nor grant itself roles", async () => {
    await createModuleUser('web1', 'pw-web1');
    await acl.admin.set('module/web2/secret', 'orig');
    const web1 = connect('module/web1', 'pw-web1');
    await expect(web1.set('module/web1/mine', '1')).resolves.toBe('OK');
    await expect(web1.set('module/web2/secret', 'x')).rejects.toThrow(/NOPERM/);
    await expect(web1.lpush('module/web2/tasks', '{}')).rejects.toThrow(/NOPERM/);
    await expect(web1.set('task/module/web2/t/output', 'x')).rejects.toThrow(/NOPERM/);
    await expect(web1.hset('roles/module/web1', 'module/web2', 'owner')).rejects.toThrow(/NOPERM/);
    await expect(web1.publish('progress/module/web2/task/t', '{}')).rejects.toThrow(/NOPERM/);
    await expect(web1.publish('module/web2/event/x', '{}')).rejects.toThrow(/NOPERM/);
    await expect(web1.get('module/web2/secret')).resolves.toBe('orig');
    expect(await acl.admin.get('module/web2/secret')).toBe('orig');
  });

  it("cannot be used by a step to write another instance's keys either", async () => {
    await createModuleUser('web1', 'pw-web1');
    const inst = path.join(root, 'actions');
    const state = path.join(root, 'state');
    mkdirSync(state);
    step(path.join(inst, 'attack'), '10attack', `redis-cli --no-auth-warning -p ${acl.server.port} --user "$REDIS_USER" --pass "$REDIS_PASSWORD" set module/web2/secret pwned 2>&1\nredis-cli --no-auth-warning -p ${acl.server.port} --user "$REDIS_USER" --pass "$REDIS_PASSWORD" set module/web1/ok yes 2>&1`);
    const agent = runAgent(
      { agentId: 'module/web1', installDir: root, stateDir: state, actionsDirs: [inst], pollSeconds: 1, env: { PATH: process.env.PATH, REDIS_USER: 'module/web1', REDIS_PASSWORD: 'pw-web1' }, log: () => undefined },
      { redis: connect('module/web1', 'pw-web1'), runner: new ProcessRunner() },
    );
    await agent.start();
    try {
      const r = await runTask(acl.admin, 'module/web1', 'attack');
      expect(r.output).toMatch(/NOPERM/);
      expect(await acl.admin.get('module/web2/secret')).toBeNull();
      expect(await acl.admin.get('module/web1/ok')).toBe('yes');
    } finally {
      await agent.stop();
    }
  });
});

describe('grants from org.nethserver.authorizations', () => {
  async function addInstance(id: string, auths: string[], roles: Record<string, string[]>): Promise<void> {
    await acl.admin.hset('cluster/module_node', id, '1');
    if (auths.length) await acl.admin.sadd(`cluster/authorizations/module/${id}`, ...auths);
    for (const [role, globs] of Object.entries(roles)) await acl.admin.sadd(`module/${id}/roles/${role}`, ...globs);
  }

  it('grants roles as NS8 keeps them, follows instances added later (X@any) and drops removed ones', async () => {
    await addInstance('traefik1', ['self:selfadm'], { routeadm: ['set-route', 'delete-route'], selfadm: ['configure-module'] });
    await addInstance('dokuwiki1', ['traefik@any:routeadm', 'self:selfadm'], { selfadm: ['configure-module'] });
    await acl.admin.hset('roles/admin', 'module/traefik1', 'owner');

    const first = await applyGrants(acl.admin);
    expect(first.writes).toBeGreaterThan(0);
    expect(await acl.admin.hgetall('roles/module/dokuwiki1')).toEqual({ 'module/traefik1': 'routeadm', 'module/dokuwiki1': 'selfadm' });
    expect(await acl.admin.hgetall('module/traefik1/grants')).toEqual({ 'module/dokuwiki1': 'routeadm', 'module/traefik1': 'selfadm', admin: 'owner' });
    expect((await applyGrants(acl.admin)).writes).toBe(0);

    await addInstance('traefik2', [], { routeadm: ['set-route'] });
    await applyGrants(acl.admin);
    expect(await acl.admin.hgetall('roles/module/dokuwiki1')).toEqual({ 'module/traefik1': 'routeadm', 'module/traefik2': 'routeadm', 'module/dokuwiki1': 'selfadm' });
    expect(await acl.admin.hgetall('module/traefik2/grants')).toEqual({ 'module/dokuwiki1': 'routeadm' });

    // remove-module of traefik1: its keys go, then grants converge
    await acl.admin.hdel('cluster/module_node', 'traefik1');
    await acl.admin.del('module/traefik1/roles/routeadm', 'module/traefik1/roles/selfadm', 'module/traefik1/grants', 'cluster/authorizations/module/traefik1');
    await applyGrants(acl.admin);
    expect(await acl.admin.hgetall('roles/module/dokuwiki1')).toEqual({ 'module/traefik2': 'routeadm', 'module/dokuwiki1': 'selfadm' });
    expect(await acl.admin.exists('roles/module/traefik1')).toBe(0);
    expect(await acl.admin.hgetall('roles/admin')).toEqual({});
  });

  it('lets the agent run an allowed task from a granted instance and refuse the rest', async () => {
    await addInstance('traefik1', ['self:selfadm'], { routeadm: ['set-*'] });
    await addInstance('dokuwiki1', ['traefik@any:routeadm'], {});
    await addInstance('other1', [], {});
    await applyGrants(acl.admin);
    const inst = path.join(root, 'actions');
    const state = path.join(root, 'state');
    mkdirSync(state);
    step(path.join(inst, 'set-route'), '10set', 'printf routed');
    step(path.join(inst, 'destroy-everything'), '10x', 'printf destroyed');
    const agent = runAgent({ agentId: 'module/traefik1', installDir: root, stateDir: state, actionsDirs: [inst], pollSeconds: 1, log: () => undefined }, { redis: connect('ns8admin', 'adminpw'), runner: new ProcessRunner() });
    await agent.start();
    try {
      expect(await runTask(acl.admin, 'module/traefik1', 'set-route', { user: 'module/dokuwiki1' })).toMatchObject({ exitCode: 0, output: 'routed' });
      expect(await runTask(acl.admin, 'module/traefik1', 'destroy-everything', { user: 'module/dokuwiki1' })).toMatchObject({ exitCode: 32, output: '' });
      expect(await runTask(acl.admin, 'module/traefik1', 'set-route', { user: 'module/other1' })).toMatchObject({ exitCode: 32 });
    } finally {
      await agent.stop();
    }
  });
});
