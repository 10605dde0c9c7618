/**
 * `ns8ctl node-agent` (the standalone command, not `ns8ctl run`) against a real redis-server:
 * suspended instances are left alone and resume at once on `module-resumed`, every status change
 * is announced on `ns8ctl/event/module-status-changed`, and SIGTERM ends the loop cleanly with
 * its handlers removed. The instances fail before touching the host (no image resolution).
 */
import { promises as fs, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import type { CliDeps } from '../../src/cli/deps.js';
import { suspendTarget } from '../../src/controller/suspend.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { runNodeAgent } from '../../src/node-agent/agent-loop.js';
import { nodeAgentCommand } from '../../src/cli/commands/node-agent.js';
import { createNodeAgentDeps } from '../../src/node-agent/deps.js';
import { readModuleStatus } from '../../src/node-agent/status.js';
import { channels, keys } from '../../src/state/keys.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { putDesiredModule } from '../support/desired-module.js';

let redis: TestRedis;
let admin: Redis;
let sub: Redis;
let root: string;
const messages: string[] = [];
const waiters: (() => void)[] = [];

async function putModule(id: string): Promise<void> {
  // spec.module without a repository resolver: ImageResolutionFailed, terminal, nothing created.
  await putDesiredModule(admin, id, { node: 1, module: 'webapp' });
}

async function announced(id: string): Promise<void> {
  const want = JSON.stringify({ module: id, node: 1 });
  while (!messages.includes(want)) await new Promise<void>((r) => waiters.push(r));
}

beforeAll(async () => {
  redis = await startRedis();
  admin = redis.client();
  sub = redis.client();
  sub.on('message', (_c: string, m: string) => {
    messages.push(m);
    for (const w of waiters.splice(0)) w();
  });
  await sub.subscribe(channels.moduleStatusChanged);
  root = await fs.mkdtemp(path.join(tmpdir(), 'ns8ctl-node-agent-cli-'));
});

afterAll(async () => {
  sub?.disconnect();
  admin?.disconnect();
  await redis?.stop();
  if (root) await fs.rm(root, { recursive: true, force: true });
});

test('suspended instances are left alone, resume wakes the agent at once, status changes are announced once, SIGTERM stops it', async () => {
  await putModule('plain1');
  await putModule('held1');
  await suspendTarget(admin, undefined, { kind: 'module', name: 'held1' }, { by: 'test', now: new Date() });
  let stderr = '';
  const d: CliDeps = {
    stdout: () => undefined,
    stderr: (t) => void (stderr += t),
    env: {},
    isTTY: false,
    runner: new ProcessRunner(),
    connect: async () => ({ redis: admin, url: redis.url, embedded: false }),
    stdin: async () => '',
    cwd: process.cwd(),
  };
  const listeners = process.listenerCount('SIGTERM');
  const layout = { agentStateDir: path.join(root, 'agent'), homeBase: path.join(root, 'home'), rootfullBase: path.join(root, 'nethserver'), uiBase: path.join(root, 'ui'), systemdRunDir: path.join(root, 'no-systemd') };
  const run = nodeAgentCommand({ node: '1', resync: '3600', logFormat: 'json' }, d, { layout });
  await announced('plain1');
  // The first pass is over (one pass covers every instance): the suspended one has no status.
  expect((await readModuleStatus(admin, 'plain1'))!.conditions.find((c) => c.type === 'Degraded')).toMatchObject({ reason: 'ImageResolutionFailed' });
  expect(await readModuleStatus(admin, 'held1')).toBeUndefined();
  expect(process.listenerCount('SIGTERM')).toBe(listeners + 1);
  // Resume: no resync or retry is due (1 h, terminal failure), only module-resumed wakes it.
  await admin.del(keys.suspension('module', 'held1'));
  await admin.publish(channels.controllerEvent('module-resumed'), JSON.stringify({ object: 'Module/held1' }));
  await announced('held1');
  expect((await readModuleStatus(admin, 'held1'))!.conditions.find((c) => c.type === 'Degraded')).toMatchObject({ reason: 'ImageResolutionFailed' });
  // The second pass did not change plain1's status: announced once only.
  expect(messages.filter((m) => m === JSON.stringify({ module: 'plain1', node: 1 }))).toHaveLength(1);
  process.emit('SIGTERM', 'SIGTERM');
  expect(await run).toBe(0);
  expect(process.listenerCount('SIGTERM')).toBe(listeners);
  // --log-format json: one JSON line per instance reconciled, with id, outcome, duration and reason.
  const lines = stderr.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  expect(lines[0]).toMatchObject({ level: 'info', msg: 'reconciling node 1 (resync every 3600 s, 4 at a time)', node: 1 });
  const reconciled = lines.filter((l) => l.msg === 'instance reconciled');
  expect(reconciled.map((l) => l.id)).toEqual(['plain1', 'held1']);
  expect(reconciled[0]).toMatchObject({ level: 'warn', node: 1, outcome: 'failed', reason: 'ImageResolutionFailed', duration_ms: expect.any(Number) });
}, 60_000);

test('--once refuses to act on a host with instances when desired state has no epoch (exit 1, says why); --accept-desired-state confirms it and the next pass reports the instance Orphaned', async () => {
  await admin.flushall();
  const out: string[] = [];
  const d: CliDeps = {
    stdout: (t) => void out.push(t),
    stderr: () => undefined,
    env: {},
    isTTY: false,
    runner: new ProcessRunner(),
    connect: async () => ({ redis: admin, url: redis.url, embedded: false }),
    stdin: async () => '',
    cwd: process.cwd(),
  };
  const agentStateDir = path.join(root, 'accept', 'agent');
  const layout = { agentStateDir, homeBase: path.join(root, 'accept', 'home'), rootfullBase: path.join(root, 'accept', 'nethserver'), uiBase: path.join(root, 'accept', 'ui'), systemdRunDir: path.join(root, 'no-systemd') };
  // This host runs kept1 (its record), and Redis lost everything.
  await fs.mkdir(path.join(agentStateDir, 'instances'), { recursive: true });
  await fs.writeFile(path.join(agentStateDir, 'instances', 'kept1.json'), JSON.stringify({ id: 'kept1', node: 1, imageUrl: 'registry.invalid/kept:1.0.0', rootfull: false }));
  expect(await nodeAgentCommand({ node: '1', once: true }, d, { layout })).toBe(1);
  expect(out.join('')).toMatch(/node 1: refusing to act: DesiredStateSuspect \(EpochMissing\): .*--accept-desired-state/);
  expect(await readModuleStatus(admin, 'kept1')).toBeUndefined();

  out.length = 0;
  expect(await nodeAgentCommand({ node: '1', acceptDesiredState: true }, d, { layout })).toBe(0);
  const epoch = JSON.parse((await admin.get('ns8ctl/cluster/epoch'))!) as { id: string };
  expect(out.join('')).toContain(`node 1: desired state accepted: epoch ${epoch.id}`);
  expect(out.join('')).toMatch(/holds no Module: instances of this node are reported Orphaned and left running/);
  expect(JSON.parse(await fs.readFile(path.join(agentStateDir, 'epoch.json'), 'utf8'))).toMatchObject({ id: epoch.id, how: 'accepted' });

  out.length = 0;
  expect(await nodeAgentCommand({ node: '1', once: true, output: 'json' }, d, { layout })).toBe(0);
  const result = JSON.parse(out.join('')) as { suspect: unknown; instances: { id: string; outcome: string }[] };
  expect(result.suspect).toBeNull();
  expect(result.instances).toEqual([expect.objectContaining({ id: 'kept1', outcome: 'orphaned' })]);
  expect((await readModuleStatus(admin, 'kept1'))!.conditions.find((c) => c.type === 'Orphaned')).toMatchObject({ status: 'True' });
  expect(existsSync(path.join(agentStateDir, 'instances', 'kept1.json'))).toBe(true);
}, 60_000);

test('a refusing agent loop says why at most once a minute per reason, and at once when the reason changes', async () => {
  await admin.flushall();
  const agentStateDir = path.join(root, 'loop', 'agent');
  await fs.mkdir(path.join(agentStateDir, 'instances'), { recursive: true });
  await fs.writeFile(path.join(agentStateDir, 'instances', 'kept2.json'), JSON.stringify({ id: 'kept2', node: 1 }));
  let now = Date.parse('2026-12-05T07:00:00.000Z');
  const lines: string[] = [];
  const deps = createNodeAgentDeps(
    { node: 1 },
    { redis: admin, runner: new ProcessRunner(), layout: tempHostLayout(path.join(root, 'loop'), { agentStateDir }), log: (l) => void lines.push(l), now: () => new Date(now) },
  );
  const reasons: (string | undefined)[] = [];
  let wake: (() => void) | undefined;
  const handle = runNodeAgent(
    {
      node: 1,
      resyncMs: 5,
      onReconcile: (r) => {
        reasons.push(r.suspect?.reason);
        now += 1000; // one second of the agent's clock per pass
        wake?.();
      },
    },
    deps,
  );
  const passes = async (n: number): Promise<void> => {
    const until = reasons.length + n;
    while (reasons.length < until) await new Promise<void>((r) => (wake = r));
  };
  const refusals = (reason: string): number => lines.filter((l) => l.includes(`DesiredStateSuspect (${reason})`)).length;
  try {
    await passes(5);
    expect(reasons.slice(0, 5)).toEqual(Array(5).fill('EpochMissing'));
    expect(refusals('EpochMissing')).toBe(1);
    now += 60_000;
    await passes(2);
    expect(refusals('EpochMissing')).toBe(2);
    // Desired state gets an epoch this host never worked under: another reason, said at once.
    await admin.set('ns8ctl/cluster/epoch', JSON.stringify({ id: 'e-new', created: '2026-12-05T07:01:00.000Z' }));
    await passes(3);
    expect(reasons.at(-1)).toBe('EpochUnknown');
    expect(refusals('EpochUnknown')).toBe(1);
  } finally {
    await handle.stop();
  }
  expect(existsSync(path.join(agentStateDir, 'instances', 'kept2.json'))).toBe(true);
}, 60_000);
