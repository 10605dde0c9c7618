/**
 * One converge pass of one instance: choose the image (wanted-image.ts), then rounds of observe ->
 * plan (pure) -> apply until the plan is empty, then report. A failed update is rolled back in the
 * same pass. The pass's state lives in one object (ConvergePass) that each phase reads and updates.
 */
import { Ns8ctlError, toNs8ctlError } from '../errors.js';
import { EventRecorder } from '../state/events.js';
import { applyStep, type StepContext } from './applier.js';
import { SETTLE_OVERLAPS, settleUnits } from './steps/context.js';
import { clusterDefaultInstanceKey, defaultInstanceModule } from './default-instance.js';
import { waitForDependencies } from './dependencies.js';
import type { NodeAgentDeps } from './deps.js';
import type { Owner } from './host/owner.js';
import { readUsers } from './host/passwd.js';
import { parseModuleLabels, type ModuleLabels } from './labels.js';
import { instancePaths } from './layout.js';
import { observeInstance, ownerOf, readRedisSnapshot, type ObserveContext } from './observe.js';
import { planConverge, volumeBasesOf, type InstancePlan } from './planner.js';
import type { InstanceResult, ReconcileControl, Setback } from './result.js';
import { snapshotBeforeUpdate } from './backup/before-update.js';
import { StateTransfer } from './backup/transfer.js';
import { cond, failed, fillBase, progressingStatus, reportConverged } from './status-report.js';
import { writeStatus } from './status.js';
import { NODE_AGENT_FINALIZER, type ImageFacts, type InstanceDesired, type InstanceRecord, type ModuleStatus, type ObservedInstance, type Step } from './types.js';
import { channels, keys } from '../state/keys.js';
import { openClone, type MoveRecord } from './move/record.js';
import { imagesToClean, installedImageUrl } from './update.js';
import { chooseImage, type ChosenImage } from './wanted-image.js';

/** Rounds of observe -> plan -> apply per instance before giving up (a plan that never empties). */
const MAX_ROUNDS = 8;

async function refresh(deps: NodeAgentDeps, node: number, id: string, shared: ObserveContext, modules: readonly string[] = []): Promise<ObserveContext> {
  const [redis, users] = await Promise.all([readRedisSnapshot(deps.redis, node, [id], modules), readUsers(deps.layout)]);
  return { ...shared, redis, users: users.users, subids: users.subids };
}

/**
 * Steps after which a failed update is rolled back: they change what the instance runs (its
 * files, environment, units). A failed pull touched nothing and is retried; a failed
 * update-module (the module's own step, run once the new image is in place) is retried too.
 */
const ROLLBACK_AFTER: ReadonlySet<Step['kind']> = new Set(['extract-image', 'write-environment', 'install-system-units', 'daemon-reload', 'enable-units', 'start-units', 'restart-units']);

/** One converge pass of one instance, before its image is chosen. */
interface PassStart {
  readonly id: string;
  readonly node: number;
  readonly deps: NodeAgentDeps;
  /** The node's observation at the start of the reconcile. */
  readonly shared: ObserveContext;
  readonly control: ReconcileControl;
  /** The desired object; gains the finalizer once the pass adds it. */
  d: InstanceDesired;
  rec: InstanceRecord | undefined;
  /** The status as last written. */
  prev: ModuleStatus | undefined;
  /** The status being built (conditions are added by the report). */
  readonly base: Omit<ModuleStatus, 'conditions'>;
  /** The image the instance runs; undefined when it is not installed yet. */
  readonly installed: string | undefined;
}

/** A converge pass working on its chosen image. */
interface ConvergePass extends PassStart {
  readonly url: string;
  facts: ImageFacts;
  labels: ModuleLabels;
  /** From the labels first read: an instance never switches (the planner blocks that). */
  readonly rootfull: boolean;
  /** The image being updated from, when the pass updates. */
  readonly updateFrom: string | undefined;
  readonly previousEnv: Record<string, string> | undefined;
  /** Why the pass converges on the installed image rather than the wanted one. */
  readonly setback: Setback | undefined;
  /** The module name of the image (its default-instance keys). */
  readonly module: string;
  readonly stepCtx: StepContext;
  /** The latest observation of the node for this instance. */
  ctx: ObserveContext;
  readonly applied: Step[];
  drift: string[];
  /** Labels were read again once this pass (tag moved, image re-pulled). */
  relabelled: boolean;
  /** Move target while receiving: whether its receiver runs (observed each round). */
  receiverAlive?: boolean | undefined;
}

/** What a round ends with: a result for the instance, or the observation and plan it made. */
type Round = { result: InstanceResult } | { observed: ObservedInstance; plan: InstancePlan; done: boolean };

/**
 * Converges one instance on its Module (see the module doc). Never throws for the instance's own
 * failures: they are in the result and the status.
 */
export async function convergeInstance(desired: InstanceDesired, rec: InstanceRecord | undefined, node: number, deps: NodeAgentDeps, shared: ObserveContext, control: ReconcileControl): Promise<InstanceResult> {
  const pass = startPass(desired, rec, node, deps, shared, control);
  // A new clone needs its source in the cluster: nothing is created rather than an empty instance.
  const refused = cloneRefusal(pass, undefined);
  if (refused) return failed(deps, pass.d, pass.prev, pass.base, refused, undefined, [], [], true);
  // Not created yet: the instances it depends on come first (any node).
  if (!pass.installed && pass.d.spec.dependsOn?.length) {
    const waits = await waitForDependencies(pass.d, pass.prev, pass.base, deps);
    if (waits) return waits;
  }
  const chosen = await chooseImage(pass.d, pass.rec, pass.installed, pass.prev, pass.base, deps, shared, control, (url) => holdFinalizer(pass, url));
  if ('result' in chosen) return chosen.result;
  const p = await withImage(pass, chosen);
  const rootfullClone = cloneRefusal(p, p.rootfull);
  if (rootfullClone) return failed(deps, p.d, p.prev, p.base, rootfullClone, undefined, [], [], true);
  if (p.updateFrom && p.d.spec.updatePolicy?.backupFirst) {
    try {
      p.rec = await snapshotBeforeUpdate(deps, p.d, p.rec, node, p.updateFrom, p.url);
    } catch (err) {
      const e = toNs8ctlError(err);
      return failed(deps, p.d, p.prev, p.base, e, undefined, p.applied, p.drift, false, p.setback);
    }
  }
  let last: Round | undefined;
  for (let round = 0; round < MAX_ROUNDS; round++) {
    last = await runRound(p, round);
    if ('result' in last) return last.result;
    if (last.done) break;
  }
  if (!last || 'result' in last) throw new Ns8ctlError('internal', `${p.id}: reconcile made no observation`, { user: false });
  return (await settledOrFailed(p)) ?? finishPass(p, last.observed, last.plan);
}

/** Units still in their stability window at the end of the rounds: waited for; their failure fails the pass. */
async function settledOrFailed(p: ConvergePass): Promise<InstanceResult | undefined> {
  const s = p.stepCtx.settling;
  if (!s) return undefined;
  try {
    await settleUnits(p.stepCtx);
    return undefined;
  } catch (err) {
    if (p.updateFrom && ROLLBACK_AFTER.has(s.step.kind) && !p.control.signal?.aborted) return rollBack(p.d, p.url, p.updateFrom, s.step, toNs8ctlError(err), p.node, p.deps, p.shared, p.control);
    return failed(p.deps, p.d, p.prev, p.base, toNs8ctlError(err), s.step, p.applied, p.drift, false, p.setback);
  }
}

function startPass(d: InstanceDesired, rec: InstanceRecord | undefined, node: number, deps: NodeAgentDeps, shared: ObserveContext, control: ReconcileControl): PassStart {
  const id = d.id;
  // The image running now (IMAGE_URL): while an update is under way, status and environment keep
  // naming it until the new one is in place.
  const running = installedImageUrl(rec?.managedEnv, shared.redis.env.get(id));
  // A failed update being rolled back (a crash can stop it half-way): the instance's image is the
  // one it came from.
  const installed = rec?.failedUpdate && running === rec.failedUpdate.image ? rec.failedUpdate.from : running;
  const base: Omit<ModuleStatus, 'conditions'> = { id, node, observedGeneration: d.generation, imageUrl: '', imageDigest: '', ports: {}, units: [], drift: [] };
  return { id, node, deps, shared, control, d, rec, prev: shared.redis.status.get(id), base, installed };
}

/** Puts the finalizer on the Module before anything is pulled for it (no-op when it holds already). */
async function holdFinalizer(p: PassStart, imageUrl: string): Promise<void> {
  if (p.d.finalizers.includes(NODE_AGENT_FINALIZER)) return;
  await applyStep({ id: p.id, kind: 'add-finalizer', reason: 'hold the Module before pulling its image' }, { deps: p.deps, node: p.node, id: p.id, rootfull: false, imageUrl });
  p.d = { ...p.d, finalizers: [...p.d.finalizers, NODE_AGENT_FINALIZER] };
}

/** The pass on its chosen image: the default-instance keys of the image read, update-module owed on an update. */
async function withImage(start: PassStart, chosen: Exclude<ChosenImage, { result: InstanceResult }>): Promise<ConvergePass> {
  const { url, facts, labels } = chosen;
  const { deps, node, id, shared } = start;
  const module = defaultInstanceModule(url);
  const stepCtx: StepContext = { deps, node, id, rootfull: labels.rootfull, labels, imageUrl: url, ...(facts.digest ? { imageDigest: facts.digest } : {}) };
  const p: ConvergePass = { ...start, rec: chosen.rec, url, facts, labels, rootfull: labels.rootfull, updateFrom: chosen.updateFrom, previousEnv: chosen.previousEnv, setback: chosen.setback, module, stepCtx, ctx: shared, applied: [], drift: [], relabelled: false };
  // The image's name was not among the names the node snapshot read (spec and image differ).
  if (!shared.redis.defaults.has(clusterDefaultInstanceKey(module))) p.ctx = await refresh(deps, node, id, shared, [module]);
  // An update owes update-module (a create-module not run yet stays owed, for the new image).
  if (p.updateFrom && deps.agentUnits && p.rec && p.rec.lifecycle?.image !== url) {
    p.rec = await deps.records.update(id, { lifecycle: { action: p.rec.lifecycle?.action === 'create-module' ? 'create-module' : 'update-module', image: url } });
  }
  return p;
}

/**
 * A new instance owes create-module (and, with `restoreFrom`, the restore of its data), recorded
 * as soon as the Module is held and before its environment is written (after which it looks
 * installed), so a crash cannot lose it.
 */
async function oweCreateModule(p: ConvergePass, r: InstanceRecord | undefined): Promise<InstanceRecord | undefined> {
  if (p.installed || !r || r.announced || r.managedEnv || !p.d.finalizers.includes(NODE_AGENT_FINALIZER)) return takeRestoreRequest(p, r);
  const from = p.d.spec.restoreFrom;
  const patch: Partial<InstanceRecord> = {
    ...(p.deps.agentUnits && !r.lifecycle ? { lifecycle: { action: 'create-module' as const, image: p.url } } : {}),
    ...(from && !r.restore ? { restore: { destination: from.destination, snapshot: from.snapshot ?? 'latest', from: from.instance ?? p.id, done: false } } : {}),
  };
  return Object.keys(patch).length ? p.deps.records.update(p.id, patch) : r;
}

/**
 * An instance whose move record names this node as the target, not set up here yet (no
 * environment written): its data comes from the source node before anything starts (planMoveIn).
 */
async function noteMoveIn(p: ConvergePass, r: InstanceRecord | undefined): Promise<InstanceRecord | undefined> {
  const mv = p.ctx.redis.moves.get(p.id);
  if (!mv || mv.to !== p.node || mv.from === p.node || r?.move || r?.managedEnv) return r;
  return p.deps.records.update(p.id, { move: { from: mv.from, done: false }, node: p.node });
}

/**
 * Why a new instance with `spec.cloneFrom` cannot be made (terminal CloneUnavailable), if so: its
 * source is not an instance of the cluster (cluster/module_node), or the image is rootfull
 * (`rootfull` once the labels are known). A clone under way or done is not checked again.
 */
function cloneRefusal(p: PassStart, rootfull: boolean | undefined): Ns8ctlError | undefined {
  const source = p.d.spec.cloneFrom;
  if (!source || p.installed || p.rec?.move || p.rec?.managedEnv) return undefined;
  if (!p.shared.redis.moduleNode[source]) return new Ns8ctlError('clone_unavailable', `${p.id}: spec.cloneFrom names ${source}, which is not an instance of the cluster (cluster/module_node has no node for it); nothing was created. Create ${source} first, or remove cloneFrom`);
  if (rootfull) return new Ns8ctlError('clone_unavailable', `${p.id}: ${source} is a rootfull module: cloning rootfull instances is not supported yet; nothing was created. Copy it from a backup with spec.restoreFrom (instance: ${source})`);
  return undefined;
}

/**
 * A new instance with `spec.cloneFrom`, not set up here yet: its clone record is opened (once)
 * and the source's node agents woken; its data comes from the source before anything starts.
 */
async function noteCloneIn(p: ConvergePass, r: InstanceRecord | undefined): Promise<InstanceRecord | undefined> {
  const source = p.d.spec.cloneFrom;
  if (!source || p.installed || r?.move || r?.managedEnv) return r;
  const from = Number(p.ctx.redis.moduleNode[source]);
  if (!Number.isInteger(from) || from <= 0) return r;
  const mv = await openClone(p.deps.redis, p.id, { from, to: p.node, source, state: 'requested' });
  await p.deps.redis.publish(channels.desiredChanged, JSON.stringify({ keys: [`Module/${source}`] })).catch(() => 0);
  p.deps.log(`node-agent: ${p.id}: a clone of ${source} (node ${mv.from}): its data comes first`);
  return p.deps.records.update(p.id, { move: { from: mv.from, done: false, source }, node: p.node });
}

/** The record bringing the instance here: its clone record when it is a clone, else its move record. */
function incomingOf(p: ConvergePass): MoveRecord | undefined {
  return p.rec?.move?.source ? p.ctx.redis.clones.get(p.id) : p.ctx.redis.moves.get(p.id);
}

/** A recorded `ns8ctl restore` request for this instance not carried out yet becomes its pending restore. */
async function takeRestoreRequest(p: ConvergePass, r: InstanceRecord | undefined): Promise<InstanceRecord | undefined> {
  const q = p.ctx.redis.restoreRequests.get(p.id);
  if (!q || !r || r.restore?.request === q.request || !p.d.finalizers.includes(NODE_AGENT_FINALIZER)) return r;
  return p.deps.records.update(p.id, { restore: { destination: q.destination, snapshot: q.snapshot, from: q.from, done: false, request: q.request } });
}

/** One round: observe, plan, and apply the steps (the progressing status is written in the first round). */
async function runRound(p: ConvergePass, round: number): Promise<Round> {
  if (round > 0) await reread(p);
  const observed = await observeRound(p);
  if (observed instanceof Ns8ctlError) return { result: await failed(p.deps, p.d, p.prev, p.base, observed, undefined, p.applied, p.drift, false, p.setback) };
  const plan = planRound(p, observed);
  if (plan.blocked) return { result: await failed(p.deps, p.d, p.prev, p.base, new Ns8ctlError(plan.blocked.code, plan.blocked.message), undefined, p.applied, p.drift, true, p.setback) };
  if (plan.steps.length === 0 || p.control.signal?.aborted) return { observed, plan, done: true };
  if (round === 0) p.prev = await writeStatus(p.deps.redis, p.prev, progressingStatus(p.base, p.prev, plan.steps), p.deps.now());
  const result = await applySteps(p, plan.steps);
  return result ? { result } : { observed, plan, done: false };
}

/** After a round applied steps: the record and the node's keys read again. */
async function reread(p: ConvergePass): Promise<void> {
  p.rec = await p.deps.records.get(p.id);
  p.ctx = await refresh(p.deps, p.node, p.id, p.shared, [p.module]);
  if (p.rec?.image && p.rec.image.url === p.url) p.facts = p.rec.image;
}

/** Observes the instance; labels read again when the local image is not the one they came from. */
async function observeRound(p: ConvergePass): Promise<ObservedInstance | Ns8ctlError> {
  const { deps, id, url } = p;
  p.rec = await noteCloneIn(p, await noteMoveIn(p, await oweCreateModule(p, p.rec)));
  const mv = incomingOf(p);
  p.receiverAlive = p.rec?.move && !p.rec.move.done && mv?.state === 'receiving' ? await new StateTransfer(deps.runner).receiverAlive(id) : undefined;
  const observed = await observeInstance(p.ctx, id, p.rec, p.rootfull, url, p.labels, volumeBasesOf(p.d));
  // The local image is not the one the labels came from (tag moved, image re-pulled): re-read them.
  if (observed.localImage && p.facts.id !== observed.localImage.id && !p.relabelled) {
    const owner = ownerOf(id, p.rootfull, observed.user);
    if (owner) {
      const again = await relabel(deps, id, owner, url);
      if (again instanceof Ns8ctlError) return again;
      ({ facts: p.facts, labels: p.labels, rec: p.rec } = again);
      p.stepCtx.labels = p.labels;
      p.relabelled = true;
    }
  }
  // Labels read by inspection of the very image present: remember them, so the next reconcile
  // needs no podman (only once the finalizer holds the Module: records are for held instances).
  if (observed.localImage && p.facts.id === observed.localImage.id && p.rec?.image?.id !== p.facts.id && p.d.finalizers.includes(NODE_AGENT_FINALIZER)) {
    p.rec = await deps.records.update(id, { image: p.facts, imageUrl: url });
    observed.record = p.rec;
  }
  return observed;
}

/** Plans the round (pure), logs new drift and fills the status fields from the observation. */
function planRound(p: ConvergePass, observed: ObservedInstance): InstancePlan {
  const { deps, id, node } = p;
  const paths = instancePaths(deps.layout, id, p.rootfull, observed.user?.home);
  const plan = planConverge({
    desired: p.d,
    node: { node, ...(p.ctx.systemdMissing ? { systemdMissing: p.ctx.systemdMissing } : {}), ...(deps.redisAddress ? { redisAddress: deps.redisAddress } : {}) },
    imageUrl: p.url,
    labels: p.labels,
    image: p.facts,
    observed,
    installDir: paths.installDir,
    ...(p.previousEnv ? { previousEnv: p.previousEnv } : {}),
    ...(incomingOf(p) ? { move: incomingOf(p)! } : {}),
    ...(p.receiverAlive !== undefined ? { receiverAlive: p.receiverAlive } : {}),
  });
  const found = plan.steps.flatMap((s) => (s.drift ? [s.drift] : [])).filter((x) => !p.drift.includes(x));
  if (found.length) {
    p.drift = [...p.drift, ...found];
    deps.log(`node-agent: ${id}: drift: ${found.join('; ')}`);
  }
  fillBase(p.base, observed, p.facts);
  if (p.updateFrom) p.base.imageDigest = p.prev?.imageDigest ?? '';
  p.base.drift = p.drift.length ? p.drift : (p.prev?.drift ?? []);
  return plan;
}

/** Applies the steps in order; the first failure ends the pass (rolled back when it broke an update). */
async function applySteps(p: ConvergePass, steps: readonly Step[]): Promise<InstanceResult | undefined> {
  // Started units settle while the steps that do not depend on them run (a create-module task
  // mostly waits for the module agent to start): awaited before any other step. The window may
  // span rounds (run-lifecycle is planned in the round after start-units): at the latest it ends
  // before the pass reports (settledOrFailed).
  p.stepCtx.settleInBackground = true;
  for (const next of steps) {
    let step: Step | undefined = p.stepCtx.settling?.step;
    try {
      if (!SETTLE_OVERLAPS.has(next.kind)) await settleUnits(p.stepCtx);
      step = next;
      // A reload right after a reload (the next round starts where the last ended) reads the same files.
      if (step.kind === 'daemon-reload' && p.applied.at(-1)?.kind === 'daemon-reload') {
        p.applied.push(step);
        continue;
      }
      await applyStep(step, p.stepCtx);
      p.applied.push(step);
      // A restore may have given the instance the backed-up MODULE_UUID: its environment uses it.
      if (step.kind === 'restore-data') p.d = { ...p.d, uuid: (await p.deps.redis.hget(keys.moduleUuid(), p.id)) ?? p.d.uuid };
      if (step.kind === 'add-finalizer') {
        p.d = { ...p.d, finalizers: [...p.d.finalizers, NODE_AGENT_FINALIZER] };
        p.rec = await oweCreateModule(p, await p.deps.records.get(p.id));
      }
    } catch (err) {
      if (!step) throw err; // unreachable: a settling window always has its step
      // A lifecycle task cut short by a unit that failed meanwhile: the failure is the start's.
      if (toNs8ctlError(err).code === 'unit_failed' && p.stepCtx.settling) step = p.stepCtx.settling.step;
      delete p.stepCtx.settling; // the pass ends here: a window still open is not waited for
      if (p.updateFrom && ROLLBACK_AFTER.has(step.kind) && !p.control.signal?.aborted) return rollBack(p.d, p.url, p.updateFrom, step, toNs8ctlError(err), p.node, p.deps, p.shared, p.control);
      const migrationFrom = failedMigrationFrom(p, step, toNs8ctlError(err));
      if (migrationFrom && !p.control.signal?.aborted) return rollBack(p.d, p.url, migrationFrom, step, toNs8ctlError(err), p.node, p.deps, p.shared, p.control);
      return failed(p.deps, p.d, p.prev, p.base, toNs8ctlError(err), step, p.applied, p.drift, false, p.setback);
    }
  }
  return undefined;
}

/**
 * The module's own update-module failed (its migration broke half-way) while a `backupFirst`
 * snapshot of the data before this update exists: the image it came from, so the update is
 * rolled back with that data. Without such a snapshot the data may already be migrated: the
 * instance stays on the new image and the action is tried again, as NS8 leaves it. A task that
 * timed out may still run: not rolled back.
 */
function failedMigrationFrom(p: ConvergePass, step: Step, e: Ns8ctlError): string | undefined {
  if (step.kind !== 'run-lifecycle' || step.action !== 'update-module' || e.code !== 'lifecycle_action_failed') return undefined;
  const pre = p.rec?.preUpdate;
  return pre && pre.image === p.url && pre.from !== p.url ? pre.from : undefined;
}

/** The end of the rounds: not converged (failed), or an update finished, then the report. */
async function finishPass(p: ConvergePass, observed: ObservedInstance, plan: InstancePlan): Promise<InstanceResult> {
  const moving = plan.steps.length === 0 && plan.waiting.length > 0 && plan.waiting.every((w) => w.startsWith('move:') || w.startsWith('clone:'));
  if (moving) return reportMoving(p, plan.waiting.join('; '));
  const unfinished = notConverged(p.id, plan, p.control.signal?.aborted ?? false);
  if (unfinished) return failed(p.deps, p.d, p.prev, p.base, unfinished, undefined, p.applied, p.drift, false, p.setback);
  if (p.updateFrom && p.previousEnv) await finishUpdate(p.base, observed, p.facts, p.url, p.previousEnv, p.stepCtx, p.applied);
  return reportConverged({ d: p.d, rec: p.rec, prev: p.prev, base: p.base, observed, applied: p.applied, drift: p.drift, url: p.url, setback: p.setback, systemdMissing: p.ctx.systemdMissing }, p.deps);
}

/**
 * A move target waiting for the source (its listing, its passes): not a failure. Status Moving;
 * no growing backoff; the source's `module-status-changed` for the id wakes it (waitingFor).
 */
async function reportMoving(p: ConvergePass, message: string): Promise<InstanceResult> {
  const reason = p.rec?.move?.source ? 'Cloning' : 'Moving';
  const status = await writeStatus(p.deps.redis, p.prev, { ...p.base, conditions: [cond('Ready', 'False', reason, message), cond('Progressing', 'True', reason, message), cond('Degraded', 'False', 'AsExpected', '')] }, p.deps.now());
  return { id: p.id, outcome: 'blocked', applied: p.applied, drift: p.drift, error: new Ns8ctlError('move_in_progress', `${p.id}: ${message}`), retry: true, status, waitingFor: [p.id] };
}

/** Why a pass that ended its rounds did not converge (steps left, or inputs still awaited), if so. */
function notConverged(id: string, plan: InstancePlan, aborted: boolean): Ns8ctlError | undefined {
  if (plan.steps.length > 0 && !aborted) return new Ns8ctlError('not_converging', `${id}: still ${plan.steps.length} step(s) to apply after ${MAX_ROUNDS} rounds: ${plan.steps.map((s) => `${s.kind} (${s.reason})`).join('; ')}`, { user: false });
  if (plan.waiting.length > 0) return new Ns8ctlError('not_converging', `${id}: waiting: ${plan.waiting.join('; ')}`, { user: false });
  return undefined;
}

/** The labels of the image now present (its tag moved or it was pulled again), recorded. */
async function relabel(deps: NodeAgentDeps, id: string, owner: Owner, url: string): Promise<{ facts: ImageFacts; labels: ModuleLabels; rec: InstanceRecord | undefined } | Ns8ctlError> {
  try {
    const cached = await deps.podman.cache.lookup(url);
    const facts = cached ? { url, id: cached.id, digest: cached.digest, repoDigest: cached.repoDigest, labels: cached.labels } : await deps.podman.inspectLocal(owner, url, `${id}: inspect ${url}`);
    const labels = parseModuleLabels(facts.labels, url);
    return { facts, labels, rec: await deps.records.update(id, { image: facts, imageUrl: url }) };
  } catch (err) {
    return toNs8ctlError(err);
  }
}

/** An update converged: the status names the new image, and the previous images go (failure only logged). */
async function finishUpdate(base: Omit<ModuleStatus, 'conditions'>, observed: ObservedInstance, facts: ImageFacts, url: string, previousEnv: Record<string, string>, stepCtx: StepContext, applied: Step[]): Promise<void> {
  const { deps, id } = stepCtx;
  base.imageUrl = url;
  delete base.targetImage;
  base.imageDigest = observed.localImage?.digest || facts.digest;
  const refs = imagesToClean(previousEnv, observed.envFile ?? {});
  if (!refs.length) return;
  const step: Step = { id, kind: 'remove-old-images', refs, reason: `update to ${url} done: remove ${refs.join(' ')}` };
  try {
    await applyStep(step, stepCtx);
    applied.push(step);
  } catch (err) {
    deps.log(`node-agent: ${id}: removing the previous images failed (left in place): ${toNs8ctlError(err).message}`);
  }
}

/**
 * An update failed after it changed the instance: the failure is recorded (so the same image is
 * not tried again for this generation) and the instance converges back on the image it came
 * from, in this same pass: files re-extracted, environment and units as before. It reports
 * UpdateFailed with the step and the error, naming the image it could not move to.
 */
async function rollBack(d: InstanceDesired, url: string, from: string, step: Step, e: Ns8ctlError, node: number, deps: NodeAgentDeps, shared: ObserveContext, control: ReconcileControl): Promise<InstanceResult> {
  const id = d.id;
  const rec = await deps.records.get(id);
  // updatePolicy.backupFirst: the data goes back to the snapshot taken before this update.
  const pre = rec?.preUpdate?.image === url && rec.preUpdate.from === from ? rec.preUpdate : undefined;
  const message = `update ${from} -> ${url} failed at step ${step.kind}: ${e.message}; rolled back to ${from}${pre ? ` with the data of snapshot ${pre.snapshot.slice(0, 8)} taken before the update` : ''}`;
  deps.log(`node-agent: ${id}: ${message}`);
  const lifecycle = rec?.lifecycle?.image !== url ? rec?.lifecycle : rec.lifecycle.action === 'create-module' ? { action: 'create-module' as const, image: from } : undefined;
  // Units the update restarted run with its environment: forgetting their stamps makes the
  // rollback restart (or start) every one of them on the old files and environment.
  const restore = pre ? { restore: { destination: pre.destination, snapshot: pre.snapshot, from: id, done: false } } : {};
  await deps.records.update(id, { failedUpdate: { image: url, from, generation: d.generation, message }, lifecycle, units: {}, ...restore });
  const again = await convergeInstance(d, await deps.records.get(id), node, deps, await refresh(deps, node, id, shared), control);
  // The rollback itself failed: say both.
  const rolledBack = !again.error || again.error.code === 'update_failed';
  if (!rolledBack) again.error = new Ns8ctlError(again.error!.code, `${message}, but the rollback failed: ${again.error!.message}`, { user: false });
  await new EventRecorder(deps.redis, { log: (line) => deps.log(`node-agent: ${line}`) }).record({
    name: rolledBack ? 'module-update-rolled-back' : 'module-rollback-failed',
    type: 'Warning',
    object: `Module/${id}`,
    message: rolledBack ? message : again.error!.message,
    data: { module: id, node, from, to: url, step: step.kind, generation: d.generation, error: e.message },
  });
  return again;
}
