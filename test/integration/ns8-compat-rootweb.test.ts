/**
 * examples/ns8-compat/rootweb, a ROOTFULL module written in the layout of ns8-netdata and
 * ns8-crowdsec: a unit template in its install dir that its own actions install as
 * /etc/systemd/system/<MODULE_ID>.service (create-module, update-module.d), enable and start
 * (configure-module) and remove (destroy-module); a task to the node's kickweb instance through
 * agent.tasks with the authorization its label asks for; data in the podman volume
 * <MODULE_ID>-data. Built into real images with examples/modules/build-images.sh, the imageroots
 * extracted from the images as NS8's extract-image does, and the actions run by ns8ctl's module
 * agents (rootfull, with the base actions) under NS8's module ACL on a real redis-server, with
 * ns8ctl's NS8 runtime and task relay.
 *
 * This host has no systemd: `systemctl` on the steps' PATH records what the module asked, and the
 * module's unit directory is a temp dir (ROOTWEB_SYSTEMD_DIR, the module's test seam). The unit
 * itself runs in ns8-compat-rootweb-sandbox.test.ts.
 */
import { compatStepEnv, extractImageroot as extractCompatImageroot, prepareCompatHost, readStateEnvironment, systemctlCalls as recordedSystemctlCalls, startCompatRelay } from '../support/ns8-compat.js';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { runAgent, type AgentHandle } from '../../src/agent/agent.js';
import { applyGrants } from '../../src/agent/authorizations.js';
import { createBaseActions } from '../../src/agent/base-actions.js';
import { runTask } from '../../src/agent/task-client.js';
import type { TaskRelay } from '../../src/agent/task-relay.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { applyModuleAcl, generatePassword } from '../../src/node-agent/redis-acl.js';
import { useNs8AclRedis } from '../support/ns8-acl-redis.js';
import { withImageBuildLock } from '../support/image-build-lock.js';

// Its own name: the kickweb test (another jest worker) builds and removes kickweb under its own.
const REGISTRY = 'ns8ctl-compat-rootweb-test.invalid';
const IMAGE = (name: string, tag: string): string => `${REGISTRY}/ns8ctl-compat/${name}:${tag}`;
const BUILT = [IMAGE('rootweb', '1.0.0'), IMAGE('rootweb', '1.1.0'), IMAGE('rootweb-httpd', '1.0.0'), IMAGE('kickweb', '1.0.0'), IMAGE('kickweb', '1.1.0'), IMAGE('kickweb-httpd', '1.0.0')];
// The volume is a real root podman volume named after the instance: an id of this process only.
const ID = `rootweb${process.pid}`;
const KICK = 'kickweb1';
const VOLUME = `${ID}-data`;
const runner = new ProcessRunner();
const acl = useNs8AclRedis();
const password = { [ID]: generatePassword(), [KICK]: generatePassword() };

let root: string;
let agents: AgentHandle[] = [];
let relay: TaskRelay | undefined;

const installDirOf = (id: string): string => path.join(root, 'var-lib-nethserver', id);
const stateDirOf = (id: string): string => path.join(installDirOf(id), 'state');
const unitDir = (): string => path.join(root, 'etc-systemd-system');

const extractImageroot = (image: string, installDir: string): Promise<void> => extractCompatImageroot(runner, image, installDir, root);
const stepEnv = (id: string): Record<string, string> => compatStepEnv(root, acl.server.port, { id, installDir: installDirOf(id), stateDir: stateDirOf(id), password: password[id] ?? '' }, { ROOTWEB_SYSTEMD_DIR: unitDir() });
const stateEnvironment = (id = ID): Record<string, string> => readStateEnvironment(stateDirOf(id));
const systemctlCalls = (): string[] => recordedSystemctlCalls(root);

/** A fresh instance: environment as the node writes it, imageroot extracted, its agent running. */
async function install(id: string, image: string, rootfull: boolean): Promise<void> {
  rmSync(installDirOf(id), { recursive: true, force: true });
  mkdirSync(stateDirOf(id), { recursive: true });
  writeFileSync(path.join(stateDirOf(id), 'environment'), `MODULE_ID=${id}\nNODE_ID=1\nIMAGE_URL=${image}\nTCP_PORT=${rootfull ? 20002 : 20001}\n`);
  await extractImageroot(image, installDirOf(id));
  await applyModuleAcl(acl.admin, id, password[id] ?? '');
  const agent = runAgent(
    { agentId: `module/${id}`, installDir: installDirOf(id), stateDir: stateDirOf(id), actionsDirs: [path.join(installDirOf(id), 'actions')], builtins: createBaseActions({ systemUnitDir: unitDir() }), rootfull, pollSeconds: 1, env: stepEnv(id), log: () => undefined },
    { redis: acl.connect(`module/${id}`, password[id], `module/${id}`), runner },
  );
  await agent.start();
  agents.push(agent);
}

const run = (action: string, data: unknown = {}, id = ID) => runTask(acl.admin, `module/${id}`, action, { data, timeoutMs: 120_000 });

const volumeExists = async (): Promise<boolean> => (await runner.run(['podman', 'volume', 'exists', VOLUME], { allowFailure: true })).exitCode === 0;

beforeAll(async () => {
  root = await prepareCompatHost({ only: 'rootweb,rootweb-httpd,kickweb,kickweb-httpd', registry: REGISTRY, prefix: 'ns8-compat-rootweb-' });
}, 600_000);

afterAll(async () => {
  rmSync(root, { recursive: true, force: true });
  await runner.run(['podman', 'volume', 'rm', '--force', VOLUME], { allowFailure: true });
  await withImageBuildLock(() => runner.run(['podman', 'rmi', '-f', ...BUILT], { allowFailure: true }));
});

beforeEach(async () => {
  await acl.admin.flushall();
  rmSync(unitDir(), { recursive: true, force: true });
  mkdirSync(unitDir(), { recursive: true });
  await runner.run(['podman', 'volume', 'rm', '--force', VOLUME], { allowFailure: true });
  // The node's default kickweb instance, configured, with the roles its create-module defines.
  await acl.admin.hset('cluster/module_node', ID, '1', KICK, '1');
  await acl.admin.set('node/1/default_instance/kickweb', KICK);
  await install(KICK, IMAGE('kickweb', '1.0.0'), false);
  await install(ID, IMAGE('rootweb', '1.0.0'), true);
  expect(await run('create-module', { images: [], volumes: {} }, KICK)).toMatchObject({ exitCode: 0 });
  expect(await run('configure-module', { greeting: 'Hi from kickweb' }, KICK)).toMatchObject({ exitCode: 0 });
  // What add-module stores from rootweb's org.nethserver.authorizations label.
  await acl.admin.sadd(`cluster/authorizations/module/${ID}`, 'kickweb@any:greetadm');
  await applyGrants(acl.admin);
  relay = await startCompatRelay(acl.admin, root);
}, 180_000);

afterEach(async () => {
  await relay?.stop();
  relay = undefined;
  for (const a of agents) await a.stop();
  agents = [];
});

describe('a rootfull NS8 module in the ns8-netdata / ns8-crowdsec layout, run by ns8ctl', () => {
  test("create-module installs the module's system unit named after the instance, and starts nothing", async () => {
    const r = await run('create-module', { images: [], volumes: {} });
    expect(r).toMatchObject({ exitCode: 0, status: 'completed' });
    expect(stateEnvironment()).toMatchObject({ TITLE: 'Hello from rootweb', MODULE_ID: ID });
    expect(readFileSync(path.join(unitDir(), `${ID}.service`), 'utf8')).toBe(readFileSync(path.join(installDirOf(ID), 'rootweb.service'), 'utf8'));
    expect(systemctlCalls()).toEqual(['daemon-reload']);
    expect(await acl.admin.smembers(`module/${ID}/roles/selfadm`)).toEqual(['configure-module']);
    // get-status (base action) finds the rootfull unit where NS8 looks: /etc/systemd/system/<id>*.service.
    const status = await run('get-status');
    expect(JSON.parse(status.output)).toMatchObject({ instance: ID, services: [{ name: ID }] });
  });

  test("configure-module stores the configuration, asks kickweb through agent.tasks, advertises its service, renders the page, then enables and starts its unit; get-configuration returns it", async () => {
    await run('create-module', { images: [], volumes: {} });
    const sub = acl.connect();
    const events: string[] = [];
    sub.on('message', (_channel: string, message: string) => events.push(message));
    await sub.subscribe(`module/${ID}/event/rootweb-changed`);
    rmSync(path.join(root, 'systemctl.log'), { force: true });
    const r = await run('configure-module', { title: 'Rootfull & <proud>' });
    expect(r).toMatchObject({ exitCode: 0, status: 'completed' });
    expect(stateEnvironment()).toMatchObject({ TITLE: 'Rootfull & <proud>', KICKWEB_ID: KICK, KICKWEB_GREETING: 'Hi from kickweb', LAST_CONFIGURE_TASK: r.taskId });
    expect(await acl.admin.hget(`module/${ID}/environment`, 'TITLE')).toBe('Rootfull & <proud>');
    expect(await acl.admin.hgetall(`module/${ID}/srv/http/rootweb`)).toEqual({ port: '20002', url: 'http://127.0.0.1:20002', node: '1' });
    // The kickweb agent ran the task as rootweb (the relay stamps the caller).
    const kickTasks = await acl.admin.keys(`task/module/${KICK}/*/context`);
    const contexts = await Promise.all(kickTasks.map(async (k) => JSON.parse((await acl.admin.get(k)) ?? '{}') as { action?: string; user?: string }));
    expect(contexts.filter((c) => c.action === 'get-configuration').map((c) => c.user)).toEqual([`module/${ID}`]);
    expect(readFileSync(path.join(stateDirOf(ID), 'www', 'index.html'), 'utf8')).toBe('<h1>Rootfull &amp; &lt;proud&gt;</h1>\n<p>kickweb says: Hi from kickweb</p>\n<p>rootweb 1.0.0</p>\n');
    expect(existsSync(path.join(stateDirOf(ID), 'www', 'data'))).toBe(true);
    expect(systemctlCalls()).toEqual([`enable --now ${ID}.service`]);
    const got = await run('get-configuration');
    expect(got).toMatchObject({ exitCode: 0 });
    expect(JSON.parse(got.output)).toEqual({ title: 'Rootfull & <proud>' });
    await new Promise<void>((resolve) => (events.length ? resolve() : sub.once('message', () => resolve())));
    expect(JSON.parse(events[0] ?? '{}')).toEqual({ key: `module/${ID}/srv/http/rootweb`, node: 1 });
  });

  test('configure-module fails, starting nothing, when kickweb refuses the task: no authorization, exit code 32 from its agent', async () => {
    await acl.admin.del(`cluster/authorizations/module/${ID}`);
    await applyGrants(acl.admin);
    const r = await run('configure-module', { title: 'Unauthorized' });
    expect(r).toMatchObject({ exitCode: 2, status: 'aborted' });
    expect(r.error).toMatch(/get-configuration of module\/kickweb1 failed: module_permission_denied/);
    expect(stateEnvironment()['KICKWEB_GREETING']).toBeUndefined();
    expect(systemctlCalls()).toEqual([]);
  });

  test('configure-module refuses a title with a newline (schema) and a blank one (the Python step), changing nothing', async () => {
    const schema = await run('configure-module', { title: 'a\nTITLE=b' });
    expect(schema).toMatchObject({ exitCode: 10, status: 'validation-failed' });
    const blank = await run('configure-module', { title: '  ' });
    expect(blank).toMatchObject({ exitCode: 2, status: 'validation-failed' });
    expect(JSON.parse(blank.output)).toEqual([{ field: 'title', parameter: 'title', value: '  ', error: 'title_blank' }]);
    expect(stateEnvironment()['TITLE']).toBeUndefined();
    expect(systemctlCalls()).toEqual([]);
  });

  test("the unit template follows the instance id (%N) and renders its page through runagent in ExecStartPre", async () => {
    const unit = readFileSync(path.join(installDirOf(ID), 'rootweb.service'), 'utf8');
    expect(unit).toContain('EnvironmentFile=/var/lib/nethserver/%N/state/environment\n');
    expect(unit).toContain('ExecStartPre=runagent -m %N write-page\n');
    expect(unit).toContain('--volume=%N-data:/www/data');
    expect(unit).toContain('${ROOTWEB_HTTPD_IMAGE}');
    expect(unit).toContain('WantedBy=multi-user.target');
  });

  test("update-module (ns8ctl's base action) runs 1.1.0's update-module.d in order with NS8's PREV_IMAGE_URL: unit reinstalled, migration mark in the kept volume, service restarted if running", async () => {
    await run('create-module', { images: [], volumes: {} });
    await runner.run(['podman', 'volume', 'create', VOLUME]);
    const mount = (await runner.run(['podman', 'volume', 'inspect', '--format', '{{.Mountpoint}}', VOLUME])).stdout.trim();
    writeFileSync(path.join(mount, 'installed'), `${IMAGE('rootweb', '1.0.0')}\n`);
    await extractImageroot(IMAGE('rootweb', '1.1.0'), installDirOf(ID));
    const before = readFileSync(path.join(stateDirOf(ID), 'environment'), 'utf8');
    writeFileSync(path.join(stateDirOf(ID), 'environment'), before.replace(`IMAGE_URL=${IMAGE('rootweb', '1.0.0')}`, `IMAGE_URL=${IMAGE('rootweb', '1.1.0')}\nPREV_IMAGE_URL=${IMAGE('rootweb', '1.0.0')}`));
    // The new template replaces the installed unit: make the old one differ.
    writeFileSync(path.join(unitDir(), `${ID}.service`), '# the 1.0.0 unit\n');
    rmSync(path.join(root, 'systemctl.log'), { force: true });
    const r = await run('update-module', { module_url: IMAGE('rootweb', '1.1.0'), force: false });
    expect(r).toMatchObject({ exitCode: 0, status: 'completed' });
    expect(r.error).not.toContain('failed with exit code');
    expect(readFileSync(path.join(unitDir(), `${ID}.service`), 'utf8')).toBe(readFileSync(path.join(installDirOf(ID), 'rootweb.service'), 'utf8'));
    expect(stateEnvironment()['MIGRATED_FROM']).toBe(IMAGE('rootweb', '1.0.0'));
    expect(await acl.admin.hget(`module/${ID}/environment`, 'MIGRATED_FROM')).toBe(IMAGE('rootweb', '1.0.0'));
    expect(readFileSync(path.join(mount, 'migrated'), 'utf8')).toBe(`${IMAGE('rootweb', '1.0.0')}\n`);
    expect(readFileSync(path.join(mount, 'installed'), 'utf8')).toBe(`${IMAGE('rootweb', '1.0.0')}\n`);
    expect(systemctlCalls()).toEqual(['daemon-reload', `try-restart ${ID}.service`]);
    expect(readFileSync(path.join(installDirOf(ID), 'etc', 'version'), 'utf8').trim()).toBe('1.1.0');
  });

  test('destroy-module stops, disables and removes the unit it installed; the volume goes unless data is preserved', async () => {
    await run('create-module', { images: [], volumes: {} });
    await runner.run(['podman', 'volume', 'create', VOLUME]);
    rmSync(path.join(root, 'systemctl.log'), { force: true });
    const kept = await run('destroy-module', { module_id: ID, preserve_data: true });
    expect(kept).toMatchObject({ exitCode: 0 });
    expect(existsSync(path.join(unitDir(), `${ID}.service`))).toBe(false);
    expect(systemctlCalls()).toEqual([`disable --now ${ID}.service`, 'daemon-reload']);
    expect(await volumeExists()).toBe(true);
    const gone = await run('destroy-module', { module_id: ID, preserve_data: false });
    expect(gone).toMatchObject({ exitCode: 0 });
    expect(await volumeExists()).toBe(false);
  });
});
