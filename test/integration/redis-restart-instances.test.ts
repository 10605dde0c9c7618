/**
 * Redis under running instances, end to end on the host: the embedded redis-server (as the
 * product runs it), manifests applied with the built CLI, the node agent as a separate process
 * (the CLI's `node-agent` command body, host layout in a temp dir), real useradd, rootless podman
 * and the example image in a loopback registry.
 * - Redis stopped with SIGTERM, then with SIGKILL, and started again: desired state is still there,
 *   the agent keeps running and keeps converging, and the instance and its user are untouched.
 * - Desired state wiped (FLUSHALL): the agent refuses to act and says why (log line, node
 *   condition, event); nothing is removed, not even after the manifests are applied again (a
 *   new desired-state epoch) until an operator accepts it; then the same instance converges.
 * `npm run build` first: the components run from dist/.
 */
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { ProcessRunner } from '../../src/host/runner.js';
import type { HostLayout } from '../../src/node-agent/layout.js';
import { keys } from '../../src/state/keys.js';
import type { EmbeddedRedis} from '../support/chaos.js';
import { workspaceAdmin, componentProcess, parseJsonLines, removalsLogged, runBin, userIdentity, hostWorkspace, type ComponentProcess, type StopSignal } from '../support/chaos.js';
import type { ExampleImages } from '../support/example-images.js';
import { removeTestUsers } from '../support/host-podman.js';
import type { TestRegistry } from '../support/registry.js';
import { waitFor } from '../support/wait-for.js';

const ID = `webapp8${process.pid}01`;

let registry: TestRegistry;
let images: ExampleImages;
let root: string;
let manifests: string;
let layout: HostLayout;
let env: NodeJS.ProcessEnv;
let redis: EmbeddedRedis;
let agent: ComponentProcess;
let entry: string;
let agentOpts: string;

const admin = workspaceAdmin(() => ({ root, env }), 'restart-test');
const adminClient = admin.get;
const dropAdmin = admin.drop;

async function writeModule(greeting: string): Promise<void> {
  const doc = { apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: ID }, spec: { image: images.webapp['1.0.0'], node: 1, removalPolicy: 'Delete', configuration: { greeting } } };
  await fs.writeFile(path.join(manifests, `${ID}.yaml`), JSON.stringify(doc, null, 2) + '\n');
}

async function apply(): Promise<void> {
  const r = await runBin(['apply', '-f', manifests], env);
  if (r.code !== 0) throw new Error(`ns8ctl apply exited ${r.code}: ${r.stderr}`);
}

/** The desired generation of the instance, once the node agent converged it at that generation. */
async function converged(): Promise<string | false> {
  const r = await adminClient();
  const generation = await r.hget(keys.desired('Module', ID), 'generation');
  const st = await r.hgetall(keys.moduleStatus(ID));
  if (!generation || st.observedGeneration !== generation) return false;
  return /"HostConverged"|"Ready","status":"True"/.test(st.conditions ?? '') ? generation : false;
}

/** Everything of the instance on the host and in Redis that a removal would take away. */
async function instanceFacts(): Promise<Record<string, unknown>> {
  const r = await adminClient();
  return {
    user: await userIdentity(layout, ID),
    record: existsSync(path.join(layout.agentStateDir, 'instances', `${ID}.json`)),
    installDir: existsSync(path.join(layout.homeBase, ID, '.config', 'state')),
    ui: existsSync(path.join(layout.uiBase, ID)),
    aclUser: ((await r.call('ACL', 'LIST')) as string[]).some((l) => l.startsWith(`user module/${ID} `)),
  };
}

beforeAll(async () => {
  ({ registry, images, root, manifests, layout, env, redis, agentEntry: entry } = await hostWorkspace('ns8ctl-redis-restart-'));
  agentOpts = JSON.stringify({ node: '1', resync: '2', insecureRegistry: [registry.address], logFormat: 'json' });
  agent = componentProcess('node-agent', [entry, agentOpts, JSON.stringify(layout)], env, /reconciling node 1/, path.join(root, 'node-agent.log'));
  // The first CLI command starts the embedded Redis, as it would for a new user.
  await writeModule('first');
  await apply();
  await agent.start();
  await waitFor('the instance converged', converged, 120_000);
}, 300_000);

afterAll(async () => {
  await agent?.stop('SIGTERM', 10_000);
  dropAdmin();
  await removeTestUsers([ID]);
  if (redis?.pid() !== undefined) await redis.stop('SIGKILL');
  await registry?.stop();
  if (root) await fs.rm(root, { recursive: true, force: true });
}, 120_000);

test.each(['SIGTERM', 'SIGKILL'] as StopSignal[])('Redis stopped with %s and started again under a running instance: desired state survives, the agent keeps running and converging, nothing is removed', async (signal) => {
  const before = await instanceFacts();
  expect(before).toMatchObject({ record: true, installDir: true, ui: true, aclUser: true });
  expect(before.user).toBeDefined();
  const r0 = await adminClient();
  const desiredBefore = await r0.hgetall(keys.desired('Module', ID));
  const pid = agent.pid;
  dropAdmin();
  await redis.stop(signal);
  await redis.start();
  // Desired state as it was before the restart.
  const r = await adminClient();
  expect(await r.hgetall(keys.desired('Module', ID))).toEqual(desiredBefore);
  const got = await runBin(['get', 'modules', '-o', 'json'], env);
  expect(got.code).toBe(0);
  expect(got.stdout).toContain(ID);
  // The same agent process goes on: a change applied after the restart is converged by it.
  await writeModule(`after ${signal}`);
  await apply();
  const generation = Number(desiredBefore.generation);
  await waitFor(`the agent to converge generation ${generation + 1} after the restart`, async () => Number(await converged()) === generation + 1, 60_000).catch((e: Error) => {
    throw new Error(`${e.message}; the node agent's last lines:\n${agent.lines.slice(-6).join('\n')}`);
  });
  expect(agent.pid).toBe(pid);
  expect(await instanceFacts()).toEqual(before);
  expect(removalsLogged(agent.lines)).toEqual([]);
}, 180_000);

test('desired state wiped (FLUSHALL) under a running instance: the agent refuses to act and says why, and removes nothing until an operator accepts the new desired state', async () => {
  const before = await instanceFacts();
  const from = agent.lines.length;
  await (await adminClient()).flushall();
  // Positive evidence that the agent ran a pass on the wiped state: it reported it.
  const condition = await waitFor('the node agent to report DesiredStateSuspect', async () => {
    const c = (JSON.parse((await (await adminClient()).hget('ns8ctl/node/1/agent', 'conditions')) ?? '[]') as { type: string; status: string; reason: string }[]).find((x) => x.type === 'DesiredStateSuspect');
    return c?.status === 'True' ? c : undefined;
  }, 30_000);
  expect(['EpochMissing', 'DesiredStateEmpty']).toContain(condition.reason);
  await waitFor('the refusal logged', () => parseJsonLines(agent.lines.slice(from)).some((l) => String(l.msg).includes('DesiredStateSuspect')), 30_000);
  const events = await runBin(['events', '-o', 'json'], env);
  expect((JSON.parse(events.stdout) as { items: { name: string }[] }).items.map((e) => e.name)).toContain('desired-state-suspect');
  expect(await instanceFacts()).toEqual(before);
  // The manifests applied again make a new desired-state lineage: still refused, nothing touched.
  await apply();
  await waitFor('the node agent to refuse the new epoch', async () => {
    const c = (JSON.parse((await (await adminClient()).hget('ns8ctl/node/1/agent', 'conditions')) ?? '[]') as { type: string; status: string; reason: string }[]).find((x) => x.type === 'DesiredStateSuspect');
    return c?.status === 'True' && c.reason === 'EpochChanged';
  }, 30_000);
  expect(await (await adminClient()).exists(keys.moduleStatus(ID))).toBe(0);
  expect(await instanceFacts()).toEqual(before);
  // The operator confirms; the same instance (same user, same home) converges again.
  const accept = await new ProcessRunner(1000, undefined, env).run([process.execPath, entry, JSON.stringify({ node: '1', acceptDesiredState: true }), JSON.stringify(layout)], { allowFailure: true, timeoutMs: 60_000 });
  expect(accept).toMatchObject({ exitCode: 0, stdout: expect.stringContaining('desired state accepted') });
  expect(existsSync(path.join(layout.agentStateDir, 'epoch.json'))).toBe(true);
  await waitFor('the instance converged under the accepted desired state', converged, 60_000);
  expect(await instanceFacts()).toEqual(before);
  expect(removalsLogged(agent.lines)).toEqual([]);
}, 180_000);
