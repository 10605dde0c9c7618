/**
 * Declarative configuration of one Module, the controller's part: once the node agent reports the
 * instance Ready at the desired generation, run configure-module with `spec.configuration` when it
 * differs from what configure-module last accepted (sha256 kept in
 * `ns8ctl/configuration/module/<id>`); on a drift check, run get-configuration, compare
 * (diffConfiguration with the configure-module schema) and report the field diff, healing it only
 * when the object's source has self-heal on. Secrets never reach Redis, events or conditions
 * (beyond the task itself, in the agent's queue, as NS8 clients do).
 *
 * Tasks never hold a work-queue slot for long: each is submitted once and remembered in the record
 * (`pendingTask`), a reconcile waits a few seconds for it and otherwise asks to be requeued, and a
 * later reconcile reads that same task's result. Tasks nobody took are withdrawn after a timeout.
 *
 * The record belongs to one instance: it names the instance's MODULE_UUID (`instanceUuid`), and a
 * record naming another uuid (the id was removed and added again) is dropped unread, so a
 * re-created instance is always configured again.
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { diffConfiguration, formatConfigurationDiff } from '../configuration/configuration.js';
import { TaskFailedError } from '../agent/errors.js';
import { agentIdOf } from '../agent/names.js';
import { buildTask, readTaskResult, taskState, waitForTask, withdrawTask } from '../agent/task-client.js';
import { taskQueueKey, type TaskResult } from '../agent/task-store.js';
import { AgentError, type Ns8ctlError, RedisError } from '../errors.js';
import { canonicalJson } from '../runtime/canonical.js';
import { isSecretKey, MASK, maskString } from '../runtime/mask.js';
import { keys } from '../state/keys.js';
import type { ConfigurationSchemaLookup } from '../configuration/configuration-schema.js';
import type { EventRecorder } from '../state/events.js';

/** What the configuration step tells the Module summary (conditions.ts). */
export interface ConfigurationFacts {
  /** configure-module refused this configuration at this generation (masked agent output). */
  failed?: string;
  /** configure-module could not be run yet (no agent answered); retried with backoff. */
  pending?: string;
  /** Field diff between spec.configuration and get-configuration (masked), when not healed. */
  drift?: string[];
}

/** The stored record (`ns8ctl/configuration/module/<id>`), parsed. */
export interface ConfigurationRecord {
  /** MODULE_UUID (`cluster/module_uuid`) of the instance the record was written for. */
  instanceUuid: string;
  appliedHash: string;
  appliedGeneration: number;
  appliedTime: string;
  appliedTask: string;
  failedHash: string;
  failedGeneration: number;
  failedMessage: string;
  drift: string[];
  driftCheckedTime: string;
  /** The task an earlier reconcile submitted and whose result is still awaited (empty: none). */
  pendingTask: string;
  pendingAction: string;
  /** Configuration hash the pending task carries. */
  pendingHash: string;
  pendingGeneration: number;
  pendingSince: string;
  /** Why it was submitted: `changed`, `drift` (self-heal) or `check` (get-configuration). */
  pendingWhy: string;
}

export interface ConfigurationReconcileDeps {
  redis: Redis;
  events: EventRecorder;
  now: () => Date;
  /** configure-module schemas for normalising get-configuration output (defaults filled in). */
  schemas?: ConfigurationSchemaLookup;
  /** Whether the source named by an object's apply set heals drift (objects of no controller source: false). */
  selfHeal: (applySet: string) => boolean;
  /** Run get-configuration when the last check is at least this old (default 10 min; 0: every reconcile). */
  driftCheckEveryMs?: number;
  /** A task no agent took after this long is withdrawn from the queue (default 120 s); retried with backoff. */
  taskTimeoutMs?: number;
  /** How long one reconcile waits for a task's result before giving its work-queue slot back (default 5 s). */
  taskWaitMs?: number;
  /** Ends a wait at once (SIGTERM, leadership lost); the task stays pending for a later reconcile. */
  signal?: AbortSignal;
}

/** What to reconcile. */
export interface ConfigurationInput {
  id: string;
  generation: number;
  applySet: string;
  /** `spec.configuration`; undefined: nothing to configure (the record is forgotten). */
  configuration: Record<string, unknown> | undefined;
  /** The node agent reports the instance Ready at `generation`, not suspended, not being removed. */
  ready: boolean;
  /** Image installed now (for finding the schema in the install dir). */
  installedImage?: string | undefined;
}

/** sha256 of the canonical JSON of a configuration: equal content, equal hash. */
export function configurationHash(config: unknown): string {
  return createHash('sha256').update(canonicalJson(config ?? {})).digest('hex');
}

/** Parses the stored record; missing fields are empty. */
export function parseConfigurationRecord(h: Record<string, string>): ConfigurationRecord {
  let drift: string[] = [];
  try {
    drift = h.drift ? (JSON.parse(h.drift) as string[]) : [];
  } catch {
    drift = [];
  }
  return {
    instanceUuid: h.instanceUuid ?? '',
    appliedHash: h.appliedHash ?? '',
    appliedGeneration: Number(h.appliedGeneration ?? 0),
    appliedTime: h.appliedTime ?? '',
    appliedTask: h.appliedTask ?? '',
    failedHash: h.failedHash ?? '',
    failedGeneration: Number(h.failedGeneration ?? 0),
    failedMessage: h.failedMessage ?? '',
    drift,
    driftCheckedTime: h.driftCheckedTime ?? '',
    pendingTask: h.pendingTask ?? '',
    pendingAction: h.pendingAction ?? '',
    pendingHash: h.pendingHash ?? '',
    pendingGeneration: Number(h.pendingGeneration ?? 0),
    pendingSince: h.pendingSince ?? '',
    pendingWhy: h.pendingWhy ?? '',
  };
}

/** Every string value under a secret-looking key, at any depth. */
function secretValues(value: unknown, secret = false, out: string[] = []): string[] {
  if (typeof value === 'string' || typeof value === 'number') {
    if (secret && String(value).length > 0) out.push(String(value));
  } else if (Array.isArray(value)) value.forEach((v) => secretValues(v, secret, out));
  else if (value && typeof value === 'object') for (const [k, v] of Object.entries(value)) secretValues(v, secret || isSecretKey(k), out);
  return out;
}

/**
 * Masks text an agent produced (error output, validation output) for a configuration: every
 * secret value of `configuration` (plain or JSON-escaped) and URL passwords become MASK.
 */
export function maskAgentText(text: string, configuration: unknown): string {
  let out = text;
  for (const v of secretValues(configuration).sort((a, b) => b.length - a.length)) {
    for (const form of new Set([v, JSON.stringify(v).slice(1, -1)])) out = out.split(form).join(MASK);
  }
  return maskString(out);
}

/** A one-paragraph description of a refused configure-module (exit code, output, last stderr lines), masked. */
export function describeTaskFailure(err: TaskFailedError, configuration: unknown): string {
  const parts = [err.message];
  if (err.output.trim()) parts.push(`output: ${err.output.trim().slice(0, 500)}`);
  return maskAgentText(parts.join('; '), configuration);
}

type Action = 'configure-module' | 'get-configuration';
type Why = 'changed' | 'drift' | 'check';

/** What one reconcile did with a task. */
type TaskStep =
  | { kind: 'done'; taskId: string; why: Why; result: TaskResult }
  | { kind: 'waiting'; taskId: string; message: string; requeueAfterMs: number }
  | { kind: 'unanswered'; error: Ns8ctlError };

const PENDING_FIELDS = ['pendingTask', 'pendingAction', 'pendingHash', 'pendingGeneration', 'pendingSince', 'pendingWhy'] as const;

function seconds(ms: number): string {
  return ms >= 120_000 ? `${Math.round(ms / 60_000)} min` : `${Math.round(ms / 1000)} s`;
}

/**
 * One configuration reconcile (see the module doc). A task is submitted once and remembered in
 * the record (`pendingTask`): the reconcile waits at most `taskWaitMs` for its result, then gives
 * its work-queue slot back (`requeueAfterMs`: poll again later); a later reconcile reads the
 * result of that same task instead of submitting another. A task no agent took within
 * `taskTimeoutMs` is withdrawn from the queue (`retry`: the work queue backs off, then submits a
 * new one). An aborted `signal` ends the wait at once; the task stays pending.
 * Returns the facts for the summary; the caller writes the summary, then throws `retry`.
 * @throws RedisError (or the client's error) when Redis fails.
 */
export async function reconcileConfiguration(input: ConfigurationInput, deps: ConfigurationReconcileDeps): Promise<{ facts: ConfigurationFacts | undefined; retry?: Error; requeueAfterMs?: number }> {
  const { redis, events } = deps;
  const key = keys.moduleConfiguration(input.id);
  const object = `Module/${input.id}`;
  const agentId = agentIdOf(input.id);
  const [stored, uuid] = await Promise.all([redis.hgetall(key), redis.hget(keys.moduleUuid(), input.id)]);
  // A record written for another instance (another MODULE_UUID: the id was removed and added
  // again, or the record predates `instanceUuid`) says nothing about this one: start afresh.
  const foreign = Object.keys(stored).length > 0 && Boolean(uuid) && stored.instanceUuid !== uuid;
  if (foreign) await redis.del(key);
  const rec = parseConfigurationRecord(foreign ? {} : stored);
  const instanceUuid = uuid ?? '';
  const timeoutMs = deps.taskTimeoutMs ?? 120_000;
  const waitMs = deps.taskWaitMs ?? 5_000;

  const clearPending = async (): Promise<void> => {
    await redis.hdel(key, ...PENDING_FIELDS);
    rec.pendingTask = '';
  };
  /** Disposes of a pending task nobody wants any more; false while it still runs (wait for it). */
  const dropPending = async (): Promise<boolean> => {
    if (!rec.pendingTask) return true;
    if (await withdrawTask(redis, agentId, rec.pendingTask)) {
      await clearPending();
      return true;
    }
    if ((await taskState(redis, agentId, rec.pendingTask)).state === 'running') return false;
    await clearPending();
    return true;
  };

  if (input.configuration === undefined) {
    if (rec.pendingTask) await withdrawTask(redis, agentId, rec.pendingTask);
    await redis.del(key);
    return { facts: undefined };
  }
  const hash = configurationHash(input.configuration);
  const failedNow = rec.failedHash === hash && rec.failedGeneration === input.generation;
  if (!input.ready) return { facts: failedNow ? { failed: rec.failedMessage } : undefined };
  const now = deps.now();

  /** Submits `action` (or finds the task an earlier reconcile submitted) and waits a little for it. */
  const drive = async (action: Action, why: Why, data: unknown): Promise<TaskStep> => {
    let taskId = rec.pendingTask;
    let since = Date.parse(rec.pendingSince);
    let submittedFor = (rec.pendingWhy || why) as Why;
    if (!taskId || rec.pendingAction !== action || rec.pendingHash !== hash) {
      if (!(await dropPending())) {
        return { kind: 'waiting', taskId: rec.pendingTask, message: `an earlier ${rec.pendingAction} task ${rec.pendingTask} of ${input.id} is still running`, requeueAfterMs: 2_000 };
      }
      const task = buildTask(action, { data });
      const replies = await redis
        .multi()
        .hset(key, { instanceUuid, pendingTask: task.id, pendingAction: action, pendingHash: hash, pendingGeneration: String(input.generation), pendingSince: now.toISOString(), pendingWhy: why })
        .lpush(taskQueueKey(agentId), task.json)
        .exec();
      const failed = replies?.find(([err]) => err)?.[0];
      if (!replies || failed) throw new RedisError('redis_write_failed', `${input.id}: submitting ${action}: ${failed?.message ?? 'the transaction was discarded'}`, { cause: failed });
      Object.assign(rec, { pendingTask: task.id, pendingAction: action, pendingHash: hash, pendingSince: now.toISOString(), pendingWhy: why });
      taskId = task.id;
      since = now.getTime();
      submittedFor = why;
    }
    let result = await readTaskResult(redis, agentId, taskId);
    if (!result && waitMs > 0 && !deps.signal?.aborted) {
      try {
        result = await waitForTask(redis, agentId, taskId, { timeoutMs: waitMs, pollMs: Math.min(500, waitMs), ...(deps.signal ? { signal: deps.signal } : {}) });
      } catch (err) {
        const code = (err as { code?: unknown }).code;
        if (code !== 'task_timeout' && code !== 'task_wait_aborted') throw err;
      }
    }
    if (result) {
      await clearPending();
      return { kind: 'done', taskId, why: submittedFor, result };
    }
    const age = Math.max(0, deps.now().getTime() - (Number.isFinite(since) ? since : now.getTime()));
    let state = await taskState(redis, agentId, taskId);
    if (state.state === 'queued' && age >= timeoutMs && (await withdrawTask(redis, agentId, taskId))) {
      await clearPending();
      return { kind: 'unanswered', error: new AgentError('task_timeout', `no agent took ${action} task ${taskId} of ${input.id} within ${seconds(timeoutMs)}: withdrawn from ${taskQueueKey(agentId)} (is the module agent running?); it is submitted again after a backoff`) };
    }
    if (state.state === 'unknown') state = await taskState(redis, agentId, taskId);
    if (state.state === 'done') {
      await clearPending();
      return { kind: 'done', taskId, why: submittedFor, result: state.result };
    }
    if (state.state === 'unknown') {
      await clearPending();
      return { kind: 'unanswered', error: new AgentError('task_lost', `${action} task ${taskId} of ${input.id} was taken by the agent but has neither a result nor a running context (the agent stopped while running it?); it is submitted again after a backoff`) };
    }
    const message =
      state.state === 'queued'
        ? `${action} task ${taskId} waits for the module agent (queued ${seconds(age)} ago; withdrawn after ${seconds(timeoutMs)})`
        : `${action} task ${taskId} is running`;
    return { kind: 'waiting', taskId, message, requeueAfterMs: Math.min(30_000, Math.max(1_000, Math.round(age / 4))) };
  };

  const configure = async (why: 'changed' | 'drift'): Promise<{ facts: ConfigurationFacts; retry?: Error; requeueAfterMs?: number } | undefined> => {
    const step = await drive('configure-module', why, input.configuration);
    if (step.kind === 'waiting') return { facts: { pending: maskAgentText(`${input.id}: ${step.message}`, input.configuration) }, requeueAfterMs: step.requeueAfterMs };
    if (step.kind === 'unanswered') return { facts: { pending: maskAgentText(`configure-module of ${input.id} could not run: ${step.error.message}`, input.configuration) }, retry: step.error };
    const r = step.result;
    if (r.exitCode !== 0) {
      const err = new TaskFailedError({ agentId, action: 'configure-module', taskId: step.taskId, status: r.status, exitCode: r.exitCode, output: r.output, error: r.error });
      const message = describeTaskFailure(err, input.configuration);
      await redis.hset(key, { instanceUuid, failedHash: hash, failedGeneration: String(input.generation), failedMessage: message });
      await events.record({ name: 'module-configuration-failed', type: 'Warning', object, message: `${input.id}: ${message}`, data: { module: input.id, generation: input.generation, task: step.taskId, exitCode: r.exitCode } });
      return { facts: { failed: message } };
    }
    const at = deps.now().toISOString();
    await redis
      .multi()
      .hset(key, { instanceUuid, appliedHash: hash, appliedGeneration: String(input.generation), appliedTime: at, appliedTask: step.taskId, drift: '[]', driftCheckedTime: at })
      .hdel(key, 'failedHash', 'failedGeneration', 'failedMessage')
      .exec();
    if (step.why === 'drift') {
      await events.record({ name: 'module-configuration-drift-corrected', type: 'Warning', object, message: `${input.id}: live configuration differed from spec.configuration; configure-module ran again${rec.drift.length ? `: ${rec.drift.join('; ')}` : ''}`, data: { module: input.id, changes: rec.drift } });
    } else {
      await events.record({ name: 'module-configured', type: 'Normal', object, message: `${input.id}: configure-module applied spec.configuration (generation ${input.generation}, task ${step.taskId})`, data: { module: input.id, generation: input.generation, task: step.taskId } });
    }
    return undefined;
  };

  if (rec.appliedHash !== hash) {
    if (failedNow) {
      if (!(await dropPending())) return { facts: { failed: rec.failedMessage }, requeueAfterMs: 2_000 };
      return { facts: { failed: rec.failedMessage } };
    }
    return (await configure('changed')) ?? { facts: {} };
  }

  // Applied. A heal an earlier reconcile started is finished first.
  if (rec.pendingTask && rec.pendingAction === 'configure-module' && rec.pendingHash === hash) return (await configure('drift')) ?? { facts: {} };
  const driftFacts = (): ConfigurationFacts => (rec.drift.length ? { drift: rec.drift } : {});
  const every = deps.driftCheckEveryMs ?? 600_000;
  const last = rec.driftCheckedTime ? Date.parse(rec.driftCheckedTime) : 0;
  const checking = rec.pendingTask !== '' && rec.pendingAction === 'get-configuration' && rec.pendingHash === hash;
  if (!checking && now.getTime() - last < every) {
    if (rec.pendingTask && !(await dropPending())) return { facts: driftFacts(), requeueAfterMs: 2_000 };
    return { facts: driftFacts() };
  }
  const step = await drive('get-configuration', 'check', {});
  if (step.kind === 'waiting') return { facts: driftFacts(), requeueAfterMs: step.requeueAfterMs };
  if (step.kind === 'unanswered') {
    // Remember the attempt so the check is not retried before it is due again.
    await redis.hset(key, { driftCheckedTime: now.toISOString() });
    return { facts: driftFacts(), retry: step.error };
  }
  let actual: unknown;
  try {
    if (step.result.exitCode !== 0) throw new TaskFailedError({ agentId, action: 'get-configuration', taskId: step.taskId, status: step.result.status, exitCode: step.result.exitCode, output: step.result.output, error: step.result.error });
    actual = JSON.parse(step.result.output) as unknown;
  } catch {
    // A module without get-configuration (or one that fails, or prints no JSON) cannot be
    // drift-checked: remember the attempt so it is not retried before the next check is due.
    await redis.hset(key, { driftCheckedTime: now.toISOString() });
    return { facts: driftFacts() };
  }
  const schema = (await deps.schemas?.find({ id: input.id, installedImage: input.installedImage }).catch(() => undefined))?.schema;
  const diff = diffConfiguration(input.configuration, actual, schema !== undefined ? { schema } : {});
  const lines = formatConfigurationDiff(diff).map((l) => maskAgentText(l, input.configuration));
  if (diff.equal) {
    await redis.hset(key, { drift: '[]', driftCheckedTime: now.toISOString() });
    return { facts: {} };
  }
  if (deps.selfHeal(input.applySet)) {
    rec.drift = lines;
    await redis.hset(key, { driftCheckedTime: now.toISOString() });
    return (await configure('drift')) ?? { facts: {} };
  }
  await redis.hset(key, { drift: JSON.stringify(lines), driftCheckedTime: now.toISOString() });
  if (JSON.stringify(lines) !== JSON.stringify(rec.drift)) {
    await events.record({ name: 'module-configuration-drifted', type: 'Warning', object, message: `${input.id}: live configuration differs from spec.configuration (self-heal is off): ${lines.join('; ')}`, data: { module: input.id, changes: lines } });
  }
  return { facts: { drift: lines } };
}
