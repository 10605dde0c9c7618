/**
 * A missing desired object is never a delete order, and desired state that looks wiped is not
 * acted on: real redis-server, real podman and useradd, the example images in a loopback
 * registry, the node agent's real reconcile (no systemd on these machines).
 */
import { promises as fs, existsSync } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { readEvents } from '../../src/state/events.js';
import { CommandFailedError } from '../../src/errors.js';
import { ProcessRunner, type CommandRecord, type CommandRunner, type RunOptions } from '../../src/host/runner.js';
import { createNodeAgentDeps, type NodeAgentDeps, type NodeAgentOptions } from '../../src/node-agent/deps.js';
import { acceptDesiredStateOnHost, CLUSTER_EPOCH_KEY, nodeAgentStatusKey, readHostEpoch } from '../../src/node-agent/desired-state-guard.js';
import type { HostLayout } from '../../src/node-agent/layout.js';
import { reconcileNodeOnce, type NodeReconcileResult } from '../../src/node-agent/reconcile.js';
import { removalRequestKey, requestOrphanRemoval } from '../../src/node-agent/removal-request.js';
import { readModuleStatus } from '../../src/node-agent/status.js';
import { keys } from '../../src/state/keys.js';
import type { ExampleImages } from '../support/example-images.js';
import { removeTestUsers } from '../support/host-podman.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import type { TestRedis } from '../support/redis-server.js';
import type { TestRegistry } from '../support/registry.js';
import { putDesiredModule } from '../support/desired-module.js';
import { startNodeAgentTestHost, stopNodeAgentTestHost } from '../support/node-agent-host.js';

/** The production runner, counting changing commands, and refusing `userdel` while `failUserdel` is set. */
class TestRunner implements CommandRunner {
  mutating = 0;
  failUserdel = false;
  private readonly inner = new ProcessRunner(100_000);
  get history(): CommandRunner['history'] {
    return this.inner.history;
  }
  async run(argv: string[], opts: RunOptions = {}): Promise<CommandRecord & { stdoutBuffer?: Buffer }> {
    if (opts.mutating) this.mutating++;
    if (this.failUserdel && argv.includes('userdel')) throw new CommandFailedError('command_failed', `${argv.join(' ')}: refused by the test`, { argv, exitCode: 1, stderr: 'refused by the test' });
    return this.inner.run(argv, opts);
  }
}

const suffix = String(process.pid % 10000);
let redis: TestRedis;
let admin: Redis;
let registry: TestRegistry;
let images: ExampleImages;
let root: string;
let layout: HostLayout;
let runner: TestRunner;
let deps: NodeAgentDeps;
let opts: NodeAgentOptions;
const logs: string[] = [];
const users: string[] = [];

async function putModule(id: string, spec: Record<string, unknown>, node = 1): Promise<void> {
  await putDesiredModule(admin, id, { node, ...spec }, { uuid: { ifAbsent: `00000000-0000-4000-8000-${id.padStart(12, '0').slice(-12)}` }, node });
  if (node === 1) users.push(id);
}

/** The desired object vanishes (as when Redis lost it), other desired state stays. */
async function loseDesiredObject(id: string): Promise<void> {
  await admin.del(keys.desired('Module', id));
  await admin.srem(keys.desiredIndex('Module'), id);
}

async function pass(): Promise<NodeReconcileResult> {
  return reconcileNodeOnce(opts, deps);
}

async function passFor(id: string): Promise<NodeReconcileResult['instances'][number]> {
  const r = (await pass()).instances.find((i) => i.id === id);
  if (!r) throw new Error(`no result for ${id}`);
  return r;
}

async function userExists(id: string): Promise<boolean> {
  return (await fs.readFile('/etc/passwd', 'utf8')).split('\n').some((l) => l.startsWith(`${id}:`));
}

async function eventsNamed(name: string): Promise<{ object: string; message: string; data?: Record<string, unknown> }[]> {
  return (await readEvents(admin, 1000)).filter((e) => e.name === name);
}

function recordFile(id: string): string {
  return path.join(root, 'agent', 'instances', `${id}.json`);
}

beforeAll(async () => {
  ({ redis, registry, images, admin, root } = await startNodeAgentTestHost('ns8ctl-orphans-'));
  runner = new TestRunner();
  layout = tempHostLayout(root, { uiBase: path.join(root, 'ui', 'apps') });
  opts = { node: 1, concurrency: 2, insecureRegistries: [registry.address] };
  deps = createNodeAgentDeps(opts, { redis: admin, runner, layout, log: (line) => logs.push(line), delay: async () => undefined });
  // A Module on another node: desired state is not empty when one object vanishes.
  await putModule('elsewhere1', { image: images.webapp['1.0.0'] }, 2);
}, 300_000);

afterAll(async () => {
  await removeTestUsers(users);
  await stopNodeAgentTestHost({ redis, registry, root });
}, 120_000);

describe('an instance whose desired object is missing', () => {
  const id = `webapp${suffix}7`;

  test('is created, and the node adopts the cluster epoch it works under', async () => {
    await putModule(id, { image: images.webapp['1.0.0'] });
    const r = await passFor(id);
    expect(r.error?.message).toBeUndefined();
    expect(r.outcome).toBe('converged');
    const epoch = JSON.parse((await admin.get(CLUSTER_EPOCH_KEY))!) as { id: string; created: string };
    expect(epoch.id).toMatch(/^[0-9a-f-]{36}$/);
    expect((await readHostEpoch(layout))?.id).toBe(epoch.id);
  }, 240_000);

  test('is left running and reported Orphaned, with one module-orphaned event however many passes', async () => {
    await loseDesiredObject(id);
    const before = runner.mutating;
    const r = await passFor(id);
    expect(r.outcome).toBe('orphaned');
    expect(r.applied).toEqual([]);
    expect(await passFor(id)).toMatchObject({ outcome: 'orphaned', applied: [] });
    expect(runner.mutating).toBe(before);
    expect(await userExists(id)).toBe(true);
    expect(existsSync(path.join(root, 'home', id, '.config', 'state', 'environment'))).toBe(true);
    expect(existsSync(recordFile(id))).toBe(true);
    const status = await readModuleStatus(admin, id);
    const orphaned = status?.conditions.find((c) => c.type === 'Orphaned');
    expect(orphaned).toMatchObject({ status: 'True', reason: 'DesiredObjectMissing' });
    expect(orphaned?.message).toMatch(/left running untouched/);
    expect(orphaned?.message).toContain('ns8ctl recover');
    expect(orphaned?.message).toContain(`ns8ctl delete module ${id}`);
    const events = await eventsNamed('module-orphaned');
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ object: `Module/${id}`, data: { module: id, node: 1 } });
  }, 120_000);

  test('re-applied, it is managed again and no longer Orphaned', async () => {
    await putModule(id, { image: images.webapp['1.0.0'] });
    const r = await passFor(id);
    expect(r.error?.message).toBeUndefined();
    expect(['unchanged', 'converged']).toContain(r.outcome);
    expect((await readModuleStatus(admin, id))?.conditions.find((c) => c.type === 'Orphaned')).toBeUndefined();
  }, 120_000);

  test('a deletion mark removes it: who, when and why are in the log, the status, the event and the host record; an interrupted removal resumes with no desired object', async () => {
    const mark = { removalPolicy: 'Preserve', by: 'alice@admin1', at: '2026-12-05T06:00:00.000Z', why: 'decommissioned' };
    await admin.hset(keys.desired('Module', id), 'deleting', JSON.stringify(mark));
    runner.failUserdel = true;
    let r;
    try {
      r = await passFor(id);
    } finally {
      runner.failUserdel = false;
    }
    expect(r.outcome).toBe('failed');
    const status = await readModuleStatus(admin, id);
    const ready = status?.conditions.find((c) => c.type === 'Ready');
    expect(ready?.reason).toBe('RemovalFailed');
    expect(ready?.message).toContain('requested by alice@admin1 at 2026-12-05T06:00:00.000Z: decommissioned');
    expect(logs.some((l) => l.includes(`${id}: removing (data preserved), requested by alice@admin1 at 2026-12-05T06:00:00.000Z: decommissioned`))).toBe(true);
    const removing = await eventsNamed('module-removing');
    expect(removing).toHaveLength(1);
    expect(removing[0]).toMatchObject({ object: `Module/${id}`, data: { removalPolicy: 'Preserve', by: 'alice@admin1', at: mark.at, why: 'decommissioned' } });
    expect(JSON.parse(await fs.readFile(recordFile(id), 'utf8')).removing).toEqual(mark);
    expect(await userExists(id)).toBe(true);

    // The desired object is lost meanwhile: the removal recorded on the host resumes all the same.
    await loseDesiredObject(id);
    await admin.hset(keys.moduleConfiguration(id), { appliedHash: 'h' });
    const again = await passFor(id);
    expect(again.error?.message).toBeUndefined();
    expect(again.outcome).toBe('removed');
    expect(await userExists(id)).toBe(false);
    expect(existsSync(recordFile(id))).toBe(false);
    expect(existsSync(path.join(root, 'home', id, '.config', 'state', 'environment'))).toBe(true);
    expect(logs.some((l) => l.includes(`${id}: removed (data preserved;`) && l.includes('requested by alice@admin1'))).toBe(true);
    // Resumed, not started again: still one event.
    expect(await eventsNamed('module-removing')).toHaveLength(1);
    expect(await admin.exists(keys.moduleStatus(id), keys.moduleConfiguration(id))).toBe(0);
  }, 180_000);
});

describe('an orphan removed on request, and desired state that looks wiped', () => {
  const id = `webapp${suffix}8`;

  test('is created', async () => {
    await putModule(id, { image: images.webapp['1.0.0'] });
    const r = await passFor(id);
    expect(r.error?.message).toBeUndefined();
    expect(r.outcome).toBe('converged');
  }, 240_000);

  test('Redis loses everything: the node refuses to act (EpochMissing), says so once as an event and in its status, and touches nothing', async () => {
    await admin.flushall();
    const before = runner.mutating;
    const r = await pass();
    expect(r.instances).toEqual([]);
    expect(r.suspect?.reason).toBe('EpochMissing');
    expect((await pass()).suspect?.reason).toBe('EpochMissing');
    expect(runner.mutating).toBe(before);
    expect(await userExists(id)).toBe(true);
    expect(existsSync(recordFile(id))).toBe(true);
    const conditions = JSON.parse((await admin.hget(nodeAgentStatusKey(1), 'conditions'))!) as { type: string; status: string; reason: string; message: string }[];
    expect(conditions[0]).toMatchObject({ type: 'DesiredStateSuspect', status: 'True', reason: 'EpochMissing' });
    expect(conditions[0]!.message).toContain('ns8ctl node-agent --node 1 --accept-desired-state');
    const events = await eventsNamed('desired-state-suspect');
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ object: 'node/1', data: { node: 1, reason: 'EpochMissing' } });
    expect(logs.filter((l) => l.includes('DesiredStateSuspect (EpochMissing)')).length).toBeGreaterThanOrEqual(1);
  }, 60_000);

  test('desired state written again under a new epoch: still refused (EpochChanged) until an operator accepts; the orphan is then reported, not removed', async () => {
    await putModule('elsewhere1', { image: images.webapp['1.0.0'] }, 2);
    await admin.set(CLUSTER_EPOCH_KEY, JSON.stringify({ id: '11111111-2222-4333-8444-555555555555', created: '2026-12-05T06:10:00.000Z' }));
    const r = await pass();
    expect(r.suspect?.reason).toBe('EpochChanged');
    expect(r.suspect?.message).toContain('11111111-2222-4333-8444-555555555555');
    expect((await eventsNamed('desired-state-suspect')).map((e) => e.data?.reason)).toEqual(['EpochMissing', 'EpochChanged']);
    expect(await userExists(id)).toBe(true);

    const accepted = await acceptDesiredStateOnHost(admin, layout);
    expect(accepted.epoch.id).toBe('11111111-2222-4333-8444-555555555555');
    expect((await readHostEpoch(layout))?.id).toBe(accepted.epoch.id);
    const after = await pass();
    expect(after.suspect).toBeUndefined();
    expect(after.instances.find((i) => i.id === id)?.outcome).toBe('orphaned');
    expect(await userExists(id)).toBe(true);
    const conditions = JSON.parse((await admin.hget(nodeAgentStatusKey(1), 'conditions'))!) as { status: string }[];
    expect(conditions[0]?.status).toBe('False');
  }, 60_000);

  test('desired state with no Module at all while the host runs instances: refused (DesiredStateEmpty) until accepted', async () => {
    // The acceptance covered desired state as it was (with a Module): once Modules were seen, it
    // no longer covers an empty desired state.
    expect((await readHostEpoch(layout))?.acceptEmpty).toBeUndefined();
    await loseDesiredObject('elsewhere1');
    const r = await pass();
    expect(r.suspect?.reason).toBe('DesiredStateEmpty');
    expect(await userExists(id)).toBe(true);
    await acceptDesiredStateOnHost(admin, layout);
    const after = await pass();
    expect(after.suspect).toBeUndefined();
    expect(after.instances.find((i) => i.id === id)?.outcome).toBe('orphaned');
    expect(await userExists(id)).toBe(true);
  }, 60_000);

  test('an explicit removal request removes the orphan: the request moves to the host record, its key goes, who/when/why are logged and in the event', async () => {
    await putModule('elsewhere1', { image: images.webapp['1.0.0'] }, 2);
    await expect(requestOrphanRemoval(admin, 'elsewhere1', { removalPolicy: 'Preserve', by: 'bob', why: 'x' })).rejects.toMatchObject({ code: 'module_not_orphaned' });
    const mark = await requestOrphanRemoval(admin, id, { removalPolicy: 'Delete', by: 'bob@admin2', why: 'restored from backup elsewhere' }, new Date('2026-12-05T06:20:00.000Z'));
    expect(JSON.parse((await admin.get(removalRequestKey(id)))!)).toEqual({ removalPolicy: 'Delete', by: 'bob@admin2', at: '2026-12-05T06:20:00.000Z', why: 'restored from backup elsewhere' });
    const r = await passFor(id);
    expect(r.error?.message).toBeUndefined();
    expect(r.outcome).toBe('removed');
    expect(r.applied.map((s) => s.kind)).toContain('erase-data');
    expect(await userExists(id)).toBe(false);
    expect(existsSync(path.join(root, 'home', id))).toBe(false);
    expect(await admin.exists(removalRequestKey(id))).toBe(0);
    expect(logs.some((l) => l.includes(`${id}: removing (DATA DELETED), requested by bob@admin2 at 2026-12-05T06:20:00.000Z: restored from backup elsewhere`))).toBe(true);
    const event = (await eventsNamed('module-removing')).find((e) => e.object === `Module/${id}`);
    expect(event).toMatchObject({ data: { removalPolicy: 'Delete', by: 'bob@admin2', at: mark.at, why: 'restored from backup elsewhere' } });
    expect((await pass()).instances.find((i) => i.id === id)).toBeUndefined();
  }, 120_000);
});
