/**
 * A sandbox node's Redis keeps desired state across a stop and start of the node (systemd stops
 * redis-server with SIGTERM, the append-only file replays), comes back with its read-only
 * `default` user that cannot read desired objects, and replicas come back too. Real podman,
 * systemd and redis-server inside the nodes; slow (one 2-node sandbox).
 */
import { Redis } from 'ioredis';
import { ProcessRunner } from '../../src/host/runner.js';
import { createSandbox, type SandboxInfo } from '../../src/sandbox/create.js';
import { deleteSandbox } from '../../src/sandbox/delete.js';
import { defaultSandboxDeps, type SandboxDeps } from '../../src/sandbox/deps.js';
import { sandboxEnv } from '../../src/sandbox/env.js';
import { execInNode, startNode, stopNode } from '../../src/sandbox/lifecycle.js';
import { runCli } from '../support/cli.js';

const NAME = 'persist';
const SECRET = 'Sandbox-s3cret';
const runner = new ProcessRunner();
const deps: SandboxDeps = defaultSandboxDeps({ runner, stderr: () => undefined, stdout: () => undefined });

const manifests = `apiVersion: ns8ctl.nethserver.org/v1
kind: Node
metadata: {name: node1}
spec: {id: 1}
---
apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata: {name: webapp1}
spec:
  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0
  node: 1
  configuration: {admin_password: ${SECRET}}
---
apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata: {name: webapp2}
spec:
  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0
  node: 1
`;

async function inNode(node: string, command: string[]): Promise<{ code: number; out: string }> {
  let out = '';
  const code = await execInNode({ name: NAME, node, command }, { ...deps, execStdio: { mode: 'pipe' }, stdout: (t) => void (out += t), stderr: (t) => void (out += t) });
  return { code, out };
}

describe('sandbox Redis durability', () => {
  let info: SandboxInfo;
  let env: NodeJS.ProcessEnv;
  const clients: Redis[] = [];

  beforeAll(async () => {
    await deleteSandbox({ name: NAME }, deps);
    info = await createSandbox({ name: NAME, nodes: 2 }, deps);
    env = { NS8CTL_REDIS_URL: info.leaderRedisUrl };
  }, 1_200_000);
  afterAll(async () => {
    for (const c of clients) c.disconnect();
    await deleteSandbox({ name: NAME }, deps).catch(() => undefined);
  }, 180_000);

  const modules = async (): Promise<string[]> => {
    const res = await runCli(['get', 'modules', '-o', 'json'], env);
    expect(res.stderr).toBe('');
    return (JSON.parse(res.stdout) as { items: { metadata: { name: string } }[] }).items.map((i) => i.metadata.name).sort();
  };

  it('keeps desired state written by one multi-object apply across a stop and start of node 1', async () => {
    const applied = await runCli(['apply', '-f', '-'], env, manifests);
    expect(applied.stderr).not.toContain('error');
    expect(applied.code).toBe(0);
    expect(await modules()).toEqual(['webapp1', 'webapp2']);
    await stopNode({ name: NAME, node: '1' }, deps);
    await startNode({ name: NAME, node: '1' }, deps);
    expect(await modules()).toEqual(['webapp1', 'webapp2']);
    const journal = await inNode('1', ['journalctl', '-u', 'redis-server', '--no-pager', '-o', 'cat']);
    expect(journal.out).not.toContain('CRITICAL');
  }, 600_000);

  it('gives default its read-only rule back after the restart: no writes, no desired objects', async () => {
    const anon = new Redis(`redis://${info.addresses['1']}:6379`, { maxRetriesPerRequest: 1, retryStrategy: () => null, enableReadyCheck: false });
    anon.on('error', () => undefined);
    clients.push(anon);
    expect(await anon.hget('cluster/module_node', 'webapp1')).toBe('1');
    await expect(anon.hget('ns8ctl/desired/module/webapp1', 'object')).rejects.toThrow(/NOPERM/);
    await expect(anon.set('cluster/x', '1')).rejects.toThrow(/NOPERM/);
  });

  it('a restarted replica (node 2) has the data and the same access model', async () => {
    await stopNode({ name: NAME, node: '2' }, deps);
    await startNode({ name: NAME, node: '2' }, deps);
    const anon = new Redis(`redis://${info.addresses['2']}:6379`, { maxRetriesPerRequest: 1, retryStrategy: () => null, enableReadyCheck: false });
    anon.on('error', () => undefined);
    clients.push(anon);
    expect(await anon.hget('cluster/module_node', 'webapp2')).toBe('1');
    await expect(anon.hget('ns8ctl/desired/module/webapp1', 'object')).rejects.toThrow(/NOPERM/);
    const journal = await inNode('2', ['journalctl', '-u', 'redis-server', '--no-pager', '-o', 'cat']);
    expect(journal.out).not.toContain('CRITICAL');
  }, 600_000);

  it('sandbox env answers after node 1 was restarted', async () => {
    const e = await sandboxEnv({ name: NAME }, deps);
    expect(e.redisUrl).toBe(info.leaderRedisUrl);
  });
});
