/**
 * The apply pipeline, stage by stage: load -> validate -> observe -> plan -> (render) -> apply.
 * Only `applyPlan` writes; everything before it is read-only, so invalid input writes nothing.
 */
import type { Redis } from 'ioredis';
import { ConflictError, ManifestError, RefusedError } from '../errors.js';
import type { CommandRunner } from '../host/runner.js';
import { loadManifests, type LoadResult } from '../manifest/load.js';
import { moduleNameOf, type DesiredObject, type ModuleSpec } from '../manifest/types.js';
import { validateManifests } from '../manifest/validate.js';
import { checkPruneSafety, plan as makePlan } from '../plan/planner.js';
import type { ClusterState } from '../plan/state.js';
import type { Plan } from '../plan/types.js';
import { readClusterState, type ReadScope } from '../state/read-state.js';
import { executeWrites } from '../state/write-state.js';
import { makeRevisionLookup } from './git-revision.js';
import { planToWrites } from './to-writes.js';

export interface PlanOptions {
  applySet: string;
  prune: boolean;
}

export interface PreparedPlan {
  desired: DesiredObject[];
  state: ClusterState;
  plan: Plan;
}

/** Best-effort names from raw documents, so one read fetches the NS8 keys they will need. */
function scopeOf(loaded: LoadResult): ReadScope {
  const modules: string[] = [];
  const repositories: string[] = [];
  const nodes: string[] = [];
  for (const d of loaded.documents) {
    const v = d.value as { kind?: unknown; metadata?: { name?: unknown }; spec?: Record<string, unknown> } | null;
    if (!v || typeof v !== 'object') continue;
    if (v.kind === 'Module' && v.spec) {
      const name = moduleNameOf({ ...(typeof v.spec.module === 'string' ? { module: v.spec.module } : {}), ...(typeof v.spec.image === 'string' ? { image: v.spec.image } : {}) } as ModuleSpec);
      if (name) modules.push(name);
    } else if (v.kind === 'Repository' && typeof v.metadata?.name === 'string') repositories.push(v.metadata.name);
    else if (v.kind === 'Node' && v.spec && v.spec.id !== undefined) nodes.push(String(v.spec.id));
  }
  return { modules, repositories, nodes };
}

/** Nodes the cluster has records of: Node objects in desired state. */
export function knownNodesOf(state: ClusterState): number[] {
  const out: number[] = [];
  for (const o of state.objects.values()) if (o.object.kind === 'Node' && !o.deleting) out.push(o.object.spec.id);
  return out;
}

/** Loads and validates manifests against the live state; throws ManifestError listing every problem. */
export async function loadAndValidate(
  paths: string[],
  redis: Redis | undefined,
  opts: { stdin?: () => Promise<string> } = {},
): Promise<{ desired: DesiredObject[]; state: ClusterState | undefined; loaded: LoadResult }> {
  const loaded = await loadManifests(paths, opts.stdin ? { stdin: opts.stdin } : {});
  const state = redis ? await readClusterState(redis, scopeOf(loaded)) : undefined;
  const result = validateManifests(loaded, state ? { knownNodes: knownNodesOf(state) } : undefined);
  const diagnostics = result.diagnostics; // includes the load diagnostics, sorted
  if (diagnostics.length > 0) throw new ManifestError(diagnostics);
  return { desired: result.objects, state, loaded };
}

/** load -> validate -> observe -> plan. Read-only. */
export async function preparePlan(paths: string[], redis: Redis, opts: PlanOptions & { stdin?: () => Promise<string> }): Promise<PreparedPlan> {
  const { desired, state } = await loadAndValidate(paths, redis, opts.stdin ? { stdin: opts.stdin } : {});
  const observed = state as ClusterState;
  return { desired, state: observed, plan: makePlan(desired, observed, { applySet: opts.applySet, prune: opts.prune }) };
}

/** Re-observes and re-plans the same desired objects (after a conflict). */
export async function replan(desired: DesiredObject[], redis: Redis, opts: PlanOptions): Promise<PreparedPlan> {
  const scope: ReadScope = {
    modules: desired.flatMap((d) => (d.object.kind === 'Module' ? [moduleNameOf(d.object.spec)] : [])),
    repositories: desired.flatMap((d) => (d.object.kind === 'Repository' ? [d.object.metadata.name] : [])),
    nodes: desired.flatMap((d) => (d.object.kind === 'Node' ? [String(d.object.spec.id)] : [])),
  };
  const state = await readClusterState(redis, scope);
  return { desired, state, plan: makePlan(desired, state, opts) };
}

export interface ApplyResult {
  plan: Plan;
  /** How many times the plan was made (more than 1 after conflicts with concurrent applies). */
  attempts: number;
}

/**
 * Writes a plan atomically. When a concurrent apply changed an object in between, re-reads,
 * re-plans and tries again (up to `maxAttempts`), so no update is lost and nothing interleaves.
 * The prune safety rule is checked on every attempt's plan.
 */
export async function applyPlan(
  prepared: PreparedPlan,
  redis: Redis,
  opts: PlanOptions & { forcePrune: boolean; runner: CommandRunner; maxAttempts?: number },
): Promise<ApplyResult> {
  const revisionLookup = makeRevisionLookup(opts.runner);
  const max = opts.maxAttempts ?? 20;
  let current = prepared;
  for (let attempt = 1; ; attempt++) {
    checkPruneSafety(current.plan, { forcePrune: opts.forcePrune });
    if (current.plan.blocked.length > 0) {
      throw new RefusedError('plan_blocked', 'nothing was written; the plan has blocked changes:\n' + current.plan.blocked.map((b) => `  ${b.key}: ${b.message}`).join('\n'));
    }
    const files = [...new Set(current.plan.changes.flatMap((c) => (c.source ? [c.source.file] : [])))];
    const revisions = new Map(await Promise.all(files.map(async (f) => [f, await revisionLookup(f)] as const)));
    const ops = planToWrites(current.plan, current.state, { revisionOf: (f) => revisions.get(f) ?? '' });
    try {
      await executeWrites(redis, ops);
      return { plan: current.plan, attempts: attempt };
    } catch (err) {
      if (!(err instanceof ConflictError) || attempt >= max) throw err;
      // Randomised pause so that racing appliers do not retry in lock step.
      await new Promise((r) => setTimeout(r, Math.random() * 10 * attempt));
      current = await replan(prepared.desired, redis, opts);
    }
  }
}
