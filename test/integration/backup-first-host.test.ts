/**
 * `updatePolicy.backupFirst` on the real host (real Redis, podman, useradd, restic; a recording
 * stand-in for systemd, which is not PID 1 here): a snapshot is taken before an update; when the
 * update fails (its service does not start) and is rolled back, the data the failed update
 * changed goes back to that snapshot along with the previous image. Without a schedule selecting
 * the instance there is nowhere to write the snapshot: the update waits and says why. `backup
 * verify` restores the latest snapshot into a throw-away copy and removes it.
 */
import { promises as fs, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { ProcessRunner } from '../../src/host/runner.js';
import { createNodeAgentDeps, type NodeAgentDeps, type NodeAgentOptions } from '../../src/node-agent/deps.js';
import { parseEnvironment } from '../../src/node-agent/environment-file.js';
import { reconcileNodeOnce, type InstanceResult } from '../../src/node-agent/reconcile.js';
import { runNodeAgent } from '../../src/node-agent/agent-loop.js';
import { backupVerifyCommand } from '../../src/cli/commands/backup-verify.js';
import type { CliDeps } from '../../src/cli/deps.js';
import { ResticBackups } from '../../src/node-agent/backup/engine.js';
import { backupTargetOf } from '../../src/node-agent/backup/schedule-run.js';
import { readEvents } from '../../src/state/events.js';
import { keys } from '../../src/state/keys.js';
import type { ExampleImages } from '../support/example-images.js';
import { removeTestUsers } from '../support/host-podman.js';
import type { TestRedis } from '../support/redis-server.js';
import type { TestRegistry } from '../support/registry.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import { putDesiredModule, putDesiredObject } from '../support/desired-module.js';
import { RecordingSystemd } from '../support/recording-systemd.js';
import { startNodeAgentTestHost, stopNodeAgentTestHost } from '../support/node-agent-host.js';

const suffix = String(process.pid % 10000);
const id = `webapp${suffix}5`;
const PASSWORD = `pre-update-${suffix}-secret`;
let redis: TestRedis;
let admin: Redis;
let registry: TestRegistry;
let images: ExampleImages;
let root: string;
let deps: NodeAgentDeps;
let systemd: RecordingSystemd;
const opts: NodeAgentOptions = { node: 1, concurrency: 1, agentCommand: [] };
const runner = new ProcessRunner(100_000);


async function reconcile(): Promise<InstanceResult> {
  const res = await reconcileNodeOnce(opts, deps);
  return res.instances.find((i) => i.id === id)!;
}

const put = (image: string, generation: number): Promise<void> => putDesiredModule(admin, id, { image, node: 1, updatePolicy: { backupFirst: true } }, { generation, uuid: { ifAbsent: '33333333-2222-4333-8444-555555555555' }, node: 1, fields: { object: JSON.stringify({ apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: id, labels: { backup: 'yes' } }, spec: { image, node: 1, updatePolicy: { backupFirst: true } } }) } });
const stateFile = (): string => path.join(root, 'home', id, '.config', 'state', 'data.txt');
const envFile = (): string => path.join(root, 'home', id, '.config', 'state', 'environment');

beforeAll(async () => {
  ({ redis, registry, images, admin, root } = await startNodeAgentTestHost('ns8ctl-backup-first-'));
  systemd = new RecordingSystemd(path.join(root, 'linger'), (scope) => (scope.kind === 'user' ? path.join(root, 'home', scope.user, '.config', 'systemd', 'user') : path.join(root, 'units')), [path.join(root, 'units')]);
  deps = createNodeAgentDeps({ ...opts, insecureRegistries: [registry.address] }, { redis: admin, runner, systemd, layout: tempHostLayout(root), log: () => undefined, delay: async () => undefined });
  await putDesiredObject(admin, 'BackupDestination', 'local1', { url: path.join(root, 'backups') });
  await admin.hset(keys.backupPassword('local1'), 'password', PASSWORD);
  // NS8's record of node 1 (backup verify adds its copy there, as add-module does).
  await admin.multi().set(keys.nodeSequence(), '1').hset(keys.nodeVpn(1), 'ip_address', '127.0.0.1').exec();
}, 300_000);

const copies: string[] = [];

afterAll(async () => {
  await removeTestUsers([id, ...copies]);
  await stopNodeAgentTestHost({ redis, registry, root });
}, 120_000);

test('installed with backupFirst, the instance runs its first image without any snapshot (nothing to update from)', async () => {
  await put(images.webapp['1.1.0'], 1);
  const r = await reconcile();
  expect(r.error?.message).toBeUndefined();
  expect(r.outcome).toBe('converged');
  // The module's data, listed for backups as a real module lists it (etc/state-include.conf).
  const { uid, gid } = statSync(path.join(root, 'home', id));
  await fs.writeFile(stateFile(), 'version one data\n');
  await fs.writeFile(path.join(root, 'home', id, '.config', 'etc', 'state-include.conf'), 'state/data.txt\n');
  await fs.chown(stateFile(), uid, gid);
}, 300_000);

test('no schedule selects the instance: the update waits with the reason, the instance keeps its image', async () => {
  await put(images.webapp['2.0.0'], 2);
  const r = await reconcile();
  expect(r.error?.code).toBe('backup_first_unavailable');
  expect(r.error?.message).toMatch(/needs a BackupSchedule selecting/);
  expect(parseEnvironment(await fs.readFile(envFile(), 'utf8')).IMAGE_URL).toBe(images.webapp['1.1.0']);
}, 300_000);

test('an update that fails is rolled back with the data of the snapshot taken before it', async () => {
  await putDesiredObject(admin, 'BackupSchedule', 'guard', { destination: 'local1', selector: { matchLabels: { backup: 'yes' } }, schedule: 'daily' });
  // 2.0.0's service "crashes at start after migrating the data": it rewrites the data file when started on 2.0.0.
  systemd.failingIf = (unit) => {
    if (unit !== 'webapp.service' || parseEnvironment(readFileSync(envFile(), 'utf8')).IMAGE_URL !== images.webapp['2.0.0']) return false;
    writeFileSync(stateFile(), 'half-migrated by 2.0.0\n');
    return true;
  };
  await put(images.webapp['2.0.0'], 3);
  const r = await reconcile();
  expect(r.error?.message).toMatch(/rolled back to .*webapp:1\.1\.0 with the data of snapshot [0-9a-f]{8} taken before the update/);
  expect(parseEnvironment(await fs.readFile(envFile(), 'utf8')).IMAGE_URL).toBe(images.webapp['1.1.0']);
  expect(await fs.readFile(stateFile(), 'utf8')).toBe('version one data\n');
  const snaps = await new ResticBackups(runner).snapshots(await backupTargetOf(deps.layout, id), { url: path.join(root, 'backups') }, PASSWORD);
  expect(snaps.map((s) => s.tags)).toEqual([['ns8ctl-pre-update']]);
  const events = await readEvents(admin, 50);
  expect(events.map((e) => e.name)).toEqual(expect.arrayContaining(['module-update-rolled-back', 'instance-restored']));
  expect(JSON.stringify(events)).not.toContain(PASSWORD);
}, 600_000);

test('backup verify restores the latest snapshot into a throw-away copy on the node, waits until it is Ready, removes it and leaves nothing behind', async () => {
  const handle = runNodeAgent({ ...opts, insecureRegistries: [registry.address], resyncMs: 200, backoffBaseMs: 100, backoffMaxMs: 500 }, deps);
  const out: string[] = [];
  const cli: CliDeps = { stdout: (t) => void out.push(t), stderr: () => undefined, env: {}, isTTY: false, runner, connect: async () => ({ redis: admin, url: '', embedded: false }), stdin: async () => '', cwd: root };
  try {
    const code = await backupVerifyCommand({ destination: 'local1', instance: [id], timeout: '3m', output: 'json' }, cli);
    const [result] = JSON.parse(out.join('')) as { copy: string; outcome: string; message?: string }[];
    copies.push(result!.copy);
    expect(result).toMatchObject({ destination: 'local1', instance: id, outcome: 'verified' });
    expect(code).toBe(0);
    const copy = result!.copy;
    expect(copy).not.toBe(id);
    // Nothing of the copy is left: desired object, status, NS8 keys, ports, user, home.
    expect(await admin.exists(keys.desired('Module', copy), keys.moduleStatus(copy))).toBe(0);
    expect(await admin.keys(`module/${copy}/*`)).toEqual([]);
    expect(Object.keys(await admin.hgetall(keys.nodePorts(1))).filter((k) => k.startsWith(`${copy}/`))).toEqual([]);
    expect(await admin.hexists(keys.moduleUuid(), copy)).toBe(0);
    await expect(fs.stat(path.join(root, 'home', copy))).rejects.toThrow();
    expect((await fs.readFile('/etc/passwd', 'utf8')).split('\n').some((l) => l.startsWith(`${copy}:`))).toBe(false);
    // The instance verified is untouched.
    expect(await fs.readFile(stateFile(), 'utf8')).toBe('version one data\n');
  } finally {
    await handle.stop();
  }
}, 600_000);
