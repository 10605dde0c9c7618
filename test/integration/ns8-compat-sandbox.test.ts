/**
 * The NS8-layout example module (examples/ns8-compat/kickweb) installed by `ns8ctl run` in a
 * sandbox node: create-module and configure-module run its Python and bash steps with the NS8
 * runtime, its kickstart-style unit (runagent in ExecStartPre, podman) serves the configured page,
 * and get-configuration returns the manifest's configuration.
 */
import path from 'node:path';
import { Redis } from 'ioredis';
import { ExecaRunner } from '../../src/host/runner.js';
import { createSandbox, type SandboxInfo } from '../../src/sandbox/create.js';
import { deleteSandbox } from '../../src/sandbox/delete.js';
import { adminRedisUrl } from '../../src/sandbox/node-config.js';
import { readAdminPassword } from '../../src/sandbox/record.js';
import { eventually, sandboxNode } from '../support/sandbox-node.js';

const NAME = 'ns8kick';
const ID = 'kickweb1';
const { deps, inNode } = sandboxNode(NAME);
let info: SandboxInfo;
let leader: Redis;

const journal = async (): Promise<string> => (await inNode(['journalctl', '--no-pager', '-n', '80'])).out;

async function writeManifest(greeting: string): Promise<void> {
  const manifest = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${ID}\nspec:\n  image: ${info.registry}/ns8ctl-compat/kickweb:1.0.0\n  node: 1\n  removalPolicy: Delete\n  configuration:\n    greeting: "${greeting}"\n`;
  const w = await inNode(['sh', '-c', `mkdir -p /root/manifests && cat > /root/manifests/.${ID}.tmp && mv /root/manifests/.${ID}.tmp /root/manifests/${ID}.yaml`], manifest);
  expect(w.code).toBe(0);
}

beforeAll(async () => {
  await deleteSandbox({ name: NAME }, deps);
  info = await createSandbox({ name: NAME, nodes: 1 }, deps);
  await new ExecaRunner().run([path.resolve('examples/modules/build-images.sh'), '--dir', path.resolve('examples/ns8-compat'), '--namespace', 'ns8ctl-compat', '--registry', info.registry, '--push'], { timeoutMs: 300_000 });
  leader = new Redis(adminRedisUrl(info.addresses['1'] ?? '', await readAdminPassword(deps, NAME)), { maxRetriesPerRequest: 1 });
}, 900_000);

afterAll(async () => {
  leader?.disconnect();
  // The build left the images in the host's storage under the sandbox registry's name.
  if (info) await new ExecaRunner().run(['podman', 'rmi', '-f', ...['kickweb:1.0.0', 'kickweb:1.1.0', 'kickweb-httpd:1.0.0'].map((t) => `${info.registry}/ns8ctl-compat/${t}`)], { allowFailure: true });
  if (!process.env.NS8CTL_KEEP_SANDBOX) await deleteSandbox({ name: NAME }, deps).catch(() => undefined);
}, 120_000);

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
  expect(await leader.hget(`module/${ID}/environment`, 'LAST_CONFIGURE_TASK')).toMatch(/^[0-9a-f-]{36}$/);
  const port = (await leader.hget(`module/${ID}/environment`, 'TCP_PORT')) ?? '';
  const page = await eventually('the unit serves the configured page', async () => {
    const r = await inNode(['curl', '-sf', '--max-time', '3', `http://127.0.0.1:${port}/`]);
    return r.code === 0 && r.out.includes('Hello from an NS8-layout module') ? r.out : undefined;
  }, { timeoutMs: 180_000, everyMs: 2000, explain: journal });
  expect(page.trim()).toBe('<h1>Hello from an NS8-layout module</h1>');
}, 900_000);
