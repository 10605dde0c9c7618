/**
 * The node agent against the real host: real redis-server, real podman (rootless as a useradd'ed
 * user, rootfull as root), a real registry on loopback with the example module images, real
 * useradd/userdel. systemd is not PID 1 on these machines: the agent must say so (Degraded) and do
 * everything else; real systemd is exercised in a sandbox node.
 */
import { promises as fs, existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import { ProcessRunner, type CommandRunner } from '../../src/host/runner.js';
import { createNodeAgentDeps, type NodeAgentDeps, type NodeAgentOptions } from '../../src/node-agent/deps.js';
import { imageCacheDir } from '../../src/node-agent/host/podman.js';
import { reconcileNodeOnce, type InstanceResult } from '../../src/node-agent/reconcile.js';
import { readModuleStatus } from '../../src/node-agent/status.js';
import { parseEnvironment } from '../../src/node-agent/environment-file.js';
import { keys, channels } from '../../src/state/keys.js';
import type { ExampleImages } from '../support/example-images.js';
import { removeTestUsers } from '../support/host-podman.js';
import type { TestRedis } from '../support/redis-server.js';
import type { TestRegistry } from '../support/registry.js';
import { RecordingRunner } from '../support/recording-runner.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import { putDesiredModule } from '../support/desired-module.js';
import { waitFor } from '../support/wait-for.js';
import { startNodeAgentTestHost, stopNodeAgentTestHost } from '../support/node-agent-host.js';


const host = new ProcessRunner();
const suffix = String(process.pid % 10000);
let redis: TestRedis;
let admin: Redis;
let registry: TestRegistry;
let images: ExampleImages;
let root: string;
let runner: RecordingRunner;
let deps: NodeAgentDeps;
let opts: NodeAgentOptions;
const users: string[] = [];
const events: { channel: string; message: string }[] = [];
let sub: Redis;

async function putModule(id: string, spec: Record<string, unknown>, generation = 1): Promise<void> {
  await putDesiredModule(admin, id, { node: 1, ...spec }, { generation, uuid: { ifAbsent: `00000000-0000-4000-8000-${id.padStart(12, '0').slice(-12)}` }, node: 1 });
  if (id.startsWith('webapp') || id.startsWith('bad')) users.push(id);
}

async function deleteModule(id: string, removalPolicy: 'Preserve' | 'Delete' = 'Preserve'): Promise<void> {
  await admin.hset(keys.desired('Module', id), 'deleting', JSON.stringify({ removalPolicy }));
}

async function reconcile(): Promise<Map<string, InstanceResult>> {
  const res = await reconcileNodeOnce(opts, deps);
  return new Map(res.instances.map((i) => [i.id, i]));
}

function homeOf(id: string): string {
  return path.join(root, 'home', id);
}

async function userExists(id: string): Promise<boolean> {
  return (await fs.readFile('/etc/passwd', 'utf8')).split('\n').some((l) => l.startsWith(`${id}:`));
}

beforeAll(async () => {
  ({ redis, registry, images, admin, root } = await startNodeAgentTestHost('ns8ctl-node-agent-'));
  sub = redis.client();
  await sub.subscribe(channels.moduleAdded, channels.moduleRemoved);
  sub.on('message', (channel: string, message: string) => events.push({ channel, message }));
  runner = new RecordingRunner();
  opts = { node: 1, concurrency: 4, insecureRegistries: [registry.address] };
  deps = createNodeAgentDeps(opts, {
    redis: admin,
    runner,
    layout: tempHostLayout(root, { uiBase: path.join(root, 'ui', 'apps') }),
    log: () => undefined,
    delay: async () => undefined,
  });
}, 300_000);

afterAll(async () => {
  await removeTestUsers(users);
  sub?.disconnect();
  await stopNodeAgentTestHost({ redis, registry, root });
}, 120_000);

/** Digests (hex) of the module images in the node cache. */
const cachedDigests = async (): Promise<string[]> => (await fs.readdir(imageCacheDir(deps.layout)).catch(() => [] as string[])).filter((n) => /^[0-9a-f]{64}$/.test(n));

describe('a rootless instance on a host without systemd', () => {
  const id = `webapp${suffix}1`;

  test('is created: user, image, imageroot, ui, service image, ports, environment, credentials, flags, event', async () => {
    await putModule(id, { image: images.webapp['1.0.0'] });
    const r = (await reconcile()).get(id)!;
    expect(r.error?.message).toBeUndefined();
    expect(r.outcome).toBe('converged');
    expect(await userExists(id)).toBe(true);
    const home = homeOf(id);
    const uid = statSync(home).uid;
    expect(statSync(home).mode & 0o777).toBe(0o700);
    expect((await fs.readFile('/etc/subuid', 'utf8')).split('\n').some((l) => l.startsWith(`${id}:`))).toBe(true);
    // imageroot extracted into ~/.config, owned by the user, with NS8's file list.
    const unit = path.join(home, '.config', 'systemd', 'user', 'webapp.service');
    expect(statSync(unit).uid).toBe(uid);
    const list = (await fs.readFile(path.join(home, '.config', '.imageroot.lst'), 'utf8')).split('\n');
    expect(list).toEqual(expect.arrayContaining(['systemd/user/webapp.service', 'bin/old-tool', 'actions/configure-module/20configure']));
    // ui extracted into the UI base dir.
    expect(existsSync(path.join(root, 'ui', 'apps', id, 'index.html'))).toBe(true);
    // Environment: sorted, owned by the user, mirrored into Redis.
    const envFile = path.join(home, '.config', 'state', 'environment');
    const text = await fs.readFile(envFile, 'utf8');
    const lines = text.trim().split('\n');
    expect(lines).toEqual([...lines].sort());
    expect(statSync(envFile).uid).toBe(uid);
    const env = parseEnvironment(text);
    expect(env).toMatchObject({
      MODULE_ID: id,
      NODE_ID: '1',
      IMAGE_URL: images.webapp['1.0.0'],
      WEBAPP_HTTPD_IMAGE: images.webappHttpd['1.0.0'],
      TCP_PORT: expect.stringMatching(/^2\d{4}$/),
      TCP_PORTS: env.TCP_PORT,
      IMAGE_DIGEST: expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
      IMAGE_ID: expect.stringMatching(/^[0-9a-f]{64}$/),
      IMAGE_REPODIGEST: `${registry.address}/ns8ctl-examples/webapp@${env.IMAGE_DIGEST}`,
      IMAGE_REOPODIGEST: env.IMAGE_REPODIGEST,
      MODULE_UUID: await admin.hget(keys.moduleUuid(), id),
    });
    expect(env.TCP_PORTS_RANGE).toBeUndefined();
    expect(await admin.hgetall(keys.moduleEnvironment(id))).toEqual(env);
    expect(await admin.hgetall(keys.nodePorts(1))).toMatchObject({ [`${id}/tcp`]: `${env.TCP_PORT}-${env.TCP_PORT}` });
    expect(await admin.hget(keys.tcpPortsDemand(), id)).toBe('1');
    // Service image pulled into the user's own storage; the module image only into the node cache,
    // under the registry's digest, with podman's image id (the config digest).
    const imgs = await host.run(['runuser', '-u', id, '--', 'env', `HOME=${home}`, 'podman', 'images', '--format', '{{.Repository}}:{{.Tag}}'], { cwd: home });
    expect(imgs.stdout).toContain(images.webappHttpd['1.0.0']);
    expect(imgs.stdout).not.toContain(images.webapp['1.0.0']);
    const remote = JSON.parse((await host.run(['skopeo', 'inspect', '--tls-verify=false', `docker://${images.webapp['1.0.0']}`])).stdout) as { Digest: string };
    expect(env.IMAGE_DIGEST).toBe(remote.Digest);
    const entry = path.join(imageCacheDir(deps.layout), env.IMAGE_DIGEST!.slice(7));
    expect((await fs.readFile(path.join(entry, 'complete'), 'utf8')).trim()).toBe(env.IMAGE_DIGEST);
    expect(JSON.parse(await fs.readFile(path.join(entry, 'meta.json'), 'utf8'))).toMatchObject({ id: env.IMAGE_ID, digest: env.IMAGE_DIGEST });
    expect(statSync(imageCacheDir(deps.layout)).mode & 0o777).toBe(0o700);
    // Redis credentials: agent.env 0600, and they let the module write only its own keys.
    const agentEnvFile = path.join(home, '.config', 'state', 'agent.env');
    expect(statSync(agentEnvFile).mode & 0o777).toBe(0o600);
    expect(statSync(agentEnvFile).uid).toBe(uid);
    const agentEnv = parseEnvironment(await fs.readFile(agentEnvFile, 'utf8'));
    expect(agentEnv.REDIS_USER).toBe(`module/${id}`);
    const m = new Redis(redis.url, { username: agentEnv.REDIS_USER, password: agentEnv.REDIS_PASSWORD, enableReadyCheck: false, maxRetriesPerRequest: 1 });
    try {
      await m.set(`module/${id}/x`, '1');
      await expect(m.set('module/other1/x', '1')).rejects.toThrow(/NOPERM/);
      await expect(m.set('cluster/x', '1')).rejects.toThrow(/NOPERM/);
    } finally {
      m.disconnect();
    }
    expect((await admin.smembers(keys.moduleFlags(id))).sort()).toEqual(['no_data_backup', 'rootless']);
    expect(await admin.hget(keys.desired('Module', id), 'finalizers')).toBe('node-agent');
    // module-added published once, with NS8's payload (the subscriber gets it asynchronously: wait for it).
    await waitFor('module-added received', () => events.some((e) => e.channel === channels.moduleAdded));
    expect(events.filter((e) => e.channel === channels.moduleAdded).map((e) => JSON.parse(e.message))).toContainEqual({ module: id, node: 1 });
    // Status: host converged, but without systemd the instance is Degraded and says why.
    const st = await readModuleStatus(admin, id);
    expect(st).toMatchObject({ observedGeneration: 1, imageUrl: images.webapp['1.0.0'], imageDigest: env.IMAGE_DIGEST, ports: { tcp: `${env.TCP_PORT}-${env.TCP_PORT}` } });
    expect(st!.conditions.find((c) => c.type === 'Degraded')).toMatchObject({ status: 'True', reason: 'SystemdUnavailable', message: expect.stringContaining('systemd not running on this host') });
    expect(st!.conditions.find((c) => c.type === 'Ready')).toMatchObject({ status: 'False', reason: 'SystemdUnavailable' });
    expect(st!.units).toEqual([{ name: 'webapp.service', enabled: false, active: null }]);
  }, 180_000);

  test('an unchanged instance runs no command at all and writes no status', async () => {
    const before = runner.all.length;
    const statusBefore = await admin.hgetall(keys.moduleStatus(id));
    const r = (await reconcile()).get(id)!;
    expect(r.outcome).toBe('unchanged');
    expect(runner.all.slice(before)).toEqual([]);
    expect(await admin.hgetall(keys.moduleStatus(id))).toEqual(statusBefore);
  });

  test('drift is repaired and reported: edited environment value, deleted unit file, image removed from the node cache', async () => {
    const envFile = path.join(homeOf(id), '.config', 'state', 'environment');
    const env = parseEnvironment(await fs.readFile(envFile, 'utf8'));
    await fs.writeFile(envFile, (await fs.readFile(envFile, 'utf8')).replace(`TCP_PORT=${env.TCP_PORT}\n`, 'TCP_PORT=1\n') + 'MY_OWN=kept\n');
    await fs.rm(path.join(homeOf(id), '.config', 'systemd', 'user', 'webapp.service'));
    await fs.rm(path.join(imageCacheDir(deps.layout), env.IMAGE_DIGEST!.slice(7)), { recursive: true });
    const before = runner.all.length;
    const r = (await reconcile()).get(id)!;
    expect(r.error?.message).toBeUndefined();
    expect(r.drift).toEqual(expect.arrayContaining([`image ${images.webapp['1.0.0']} removed`, 'environment TCP_PORT edited (was "1")']));
    const again = parseEnvironment(await fs.readFile(envFile, 'utf8'));
    expect(again.TCP_PORT).toBe(env.TCP_PORT);
    expect(again.MY_OWN).toBe('kept');
    expect(existsSync(path.join(homeOf(id), '.config', 'systemd', 'user', 'webapp.service'))).toBe(true);
    expect(runner.all.slice(before).some((c) => c.argv[0] === 'skopeo' && c.argv.includes('copy'))).toBe(true);
    expect((await readModuleStatus(admin, id))!.drift).toEqual(r.drift);
    // The deleted unit file alone is drift too.
    await fs.rm(path.join(homeOf(id), '.config', 'systemd', 'user', 'webapp.service'));
    const r2 = (await reconcile()).get(id)!;
    expect(r2.drift).toEqual(['files of imageroot/ missing: systemd/user/webapp.service']);
    expect((await reconcile()).get(id)!.outcome).toBe('unchanged');
    // So is a file of the image edited in the install dir: copied again from the node cache.
    const tool = path.join(homeOf(id), '.config', 'bin', 'webapp-info');
    const original = await fs.readFile(tool, 'utf8');
    await fs.appendFile(tool, 'echo tampered\n');
    const before3 = runner.all.length;
    const r3 = (await reconcile()).get(id)!;
    expect(r3.drift).toEqual(['files of imageroot/ missing or edited: bin/webapp-info (edited)']);
    expect(await fs.readFile(tool, 'utf8')).toBe(original);
    expect(runner.all.slice(before3).some((c) => c.argv[0] === 'skopeo' || c.argv.includes('pull'))).toBe(false);
    expect((await reconcile()).get(id)!.outcome).toBe('unchanged');
  }, 120_000);

  test('a removed user is recreated (with another uid) and gets its files back', async () => {
    await host.run(['pkill', '-KILL', '-u', id], { allowFailure: true });
    await new Promise((r) => setTimeout(r, 200));
    const oldUid = statSync(homeOf(id)).uid;
    await host.run(['userdel', '-f', id]);
    // Another user takes the freed uid, so the instance's user comes back with a different one
    // (its podman database still names the old uid's runtime dir: the agent must cope).
    const thief = `uidthief${suffix}`;
    users.push(thief);
    await host.run(['useradd', '-M', '-u', String(oldUid), '-s', '/sbin/nologin', thief]);
    const r = (await reconcile()).get(id)!;
    expect(r.error?.message).toBeUndefined();
    expect(r.drift).toContain(`user ${id} removed`);
    const uid = Number((await host.run(['id', '-u', id])).stdout.trim());
    expect(uid).not.toBe(oldUid);
    expect(statSync(path.join(homeOf(id), '.config', 'state', 'environment')).uid).toBe(uid);
    expect(statSync(path.join(homeOf(id), '.config', 'state', 'agent.env')).uid).toBe(uid);
    expect((await reconcile()).get(id)!.outcome).toBe('unchanged');
  }, 120_000);

  test('a new image version re-extracts: files the new image lacks are removed', async () => {
    await putModule(id, { image: images.webapp['1.1.0'] }, 2);
    const r = (await reconcile()).get(id)!;
    expect(r.error?.message).toBeUndefined();
    const cfg = path.join(homeOf(id), '.config');
    expect(existsSync(path.join(cfg, 'bin', 'old-tool'))).toBe(false);
    expect(existsSync(path.join(cfg, 'bin', 'new-tool'))).toBe(true);
    expect(parseEnvironment(await fs.readFile(path.join(cfg, 'state', 'environment'), 'utf8')).IMAGE_URL).toBe(images.webapp['1.1.0']);
    expect((await readModuleStatus(admin, id))!.observedGeneration).toBe(2);
    // The node cache keeps only what an instance uses: 1.0.0 went once the update was done.
    const env = parseEnvironment(await fs.readFile(path.join(cfg, 'state', 'environment'), 'utf8'));
    expect(await cachedDigests()).toEqual([env.IMAGE_DIGEST!.slice(7)]);
    expect((await reconcile()).get(id)!.outcome).toBe('unchanged');
  }, 120_000);

  test('removal keeps the data by default and cleans everything else', async () => {
    const env = parseEnvironment(await fs.readFile(path.join(homeOf(id), '.config', 'state', 'environment'), 'utf8'));
    const uid = statSync(homeOf(id)).uid;
    await admin.hset(keys.moduleConfiguration(id), { appliedHash: 'h', instanceUuid: (await admin.hget(keys.moduleUuid(), id)) ?? '' });
    await deleteModule(id);
    const r = (await reconcile()).get(id)!;
    expect(r.error?.message).toBeUndefined();
    expect(r.outcome).toBe('removed');
    expect(await userExists(id)).toBe(false);
    expect(existsSync(`/tmp/podman-run-${uid}`)).toBe(false);
    expect(existsSync(path.join(homeOf(id), '.config', 'state', 'environment'))).toBe(true);
    expect(existsSync(path.join(root, 'ui', 'apps', id))).toBe(false);
    expect((await admin.hgetall(keys.nodePorts(1)))[`${id}/tcp`]).toBeUndefined();
    expect((await admin.call('ACL', 'LIST')) as string[]).not.toContainEqual(expect.stringContaining(`module/${id} `));
    expect(await admin.keys(`module/${id}/*`)).toEqual([]);
    expect(await admin.exists(keys.desired('Module', id), keys.moduleStatus(id), keys.moduleConfiguration(id))).toBe(0);
    expect(await admin.hget(keys.moduleNode(), id)).toBeNull();
    expect(await admin.hget(keys.tcpPortsDemand(), id)).toBeNull();
    expect(existsSync(path.join(root, 'agent', 'instances', `${id}.json`))).toBe(false);
    expect(await cachedDigests()).toEqual([]);
    await waitFor('module-removed received', () => events.some((e) => e.channel === channels.moduleRemoved));
    expect(events.filter((e) => e.channel === channels.moduleRemoved).map((e) => JSON.parse(e.message))).toContainEqual({ module: id, node: 1 });
    expect(env.TCP_PORT).toBeDefined();
    expect((await reconcile()).get(id)).toBeUndefined();
  }, 120_000);
});

describe('several instances', () => {
  test('a broken registry or missing image degrades only that instance; removal with Delete erases data and volume dirs', async () => {
    const good = `webapp${suffix}2`;
    const down = `bad${suffix}1`;
    const missing = `bad${suffix}2`;
    const disk = path.join(root, 'disk1');
    await fs.mkdir(disk);
    await putModule(good, { image: images.webapp['1.0.0'], removalPolicy: 'Delete', volumes: { data: disk } });
    await putModule(down, { image: '127.0.0.1:1/ns8ctl-examples/webapp:1.0.0' });
    await putModule(missing, { image: `${registry.address}/ns8ctl-examples/webapp:9.9.9` });
    const res = await reconcile();
    expect(res.get(good)!.error?.message).toBeUndefined();
    expect(statSync(path.join(disk, good)).uid).toBe(statSync(homeOf(good)).uid);
    expect(statSync(path.join(disk, good)).mode & 0o777).toBe(0o700);
    expect(res.get(down)).toMatchObject({ outcome: 'failed', retry: true });
    expect((await readModuleStatus(admin, down))!.conditions.find((c) => c.type === 'Degraded')).toMatchObject({ status: 'True', reason: 'RegistryUnreachable' });
    expect((await readModuleStatus(admin, missing))!.conditions.find((c) => c.type === 'Degraded')).toMatchObject({ status: 'True', reason: 'ImageNotFound' });
    // Nothing was created for the failing ones: no user.
    expect(await userExists(down)).toBe(false);
    for (const id of [down, missing]) {
      await deleteModule(id);
    }
    await deleteModule(good, 'Delete');
    const res2 = await reconcile();
    expect([...res2.values()].map((r) => [r.id, r.outcome, r.error?.message])).toEqual(expect.arrayContaining([[good, 'removed', undefined], [down, 'removed', undefined], [missing, 'removed', undefined]]));
    expect(existsSync(homeOf(good))).toBe(false);
    expect(existsSync(path.join(disk, good))).toBe(false);
    expect(await admin.scard(keys.desiredIndex('Module'))).toBe(0);
  }, 180_000);
});

describe('instances of one image', () => {
  test('converging together, they fetch the module image once; each gets its own copy of the imageroot, owned by its user', async () => {
    const ids = [`webapp${suffix}6`, `webapp${suffix}7`, `webapp${suffix}8`];
    for (const id of ids) await putModule(id, { image: images.webapp['1.1.0'], removalPolicy: 'Delete' });
    const before = runner.all.length;
    const res = await reconcile();
    for (const id of ids) expect(res.get(id)!.error?.message).toBeUndefined();
    // Registry fetches by root: the module image into its cache; its service image (if no earlier
    // test left it in the service-image cache) into that one.
    const fetches = runner.all.slice(before).filter((c) => c.argv[0] === 'skopeo' && c.argv[1] === 'copy');
    expect(fetches.filter((c) => c.argv.some((a) => a.startsWith(`dir:${imageCacheDir(deps.layout)}/`)))).toHaveLength(1);
    expect(fetches.filter((c) => c.argv.includes(`docker://${images.webappHttpd['1.0.0']}`)).length).toBeLessThanOrEqual(1);
    for (const id of ids) {
      const tool = path.join(homeOf(id), '.config', 'bin', 'new-tool');
      expect(statSync(tool).uid).toBe(statSync(homeOf(id)).uid);
    }
    expect(await cachedDigests()).toHaveLength(1);
    for (const id of ids) await deleteModule(id, 'Delete');
    const removal = await reconcile();
    expect(ids.map((id) => removal.get(id)?.outcome)).toEqual(['removed', 'removed', 'removed']);
    expect(await cachedDigests()).toEqual([]);
  }, 180_000);
});

describe('a rootfull instance', () => {
  const id = `rootfull-demo${suffix}1`;
  test('is installed under the rootfull base with root-owned files, two ports, system unit files; removal cleans it', async () => {
    await putModule(id, { image: images.rootfullDemo['1.0.0'] });
    const r = (await reconcile()).get(id)!;
    expect(r.error?.message).toBeUndefined();
    const dir = path.join(root, 'nethserver', id);
    expect(statSync(path.join(dir, 'bin', 'start-demo')).uid).toBe(0);
    const env = parseEnvironment(await fs.readFile(path.join(dir, 'state', 'environment'), 'utf8'));
    expect(env.TCP_PORTS_RANGE).toMatch(/^\d+-\d+$/);
    expect(env.TCP_PORTS!.split(',')).toHaveLength(2);
    expect(statSync(path.join(dir, 'state', 'agent.env')).mode & 0o777).toBe(0o600);
    expect((await admin.smembers(keys.moduleFlags(id))).sort()).toEqual(['rootfull']);
    // Without systemd the unit files are not installed (nothing could run them) and status says why.
    expect((await readModuleStatus(admin, id))!.conditions.find((c) => c.type === 'Degraded')?.reason).toBe('SystemdUnavailable');
    expect((await reconcile()).get(id)!.outcome).toBe('unchanged');
    await deleteModule(id, 'Delete');
    expect((await reconcile()).get(id)!.outcome).toBe('removed');
    expect(existsSync(dir)).toBe(false);
    expect(await admin.exists(keys.desired('Module', id))).toBe(0);
    const imgs = await host.run(['podman', 'images', '--format', '{{.Repository}}:{{.Tag}}']);
    expect(imgs.stdout).not.toContain(images.rootfullDemo['1.0.0']);
    expect(imgs.stdout).not.toContain(images.webappHttpd['1.0.0']);
    expect((await host.run(['podman', 'ps', '-a', '--format', '{{.Names}}'])).stdout).not.toContain(`ns8ctl-extract-${id}`);
  }, 180_000);
});

describe('a node without skopeo', () => {
  test('pulls the image as root to read its labels, fills the node cache with podman, and drops that root copy', async () => {
    const id = `webapp${suffix}5`;
    const real = new ProcessRunner();
    const noSkopeo: CommandRunner = { history: real.history, run: (argv, o) => real.run(argv[0] === 'skopeo' ? ['ns8ctl-test-no-such-skopeo', ...argv.slice(1)] : argv, o) };
    const d2 = createNodeAgentDeps(opts, { redis: admin, runner: noSkopeo, layout: deps.layout, log: () => undefined, delay: async () => undefined });
    await putModule(id, { image: images.webapp['1.1.0'] });
    const r = (await reconcileNodeOnce(opts, d2)).instances.find((i) => i.id === id)!;
    expect(r.error?.message).toBeUndefined();
    expect(real.history.some((c) => c.argv[0] === 'podman' && c.argv.includes('pull') && c.argv.includes(images.webapp['1.1.0']))).toBe(true);
    const rootImages = await host.run(['podman', 'images', '--format', '{{.Repository}}:{{.Tag}}']);
    expect(rootImages.stdout).not.toContain(images.webapp['1.1.0']);
    expect(existsSync(path.join(homeOf(id), '.config', 'bin', 'new-tool'))).toBe(true);
    await deleteModule(id, 'Delete');
    expect((await reconcileNodeOnce(opts, d2)).instances.find((i) => i.id === id)!.outcome).toBe('removed');
  }, 120_000);
});

describe('users on a host with a stale passwd lock', () => {
  test('a lock file whose owner is a zombie (killed, not yet reaped) is cleared and the user is created', async () => {
    const id = `webapp${suffix}6`;
    users.push(id);
    // A zombie: a child that exited under a parent (sleep, after exec) that never waits for it.
    const { spawn } = await import('node:child_process');
    // The child outlives the exec by a moment, so the shell can never reap it first (under load it did).
    const parent = spawn('sh', ['-c', 'sh -c "sleep 0.3" & echo $!; exec sleep 60'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const zombie = await new Promise<number>((resolve) => parent.stdout!.once('data', (b: Buffer) => resolve(Number(b.toString().trim()))));
    try {
      for (let i = 0; i < 150 && !/^\S+ \(.*\) Z/.test(await fs.readFile(`/proc/${zombie}/stat`, 'utf8').catch(() => '')); i++) await new Promise((r) => setTimeout(r, 20));
      expect(await fs.readFile(`/proc/${zombie}/stat`, 'utf8')).toMatch(/\) Z /);
      for (;;) {
        try {
          await fs.writeFile('/etc/passwd.lock', String(zombie), { flag: 'wx' });
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 100)); // someone really holds it: wait for them
        }
      }
      try {
        // shadow-utils alone refuses ("already used by PID"): the agent clears the stale lock.
        expect((await host.run(['useradd', '-M', `${id}x`], { allowFailure: true })).stderr).toMatch(/already used by PID/);
        await deps.users.create(id, `${id}: create-user`);
        expect(await userExists(id)).toBe(true);
      } finally {
        const left = await fs.readFile('/etc/passwd.lock', 'utf8').catch(() => '');
        if (left.trim() === String(zombie)) await fs.rm('/etc/passwd.lock', { force: true });
      }
    } finally {
      parent.kill('SIGKILL');
    }
  }, 60_000);
});
