/**
 * End to end in a sandbox node (real systemd, lingering user manager, rootless podman inside):
 * `ns8ctl apply` a Module, `ns8ctl node-agent --once` on the node, and the instance's container
 * answers HTTP on its TCP_PORT; change the image, it converges (unit restarted, files replaced);
 * remove it, nothing is left but the preserved home. Uses the built CLI inside the node (CI
 * builds before testing; locally run `npm run build` first).
 */
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { createSandbox, type SandboxInfo } from '../../src/sandbox/create.js';
import { deleteSandbox } from '../../src/sandbox/delete.js';
import { adminRedisUrl } from '../../src/sandbox/node-config.js';
import { readAdminPassword } from '../../src/sandbox/record.js';
import { keys } from '../../src/state/keys.js';
import { ensureExampleImages, type ExampleImages } from '../support/example-images.js';
import { eventually, sandboxNode } from '../support/sandbox-node.js';

const NAME = 'nagent';
const ID = 'webapp1';
const { deps, inNode } = sandboxNode(NAME);
let info: SandboxInfo;
let images: ExampleImages;
let leader: Redis;

async function apply(image: string, id = ID, extra = ''): Promise<void> {
  const manifest = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${id}\nspec:\n  image: ${image}\n  node: 1\n${extra}`;
  const w = await inNode(['sh', '-c', `mkdir -p /root/manifests && cat > /root/manifests/${id}.yaml`], manifest);
  expect(w.code).toBe(0);
  const res = await inNode(['ns8ctl', 'apply', '-f', '/root/manifests/']);
  if (res.code !== 0) throw new Error(`ns8ctl apply exited ${res.code}:\n${res.out}\n${res.err}`);
}

async function agentOnce(): Promise<string> {
  const res = await inNode(['ns8ctl', 'node-agent', '--node', '1', '--once']);
  if (res.code !== 0) throw new Error(`node-agent --once exited ${res.code}:\n${res.out}\n${res.err}`);
  return res.out;
}

async function page(port: string): Promise<string> {
  return eventually(`HTTP answer on 127.0.0.1:${port}`, async () => {
    const r = await inNode(['curl', '-sf', '--max-time', '3', `http://127.0.0.1:${port}/`]);
    return r.code === 0 ? r.out : undefined;
  });
}

/** Exit codes of the instance's tasks running `action` (from their stored contexts and results). */
async function lifecycleTasks(action: string): Promise<string[]> {
  const contexts = await leader.keys(`task/module/${ID}/*/context`);
  const out: string[] = [];
  for (const k of contexts) {
    if ((JSON.parse((await leader.get(k)) ?? '{}') as { action?: string }).action !== action) continue;
    out.push((await leader.get(k.replace(/\/context$/, '/exit_code'))) ?? 'none');
  }
  return out;
}

const userctl = (...args: string[]) => inNode(['systemctl', '--user', '-M', `${ID}@`, ...args]);

beforeAll(async () => {
  const pkg = JSON.parse(readFileSync(`${deps.projectRoot}/package.json`, 'utf8')) as { version: string };
  await deleteSandbox({ name: NAME }, deps);
  info = await createSandbox({ name: NAME, nodes: 1 }, deps);
  images = await ensureExampleImages(info.registry);
  leader = new Redis(adminRedisUrl(info.addresses['1'] ?? '', await readAdminPassword(deps, NAME)), { maxRetriesPerRequest: 1 });
  const v = await inNode(['ns8ctl', '--version']);
  if (v.out.trim() !== pkg.version) throw new Error(`ns8ctl is not built for the sandbox (run npm run build): ${v.out} ${v.err}`);
}, 900_000);

afterAll(async () => {
  leader?.disconnect();
  // NS8CTL_KEEP_SANDBOX=1 keeps the node for a look after a failure.
  if (!process.env.NS8CTL_KEEP_SANDBOX) await deleteSandbox({ name: NAME }, deps).catch(() => undefined);
}, 120_000);

describe('the node agent in a sandbox node', () => {
  let port = '';

  test('apply + node-agent: the instance unit runs and answers HTTP on its TCP_PORT', async () => {
    await apply(images.webapp['1.0.0']);
    await agentOnce();
    const env = await leader.hgetall(keys.moduleEnvironment(ID));
    port = env.TCP_PORT ?? '';
    expect(port).toMatch(/^\d+$/);
    expect(await page(port)).toContain('webapp-httpd 1.0.0');
    expect((await userctl('is-active', 'webapp.service')).out.trim()).toBe('active');
    expect((await userctl('is-enabled', 'webapp.service')).out.trim()).toBe('enabled');
    expect((await inNode(['loginctl', 'show-user', ID, '-p', 'Linger'])).out.trim()).toBe('Linger=yes');
    const status = await leader.hgetall(keys.moduleStatus(ID));
    expect(JSON.parse(status.conditions ?? '[]')).toContainEqual(expect.objectContaining({ type: 'Ready', status: 'True' }));
    expect(JSON.parse(status.units ?? '[]')).toEqual([{ name: 'webapp.service', enabled: true, active: true }, { name: 'agent.service', enabled: true, active: true }]);
    // The module agent (NS8's agent.service, installed by the node agent) answers tasks with the
    // instance's own Redis credentials.
    expect((await userctl('is-active', 'agent.service')).out.trim()).toBe('active');
    const action = await eventually('get-configuration answered by the module agent', async () => {
      const r = await inNode(['timeout', '30', 'ns8ctl', 'run-action', ID, 'get-configuration']);
      return r.code === 0 ? r.out : undefined;
    });
    expect(JSON.parse(action)).toEqual(expect.any(Object));
    // NS8 add-module step 17: the node agent ran create-module through the module agent, which
    // completed it (its base steps: volumes, service images, roles).
    expect(await lifecycleTasks('create-module')).toEqual(['0']);
    expect(await leader.smembers(`module/${ID}/roles/owner`)).toEqual(['*']);
    // A second pass changes nothing and restarts nothing.
    const before = (await userctl('show', '-p', 'InvocationID', 'webapp.service')).out;
    const again = await agentOnce();
    expect(again).toMatch(/webapp1\s+unchanged/);
    // Observation reads files, cgroups and one Redis pipeline: no process at all.
    expect(again).toMatch(/^0 command\(s\) run, 0 changing the host$/m);
    expect((await userctl('show', '-p', 'InvocationID', 'webapp.service')).out).toBe(before);
  }, 300_000);

  test('a stopped unit is started again (drift)', async () => {
    expect((await userctl('stop', 'webapp.service')).code).toBe(0);
    expect(await agentOnce()).toMatch(/units stopped: webapp.service/);
    expect((await userctl('is-active', 'webapp.service')).out.trim()).toBe('active');
    expect(await page(port)).toContain('webapp-httpd 1.0.0');
  }, 120_000);

  test('a new version converges: files replaced, unit restarted with the new environment, new service image served', async () => {
    await apply(images.webapp['1.1.0']);
    const before = (await userctl('show', '-p', 'InvocationID', 'webapp.service')).out;
    await agentOnce();
    expect((await userctl('show', '-p', 'InvocationID', 'webapp.service')).out).not.toBe(before);
    expect((await inNode(['test', '-e', `/home/${ID}/.config/bin/old-tool`])).code).not.toBe(0);
    expect((await inNode(['test', '-e', `/home/${ID}/.config/bin/new-tool`])).code).toBe(0);
    await apply(images.webapp['2.0.0']);
    await agentOnce();
    expect((await leader.hgetall(keys.moduleEnvironment(ID))).WEBAPP_HTTPD_IMAGE).toBe(images.webappHttpd['2.0.0']);
    // update-module after each update: the base action (the example module has no update-module.d).
    expect(await lifecycleTasks('update-module')).toEqual(['0', '0']);
    expect(await eventually('the 2.0.0 page', async () => ((await page(port)).includes('webapp-httpd 2.0.0') ? true : undefined))).toBe(true);
  }, 300_000);

  test('delete + node-agent: nothing is left but the preserved home', async () => {
    const del = await inNode(['ns8ctl', 'delete', 'module', ID, '--manifests', '/root/manifests']);
    expect(del.code).toBe(0);
    await agentOnce();
    // NS8 remove-module step 2: destroy-module ran (and completed) before the agent was stopped.
    expect(await lifecycleTasks('destroy-module')).toEqual(['0']);
    expect((await inNode(['id', ID])).code).not.toBe(0);
    expect((await inNode(['test', '-d', `/home/${ID}/.config/state`])).code).toBe(0);
    expect((await inNode(['curl', '-sf', '--max-time', '3', `http://127.0.0.1:${port}/`])).code).not.toBe(0);
    expect((await inNode(['test', '-e', `/var/lib/systemd/linger/${ID}`])).code).not.toBe(0);
    expect((await inNode(['test', '-e', `/var/lib/nethserver/cluster/ui/apps/${ID}`])).code).not.toBe(0);
    expect(await leader.keys(`module/${ID}/*`)).toEqual([]);
    expect(await leader.hgetall(keys.nodePorts(1))).toEqual({});
    expect(((await leader.call('ACL', 'LIST')) as string[]).filter((l) => l.includes(`module/${ID} `))).toEqual([]);
    expect(await leader.exists(keys.desired('Module', ID), keys.moduleStatus(ID))).toBe(0);
    expect((await inNode(['sh', '-c', `ps -eo user:32,comm | grep -c '^${ID} ' || true`])).out.trim()).toBe('0');
  }, 180_000);

  test('re-added over its kept home next to a rootfull instance: every unit runs with its own new ports', async () => {
    const rf = 'rootfull-demo1';
    await apply(images.rootfullDemo['1.0.0'], rf, '  removalPolicy: Delete\n');
    await apply(images.webapp['2.0.0'], ID, '  removalPolicy: Delete\n');
    await agentOnce();
    const webEnv = await leader.hgetall(keys.moduleEnvironment(ID));
    const rfEnv = await leader.hgetall(keys.moduleEnvironment(rf));
    const [first, second] = (rfEnv.TCP_PORTS ?? '').split(',');
    expect(new Set([webEnv.TCP_PORT, first, second]).size).toBe(3);
    const unit = `rootfull-demo@${rf}.service`;
    const state = (await inNode(['systemctl', 'is-active', unit])).out.trim();
    if (state !== 'active') throw new Error(`${unit} is ${state}:\n${(await inNode(['journalctl', '-u', unit, '--no-pager', '-n', '40'])).out}`);
    expect((await inNode(['systemctl', 'is-enabled', unit])).out.trim()).toBe('enabled');
    expect((await inNode(['systemctl', 'is-active', `agent@${rf}.service`])).out.trim()).toBe('active');
    expect((await userctl('is-active', 'webapp.service')).out.trim()).toBe('active');
    expect(await page(webEnv.TCP_PORT!)).toContain('webapp-httpd 2.0.0');
    expect(await page(first!)).toContain('webapp-httpd 1.0.0');
    expect(await page(second!)).toContain('webapp-httpd 1.0.0');
    expect(await agentOnce()).toMatch(/^0 command\(s\) run/m);

    for (const id of [rf, ID]) expect((await inNode(['ns8ctl', 'delete', 'module', id, '--manifests', '/root/manifests'])).code).toBe(0);
    await agentOnce();
    expect((await inNode(['systemctl', 'is-active', unit])).out.trim()).not.toBe('active');
    expect((await inNode(['test', '-e', '/etc/systemd/system/rootfull-demo@.service'])).code).not.toBe(0);
    expect((await inNode(['systemctl', 'is-active', `agent@${rf}.service`])).out.trim()).not.toBe('active');
    expect((await inNode(['test', '-e', `/var/lib/nethserver/${rf}`])).code).not.toBe(0);
    expect((await inNode(['test', '-e', `/home/${ID}`])).code).not.toBe(0);
    // The unit's ExecStopPost removes the container (as NS8 units do): gone once the unit stopped.
    expect((await inNode(['podman', 'ps', '-a', '--format', '{{.Names}}'])).out).not.toContain(rf);
    expect((await inNode(['sh', '-c', 'ps -eo uid= | awk "\\$1 >= 1000" | wc -l'])).out.trim()).toBe('0');
    expect(await leader.hgetall(keys.nodePorts(1))).toEqual({});
  }, 300_000);
});
