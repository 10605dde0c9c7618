/**
 * A Module created with `spec.cloneFrom`, carried out by the node agent on this host: real
 * redis-server, podman, useradd and rsync (the source's live pass and final pass into the new
 * instance's receiver on the node's address). The copy gets the source's data, owned by its own
 * user, and the source's environment with its own identity; the source keeps running and keeps
 * its data; the clone record and the receiver's password are gone once the copy runs. A clone of
 * an instance the cluster does not have is refused before anything is created, and a clone
 * deleted half-way leaves no record or receiver behind.
 */
import { promises as fs, statSync } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { ProcessRunner } from '../../src/host/runner.js';
import { createNodeAgentDeps, type NodeAgentDeps, type NodeAgentOptions } from '../../src/node-agent/deps.js';
import type { InstanceResult } from '../../src/node-agent/reconcile.js';
import { parseEnvironment } from '../../src/node-agent/environment-file.js';
import { StateTransfer } from '../../src/node-agent/backup/transfer.js';
import { CLONES_KEY, MOVE_SECRETS_KEY } from '../../src/node-agent/move/record.js';
import { readEvents } from '../../src/state/events.js';
import { keys } from '../../src/state/keys.js';
import type { ExampleImages } from '../support/example-images.js';
import { removeTestUsers } from '../support/host-podman.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import { putDesiredModule } from '../support/desired-module.js';
import { reconcileById, startNodeAgentTestHost, stopNodeAgentTestHost, type NodeAgentTestHost } from '../support/node-agent-host.js';

const suffix = String(process.pid % 10000);
const source = `webapp${suffix}31`;
const copy = `webapp${suffix}32`;
const dropped = `webapp${suffix}33`;
const SOURCE_UUID = '31313131-2222-4333-8444-555555555555';
const COPY_UUID = '32323232-2222-4333-8444-555555555555';
let host: NodeAgentTestHost;
let admin: Redis;
let images: ExampleImages;
let root: string;
let deps: NodeAgentDeps;
let opts: NodeAgentOptions;
const runner = new ProcessRunner(100_000);
const reconcile = (): Promise<Map<string, InstanceResult>> => reconcileById(opts, deps);

/** Passes until `id` converges (each pass advances the transfer one state on each side), at most `max`. */
async function reconcileUntilConverged(id: string, max = 10): Promise<InstanceResult[]> {
  const seen: InstanceResult[] = [];
  for (let i = 0; i < max; i++) {
    const r = (await reconcile()).get(id);
    if (r) seen.push(r);
    if (r?.outcome === 'converged' || r?.outcome === 'unchanged') return seen;
  }
  throw new Error(`${id} did not converge in ${max} passes: ${seen.map((r) => `${r.outcome} ${r.error?.message ?? ''}`).join(' | ')}`);
}

const home = (id: string): string => path.join(root, 'home', id);
const stateDir = (id: string): string => path.join(home(id), '.config', 'state');
const forget = async (id: string): Promise<void> => {
  await admin.multi().del(keys.desired('Module', id)).srem(keys.desiredIndex('Module'), id).exec();
};

beforeAll(async () => {
  host = await startNodeAgentTestHost('ns8ctl-clone-');
  ({ images, admin, root } = host);
  opts = { node: 1, concurrency: 2, insecureRegistries: [host.registry.address] };
  deps = createNodeAgentDeps(opts, { redis: admin, runner, layout: tempHostLayout(root, { uiBase: path.join(root, 'ui', 'apps') }), log: () => undefined, delay: async () => undefined });
  // The receiver listens on the node's address, as NS8's rsync port does on the VPN address.
  await admin.hset(keys.nodeVpn(1), 'ip_address', '127.0.0.1');
  await putDesiredModule(admin, source, { image: images.webapp['1.0.0'], node: 1, removalPolicy: 'Delete' }, { uuid: { set: SOURCE_UUID }, node: 1 });
  expect((await reconcile()).get(source)?.outcome).toBe('converged');
  const { uid, gid } = statSync(home(source));
  await fs.mkdir(path.join(stateDir(source), 'data'), { recursive: true });
  await fs.writeFile(path.join(stateDir(source), 'data', 'notes.txt'), 'written in the source\n');
  await fs.appendFile(path.join(stateDir(source), 'environment'), 'CUSTOM_SETTING=from-the-source\n');
  await admin.hset(keys.moduleEnvironment(source), 'CUSTOM_SETTING', 'from-the-source');
  await runner.run(['chown', '-R', `${uid}:${gid}`, stateDir(source)]);
}, 300_000);

afterAll(async () => {
  for (const id of [copy, dropped, source]) await forget(id).catch(() => undefined);
  await removeTestUsers([copy, dropped, source]);
  await stopNodeAgentTestHost(host);
}, 120_000);

test('a new Module with cloneFrom gets the source data and environment under its own identity; the source keeps running with its data', async () => {
  await putDesiredModule(admin, copy, { image: images.webapp['1.0.0'], node: 1, removalPolicy: 'Delete', cloneFrom: source }, { uuid: { set: COPY_UUID }, node: 1 });
  const seen = await reconcileUntilConverged(copy);
  // Until the data arrived, the copy reported it was cloning (not a failure).
  expect(seen.filter((r) => r.outcome === 'blocked').every((r) => r.error?.code === 'move_in_progress')).toBe(true);
  const kinds = seen.flatMap((r) => r.applied.map((s) => s.kind));
  expect(kinds).toEqual(expect.arrayContaining(['receive-state', 'finish-receive', 'complete-move']));
  expect(kinds.indexOf('finish-receive')).toBeLessThan(kinds.indexOf('write-environment'));

  const notes = path.join(stateDir(copy), 'data', 'notes.txt');
  expect(await fs.readFile(notes, 'utf8')).toBe('written in the source\n');
  expect(statSync(notes).uid).toBe(statSync(home(copy)).uid);
  expect(statSync(home(copy)).uid).not.toBe(statSync(home(source)).uid);
  const env = parseEnvironment(await fs.readFile(path.join(stateDir(copy), 'environment'), 'utf8'));
  expect(env.CUSTOM_SETTING).toBe('from-the-source');
  expect(env.MODULE_ID).toBe(copy);
  expect(env.MODULE_UUID).toBe(COPY_UUID);
  expect(await admin.hget(keys.moduleEnvironment(copy), 'MODULE_UUID')).toBe(COPY_UUID);

  // The source is untouched: its data, its identity, its status.
  expect(await fs.readFile(path.join(stateDir(source), 'data', 'notes.txt'), 'utf8')).toBe('written in the source\n');
  expect(parseEnvironment(await fs.readFile(path.join(stateDir(source), 'environment'), 'utf8')).MODULE_UUID).toBe(SOURCE_UUID);
  // (No systemd on this host: converged means everything but the started units is in place.)
  expect(JSON.parse((await admin.hget(keys.moduleStatus(source), 'conditions')) ?? '[]')).toEqual(expect.arrayContaining([expect.objectContaining({ type: 'Progressing', reason: 'HostConverged' })]));

  // Nothing of the transfer is left: record, password, receiver.
  expect(await admin.hexists(CLONES_KEY, copy)).toBe(0);
  expect(await admin.hexists(MOVE_SECRETS_KEY, copy)).toBe(0);
  expect(await new StateTransfer(runner).receiverAlive(copy)).toBe(false);
  const events = (await readEvents(admin, 50)).filter((e) => e.name === 'module-cloned');
  expect(events).toEqual([expect.objectContaining({ object: `Module/${copy}`, data: expect.objectContaining({ source, from: 1, to: 1 }) })]);

  // Done once: the next pass copies nothing again.
  await fs.writeFile(notes, 'edited in the copy\n');
  const again = await reconcile();
  expect(again.get(copy)?.applied.map((s) => s.kind) ?? []).not.toContain('receive-state');
  expect(await fs.readFile(notes, 'utf8')).toBe('edited in the copy\n');
}, 600_000);

test('cloneFrom naming an instance the cluster does not have is refused before anything is created', async () => {
  const ghost = `webapp${suffix}34`;
  try {
    await putDesiredModule(admin, dropped, { image: images.webapp['1.0.0'], node: 1, cloneFrom: ghost }, { uuid: { set: '33333333-2222-4333-8444-555555555555' }, node: 1 });
    const r = (await reconcile()).get(dropped)!;
    expect(r.outcome).toBe('blocked');
    expect(r.error?.code).toBe('clone_unavailable');
    expect(r.error?.message).toContain(`${ghost}, which is not an instance of the cluster`);
    expect((await fs.readFile('/etc/passwd', 'utf8')).split('\n').some((l) => l.startsWith(`${dropped}:`))).toBe(false);
    expect(await admin.hexists(CLONES_KEY, dropped)).toBe(0);
  } finally {
    await forget(dropped);
  }
}, 120_000);

test('a clone deleted while it receives leaves no record, password or receiver behind, and the source runs on', async () => {
  await putDesiredModule(admin, dropped, { image: images.webapp['1.0.0'], node: 1, removalPolicy: 'Delete', cloneFrom: source }, { uuid: { set: '33333333-2222-4333-8444-555555555555' }, node: 1 });
  // Passes until the copy's receiver listens (the source has listed its data, the copy started receiving).
  for (let i = 0; i < 6 && JSON.parse((await admin.hget(CLONES_KEY, dropped)) ?? '{}').state !== 'receiving'; i++) await reconcile();
  expect(JSON.parse((await admin.hget(CLONES_KEY, dropped)) ?? '{}')).toMatchObject({ state: 'receiving', source, from: 1, to: 1 });
  expect(await new StateTransfer(runner).receiverAlive(dropped)).toBe(true);

  await admin.hset(keys.desired('Module', dropped), 'deleting', JSON.stringify({ removalPolicy: 'Delete' }));
  const r = await reconcile();
  expect(r.get(dropped)?.outcome).toBe('removed');
  expect(await admin.hexists(CLONES_KEY, dropped)).toBe(0);
  expect(await admin.hexists(MOVE_SECRETS_KEY, dropped)).toBe(0);
  expect(await new StateTransfer(runner).receiverAlive(dropped)).toBe(false);
  await expect(fs.stat(home(dropped))).rejects.toThrow();
  expect(r.get(source)?.outcome === 'failed').toBe(false);
  expect(await fs.readFile(path.join(stateDir(source), 'data', 'notes.txt'), 'utf8')).toBe('written in the source\n');
}, 600_000);
