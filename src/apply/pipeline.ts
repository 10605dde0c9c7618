/**
 * The apply pipeline, stage by stage: load -> validate -> observe -> plan -> (render) -> apply.
 * Only `applyPlan` writes; everything before it is read-only, so invalid input writes nothing.
 */
import type { Redis } from 'ioredis';
import type { ConfigurationSchemaLookup } from '../configuration/configuration-schema.js';
import { checkPlannedConfigurations, withSecretNames } from '../configuration/configuration-validation.js';
import { ConflictError, ManifestError, RedisError, RefusedError } from '../errors.js';
import { ProcessRunner, type CommandRunner } from '../host/runner.js';
import { moduleNameOf, type DesiredObject } from '../manifest/types.js';
import { checkPruneSafety, plan as makePlan } from '../plan/planner.js';
import { annotatePlan, catalogLabels, usesRepository, type ResolutionInputs } from '../plan/resolution.js';
import { movesOf, type MoveFacts } from '../plan/move-preflight.js';
import { readCoreVersion } from '../repository/core-version.js';
import type { ClusterState, StoredObject } from '../state/cluster-state.js';
import type { Plan } from '../plan/types.js';
import type { FetchOptions } from '../repository/fetch.js';
import { loadAvailable } from '../repository/image-resolver.js';
import { resolveModule, type RepositoryInfo } from '../repository/resolve.js';
import { keys } from '../state/keys.js';
import { readClusterState, readNodeRecords, runningImageOf, runningImagesOf, type ReadScope, type Reply } from '../state/read-state.js';
import { executeWrites, newEpoch } from '../state/write-state.js';
import { makeRevisionLookup } from './git-revision.js';
import { defaultSchemaLookup } from './configuration-check.js';
import { knownNodesOf, loadAndValidate, locateInDocument } from './load-validate.js';
import { LocalImageLabels, lookupImageLabels, type ImageLabelLookup } from './image-labels.js';
import { findSourceRefreshes, planToWrites, sourceRefreshWrites, storedSource } from './to-writes.js';
import { withBackupPasswordWarnings } from './backup-passwords.js';

export interface PlanOptions extends ResolveOptions {
  applySet: string;
  prune: boolean;
  /** Resolve Module images at plan time (observeResolution + annotatePlan); default true. */
  resolve?: boolean;
}

/** Options of the resolution observe step. */
export interface ResolveOptions {
  /** Core version for min-core (default readCoreVersion(): NS8CTL_CORE_VERSION, core.env, 3.21.0). */
  coreVersion?: string;
  /** Repository download options (timeout, view). */
  fetch?: FetchOptions;
  /**
   * Where the labels of full image URLs (`spec.image`) are found offline for the max-per-node
   * check of new instances (default: `LocalImageLabels`, root's local container storage, then the
   * catalog by source and tag); `false` skips the lookup.
   */
  imageLabels?: ImageLabelLookup | false;
  /**
   * Where plan-time validation of `spec.configuration` finds configure-module schemas (offline:
   * install dir, local container storage, cache; see src/configuration/configuration-schema.ts).
   * Default: defaultSchemaLookup(); `false` skips the check.
   */
  configuration?: ConfigurationSchemaLookup | false;
}

export { defaultSchemaLookup } from './configuration-check.js';
export { EMPTY_DIRECTORY, knownModulesOf, knownNodesOf, loadAndValidate, locateDesired, locateInDocument } from './load-validate.js';

export interface PreparedPlan {
  desired: DesiredObject[];
  state: ClusterState;
  plan: Plan;
  /** Problems met while observing that did not stop planning (a repository that could not be read). */
  warnings?: string[];
}

/**
 * The resolution part of observe: the image each desired Module runs now (`imageUrl` of its
 * status hash and `IMAGE_URL` of `module/<id>/environment`, the latter preferred: it is what was
 * installed, while the status names the agent's last target), taken from `state` when
 * readClusterState read them with it (`scope.instances`: no round trip of its own), else read in
 * one pipeline; the labels of the full image URLs of Modules the plan creates or updates (`opts.imageLabels`, for
 * max-per-node); and, when a desired Module names a repository module or such an image's labels
 * were not found locally, the catalog of the repositories as `base` leaves them (declared
 * Repository objects replace the configured ones, pruned ones are dropped).
 * Repository failures, and images whose labels were found nowhere, are returned as warnings,
 * never thrown: the catalog and the labels are optional input.
 * Reading a repository may fill its Redis cache (`cluster/repository_cache/<name>`), as NS8 does.
 * @throws RedisError when Redis fails.
 */
export async function observeResolution(redis: Redis, desired: readonly DesiredObject[], base: Plan, opts: ResolveOptions = {}, state?: ClusterState): Promise<{ inputs: ResolutionInputs; warnings: string[] }> {
  const modules = desired.flatMap((d) => (d.object.kind === 'Module' ? [d.object] : []));
  const running = new Map<string, string>();
  const ids = modules.map((m) => m.metadata.name);
  const prefetched = state && ids.length ? runningImagesOf(state, ids) : undefined;
  if (prefetched) {
    for (const id of ids) {
      const image = prefetched.get(id);
      if (image) running.set(id, image);
    }
  } else if (modules.length) {
    const p = redis.pipeline();
    for (const id of ids) p.hget(keys.moduleStatus(id), 'imageUrl').hget(keys.moduleEnvironment(id), 'IMAGE_URL');
    const res = ((await p.exec()) ?? []) as Reply[];
    ids.forEach((id, i) => {
      const image = runningImageOf(id, res[2 * i] ?? [null, null], res[2 * i + 1] ?? [null, null]);
      if (image) running.set(id, image);
    });
  }
  // Full image URLs of Modules this plan creates or updates: only those can be refused by max-per-node.
  const changed = new Set(base.changes.flatMap((c) => (c.kind === 'Module' && c.action !== 'delete' ? [c.id] : [])));
  const urlImages = new Map<string, { source: string; tag: string; ids: string[] }>();
  for (const m of modules) {
    if (usesRepository(m.spec) || !changed.has(m.metadata.name)) continue;
    let r: ReturnType<typeof resolveModule>;
    try {
      r = resolveModule(m.spec, []);
    } catch {
      continue; // annotatePlan reports it
    }
    const entry = urlImages.get(r.image) ?? { source: r.source, tag: r.tag, ids: [] };
    entry.ids.push(m.metadata.name);
    urlImages.set(r.image, entry);
  }
  const imageLabels = urlImages.size && opts.imageLabels !== false ? await lookupImageLabels(opts.imageLabels ?? new LocalImageLabels(new ProcessRunner()), urlImages.keys()) : new Map<string, Record<string, string>>();
  const unlabelled = opts.imageLabels === false ? [] : [...urlImages].filter(([image]) => !imageLabels.has(image));
  const inputs: ResolutionInputs = { running, ...(imageLabels.size ? { imageLabels } : {}) };
  if (!modules.some((m) => usesRepository(m.spec)) && unlabelled.length === 0) return { inputs, warnings: [] };
  const upsert: RepositoryInfo[] = desired.flatMap((d) =>
    d.object.kind === 'Repository' ? [{ name: d.object.metadata.name, url: d.object.spec.url, enabled: d.object.spec.enabled ?? true, testing: d.object.spec.testing ?? false }] : [],
  );
  const remove = base.changes.flatMap((c) => (c.kind === 'Repository' && c.action === 'delete' ? [c.id] : []));
  const catalog = await loadAvailable(redis, { ...(opts.fetch ?? {}), ...(opts.coreVersion !== undefined ? { coreVersion: opts.coreVersion } : {}), planned: { upsert, remove } });
  const failures = catalog.failures.map((f) => ({ repository: f.repository, message: f.error.message }));
  const warnings = failures.map((f) => f.message);
  for (const [image, { source, tag, ids }] of unlabelled) {
    if (catalogLabels(catalog.available, source, tag)) continue;
    const some = ids.slice(0, 5).join(', ') + (ids.length > 5 ? `, and ${ids.length - 5} more` : '');
    warnings.push(`org.nethserver.max-per-node not checked for ${image} (${some}): its labels are neither in local image storage nor in a repository`);
  }
  return { inputs: { ...inputs, catalog: { available: catalog.available, coreVersion: catalog.coreVersion, failures } }, warnings };
}

/**
 * What the preflight of the moves `base` requests needs (MoveFacts), or undefined when it requests
 * none: the nodes that exist (NS8 node records, Node objects stored or desired), `module/<id>/flags`
 * of each moving instance, `ns8ctl/node/<n>/ports` of each source and target node (one pipeline),
 * and the core version (`coreVersion`, else readCoreVersion: no network).
 * @throws RedisError when Redis fails.
 */
export async function observeMoves(redis: Redis, desired: readonly DesiredObject[], base: Plan, state: ClusterState, coreVersion?: string): Promise<MoveFacts | undefined> {
  const moves = movesOf(base);
  if (moves.length === 0) return undefined;
  const nodes = [...new Set(moves.flatMap((m) => [m.from, m.to]))].sort((a, b) => a - b);
  const p = redis.pipeline();
  for (const m of moves) p.smembers(keys.moduleFlags(m.id));
  for (const n of nodes) p.hgetall(keys.nodePorts(n));
  const res = (await p.exec()) as Reply[] | null;
  if (!res) throw new RedisError('redis_pipeline_failed', 'Redis pipeline returned no replies (move preflight)');
  const value = (i: number, what: string): unknown => {
    const [err, v] = res[i] ?? [null, null];
    if (err) throw new RedisError('redis_command_failed', `reading ${what} for the move preflight: ${err.message}`, { cause: err });
    return v;
  };
  const moduleFlags = new Map(moves.map((m, i) => [m.id, [...((value(i, keys.moduleFlags(m.id)) as string[] | null) ?? [])].sort()] as const));
  const nodePorts = new Map(nodes.map((n, i) => [n, (value(moves.length + i, keys.nodePorts(n)) as Record<string, string> | null) ?? {}] as const));
  const declared = desired.flatMap((d) => (d.object.kind === 'Node' ? [d.object.spec.id] : []));
  const knownNodes = [...new Set([...knownNodesOf(state, await readNodeRecords(redis)), ...declared])].sort((a, b) => a - b);
  return { knownNodes, moduleFlags, nodePorts, coreVersion: coreVersion ?? (await readCoreVersion()) };
}

/**
 * observeResolution + observeMoves + the pure annotatePlan: `base` (made by `plan()` from `desired` and `state`)
 * with resolved images, resolution and max-per-node blocks, and update notices; then the
 * `spec.configuration` of every created or updated Module is validated against its
 * configure-module schema (unless `opts.configuration` is false). A schema that cannot be found
 * offline is a warning.
 * @throws ManifestError (file:line:col, /spec/configuration/...) when a configuration is invalid:
 *   nothing may be written. RedisError when Redis fails.
 */
export async function resolvePlan(redis: Redis, desired: readonly DesiredObject[], state: ClusterState, base: Plan, opts: ResolveOptions = {}): Promise<{ plan: Plan; warnings: string[] }> {
  const observed = await observeResolution(redis, desired, base, opts, state);
  const { warnings } = observed;
  const moves = await observeMoves(redis, desired, base, state, observed.inputs.catalog?.coreVersion ?? opts.coreVersion);
  const inputs: ResolutionInputs = moves ? { ...observed.inputs, moves } : observed.inputs;
  const plan = annotatePlan(base, desired, state, inputs);
  if (opts.configuration === false || !desired.some((d) => d.object.kind === 'Module' && d.object.spec.configuration !== undefined)) return { plan, warnings };
  const check = await checkPlannedConfigurations(desired, plan, { lookup: opts.configuration ?? defaultSchemaLookup(), running: inputs.running, locate: locateInDocument });
  if (check.diagnostics.length > 0) throw new ManifestError(check.diagnostics);
  // The schema's secret marks travel with the plan, so every rendering masks them.
  const marked = withSecretNames(plan, check);
  if (check.warnings.length === 0) return { plan: marked, warnings };
  return { plan: { ...marked, warnings: [...(marked.warnings ?? []), ...check.warnings] }, warnings };
}

async function planAndResolve(desired: DesiredObject[], state: ClusterState, redis: Redis, opts: PlanOptions): Promise<PreparedPlan> {
  const base = makePlan(desired, state, { applySet: opts.applySet, prune: opts.prune });
  if (opts.resolve === false) return { desired, state, plan: base, warnings: [] };
  const { plan, warnings } = await resolvePlan(redis, desired, state, base, opts);
  return { desired, state, plan: await withBackupPasswordWarnings(redis, desired, plan), warnings };
}

/**
 * load -> validate -> observe -> plan (with resolution unless `resolve: false`). Read-only (see
 * observeResolution for the repository cache). `allowEmpty` (see loadAndValidate): when false,
 * manifests without any object are refused with prune too (they would prune the whole apply set).
 * @throws RefusedError `manifests_empty` naming `--allow-empty`.
 */
export async function preparePlan(paths: string[], redis: Redis, opts: PlanOptions & { stdin?: () => Promise<string>; allowEmpty?: boolean }): Promise<PreparedPlan> {
  const { desired, state } = await loadAndValidate(paths, redis, { ...(opts.stdin ? { stdin: opts.stdin } : {}), ...(opts.allowEmpty !== undefined ? { allowEmpty: opts.allowEmpty } : {}) });
  if (desired.length === 0 && opts.prune && opts.allowEmpty === false) {
    throw new RefusedError('manifests_empty', `${paths.join(', ')} hold${paths.length === 1 ? 's' : ''} no objects: with --prune that would remove every object of apply set ${opts.applySet}; nothing was written. If that is what you want, add --allow-empty`);
  }
  return planAndResolve(desired, state as ClusterState, redis, opts);
}

/** Re-observes and re-plans the same desired objects (after a conflict). */
export async function replan(desired: DesiredObject[], redis: Redis, opts: PlanOptions): Promise<PreparedPlan> {
  const scope: ReadScope = {
    modules: desired.flatMap((d) => (d.object.kind === 'Module' ? [moduleNameOf(d.object.spec)] : [])),
    repositories: desired.flatMap((d) => (d.object.kind === 'Repository' ? [d.object.metadata.name] : [])),
    nodes: desired.flatMap((d) => (d.object.kind === 'Node' ? [String(d.object.spec.id)] : d.object.kind === 'Module' ? [String(d.object.spec.node)] : [])),
    instances: desired.flatMap((d) => (d.object.kind === 'Module' ? [d.object.metadata.name] : [])),
  };
  const state = await readClusterState(redis, scope);
  return planAndResolve(desired, state, redis, opts);
}

export interface ApplyResult {
  plan: Plan;
  /** How many times the plan was made (more than 1 after conflicts with concurrent applies). */
  attempts: number;
  /** `Kind/id` of unchanged objects whose stored source was updated (their manifest moved), sorted. */
  sourcesUpdated: string[];
}

/**
 * True when applying `prepared` would write something: a change, or the source of an unchanged
 * object whose manifest moved (see findSourceRefreshes). Pure.
 */
export function hasWrites(prepared: PreparedPlan): boolean {
  return prepared.plan.changes.length > 0 || findSourceRefreshes(prepared.desired, prepared.plan, prepared.state).length > 0;
}

/**
 * The checks apply makes before writing a plan, without writing: the prune safety rule
 * (checkPruneSafety), then no blocked change may remain. `apply --dry-run` runs them too, so a
 * dry run fails exactly when the real apply would.
 * @throws RefusedError `prune_refused` (see checkPruneSafety) or `plan_blocked` listing every
 *   blocked change with its reason.
 */
export function checkApplicable(plan: Plan, opts: { forcePrune: boolean }): void {
  checkPruneSafety(plan, { forcePrune: opts.forcePrune });
  if (plan.blocked.length > 0) {
    throw new RefusedError('plan_blocked', 'nothing was written; the plan has blocked changes:\n' + plan.blocked.map((b) => `  ${b.key}: ${b.code ? `[${b.code}] ` : ''}${b.message}`).join('\n'));
  }
}

/**
 * The git revision of each file a plan writes (changed objects, and unchanged ones whose manifest
 * moved: `refreshes`), looked up once per directory; other files give ''.
 */
export async function revisionsOf(prepared: PreparedPlan, lookup: (file: string) => Promise<string>, refreshes = findSourceRefreshes(prepared.desired, prepared.plan, prepared.state)): Promise<(file: string) => string> {
  const files = [...new Set([...prepared.plan.changes.flatMap((c) => (c.source ? [c.source.file] : [])), ...refreshes.map((r) => r.file)])];
  const revisions = new Map(await Promise.all(files.map(async (f) => [f, await lookup(f)] as const)));
  return (f: string): string => revisions.get(f) ?? '';
}

/** Who, when and why for the deletion marks an apply writes (see WriteContext). */
export interface WriteIdentity {
  /** `by` of deletion marks: `user@host` by default; the controller passes its source name. */
  actor?: string;
  /** `why` of deletion marks (default: `pruned: ...` for a prune, `ns8ctl delete` otherwise). */
  why?: string;
  /** Clock for deletion marks and the cluster epoch (default: now). */
  now?: () => Date;
}

/**
 * Whether a plan re-made after a conflict may be written in place of the one the caller was
 * shown: it may only repeat (or drop) the original's changes. A create whose object another
 * writer created meanwhile, an update or delete whose object another writer deleted, marked for
 * deletion or took into another apply set, and any change the original did not have (it would
 * overwrite the other writer's fresh work unseen) make the apply fail instead.
 * @throws WriteConflictError-like ConflictError naming the object and what the other writer did.
 */
export function checkReplan(original: PreparedPlan, next: PreparedPlan, conflict: ConflictError): void {
  const before = new Map(original.plan.changes.map((c) => [c.key, c] as const));
  const refuse = (why: string): never => {
    throw new ConflictError(`${why}; nothing was written (first conflict: ${conflict.message.replace(/; nothing was written$/, '')}). Review the new plan (ns8ctl diff) and apply again`);
  };
  for (const c of next.plan.changes) {
    const was = before.get(c.key);
    const now = next.state.objects.get(c.key);
    const then = original.state.objects.get(c.key);
    if (!was) refuse(`${c.key} was changed by another writer while this apply ran (${describeStored(now)}), and applying now would ${c.action} it, which the plan did not show`);
    else if (was.action === 'create' && now) refuse(`${c.key} was created by another writer while this apply ran (${describeStored(now)}); this apply planned to create it`);
    else if (was.action !== 'create' && !now && then) refuse(`${c.key} was deleted by another writer while this apply ran; this apply planned to ${was.action} it`);
    else if (now && then && now.applySet !== then.applySet) refuse(`${c.key} was taken into apply set ${JSON.stringify(now.applySet)} by another writer while this apply ran (it was in ${JSON.stringify(then.applySet)})`);
  }
  for (const b of next.plan.blocked) if (before.has(b.key)) refuse(`${b.key}: ${b.message}`);
}

function describeStored(o: StoredObject | undefined): string {
  if (!o) return 'now absent';
  const mark = o.deleting ? `, marked for deletion${o.deleting.by ? ` by ${o.deleting.by}` : ''}${o.deleting.why ? ` (${o.deleting.why})` : ''}` : '';
  return `now apply set ${JSON.stringify(o.applySet)}, source ${o.source || '-'}, generation ${o.generation}${mark}`;
}

/**
 * Writes a plan atomically. When a concurrent writer changed an object in between, re-reads,
 * re-plans and tries again (up to `maxAttempts`) as long as the new plan only repeats the
 * original's changes (checkReplan); otherwise it fails with a ConflictError naming the object and
 * what the other writer did. So no update is lost, nothing interleaves, and success is never
 * reported for a write another writer overwrote unseen.
 * checkApplicable (prune safety, nothing blocked) holds for every attempt's plan.
 * Sources are stored absolute (`storedSource`); a desired object the plan leaves alone whose
 * manifest moved gets its `source` and `revision` updated in the same script, without a
 * generation bump (`sourcesUpdated`). An empty plan with no moved source writes nothing.
 * Deletion marks carry `opts.actor` / `opts.why` / `opts.now` (WriteIdentity).
 */
export async function applyPlan(
  prepared: PreparedPlan,
  redis: Redis,
  opts: PlanOptions & WriteIdentity & { forcePrune: boolean; runner: CommandRunner; maxAttempts?: number },
): Promise<ApplyResult> {
  const revisionLookup = makeRevisionLookup(opts.runner);
  const max = opts.maxAttempts ?? 20;
  const now = opts.now ?? ((): Date => new Date());
  let current = prepared;
  for (let attempt = 1; ; attempt++) {
    checkApplicable(current.plan, { forcePrune: opts.forcePrune });
    const refreshes = findSourceRefreshes(current.desired, current.plan, current.state);
    const revisionOf = await revisionsOf(current, revisionLookup, refreshes);
    const at = now();
    const ctx = { revisionOf, sourceOf: storedSource, now: at, ...(opts.actor !== undefined ? { actor: opts.actor } : {}), ...(opts.why !== undefined ? { why: opts.why } : {}) };
    const ops = [...planToWrites(current.plan, current.state, ctx), ...sourceRefreshWrites(refreshes, current.state, revisionOf)];
    try {
      await executeWrites(redis, ops, { epoch: newEpoch(at) });
      return { plan: current.plan, attempts: attempt, sourcesUpdated: refreshes.map((r) => r.key) };
    } catch (err) {
      if (!(err instanceof ConflictError) || attempt >= max) throw err;
      // Randomised pause so that racing appliers do not retry in lock step.
      await new Promise((r) => setTimeout(r, Math.random() * 10 * attempt));
      const next = await replan(prepared.desired, redis, opts);
      checkReplan(prepared, next, err);
      current = next;
    }
  }
}
