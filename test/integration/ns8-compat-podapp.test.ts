/**
 * examples/ns8-compat/podapp, a module written in ns8-nextcloud's layout (a pod unit plus one unit
 * per service container, two service images, a named podman volume, Python actions that call
 * another module through agent.tasks, bash steps writing agent commands on AGENT_COMFD,
 * update-module.d scripts reading NS8's PREV_ variables): built into real images with
 * examples/modules/build-images.sh, its imageroot extracted from the image as NS8's extract-image
 * does, and its actions run by ns8ctl's module agent (with the base actions) under NS8's module
 * ACL on a real redis-server, with ns8ctl's NS8 runtime and task relay. A kickweb instance (the
 * other compat example) runs next to it: podapp's configure-module reads its greeting.
 *
 * This host has no systemd: `systemctl` on the steps' PATH records what the module asked; the
 * units run in the sandbox test (ns8-compat-podapp-sandbox.test.ts). The steps' podman is the
 * host's (as root): the test owns the volume name podapp-db-data and removes it.
 */
import { compatStepEnv, extractImageroot as extractCompatImageroot, prepareCompatHost, readStateEnvironment, systemctlCalls as recordedSystemctlCalls, startCompatRelay } from '../support/ns8-compat.js';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { runAgent, type AgentHandle } from '../../src/agent/agent.js';
import { applyGrants, authorizationsToStore } from '../../src/agent/authorizations.js';
import { createBaseActions } from '../../src/agent/base-actions.js';
import { runTask } from '../../src/agent/task-client.js';
import type { TaskRelay } from '../../src/agent/task-relay.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { applyModuleAcl, generatePassword } from '../../src/node-agent/redis-acl.js';
import { useNs8AclRedis } from '../support/ns8-acl-redis.js';
import { withImageBuildLock } from '../support/image-build-lock.js';

const REGISTRY = 'ns8ctl-compat-podapp-test.invalid';
const ref = (name: string, tag: string): string => `${REGISTRY}/ns8ctl-compat/${name}:${tag}`;
const BUILT = ['podapp:1.0.0', 'podapp:1.1.0', 'podapp-web:1.0.0', 'podapp-db:1.0.0', 'podapp-db:1.1.0', 'kickweb:1.0.0', 'kickweb:1.1.0', 'kickweb-httpd:1.0.0'].map((t) => `${REGISTRY}/ns8ctl-compat/${t}`);
const VOLUME = 'podapp-db-data';
const runner = new ProcessRunner();
const acl = useNs8AclRedis();

interface Instance {
  id: string;
  password: string;
  installDir: string;
  stateDir: string;
  agent?: AgentHandle | undefined;
}

let root: string;
let relay: TaskRelay | undefined;
const podapp: Instance = { id: 'podapp1', password: generatePassword(), installDir: '', stateDir: '' };
const kickweb: Instance = { id: 'kickweb1', password: generatePassword(), installDir: '', stateDir: '' };

const extractImageroot = (inst: Instance, image: string): Promise<void> => extractCompatImageroot(runner, image, inst.installDir, root);
const stepEnv = (inst: Instance): Record<string, string> => compatStepEnv(root, acl.server.port, inst);
const stateEnvironment = (inst: Instance): Record<string, string> => readStateEnvironment(inst.stateDir);
const systemctlCalls = (): string[] => recordedSystemctlCalls(root);

/** The records file of the database volume, read where podman keeps the volume. */
async function records(): Promise<string> {
  const mountpoint = (await runner.run(['podman', 'volume', 'inspect', '--format', '{{.Mountpoint}}', VOLUME])).stdout.trim();
  const file = path.join(mountpoint, 'records');
  return existsSync(file) ? readFileSync(file, 'utf8') : '';
}

/** What the node does before create-module: install dir, image extracted, environment, ACL user, agent. */
async function addInstance(inst: Instance, image: string, environment: string): Promise<void> {
  inst.installDir = path.join(root, inst.id, '.config');
  inst.stateDir = path.join(inst.installDir, 'state');
  mkdirSync(inst.stateDir, { recursive: true });
  writeFileSync(path.join(inst.stateDir, 'environment'), environment);
  await extractImageroot(inst, image);
  await applyModuleAcl(acl.admin, inst.id, inst.password);
  await acl.admin.hset('cluster/module_node', inst.id, '1');
  inst.agent = runAgent(
    { agentId: `module/${inst.id}`, installDir: inst.installDir, stateDir: inst.stateDir, actionsDirs: [path.join(inst.installDir, 'actions')], builtins: createBaseActions(), pollSeconds: 1, env: stepEnv(inst), log: () => undefined },
    { redis: acl.connect(`module/${inst.id}`, inst.password, `module/${inst.id}`), runner },
  );
  await inst.agent.start();
}

const run = (inst: Instance, action: string, data: unknown = {}) => runTask(acl.admin, `module/${inst.id}`, action, { data, timeoutMs: 120_000 });

/** The image's own org.nethserver.authorizations label, stored as the node agent stores it. */
async function grantFromLabel(image: string): Promise<void> {
  const label = (await runner.run(['podman', 'image', 'inspect', '--format', '{{index .Labels "org.nethserver.authorizations"}}', image])).stdout.trim();
  await acl.admin.sadd(`cluster/authorizations/module/${podapp.id}`, ...authorizationsToStore(label));
  await applyGrants(acl.admin);
}

beforeAll(async () => {
  root = await prepareCompatHost({ only: 'podapp,podapp-web,podapp-db,kickweb,kickweb-httpd', registry: REGISTRY, prefix: 'ns8-compat-podapp-', timeoutMs: 600_000 });
}, 900_000);

afterAll(async () => {
  if (root) rmSync(root, { recursive: true, force: true });
  await runner.run(['podman', 'volume', 'rm', '-f', VOLUME], { allowFailure: true });
  await withImageBuildLock(() => runner.run(['podman', 'rmi', '-f', ...BUILT], { allowFailure: true }));
});

beforeEach(async () => {
  await acl.admin.flushall();
  for (const inst of [podapp, kickweb]) rmSync(path.join(root, inst.id), { recursive: true, force: true });
  rmSync(path.join(root, 'systemctl.log'), { force: true });
  await runner.run(['podman', 'volume', 'rm', '-f', VOLUME], { allowFailure: true });
  // kickweb1, created and configured: the instance podapp's configuration names.
  await addInstance(kickweb, ref('kickweb', '1.0.0'), `MODULE_ID=kickweb1\nNODE_ID=1\nIMAGE_URL=${ref('kickweb', '1.0.0')}\nTCP_PORT=20001\n`);
  expect(await run(kickweb, 'create-module', { images: [], volumes: {} })).toMatchObject({ exitCode: 0 });
  expect(await run(kickweb, 'configure-module', { greeting: 'Hello from kickweb1' })).toMatchObject({ exitCode: 0 });
  const podEnv = `MODULE_ID=podapp1\nNODE_ID=1\nIMAGE_URL=${ref('podapp', '1.0.0')}\nPODAPP_WEB_IMAGE=${ref('podapp-web', '1.0.0')}\nPODAPP_DB_IMAGE=${ref('podapp-db', '1.0.0')}\nTCP_PORT=20002\n`;
  await addInstance(podapp, ref('podapp', '1.0.0'), podEnv);
  relay = await startCompatRelay(acl.admin, root);
}, 180_000);

afterEach(async () => {
  await relay?.stop();
  relay = undefined;
  for (const inst of [podapp, kickweb]) {
    await inst.agent?.stop();
    inst.agent = undefined;
  }
});

describe('examples/modules/build-images.sh --only', () => {
  test('builds just the named images, and refuses a name with no image source', async () => {
    const other = 'ns8ctl-compat-only-test.invalid';
    const script = path.resolve('examples/modules/build-images.sh');
    try {
      const built = await withImageBuildLock(() => runner.run([script, '--dir', path.resolve('examples/ns8-compat'), '--namespace', 'ns8ctl-compat', '--only', 'podapp-web', '--registry', other], { timeoutMs: 300_000 }));
      expect(built.stdout.trim().split('\n')).toEqual([`${other}/ns8ctl-compat/podapp-web:1.0.0`]);
      const refused = await runner.run([script, '--dir', path.resolve('examples/ns8-compat'), '--only', 'podapp,nope', '--registry', other], { allowFailure: true });
      expect(refused.exitCode).toBe(2);
      expect(refused.stderr).toMatch(/--only: no image source 'nope' under .*examples\/ns8-compat \(there are: .*podapp-web/);
    } finally {
      await withImageBuildLock(() => runner.run(['podman', 'rmi', '-f', `${other}/ns8ctl-compat/podapp-web:1.0.0`], { allowFailure: true }));
    }
  }, 300_000);
});

describe('an NS8 module in the ns8-nextcloud layout (pod, service images, volume), run by ns8ctl', () => {
  test("create-module runs the base steps, creates the database volume and sets the module's defaults", async () => {
    const r = await run(podapp, 'create-module', { images: [], volumes: {} });
    expect(r).toMatchObject({ exitCode: 0, status: 'completed' });
    expect((await runner.run(['podman', 'volume', 'exists', VOLUME], { allowFailure: true })).exitCode).toBe(0);
    expect(stateEnvironment(podapp)).toMatchObject({ PODAPP_TITLE: 'podapp', MODULE_ID: 'podapp1' });
    // A second create-module (a retried task) finds the volume and goes on.
    expect(await run(podapp, 'create-module', { images: [], volumes: {} })).toMatchObject({ exitCode: 0 });
  });

  test("configure-module stores the configuration, reads kickweb1's greeting through agent.tasks (granted by the image's authorizations label), writes the volume and starts the pod's units; get-configuration returns it", async () => {
    await grantFromLabel(ref('podapp', '1.0.0'));
    expect(await run(podapp, 'create-module', { images: [], volumes: {} })).toMatchObject({ exitCode: 0 });
    const r = await run(podapp, 'configure-module', { title: 'Team notes', kickweb: 'kickweb1' });
    expect(r).toMatchObject({ exitCode: 0, status: 'completed' });
    expect(stateEnvironment(podapp)).toMatchObject({ PODAPP_TITLE: 'Team notes', PODAPP_KICKWEB: 'kickweb1', KICKWEB_GREETING: 'Hello from kickweb1', PODAPP_LAST_CONFIGURE_TASK: r.taskId });
    expect(await acl.admin.hget('module/podapp1/environment', 'KICKWEB_GREETING')).toBe('Hello from kickweb1');
    expect(await records()).toBe('configured: Team notes\n');
    expect(systemctlCalls()).toEqual(['--user enable podapp.service podapp-db.service podapp-web.service', '--user restart podapp.service podapp-db.service podapp-web.service']);
    const got = await run(podapp, 'get-configuration');
    expect(got).toMatchObject({ exitCode: 0 });
    expect(JSON.parse(got.output)).toEqual({ title: 'Team notes', kickweb: 'kickweb1' });
    // Reconfigured: the records of the first configuration stay in the volume.
    expect(await run(podapp, 'configure-module', { title: 'Renamed', kickweb: 'kickweb1' })).toMatchObject({ exitCode: 0 });
    expect(await records()).toBe('configured: Team notes\nconfigured: Renamed\n');
  });

  test('without the authorization, the task to kickweb1 is refused (exit code 32) and configure-module fails before starting anything', async () => {
    expect(await run(podapp, 'create-module', { images: [], volumes: {} })).toMatchObject({ exitCode: 0 });
    const r = await run(podapp, 'configure-module', { title: 'Team notes', kickweb: 'kickweb1' });
    // agent.assert_exp: exit code 2, the message naming the refused task on stderr (the task error).
    expect(r.exitCode).toBe(2);
    expect(r.error).toContain('get-configuration of module/kickweb1 failed: exit code 32 module_permission_denied');
    expect(stateEnvironment(podapp)['KICKWEB_GREETING']).toBeUndefined();
    expect(systemctlCalls()).toEqual([]);
  });

  test('configure-module refuses a title with a newline (schema) and a blank one (the Python step), changing nothing', async () => {
    expect(await run(podapp, 'configure-module', { title: 'a\nPODAPP_TITLE=b', kickweb: 'kickweb1' })).toMatchObject({ exitCode: 10, status: 'validation-failed' });
    const blank = await run(podapp, 'configure-module', { title: '  ', kickweb: 'kickweb1' });
    expect(blank).toMatchObject({ exitCode: 2, status: 'validation-failed' });
    expect(JSON.parse(blank.output)).toEqual([{ field: 'title', parameter: 'title', value: '  ', error: 'title_blank' }]);
    expect(stateEnvironment(podapp)['PODAPP_TITLE']).toBeUndefined();
    expect(systemctlCalls()).toEqual([]);
  });

  test('the units run a pod and two containers from the service images, with the volume and the instance environment', async () => {
    const unit = (name: string) => readFileSync(path.join(podapp.installDir, 'systemd', 'user', name), 'utf8');
    expect(unit('podapp.service')).toMatch(/podman pod create[^]*--publish 127\.0\.0\.1:\$\{TCP_PORT\}:8080/);
    expect(unit('podapp-db.service')).toContain('--pod-id-file=%t/podapp.pod-id');
    expect(unit('podapp-db.service')).toContain('--volume=podapp-db-data:/data');
    expect(unit('podapp-db.service')).toContain('${PODAPP_DB_IMAGE}');
    expect(unit('podapp-web.service')).toContain('--env-file=%E/state/environment');
    expect(unit('podapp-web.service')).toContain('${PODAPP_WEB_IMAGE}');
    // The names the units use are the service images' variables NS8 derives from the label.
    const images = (await runner.run(['podman', 'image', 'inspect', '--format', '{{index .Labels "org.nethserver.images"}}', ref('podapp', '1.0.0')])).stdout.trim();
    expect(images.split(' ')).toEqual([ref('podapp-web', '1.0.0'), ref('podapp-db', '1.0.0')]);
  });

  test("update-module (ns8ctl's base action) runs 1.1.0's update-module.d in order with NS8's PREV_ variables: the migration notes the database image change in the volume, then the services are try-restarted", async () => {
    await grantFromLabel(ref('podapp', '1.0.0'));
    expect(await run(podapp, 'create-module', { images: [], volumes: {} })).toMatchObject({ exitCode: 0 });
    expect(await run(podapp, 'configure-module', { title: 'Team notes', kickweb: 'kickweb1' })).toMatchObject({ exitCode: 0 });
    rmSync(path.join(root, 'systemctl.log'), { force: true });
    await extractImageroot(podapp, ref('podapp', '1.1.0'));
    // What the node agent writes before it sends update-module: the new images and the PREV_ values.
    const before = readFileSync(path.join(podapp.stateDir, 'environment'), 'utf8');
    writeFileSync(
      path.join(podapp.stateDir, 'environment'),
      before
        .replace(`IMAGE_URL=${ref('podapp', '1.0.0')}`, `IMAGE_URL=${ref('podapp', '1.1.0')}\nPREV_IMAGE_URL=${ref('podapp', '1.0.0')}`)
        .replace(`PODAPP_DB_IMAGE=${ref('podapp-db', '1.0.0')}`, `PODAPP_DB_IMAGE=${ref('podapp-db', '1.1.0')}\nPREV_PODAPP_DB_IMAGE=${ref('podapp-db', '1.0.0')}\nPREV_PODAPP_WEB_IMAGE=${ref('podapp-web', '1.0.0')}`),
    );
    const r = await run(podapp, 'update-module', { module_url: ref('podapp', '1.1.0'), force: false });
    expect(r).toMatchObject({ exitCode: 0, status: 'completed' });
    expect(r.error).not.toContain('failed with exit code');
    expect(stateEnvironment(podapp)['PODAPP_DB_MIGRATED_FROM']).toBe(ref('podapp-db', '1.0.0'));
    expect(await acl.admin.hget('module/podapp1/environment', 'PODAPP_DB_MIGRATED_FROM')).toBe(ref('podapp-db', '1.0.0'));
    expect(await records()).toBe(`configured: Team notes\nmigrated: ${ref('podapp-db', '1.0.0')} -> ${ref('podapp-db', '1.1.0')}\n`);
    // 20migrate_db ran before 80restart_services (name order).
    expect(systemctlCalls()).toEqual(['--user try-restart podapp.service podapp-db.service podapp-web.service']);
  });

  test('update-module with no database image change (PREV_PODAPP_DB_IMAGE equal, or NS8\'s None) writes no migration record', async () => {
    expect(await run(podapp, 'create-module', { images: [], volumes: {} })).toMatchObject({ exitCode: 0 });
    await extractImageroot(podapp, ref('podapp', '1.1.0'));
    const before = readFileSync(path.join(podapp.stateDir, 'environment'), 'utf8');
    writeFileSync(path.join(podapp.stateDir, 'environment'), `${before}PREV_PODAPP_DB_IMAGE=None\n`);
    expect(await run(podapp, 'update-module', {})).toMatchObject({ exitCode: 0, status: 'completed' });
    writeFileSync(path.join(podapp.stateDir, 'environment'), `${before}PREV_PODAPP_DB_IMAGE=${ref('podapp-db', '1.0.0')}\n`);
    expect(await run(podapp, 'update-module', {})).toMatchObject({ exitCode: 0, status: 'completed' });
    expect(stateEnvironment(podapp)['PODAPP_DB_MIGRATED_FROM']).toBeUndefined();
    expect(await records()).toBe('');
  });
});
