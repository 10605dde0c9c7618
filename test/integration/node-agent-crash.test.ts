/**
 * Crash safety: the node agent is killed with SIGKILL (its whole process group, as systemd's
 * KillMode=control-group does) at random points of a create and of a removal, at least 20 times.
 * After each kill, the next run converges, and once an instance is removed nothing of it is left:
 * no Unix user or process, no port range, no ACL user, no module keys, no record, no UI dir, no
 * extraction container. Real Redis, podman, registry and useradd; the agent runs as a separate
 * Node process (its sources transpiled on the fly, no build needed).
 * NS8CTL_CRASH_RUNS sets the number of kills (default 24); NS8CTL_CRASH_SEED the random seed.
 */
import { spawn } from 'node:child_process';
import { promises as fs, existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import type { Redis } from 'ioredis';
import { ProcessRunner } from '../../src/host/runner.js';
import { createNodeAgentDeps, type NodeAgentDeps } from '../../src/node-agent/deps.js';
import type { HostLayout } from '../../src/node-agent/layout.js';
import { reconcileNodeOnce } from '../../src/node-agent/reconcile.js';
import { keys } from '../../src/state/keys.js';
import { seededRandom } from '../support/chaos.js';
import type { ExampleImages } from '../support/example-images.js';
import { removeTestUsers } from '../support/host-podman.js';
import type { TestRedis } from '../support/redis-server.js';
import type { TestRegistry } from '../support/registry.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import { putDesiredModule } from '../support/desired-module.js';
import { startNodeAgentTestHost, stopNodeAgentTestHost } from '../support/node-agent-host.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const RUNS = Number(process.env.NS8CTL_CRASH_RUNS ?? 24);
const startSeed = Number(process.env.NS8CTL_CRASH_SEED ?? Date.now() % 100000);
const random = seededRandom(startSeed);

/** Transpiles `entry` and every relative import it reaches into `outDir` (same relative paths, .js). */
async function transpileTree(entries: string[], outDir: string): Promise<void> {
  const seen = new Set<string>();
  const queue = [...entries];
  while (queue.length) {
    const file = queue.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    const src = await fs.readFile(file, 'utf8');
    const out = ts.transpileModule(src, { fileName: file, compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 } }).outputText;
    const dest = path.join(outDir, path.relative(repo, file)).replace(/\.ts$/, '.js');
    await fs.mkdir(path.dirname(dest), { recursive: true });
    await fs.writeFile(dest, out);
    for (const m of src.matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)\.js'/g)) queue.push(path.resolve(path.dirname(file), `${m[1]}.ts`));
  }
}

const host = new ProcessRunner();
let redis: TestRedis;
let admin: Redis;
let registry: TestRegistry;
let images: ExampleImages;
let root: string;
let build: string;
let layout: HostLayout;
let deps: NodeAgentDeps;
const ids = new Set<string>();

/**
 * Runs the agent once in a child process. With `killAfterMs`, the whole process group is killed
 * that long after the child reports it starts reconciling (so Node's own start-up time does not
 * eat the random kill points). Returns how it ended and how long the reconcile ran.
 */
async function childRun(killAfterMs: number | undefined): Promise<{ end: 'killed' | 'finished'; workMs: number }> {
  const cfg = JSON.stringify({ url: redis.url, layout, opts: { node: 1, insecureRegistries: [registry.address] } });
  const child = spawn(process.execPath, [path.join(build, 'crash-child.mjs'), cfg], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (b: Buffer) => (stderr += b.toString()));
  let started = 0;
  const ready = new Promise<void>((r) => child.stdout?.on('data', (b: Buffer) => b.toString().includes('ready') && ((started = Date.now()), r())));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  if (killAfterMs === undefined) {
    const code = await exited;
    if (code !== 0) throw new Error(`node agent child exited ${code}: ${stderr}`);
    return { end: 'finished', workMs: Date.now() - started };
  }
  await Promise.race([ready, exited]);
  const outcome = await Promise.race([exited.then(() => 'finished' as const), new Promise<'kill'>((r) => setTimeout(() => r('kill'), killAfterMs))]);
  if (outcome === 'finished') return { end: 'finished', workMs: Date.now() - started };
  try {
    process.kill(-child.pid!, 'SIGKILL');
  } catch {
    /* already gone */
  }
  await exited;
  return { end: 'killed', workMs: Date.now() - started };
}

async function putModule(id: string, removalPolicy: 'Preserve' | 'Delete'): Promise<void> {
  ids.add(id);
  await putDesiredModule(admin, id, { node: 1, image: images.webapp['1.0.0'], removalPolicy }, { source: 'crash.yaml', uuid: { set: '11111111-2222-4333-8444-555555555555' }, node: 1 });
}

/** Steps the run after each kill still had to apply: shows where the kills landed. */
const remaining: number[] = [];

async function converge(): Promise<void> {
  // The run after a crash, in-process: it must end clean, and the next one must do nothing.
  const first = await reconcileNodeOnce({ node: 1 }, deps);
  for (const i of first.instances) if (i.error) throw new Error(`${i.id}: ${i.error.message}`);
  remaining.push(first.instances.reduce((n, i) => n + i.applied.length, 0));
  const second = await reconcileNodeOnce({ node: 1 }, deps);
  expect(second.instances.filter((i) => i.outcome !== 'unchanged').map((i) => `${i.id}: ${i.outcome} ${i.applied.map((s) => s.kind).join(',')}`)).toEqual([]);
}

async function expectNothingLeft(id: string, policy: 'Preserve' | 'Delete'): Promise<void> {
  expect((await fs.readFile('/etc/passwd', 'utf8')).split('\n').some((l) => l.startsWith(`${id}:`))).toBe(false);
  expect((await host.run(['pgrep', '-f', `ns8ctl-extract-${id}`], { allowFailure: true })).stdout).toBe('');
  expect(Object.keys(await admin.hgetall(keys.nodePorts(1))).filter((f) => f.startsWith(`${id}/`))).toEqual([]);
  expect(((await admin.call('ACL', 'LIST')) as string[]).filter((l) => l.startsWith(`user module/${id} `))).toEqual([]);
  expect((await admin.smembers('cluster/acls')).filter((l) => l.startsWith(`user module/${id} `))).toEqual([]);
  expect(await admin.keys(`module/${id}/*`)).toEqual([]);
  const defaults = await admin.keys('*/default_instance/*');
  expect(defaults.length ? (await admin.mget(...defaults)).filter((v) => v === id) : []).toEqual([]);
  expect(await admin.exists(keys.desired('Module', id), keys.moduleStatus(id))).toBe(0);
  expect(await admin.hget(keys.tcpPortsDemand(), id)).toBeNull();
  expect(existsSync(path.join(layout.agentStateDir, 'instances', `${id}.json`))).toBe(false);
  expect(existsSync(path.join(layout.uiBase, id))).toBe(false);
  expect(existsSync(`${path.join(layout.uiBase, id)}.ns8ctl-new`)).toBe(false);
  expect(existsSync(path.join(layout.homeBase, id))).toBe(policy === 'Preserve');
}

beforeAll(async () => {
  ({ redis, registry, images, admin, root } = await startNodeAgentTestHost('ns8ctl-node-agent-crash-'));
  layout = tempHostLayout(root);
  deps = createNodeAgentDeps({ node: 1, insecureRegistries: [registry.address] }, { redis: admin, runner: new ProcessRunner(), layout, log: () => undefined });
  // Inside node_modules so the child resolves ioredis/execa from the project; removed afterwards.
  build = path.join(repo, 'node_modules', `.ns8ctl-crash-${process.pid}`);
  await transpileTree([path.join(repo, 'src/node-agent/reconcile.ts'), path.join(repo, 'src/node-agent/deps.ts'), path.join(repo, 'src/host/runner.ts')], build);
  await fs.writeFile(
    path.join(build, 'crash-child.mjs'),
    `import { Redis } from 'ioredis';
import { ProcessRunner } from './src/host/runner.js';
import { createNodeAgentDeps } from './src/node-agent/deps.js';
import { reconcileNodeOnce } from './src/node-agent/reconcile.js';
const cfg = JSON.parse(process.argv[2]);
const redis = new Redis(cfg.url);
const deps = createNodeAgentDeps(cfg.opts, { redis, runner: new ProcessRunner(), layout: cfg.layout, log: () => {} });
await redis.ping();
process.stdout.write('ready\\n');
await reconcileNodeOnce(cfg.opts, deps);
redis.disconnect();
`,
  );
}, 300_000);

afterAll(async () => {
  await removeTestUsers(ids);
  if (build) await fs.rm(build, { recursive: true, force: true });
  await stopNodeAgentTestHost({ redis, registry, root });
}, 120_000);

test(`kill -9 at random points of create and removal (${RUNS} kills): every next run converges and nothing leaks`, async () => {
  process.stderr.write(`node-agent crash test: seed ${startSeed} (NS8CTL_CRASH_SEED=${startSeed} replays it)\n`);
  // Calibrate: how long one full create and one full removal take here, uninterrupted.
  const cal = `webapp${process.pid % 1000}0`;
  await putModule(cal, 'Delete');
  const createMs = (await childRun(undefined)).workMs;
  await converge();
  await admin.hset(keys.desired('Module', cal), 'deleting', '{"removalPolicy":"Delete"}');
  const removeMs = (await childRun(undefined)).workMs;
  await converge();
  await expectNothingLeft(cal, 'Delete');

  let kills = 0;
  for (let run = 1; kills < RUNS && run <= RUNS * 3; run++) {
    const id = `webapp${process.pid % 1000}${run}`;
    const policy = run % 3 === 0 ? 'Preserve' : 'Delete';
    await putModule(id, policy);
    // Kill somewhere in the create.
    if ((await childRun(Math.floor(random() * createMs * 1.1))).end === 'killed') kills++;
    await converge();
    expect((await admin.hget(keys.desired('Module', id), 'finalizers')) ?? '').toContain('node-agent');
    await admin.hset(keys.desired('Module', id), 'deleting', JSON.stringify({ removalPolicy: policy }));
    if ((await childRun(Math.floor(random() * removeMs * 1.1))).end === 'killed') kills++;
    await converge();
    await expectNothingLeft(id, policy);
  }
  expect(kills).toBeGreaterThanOrEqual(RUNS);
  process.stderr.write(`node-agent crash test: create ${createMs} ms, removal ${removeMs} ms uninterrupted; ${kills} kills; steps left to the next run after each: ${remaining.join(' ')}\n`);
  // The node as a whole: nothing of any instance is left.
  expect(await admin.hgetall(keys.nodePorts(1))).toEqual({});
  expect(((await admin.call('ACL', 'LIST')) as string[]).filter((l) => l.startsWith('user module/'))).toEqual([]);
  expect(await fs.readdir(path.join(layout.agentStateDir, 'instances'))).toEqual([]);
  expect(await admin.scard(keys.desiredIndex('Module'))).toBe(0);
}, 1_800_000);
