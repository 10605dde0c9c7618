/**
 * Unit handling of the node agent on the real host (real Redis, podman, registry, useradd) with a
 * recording stand-in for systemd, since systemd is not PID 1 here (the sandbox runs the real
 * one). The stand-in keeps unit state like systemd would: enable creates the .wants symlinks,
 * start/restart mark units active; the agent observes them through the same interface.
 */
import { promises as fs, existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { ProcessRunner } from '../../src/host/runner.js';
import { createNodeAgentDeps, type NodeAgentDeps, type NodeAgentOptions } from '../../src/node-agent/deps.js';
import { reconcileNodeOnce, type InstanceResult, type NodeReconcileResult } from '../../src/node-agent/reconcile.js';
import { runNodeAgent } from '../../src/node-agent/agent-loop.js';
import { parseEnvironment } from '../../src/node-agent/environment-file.js';
import { agentRedisUrl } from '../../src/cli/commands/agent.js';
import { makeImageResolver } from '../../src/repository/image-resolver.js';
import { readModuleStatus } from '../../src/node-agent/status.js';
import { readEvents } from '../../src/state/events.js';
import { keys } from '../../src/state/keys.js';
import type { ExampleImages } from '../support/example-images.js';
import { removeTestUsers } from '../support/host-podman.js';
import type { TestRedis } from '../support/redis-server.js';
import type { TestRegistry } from '../support/registry.js';
import { Redis } from 'ioredis';
import { runAgent, type AgentHandle } from '../../src/agent/agent.js';
import type { BuiltinAction } from '../../src/agent/action-catalog.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import { RecordingSystemd } from '../support/recording-systemd.js';
import { putDesiredModule } from '../support/desired-module.js';
import { until } from '../support/wait-for.js';
import { startNodeAgentTestHost, stopNodeAgentTestHost } from '../support/node-agent-host.js';

const host = new ProcessRunner();

/**
 * The instance's module agent, run in-process (src/agent/ runAgent: real task queue, contexts,
 * results) while the stand-in systemd has agent.service started. Its lifecycle actions are
 * recording stand-ins; `failNext` makes the next run of an action fail.
 */
const lifecycle: { action: string; input: unknown }[] = [];
const failNext = new Set<string>();
let moduleAgent: { handle: AgentHandle; redis: Redis } | undefined;
function recorder(name: string): BuiltinAction {
  return {
    name,
    steps: [
      {
        name: '50record',
        async run(ctx) {
          lifecycle.push({ action: name, input: ctx.input });
          if (!failNext.delete(name)) return 0;
          ctx.err(`${name}: disk full\n`);
          return 3;
        },
      },
    ],
  };
}
async function startModuleAgent(user: string): Promise<void> {
  if (moduleAgent) return;
  const installDir = path.join(root, 'home', user, '.config');
  const agentRedis = admin.duplicate();
  const handle = runAgent(
    { agentId: `module/${user}`, installDir, stateDir: path.join(installDir, 'state'), actionsDirs: [], builtins: ['create-module', 'update-module', 'destroy-module'].map(recorder), env: { PATH: process.env.PATH }, pollSeconds: 1, log: () => undefined },
    { redis: agentRedis, runner: host },
  );
  moduleAgent = { handle, redis: agentRedis };
  await handle.start();
}
async function stopModuleAgent(): Promise<void> {
  const a = moduleAgent;
  moduleAgent = undefined;
  if (!a) return;
  await a.handle.stop();
  a.redis.disconnect();
}
const suffix = String(process.pid % 10000);
let redis: TestRedis;
let admin: Redis;
let registry: TestRegistry;
let images: ExampleImages;
let root: string;
let deps: NodeAgentDeps;
let systemd: RecordingSystemd;
/** The module agent's unit runs this (a path only: the stand-in systemd never executes it). */
const opts: NodeAgentOptions = { node: 1, agentCommand: ['/usr/local/bin/ns8ctl'] };
const id = `webapp${suffix}9`;

async function putModule(spec: Record<string, unknown>, generation: number): Promise<void> {
  await putDesiredModule(admin, id, { node: 1, ...spec }, { generation, source: 't.yaml', uuid: { ifAbsent: '11111111-2222-4333-8444-555555555555' } });
}

async function once(): Promise<InstanceResult> {
  return (await reconcileNodeOnce(opts, deps)).instances.find((i) => i.id === id)!;
}

beforeAll(async () => {
  ({ redis, registry, images, admin, root } = await startNodeAgentTestHost('ns8ctl-node-agent-units-'));
  systemd = new RecordingSystemd(path.join(root, 'linger'), (scope) => (scope.kind === 'user' ? path.join(root, 'home', scope.user, '.config', 'systemd', 'user') : path.join(root, 'units')), [path.join(root, 'user-units'), path.join(root, 'units')]);
  systemd.onUnit = async (event, scope, unit) => {
    if (unit !== 'agent.service' || scope.kind !== 'user') return;
    await (event === 'start' ? startModuleAgent(scope.user) : stopModuleAgent());
  };
  const runner = new ProcessRunner(100_000);
  deps = createNodeAgentDeps(
    { ...opts, insecureRegistries: [registry.address] },
    {
      redis: admin,
      runner,
      systemd,
      layout: tempHostLayout(root),
      log: () => undefined,
      delay: async () => undefined,
      lifecycleTimeoutMs: 30_000,
    },
  );
}, 300_000);

afterAll(async () => {
  await stopModuleAgent();
  await removeTestUsers([id]);
  await stopNodeAgentTestHost({ redis, registry, root });
}, 60_000);

describe('systemd units of a rootless instance', () => {
  test('a new instance gets linger, one daemon-reload (not one per round), enable and start of its unit and of the module agent; Ready', async () => {
    await putModule({ image: images.webapp['1.0.0'] }, 1);
    const r = await once();
    expect(r.error?.message).toBeUndefined();
    expect(systemd.calls).toEqual([`enable-linger ${id}`, 'daemon-reload user', 'enable webapp.service agent.service', 'start webapp.service agent.service']);
    // NS8's agent.service, as a system-wide user unit running `ns8ctl agent` for the instance.
    const agentUnit = await fs.readFile(path.join(root, 'user-units', 'agent.service'), 'utf8');
    expect(agentUnit).toMatch(/^ExecStart=\/usr\/local\/bin\/ns8ctl agent --id %u /m);
    expect(agentUnit).toMatch(/^EnvironmentFile=-%E\/state\/agent.env$/m);
    const st = await readModuleStatus(admin, id);
    expect(st!.conditions.find((c) => c.type === 'Ready')).toMatchObject({ status: 'True', reason: 'Converged' });
    expect(st!.units).toEqual([{ name: 'webapp.service', enabled: true, active: true }, { name: 'agent.service', enabled: true, active: true }]);
    // NS8 add-module step 17: create-module through the module agent once it runs, before module-added.
    expect(lifecycle).toEqual([{ action: 'create-module', input: { images: [images.webappHttpd['1.0.0']], volumes: {} } }]);
    const kinds = r.applied.map((s) => s.kind);
    expect(kinds.slice(-2)).toEqual(['run-lifecycle', 'publish-added']);
  }, 120_000);

  test('agent.env tells the module agent where Redis is: REDIS_ADDRESS of the node agent Redis, where its credentials work', async () => {
    const agentEnv = parseEnvironment(await fs.readFile(path.join(root, 'home', id, '.config', 'state', 'agent.env'), 'utf8'));
    expect(agentEnv.REDIS_ADDRESS).toBe(`127.0.0.1:${redis.port}`);
    // What `ns8ctl agent` connects to with the unit's environment (not its 127.0.0.1:6379 default).
    const url = agentRedisUrl(undefined, agentEnv);
    expect(url).toBe(`redis://127.0.0.1:${redis.port}`);
    const m = new Redis(url, { username: agentEnv.REDIS_USER, password: agentEnv.REDIS_PASSWORD, enableReadyCheck: false, maxRetriesPerRequest: 1 });
    try {
      expect(await m.hget(keys.moduleEnvironment(id), 'MODULE_ID')).toBe(id);
    } finally {
      m.disconnect();
    }
  });

  test('the first webapp instance becomes the default one (cluster and node keys), as NS8 add-module does', async () => {
    expect(await admin.mget('cluster/default_instance/webapp', 'node/1/default_instance/webapp')).toEqual([id, id]);
  });

  test('an unchanged instance touches nothing: no systemd call, no command, no status write', async () => {
    systemd.calls.length = 0;
    const before = deps.runner.history.length;
    const status = await admin.hgetall(keys.moduleStatus(id));
    expect((await once()).outcome).toBe('unchanged');
    expect(systemd.calls).toEqual([]);
    expect(deps.runner.history.length).toBe(before);
    expect(await admin.hgetall(keys.moduleStatus(id))).toEqual(status);
  });

  test('a stopped unit is started again and reported as drift', async () => {
    systemd.calls.length = 0;
    systemd.active.clear();
    const r = await once();
    expect(r.drift).toEqual(['units stopped: webapp.service agent.service']);
    expect(systemd.calls).toEqual(['start webapp.service agent.service']);
  });

  test('a changed managed environment restarts the unit once (and only it)', async () => {
    systemd.calls.length = 0;
    await putModule({ image: images.webapp['1.1.0'] }, 2);
    const r = await once();
    expect(r.error?.message).toBeUndefined();
    // Same unit file in 1.1.0, new IMAGE_URL/IMAGE_ID: a restart, no start, no reload.
    expect(systemd.calls).toEqual(['restart webapp.service agent.service']);
    // NS8's update-module, once the new image is in place.
    expect(lifecycle.at(-1)).toEqual({ action: 'update-module', input: { module_url: images.webapp['1.1.0'], force: false } });
    systemd.calls.length = 0;
    expect((await once()).outcome).toBe('unchanged');
    expect(systemd.calls).toEqual([]);
  }, 120_000);

  test('new Redis credentials restart the module agent only', async () => {
    systemd.calls.length = 0;
    const agentEnv = path.join(root, 'home', id, '.config', 'state', 'agent.env');
    await fs.writeFile(agentEnv, (await fs.readFile(agentEnv, 'utf8')).replace(/REDIS_PASSWORD=.*/, 'REDIS_PASSWORD=short'));
    const r = await once();
    expect(r.error?.message).toBeUndefined();
    expect(systemd.calls).toEqual(['daemon-reload user', 'restart agent.service']);
  }, 60_000);

  test('a unit that does not start makes the instance Degraded naming the unit', async () => {
    systemd.calls.length = 0;
    systemd.active.clear();
    systemd.failing.add('webapp.service');
    const r = await once();
    expect(r.outcome).toBe('failed');
    const deg = (await readModuleStatus(admin, id))!.conditions.find((c) => c.type === 'Degraded');
    expect(deg).toMatchObject({ status: 'True', reason: 'UnitFailed' });
    expect(deg!.message).toMatch(/unit webapp.service did not start: webapp.service is failed/);
    systemd.failing.clear();
    expect((await once()).error?.message).toBeUndefined();
  }, 60_000);

  test('a unit that starts, then fails inside its stability window (while the pass goes on), makes the instance Degraded naming it', async () => {
    systemd.calls.length = 0;
    systemd.active.clear();
    const real = systemd.isActive.bind(systemd);
    let looks = 0;
    systemd.isActive = async (scope, units) => {
      // Active at the first look after the start, failed at the second.
      if (units.includes('webapp.service') && ++looks === 2) {
        systemd.failing.add('webapp.service');
        systemd.active.delete(`${id}/webapp.service`);
      }
      return real(scope, units);
    };
    try {
      const r = await once();
      expect(r.outcome).toBe('failed');
      expect(looks).toBeGreaterThanOrEqual(2);
      const deg = (await readModuleStatus(admin, id))!.conditions.find((c) => c.type === 'Degraded');
      expect(deg).toMatchObject({ status: 'True', reason: 'UnitFailed' });
      expect(deg!.message).toMatch(/start-units.*unit webapp.service did not start|unit webapp.service did not start/);
    } finally {
      systemd.isActive = real;
      systemd.failing.clear();
    }
    expect((await once()).error?.message).toBeUndefined();
  }, 60_000);

  test('an installed instance whose module no longer resolves is still repaired on its image, and reports ImageResolutionFailed', async () => {
    // No repository carries webapp: the resolver answers module_not_found (it used to be StepFailed, retried forever).
    const resolving: NodeAgentDeps = { ...deps, resolveImage: makeImageResolver(admin, { coreVersion: '3.21.0' }) };
    await putModule({ module: 'webapp', version: '9.9.9' }, 3);
    systemd.calls.length = 0;
    systemd.active.clear();
    await admin.call('ACL', 'DELUSER', `module/${id}`);
    const r = (await reconcileNodeOnce(opts, resolving)).instances.find((i) => i.id === id)!;
    expect(r).toMatchObject({ outcome: 'blocked', retry: false, setback: { reason: 'ImageResolutionFailed', terminal: true } });
    expect(r.error?.code).toBe('module_not_found');
    expect(r.drift).toEqual(expect.arrayContaining(['units stopped: webapp.service agent.service', `Redis ACL user module/${id} removed`]));
    expect(systemd.calls).toContain('start webapp.service agent.service');
    expect(await admin.call('ACL', 'GETUSER', `module/${id}`)).not.toBeNull();
    const st = (await readModuleStatus(admin, id))!;
    expect(st.conditions.find((c) => c.type === 'Ready')).toMatchObject({ status: 'False', reason: 'ImageResolutionFailed' });
    expect(st.conditions.find((c) => c.type === 'Degraded')).toMatchObject({ status: 'True', reason: 'ImageResolutionFailed', message: expect.stringContaining("module 'webapp'") });
    // Still the installed image, with its ports and units (not emptied).
    expect(st.imageUrl).toBe(images.webapp['1.1.0']);
    expect(st.ports.tcp).toMatch(/^\d+-\d+$/);
    expect(st.units).toEqual([{ name: 'webapp.service', enabled: true, active: true }, { name: 'agent.service', enabled: true, active: true }]);
    expect(st.targetImage).toBeUndefined();
  }, 60_000);

  test('a refused update (a downgrade) keeps the installed image converged; status UpdateRefused names the target image', async () => {
    await putModule({ image: images.webapp['1.0.0'] }, 4);
    systemd.calls.length = 0;
    systemd.active.clear();
    const r = await once();
    expect(r).toMatchObject({ outcome: 'blocked', retry: false, setback: { code: 'update_refused', terminal: true, targetImage: images.webapp['1.0.0'] } });
    expect(r.drift).toEqual(['units stopped: webapp.service agent.service']);
    expect(systemd.calls).toEqual(['start webapp.service agent.service']);
    const st = (await readModuleStatus(admin, id))!;
    expect(st.conditions.find((c) => c.type === 'Degraded')).toMatchObject({ status: 'True', reason: 'UpdateRefused', message: expect.stringContaining('downgrade') });
    expect(st).toMatchObject({ imageUrl: images.webapp['1.1.0'], targetImage: images.webapp['1.0.0'] });
    expect(parseEnvironment(await fs.readFile(path.join(root, 'home', id, '.config', 'state', 'environment'), 'utf8')).IMAGE_URL).toBe(images.webapp['1.1.0']);
    // Nothing else to do: the next pass applies nothing and writes no status.
    systemd.calls.length = 0;
    const status = await admin.hgetall(keys.moduleStatus(id));
    expect(await once()).toMatchObject({ outcome: 'blocked', applied: [] });
    expect(systemd.calls).toEqual([]);
    expect(await admin.hgetall(keys.moduleStatus(id))).toEqual(status);
  }, 60_000);

  test('the loop keeps repairing an instance whose update was refused, without resolving it again before the recheck', async () => {
    let resolutions = 0;
    const counting: NodeAgentDeps = {
      ...deps,
      resolveImage: async (spec) => {
        resolutions++;
        return deps.resolveImage(spec);
      },
    };
    const results: NodeReconcileResult[] = [];
    const handle = runNodeAgent({ ...opts, resyncMs: 50, backoffBaseMs: 50, backoffMaxMs: 100, terminalRecheckMs: 3_600_000, onReconcile: (x) => results.push(x) }, counting);
    try {
      await until('a first pass', () => results.length >= 1, { everyMs: 20 });
      expect(resolutions).toBe(1);
      systemd.active.clear();
      const seen = results.length;
      await until('the stopped units restarted by a later pass', () => results.slice(seen).some((x) => x.instances.some((i) => i.id === id && i.applied.some((st) => st.kind === 'start-units'))), { everyMs: 20 });
      expect(resolutions).toBe(1);
      // A new generation is resolved at once (and the update back to 1.1.0 needs nothing).
      await putModule({ image: images.webapp['1.1.0'] }, 5);
      await until('the new generation converged', async () => (await readModuleStatus(admin, id))?.conditions.find((c) => c.type === 'Ready')?.status === 'True', { everyMs: 20 });
      expect(resolutions).toBeGreaterThan(1);
      expect((await readModuleStatus(admin, id))!.targetImage).toBeUndefined();
    } finally {
      await handle.stop();
    }
  }, 60_000);

  test('an update whose unit does not start is rolled back to the version it came from, and not tried again for that generation', async () => {
    const envFile = path.join(root, 'home', id, '.config', 'state', 'environment');
    const lst = path.join(root, 'home', id, '.config', '.imageroot.lst');
    const before = { env: parseEnvironment(await fs.readFile(envFile, 'utf8')), lst: await fs.readFile(lst, 'utf8'), lifecycle: lifecycle.length };
    expect(before.env.IMAGE_URL).toBe(images.webapp['1.1.0']);
    // 2.0.0's service crashes at start: the unit fails whenever the environment names 2.0.0.
    systemd.failingIf = (unit) => unit === 'webapp.service' && parseEnvironment(readFileSync(envFile, 'utf8')).IMAGE_URL === images.webapp['2.0.0'];
    systemd.calls.length = 0;
    await putModule({ image: images.webapp['2.0.0'] }, 6);
    const r = await once();
    expect(r).toMatchObject({ outcome: 'blocked', retry: false, setback: { reason: 'UpdateFailed', terminal: true, targetImage: images.webapp['2.0.0'] } });
    expect(r.error?.message).toMatch(/update .*webapp:1\.1\.0 -> .*webapp:2\.0\.0 failed at step restart-units: .*unit webapp.service did not start.*; rolled back to .*webapp:1\.1\.0/);
    // Restarted on 2.0.0 (the service failed), then every unit again on 1.1.0.
    expect(systemd.calls).toEqual(['restart webapp.service agent.service', 'daemon-reload user', 'start webapp.service', 'restart agent.service']);
    expect(systemd.active.has(`${id}/webapp.service`)).toBe(true);
    // Back to 1.1.0: environment (IMAGE_URL, service image), files, no update-module run.
    const env = parseEnvironment(await fs.readFile(envFile, 'utf8'));
    expect({ url: env.IMAGE_URL, svc: env.WEBAPP_HTTPD_IMAGE, id: env.IMAGE_ID }).toEqual({ url: before.env.IMAGE_URL, svc: before.env.WEBAPP_HTTPD_IMAGE, id: before.env.IMAGE_ID });
    expect(await fs.readFile(lst, 'utf8')).toBe(before.lst);
    expect(lifecycle.length).toBe(before.lifecycle);
    const st = (await readModuleStatus(admin, id))!;
    expect(st).toMatchObject({ imageUrl: images.webapp['1.1.0'], targetImage: images.webapp['2.0.0'] });
    expect(st.conditions.find((c) => c.type === 'Ready')).toMatchObject({ status: 'False', reason: 'UpdateFailed' });
    expect(st.conditions.find((c) => c.type === 'Degraded')!.message).toMatch(/rolled back to/);
    // One event says so (in `ns8ctl events`).
    const events = (await readEvents(admin)).filter((e) => e.name === 'module-update-rolled-back');
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ type: 'Warning', object: `Module/${id}`, data: { module: id, from: images.webapp['1.1.0'], to: images.webapp['2.0.0'], step: 'restart-units', generation: 6 } });
    // Not tried again for this generation: the next pass does nothing.
    systemd.calls.length = 0;
    expect(await once()).toMatchObject({ outcome: 'blocked', applied: [] });
    expect(systemd.calls).toEqual([]);
    // A rollback cut short by a crash (its record written, the environment still naming 2.0.0)
    // resumes: the instance goes back to 1.1.0 without trying 2.0.0 again.
    const rec = (await deps.records.get(id))!;
    expect(rec.failedUpdate).toMatchObject({ image: images.webapp['2.0.0'], from: images.webapp['1.1.0'], generation: 6 });
    await deps.records.update(id, { managedEnv: { ...rec.managedEnv!, IMAGE_URL: images.webapp['2.0.0'] } });
    await fs.writeFile(envFile, (await fs.readFile(envFile, 'utf8')).replace(/^IMAGE_URL=.*$/m, `IMAGE_URL=${images.webapp['2.0.0']}`));
    systemd.calls.length = 0;
    const resumed = await once();
    expect(resumed).toMatchObject({ outcome: 'blocked', setback: { reason: 'UpdateFailed' } });
    expect(resumed.applied.map((s) => s.kind)).toContain('write-environment');
    expect(parseEnvironment(await fs.readFile(envFile, 'utf8')).IMAGE_URL).toBe(images.webapp['1.1.0']);
    expect(systemd.active.has(`${id}/webapp.service`)).toBe(true);
    expect((await readModuleStatus(admin, id))!.imageUrl).toBe(images.webapp['1.1.0']);
    // Fixed (a new generation): the update goes through (update-module fails once: next test).
    systemd.failingIf = () => false;
  }, 120_000);

  test('a failed update-module is reported (LifecycleActionFailed, with its error) and run again next time', async () => {
    failNext.add('update-module');
    const before = lifecycle.length;
    await putModule({ image: images.webapp['2.0.0'] }, 7);
    const r = await once();
    expect(r).toMatchObject({ outcome: 'failed', retry: true });
    expect(r.error?.code).toBe('lifecycle_action_failed');
    const deg = (await readModuleStatus(admin, id))!.conditions.find((c) => c.type === 'Degraded')!;
    expect(deg).toMatchObject({ status: 'True', reason: 'LifecycleActionFailed' });
    expect(deg.message).toMatch(/update-module failed with exit code 3 \(task [^)]+\): update-module: disk full/);
    // The image is in place; only the module's own update step is owed.
    expect(parseEnvironment(await fs.readFile(path.join(root, 'home', id, '.config', 'state', 'environment'), 'utf8')).IMAGE_URL).toBe(images.webapp['2.0.0']);
    const again = await once();
    expect(again.error?.message).toBeUndefined();
    expect(again.applied.map((s) => s.kind)).toEqual(['run-lifecycle']);
    expect(lifecycle.slice(before)).toEqual([0, 1].map(() => ({ action: 'update-module', input: { module_url: images.webapp['2.0.0'], force: false } })));
    expect((await readModuleStatus(admin, id))!.conditions.find((c) => c.type === 'Ready')).toMatchObject({ status: 'True' });
  }, 120_000);

  test('removal runs destroy-module first; a module agent that does not answer in time stops it, and its queued task is not submitted twice', async () => {
    // The agent hangs (systemd still sees it running): the wait is bounded.
    await stopModuleAgent();
    deps.lifecycleTimeoutMs = 1500;
    const before = lifecycle.length;
    await admin.hset(keys.desired('Module', id), 'deleting', '{"removalPolicy":"Delete"}');
    const stuck = await once();
    expect(stuck).toMatchObject({ outcome: 'failed', retry: true });
    expect(stuck.error?.code).toBe('task_timeout');
    expect((await readModuleStatus(admin, id))!.conditions.find((c) => c.type === 'Degraded')).toMatchObject({ reason: 'RemovalFailed', message: expect.stringContaining('has no result after 1500 ms') });
    expect(existsSync(path.join(root, 'home', id))).toBe(true);
    // The agent is back: the task still queued runs once, and the removal goes on.
    await startModuleAgent(id);
    deps.lifecycleTimeoutMs = 30_000;
    systemd.calls.length = 0;
    const r = await once();
    expect(lifecycle.slice(before)).toEqual([{ action: 'destroy-module', input: { module_id: id, preserve_data: false } }]);
    expect(r.outcome).toBe('removed');
    expect(systemd.calls).toEqual([`disable-linger ${id}`]);
    expect([...systemd.active]).toEqual([]);
    expect(existsSync(path.join(root, 'home', id))).toBe(false);
    // NS8's remove-module: the default-instance keys naming the instance are deleted.
    expect(await admin.mget('cluster/default_instance/webapp', 'node/1/default_instance/webapp')).toEqual([null, null]);
  }, 60_000);
});
