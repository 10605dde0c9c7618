/**
 * One reconcile of a node: observe (desired state, the agent's records, Redis in one pipeline,
 * host files) -> plan per instance (pure) -> apply with bounded concurrency -> observe again, until
 * each instance's plan is empty. One failing instance never blocks the others; each gets a status
 * in Redis. An unchanged instance runs no command and writes nothing.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Ns8ctlError, toNs8ctlError } from '../errors.js';
import { EventRecorder } from '../state/events.js';
import { keys } from '../state/keys.js';
import { applyStep, type StepContext } from './applier.js';
import type { NodeAgentDeps, NodeAgentOptions } from './deps.js';
import { findImage } from './host/image-store.js';
import type { Owner } from './host/owner.js';
import { readUsers } from './host/passwd.js';
import { instancePaths } from './layout.js';
import { parseModuleLabels, type ModuleLabels } from './labels.js';
import { observeInstance, ownerOf, readRedisSnapshot, type ObserveContext } from './observe.js';
import { planConverge, planRemoval, volumeBasesOf, type InstancePlan } from './planner.js';
import { formatRange } from './ports.js';
import { writeStatus } from './status.js';
import { NODE_AGENT_FINALIZER, type Condition, type ImageFacts, type InstanceDesired, type InstanceRecord, type ModuleStatus, type ObservedInstance, type Step } from './types.js';
import { moduleNameOf } from '../manifest/types.js';
import { withResolutionPass } from '../repository/image-resolver.js';
import { checkDesiredState, type SuspectReason } from './desired-state-guard.js';
import { decideInstance, orphanMessage, type RemovalOrigin } from './instance-decision.js';
import { clearRemovalRequest, describeRequest, policyText, readRemovalRequests, type DeletionMark } from './removal-request.js';
import { clusterDefaultInstanceKey, defaultInstanceModule } from './default-instance.js';
import { checkUpdate } from '../repository/resolve.js';
import { imagesToClean, installedImageUrl, previousImageEnvironment } from './update.js';

/** Rounds of observe -> plan -> apply per instance before giving up (a plan that never empties). */
const MAX_ROUNDS = 8;

/** What happened to one instance in a reconcile. */
export interface InstanceResult {
  id: string;
  outcome: 'unchanged' | 'converged' | 'removed' | 'failed' | 'blocked' | 'skipped' | 'suspended' | 'orphaned';
  /** Steps applied, in order. */
  applied: Step[];
  /** Drift found and repaired. */
  drift: string[];
  error?: Ns8ctlError;
  /** False for errors only a change of desired state or of the host can fix. */
  retry: boolean;
  status?: ModuleStatus;
  /**
   * Set when the wanted image could not be used (resolution failed, update refused, new image
   * unreachable) and the instance was converged on the image it runs instead.
   */
  setback?: Setback;
  /** Wall time of this instance's reconcile (ms). */
  durationMs?: number;
  /** Not created yet: these instances of `spec.dependsOn` are not Ready (the loop wakes when one changes). */
  waitingFor?: string[];
}

/**
 * Why an installed instance was converged on the image it runs rather than on the one its spec
 * asks for. `terminal`: only a change of the Module, of the repositories or of the core fixes it.
 */
export interface Setback {
  /** Error code (`version_not_found`, `UpdateRefused`, `registry_unreachable`, ...). */
  code: string;
  /** Status reason (`ImageResolutionFailed`, `UpdateRefused`, `RegistryUnreachable`, ...). */
  reason: string;
  message: string;
  terminal: boolean;
  /** The image the spec resolved to, when resolution got that far. */
  targetImage?: string;
}

export interface NodeReconcileResult {
  node: number;
  instances: InstanceResult[];
  /**
   * Set when the node refused to act because desired state looks wiped or replaced
   * (desired-state-guard.ts): no instance was touched.
   */
  suspect?: { reason: SuspectReason; message: string };
  /** Why systemd cannot be used on this host, if it cannot. */
  systemdMissing?: string;
}

export interface ReconcileControl {
  /** Instances to leave alone this time (in backoff); `generation` of the desired object, if any. */
  skip?: (id: string, generation: number | undefined) => boolean;
  /**
   * A setback still in force for an installed instance (its recheck or backoff is not due): the
   * spec is not resolved again; the instance converges on its installed image and keeps
   * reporting the setback.
   */
  held?: (id: string, generation: number | undefined) => Setback | undefined;
  signal?: AbortSignal;
  /**
   * Whether to log the DesiredStateSuspect line of this pass (the loop rate-limits it); default:
   * always.
   */
  logSuspect?: (reason: SuspectReason) => boolean;
}

/** Error code -> status reason. Codes not listed are `StepFailed`. */
export const REASONS: Readonly<Record<string, string>> = {
  registry_unreachable: 'RegistryUnreachable',
  image_not_found: 'ImageNotFound',
  unit_failed: 'UnitFailed',
  image_resolution_unavailable: 'ImageResolutionFailed',
  // Resolution through the repositories (src/repository/): the spec names nothing installable.
  module_not_found: 'ImageResolutionFailed',
  version_not_found: 'ImageResolutionFailed',
  invalid_version_spec: 'ImageResolutionFailed',
  invalid_image_spec: 'ImageResolutionFailed',
  repodata_not_found: 'ImageResolutionFailed',
  repodata_is_not_json: 'ImageResolutionFailed',
  repodata_is_not_valid_metadata: 'ImageResolutionFailed',
  // A repository that cannot be downloaded now (network, HTTP error) may answer later.
  repository_not_accessible: 'RepositoryUnreachable',
  image_label_invalid: 'ImageLabelInvalid',
  ports_exhausted: 'PortsExhausted',
  environment_value_invalid: 'EnvironmentInvalid',
  user_manager_unavailable: 'UserManagerUnavailable',
  module_deleting: 'Deleting',
  // A module agent's lifecycle action (create-module, update-module, destroy-module).
  lifecycle_action_failed: 'LifecycleActionFailed',
  task_timeout: 'LifecycleActionFailed',
  // Codes that are reasons already (refusals, and the planner's `blocked`).
  UpdateRefused: 'UpdateRefused',
  UpdateFailed: 'UpdateFailed',
  dependency_not_ready: 'DependencyNotReady',
  RootfullChanged: 'RootfullChanged',
  EnvironmentInvalid: 'EnvironmentInvalid',
  ImageLabelInvalid: 'ImageLabelInvalid',
};
/** Reasons only a change of the Module, of the repositories or of the core can fix. */
export const TERMINAL_REASONS: ReadonlySet<string> = new Set(['ImageResolutionFailed', 'ImageLabelInvalid', 'EnvironmentInvalid', 'RootfullChanged', 'UpdateRefused', 'UpdateFailed']);

function cond(type: Condition['type'], status: Condition['status'], reason: string, message: string): Condition {
  return { type, status, reason, message };
}

/** Bounded-concurrency map: at most `limit` calls of `fn` run at once; results keep input order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (;;) {
      const i = next++;
      if (i >= items.length) return;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return out;
}

/**
 * Reconciles every instance placed on `opts.node` once (see module doc). Never throws for one
 * instance's failure (that goes into its result and status); throws only when desired state or
 * the node's Redis snapshot cannot be read at all.
 */
export function reconcileNodeOnce(opts: NodeAgentOptions, deps: NodeAgentDeps, control: ReconcileControl = {}): Promise<NodeReconcileResult> {
  // One pass: `module:` specs are resolved against the repositories read once (src/repository/).
  return withResolutionPass(() => reconcilePass(opts, deps, control));
}

async function reconcilePass(opts: NodeAgentOptions, deps: NodeAgentDeps, control: ReconcileControl): Promise<NodeReconcileResult> {
  const node = opts.node;
  const [desired, records, systemdMissing] = await Promise.all([deps.source.listForNode(node), deps.records.list(), deps.systemd.missing()]);
  // Desired state that looks wiped or replaced is not acted on at all (desired-state-guard.ts).
  const guard = await checkDesiredState(deps, node, { records: records.size, desiredHere: desired.length });
  if (!guard.act) {
    if (control.logSuspect?.(guard.reason) ?? true) deps.log(`node-agent: node ${node}: DesiredStateSuspect (${guard.reason}): ${guard.message}`);
    return { node, instances: [], suspect: { reason: guard.reason, message: guard.message }, ...(systemdMissing ? { systemdMissing } : {}) };
  }
  const desiredById = new Map(desired.map((d) => [d.id, d]));
  const ids = [...new Set([...desired.map((d) => d.id), ...[...records.values()].filter((r) => r.node === undefined || r.node === node).map((r) => r.id)])].sort();
  // Orphans (recorded here, no desired object) are removed only on an explicit request.
  const requests = await readRemovalRequests(
    deps.redis,
    ids.filter((id) => !desiredById.has(id)),
  );
  // Module names whose default-instance keys the snapshot reads (the image's name; see default-instance.ts).
  const modules = [...desired.map((d) => moduleNameOf(d.spec)), ...[...records.values()].flatMap((r) => (r.imageUrl ? [defaultInstanceModule(r.imageUrl)] : []))].filter(Boolean);
  const [snapshot, users] = await Promise.all([readRedisSnapshot(deps.redis, node, ids, modules), readUsers(deps.layout)]);
  const shared: ObserveContext = { layout: deps.layout, podman: deps.podman, systemd: deps.systemd, users: users.users, subids: users.subids, systemdMissing, redis: snapshot, node, ...(deps.agentUnits ? { agentUnits: deps.agentUnits } : {}) };
  const instances = await mapLimit(ids, opts.concurrency ?? 4, async (id) => {
    if (control.signal?.aborted || control.skip?.(id, desiredById.get(id)?.generation)) return { id, outcome: 'skipped', applied: [], drift: [], retry: true } satisfies InstanceResult;
    const started = performance.now();
    const took = (): number => Math.round(performance.now() - started);
    try {
      return { ...(await reconcileInstance(id, desiredById.get(id), records.get(id), requests.get(id), node, deps, shared, control)), durationMs: took() };
    } catch (err) {
      // Only status writes can land here (instance errors are caught inside): report, go on.
      const e = toNs8ctlError(err);
      deps.log(`node-agent: ${id}: ${e.message}`);
      return { id, outcome: 'failed', applied: [], drift: [], error: e, retry: true, durationMs: took() } satisfies InstanceResult;
    }
  });
  return { node, instances, ...(systemdMissing ? { systemdMissing } : {}) };
}

async function refresh(deps: NodeAgentDeps, node: number, id: string, shared: ObserveContext, modules: readonly string[] = []): Promise<ObserveContext> {
  const [redis, users] = await Promise.all([readRedisSnapshot(deps.redis, node, [id], modules), readUsers(deps.layout)]);
  return { ...shared, redis, users: users.users, subids: users.subids };
}

async function reconcileInstance(
  id: string,
  d: InstanceDesired | undefined,
  rec: InstanceRecord | undefined,
  request: DeletionMark | undefined,
  node: number,
  deps: NodeAgentDeps,
  shared: ObserveContext,
  control: ReconcileControl,
): Promise<InstanceResult> {
  const decision = decideInstance(d, rec, request);
  switch (decision.action) {
    case 'suspended':
      return { id, outcome: 'suspended', applied: [], drift: [], retry: false };
    case 'remove':
      return removeInstance(id, d, rec, decision.mark, decision.origin, node, deps, shared);
    case 'orphaned':
      return reportOrphan(id, rec!, node, deps, shared);
    case 'nothing':
      return { id, outcome: 'unchanged', applied: [], drift: [], retry: false };
    case 'converge':
      return convergeInstance(d!, rec, node, deps, shared, control);
  }
}

/**
 * An instance this node runs whose desired object is missing: reported (condition `Orphaned`, a
 * `module-orphaned` Warning event once per transition) and left running untouched.
 */
async function reportOrphan(id: string, rec: InstanceRecord, node: number, deps: NodeAgentDeps, shared: ObserveContext): Promise<InstanceResult> {
  const prev = shared.redis.status.get(id);
  const message = orphanMessage(id, node);
  const next: ModuleStatus = {
    id,
    node,
    observedGeneration: prev?.observedGeneration ?? 0,
    imageUrl: prev?.imageUrl || rec.imageUrl || '',
    imageDigest: prev?.imageDigest ?? '',
    ports: prev?.ports ?? {},
    units: prev?.units ?? [],
    drift: [],
    conditions: [
      cond('Ready', 'Unknown', 'Orphaned', 'not observed: the instance has no desired object'),
      cond('Progressing', 'False', 'Orphaned', 'left as it is: an orphan is neither converged nor removed'),
      cond('Degraded', 'True', 'Orphaned', message),
      cond('Orphaned', 'True', 'DesiredObjectMissing', message),
    ],
  };
  const wasOrphan = prev?.conditions.some((c) => c.type === 'Orphaned' && c.status === 'True') ?? false;
  const status = await writeStatus(deps.redis, prev, next, deps.now());
  if (!wasOrphan) {
    deps.log(`node-agent: ${id}: Orphaned: ${message}`);
    await new EventRecorder(deps.redis, { now: deps.now, log: (line) => deps.log(`node-agent: ${line}`) }).record({
      name: 'module-orphaned',
      type: 'Warning',
      object: `Module/${id}`,
      message: `Module/${id} on node ${node}: ${message}`,
      data: { module: id, node, image: next.imageUrl },
    });
  }
  return { id, outcome: 'orphaned', applied: [], drift: [], retry: false, status };
}

function reasonOf(e: Ns8ctlError): string {
  return REASONS[e.code] ?? 'StepFailed';
}

async function failed(
  deps: NodeAgentDeps,
  d: InstanceDesired,
  prev: ModuleStatus | undefined,
  base: Omit<ModuleStatus, 'conditions'>,
  e: Ns8ctlError,
  step: Step | undefined,
  applied: Step[],
  drift: string[],
  blocked = false,
  setback?: Setback,
): Promise<InstanceResult> {
  const reason = reasonOf(e);
  const msg = step ? `step ${step.kind} failed: ${e.message}` : e.message;
  const status: ModuleStatus = {
    ...base,
    conditions: [cond('Ready', 'False', reason, msg), cond('Progressing', 'False', 'Failed', TERMINAL_REASONS.has(reason) ? 'waiting for a change of the Module or the image' : 'will retry with backoff'), cond('Degraded', 'True', reason, msg)],
  };
  const stored = await writeStatus(deps.redis, prev, status, deps.now());
  deps.log(`node-agent: ${d.id}: ${reason}: ${msg}`);
  return { id: d.id, outcome: blocked ? 'blocked' : 'failed', applied, drift, error: e, retry: !TERMINAL_REASONS.has(reason), status: stored, ...(setback ? { setback } : {}) };
}

/** The image a spec asks for, ready to converge on, or why it cannot be used. */
type Wanted =
  | { ok: true; url: string; facts: ImageFacts; labels: ModuleLabels; updateFrom?: string; previousEnv?: Record<string, string> }
  | { ok: false; error: Ns8ctlError; setback: Setback; blocked: boolean };

/**
 * Resolves the spec, reads the image's labels and, when it is another image than the installed
 * one, checks the update (issue 6: min-from, min-core, module name, downgrade; and rootless vs
 * rootfull, which an instance cannot switch). A setback still held by the loop is returned as is,
 * without resolving. Never throws for the instance's own failures.
 */
async function wantedImage(
  d: InstanceDesired,
  rec: InstanceRecord | undefined,
  installed: string | undefined,
  deps: NodeAgentDeps,
  shared: ObserveContext,
  control: ReconcileControl,
  holdFinalizer: (url: string) => Promise<void>,
): Promise<Wanted> {
  const id = d.id;
  const held = installed ? control.held?.(id, d.generation) : undefined;
  if (held) return { ok: false, error: new Ns8ctlError(held.code, held.message), setback: held, blocked: held.terminal };
  let url: string | undefined;
  const refuse = (code: string, message: string): Wanted => ({ ok: false, error: new Ns8ctlError(code, message), setback: { code, reason: code, message, terminal: true, targetImage: url! }, blocked: true });
  try {
    url = await deps.resolveImage(d.spec);
    const failedUpdate = rec?.failedUpdate;
    if (failedUpdate && failedUpdate.image === url && failedUpdate.generation === d.generation && installed === failedUpdate.from) {
      return { ok: false, error: new Ns8ctlError('UpdateFailed', failedUpdate.message), setback: { code: 'UpdateFailed', reason: 'UpdateFailed', message: failedUpdate.message, terminal: true, targetImage: url }, blocked: true };
    }
    const facts = await imageFacts(deps, id, url, rec, () => holdFinalizer(url!), localOwner(id, rec, shared));
    const labels = parseModuleLabels(facts.labels, url);
    const updateFrom = installed && installed !== url ? installed : undefined;
    if (!updateFrom) return { ok: true, url, facts, labels };
    if (rec?.rootfull !== undefined && rec.rootfull !== labels.rootfull) {
      return refuse('RootfullChanged', `update refused: ${id} runs ${rec.rootfull ? 'rootfull' : 'rootless'} but ${url} is ${labels.rootfull ? 'rootfull' : 'rootless'} (org.nethserver.rootfull); an instance cannot switch in place: remove it and add a new one; the instance keeps running ${updateFrom}`);
    }
    // Issue 6: min-from / min-core / module name / downgrade. Refused: the wanted image is not used.
    const check = checkUpdate({ id, image: updateFrom }, { image: url, labels: facts.labels }, { coreVersion: await deps.coreVersion() });
    if (!check.ok) return refuse('UpdateRefused', `update refused (${check.code}): ${check.message}; the instance keeps running ${updateFrom}`);
    const oldEnv = { ...(shared.redis.env.get(id) ?? {}), ...(rec?.managedEnv ?? {}) };
    const previousEnv = previousImageEnvironment(oldEnv, labels.images);
    deps.log(`node-agent: ${id}: updating ${updateFrom} -> ${url} (${check.kind})`);
    return { ok: true, url, facts, labels, updateFrom, previousEnv };
  } catch (err) {
    const e = toNs8ctlError(err);
    const reason = reasonOf(e);
    return { ok: false, error: e, blocked: false, setback: { code: e.code, reason, message: e.message, terminal: TERMINAL_REASONS.has(reason), ...(url && url !== installed ? { targetImage: url } : {}) } };
  }
}

/**
 * Dependencies that are not Ready, with why: an instance ns8ctl manages is ready when its status
 * says Ready=True; one NS8 runs without ns8ctl (no desired object) is ready once NS8 places it
 * (`cluster/module_node`). One pipeline.
 */
async function unreadyDependencies(redis: NodeAgentDeps['redis'], ids: readonly string[]): Promise<{ id: string; why: string }[]> {
  const p = redis.pipeline();
  for (const id of ids) p.hget(keys.moduleStatus(id), 'conditions').exists(keys.desired('Module', id)).hexists(keys.moduleNode(), id);
  const res = ((await p.exec()) ?? []).map(([err, v]) => {
    if (err) throw err;
    return v;
  });
  const out: { id: string; why: string }[] = [];
  ids.forEach((id, i) => {
    const [conditions, desired, placed] = [res[3 * i] as string | null, res[3 * i + 1] as number, res[3 * i + 2] as number];
    if (desired === 0) {
      if (placed !== 1) out.push({ id, why: 'no such instance yet' });
      return;
    }
    let ready: Condition | undefined;
    try {
      ready = (JSON.parse(conditions ?? '[]') as Condition[]).find((c) => c.type === 'Ready');
    } catch {
      ready = undefined;
    }
    if (ready?.status !== 'True') out.push({ id, why: ready ? `Ready=${ready.status}: ${ready.reason}` : 'not reconciled yet' });
  });
  return out;
}

/** The image store of an instance that exists already (its user's, or root's), for label reads. */
function localOwner(id: string, rec: InstanceRecord | undefined, shared: ObserveContext): Owner | undefined {
  return rec?.rootfull === undefined ? undefined : ownerOf(id, rec.rootfull, shared.users.get(id));
}

/**
 * Steps after which a failed update is rolled back: they change what the instance runs (its
 * files, environment, units). A failed pull touched nothing and is retried; a failed
 * update-module (the module's own step, run once the new image is in place) is retried too.
 */
const ROLLBACK_AFTER: ReadonlySet<Step['kind']> = new Set(['extract-image', 'write-environment', 'install-system-units', 'daemon-reload', 'enable-units', 'start-units', 'restart-units']);

/**
 * Labels of the wanted image: from the record when it is the same image, else inspected (local
 * root store, then the registry with skopeo). Without skopeo on the node, the image is pulled as
 * root to read them, as NS8's cluster add-module does, after `hold` put the finalizer and the
 * record in place (that copy is something the agent created); it is recorded as `rootCopy`, removed
 * at once for a rootless image (the user pulls its own), otherwise kept as the rootfull instance's
 * image and removed with the instance or when the next read replaces it.
 */
async function imageFacts(deps: NodeAgentDeps, id: string, url: string, rec: InstanceRecord | undefined, hold: () => Promise<void>, owner?: Owner): Promise<ImageFacts> {
  if (rec?.image && rec.image.url === url) return rec.image;
  // The instance's own store first (a rollback reads the image it came from, registry or not).
  if (owner?.kind === 'user' && findImage(await deps.podman.listImages(owner), url)) return deps.podman.inspectLocal(owner, url, `${id}: inspect ${url}`);
  const rootImages = await deps.podman.listImages({ kind: 'root' });
  if (findImage(rootImages, url)) return deps.podman.inspectLocal({ kind: 'root' }, url, `${id}: inspect ${url}`);
  try {
    return await deps.podman.inspectRemote(url, `${id}: inspect ${url} in its registry`);
  } catch (err) {
    if (toNs8ctlError(err).code !== 'command_missing') throw err;
  }
  await hold();
  // A copy left by an earlier read (a refused update, a crash) is never the one in use: drop it
  // before recording the new one, so no root copy outlives its record.
  const stale = (await deps.records.get(id))?.rootCopy;
  if (stale && stale !== url && stale !== rec?.imageUrl) await deps.podman.removeImages({ kind: 'root' }, [stale], [], `${id}: remove ${stale}, pulled as root earlier to read its labels`);
  await deps.records.update(id, { rootCopy: url });
  await deps.podman.pull({ kind: 'root' }, url, `${id}: pull ${url} as root to read its labels (no skopeo on this node)`);
  const facts = await deps.podman.inspectLocal({ kind: 'root' }, url, `${id}: inspect ${url}`);
  if ((facts.labels['org.nethserver.rootfull'] ?? '0').trim() !== '1') {
    // Rootless: the module user pulls its own copy; root's was only for the labels.
    await deps.podman.removeImages({ kind: 'root' }, [url], [], `${id}: remove ${url}, pulled as root only to read its labels`);
    await deps.records.update(id, { rootCopy: undefined });
  }
  return facts;
}

/** The image a converge pass works on: the wanted one, or the installed one with a setback. */
type ChosenImage =
  | { result: InstanceResult }
  | { url: string; facts: ImageFacts; labels: ModuleLabels; updateFrom?: string; previousEnv?: Record<string, string>; setback?: Setback; rec: InstanceRecord | undefined };

/**
 * Chooses the image to converge on (sets `base.imageUrl` and `targetImage`): the wanted one; when
 * it cannot be used, the installed one (drift repair, credentials and units go on) with the
 * setback that says why; with nothing installed to fall back on, a failed result.
 */
async function chooseImage(
  d: InstanceDesired,
  rec: InstanceRecord | undefined,
  installed: string | undefined,
  prev: ModuleStatus | undefined,
  base: Omit<ModuleStatus, 'conditions'>,
  deps: NodeAgentDeps,
  shared: ObserveContext,
  control: ReconcileControl,
  holdFinalizer: (url: string) => Promise<void>,
): Promise<ChosenImage> {
  const id = d.id;
  const wanted = await wantedImage(d, rec, installed, deps, shared, control, holdFinalizer);
  if (wanted.ok) {
    const { url, facts, labels, updateFrom, previousEnv } = wanted;
    base.imageUrl = updateFrom ?? url;
    if (updateFrom) base.targetImage = url;
    // A new update (another image or generation) starts from where the rollback left the instance.
    if (updateFrom && rec?.failedUpdate) rec = await deps.records.update(id, { failedUpdate: undefined });
    return { url, facts, labels, ...(updateFrom ? { updateFrom } : {}), ...(previousEnv ? { previousEnv } : {}), rec };
  }
  if (!installed) {
    // Nothing installed to fall back on: report and wait.
    return { result: await failed(deps, d, prev, { ...base, imageUrl: wanted.setback.targetImage ?? prev?.imageUrl ?? '', imageDigest: prev?.imageDigest ?? '' }, wanted.error, undefined, [], [], wanted.blocked) };
  }
  // The wanted image cannot be used: the instance keeps converging on the one it runs (drift
  // repair, credentials, units) and reports why it is not on the wanted one.
  const setback = wanted.setback;
  base.imageUrl = installed;
  if (setback.targetImage && setback.targetImage !== installed) base.targetImage = setback.targetImage;
  try {
    const facts = await imageFacts(deps, id, installed, rec, () => holdFinalizer(installed), localOwner(id, rec, shared));
    return { url: installed, facts, labels: parseModuleLabels(facts.labels, installed), setback, rec };
  } catch (err) {
    deps.log(`node-agent: ${id}: the installed image ${installed} cannot be read either: ${toNs8ctlError(err).message}`);
    return { result: await failed(deps, d, prev, { ...base, imageDigest: prev?.imageDigest ?? '' }, wanted.error, undefined, [], [], wanted.blocked) };
  }
}

async function convergeInstance(desired: InstanceDesired, rec: InstanceRecord | undefined, node: number, deps: NodeAgentDeps, shared: ObserveContext, control: ReconcileControl): Promise<InstanceResult> {
  let d = desired;
  const id = d.id;
  let prev = shared.redis.status.get(id);
  const base: Omit<ModuleStatus, 'conditions'> = { id, node, observedGeneration: d.generation, imageUrl: '', imageDigest: '', ports: {}, units: [], drift: [] };
  // The image running now (IMAGE_URL): while an update is under way, status and environment keep
  // naming it until the new one is in place.
  const running = installedImageUrl(rec?.managedEnv, shared.redis.env.get(id));
  // A failed update being rolled back (a crash can stop it half-way): the instance's image is the
  // one it came from.
  const installed = rec?.failedUpdate && running === rec.failedUpdate.image ? rec.failedUpdate.from : running;
  const holdFinalizer = async (imageUrl: string): Promise<void> => {
    if (d.finalizers.includes(NODE_AGENT_FINALIZER)) return;
    await applyStep({ id, kind: 'add-finalizer', reason: 'hold the Module before pulling its image' }, { deps, node, id, rootfull: false, imageUrl });
    d = { ...d, finalizers: [...d.finalizers, NODE_AGENT_FINALIZER] };
  };
  // Not created yet: the instances it depends on come first (any node).
  if (!installed && d.spec.dependsOn?.length) {
    const waits = await waitForDependencies(d, prev, base, deps);
    if (waits) return waits;
  }
  const chosen = await chooseImage(d, rec, installed, prev, base, deps, shared, control, holdFinalizer);
  if ('result' in chosen) return chosen.result;
  const { url, setback, updateFrom, previousEnv } = chosen;
  let { facts, labels } = chosen;
  rec = chosen.rec;
  const rootfull = labels.rootfull;
  const applied: Step[] = [];
  let drift: string[] = [];
  let ctx = shared;
  let observed: ObservedInstance | undefined;
  let plan: InstancePlan | undefined;
  let relabelled = false;
  const stepCtx: StepContext = { deps, node, id, rootfull, labels, imageUrl: url };
  const module = defaultInstanceModule(url);
  // The image's name was not among the names the node snapshot read (spec and image differ).
  if (!shared.redis.defaults.has(clusterDefaultInstanceKey(module))) ctx = await refresh(deps, node, id, shared, [module]);
  // A new instance owes create-module, recorded as soon as the Module is held and before its
  // environment is written (after which it looks installed), so a crash cannot lose it.
  const oweCreateModule = async (r: InstanceRecord | undefined): Promise<InstanceRecord | undefined> => {
    if (installed || !deps.agentUnits || !r || r.announced || r.lifecycle || r.managedEnv || !d.finalizers.includes(NODE_AGENT_FINALIZER)) return r;
    return deps.records.update(id, { lifecycle: { action: 'create-module', image: url } });
  };
  // An update owes update-module (a create-module not run yet stays owed, for the new image).
  if (updateFrom && deps.agentUnits && rec && rec.lifecycle?.image !== url) {
    rec = await deps.records.update(id, { lifecycle: { action: rec.lifecycle?.action === 'create-module' ? 'create-module' : 'update-module', image: url } });
  }
  for (let round = 0; round < MAX_ROUNDS; round++) {
    if (round > 0) {
      rec = await deps.records.get(id);
      ctx = await refresh(deps, node, id, shared, [module]);
      if (rec?.image && rec.image.url === url) facts = rec.image;
    }
    rec = await oweCreateModule(rec);
    observed = await observeInstance(ctx, id, rec, rootfull, url, labels, volumeBasesOf(d));
    // The local image is not the one the labels came from (tag moved, image re-pulled): re-read them.
    if (observed.localImage && facts.id !== observed.localImage.id && !relabelled) {
      const owner = ownerOf(id, rootfull, observed.user);
      if (owner) {
        const again = await relabel(deps, id, owner, url);
        if (again instanceof Ns8ctlError) return failed(deps, d, prev, base, again, undefined, applied, drift, false, setback);
        ({ facts, labels, rec } = again);
        stepCtx.labels = labels;
        relabelled = true;
      }
    }
    // Labels read by inspection of the very image present: remember them, so the next reconcile
    // needs no podman (only once the finalizer holds the Module: records are for held instances).
    if (observed.localImage && facts.id === observed.localImage.id && rec?.image?.id !== facts.id && d.finalizers.includes(NODE_AGENT_FINALIZER)) {
      rec = await deps.records.update(id, { image: facts, imageUrl: url });
      observed.record = rec;
    }
    const paths = instancePaths(deps.layout, id, rootfull, observed.user?.home);
    plan = planConverge({ desired: d, node: { node, ...(ctx.systemdMissing ? { systemdMissing: ctx.systemdMissing } : {}), ...(deps.redisAddress ? { redisAddress: deps.redisAddress } : {}) }, imageUrl: url, labels, image: facts, observed, installDir: paths.installDir, ...(previousEnv ? { previousEnv } : {}) });
    const found = plan.steps.flatMap((s) => (s.drift ? [s.drift] : [])).filter((x) => !drift.includes(x));
    if (found.length) {
      drift = [...drift, ...found];
      deps.log(`node-agent: ${id}: drift: ${found.join('; ')}`);
    }
    fillBase(base, observed, facts);
    if (updateFrom) base.imageDigest = prev?.imageDigest ?? '';
    base.drift = drift.length ? drift : (prev?.drift ?? []);
    if (plan.blocked) {
      return failed(deps, d, prev, base, new Ns8ctlError(plan.blocked.reason, plan.blocked.message), undefined, applied, drift, true, setback);
    }
    if (plan.steps.length === 0) break;
    if (control.signal?.aborted) break;
    if (round === 0) prev = await writeStatus(deps.redis, prev, progressingStatus(base, prev, plan.steps), deps.now());
    for (const step of plan.steps) {
      try {
        await applyStep(step, stepCtx);
        applied.push(step);
        if (step.kind === 'add-finalizer') {
          d = { ...d, finalizers: [...d.finalizers, NODE_AGENT_FINALIZER] };
          rec = await oweCreateModule(await deps.records.get(id));
        }
      } catch (err) {
        if (updateFrom && ROLLBACK_AFTER.has(step.kind) && !control.signal?.aborted) return rollBack(d, url, updateFrom, step, toNs8ctlError(err), node, deps, shared, control);
        return failed(deps, d, prev, base, toNs8ctlError(err), step, applied, drift, false, setback);
      }
    }
  }
  if (!observed || !plan) throw new Ns8ctlError('internal', `${id}: reconcile made no observation`, { user: false });
  const unfinished = notConverged(id, plan, control.signal?.aborted ?? false);
  if (unfinished) return failed(deps, d, prev, base, unfinished, undefined, applied, drift, false, setback);
  if (updateFrom && previousEnv) await finishUpdate(base, observed, facts, url, previousEnv, stepCtx, applied);
  return reportConverged({ d, rec, prev, base, observed, applied, drift, url, setback, systemdMissing: ctx.systemdMissing }, deps);
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
    const facts = await deps.podman.inspectLocal(owner, url, `${id}: inspect ${url}`);
    const labels = parseModuleLabels(facts.labels, url);
    return { facts, labels, rec: await deps.records.update(id, { image: facts, imageUrl: url }) };
  } catch (err) {
    return toNs8ctlError(err);
  }
}

/** The status written when a pass starts applying steps: Progressing, Degraded as it was. */
function progressingStatus(base: Omit<ModuleStatus, 'conditions'>, prev: ModuleStatus | undefined, steps: readonly Step[]): ModuleStatus {
  const kinds = steps.map((s) => s.kind).join(', ');
  const degraded = prev?.conditions.find((c) => c.type === 'Degraded' && c.status === 'True');
  return {
    ...base,
    conditions: [
      cond('Ready', 'False', 'Progressing', `applying: ${kinds}`),
      cond('Progressing', 'True', 'Applying', `${steps.length} step(s): ${kinds}`),
      cond('Degraded', degraded ? 'True' : 'False', prev?.conditions.find((c) => c.type === 'Degraded')?.reason ?? 'AsExpected', degraded?.message ?? ''),
    ],
  };
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

/** An instance not created yet whose `spec.dependsOn` are not all Ready: reported, not created. */
async function waitForDependencies(d: InstanceDesired, prev: ModuleStatus | undefined, base: Omit<ModuleStatus, 'conditions'>, deps: NodeAgentDeps): Promise<InstanceResult | undefined> {
  const waiting = await unreadyDependencies(deps.redis, d.spec.dependsOn ?? []);
  if (waiting.length === 0) return undefined;
  const message = `waits for ${waiting.map((w) => `${w.id} (${w.why})`).join(', ')} before it is created (spec.dependsOn)`;
  const status = await writeStatus(deps.redis, prev, { ...base, imageUrl: prev?.imageUrl ?? '', conditions: [cond('Ready', 'False', 'DependencyNotReady', message), cond('Progressing', 'False', 'Waiting', message), cond('Degraded', 'False', 'AsExpected', '')] }, deps.now());
  return { id: d.id, outcome: 'blocked', applied: [], drift: [], error: new Ns8ctlError('dependency_not_ready', `${d.id} ${message}`), retry: true, status, waitingFor: waiting.map((w) => w.id) };
}

/** What a converge pass ends with, for its report. */
interface ConvergedPass {
  d: InstanceDesired;
  rec: InstanceRecord | undefined;
  prev: ModuleStatus | undefined;
  base: Omit<ModuleStatus, 'conditions'>;
  observed: ObservedInstance;
  applied: Step[];
  drift: string[];
  url: string;
  setback: Setback | undefined;
  systemdMissing: string | undefined;
}

/**
 * The status of an instance whose plan is empty: Ready, or not Ready with the setback that kept
 * it on its installed image, or without systemd to start its units.
 */
async function reportConverged(r: ConvergedPass, deps: NodeAgentDeps): Promise<InstanceResult> {
  const { d, rec, prev, base, observed, applied, drift, url, setback, systemdMissing } = r;
  const id = d.id;
  const wantedUnits = observed.units.filter((u) => u.wanted).map((u) => u.name);
  let conditions: Condition[];
  if (setback) {
    // Converged, but on the installed image: not Ready, with the reason the wanted one is not used.
    const msg = `${setback.message}${systemdMissing ? `; ${systemdMissing}` : ''}`;
    const next = setback.terminal ? 'waiting for a change of the Module, the repositories or the core' : 'will retry with backoff';
    conditions = [cond('Ready', 'False', setback.reason, msg), cond('Progressing', 'False', 'Failed', `${next}; meanwhile ${url} is kept converged`), cond('Degraded', 'True', setback.reason, msg)];
    const status = await writeStatus(deps.redis, prev, { ...base, conditions }, deps.now());
    if (applied.length) deps.log(`node-agent: ${id}: converged on the installed image ${url} (${applied.length} step(s): ${applied.map((s) => s.kind).join(', ')})`);
    return { id, outcome: setback.terminal ? 'blocked' : 'failed', applied, drift, error: new Ns8ctlError(setback.code, setback.message), retry: !setback.terminal, status, setback };
  }
  if (systemdMissing) {
    const msg = `${systemdMissing}: ${wantedUnits.length ? `units ${wantedUnits.join(', ')} are installed but not started` : 'no unit to start'}`;
    conditions = [cond('Ready', 'False', 'SystemdUnavailable', msg), cond('Progressing', 'False', 'HostConverged', 'files, user, ports, environment and credentials are in place'), cond('Degraded', 'True', 'SystemdUnavailable', msg)];
  } else {
    conditions = [cond('Ready', 'True', 'Converged', 'the instance matches its Module'), cond('Progressing', 'False', 'Converged', 'nothing left to do'), cond('Degraded', 'False', 'AsExpected', '')];
  }
  // Converged on a wanted image: an earlier failed update is history.
  if (rec?.failedUpdate) await deps.records.update(id, { failedUpdate: undefined });
  const status = await writeStatus(deps.redis, prev, { ...base, conditions }, deps.now());
  if (applied.length) deps.log(`node-agent: ${id}: converged (${applied.length} step(s): ${applied.map((s) => s.kind).join(', ')})`);
  return { id, outcome: applied.length ? 'converged' : 'unchanged', applied, drift, retry: false, status };
}

/**
 * An update failed after it changed the instance: the failure is recorded (so the same image is
 * not tried again for this generation) and the instance converges back on the image it came
 * from, in this same pass: files re-extracted, environment and units as before. It reports
 * UpdateFailed with the step and the error, naming the image it could not move to.
 */
async function rollBack(d: InstanceDesired, url: string, from: string, step: Step, e: Ns8ctlError, node: number, deps: NodeAgentDeps, shared: ObserveContext, control: ReconcileControl): Promise<InstanceResult> {
  const id = d.id;
  const message = `update ${from} -> ${url} failed at step ${step.kind}: ${e.message}; rolled back to ${from}`;
  deps.log(`node-agent: ${id}: ${message}`);
  const rec = await deps.records.get(id);
  const lifecycle = rec?.lifecycle?.image !== url ? rec?.lifecycle : rec.lifecycle.action === 'create-module' ? { action: 'create-module' as const, image: from } : undefined;
  // Units the update restarted run with its environment: forgetting their stamps makes the
  // rollback restart (or start) every one of them on the old files and environment.
  await deps.records.update(id, { failedUpdate: { image: url, from, generation: d.generation, message }, lifecycle, units: {} });
  const again = await convergeInstance(d, await deps.records.get(id), node, deps, await refresh(deps, node, id, shared), control);
  // The rollback itself failed: say both.
  const rolledBack = !again.error || again.error.code === 'UpdateFailed';
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

function fillBase(base: Omit<ModuleStatus, 'conditions'>, o: ObservedInstance, facts: ImageFacts): void {
  base.imageDigest = o.localImage?.digest || facts.digest;
  base.ports = { ...(o.ports.tcp ? { tcp: formatRange(o.ports.tcp) } : {}), ...(o.ports.udp ? { udp: formatRange(o.ports.udp) } : {}) };
  base.units = o.units.filter((u) => u.wanted).map((u) => ({ name: u.name, enabled: u.enabled, active: u.active ?? null }));
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.lstat(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Removes an instance on an explicit request (`mark`, see instance-decision.ts). The request is
 * on the host record before anything is removed, so an interrupted removal resumes without its
 * desired object. The first pass of a removal logs, reports (status Removing) and records a
 * `module-removing` event naming who asked, when and why.
 */
async function removeInstance(
  id: string,
  d: InstanceDesired | undefined,
  rec: InstanceRecord | undefined,
  mark: DeletionMark,
  origin: RemovalOrigin,
  node: number,
  deps: NodeAgentDeps,
  shared: ObserveContext,
): Promise<InstanceResult> {
  const policy = mark.removalPolicy;
  const starting = !rec?.removing || rec.removing.removalPolicy !== policy;
  if (origin === 'removal-request' && rec) {
    // The host record carries the request from now on (a crash resumes from it); the key goes.
    rec = await deps.records.update(id, { removing: mark });
    await clearRemovalRequest(deps.redis, id);
  }
  const user = shared.users.get(id);
  const rootfull = rec?.rootfull ?? (!user && (await exists(path.join(deps.layout.rootfullBase, id))));
  let labels: ModuleLabels | undefined;
  try {
    labels = rec?.image ? parseModuleLabels(rec.image.labels, rec.image.url) : undefined;
  } catch {
    labels = undefined;
  }
  const observed = await observeInstance(shared, id, rec, rootfull, rec?.imageUrl, labels);
  const { removalPolicy: _p, ...request } = mark;
  const plan = planRemoval({ id, policy, request, node: { node, ...(shared.systemdMissing ? { systemdMissing: shared.systemdMissing } : {}) }, rootfull, observed, desiredPresent: Boolean(d) });
  if (!plan.steps.length) return { id, outcome: 'unchanged', applied: [], drift: [], retry: false };
  const stepCtx: StepContext = { deps, node, id, rootfull, ...(labels ? { labels } : {}), ...(rec?.imageUrl ? { imageUrl: rec.imageUrl } : {}) };
  const prev = shared.redis.status.get(id);
  const base: Omit<ModuleStatus, 'conditions'> = { id, node, observedGeneration: d?.generation ?? prev?.observedGeneration ?? 0, imageUrl: rec?.imageUrl ?? '', imageDigest: prev?.imageDigest ?? '', ports: prev?.ports ?? {}, units: prev?.units ?? [], drift: [] };
  const what = `removing (${policyText(policy)}), ${describeRequest(mark)}`;
  if (starting || origin === 'removal-request') await announceRemoval(id, node, mark, what, deps);
  await writeStatus(deps.redis, prev, { ...base, conditions: [cond('Ready', 'False', 'Removing', what), cond('Progressing', 'True', 'Removing', plan.steps.map((s) => s.kind).join(', ')), cond('Degraded', 'False', 'AsExpected', '')] }, deps.now());
  const applied: Step[] = [];
  for (const step of plan.steps) {
    try {
      await applyStep(step, stepCtx);
      applied.push(step);
    } catch (err) {
      const e = toNs8ctlError(err);
      const msg = `removal step ${step.kind} failed: ${e.message} (${describeRequest(mark)})`;
      deps.log(`node-agent: ${id}: ${msg}`);
      const cur = (await readRedisSnapshot(deps.redis, node, [id])).status.get(id);
      await writeStatus(deps.redis, cur, { ...base, conditions: [cond('Ready', 'False', 'RemovalFailed', msg), cond('Progressing', 'False', 'Failed', 'will retry with backoff'), cond('Degraded', 'True', 'RemovalFailed', msg)] }, deps.now());
      return { id, outcome: 'failed', applied, drift: [], error: e, retry: true };
    }
  }
  deps.log(`node-agent: ${id}: removed (${policy === 'Delete' ? 'data deleted' : 'data preserved'}; ${applied.length} step(s); ${describeRequest(mark)})`);
  return { id, outcome: 'removed', applied, drift: [], retry: false };
}

/** The first pass of a removal: one log line and a `module-removing` event with who/when/why. */
async function announceRemoval(id: string, node: number, mark: DeletionMark, what: string, deps: NodeAgentDeps): Promise<void> {
  deps.log(`node-agent: ${id}: ${what}`);
  await new EventRecorder(deps.redis, { now: deps.now, log: (line) => deps.log(`node-agent: ${line}`) }).record({
    name: 'module-removing',
    type: mark.removalPolicy === 'Delete' ? 'Warning' : 'Normal',
    object: `Module/${id}`,
    message: `Module/${id} on node ${node}: ${what}`,
    data: { module: id, node, removalPolicy: mark.removalPolicy, ...(mark.by ? { by: mark.by } : {}), ...(mark.at ? { at: mark.at } : {}), ...(mark.why ? { why: mark.why } : {}) },
  });
}
