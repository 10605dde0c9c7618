/**
 * Keeps the controller's summary of one Module (`ns8ctl/conditions/module/<id>`: Ready,
 * Reconciling, Stalled, Drifted, observedGeneration, lastAppliedRevision) equal to what desired
 * state, the node agent's status, the suspension and the source's drift report say. Writes only
 * when the summary changed, and records an event for each transition worth a human's attention.
 */
import type { Redis } from 'ioredis';
import { RedisError } from '../errors.js';
import { parseStatus } from '../node-agent/status.js';
import type { ModuleSpec } from '../manifest/types.js';
import { parseStoredObject } from '../state/read-state.js';
import { keys } from '../state/keys.js';
import { findCondition, moduleTransitionEvent, sameConditions, stampConditions, summarizeModule, transitions, type Condition, type ObjectSummary } from './conditions.js';
import { reconcileConfiguration, type ConfigurationReconcileDeps } from './configuration-reconciler.js';
import type { EventRecorder } from '../state/events.js';
import type { Suspension } from './suspend.js';

type Reply = [Error | null, unknown];

/** Queue key of a Module. */
export function moduleKey(id: string): string {
  return `Module/${id}`;
}

function parseJson<T>(v: string | undefined, d: T): T {
  if (!v) return d;
  try {
    return JSON.parse(v) as T;
  } catch {
    return d;
  }
}

function parseSuspension(v: string | null): Suspension | undefined {
  if (v === null) return undefined;
  try {
    return JSON.parse(v) as Suspension;
  } catch {
    return { reason: v, by: '', since: '' };
  }
}

/** The stored summary of a Module, parsed; undefined when there is none. */
export function parseSummary(h: Record<string, string>): ObjectSummary | undefined {
  if (!h || !h.conditions) return undefined;
  return {
    conditions: parseJson<Condition[]>(h.conditions, []),
    generation: Number(h.generation ?? 0),
    observedGeneration: Number(h.observedGeneration ?? 0),
    lastAppliedRevision: h.lastAppliedRevision ?? '',
    source: h.source ?? '',
    suspended: h.suspended === 'true',
  };
}

/** The summary hash fields (`keys.objectConditions`) of a summary. */
export function summaryFields(s: ObjectSummary): Record<string, string> {
  return {
    conditions: JSON.stringify(s.conditions),
    generation: String(s.generation),
    observedGeneration: String(s.observedGeneration),
    lastAppliedRevision: s.lastAppliedRevision,
    source: s.source,
    suspended: String(s.suspended),
  };
}

function sameSummary(a: ObjectSummary | undefined, b: ObjectSummary): boolean {
  if (!a || !sameConditions(a.conditions, b.conditions)) return false;
  const { conditions: _a, ...ra } = summaryFields(a);
  const { conditions: _b, ...rb } = summaryFields(b);
  return JSON.stringify(ra) === JSON.stringify(rb);
}

export interface ModuleReconcilerDeps {
  redis: Redis;
  events: EventRecorder;
  now: () => Date;
  /** Whether the module's Drifted condition is True now (for the drift gauge); false when gone. */
  onDrift?: (id: string, drifted: boolean) => void;
  /** Declarative configuration (configure-module, drift checks); omitted: not reconciled. */
  configuration?: Omit<ConfigurationReconcileDeps, 'redis' | 'events' | 'now'>;
  /**
   * Asks for another reconcile of this module after `ms` (a configure-module task still runs, a
   * suspension lapses); called at most once, with the earliest time.
   */
  requeueAfter?: (ms: number) => void;
}

/** One reconcile of a Module summary. Throws RedisError when Redis cannot be read or written. */
export async function reconcileModuleSummary(id: string, deps: ModuleReconcilerDeps): Promise<ObjectSummary | undefined> {
  const { redis } = deps;
  const state = await readModuleState(redis, id);
  const { agent, suspension, prev } = state;
  const stored = parseStoredObject('Module', id, state.desiredHash);
  if (!stored) {
    if (Object.keys(state.prevHash).length > 0) await redis.del(keys.objectConditions('Module', id));
    deps.onDrift?.(id, false);
    return undefined;
  }
  const spec = stored.object.spec as ModuleSpec;
  const facts = {
    id,
    generation: stored.generation,
    revision: stored.revision,
    source: stored.source,
    deleting: Boolean(stored.deleting),
    node: typeof spec.node === 'number' ? spec.node : undefined,
    agent,
    suspended: suspension ? { reason: suspension.reason, ...(suspension.until ? { until: suspension.until } : {}) } : undefined,
    desiredDrift: await readDesiredDrift(redis, id, stored.applySet),
  };
  const configured = await reconcileModuleConfiguration(id, stored, facts, state, deps);
  const { next, retry } = configured;
  let { requeueAt } = configured;
  if (suspension?.until) {
    // The suspension lapses by itself (a TTL): nothing announces it, so look again then.
    const left = Date.parse(suspension.until) - deps.now().getTime() + 50;
    if (Number.isFinite(left) && left >= 0) requeueAt = Math.min(requeueAt ?? Infinity, left);
  }
  if (requeueAt !== undefined && !retry) deps.requeueAfter?.(requeueAt);
  deps.onDrift?.(id, findCondition(next.conditions, 'Drifted')?.status === 'True');
  const summary = sameSummary(prev, next) ? (prev as ObjectSummary) : await writeSummary(id, prev, next, deps);
  if (retry) throw retry;
  return summary;
}

/** A module's desired hash, agent status, suspension and previous summary, read in one pipeline. */
async function readModuleState(redis: Redis, id: string) {
  const p = redis.pipeline();
  p.hgetall(keys.desired('Module', id));
  p.hgetall(keys.moduleStatus(id));
  p.get(keys.suspension('module', id));
  p.hgetall(keys.objectConditions('Module', id));
  const res = (await p.exec()) as Reply[] | null;
  if (!res) throw new RedisError('redis_pipeline_failed', `reading the state of module ${id}: Redis returned no replies`);
  for (const [err] of res) if (err) throw new RedisError('redis_command_failed', `reading the state of module ${id}: ${err.message}`, { cause: err });
  const prevHash = res[3]![1] as Record<string, string>;
  return {
    desiredHash: res[0]![1] as Record<string, string>,
    agent: parseStatus(id, res[1]![1] as Record<string, string>),
    suspension: parseSuspension(res[2]![1] as string | null),
    prevHash,
    prev: parseSummary(prevHash),
  };
}

/** The drift its source reports for this module (self-heal off), if any. */
async function readDesiredDrift(redis: Redis, id: string, applySet: string | undefined): Promise<{ source: string; message: string } | undefined> {
  if (!applySet) return undefined;
  const drifted = parseJson<string[]>((await redis.hget(keys.sourceStatus(applySet), 'driftedKeys')) ?? undefined, []);
  if (!drifted.includes(moduleKey(id))) return undefined;
  return { source: applySet, message: `desired state of ${id} differs from source ${applySet} (changed outside it; self-heal is off)` };
}

/** The summary, with spec.configuration reconciled once the module is converged (when configured); its retry and requeue. */
async function reconcileModuleConfiguration(
  id: string,
  stored: NonNullable<ReturnType<typeof parseStoredObject>>,
  facts: Parameters<typeof summarizeModule>[0],
  state: Awaited<ReturnType<typeof readModuleState>>,
  deps: ModuleReconcilerDeps,
): Promise<{ next: ObjectSummary; retry: Error | undefined; requeueAt: number | undefined }> {
  const next = summarizeModule(facts);
  if (!deps.configuration) return { next, retry: undefined, requeueAt: undefined };
  const spec = stored.object.spec as ModuleSpec;
  const ready = findCondition(next.conditions, 'Ready');
  const res = await reconcileConfiguration(
    {
      id,
      generation: stored.generation,
      applySet: stored.applySet ?? '',
      configuration: spec.configuration,
      ready: ready?.status === 'True' && ready.reason === 'Converged' && !state.suspension && !stored.deleting,
      installedImage: state.agent?.imageUrl || undefined,
    },
    { ...deps.configuration, redis: deps.redis, events: deps.events, now: deps.now },
  );
  return { next: res.facts ? summarizeModule({ ...facts, configuration: res.facts }) : next, retry: res.retry, requeueAt: res.requeueAfterMs };
}

/** Writes the new summary (conditions stamped with their transition times) and records an event per transition. */
async function writeSummary(id: string, prev: ObjectSummary | undefined, next: ObjectSummary, deps: ModuleReconcilerDeps): Promise<ObjectSummary> {
  const summaryKey = keys.objectConditions('Module', id);
  const stamped: ObjectSummary = { ...next, conditions: stampConditions(prev?.conditions, next.conditions, deps.now()) };
  await deps.redis.multi().del(summaryKey).hset(summaryKey, summaryFields(stamped)).exec();
  for (const t of transitions(prev?.conditions, stamped.conditions)) {
    const ev = moduleTransitionEvent(t);
    if (!ev) continue;
    await deps.events.record({
      name: ev.name,
      type: ev.type,
      object: moduleKey(id),
      message: `${id}: ${t.condition.message}`,
      data: { module: id, condition: t.type, status: t.to, reason: t.condition.reason, generation: stamped.generation, observedGeneration: stamped.observedGeneration },
    });
  }
  return stamped;
}
