import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import { ProcessRunner, type CommandRunner } from '../../src/host/runner.js';
import { createSandbox, type SandboxInfo } from '../../src/sandbox/create.js';
import { deleteSandbox } from '../../src/sandbox/delete.js';
import { defaultSandboxDeps, type SandboxDeps } from '../../src/sandbox/deps.js';
import { execInNode, startNode, stopNode } from '../../src/sandbox/lifecycle.js';
import { listSandboxes } from '../../src/sandbox/list.js';
import { nodeContainer, sandboxPaths } from '../../src/sandbox/naming.js';
import { adminRedisUrl } from '../../src/sandbox/node-config.js';
import { pushImage } from '../../src/sandbox/push.js';
import { readAdminPassword } from '../../src/sandbox/record.js';
import { ensureExampleImages, EXAMPLES_DIR, type ExampleImages } from '../support/example-images.js';
import { withImageBuildLock } from '../support/image-build-lock.js';

// One 2-node sandbox shared by every assertion below (create takes ~10 s with a cached root
// filesystem, 3 minutes cold); the tests run in order and end with delete.
const NAME = 'itest';
const runner = new ProcessRunner();
const progress: string[] = [];
const deps: SandboxDeps = defaultSandboxDeps({ runner, stderr: (t) => void progress.push(t), stdout: () => undefined });

/** Runs a command in a node through the product's `sandbox exec`, capturing what it printed. */
async function inNode(node: string, command: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await execInNode({ name: NAME, node, command }, { ...deps, stdout: (t) => void (out += t), stderr: (t) => void (err += t) });
  return { code, out, err };
}

async function eventually<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 90_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`${what}: not reached within ${timeoutMs / 1000} s ${last ? `(${String(last)})` : ''}`);
}

describe('ns8ctl sandbox with 2 nodes', () => {
  let info: SandboxInfo;
  let images: ExampleImages;
  let password: string;
  const clients: Redis[] = [];
  const redisOn = (address: string): Redis => {
    const c = new Redis(adminRedisUrl(address, password), { maxRetriesPerRequest: 1, retryStrategy: (n) => (n > 100 ? null : 200) });
    c.on('error', () => undefined);
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    await deleteSandbox({ name: NAME }, deps); // a previous run killed half-way
    info = await createSandbox({ name: NAME, nodes: 2 }, deps);
    password = await readAdminPassword(deps, NAME);
    images = await ensureExampleImages(info.registry);
  }, 900_000);

  afterAll(async () => {
    for (const c of clients) c.disconnect();
    await deleteSandbox({ name: NAME }, deps).catch(() => undefined);
  }, 120_000);

  test('create boots two systemd nodes and a registry, and explains its long steps on stderr', async () => {
    expect(info.nodes).toBe(2);
    const [listed] = await listSandboxes({ name: NAME }, deps);
    expect(listed?.nodes.map((n) => [n.id, n.role, n.state])).toEqual([[1, 'leader', 'running'], [2, 'worker', 'running']]);
    expect(listed?.registryContainer?.state).toBe('running');
    for (const node of ['1', '2']) expect((await inNode(node, ['systemctl', 'is-system-running'])).out.trim()).toMatch(/^(running|degraded)$/);
    expect(progress.join('')).toMatch(/sandbox: booting nodes: .*done in/s);
  });

  test('node records are in Redis, NS8 style', async () => {
    const leader = redisOn(info.addresses['1'] ?? '');
    expect(await leader.get('node/1/ui_name')).toBe('node1');
    expect(await leader.get('node/2/ui_name')).toBe('node2');
    expect(await leader.hget('node/2/vpn', 'ip_address')).toBe(info.addresses['2']);
    expect(await leader.get('cluster/node_sequence')).toBe('2');
  });

  test('the built ns8ctl runs inside a node', async () => {
    const pkg = JSON.parse(readFileSync(path.join(deps.projectRoot, 'package.json'), 'utf8')) as { version: string };
    const res = await inNode('1', ['ns8ctl', '--version']);
    expect(res.err).not.toMatch(/npm run build/); // CI builds before testing; locally: npm run build
    expect(res.code).toBe(0);
    expect(res.out.trim()).toBe(pkg.version);
  });

  test("in node 1, a lingering user's systemd unit runs a rootless podman container answering HTTP on 127.0.0.1", async () => {
    const node = nodeContainer(NAME, 1);
    const user = 'webapp1';
    expect((await inNode('1', ['useradd', '-m', user])).code).toBe(0);
    expect((await inNode('1', ['loginctl', 'enable-linger', user])).code).toBe(0);
    const env = `MODULE_ID=${user}\nNODE_ID=1\nTCP_PORT=20001\nWEBAPP_HTTPD_IMAGE=${images.webappHttpd['1.0.0']}\n`;
    const cfg = `/home/${user}/.config`;
    await inNode('1', ['install', '-d', '-o', user, '-g', user, `${cfg}`, `${cfg}/state`, `${cfg}/systemd`, `${cfg}/systemd/user`]);
    await runner.run(['podman', 'cp', path.join(EXAMPLES_DIR, 'webapp/imageroot/systemd/user/webapp.service'), `${node}:${cfg}/systemd/user/webapp.service`]);
    await runner.run(['podman', 'exec', '-i', node, 'sh', '-c', `cat > ${cfg}/state/environment && chown -R ${user}: ${cfg}`], { input: env });
    await eventually('user manager running', async () => ((await inNode('1', ['systemctl', 'is-active', `user@${(await inNode('1', ['id', '-u', user])).out.trim()}.service`])).out.trim() === 'active' ? true : undefined));
    const userctl = (...args: string[]) => inNode('1', ['systemctl', '--user', '-M', `${user}@`, ...args]);
    expect((await userctl('daemon-reload')).code).toBe(0);
    expect((await userctl('enable', '--now', 'webapp.service')).code).toBe(0);
    const body = await eventually('webapp answers on 127.0.0.1:20001', async () => {
      const r = await inNode('1', ['curl', '-sf', 'http://127.0.0.1:20001/']);
      return r.code === 0 ? r.out : undefined;
    });
    expect(body).toContain('webapp-httpd 1.0.0');
    expect((await userctl('is-active', 'webapp.service')).out.trim()).toBe('active');
    expect((await inNode('1', ['loginctl', 'show-user', user, '-p', 'Linger'])).out.trim()).toBe('Linger=yes');
    // Rootless: the container belongs to the module user's podman, not root's.
    expect((await inNode('1', ['runuser', '-u', user, '--', 'sh', '-c', 'cd && podman ps --format {{.Names}}'])).out).toContain(`webapp-${user}`);
    expect((await inNode('1', ['podman', 'ps', '-a', '--format', '{{.Names}}'])).out).not.toContain(`webapp-${user}`);
    // Only on loopback inside the node: the node's sandbox address does not answer.
    expect((await inNode('1', ['curl', '-sf', '--max-time', '3', `http://${info.addresses['1']}:20001/`])).code).not.toBe(0);
  }, 240_000);

  test("node 2's Redis replica sees a key the leader wrote and refuses writes", async () => {
    const leader = redisOn(info.addresses['1'] ?? '');
    const replica = redisOn(info.addresses['2'] ?? '');
    await leader.set('ns8ctl-test/written-by-leader', 'v1');
    expect(await eventually('replica has the key', async () => (await replica.get('ns8ctl-test/written-by-leader')) ?? undefined, 30_000)).toBe('v1');
    await expect(replica.set('ns8ctl-test/written-on-replica', 'x')).rejects.toThrow(/READONLY/);
    // The seeds' access model: the default user reads, never writes.
    const anon = new Redis(`redis://${info.addresses['1']}:6379`, { maxRetriesPerRequest: 1, retryStrategy: () => null, enableReadyCheck: false });
    anon.on('error', () => undefined);
    clients.push(anon);
    expect(await anon.get('node/1/ui_name')).toBe('node1');
    await expect(anon.set('node/1/ui_name', 'x')).rejects.toThrow(/NOPERM/);
  });

  test('stop node 2, write on the leader, start node 2: the replica catches up', async () => {
    const stopped = await stopNode({ name: NAME, node: '2' }, deps);
    expect(stopped.state).toBe('exited');
    const [listed] = await listSandboxes({ name: NAME }, deps);
    expect(listed?.nodes.find((n) => n.id === 2)?.state).toBe('exited');
    const leader = redisOn(info.addresses['1'] ?? '');
    await leader.set('ns8ctl-test/written-while-node2-down', 'v2');
    await startNode({ name: NAME, node: 'node2' }, deps);
    const replica = redisOn(info.addresses['2'] ?? '');
    expect(await eventually('replica caught up', async () => (await replica.get('ns8ctl-test/written-while-node2-down')) ?? undefined, 30_000)).toBe('v2');
    expect(await replica.get('ns8ctl-test/written-by-leader')).toBe('v1');
  }, 180_000);

  test('sandbox push copies a local image into the sandbox registry, and nodes pull it from there', async () => {
    await runner.run(['podman', 'pull', '-q', '--tls-verify=false', images.webappHttpd['2.0.0']]);
    try {
      const pushed = await pushImage({ name: NAME, image: images.webappHttpd['2.0.0'], as: 'ns8ctl-test/pushed:2.0.0' }, deps);
      expect(pushed.url).toBe(`${info.registry}/ns8ctl-test/pushed:2.0.0`);
      const pulled = await inNode('2', ['podman', 'pull', '-q', pushed.url]);
      expect(pulled.code).toBe(0);
    } finally {
      await withImageBuildLock(() => runner.run(['podman', 'rmi', '--ignore', images.webappHttpd['2.0.0']], { allowFailure: true }));
    }
  }, 120_000);

  test('delete leaves nothing behind: no containers, network, mounts or state', async () => {
    for (const c of clients.splice(0)) c.disconnect();
    // This sandbox's container ids: other sandboxes (other test files, running at the same time)
    // share the cached root filesystem, so mounts are matched by container, not by lowerdir.
    const ids = (await runner.run(['podman', 'ps', '-a', '--no-trunc', '--filter', `label=org.ns8ctl.sandbox=${NAME}`, '--format', '{{.ID}}'])).stdout.split('\n').filter(Boolean);
    expect(ids.length).toBeGreaterThanOrEqual(2);
    const res = await deleteSandbox({ name: NAME }, deps);
    expect(res.containers.sort()).toEqual([`ns8ctl-${NAME}-node1`, `ns8ctl-${NAME}-node2`, `ns8ctl-${NAME}-registry`]);
    const ps = await runner.run(['podman', 'ps', '-a', '--filter', `label=org.ns8ctl.sandbox=${NAME}`, '--format', '{{.Names}}']);
    expect(ps.stdout.trim()).toBe('');
    expect((await runner.run(['podman', 'network', 'exists', `ns8ctl-${NAME}`], { allowFailure: true })).exitCode).not.toBe(0);
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n');
    const state = sandboxPaths(deps.env, NAME).dir;
    expect(mounts.filter((l) => l.includes(state) || ids.some((id) => l.includes(id)))).toEqual([]);
    expect((await runner.run(['test', '-e', state], { allowFailure: true })).exitCode).not.toBe(0);
    expect(await deleteSandbox({ name: NAME }, deps)).toEqual({ name: NAME, containers: [], network: null, stateDir: null });
  }, 120_000);
});

describe('ns8ctl sandbox refuses clearly', () => {
  test('not root: says to run it as root', async () => {
    await expect(createSandbox({ name: 'never' }, { ...defaultSandboxDeps(), uid: 1000 })).rejects.toMatchObject({ code: 'sandbox_needs_root', message: expect.stringMatching(/sudo ns8ctl sandbox create/) });
  });

  test('podman missing: says which packages to install', async () => {
    const real = new ProcessRunner();
    // A host without podman: the command name resolves to nothing on PATH.
    const noPodman: CommandRunner = { history: real.history, run: (argv, o) => real.run(argv[0] === 'podman' ? ['ns8ctl-test-no-such-podman', ...argv.slice(1)] : argv, o) };
    await expect(createSandbox({ name: 'never' }, defaultSandboxDeps({ runner: noPodman }))).rejects.toMatchObject({ code: 'tool_missing', message: expect.stringMatching(/apt-get install podman/) });
  });

  test('bad names and node counts are usage errors naming what is allowed', async () => {
    await expect(createSandbox({ name: 'Bad_Name' }, defaultSandboxDeps())).rejects.toMatchObject({ code: 'usage', message: expect.stringMatching(/lower-case letters/) });
    await expect(createSandbox({ name: 'ok', nodes: '0' }, defaultSandboxDeps())).rejects.toMatchObject({ code: 'usage', message: expect.stringMatching(/from 1 to 9/) });
  });

  test('exec on a sandbox that does not exist says so', async () => {
    await expect(execInNode({ name: 'no-such-sandbox', node: '1', command: ['true'] }, defaultSandboxDeps())).rejects.toMatchObject({ code: 'not_found', message: expect.stringMatching(/sandbox list/) });
  });
});
