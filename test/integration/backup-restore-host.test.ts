/**
 * A BackupSchedule run and a Module re-created with `restoreFrom`, by the node agent on this host:
 * real redis-server, podman, useradd, restic and a local restic repository. The instance's data
 * (a state file listed by its etc/state-include.conf, a variable its own action wrote into the
 * environment) comes back into a new Unix user with the backed-up MODULE_UUID, before the
 * instance is announced; the password shows up in no command line, status, event or log.
 */
import { promises as fs, statSync } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { ProcessRunner } from '../../src/host/runner.js';
import { createNodeAgentDeps, type NodeAgentDeps, type NodeAgentOptions } from '../../src/node-agent/deps.js';
import type { InstanceResult } from '../../src/node-agent/reconcile.js';
import { parseEnvironment } from '../../src/node-agent/environment-file.js';
import { backupIndexKey, backupStatusKey, readIndexEntry } from '../../src/node-agent/backup/catalog.js';
import { runBackupSchedule } from '../../src/node-agent/backup/schedule-run.js';
import { RESTORE_REQUESTS_KEY } from '../../src/node-agent/backup/restore-request.js';
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
import { reconcileById, startNodeAgentTestHost, stopNodeAgentTestHost } from '../support/node-agent-host.js';

const suffix = String(process.pid % 10000);
const id = `webapp${suffix}7`;
const PASSWORD = `restic-secret-${suffix}-Zq8`;
const OLD_UUID = '11111111-2222-4333-8444-555555555555';
const NEW_UUID = '99999999-8888-4777-8666-555555555555';
let redis: TestRedis;
let admin: Redis;
let registry: TestRegistry;
let images: ExampleImages;
let root: string;
let deps: NodeAgentDeps;
let opts: NodeAgentOptions;
const logs: string[] = [];
const runner = new ProcessRunner(100_000);


const reconcile = (): Promise<Map<string, InstanceResult>> => reconcileById(opts, deps);

const home = (): string => path.join(root, 'home', id);
const stateDir = (): string => path.join(home(), '.config', 'state');

beforeAll(async () => {
  ({ redis, registry, images, admin, root } = await startNodeAgentTestHost('ns8ctl-backup-restore-'));
  opts = { node: 1, concurrency: 2, insecureRegistries: [registry.address] };
  deps = createNodeAgentDeps(opts, { redis: admin, runner, layout: tempHostLayout(root, { uiBase: path.join(root, 'ui', 'apps') }), log: (l) => void logs.push(l), delay: async () => undefined });
  await putDesiredObject(admin, 'BackupDestination', 'local1', { url: path.join(root, 'backups') });
  await admin.hset(keys.backupPassword('local1'), 'password', PASSWORD);
  await putDesiredObject(admin, 'BackupSchedule', 'nightly', { destination: 'local1', instances: [id], schedule: 'daily', retention: { keepLast: 2 } });
}, 300_000);

afterAll(async () => {
  await removeTestUsers([id, `webapp${suffix}8`, `webapp${suffix}9`]);
  await stopNodeAgentTestHost({ redis, registry, root });
}, 120_000);

test('an instance with data is backed up by its schedule (one flagged no_data_backup is skipped): status, backup index and event written, retention applied', async () => {
  await putDesiredModule(admin, id, { image: images.webapp['1.0.0'], node: 1, removalPolicy: 'Delete' }, { uuid: { set: OLD_UUID }, node: 1 });
  expect((await reconcile()).get(id)?.outcome).toBe('converged');
  const { uid, gid } = statSync(home());
  // The module's own data: a state file its include list names, a variable its action wrote.
  await fs.mkdir(path.join(stateDir(), 'data'), { recursive: true });
  await fs.writeFile(path.join(stateDir(), 'data', 'notes.txt'), 'kept across restore\n');
  await fs.writeFile(path.join(home(), '.config', 'etc', 'state-include.conf'), 'state/data\n');
  await fs.appendFile(path.join(stateDir(), 'environment'), 'CUSTOM_SETTING=from-the-module\n');
  await runner.run(['chown', '-R', `${uid}:${gid}`, stateDir()]);

  const run = (): ReturnType<typeof runBackupSchedule> => runBackupSchedule({ redis: admin, runner, layout: deps.layout, runDir: path.join(root, 'run') }, 1, 'nightly');
  // The example image declares NS8's no_data_backup flag: skipped, as NS8 does.
  expect((await run()).instances).toEqual([{ id, outcome: 'skipped', message: 'flag no_data_backup' }]);
  expect(await admin.exists(backupStatusKey(id, 'nightly'))).toBe(0);
  // A module with data (the flag gone from its NS8 flags) is backed up.
  await admin.srem(keys.moduleFlags(id), 'no_data_backup');
  for (let i = 0; i < 3; i++) {
    const report = await run();
    expect(report.instances).toEqual([expect.objectContaining({ id, outcome: 'succeeded' })]);
  }
  const status = await admin.hgetall(backupStatusKey(id, 'nightly'));
  expect(status).toEqual(expect.objectContaining({ destination: 'local1', errors: '0', snapshots_count: '2' }));
  expect(Number(status.total_size)).toBeGreaterThan(0);
  expect(await readIndexEntry(admin, 'local1', id)).toEqual(expect.objectContaining({ uuid: OLD_UUID, image: images.webapp['1.0.0'], node: 1, snapshot: status.snapshot }));
  const target = await backupTargetOf(deps.layout, id);
  expect(await new ResticBackups(runner).snapshots(target, { url: path.join(root, 'backups') }, PASSWORD)).toHaveLength(2);
  const events = (await readEvents(admin, 20)).filter((e) => e.object === `Module/${id}`);
  expect(events.map((e) => e.name)).toEqual(['backup-succeeded', 'backup-succeeded', 'backup-succeeded']);
}, 600_000);

test('removed with its data, the instance comes back with restoreFrom: data, its own variables and MODULE_UUID restored into a new user', async () => {
  await admin.hset(keys.desired('Module', id), 'deleting', JSON.stringify({ removalPolicy: 'Delete' }));
  expect((await reconcile()).get(id)?.outcome).toBe('removed');
  await expect(fs.stat(home())).rejects.toThrow();
  // The backup index outlives the instance (its module/<id>/* keys are gone).
  expect(await admin.exists(`module/${id}/environment`)).toBe(0);
  expect(await admin.hexists(backupIndexKey('local1'), id)).toBe(1);

  await putDesiredModule(admin, id, { image: images.webapp['1.0.0'], node: 1, removalPolicy: 'Delete', restoreFrom: { destination: 'local1' } }, { uuid: { set: NEW_UUID }, node: 1 });
  const r = (await reconcile()).get(id)!;
  expect(r.error?.message).toBeUndefined();
  expect(r.outcome).toBe('converged');
  expect(r.applied.map((s) => s.kind)).toContain('restore-data');
  const uid = statSync(home()).uid;
  const notes = path.join(stateDir(), 'data', 'notes.txt');
  expect(await fs.readFile(notes, 'utf8')).toBe('kept across restore\n');
  expect(statSync(notes).uid).toBe(uid);
  const env = parseEnvironment(await fs.readFile(path.join(stateDir(), 'environment'), 'utf8'));
  expect(env.MODULE_UUID).toBe(OLD_UUID);
  expect(env.CUSTOM_SETTING).toBe('from-the-module');
  expect(await admin.hget(keys.moduleUuid(), id)).toBe(OLD_UUID);
  expect(await admin.hget(`module/${id}/environment`, 'MODULE_UUID')).toBe(OLD_UUID);
  // Restored once: the next passes leave the data alone.
  expect((await reconcile()).get(id)?.outcome).toBe('unchanged');
}, 600_000);

test('a recorded restore request puts an installed instance\'s data back once, and is removed when carried out', async () => {
  const notes = path.join(stateDir(), 'data', 'notes.txt');
  await fs.writeFile(notes, 'edited after the backup\n');
  await admin.hset(RESTORE_REQUESTS_KEY, id, JSON.stringify({ request: 'req-1', destination: 'local1', snapshot: 'latest', from: id, by: 'test', at: new Date().toISOString() }));
  const r = (await reconcile()).get(id)!;
  expect(r.error?.message).toBeUndefined();
  expect(r.applied.map((s) => s.kind)).toContain('restore-data');
  expect(await fs.readFile(notes, 'utf8')).toBe('kept across restore\n');
  expect(await admin.hexists(RESTORE_REQUESTS_KEY, id)).toBe(0);
  expect((await readEvents(admin, 50)).filter((e) => e.name === 'instance-restored' && e.object === `Module/${id}`)).toHaveLength(2);
  // Carried out once: the data changed again stays as it is.
  await fs.writeFile(notes, 'edited again\n');
  expect((await reconcile()).get(id)?.applied.map((s) => s.kind) ?? []).not.toContain('restore-data');
  expect(await fs.readFile(notes, 'utf8')).toBe('edited again\n');
}, 600_000);

test('the restic password is in no command line, status, event or log', async () => {
  const argvs = runner.history.map((c) => c.argv.join(' ')).join('\n');
  expect(argvs).not.toContain(PASSWORD);
  expect(JSON.stringify(await admin.hgetall(backupStatusKey(id, 'nightly')))).not.toContain(PASSWORD);
  expect(JSON.stringify(await readEvents(admin, 100))).not.toContain(PASSWORD);
  expect(logs.join('\n')).not.toContain(PASSWORD);
});

test('restoreFrom naming an instance never backed up there fails with the reason and starts nothing', async () => {
  const other = `webapp${suffix}8`;
  try {
    await putDesiredModule(admin, other, { image: images.webapp['1.0.0'], node: 1, restoreFrom: { destination: 'local1' } }, { uuid: { set: '22222222-2222-4333-8444-555555555555' }, node: 1 });
    const r = (await reconcile()).get(other)!;
    expect(r.outcome).toBe('failed');
    expect(r.error?.code).toBe('restore_source_missing');
    expect(r.error?.message).toContain(`${other} was never backed up to local1`);
    expect(await admin.exists(`module/${other}/environment`)).toBe(0);
  } finally {
    // Its desired object goes first: a later pass would create the user again (and leak it).
    await admin.multi().del(keys.desired('Module', other)).srem(keys.desiredIndex('Module'), other).exec();
    await removeTestUsers([other]);
  }
}, 600_000);
