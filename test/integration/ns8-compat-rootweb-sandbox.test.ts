/**
 * The rootfull NS8-layout example module (examples/ns8-compat/rootweb) next to the kickstart-style
 * one (kickweb), both installed by `ns8ctl run` from manifests in a sandbox node (real systemd,
 * root podman), through its whole life: installed and configured (its own actions install,
 * enable and start /etc/systemd/system/rootweb1.service, which serves the configured page and
 * what kickweb answered to its agent.tasks call), reconfigured, updated 1.0.0 -> 1.1.0
 * (update-module.d with PREV_IMAGE_URL, the volume's data kept), removed with removalPolicy Delete
 * (unit file, volume, install dir, ports, Redis keys gone) and added again with the same id.
 * One sandbox, sequential steps.
 */
import type { Redis } from 'ioredis';
import type { SandboxInfo } from '../../src/sandbox/create.js';
import { keys } from '../../src/state/keys.js';
import { startCompatSandbox, stopCompatSandbox } from '../support/compat-sandbox.js';
import { eventually, sandboxNode } from '../support/sandbox-node.js';

const NAME = 'ns8root';
const ID = 'rootweb1';
const KICK = 'kickweb1';
const { deps, inNode } = sandboxNode(NAME);
let info: SandboxInfo;
let leader: Redis;

const image = (name: string, tag: string): string => `${info.registry}/ns8ctl-compat/${name}:${tag}`;
const journal = async (): Promise<string> => (await inNode(['journalctl', '--no-pager', '-n', '80'])).out;
/** The module's unit, its agent's tasks and the run loop, each its own excerpt (the loop logs every few seconds). */
const unitJournal = async (): Promise<string> => {
  const part = async (unit: string, lines: string): Promise<string> => `--- ${unit}\n${(await inNode(['journalctl', '--no-pager', '-n', lines, '-u', unit])).out}`;
  return [await part(`${ID}.service`, '20'), await part(`agent@${ID}.service`, '30'), await part('ns8ctl-run', '15')].join('\n');
};
const slow = { timeoutMs: 300_000, everyMs: 2000, explain: unitJournal };

/** Writes /root/manifests/<id>.yaml atomically (the run loop watches the directory). */
async function writeManifest(id: string, img: string, configuration: Record<string, string>): Promise<void> {
  const conf = Object.entries(configuration).map(([k, v]) => `    ${k}: ${JSON.stringify(v)}\n`).join('');
  const manifest = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${id}\nspec:\n  image: ${img}\n  node: 1\n  removalPolicy: Delete\n  configuration:\n${conf}`;
  const w = await inNode(['sh', '-c', `mkdir -p /root/manifests && cat > /root/manifests/.${id}.tmp && mv /root/manifests/.${id}.tmp /root/manifests/${id}.yaml`], manifest);
  expect(w.code).toBe(0);
}

/**
 * get-configuration of an instance once it equals `want` and no configure-module task runs any
 * more: the value is stored by configure-module's first step, its later steps (the task to
 * kickweb, the unit) are done only when the task has its exit code.
 */
async function configured(id: string, want: Record<string, string>): Promise<Record<string, string>> {
  return eventually(`get-configuration of ${id} returns ${JSON.stringify(want)}, configure-module done`, async () => {
    const r = await inNode(['timeout', '30', 'ns8ctl', 'run-action', id, 'get-configuration']);
    const c = r.code === 0 ? (JSON.parse(r.out) as Record<string, string>) : undefined;
    if (!c || JSON.stringify(c) !== JSON.stringify(want)) return undefined;
    const runs = await tasks(id, 'configure-module');
    return runs.some((t) => t.exit === '0') && runs.every((t) => t.exit !== 'none') ? c : undefined;
  }, slow);
}

/** The body served on 127.0.0.1:<port><urlPath> once it contains `text`. */
async function served(port: string, urlPath: string, text: string): Promise<string> {
  return eventually(`127.0.0.1:${port}${urlPath} serves ${JSON.stringify(text)}`, async () => {
    const r = await inNode(['curl', '-sf', '--max-time', '3', `http://127.0.0.1:${port}${urlPath}`]);
    return r.code === 0 && r.out.includes(text) ? r.out : undefined;
  }, slow);
}

/** The instance's node agent status once Ready=True (the module agent runs, the last lifecycle action succeeded). */
async function ready(): Promise<true> {
  return eventually(`${ID} Ready`, async () => {
    const conditions = JSON.parse((await leader.hget(keys.moduleStatus(ID), 'conditions')) ?? '[]') as { type: string; status: string }[];
    return conditions.some((c) => c.type === 'Ready' && c.status === 'True') ? true : undefined;
  }, slow);
}

/** Exit codes of the instance's tasks running `action` (from their stored contexts and results). */
async function tasks(id: string, action: string): Promise<{ user: string; exit: string }[]> {
  const out: { user: string; exit: string }[] = [];
  for (const k of await leader.keys(`task/module/${id}/*/context`)) {
    const c = JSON.parse((await leader.get(k)) ?? '{}') as { action?: string; user?: string };
    if (c.action === action) out.push({ user: c.user ?? '', exit: (await leader.get(k.replace(/\/context$/, '/exit_code'))) ?? 'none' });
  }
  return out;
}

const BUILT = ['rootweb:1.0.0', 'rootweb:1.1.0', 'rootweb-httpd:1.0.0', 'kickweb:1.0.0', 'kickweb:1.1.0', 'kickweb-httpd:1.0.0'];

beforeAll(async () => {
  ({ info, leader } = await startCompatSandbox(NAME, deps, { only: ['rootweb', 'rootweb-httpd', 'kickweb', 'kickweb-httpd'], built: BUILT, buildTimeoutMs: 300_000 }));
}, 900_000);

afterAll(async () => {
  await stopCompatSandbox(NAME, deps, { info, leader }, BUILT);
}, 120_000);

describe('a rootfull NS8-layout module run by ns8ctl run in a sandbox node', () => {
  let port = '';

  test('installed and configured: its own unit serves the configured page and what kickweb answered to its agent.tasks call', async () => {
    await writeManifest(KICK, image('kickweb', '1.0.0'), { greeting: 'Hello from kickweb' });
    const started = await inNode(['systemd-run', '--unit=ns8ctl-run', '--collect', '/usr/local/bin/ns8ctl', 'run', '-f', '/root/manifests', '--node', '1', '--no-http', '--agent-resync', '5s', '--resync', '10s']);
    expect(started.code).toBe(0);
    // rootweb's configure-module asks the node's kickweb instance: kickweb first.
    await configured(KICK, { greeting: 'Hello from kickweb' });
    await writeManifest(ID, image('rootweb', '1.0.0'), { title: 'Rootfull one' });
    expect(await configured(ID, { title: 'Rootfull one' })).toEqual({ title: 'Rootfull one' });

    const env = await leader.hgetall(`module/${ID}/environment`);
    port = env['TCP_PORT'] ?? '';
    expect(port).toMatch(/^\d+$/);
    expect(env).toMatchObject({ MODULE_ID: ID, NODE_ID: '1', IMAGE_URL: image('rootweb', '1.0.0'), ROOTWEB_HTTPD_IMAGE: image('rootweb-httpd', '1.0.0'), TITLE: 'Rootfull one', KICKWEB_ID: KICK, KICKWEB_GREETING: 'Hello from kickweb' });
    expect(env['LAST_CONFIGURE_TASK']).toMatch(/^[0-9a-f-]{36}$/);
    // The rootfull install dir and its state/environment, as NS8's add-module writes them.
    const stateEnv = await inNode(['cat', `/var/lib/nethserver/${ID}/state/environment`]);
    expect(stateEnv.out).toContain(`TITLE=Rootfull one\n`);
    expect(await leader.hgetall(`module/${ID}/srv/http/rootweb`)).toEqual({ port, url: `http://127.0.0.1:${port}`, node: '1' });
    // The task ran on kickweb as rootweb, allowed by the kickweb@any:greetadm authorization.
    expect(await tasks(KICK, 'get-configuration')).toContainEqual({ user: `module/${ID}`, exit: '0' });
    expect(await leader.smembers(`cluster/authorizations/module/${ID}`)).toContain('kickweb@any:greetadm');

    const page = await served(port, '/', 'Rootfull one');
    expect(page).toBe('<h1>Rootfull one</h1>\n<p>kickweb says: Hello from kickweb</p>\n<p>rootweb 1.0.0</p>\n');
    expect((await served(port, '/data/installed', image('rootweb', '1.0.0'))).trim()).toBe(image('rootweb', '1.0.0'));
    // The unit is the module's: installed under its instance name, enabled and started by its actions.
    expect((await inNode(['systemctl', 'is-enabled', `${ID}.service`])).out.trim()).toBe('enabled');
    expect((await inNode(['systemctl', 'is-active', `${ID}.service`])).out.trim()).toBe('active');
    expect((await inNode(['cmp', `/var/lib/nethserver/${ID}/rootweb.service`, `/etc/systemd/system/${ID}.service`])).code).toBe(0);
    expect((await inNode(['podman', 'volume', 'exists', `${ID}-data`])).code).toBe(0);
    const status = await inNode(['timeout', '30', 'ns8ctl', 'run-action', ID, 'get-status']);
    expect(JSON.parse(status.out)).toMatchObject({ instance: ID, services: [{ name: ID, active: true, enabled: true, failed: false }] });
    expect(await tasks(ID, 'create-module')).toEqual([{ user: expect.any(String) as string, exit: '0' }]);
    expect(await ready()).toBe(true);
  }, 1_200_000);

  test('the unit the module installed and enabled, stopped by hand, is started again by the node agent (drift) and the page answers', async () => {
    expect((await inNode(['systemctl', 'stop', `${ID}.service`])).code).toBe(0);
    await eventually(`${ID}.service started again`, async () => ((await inNode(['systemctl', 'is-active', `${ID}.service`])).out.trim() === 'active' ? true : undefined), { timeoutMs: 120_000, everyMs: 1000, explain: journal });
    const logged = await inNode(['journalctl', '--no-pager', '-o', 'cat', '-u', 'ns8ctl-run']);
    expect(logged.out).toContain(`${ID}: drift: units stopped: ${ID}.service`);
    expect(await served(port, '/', 'Rootfull one')).toContain('<p>rootweb 1.0.0</p>');
  }, 300_000);

  test('reconfigured: the edited manifest reaches configure-module, the running service serves the new title', async () => {
    await writeManifest(ID, image('rootweb', '1.0.0'), { title: 'Rootfull two' });
    await configured(ID, { title: 'Rootfull two' });
    expect(await served(port, '/', 'Rootfull two')).toContain('<p>rootweb 1.0.0</p>');
  }, 600_000);

  test("updated 1.0.0 -> 1.1.0: update-module.d ran with PREV_IMAGE_URL and restarted the service; the volume's data is kept", async () => {
    await writeManifest(ID, image('rootweb', '1.1.0'), { title: 'Rootfull two' });
    const page = await served(port, '/', 'rootweb 1.1.0');
    expect(page).toBe('<h1>Rootfull two</h1>\n<p>kickweb says: Hello from kickweb</p>\n<p>rootweb 1.1.0</p>\n');
    const env = await leader.hgetall(`module/${ID}/environment`);
    expect(env).toMatchObject({ IMAGE_URL: image('rootweb', '1.1.0'), PREV_IMAGE_URL: image('rootweb', '1.0.0'), MIGRATED_FROM: image('rootweb', '1.0.0'), TITLE: 'Rootfull two', TCP_PORT: port });
    expect((await served(port, '/data/migrated', image('rootweb', '1.0.0'))).trim()).toBe(image('rootweb', '1.0.0'));
    expect((await served(port, '/data/installed', image('rootweb', '1.0.0'))).trim()).toBe(image('rootweb', '1.0.0'));
    expect(await configured(ID, { title: 'Rootfull two' })).toEqual({ title: 'Rootfull two' });
    expect(await tasks(ID, 'update-module')).toEqual([{ user: expect.any(String) as string, exit: '0' }]);
    // Every update-module.d script succeeded (a failing one is only reported in the task's error).
    const updateErrors = await Promise.all((await leader.keys(`task/module/${ID}/*/error`)).map(async (k) => (await leader.get(k)) ?? ''));
    expect(updateErrors.join('\n')).not.toContain('failed with exit code');
    expect(await ready()).toBe(true);
  }, 600_000);

  test('removed with removalPolicy Delete: destroy-module removed its unit and volume; install dir, ports, Redis keys gone', async () => {
    const del = await inNode(['ns8ctl', 'delete', 'module', ID, '--manifests', '/root/manifests']);
    expect(del.code).toBe(0);
    await eventually(`${ID} removed from the node`, async () => {
      const dir = await inNode(['test', '-e', `/var/lib/nethserver/${ID}`]);
      return dir.code !== 0 && (await leader.exists(keys.desired('Module', ID), keys.moduleStatus(ID))) === 0 ? true : undefined;
    }, { ...slow, explain: journal });
    expect(await tasks(ID, 'destroy-module')).toEqual([{ user: expect.any(String) as string, exit: '0' }]);
    expect((await inNode(['test', '-e', `/etc/systemd/system/${ID}.service`])).code).not.toBe(0);
    expect((await inNode(['systemctl', 'is-active', `${ID}.service`])).out.trim()).not.toBe('active');
    expect((await inNode(['systemctl', 'is-active', `agent@${ID}.service`])).out.trim()).not.toBe('active');
    expect((await inNode(['podman', 'volume', 'exists', `${ID}-data`])).code).not.toBe(0);
    expect((await inNode(['podman', 'ps', '-a', '--format', '{{.Names}}'])).out).not.toContain(ID);
    expect((await inNode(['curl', '-sf', '--max-time', '3', `http://127.0.0.1:${port}/`])).code).not.toBe(0);
    expect(Object.keys(await leader.hgetall(keys.nodePorts(1))).filter((k) => k.includes(ID))).toEqual([]);
    expect(await leader.keys(`module/${ID}/*`)).toEqual([]);
    expect(await leader.exists(`cluster/authorizations/module/${ID}`, `roles/module/${ID}`)).toBe(0);
    expect(((await leader.call('ACL', 'LIST')) as string[]).filter((l) => l.includes(`module/${ID} `))).toEqual([]);
    // kickweb goes on.
    expect(await configured(KICK, { greeting: 'Hello from kickweb' })).toEqual({ greeting: 'Hello from kickweb' });
  }, 600_000);

  test('added again with the same id: installed and configured from scratch', async () => {
    await writeManifest(ID, image('rootweb', '1.1.0'), { title: 'Rootfull three' });
    expect(await configured(ID, { title: 'Rootfull three' })).toEqual({ title: 'Rootfull three' });
    const env = await leader.hgetall(`module/${ID}/environment`);
    expect(env['MIGRATED_FROM']).toBeUndefined();
    const again = env['TCP_PORT'] ?? '';
    expect(await served(again, '/', 'Rootfull three')).toBe('<h1>Rootfull three</h1>\n<p>kickweb says: Hello from kickweb</p>\n<p>rootweb 1.1.0</p>\n');
    // A new volume: its first start wrote the image it started with.
    expect((await served(again, '/data/installed', image('rootweb', '1.1.0'))).trim()).toBe(image('rootweb', '1.1.0'));
    expect((await inNode(['systemctl', 'is-active', `${ID}.service`])).out.trim()).toBe('active');
  }, 600_000);
});
