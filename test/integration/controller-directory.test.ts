/**
 * The controller against a real Redis and real chokidar on temp dirs: every kind of trigger
 * (start, file saved, Redis notification, resync, suspend/resume) converges desired state and the
 * summaries, and invalid input or unsafe prunes are refused without writing.
 */
import { mkdtempSync, mkdirSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { Controller, type ControllerOptions } from '../../src/controller/controller.js';
import { readEvents } from '../../src/state/events.js';
import { createLogger } from '../../src/runtime/log.js';
import { readSourceStatus } from '../../src/controller/source-status.js';
import type { SourceSpec } from '../../src/controller/source-reconciler.js';
import { EventRecorder } from '../../src/state/events.js';
import { resumeTarget, suspendTarget } from '../../src/controller/suspend.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { writeStatus } from '../../src/node-agent/status.js';
import { channels } from '../../src/state/keys.js';
import { buildRelayRequest, relayQueueKey } from '../../src/agent/task-relay.js';
import { applyModuleAcl } from '../../src/node-agent/redis-acl.js';
import { runCli } from '../support/cli.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait-for.js';

const NODE = `apiVersion: ns8ctl.nethserver.org/v1
kind: Node
metadata: {name: node1}
spec: {id: 1}
`;
const mod = (name: string, tag = '1.0.0', extra = ''): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata:
  name: ${name}
spec:
  image: 127.0.0.1:5000/ns8ctl-examples/webapp:${tag}
  node: 1
${extra}`;

/** Replaces a file the way editors do: write a temp file next to it, rename over it. */
function atomicSave(file: string, text: string): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp${process.hrtime.bigint()}`);
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}

describe('controller with a manifests directory', () => {
  let srv: TestRedis;
  let redis: Redis;
  let dir: string;
  let controllers: Controller[];
  let logs: string[];

  beforeEach(async () => {
    srv = await startRedis();
    redis = srv.client();
    dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-ctl-'));
    mkdirSync(path.join(dir, 'm'));
    writeFileSync(path.join(dir, 'm', 'node.yaml'), NODE);
    controllers = [];
    logs = [];
  });
  afterEach(async () => {
    for (const c of controllers) await c.stop();
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const file = (name: string): string => path.join(dir, 'm', name);

  async function start(source: Partial<SourceSpec> = {}, opts: Partial<ControllerOptions> = {}): Promise<Controller> {
    const spec: SourceSpec = { name: 'default', kind: 'directory', paths: [path.join(dir, 'm')], prune: false, selfHeal: true, ...source };
    const c = new Controller(
      { sources: [spec], resyncMs: 0, leaseMs: 5000, debounceMs: 30, concurrency: 2, backoff: { baseMs: 100, maxMs: 1000, jitter: 0 }, ...opts },
      { redis: srv.client(), runner: new ProcessRunner(), logger: createLogger('json', (l) => logs.push(l)) },
    );
    controllers.push(c);
    await c.start();
    await waitFor('leadership', () => c.isLeader);
    return c;
  }

  const spec = async (id: string): Promise<{ image?: string } | undefined> => {
    const h = await redis.hget(`ns8ctl/desired/module/${id}`, 'object');
    return h ? (JSON.parse(h) as { spec: { image?: string } }).spec : undefined;
  };
  const ready = async (): Promise<string | undefined> => (await readSourceStatus(redis, 'default'))?.conditions.find((c) => c.type === 'Ready')?.status;

  it('applies the manifests when it starts and reports the source Ready with an event', async () => {
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    await start();
    await waitFor('webapp1 in desired state', () => spec('webapp1'));
    const st = await waitFor('source status Ready', async () => ((await ready()) === 'True' ? readSourceStatus(redis, 'default') : undefined));
    expect(st!.lastAppliedDigest).toMatch(/^[0-9a-f]{64}$/);
    expect(st!.conditions.map((c) => `${c.type}=${c.status}`)).toEqual(['Ready=True', 'Reconciling=False', 'Stalled=False', 'Drifted=False']);
    const events = await readEvents(redis);
    expect(events.map((e) => e.name)).toContain('source-applied');
    expect(await redis.smembers('ns8ctl/inventory/default')).toEqual(expect.arrayContaining(['Module/webapp1', 'Node/1']));
    // One log line per reconcile, with key, result and duration.
    const line = logs.map((l) => JSON.parse(l)).find((l) => l.msg === 'reconciled' && l.key === 'source/default');
    expect(line).toMatchObject({ level: 'info', result: 'ok' });
    expect(typeof line.duration_ms).toBe('number');
  });

  it('converges after a file is saved atomically (temp file renamed over it)', async () => {
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    await start();
    await waitFor('first apply', async () => (await spec('webapp1'))?.image?.endsWith(':1.0.0'));
    atomicSave(file('wiki.yaml'), mod('webapp1', '1.1.0'));
    await waitFor('new image in desired state', async () => (await spec('webapp1'))?.image?.endsWith(':1.1.0'));
    expect(await redis.hget('ns8ctl/desired/module/webapp1', 'generation')).toBe('2');
    writeFileSync(file('blog.yaml'), mod('webapp2'));
    await waitFor('a new file picked up', () => spec('webapp2'));
  });

  it('watches subdirectories whose names hold a dot (prod.v2), existing ones and new ones', async () => {
    mkdirSync(file('prod.v2'));
    writeFileSync(path.join(file('prod.v2'), 'wiki.yaml'), mod('webapp1'));
    await start();
    await waitFor('first apply', async () => (await spec('webapp1'))?.image?.endsWith(':1.0.0'));
    atomicSave(path.join(file('prod.v2'), 'wiki.yaml'), mod('webapp1', '1.1.0'));
    await waitFor('a change inside prod.v2 picked up', async () => (await spec('webapp1'))?.image?.endsWith(':1.1.0'));
    mkdirSync(file('apps.d'));
    writeFileSync(path.join(file('apps.d'), 'blog.yaml'), mod('webapp2'));
    await waitFor('a file in a new dotted directory picked up', () => spec('webapp2'));
  });

  it('rejects invalid manifests without writing, reports Stalled, and converges once they are fixed', async () => {
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    await start();
    await waitFor('first apply', () => spec('webapp1'));
    atomicSave(file('wiki.yaml'), mod('webapp1', '2.0.0', '  nodee: 3\n'));
    const st = await waitFor('Stalled', async () => {
      const s = await readSourceStatus(redis, 'default');
      return s?.conditions.find((c) => c.type === 'Stalled')?.status === 'True' ? s : undefined;
    });
    expect(st!.lastError).toBe('manifest_invalid');
    expect(st!.conditions.find((c) => c.type === 'Ready')).toMatchObject({ status: 'False', reason: 'ValidationFailed' });
    expect(st!.conditions.find((c) => c.type === 'Ready')!.message).toContain('wiki.yaml');
    expect((await spec('webapp1'))?.image).toMatch(/:1\.0\.0$/);
    const rejected = await waitFor('source-rejected event', async () => (await readEvents(redis)).find((e) => e.name === 'source-rejected'));
    expect(rejected?.type).toBe('Warning');
    expect(JSON.stringify(rejected?.data)).toContain('/spec/nodee');
    atomicSave(file('wiki.yaml'), mod('webapp1', '2.0.0'));
    await waitFor('fixed manifest applied', async () => (await spec('webapp1'))?.image?.endsWith(':2.0.0'));
    await waitFor('Ready again', async () => (await ready()) === 'True');
  });

  it('applies a Module moved to another node as a move for the node agents: the move recorded, cluster/module_node left to them', async () => {
    writeFileSync(file('node2.yaml'), NODE.replace('node1', 'node2').replace('id: 1', 'id: 2'));
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    await start();
    await waitFor('first apply', () => spec('webapp1'));
    atomicSave(file('wiki.yaml'), mod('webapp1').replace('  node: 1', '  node: 2'));
    const move = await waitFor('the move recorded', async () => {
      const raw = await redis.hget('ns8ctl/moves', 'webapp1');
      return raw ? (JSON.parse(raw) as unknown) : undefined;
    });
    expect(move).toEqual({ from: 1, to: 2, state: 'requested' });
    expect((await spec('webapp1')) as { node?: number }).toMatchObject({ node: 2 });
    expect(await redis.hget('cluster/module_node', 'webapp1')).toBe('1');
  });

  it('runs the task relay while leading: an instance reaches another agent under its own ACL', async () => {
    await redis.hset('cluster/module_node', 'alpha1', '1', 'beta1', '1');
    await applyModuleAcl(redis, 'alpha1', 'alpha-pw');
    await start();
    const alpha = new Redis(srv.port, '127.0.0.1', { username: 'module/alpha1', password: 'alpha-pw', maxRetriesPerRequest: 1 });
    try {
      await expect(alpha.lpush('module/beta1/tasks', '{}')).rejects.toThrow(/NOPERM/);
      const req = buildRelayRequest('module/beta1', 'get-status');
      await alpha.lpush(relayQueueKey('alpha1'), req.json);
      const task = await waitFor('the task on beta1 queue', async () => {
        const [t] = await redis.lrange('module/beta1/tasks', 0, -1);
        return t ? (JSON.parse(t) as { id: string; action: string; user: string }) : undefined;
      });
      expect(task).toMatchObject({ id: req.id, action: 'get-status', user: 'module/alpha1' });
    } finally {
      alpha.disconnect();
    }
  });

  it('restores desired state changed outside the source, woken by the Redis notification', async () => {
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    await start();
    await waitFor('first apply', () => spec('webapp1'));
    await waitFor('source Ready', async () => (await ready()) === 'True');
    // Someone applies another spec by hand (publishes desired-state-changed).
    const other = path.join(dir, 'other');
    mkdirSync(other);
    writeFileSync(path.join(other, 'node.yaml'), NODE);
    writeFileSync(path.join(other, 'wiki.yaml'), mod('webapp1', '9.9.9'));
    expect((await runCli(['apply', '-f', other], { NS8CTL_REDIS_URL: srv.url })).code).toBe(0);
    await waitFor('drift corrected', async () => (await spec('webapp1'))?.image?.endsWith(':1.0.0'));
    const corrected = await waitFor('drift event', async () => (await readEvents(redis)).find((e) => e.name === 'source-drift-corrected'));
    expect(corrected.data).toMatchObject({ objects: ['Module/webapp1'] });
    expect(controllers[0]!.metrics.driftCorrections.get({ source: 'default' })).toBe(1);
  });

  it('only reports drift with self-heal off: Drifted on the source and on the module', async () => {
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    await start({ selfHeal: false });
    await waitFor('first apply', () => spec('webapp1'));
    await waitFor('source Ready', async () => (await ready()) === 'True');
    const other = path.join(dir, 'other');
    mkdirSync(other);
    writeFileSync(path.join(other, 'wiki.yaml'), mod('webapp1', '9.9.9'));
    writeFileSync(path.join(other, 'node.yaml'), NODE);
    expect((await runCli(['apply', '-f', other], { NS8CTL_REDIS_URL: srv.url })).code).toBe(0);
    const st = await waitFor('source Drifted', async () => {
      const s = await readSourceStatus(redis, 'default');
      return s?.conditions.find((c) => c.type === 'Drifted')?.status === 'True' ? s : undefined;
    });
    expect(st!.driftedKeys).toEqual(['Module/webapp1']);
    expect((await spec('webapp1'))?.image).toMatch(/:9\.9\.9$/);
    const summary = await waitFor('module Drifted', async () => {
      const c = JSON.parse((await redis.hget('ns8ctl/conditions/module/webapp1', 'conditions')) ?? '[]') as { type: string; status: string; reason: string }[];
      return c.find((x) => x.type === 'Drifted' && x.status === 'True');
    });
    expect(summary.reason).toBe('DesiredStateDrift');
    // The event is recorded just after the summary is written: wait for it, do not race it.
    const names = await waitFor('drift events', async () => {
      const n = (await readEvents(redis)).map((e) => e.name);
      return n.includes('module-drifted') ? n : undefined;
    });
    expect(names).toEqual(expect.arrayContaining(['source-drift-detected', 'module-drifted']));
    await waitFor('drift gauge', () => controllers[0]!.metrics.driftedObjects.get() === 1);
  });

  it('prunes an object that left the manifests, and refuses to prune most of the apply set', async () => {
    mkdirSync(path.join(dir, 'm', 'apps'));
    for (const n of [1, 2]) writeFileSync(path.join(dir, 'm', 'apps', `w${n}.yaml`), mod(`webapp${n}`));
    writeFileSync(file('w3.yaml'), mod('webapp3'));
    await start({ prune: true });
    await waitFor('three modules', async () => (await redis.smembers('ns8ctl/desired/module')).length === 3);
    unlinkSync(file('w3.yaml'));
    await waitFor('webapp3 pruned', async () => (await spec('webapp3')) === undefined);
    // Two of the three remaining objects vanish at once (a directory moved away).
    renameSync(path.join(dir, 'm', 'apps'), path.join(dir, 'apps-moved'));
    const st = await waitFor('prune refused', async () => {
      const s = await readSourceStatus(redis, 'default');
      return s?.lastError === 'prune_refused' ? s : undefined;
    });
    expect(st!.conditions.find((c) => c.type === 'Stalled')).toMatchObject({ status: 'True', reason: 'PruneRefused' });
    expect((await redis.smembers('ns8ctl/desired/module')).sort()).toEqual(['webapp1', 'webapp2']);
    expect(await waitFor('source-prune-refused event', async () => (await readEvents(redis)).map((e) => e.name).includes('source-prune-refused'))).toBe(true);
  });

  it('applies the rest of the source when one object is blocked, and retries the blocked one', async () => {
    // NS8 already records webapp1 on node 2: the manifest placing it on node 1 is blocked.
    await redis.hset('cluster/module_node', 'webapp1', '2');
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    writeFileSync(file('blog.yaml'), mod('webapp2'));
    await start();
    await waitFor('the other module applied', () => spec('webapp2'));
    const st = await waitFor('Blocked', async () => {
      const s = await readSourceStatus(redis, 'default');
      return s?.conditions.find((c) => c.type === 'Ready')?.reason === 'Blocked' ? s : undefined;
    });
    expect(st.conditions.find((c) => c.type === 'Ready')!.message).toContain('Module/webapp1 already exists in NS8 on node 2');
    expect(await spec('webapp1')).toBeUndefined();
    expect((await waitFor('source-apply-blocked event', async () => (await readEvents(redis)).find((e) => e.name === 'source-apply-blocked')))?.data).toMatchObject({ objects: ['Module/webapp1'] });
    await redis.hdel('cluster/module_node', 'webapp1');
    await waitFor('applied on a retry', () => spec('webapp1'));
    await waitFor('Ready', async () => (await ready()) === 'True');
  });

  it('holds back a suspended module and applies its change on resume', async () => {
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    writeFileSync(file('blog.yaml'), mod('webapp2'));
    await start();
    await waitFor('first apply', () => spec('webapp2'));
    const events = new EventRecorder(redis);
    await suspendTarget(redis, events, { kind: 'module', name: 'webapp1' }, { by: 'test', now: new Date(), reason: 'maintenance' });
    atomicSave(file('wiki.yaml'), mod('webapp1', '3.0.0'));
    atomicSave(file('blog.yaml'), mod('webapp2', '3.0.0'));
    await waitFor('the other module changed', async () => (await spec('webapp2'))?.image?.endsWith(':3.0.0'));
    await controllers[0]!.whenIdle();
    expect((await spec('webapp1'))?.image).toMatch(/:1\.0\.0$/);
    const summary = JSON.parse((await redis.hget('ns8ctl/conditions/module/webapp1', 'conditions')) ?? '[]') as { type: string; reason: string }[];
    expect(summary.find((c) => c.type === 'Reconciling')?.reason).toBe('Suspended');
    await waitFor('the suspended gauge counts it', () => controllers[0]!.metrics.suspended.get({ kind: 'module' }) === 1);
    expect(controllers[0]!.metrics.render()).toContain('ns8ctl_suspended{kind="module"} 1');
    await resumeTarget(redis, events, { kind: 'module', name: 'webapp1' }, 'test');
    await waitFor('held-back change applied on resume', async () => (await spec('webapp1'))?.image?.endsWith(':3.0.0'));
    await waitFor('the gauge drops on resume', () => controllers[0]!.metrics.suspended.get({ kind: 'module' }) === 0);
  });

  it('applies a held-back change by itself when a timed module suspension lapses', async () => {
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    await start();
    await waitFor('first apply', () => spec('webapp1'));
    await suspendTarget(redis, new EventRecorder(redis), { kind: 'module', name: 'webapp1' }, { by: 'test', now: new Date(), forMs: 1500 });
    atomicSave(file('wiki.yaml'), mod('webapp1', '3.0.0'));
    await waitFor('the suspended gauge counts it', () => controllers[0]!.metrics.suspended.get({ kind: 'module' }) === 1);
    expect((await spec('webapp1'))?.image).toMatch(/:1\.0\.0$/);
    // The key expires (TTL): nothing is published, no resync runs (resyncMs 0), no file changes.
    await waitFor('held-back change applied once the suspension lapsed', async () => (await spec('webapp1'))?.image?.endsWith(':3.0.0'));
    await waitFor('the gauge drops', () => controllers[0]!.metrics.suspended.get({ kind: 'module' }) === 0);
    const summary = JSON.parse((await redis.hget('ns8ctl/conditions/module/webapp1', 'conditions')) ?? '[]') as { type: string; reason: string }[];
    expect(summary.find((c) => c.type === 'Reconciling')?.reason).not.toBe('Suspended');
  });

  it('leaves a suspended source alone until it is resumed', async () => {
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    await start();
    await waitFor('first apply', () => spec('webapp1'));
    const events = new EventRecorder(redis);
    await suspendTarget(redis, events, { kind: 'source', name: 'default' }, { by: 'test', now: new Date() });
    await waitFor('Reconciling=Suspended', async () => (await readSourceStatus(redis, 'default'))?.conditions.find((c) => c.type === 'Reconciling')?.reason === 'Suspended');
    await waitFor('the suspended gauge counts the source', () => controllers[0]!.metrics.suspended.get({ kind: 'source' }) === 1);
    atomicSave(file('wiki.yaml'), mod('webapp1', '4.0.0'));
    // The save is seen (a reconcile runs) but nothing is applied.
    const before = logs.length;
    await waitFor('a reconcile after the save', () => logs.slice(before).some((l) => l.includes('"key":"source/default"')));
    expect((await spec('webapp1'))?.image).toMatch(/:1\.0\.0$/);
    await resumeTarget(redis, events, { kind: 'source', name: 'default' }, 'test');
    await waitFor('applied on resume', async () => (await spec('webapp1'))?.image?.endsWith(':4.0.0'));
    await waitFor('the gauge drops on resume', () => controllers[0]!.metrics.suspended.get({ kind: 'source' }) === 0);
  });

  it('follows node agent status into Ready and records module-became-ready', async () => {
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    await start();
    await waitFor('first apply', () => spec('webapp1'));
    const cond = async (type: string): Promise<{ status: string; reason: string } | undefined> =>
      (JSON.parse((await redis.hget('ns8ctl/conditions/module/webapp1', 'conditions')) ?? '[]') as { type: string; status: string; reason: string }[]).find((c) => c.type === type);
    await waitFor('AwaitingNodeAgent', async () => (await cond('Ready'))?.reason === 'AwaitingNodeAgent');
    const status = {
      id: 'webapp1', node: 1, observedGeneration: 1,
      conditions: [{ type: 'Ready' as const, status: 'True' as const, reason: 'Converged', message: 'ok' }, { type: 'Degraded' as const, status: 'False' as const, reason: 'Converged', message: '' }],
      imageUrl: 'x', imageDigest: 'sha256:1', ports: {}, units: [], drift: [],
    };
    await writeStatus(redis, undefined, status, new Date());
    await redis.publish(channels.moduleStatusChanged, JSON.stringify({ module: 'webapp1' }));
    await waitFor('Ready=True', async () => (await cond('Ready'))?.status === 'True');
    expect(await redis.hget('ns8ctl/conditions/module/webapp1', 'observedGeneration')).toBe('1');
    expect(await waitFor('module-became-ready event', async () => (await readEvents(redis)).map((e) => e.name).includes('module-became-ready'))).toBe(true);
    // A terminal agent failure makes it Stalled.
    await writeStatus(redis, status, { ...status, conditions: [{ type: 'Ready', status: 'False', reason: 'ImageLabelInvalid', message: 'bad label' }, { type: 'Degraded', status: 'True', reason: 'ImageLabelInvalid', message: 'bad label' }] }, new Date());
    await redis.publish(channels.moduleStatusChanged, JSON.stringify({ module: 'webapp1' }));
    await waitFor('Stalled=True', async () => (await cond('Stalled'))?.status === 'True');
    const seen = await waitFor('module-stalled and module-became-unready events', async () => {
      const n = (await readEvents(redis)).map((e) => e.name);
      return n.includes('module-stalled') && n.includes('module-became-unready') ? n : undefined;
    });
    expect(seen).toEqual(expect.arrayContaining(['module-stalled', 'module-became-unready']));
  });

  it('follows status writes through keyspace notifications when the server has them on', async () => {
    await redis.config('SET', 'notify-keyspace-events', 'Kh');
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    await start();
    await waitFor('first apply', () => spec('webapp1'));
    await writeStatus(redis, undefined, { id: 'webapp1', node: 1, observedGeneration: 1, conditions: [{ type: 'Ready', status: 'True', reason: 'Converged', message: 'ok' }], imageUrl: '', imageDigest: '', ports: {}, units: [], drift: ['unit webapp.service was stopped'] }, new Date());
    await waitFor('Drifted from host drift', async () => {
      const c = JSON.parse((await redis.hget('ns8ctl/conditions/module/webapp1', 'conditions')) ?? '[]') as { type: string; status: string; reason: string }[];
      return c.find((x) => x.type === 'Drifted' && x.status === 'True' && x.reason === 'HostDriftRepaired');
    });
  });

  it('catches a change nobody announced at the next resync', async () => {
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    await start({}, { resyncMs: 300 });
    await waitFor('first apply', () => spec('webapp1'));
    await waitFor('source Ready', async () => (await ready()) === 'True');
    // Desired state edited behind everyone's back: no notification at all.
    const h = await redis.hget('ns8ctl/desired/module/webapp1', 'object');
    await redis.hset('ns8ctl/desired/module/webapp1', 'object', h!.replace(':1.0.0', ':6.6.6'));
    await waitFor('restored by the resync', async () => (await spec('webapp1'))?.image?.endsWith(':1.0.0'));
  });

  it('keeps converging after Redis dropped every connection (reconnects and rechecks)', async () => {
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    await start();
    await waitFor('first apply', () => spec('webapp1'));
    // A change nobody announced (as if made while the connections were down) is caught by the
    // recheck that follows the reconnect.
    const h = await redis.hget('ns8ctl/desired/module/webapp1', 'object');
    await redis.hset('ns8ctl/desired/module/webapp1', 'object', h!.replace(':1.0.0', ':5.5.5'));
    const admin = srv.client();
    await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub');
    await admin.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
    await waitFor('restored after the reconnect', async () => (await spec('webapp1'))?.image?.endsWith(':1.0.0'));
    atomicSave(file('wiki.yaml'), mod('webapp1', '1.5.0'));
    await waitFor('file changes still picked up', async () => (await spec('webapp1'))?.image?.endsWith(':1.5.0'));
    expect(controllers[0]!.isLeader).toBe(true);
  });

  describe('several sources in one controller', () => {
    /** One controller following `names` (directories dir/<name>), one reconcile at a time, in this order. */
    async function startSources(names: { name: string; prune?: boolean }[]): Promise<Controller> {
      const sources: SourceSpec[] = names.map((n) => ({ name: n.name, kind: 'directory', paths: [path.join(dir, n.name)], prune: n.prune ?? false, selfHeal: true }));
      const c = new Controller(
        { sources, resyncMs: 0, leaseMs: 5000, debounceMs: 30, concurrency: 1, backoff: { baseMs: 100, maxMs: 1000, jitter: 0 } },
        { redis: srv.client(), runner: new ProcessRunner(), logger: createLogger('json', (l) => logs.push(l)) },
      );
      controllers.push(c);
      await c.start();
      await waitFor('leadership', () => c.isLeader);
      return c;
    }
    const sourceCond = async (name: string, type: string): Promise<{ status: string; reason: string; message: string } | undefined> => (await readSourceStatus(redis, name))?.conditions.find((c) => c.type === type);

    it('applies each source into its own apply set, even when one needs a Node the other declares', async () => {
      mkdirSync(path.join(dir, 'infra'));
      mkdirSync(path.join(dir, 'apps'));
      writeFileSync(path.join(dir, 'infra', 'node.yaml'), NODE);
      writeFileSync(path.join(dir, 'apps', 'wiki.yaml'), mod('webapp1'));
      // apps runs first: node 1 is not declared yet, so its manifests do not validate; once infra
      // has applied the Node, apps runs again by itself (no file change, no resync).
      await startSources([{ name: 'apps' }, { name: 'infra' }]);
      await waitFor('webapp1 applied by apps', () => spec('webapp1'));
      await waitFor('both sources Ready', async () => (await sourceCond('apps', 'Ready'))?.status === 'True' && (await sourceCond('infra', 'Ready'))?.status === 'True');
      expect(await redis.smembers('ns8ctl/inventory/apps')).toEqual(['Module/webapp1']);
      expect(await redis.smembers('ns8ctl/inventory/infra')).toEqual(['Node/1']);
      expect(await redis.hget('ns8ctl/desired/module/webapp1', 'applyset')).toBe('apps');
      writeFileSync(path.join(dir, 'apps', 'blog.yaml'), mod('webapp2'));
      await waitFor('a file change in the second directory picked up', () => spec('webapp2'));
    });

    it('lets an object belong to one source only, and hands it over without deleting it when it moves', async () => {
      for (const d of ['infra', 'apps']) mkdirSync(path.join(dir, d));
      writeFileSync(path.join(dir, 'infra', 'node.yaml'), NODE);
      writeFileSync(path.join(dir, 'infra', 'wiki.yaml'), mod('webapp1', '1.0.0'));
      writeFileSync(path.join(dir, 'apps', 'wiki.yaml'), mod('webapp1', '2.0.0'));
      writeFileSync(path.join(dir, 'apps', 'blog.yaml'), mod('webapp2'));
      await startSources([{ name: 'infra', prune: true }, { name: 'apps', prune: true }]);
      const stalled = await waitFor('apps waits on the conflict', async () => ((await sourceCond('apps', 'Stalled'))?.status === 'True' ? sourceCond('apps', 'Stalled') : undefined));
      expect(stalled!.reason).toBe('SourceConflict');
      expect(stalled!.message).toContain('Module/webapp1 (source infra)');
      // The first source keeps it; the waiting one applies nothing at all.
      expect((await spec('webapp1'))?.image).toMatch(/:1\.0\.0$/);
      expect(await spec('webapp2')).toBeUndefined();
      expect(await redis.hget('ns8ctl/desired/module/webapp1', 'generation')).toBe('1');
      // Moving it: remove it from infra (which prunes); apps takes it over, no delete in between.
      unlinkSync(path.join(dir, 'infra', 'wiki.yaml'));
      await waitFor('apps took webapp1 over', async () => (await spec('webapp1'))?.image?.endsWith(':2.0.0'));
      await waitFor('apps Ready', async () => (await sourceCond('apps', 'Ready'))?.status === 'True');
      expect(await spec('webapp2')).toBeDefined();
      expect(await redis.hget('ns8ctl/desired/module/webapp1', 'generation')).toBe('2');
      expect(await redis.hget('ns8ctl/desired/module/webapp1', 'applyset')).toBe('apps');
      expect(await redis.sismember('ns8ctl/inventory/infra', 'Module/webapp1')).toBe(0);
      const changes = (await readEvents(redis)).flatMap((e) => ((e.data as { changes?: string[] } | undefined)?.changes ?? []));
      expect(changes).not.toContain('delete Module/webapp1');
    });
  });

  it('deletes the summary of a module that left desired state', async () => {
    writeFileSync(file('wiki.yaml'), mod('webapp1'));
    await start({ prune: true });
    writeFileSync(file('blog.yaml'), mod('webapp2'));
    await waitFor('summary of webapp1', () => redis.exists('ns8ctl/conditions/module/webapp1'));
    unlinkSync(file('wiki.yaml'));
    await waitFor('summary removed', async () => (await redis.exists('ns8ctl/conditions/module/webapp1')) === 0);
  });
});
