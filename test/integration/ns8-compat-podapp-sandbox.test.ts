/**
 * The ns8-nextcloud-layout example module (examples/ns8-compat/podapp: a pod unit, two container
 * units from two service images, a named volume) next to the kickstart-layout one
 * (examples/ns8-compat/kickweb), both installed by `ns8ctl run` in one sandbox node from
 * manifests: podapp's own actions start its pod (as NS8 modules do), read kickweb1's greeting
 * through agent.tasks with the authorization its image label asks for, keep data in the volume
 * across restarts and the 1.1.0 update (its update-module.d migration reads PREV_PODAPP_DB_IMAGE),
 * and a recorded removal leaves nothing; re-added, the same id is configured again. The steps run
 * in order on one node.
 */
import type { Redis } from 'ioredis';
import type { SandboxInfo } from '../../src/sandbox/create.js';
import { keys } from '../../src/state/keys.js';
import { startCompatSandbox, stopCompatSandbox } from '../support/compat-sandbox.js';
import { eventually, sandboxNode } from '../support/sandbox-node.js';

const NAME = 'ns8pod';
const ID = 'podapp1';
const KICKWEB = 'kickweb1';
const UNITS = ['podapp.service', 'podapp-db.service', 'podapp-web.service'];
const { deps, inNode } = sandboxNode(NAME);
let info: SandboxInfo;
let leader: Redis;
let port = '';
/** configure-module tasks of podapp1 before its removal (task results outlive the instance). */
let configuresBeforeRemoval = 0;

const image = (name: string, tag: string): string => `${info.registry}/ns8ctl-compat/${name}:${tag}`;
const userctl = (...args: string[]) => inNode(['systemctl', '--user', '-M', `${ID}@`, ...args]);

/** The node's recent journal and the state of podapp's units: why a wait did not end. */
async function explain(): Promise<string> {
  const units = await userctl('status', '--no-pager', '-n', '15', ...UNITS);
  return `${(await inNode(['journalctl', '--no-pager', '-n', '80'])).out}\n--- ${ID} units ---\n${units.out}${units.err}`;
}

async function writeManifest(id: string, body: string): Promise<void> {
  const manifest = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${id}\nspec:\n  node: 1\n  removalPolicy: Delete\n${body}`;
  const w = await inNode(['sh', '-c', `mkdir -p /root/manifests && cat > /root/manifests/.${id}.tmp && mv /root/manifests/.${id}.tmp /root/manifests/${id}.yaml`], manifest);
  expect(w.code).toBe(0);
}

const writePodapp = (tag: string, title: string) =>
  writeManifest(ID, `  image: ${image('podapp', tag)}\n  dependsOn: [${KICKWEB}]\n  configuration:\n    title: "${title}"\n    kickweb: ${KICKWEB}\n`);

/** podapp's page (the web container's CGI, through the pod's published port) once it contains every `parts`. */
async function pageWith(what: string, parts: string[], timeoutMs = 240_000): Promise<string> {
  return eventually(what, async () => {
    const r = await inNode(['curl', '-sf', '--max-time', '5', `http://127.0.0.1:${port}/cgi-bin/page`]);
    return r.code === 0 && parts.every((p) => r.out.includes(p)) ? r.out : undefined;
  }, { timeoutMs, everyMs: 2000, explain });
}

async function getConfiguration(): Promise<unknown> {
  const r = await inNode(['timeout', '30', 'ns8ctl', 'run-action', ID, 'get-configuration']);
  return r.code === 0 ? JSON.parse(r.out) : undefined;
}

/** Exit codes of the instance's tasks running `action`, from their stored contexts and results. */
async function lifecycleTasks(action: string): Promise<string[]> {
  const out: string[] = [];
  for (const k of await leader.keys(`task/module/${ID}/*/context`)) {
    if ((JSON.parse((await leader.get(k)) ?? '{}') as { action?: string }).action !== action) continue;
    out.push((await leader.get(k.replace(/\/context$/, '/exit_code'))) ?? 'none');
  }
  return out;
}

const BUILT = ['podapp:1.0.0', 'podapp:1.1.0', 'podapp-web:1.0.0', 'podapp-db:1.0.0', 'podapp-db:1.1.0', 'kickweb:1.0.0', 'kickweb:1.1.0', 'kickweb-httpd:1.0.0'];

beforeAll(async () => {
  ({ info, leader } = await startCompatSandbox(NAME, deps, {
    only: ['podapp', 'podapp-web', 'podapp-db', 'kickweb', 'kickweb-httpd'],
    built: BUILT,
    buildTimeoutMs: 600_000,
    afterCreate: async () => {
      // Sandbox nodes share the host's uids (no user namespace): the recipe gives node users a uid
      // range no host test user has (a host test's `killall -u` must not reach a node's instance).
      expect((await inNode(['grep', '-c', '^UID_MIN 52000', '/etc/login.defs'])).out.trim()).toBe('1');
    },
  }));
}, 1_200_000);

afterAll(async () => {
  await stopCompatSandbox(NAME, deps, { info, leader }, BUILT);
}, 120_000);

describe('an NS8 module with a pod, two service images and a volume, run by ns8ctl run in a sandbox node', () => {
  test('installed after kickweb1 and configured: the pod serves the configured title, kickweb1\'s greeting (agent.tasks) and the database volume\'s records', async () => {
    await writeManifest(KICKWEB, `  image: ${image('kickweb', '1.0.0')}\n  configuration:\n    greeting: "Hello from kickweb1"\n`);
    await writePodapp('1.0.0', 'Team notes');
    const started = await inNode(['systemd-run', '--unit=ns8ctl-run', '--collect', '/usr/local/bin/ns8ctl', 'run', '-f', '/root/manifests', '--node', '1', '--no-http', '--agent-resync', '5s', '--resync', '10s']);
    expect(started.code).toBe(0);
    const config = await eventually('get-configuration of podapp1 returns the manifest configuration', async () => {
      const c = (await getConfiguration()) as { title?: string } | undefined;
      return c?.title === 'Team notes' ? c : undefined;
    }, { timeoutMs: 480_000, everyMs: 3000, explain });
    expect(config).toEqual({ title: 'Team notes', kickweb: KICKWEB });
    // get-configuration reads what configure-module's first step stored; the later steps (and the
    // copy of the environment into Redis at the task's end) may still be running: wait for the last.
    const env = await eventually('configure-module finished (PODAPP_LAST_CONFIGURE_TASK in Redis)', async () => {
      const e = await leader.hgetall(keys.moduleEnvironment(ID));
      return e.PODAPP_LAST_CONFIGURE_TASK ? e : undefined;
    }, { timeoutMs: 120_000, everyMs: 1000, explain });
    port = env.TCP_PORT ?? '';
    expect(port).toMatch(/^\d+$/);
    // The service images of the label, under NS8's variable names, and what configure-module set.
    expect(env).toMatchObject({
      PODAPP_WEB_IMAGE: image('podapp-web', '1.0.0'),
      PODAPP_DB_IMAGE: image('podapp-db', '1.0.0'),
      PODAPP_TITLE: 'Team notes',
      PODAPP_KICKWEB: KICKWEB,
      KICKWEB_GREETING: 'Hello from kickweb1',
    });
    expect(env.PODAPP_LAST_CONFIGURE_TASK).toMatch(/^[0-9a-f-]{36}$/);
    const page = await pageWith('the page shows the configuration and the records', ['title: Team notes', 'kickweb: Hello from kickweb1', 'db: podapp-db 1.0.0', 'configured: Team notes', 'started: podapp-db 1.0.0']);
    expect(page).toContain('web: podapp-web 1.0.0');
    // NS8's order: nothing started the containers before configure-module wrote its record (the
    // database container appends a `started:` record each time it starts).
    expect(page.split('records:\n')[1]?.split('\n')[0]).toBe('configured: Team notes');
    // The module enabled and started its pod and both containers itself (configure-module).
    expect((await userctl('is-enabled', ...UNITS)).out.trim().split('\n')).toEqual(['enabled', 'enabled', 'enabled']);
    expect((await userctl('is-active', ...UNITS)).out.trim().split('\n')).toEqual(['active', 'active', 'active']);
    const ps = await inNode(['ns8ctl', 'runagent', '-m', ID, 'podman', 'ps', '--filter', 'pod=podapp', '--format', '{{.Names}}']);
    expect(ps.out.split('\n').filter((n) => n.startsWith('podapp-')).sort()).toEqual(['podapp-db', 'podapp-web']);
    expect((await inNode(['ns8ctl', 'runagent', '-m', ID, 'podman', 'volume', 'ls', '--format', '{{.Name}}'])).out.split('\n')).toContain('podapp-db-data');
    // The grant came from podapp's label (kickweb@any:greetadm) and kickweb1's role.
    expect(await leader.smembers(`cluster/authorizations/module/${ID}`)).toContain('kickweb@any:greetadm');
  }, 1_200_000);

  test('the task to kickweb1 is refused (exit code 32) for an action outside the granted role', async () => {
    const py = 'import agent, json; r = agent.tasks.run(agent_id="module/kickweb1", action="list-actions", data={}); print(json.dumps({"exit_code": r["exit_code"], "error": r["error"]}))';
    const r = await inNode(['timeout', '120', 'ns8ctl', 'runagent', '-m', ID, 'python3', '-c', py]);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.out) as { exit_code: number; error: string };
    expect(out.exit_code).toBe(32);
    expect(out.error).toMatch(/^module_permission_denied: module\/podapp1 /);
  }, 300_000);

  test('a changed configuration is served after the module restarts its containers; the volume keeps the earlier records', async () => {
    await writePodapp('1.0.0', 'Renamed');
    const page = await pageWith('the page shows the new title', ['title: Renamed', 'configured: Team notes', 'configured: Renamed']);
    // Restarted by configure-module: the database container started at least twice on the same volume.
    expect(page.split('\n').filter((l) => l === 'started: podapp-db 1.0.0').length).toBeGreaterThanOrEqual(2);
    expect(await eventually('get-configuration returns the new title', async () => {
      const c = (await getConfiguration()) as { title?: string } | undefined;
      return c?.title === 'Renamed' ? c : undefined;
    }, { timeoutMs: 120_000, everyMs: 2000, explain })).toEqual({ title: 'Renamed', kickweb: KICKWEB });
  }, 600_000);

  test('update 1.0.0 -> 1.1.0: update-module.d migrates with PREV_PODAPP_DB_IMAGE and restarts the containers on the new database image; the volume data is kept', async () => {
    await writePodapp('1.1.0', 'Renamed');
    const page = await pageWith('the page is served by podapp-db 1.1.0 after the migration', ['db: podapp-db 1.1.0', `migrated: ${image('podapp-db', '1.0.0')} -> ${image('podapp-db', '1.1.0')}`], 480_000);
    expect(page).toContain('configured: Team notes\n');
    expect(page).toContain('started: podapp-db 1.0.0\n');
    expect(page).toContain('started: podapp-db 1.1.0\n');
    expect(page).toContain('title: Renamed');
    // The migration's record is on the page before update-module ends and copies the environment.
    const env = await eventually('update-module finished (PODAPP_DB_MIGRATED_FROM in Redis)', async () => {
      const e = await leader.hgetall(keys.moduleEnvironment(ID));
      return e.PODAPP_DB_MIGRATED_FROM ? e : undefined;
    }, { timeoutMs: 120_000, everyMs: 1000, explain });
    expect(env).toMatchObject({ IMAGE_URL: image('podapp', '1.1.0'), PODAPP_DB_IMAGE: image('podapp-db', '1.1.0'), PREV_PODAPP_DB_IMAGE: image('podapp-db', '1.0.0'), PODAPP_DB_MIGRATED_FROM: image('podapp-db', '1.0.0') });
    expect(await eventually('update-module ended', async () => {
      const t = await lifecycleTasks('update-module');
      return t.includes('none') ? undefined : t;
    }, { timeoutMs: 60_000, explain })).toEqual(['0']);
  }, 900_000);

  test('a recorded removal runs destroy-module and leaves no user, unit, port, Redis key, grant or volume', async () => {
    configuresBeforeRemoval = (await lifecycleTasks('configure-module')).length;
    const del = await inNode(['ns8ctl', 'delete', 'module', ID, '--manifests', '/root/manifests']);
    expect(del.code).toBe(0);
    await eventually('podapp1 removed (user and home gone)', async () => {
      const gone = (await inNode(['id', ID])).code !== 0 && (await inNode(['test', '-e', `/home/${ID}`])).code !== 0;
      return gone && (await leader.exists(keys.desired('Module', ID))) === 0 ? true : undefined;
    }, { timeoutMs: 300_000, everyMs: 3000, explain });
    expect(await lifecycleTasks('destroy-module')).toEqual(['0']);
    expect((await inNode(['curl', '-sf', '--max-time', '3', `http://127.0.0.1:${port}/cgi-bin/page`])).code).not.toBe(0);
    expect((await inNode(['test', '-e', `/var/lib/systemd/linger/${ID}`])).code).not.toBe(0);
    // No process of the user is left (its pod, conmons, user manager); the volume lived in the home.
    expect((await inNode(['sh', '-c', `ps -eo user:32,comm | grep -c '^${ID} ' || true`])).out.trim()).toBe('0');
    expect(await leader.keys(`module/${ID}/*`)).toEqual([]);
    expect(Object.keys(await leader.hgetall(keys.nodePorts(1))).filter((k) => k.startsWith(`${ID}/`))).toEqual([]);
    expect(((await leader.call('ACL', 'LIST')) as string[]).filter((l) => l.includes(`module/${ID} `))).toEqual([]);
    expect(await leader.exists(`cluster/authorizations/module/${ID}`, `roles/module/${ID}`)).toBe(0);
    expect(await leader.hexists(`module/${KICKWEB}/grants`, `module/${ID}`)).toBe(0);
    // kickweb1 is untouched.
    expect(await leader.hget(keys.moduleEnvironment(KICKWEB), 'GREETING')).toBe('Hello from kickweb1');
  }, 600_000);

  test('re-added with the same id and configuration, it is configured again on a new volume', async () => {
    await writePodapp('1.1.0', 'Renamed');
    await eventually('podapp1 configured again', async () => {
      const c = (await getConfiguration()) as { title?: string } | undefined;
      return c?.title === 'Renamed' ? c : undefined;
    }, { timeoutMs: 480_000, everyMs: 3000, explain });
    // get-configuration answers once 20configure has run; the task itself ends after 80start_services.
    const configures = await eventually('the new configure-module task completed', async () => {
      const c = await lifecycleTasks('configure-module');
      return c.length === configuresBeforeRemoval + 1 && !c.includes('none') ? c : undefined;
    }, { timeoutMs: 240_000, everyMs: 2000, explain });
    expect(configures.filter((c) => c !== '0')).toEqual([]);
    port = (await leader.hget(keys.moduleEnvironment(ID), 'TCP_PORT')) ?? '';
    const page = await pageWith('the re-added instance serves its configuration', ['title: Renamed', 'kickweb: Hello from kickweb1', 'db: podapp-db 1.1.0', 'configured: Renamed']);
    // A new volume: nothing of the removed instance's records.
    expect(page).not.toContain('Team notes');
    expect(page).not.toContain('migrated:');
  }, 900_000);

  test("kickweb1's removal reaches podapp1's module-removed event handler, which stops showing the greeting", async () => {
    expect((await inNode(['ns8ctl', 'delete', 'module', KICKWEB, '--manifests', '/root/manifests'])).code).toBe(0);
    await pageWith('the page no longer shows the greeting', ['kickweb: (removed)'], 300_000);
    // set_env wrote the state file; ns8ctl's agent mirrors it to module/<id>/environment when a
    // task ends, and an event handler is no task.
    expect((await inNode(['ns8ctl', 'runagent', '-m', ID, 'grep', '^KICKWEB_GREETING=', 'environment'])).out.trim()).toBe('KICKWEB_GREETING=(removed)');
  }, 600_000);
});
