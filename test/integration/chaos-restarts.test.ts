/**
 * Restart chaos on real components: the embedded redis-server with the product's persistence, the
 * controller (`ns8ctl controller -f DIR --prune`) and the node agent (the CLI's `node-agent`
 * command body, host layout in a temp dir) run as separate processes; real useradd, rootless
 * podman and the example images in a loopback registry. Each round edits the manifests directory
 * (create an instance, update its image, change its configuration, remove it), and at a random
 * point of the convergence that follows stops one component with SIGTERM or SIGKILL and starts it
 * again. Then the cluster must converge to exactly the manifests, no instance the manifests keep
 * may have been removed, and nothing of a removed instance may be left.
 *
 * CHAOS_ROUNDS sets the number of rounds (default 6: two restarts per component); CHAOS_SEED
 * replays a run; CHAOS_COMPONENTS (e.g. `controller,node-agent`) restricts what is restarted. `npm run build` first: the components run from dist/.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { HostLayout } from '../../src/node-agent/layout.js';
import { canonicalize } from '../../src/runtime/canonical.js';
import { keys } from '../../src/state/keys.js';
import type { EmbeddedRedis} from '../support/chaos.js';
import { BIN, workspaceAdmin, componentProcess, findLeaks, removalsLogged, seededRandom, userIdentity, hostWorkspace, type ComponentProcess, type StopSignal } from '../support/chaos.js';
import type { ExampleImages } from '../support/example-images.js';
import { removeTestUsers } from '../support/host-podman.js';
import type { TestRegistry } from '../support/registry.js';
import { waitFor } from '../support/wait-for.js';

const ROUNDS = Number(process.env.CHAOS_ROUNDS ?? 6);
const SEED = Number(process.env.CHAOS_SEED ?? Date.now() % 1_000_000);
const random = seededRandom(SEED);
/** CHAOS_COMPONENTS=controller,node-agent restricts the restarts (when chasing one component's bug). */
const COMPONENTS = (process.env.CHAOS_COMPONENTS ?? 'redis,controller,node-agent').split(',').map((c) => {
  if (c !== 'redis' && c !== 'controller' && c !== 'node-agent') throw new Error(`CHAOS_COMPONENTS: unknown component ${JSON.stringify(c)} (redis, controller, node-agent)`);
  return c;
});
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
/** At most this many instances at once: enough for every operation, cheap enough for CI. */
const MAX_LIVE = 3;
/** Bound of one convergence after a restart. */
const CONVERGE_MS = 150_000;
const PREFIX = `webapp7${process.pid}0`;
const TAGS = ['1.0.0', '1.1.0', '2.0.0'] as const;
type Tag = (typeof TAGS)[number];
type Op = 'create' | 'update' | 'configure' | 'remove';
type Component = 'redis' | 'controller' | 'node-agent';

interface Spec {
  image: string;
  node: number;
  removalPolicy: 'Preserve' | 'Delete';
  configuration?: { greeting: string };
}

let registry: TestRegistry;
let images: ExampleImages;
let root: string;
let manifests: string;
let layout: HostLayout;
let env: NodeJS.ProcessEnv;
let redis: EmbeddedRedis;
let controller: ComponentProcess;
let agent: ComponentProcess;
/** What the manifests directory holds: id -> spec, and the tag of each image. */
const live = new Map<string, Spec>();
const tagOf = new Map<string, Tag>();
const policies = new Map<string, 'Preserve' | 'Delete'>();
/** uid + home inode of each kept instance's user when first converged. */
const identity = new Map<string, string>();
const everUsed = new Set<string>();
let nextN = 1;
/** The cluster epoch (`ns8ctl/cluster/epoch`) first seen. */
let epoch: string | undefined;

const admin = workspaceAdmin(() => ({ root, env }), 'chaos-test');
const adminClient = admin.get;
const dropAdmin = admin.drop;

/** Writes one manifest atomically (the controller never reads half a file). */
async function writeManifest(id: string, spec: Spec): Promise<void> {
  const doc = { apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: id }, spec };
  const tmp = path.join(manifests, `.${id}.tmp`);
  await fs.writeFile(tmp, JSON.stringify(doc, null, 2) + '\n');
  await fs.rename(tmp, path.join(manifests, `${id}.yaml`));
}

/** Applies one operation to the manifests directory; returns the instance it concerns. */
async function applyOp(op: Op, round: number): Promise<string> {
  if (op === 'create') {
    const id = `${PREFIX}${nextN++}`;
    const tag: Tag = random() < 0.5 ? '1.0.0' : '1.1.0';
    const spec: Spec = { image: images.webapp[tag], node: 1, removalPolicy: random() < 0.3 ? 'Preserve' : 'Delete' };
    live.set(id, spec);
    tagOf.set(id, tag);
    policies.set(id, spec.removalPolicy);
    everUsed.add(id);
    await writeManifest(id, spec);
    return id;
  }
  if (op === 'update') {
    const id = pick([...live.keys()].filter((i) => tagOf.get(i) !== '2.0.0'));
    const tag = TAGS[TAGS.indexOf(tagOf.get(id)!) + 1]!;
    const spec = { ...live.get(id)!, image: images.webapp[tag] };
    live.set(id, spec);
    tagOf.set(id, tag);
    await writeManifest(id, spec);
    return id;
  }
  if (op === 'configure') {
    const id = pick([...live.keys()]);
    const spec = { ...live.get(id)!, configuration: { greeting: `Hello from round ${round}` } };
    live.set(id, spec);
    await writeManifest(id, spec);
    return id;
  }
  const id = pick([...live.keys()]);
  live.delete(id);
  await fs.rm(path.join(manifests, `${id}.yaml`));
  return id;
}

function possibleOps(): Op[] {
  const ops: Op[] = [];
  if (live.size < MAX_LIVE) ops.push('create');
  if ([...live.keys()].some((i) => tagOf.get(i) !== '2.0.0')) ops.push('update');
  if (live.size > 0) ops.push('configure');
  if (live.size > 1) ops.push('remove');
  return ops;
}

/**
 * Throws, saying what is still different, unless desired state equals the manifests and the node
 * agent converged every kept instance at its generation (no systemd here: `HostConverged`), and
 * nothing of a removed one is left (findLeaks).
 */
async function checkConverged(): Promise<true> {
  const r = await adminClient();
  const index = (await r.smembers(keys.desiredIndex('Module'))).filter((i) => i.startsWith(PREFIX)).sort();
  const want = [...live.keys()].sort();
  if (JSON.stringify(index) !== JSON.stringify(want)) throw new Error(`desired Modules ${index.join(',')} but the manifests hold ${want.join(',')}`);
  for (const id of everUsed) {
    if (live.has(id)) continue;
    if (await r.exists(keys.desired('Module', id))) throw new Error(`${id}: desired object still there (removal not finished)`);
  }
  for (const [id, spec] of live) {
    const h = await r.hgetall(keys.desired('Module', id));
    if (!h.object) throw new Error(`${id}: no desired object`);
    const stored = (JSON.parse(h.object) as { spec: unknown }).spec;
    if (JSON.stringify(canonicalize(stored)) !== JSON.stringify(canonicalize(spec))) throw new Error(`${id}: desired spec ${JSON.stringify(stored)} differs from the manifest ${JSON.stringify(spec)}`);
    if (h.deleting) throw new Error(`${id}: marked for deletion although the manifests keep it: ${h.deleting}`);
    const st = await r.hgetall(keys.moduleStatus(id));
    if (st.observedGeneration !== h.generation) throw new Error(`${id}: status at generation ${st.observedGeneration ?? '-'}, desired ${h.generation}`);
    if (st.imageUrl !== spec.image) throw new Error(`${id}: runs ${st.imageUrl}, desired ${spec.image}`);
    const conditions = JSON.parse(st.conditions ?? '[]') as { type: string; status: string; reason: string }[];
    const ready = conditions.find((c) => c.type === 'Ready');
    const progressing = conditions.find((c) => c.type === 'Progressing');
    if (ready?.status !== 'True' && progressing?.reason !== 'HostConverged') throw new Error(`${id}: not converged: ${JSON.stringify(conditions)}`);
  }
  // What removed instances leave is cleaned up by several components, each in its own time (the
  // controller drops its summary on its next look): only what is still there at the bound leaks.
  const leaks = await findLeaks(r, layout, { node: 1, prefix: PREFIX, keep: new Set(live.keys()), removalPolicies: policies });
  if (leaks.length) throw new Error(`left behind by removed instances: ${leaks.join('; ')}`);
  return true;
}

/** Where the cluster was when the restart hit, for the operation on `id`. */
async function phaseOf(op: Op, id: string): Promise<string> {
  try {
    const r = await adminClient();
    const h = await r.hgetall(keys.desired('Module', id));
    if (op === 'remove') {
      if (!h.object) return 'removed';
      return h.deleting ? 'removing' : 'desired-not-written';
    }
    const spec = live.get(id)!;
    if (!h.object || JSON.stringify(canonicalize((JSON.parse(h.object) as { spec: unknown }).spec)) !== JSON.stringify(canonicalize(spec))) return 'desired-not-written';
    const st = await r.hgetall(keys.moduleStatus(id));
    if (st.observedGeneration !== h.generation) return 'agent-not-started';
    return st.imageUrl === spec.image && /HostConverged|"Ready","status":"True"/.test(st.conditions ?? '') ? 'converged' : 'agent-working';
  } catch {
    return 'unknown';
  }
}

async function restart(component: Component, signal: StopSignal): Promise<void> {
  if (component === 'redis') {
    dropAdmin();
    await redis.stop(signal);
    await redis.start();
  } else {
    const p = component === 'controller' ? controller : agent;
    await p.stop(signal);
    await p.start();
  }
}

/** Violations of the invariants; empty when all hold. */
async function checkInvariants(): Promise<{ leaks: string[]; keptRemoved: string[]; lost: string[] }> {
  const r = await adminClient();
  // Desired state is never lost and rebuilt: the cluster epoch stays the first one, and Redis
  // replayed its whole append-only file at every start.
  const lost: string[] = [];
  const e = await r.get('ns8ctl/cluster/epoch');
  epoch ??= e ?? undefined;
  if (e !== epoch) lost.push(`the cluster epoch changed from ${epoch} to ${e}: desired state was lost and written again`);
  const critical = redis.log().split('\n').filter((l) => l.includes('CRITICAL'));
  if (critical.length) lost.push(`redis-server reported ${critical.length} CRITICAL line(s), the first: ${critical[0]}`);
  const leaks = await findLeaks(r, layout, { node: 1, prefix: PREFIX, keep: new Set(live.keys()), removalPolicies: policies });
  const keptRemoved = removalsLogged(agent.lines)
    .filter((id) => live.has(id))
    .map((id) => `${id}: the node agent logged its removal although the manifests keep it`);
  for (const id of live.keys()) {
    const now = await userIdentity(layout, id);
    const was = identity.get(id);
    if (!now) keptRemoved.push(`${id}: its Unix user is gone`);
    else if (was && was !== now) keptRemoved.push(`${id}: its user was made again (${was} -> ${now})`);
    else identity.set(id, now);
  }
  return { leaks, keptRemoved, lost };
}

beforeAll(async () => {
  let entry: string;
  ({ registry, images, root, manifests, layout, env, redis, agentEntry: entry } = await hostWorkspace('ns8ctl-chaos-'));
  await redis.start();
  controller = componentProcess('controller', [BIN, 'controller', '-f', manifests, '--prune', '--http-port', '0', '--lease', '2s', '--resync', '30s', '--log-format', 'json'], env, /starting controller/, path.join(root, 'controller.log'));
  agent = componentProcess('node-agent', [entry, JSON.stringify({ node: '1', resync: '3', insecureRegistry: [registry.address], logFormat: 'json' }), JSON.stringify(layout)], env, /reconciling node 1/, path.join(root, 'node-agent.log'));
  await controller.start();
  await agent.start();
}, 300_000);

afterAll(async () => {
  await agent?.stop('SIGTERM', 10_000);
  await controller?.stop('SIGTERM', 10_000);
  dropAdmin();
  await removeTestUsers(everUsed);
  if (redis?.pid() !== undefined) await redis.stop('SIGKILL');
  await registry?.stop();
  if (root && !process.env.CHAOS_KEEP) await fs.rm(root, { recursive: true, force: true });
}, 120_000);

test(`restarts of Redis, the controller and the node agent (TERM and KILL) at random points of create, update, configure and remove (${ROUNDS} rounds): the cluster converges to exactly the manifests, keeps every kept instance, and leaks nothing`, async () => {
  const say = (line: string): void => void process.stderr.write(`chaos: ${line}\n`);
  say(`seed ${SEED} (CHAOS_SEED=${SEED} replays it), ${ROUNDS} rounds, logs in ${root}`);
  const failWith = (what: string): never => {
    throw new Error(`${what}\nseed ${SEED} (CHAOS_SEED=${SEED} CHAOS_ROUNDS=${ROUNDS} replays it; CHAOS_KEEP=1 keeps ${root})`);
  };
  // Two instances first, without restarts: the calibration of how long a create takes here.
  let started = Date.now();
  await applyOp('create', 0);
  await applyOp('create', 0);
  await waitFor('the first two instances', checkConverged, CONVERGE_MS).catch((e: Error) => failWith(e.message));
  const estimate: Record<Op, number> = { create: Date.now() - started, update: 3000, configure: 1500, remove: 3000 };

  const counts: Record<Component, number> = { redis: 0, controller: 0, 'node-agent': 0 };
  const points = new Set<string>();
  const opCounts: Record<Op, number> = { create: 0, update: 0, configure: 0, remove: 0 };
  let leaksFound = 0;
  let keptRemovals = 0;
  const summary = (): string => {
    const total = counts.redis + counts.controller + counts['node-agent'];
    return `restarts injected ${total} (redis ${counts.redis}, controller ${counts.controller}, node-agent ${counts['node-agent']}), points covered ${points.size}, leaks found ${leaksFound}, removals of kept instances ${keptRemovals}`;
  };
  /** Counts what is wrong now (after a convergence, or when it timed out) and fails if anything is. */
  const verify = async (round: number, what: string): Promise<void> => {
    const v = await checkInvariants();
    leaksFound += v.leaks.length;
    keptRemovals += v.keptRemoved.length;
    const bad = [...v.leaks, ...v.keptRemoved, ...v.lost];
    say(`round ${round}: ${what}${bad.length ? `; VIOLATIONS: ${bad.join('; ')}` : ''}`);
    if (bad.length) failWith(`round ${round}: ${bad.join('\n')}`);
  };
  await verify(0, `two instances created in ${estimate.create} ms, no restart`);
  // Every component gets its share of the restarts, in a seeded order.
  const order: Component[] = COMPONENTS.slice().sort(() => random() - 0.5);
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      // The least used operations first, so a short run covers all four.
      const possible = possibleOps();
      const least = Math.min(...possible.map((o) => opCounts[o]));
      const op = pick(possible.filter((o) => opCounts[o] === least));
      opCounts[op]++;
      const component = order[(round - 1) % order.length]!;
      const signal: StopSignal = random() < 0.5 ? 'SIGTERM' : 'SIGKILL';
      started = Date.now();
      const id = await applyOp(op, round);
      const delay = Math.floor(random() * estimate[op] * 1.2);
      await new Promise((r) => setTimeout(r, delay));
      const phase = await phaseOf(op, id);
      await restart(component, signal).catch((e: Error) => failWith(`round ${round}: restarting ${component} with ${signal}: ${e.message}`));
      counts[component]++;
      points.add(`${op}/${component}/${signal}/${phase}`);
      const what = `${op} ${id}; ${component} ${signal} after ${delay} ms (${phase})`;
      try {
        await waitFor(`round ${round} (${what}) to converge`, checkConverged, CONVERGE_MS);
      } catch (err) {
        await verify(round, `${what}; did not converge`);
        failWith(`${(err as Error).message}\nnode agent's last lines:\n${agent.lines.slice(-4).join('\n')}\ncontroller's last lines:\n${controller.lines.slice(-4).join('\n')}`);
      }
      const took = Date.now() - started;
      // The points follow how long an operation really takes here: one already done at the
      // restart was shorter than the delay, one still under way was longer.
      if (phase === 'converged' || phase === 'removed') estimate[op] = Math.max(500, Math.round((estimate[op] + delay) / 2));
      else estimate[op] = Math.max(estimate[op], delay);
      await verify(round, `${what}; converged in ${took} ms`);
    }
    // The components are still the ones last started: none died on its own.
    expect({ controller: controller.pid, agent: agent.pid, redis: redis.pid() }).toEqual({ controller: expect.any(Number), agent: expect.any(Number), redis: expect.any(Number) });
  } finally {
    say(summary());
  }
  expect(counts.redis + counts.controller + counts['node-agent']).toBe(ROUNDS);
  expect(leaksFound).toBe(0);
  expect(keptRemovals).toBe(0);
}, 1_800_000);
