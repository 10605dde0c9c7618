/**
 * `ns8ctl recover` on a real redis-server and a host layout in a temp dir (node agent records and
 * environment files as the agent leaves them): a wiped desired state comes back as Modules whose
 * manifests validate, with the NS8 bookkeeping the host knows; a second run changes nothing;
 * --dry-run and a missing --yes write nothing; environment secrets are never printed. And on the
 * real host (useradd, podman, registry on loopback): an instance the node agent made survives a
 * FLUSHALL plus recover, and the agent's next passes neither remove nor re-create it.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import type { CliDeps } from '../../src/cli/deps.js';
import { recoverCommand, type RecoverOptions } from '../../src/cli/commands/recover.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { renderEnvironment } from '../../src/node-agent/environment-file.js';
import { instancePaths, type HostLayout } from '../../src/node-agent/layout.js';
import { writeHostEpoch } from '../../src/node-agent/desired-state-guard.js';
import { RecordStore } from '../../src/node-agent/records.js';
import { createNodeAgentDeps, type NodeAgentDeps, type NodeAgentOptions } from '../../src/node-agent/deps.js';
import { reconcileNodeOnce, type InstanceResult } from '../../src/node-agent/reconcile.js';
import { keys } from '../../src/state/keys.js';
import { runCli } from '../support/cli.js';
import { ensureExampleImages } from '../support/example-images.js';
import { preparePodmanHost, removeTestUsers } from '../support/host-podman.js';
import { startRegistry, type TestRegistry } from '../support/registry.js';
import { dumpRedis } from '../support/redis-dump.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { tempHostLayout } from '../support/node-agent-layout.js';

const SECRET = 'Db-Secret-5e1f0a';
const WEBAPP = '127.0.0.1:5000/ns8ctl-fixtures/webapp:1.1.0';
const DOKU = 'ghcr.io/nethserver/dokuwiki:1.2.3';

let srv: TestRedis;
let redis: Redis;
let root: string;
let layout: HostLayout;

beforeAll(async () => {
  srv = await startRedis();
  redis = srv.client();
});
afterAll(async () => {
  await srv.stop();
});
beforeEach(async () => {
  await redis.flushall();
  root = mkdtempSync(path.join(tmpdir(), 'ns8ctl-recover-'));
  layout = tempHostLayout(root, { passwdFile: path.join(root, 'passwd'), subuidFile: path.join(root, 'subuid'), subgidFile: path.join(root, 'subgid') });
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

/** What the node agent leaves on a host for one instance: its record and state/environment. */
async function instance(id: string, rootfull: boolean, env: Record<string, string>, record: Record<string, unknown> = {}): Promise<void> {
  await new RecordStore(layout.agentStateDir).update(id, { rootfull, imageUrl: env.IMAGE_URL, node: 1, ...record });
  const dir = instancePaths(layout, id, rootfull).stateDir;
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'environment'), renderEnvironment(id, env));
}

/** The host of node 1: webapp3 (rootless, 2 TCP ports, a secret its actions wrote) and dokuwiki1 (rootfull, 1 UDP port). */
async function host(): Promise<void> {
  await instance('webapp3', false, { MODULE_ID: 'webapp3', NODE_ID: '1', MODULE_UUID: '7b0b1e8e-0f5c-4a57-9d39-6f1f2a7d6c11', IMAGE_URL: WEBAPP, TCP_PORT: '20001', TCP_PORTS: '20001,20002', TCP_PORTS_RANGE: '20001-20002', DB_PASSWORD: SECRET }, { volumeBases: ['/srv/data'] });
  await instance('dokuwiki1', true, { MODULE_ID: 'dokuwiki1', NODE_ID: '1', MODULE_UUID: '0f7c0e0b-3d7e-4c61-8d2a-2b6e1e0d9a55', IMAGE_URL: DOKU, UDP_PORT: '20010', UDP_PORTS: '20010' });
}

function deps(out: { stdout: string; stderr: string }): CliDeps {
  return {
    stdout: (t) => void (out.stdout += t),
    stderr: (t) => void (out.stderr += t),
    env: {},
    isTTY: false,
    runner: new ProcessRunner(),
    connect: async () => ({ redis, url: srv.url, embedded: false }),
    stdin: async () => '',
    cwd: root,
  };
}

async function recover(opts: RecoverOptions): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = { stdout: '', stderr: '' };
  const code = await recoverCommand(opts, deps(out), { layout });
  return { code, ...out };
}

describe('ns8ctl recover', () => {
  test('a wiped desired state comes back from the host: Modules that validate, NS8 bookkeeping, sequences, epoch; a second run changes nothing', async () => {
    await host();
    await writeHostEpoch(layout, { id: 'epoch-7', at: '2026-12-01T00:00:00Z', how: 'adopted' });
    const dir = path.join(root, 'recovered');
    const r = await recover({ yes: true, manifests: dir });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`Module/dokuwiki1: node 1, ${DOKU}, uuid 0f7c0e0b-3d7e-4c61-8d2a-2b6e1e0d9a55; udp 20010-20010`);
    expect(r.stdout).toContain(`Module/webapp3: node 1, ${WEBAPP}, uuid 7b0b1e8e-0f5c-4a57-9d39-6f1f2a7d6c11; tcp 20001-20002; volume dirs under /srv/data`);
    expect(r.stdout).toContain('Node/1: the cluster had no record of it');
    expect(r.stderr).toContain('Recovered 2 instance(s) into apply set "recovered"');
    expect(r.stderr).toContain('Restored the cluster epoch epoch-7');
    expect(r.stdout + r.stderr).not.toContain(SECRET);

    const desired = async (id: string) => redis.hgetall(`ns8ctl/desired/module/${id}`);
    expect(JSON.parse((await desired('webapp3')).object!)).toEqual({ apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: 'webapp3' }, spec: { image: WEBAPP, node: 1, removalPolicy: 'Preserve' } });
    expect(await desired('webapp3')).toMatchObject({ generation: '1', applyset: 'recovered', finalizers: 'node-agent', source: path.join(dir, 'webapp3.yaml') });
    expect(JSON.parse((await desired('dokuwiki1')).object!).spec).toEqual({ image: DOKU, node: 1, removalPolicy: 'Preserve' });
    expect((await redis.smembers('ns8ctl/inventory/recovered')).sort()).toEqual(['Module/dokuwiki1', 'Module/webapp3', 'Node/1']);
    expect(await redis.hgetall('cluster/module_node')).toEqual({ dokuwiki1: '1', webapp3: '1' });
    expect(await redis.hgetall('cluster/module_uuid')).toEqual({ webapp3: '7b0b1e8e-0f5c-4a57-9d39-6f1f2a7d6c11', dokuwiki1: '0f7c0e0b-3d7e-4c61-8d2a-2b6e1e0d9a55' });
    expect(await redis.get('cluster/module_sequence/webapp')).toBe('3');
    expect(await redis.get('cluster/module_sequence/dokuwiki')).toBe('1');
    expect(await redis.hget('module/webapp3/environment', 'DB_PASSWORD')).toBe(SECRET);
    expect(await redis.hgetall('ns8ctl/node/1/ports')).toEqual({ 'webapp3/tcp': '20001-20002', 'dokuwiki1/udp': '20010-20010' });
    expect(JSON.parse((await redis.get('ns8ctl/cluster/epoch'))!)).toEqual({ id: 'epoch-7', created: '2026-12-01T00:00:00Z' });

    // The manifests validate and match desired state: applying them changes nothing.
    expect(readdirSync(dir).sort()).toEqual(['dokuwiki1.yaml', 'node1.yaml', 'webapp3.yaml']);
    expect(readFileSync(path.join(dir, 'webapp3.yaml'), 'utf8')).toContain('# recovered from node 1 (rootless');
    const env = { NS8CTL_REDIS_URL: srv.url, NS8CTL_STATE_DIR: path.join(root, '.state') };
    expect((await runCli(['validate', '-f', dir], env)).code).toBe(0);
    expect((await runCli(['diff', '-f', dir, '--applyset', 'recovered'], env)).code).toBe(0);

    const before = await dumpRedis(redis);
    const again = await recover({ yes: true });
    expect(again.code).toBe(0);
    expect(again.stderr).toContain('Nothing to recover');
    expect(again.stdout).toContain('skipped webapp3: already in desired state');
    expect(await dumpRedis(redis)).toEqual(before);
  });

  test('--dry-run and a missing --yes print the recovery and write nothing, not even the manifests', async () => {
    await host();
    const dir = path.join(root, 'out');
    const dry = await recover({ dryRun: true, manifests: dir });
    expect(dry.code).toBe(0);
    expect(dry.stdout).toContain('+ Module/webapp3');
    expect(dry.stderr).toContain('Dry run: 2 instance(s) would be recovered');
    await expect(recover({ manifests: dir })).rejects.toMatchObject({ code: 'confirmation_required' });
    const json = await recover({ output: 'json' });
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({ dryRun: true, refused: { error: 'confirmation_required' }, instances: [{ id: 'dokuwiki1' }, { id: 'webapp3' }] });
    expect(await redis.keys('*')).toEqual([]);
    expect(() => readdirSync(dir)).toThrow();
  });

  test('instances being removed, made on another node or without an image are left out and said why; a manifest in the way refuses everything', async () => {
    await host();
    await instance('gone1', false, { MODULE_ID: 'gone1', IMAGE_URL: WEBAPP }, { removing: { removalPolicy: 'Preserve' } });
    await instance('other1', false, { MODULE_ID: 'other1', IMAGE_URL: WEBAPP }, { node: 2 });
    await instance('half1', false, { MODULE_ID: 'half1' }, { imageUrl: undefined });
    await redis.hset('node/1/vpn', 'ip_address', '10.5.4.1');
    await redis.set('cluster/node_sequence', '1');
    // An epoch another agent or operator set since the loss is left alone.
    await writeHostEpoch(layout, { id: 'epoch-old', at: '2026-11-01T00:00:00Z', how: 'adopted' });
    await redis.set('ns8ctl/cluster/epoch', JSON.stringify({ id: 'epoch-new', created: '2026-12-05T00:00:00Z' }));
    const dir = path.join(root, 'm');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'webapp3.yaml'), 'mine\n');
    await expect(recover({ node: '1', yes: true, manifests: dir })).rejects.toMatchObject({ code: 'recover_file_exists' });
    expect(await redis.keys('ns8ctl/*')).toEqual(['ns8ctl/cluster/epoch']);

    const r = await recover({ node: '1', yes: true, output: 'json' });
    const doc = JSON.parse(r.stdout) as { instances: { id: string }[]; skipped: { id: string; why: string }[]; items: { kind: string }[]; epoch: unknown };
    expect(doc.epoch).toEqual({ id: 'epoch-old', result: 'other' });
    expect(JSON.parse((await redis.get('ns8ctl/cluster/epoch'))!)).toMatchObject({ id: 'epoch-new' });
    expect(doc.instances.map((i) => i.id)).toEqual(['dokuwiki1', 'webapp3']);
    // Node 1 has an NS8 record: no Node object is made.
    expect(doc.items.map((i) => i.kind)).toEqual(['Module', 'Module']);
    expect(doc.skipped).toEqual([
      { id: 'gone1', why: 'the node agent had started removing it' },
      { id: 'half1', why: `no IMAGE_URL in ${path.join(layout.homeBase, 'half1', '.config', 'state', 'environment')} and no image in the node agent record` },
      { id: 'other1', why: 'made on node 2, not on --node 1' },
    ]);
    expect(r.stdout).not.toContain(SECRET);
  });
});

describe('ns8ctl recover on a real host', () => {
  const id = `webapp${process.pid % 10000}7`;
  let registry: TestRegistry;
  let hostRoot: string;
  let agentDeps: NodeAgentDeps;
  let image: string;
  const agentOpts: NodeAgentOptions = { node: 1, concurrency: 2, insecureRegistries: [] };

  beforeAll(async () => {
    await preparePodmanHost();
    registry = await startRegistry();
    const images = await ensureExampleImages(registry.address);
    agentOpts.insecureRegistries = [registry.address];
    hostRoot = mkdtempSync(path.join(tmpdir(), 'ns8ctl-recover-host-'));
    const { chmodSync } = await import('node:fs');
    chmodSync(hostRoot, 0o755);
    mkdirSync(path.join(hostRoot, 'home'), { mode: 0o755 });
    agentDeps = createNodeAgentDeps(agentOpts, { redis, runner: new ProcessRunner(), layout: tempHostLayout(hostRoot), log: () => undefined, delay: async () => undefined });
    image = images.webapp['1.0.0'];
  }, 300_000);

  afterAll(async () => {
    await removeTestUsers([id]);
    await registry?.stop();
    if (hostRoot) rmSync(hostRoot, { recursive: true, force: true });
  }, 120_000);

  const pass = async (): Promise<InstanceResult> => (await reconcileNodeOnce(agentOpts, agentDeps)).instances.find((i) => i.id === id)!;

  test('an instance the agent made survives FLUSHALL + recover: the next passes neither remove nor re-create it', async () => {
    const object = JSON.stringify({ apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: id }, spec: { image, node: 1 } });
    await redis.hset(keys.desired('Module', id), { object, generation: '1', source: 'test.yaml', revision: '', applyset: 'default' });
    await redis.sadd(keys.desiredIndex('Module'), id);
    await redis.hset(keys.moduleUuid(), id, '00000000-0000-4000-8000-000000000007');
    await redis.hset(keys.moduleNode(), id, '1');
    expect((await pass()).outcome).toBe('converged');
    expect((await pass()).outcome).toBe('unchanged');
    const uid = (await import('node:fs')).statSync(path.join(hostRoot, 'home', id)).uid;

    await redis.flushall();
    const out = { stdout: '', stderr: '' };
    expect(await recoverCommand({ yes: true }, deps(out), { layout: tempHostLayout(hostRoot) })).toBe(0);
    expect(out.stdout).toContain(`Module/${id}: node 1`);
    expect(await redis.hget(keys.moduleUuid(), id)).toBe('00000000-0000-4000-8000-000000000007');

    // Only Redis bookkeeping the agent derives from the image labels itself is written again:
    // no user, image, file, port or unit is touched.
    const after = await pass();
    expect(after.error?.message).toBeUndefined();
    expect(after.outcome).not.toBe('removed');
    expect(after.applied.map((s) => s.kind)).toEqual(['set-ports-demand', 'set-flags', 'set-authorizations']);
    expect((await pass()).outcome).toBe('unchanged');
    expect((await import('node:fs')).statSync(path.join(hostRoot, 'home', id)).uid).toBe(uid);
  }, 300_000);
});
