/**
 * examples/ns8-compat/kickweb, a module written in ns8-kickstart's layout (Python steps that
 * `import agent`, a bash step writing agent commands on AGENT_COMFD, redis-exec in create-module,
 * a service started by configure-module, update-module.d scripts): built into real images with
 * examples/modules/build-images.sh, its imageroot extracted from the image as NS8's extract-image
 * does, and its actions run by ns8ctl's module agent (with the base actions) under NS8's module
 * ACL on a real redis-server, with ns8ctl's NS8 runtime.
 *
 * This host has no systemd: `systemctl` on the steps' PATH records what the module asked
 * (enable, restart); the unit itself runs in the sandbox tests.
 */
import { compatStepEnv, extractImageroot as extractCompatImageroot, prepareCompatHost, readStateEnvironment, systemctlCalls as recordedSystemctlCalls } from '../support/ns8-compat.js';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { runAgent, type AgentHandle } from '../../src/agent/agent.js';
import { createBaseActions } from '../../src/agent/base-actions.js';
import { runTask } from '../../src/agent/task-client.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { applyModuleAcl, generatePassword } from '../../src/node-agent/redis-acl.js';
import { useNs8AclRedis } from '../support/ns8-acl-redis.js';
import { withImageBuildLock } from '../support/image-build-lock.js';

const REGISTRY = 'ns8ctl-compat-test.invalid';
const IMAGE = (tag: string): string => `${REGISTRY}/ns8ctl-compat/kickweb:${tag}`;
const HTTPD_IMAGE = `${REGISTRY}/ns8ctl-compat/kickweb-httpd:1.0.0`;
const ID = 'kickweb1';
const runner = new ProcessRunner();
const acl = useNs8AclRedis();
const password = generatePassword();

let root: string;
let installDir: string;
let stateDir: string;
let agent: AgentHandle | undefined;

const extractImageroot = (image: string): Promise<void> => extractCompatImageroot(runner, image, installDir, root);
const stepEnv = (): Record<string, string> => compatStepEnv(root, acl.server.port, { id: ID, installDir, stateDir, password });
const stateEnvironment = (): Record<string, string> => readStateEnvironment(stateDir);
const systemctlCalls = (): string[] => recordedSystemctlCalls(root);

beforeAll(async () => {
  root = await prepareCompatHost({ only: 'kickweb,kickweb-httpd', registry: REGISTRY, prefix: 'ns8-compat-' });
}, 600_000);

afterAll(async () => {
  rmSync(root, { recursive: true, force: true });
  await withImageBuildLock(() => runner.run(['podman', 'rmi', '-f', IMAGE('1.0.0'), IMAGE('1.1.0'), HTTPD_IMAGE], { allowFailure: true }));
});

beforeEach(async () => {
  await acl.admin.flushall();
  await applyModuleAcl(acl.admin, ID, password);
  installDir = path.join(root, 'home', '.config');
  stateDir = path.join(installDir, 'state');
  rmSync(path.join(root, 'home'), { recursive: true, force: true });
  rmSync(path.join(root, 'systemctl.log'), { force: true });
  mkdirSync(stateDir, { recursive: true });
  // What the node writes before create-module: the instance environment.
  writeFileSync(path.join(stateDir, 'environment'), `MODULE_ID=${ID}\nNODE_ID=1\nIMAGE_URL=${IMAGE('1.0.0')}\nTCP_PORT=20001\n`);
  await extractImageroot(IMAGE('1.0.0'));
  agent = runAgent(
    { agentId: `module/${ID}`, installDir, stateDir, actionsDirs: [path.join(installDir, 'actions')], builtins: createBaseActions(), pollSeconds: 1, env: stepEnv(), log: () => undefined },
    { redis: acl.connect(`module/${ID}`, password, `module/${ID}`), runner },
  );
  await agent.start();
}, 120_000);

afterEach(async () => {
  await agent?.stop();
  agent = undefined;
});

const run = (action: string, data: unknown = {}) => runTask(acl.admin, `module/${ID}`, action, { data, timeoutMs: 120_000 });

describe('an NS8 module in the ns8-kickstart layout, run by ns8ctl', () => {
  test("create-module runs the base steps and the module's Python and redis-exec steps", async () => {
    const r = await run('create-module', { images: [], volumes: {} });
    expect(r).toMatchObject({ exitCode: 0, status: 'completed' });
    expect(stateEnvironment()).toMatchObject({ GREETING: 'Hello from kickweb', MODULE_ID: ID });
    expect((await acl.admin.smembers(`module/${ID}/roles/greetadm`)).sort()).toEqual(['configure-module', 'get-*']);
    expect(await acl.admin.smembers(`module/${ID}/roles/selfadm`)).toEqual(['configure-module']);
  });

  test('configure-module stores the configuration (Python set_env, bash AGENT_COMFD), starts the service as kickstart does; get-configuration returns it', async () => {
    const r = await run('configure-module', { greeting: 'Hi from the manifest' });
    expect(r).toMatchObject({ exitCode: 0, status: 'completed' });
    expect(stateEnvironment()).toMatchObject({ GREETING: 'Hi from the manifest', LAST_CONFIGURE_TASK: r.taskId });
    expect(await acl.admin.hget(`module/${ID}/environment`, 'GREETING')).toBe('Hi from the manifest');
    expect(systemctlCalls()).toEqual(['--user enable kickweb.service', '--user restart kickweb.service']);
    const got = await run('get-configuration');
    expect(got).toMatchObject({ exitCode: 0 });
    expect(JSON.parse(got.output)).toEqual({ greeting: 'Hi from the manifest' });
  });

  test('configure-module refuses a greeting with a newline (schema) and a blank one (the Python step), changing nothing', async () => {
    const schema = await run('configure-module', { greeting: 'a\nGREETING=b' });
    expect(schema).toMatchObject({ exitCode: 10, status: 'validation-failed' });
    // set_status("validation-failed") then exit 2, as NS8 modules do: the step's own code stays.
    const blank = await run('configure-module', { greeting: '   ' });
    expect(blank).toMatchObject({ exitCode: 2, status: 'validation-failed' });
    expect(JSON.parse(blank.output)).toEqual([{ field: 'greeting', parameter: 'greeting', value: '   ', error: 'greeting_blank' }]);
    expect(stateEnvironment()['GREETING']).toBeUndefined();
    expect(systemctlCalls()).toEqual([]);
  });

  test("the unit's ExecStartPre command (bin/write-page, run through runagent) renders the page from the environment", async () => {
    await run('configure-module', { greeting: 'Fish & <chips>' });
    const env = { ...stepEnv(), ...stateEnvironment() };
    await execa(path.join(installDir, 'bin', 'write-page'), [], { env, extendEnv: false, cwd: stateDir });
    expect(readFileSync(path.join(stateDir, 'www', 'index.html'), 'utf8')).toBe('<h1>Fish &amp; &lt;chips&gt;</h1>\n');
    const unit = readFileSync(path.join(installDir, 'systemd', 'user', 'kickweb.service'), 'utf8');
    expect(unit).toContain('ExecStartPre=runagent write-page\n');
    expect(unit).toContain('${KICKWEB_HTTPD_IMAGE}');
  });

  test("update-module (ns8ctl's base action) runs 1.1.0's update-module.d scripts in order with NS8's PREV_IMAGE_URL", async () => {
    await extractImageroot(IMAGE('1.1.0'));
    const before = readFileSync(path.join(stateDir, 'environment'), 'utf8');
    // What the node agent writes before it sends update-module: the new image and the PREV_ values.
    writeFileSync(path.join(stateDir, 'environment'), before.replace(`IMAGE_URL=${IMAGE('1.0.0')}`, `IMAGE_URL=${IMAGE('1.1.0')}\nPREV_IMAGE_URL=${IMAGE('1.0.0')}`));
    const r = await run('update-module', { module_url: IMAGE('1.1.0'), force: false });
    expect(r).toMatchObject({ exitCode: 0, status: 'completed' });
    // 20migrate (Python set_env) ran before 80restart_services (systemctl), in name order.
    expect(stateEnvironment()['MIGRATED_FROM']).toBe(IMAGE('1.0.0'));
    expect(await acl.admin.hget(`module/${ID}/environment`, 'MIGRATED_FROM')).toBe(IMAGE('1.0.0'));
    expect(systemctlCalls()).toEqual(['--user try-restart kickweb.service']);
  });

  test('a failing update-module.d script fails update-module with its exit code and the later ones do not run, as NS8 (set -e)', async () => {
    await extractImageroot(IMAGE('1.1.0'));
    writeFileSync(path.join(installDir, 'update-module.d', '10broken'), '#!/bin/sh\necho "set-progress 50" >&${AGENT_COMFD:-2}\nexit 3\n', { mode: 0o755 });
    const r = await run('update-module', { module_url: IMAGE('1.0.0'), force: false });
    expect(r).toMatchObject({ exitCode: 3, status: 'aborted' });
    expect(r.error).toContain('update-module.d/10broken failed with exit code 3; the later scripts do not run');
    // 20migrate and 80restart_services came after it: not run.
    expect(systemctlCalls()).toEqual([]);
  });
});
