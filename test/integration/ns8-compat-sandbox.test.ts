/**
 * The NS8-layout example module (examples/ns8-compat/kickweb) installed by `ns8ctl run` in a
 * sandbox node: create-module and configure-module run its Python and bash steps with the NS8
 * runtime, its kickstart-style unit (runagent in ExecStartPre, podman) serves the configured page,
 * and get-configuration returns the manifest's configuration.
 */
import type { Redis } from 'ioredis';
import type { SandboxInfo } from '../../src/sandbox/create.js';
import { startCompatSandbox, stopCompatSandbox } from '../support/compat-sandbox.js';
import { eventually, sandboxNode } from '../support/sandbox-node.js';

const NAME = 'ns8kick';
const ID = 'kickweb1';
const { deps, inNode } = sandboxNode(NAME);
let info: SandboxInfo;
let leader: Redis;

const journal = async (): Promise<string> => (await inNode(['journalctl', '--no-pager', '-n', '80'])).out;

const imageOf = (version: string): string => `${info.registry}/ns8ctl-compat/kickweb:${version}`;

async function writeManifest(greeting: string, version = '1.0.0'): Promise<void> {
  const manifest = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${ID}\nspec:\n  image: ${imageOf(version)}\n  node: 1\n  removalPolicy: Delete\n  configuration:\n    greeting: "${greeting}"\n`;
  const w = await inNode(['sh', '-c', `mkdir -p /root/manifests && cat > /root/manifests/.${ID}.tmp && mv /root/manifests/.${ID}.tmp /root/manifests/${ID}.yaml`], manifest);
  expect(w.code).toBe(0);
}

const BUILT = ['kickweb:1.0.0', 'kickweb:1.1.0', 'kickweb-httpd:1.0.0'];

beforeAll(async () => {
  ({ info, leader } = await startCompatSandbox(NAME, deps, { only: ['kickweb', 'kickweb-httpd'], built: BUILT, buildTimeoutMs: 300_000 }));
}, 900_000);

afterAll(async () => {
  await stopCompatSandbox(NAME, deps, { info, leader }, BUILT);
}, 120_000);

/** The page the instance serves on its TCP_PORT, once it contains `text`. */
async function served(text: string): Promise<string> {
  return eventually(`the unit serves a page with ${JSON.stringify(text)}`, async () => {
    const port = (await leader.hget(`module/${ID}/environment`, 'TCP_PORT')) ?? '';
    const r = port ? await inNode(['curl', '-sf', '--max-time', '3', `http://127.0.0.1:${port}/`]) : undefined;
    return r?.code === 0 && r.out.includes(text) ? r.out : undefined;
  }, { timeoutMs: 240_000, everyMs: 2000, explain: journal });
}

const userctl = async (...args: string[]): Promise<string> => (await inNode(['systemctl', `--machine=${ID}@`, '--user', ...args])).out.trim();

test('ns8ctl run installs and configures the kickstart-style module; its unit serves the configured page', async () => {
  await writeManifest('Hello from an NS8-layout module');
  const started = await inNode(['systemd-run', '--unit=ns8ctl-run', '--collect', '/usr/local/bin/ns8ctl', 'run', '-f', '/root/manifests', '--node', '1', '--no-http', '--agent-resync', '5s', '--resync', '10s']);
  expect(started.code).toBe(0);
  const config = await eventually('get-configuration returns the manifest configuration', async () => {
    const r = await inNode(['timeout', '30', 'ns8ctl', 'run-action', ID, 'get-configuration']);
    const c = r.code === 0 ? (JSON.parse(r.out) as { greeting?: string }) : undefined;
    return c?.greeting === 'Hello from an NS8-layout module' ? c : undefined;
  }, { timeoutMs: 300_000, everyMs: 2000, explain: journal });
  expect(config).toEqual({ greeting: 'Hello from an NS8-layout module' });
  // create-module's own steps ran (redis-exec roles), and configure-module's bash step (AGENT_COMFD).
  expect((await leader.smembers(`module/${ID}/roles/greetadm`)).sort()).toEqual(['configure-module', 'get-*']);
  // Written by a later configure-module step than the one get-configuration reads: wait for it.
  const lastTask = await eventually('LAST_CONFIGURE_TASK from configure-module\'s bash step', async () => (await leader.hget(`module/${ID}/environment`, 'LAST_CONFIGURE_TASK')) ?? undefined, { timeoutMs: 120_000, explain: journal });
  expect(lastTask).toMatch(/^[0-9a-f-]{36}$/);
  const port = (await leader.hget(`module/${ID}/environment`, 'TCP_PORT')) ?? '';
  const page = await eventually('the unit serves the configured page', async () => {
    const r = await inNode(['curl', '-sf', '--max-time', '3', `http://127.0.0.1:${port}/`]);
    return r.code === 0 && r.out.includes('Hello from an NS8-layout module') ? r.out : undefined;
  }, { timeoutMs: 180_000, everyMs: 2000, explain: journal });
  expect(page.trim()).toBe('<h1>Hello from an NS8-layout module</h1>');
}, 900_000);

test('the module started its own service (configure-module), not the node agent: enabled by the module, running', async () => {
  expect(await userctl('is-enabled', 'kickweb.service')).toBe('enabled');
  expect(await userctl('is-active', 'kickweb.service')).toBe('active');
  // Started once, by configure-module's 80start_services: the node agent did not start it before.
  const starts = (await inNode(['journalctl', '--no-pager', '-o', 'cat', 'USER_UNIT=kickweb.service'])).out.split('\n').filter((l) => l.startsWith('Starting '));
  expect(starts).toHaveLength(1);
}, 120_000);

test('an update to 1.1.0 runs update-module: update-module.d migrates with PREV_IMAGE_URL and restarts the service, which serves the page', async () => {
  const before = await userctl('show', '-p', 'InvocationID', '--value', 'kickweb.service');
  await writeManifest('Hello from an NS8-layout module', '1.1.0');
  const migrated = await eventually('MIGRATED_FROM written by 1.1.0\'s update-module.d/20migrate', async () => (await leader.hget(`module/${ID}/environment`, 'MIGRATED_FROM')) ?? undefined, { timeoutMs: 300_000, everyMs: 2000, explain: journal });
  expect(migrated).toBe(imageOf('1.0.0'));
  const env = await leader.hgetall(`module/${ID}/environment`);
  expect(env).toMatchObject({ IMAGE_URL: imageOf('1.1.0'), PREV_IMAGE_URL: imageOf('1.0.0') });
  // 80restart_services (try-restart) restarted it: a new invocation.
  await eventually('kickweb.service restarted by update-module.d', async () => ((await userctl('show', '-p', 'InvocationID', '--value', 'kickweb.service')) !== before ? true : undefined), { timeoutMs: 120_000, explain: journal });
  await served('Hello from an NS8-layout module');
}, 600_000);

test('a new configuration in the manifest is applied by configure-module and served', async () => {
  await writeManifest('Second greeting', '1.1.0');
  await served('Second greeting');
  const config = await inNode(['timeout', '30', 'ns8ctl', 'run-action', ID, 'get-configuration']);
  expect(JSON.parse(config.out)).toEqual({ greeting: 'Second greeting' });
}, 600_000);

let lastConfigureTask = '';
test('removal (removalPolicy Delete) leaves nothing: user, home, unit, ports, module keys, configuration record', async () => {
  lastConfigureTask = (await leader.hget(`module/${ID}/environment`, 'LAST_CONFIGURE_TASK')) ?? '';
  expect(lastConfigureTask).not.toBe('');
  const del = await inNode(['ns8ctl', 'delete', 'module', ID, '--manifests', '/root/manifests']);
  expect(del.code).toBe(0);
  await eventually('the instance is removed', async () => ((await inNode(['id', ID])).code !== 0 && (await leader.exists(`module/${ID}/environment`)) === 0 ? true : undefined), { timeoutMs: 300_000, everyMs: 2000, explain: journal });
  expect((await inNode(['test', '-e', `/home/${ID}`])).code).not.toBe(0);
  expect((await inNode(['test', '-e', `/var/lib/systemd/linger/${ID}`])).code).not.toBe(0);
  expect(await leader.keys(`module/${ID}/*`)).toEqual([]);
  expect(await leader.exists(`ns8ctl/configuration/module/${ID}`)).toBe(0);
  expect(await leader.hexists('cluster/module_node', ID)).toBe(0);
}, 600_000);

test('added again with the same id, it is created and configured again (configure-module is not skipped)', async () => {
  await writeManifest('Second greeting', '1.1.0');
  await served('Second greeting');
  const task = await eventually('LAST_CONFIGURE_TASK of the new instance', async () => (await leader.hget(`module/${ID}/environment`, 'LAST_CONFIGURE_TASK')) ?? undefined, { timeoutMs: 120_000, explain: journal });
  expect(task).toMatch(/^[0-9a-f-]{36}$/);
  expect(task).not.toBe(lastConfigureTask);
  // A fresh instance: no update ran, so no migration mark.
  expect(await leader.hget(`module/${ID}/environment`, 'MIGRATED_FROM')).toBeNull();
}, 600_000);
