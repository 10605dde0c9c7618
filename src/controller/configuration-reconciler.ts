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

/** What reconcileConfiguration returns: the facts for the summary, and how the work queue goes on. */
export interface ConfigurationOutcome {
  facts: ConfigurationFacts | undefined;
  retry?: Error;
  requeueAfterMs?: number;
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
export async function reconcileConfiguration(input: ConfigurationInput, deps: ConfigurationReconcileDeps): Promise<ConfigurationOutcome> {
  const { redis } = deps;
  const key = keys.moduleConfiguration(input.id);
  const agentId = agentIdOf(input.id);
  const [stored, uuid] = await Promise.all([redis.hgetall(key), redis.hget(keys.moduleUuid(), input.id)]);
  // A record written for another instance (another MODULE_UUID: the id was removed and added
  // again, or the record predates `instanceUuid`) says nothing about this one: start afresh.
  const foreign = Object.keys(stored).length > 0 && Boolean(uuid) && stored.instanceUuid !== uuid;
  if (foreign) await redis.del(key);
  const rec = parseConfigurationRecord(foreign ? {} : stored);
  if (input.configuration === undefined) {
    if (rec.pendingTask) await withdrawTask(redis, agentId, rec.pendingTask);
    await redis.del(key);
    return { facts: undefined };
  }
  const hash = configurationHash(input.configuration);
  const failedNow = rec.failedHash === hash && rec.failedGeneration === input.generation;
  if (!input.ready) return { facts: failedNow ? { failed: rec.failedMessage } : undefined };
  const run = new ConfigurationRun(input, deps, rec, hash, uuid ?? '');
  if (rec.appliedHash !== hash) return run.applyChange(failedNow);
  return run.keepApplied();
}

/** Where a submitted (or found) task stands before its result is read. */
interface Submitted {
  taskId: string;
  /** When it was submitted (ms; NaN when the record does not say). */
  since: number;
  submittedFor: Why;
}

/** One reconcile of a module's configuration record, whose spec.configuration is set and whose instance is ready. */
class ConfigurationRun {
  private readonly key: string;
  private readonly object: string;
  private readonly agentId: string;
  private readonly now: Date;
  private readonly timeoutMs: number;
  private readonly waitMs: number;

  constructor(
    private readonly input: ConfigurationInput,
    private readonly deps: ConfigurationReconcileDeps,
    private readonly rec: ConfigurationRecord,
    private readonly hash: string,
    private readonly instanceUuid: string,
  ) {
    this.key = keys.moduleConfiguration(input.id);
    this.object = `Module/${input.id}`;
    this.agentId = agentIdOf(input.id);
    this.now = deps.now();
    this.timeoutMs = deps.taskTimeoutMs ?? 120_000;
    this.waitMs = deps.taskWaitMs ?? 5_000;
  }

  /** spec.configuration differs from the one applied: configure, unless this very content failed for this generation. */
  async applyChange(failedNow: boolean): Promise<ConfigurationOutcome> {
    if (failedNow) {
      if (!(await this.dropPending())) return { facts: { failed: this.rec.failedMessage }, requeueAfterMs: 2_000 };
      return { facts: { failed: this.rec.failedMessage } };
    }
    return (await this.configure('changed')) ?? { facts: {} };
  }

  /** Applied: finishes a heal an earlier reconcile started, else checks for drift when due. */
  async keepApplied(): Promise<ConfigurationOutcome> {
    const { rec, hash } = this;
    if (rec.pendingTask && rec.pendingAction === 'configure-module' && rec.pendingHash === hash) return (await this.configure('drift')) ?? { facts: {} };
    const every = this.deps.driftCheckEveryMs ?? 600_000;
    const last = rec.driftCheckedTime ? Date.parse(rec.driftCheckedTime) : 0;
    const checking = rec.pendingTask !== '' && rec.pendingAction === 'get-configuration' && rec.pendingHash === hash;
    if (!checking && this.now.getTime() - last < every) {
      if (rec.pendingTask && !(await this.dropPending())) return { facts: this.driftFacts(), requeueAfterMs: 2_000 };
      return { facts: this.driftFacts() };
    }
    return this.checkDrift();
  }

  private driftFacts(): ConfigurationFacts {
    return this.rec.drift.length ? { drift: this.rec.drift } : {};
  }

  /** Runs get-configuration and compares its output with spec.configuration: equal, healed (self-heal), or reported. */
  private async checkDrift(): Promise<ConfigurationOutcome> {
    const { input, deps, key } = this;
    const checkedNow = { driftCheckedTime: this.now.toISOString() };
    const step = await this.drive('get-configuration', 'check', {});
    if (step.kind === 'waiting') return { facts: this.driftFacts(), requeueAfterMs: step.requeueAfterMs };
    if (step.kind === 'unanswered') {
      // Remember the attempt so the check is not retried before it is due again.
      await deps.redis.hset(key, checkedNow);
      return { facts: this.driftFacts(), retry: step.error };
    }
    const actual = this.liveConfiguration(step);
    if (actual === undefined) {
      // A module without get-configuration (or one that fails, or prints no JSON) cannot be
      // drift-checked: remember the attempt so it is not retried before the next check is due.
      await deps.redis.hset(key, checkedNow);
      return { facts: this.driftFacts() };
    }
    const schema = (await deps.schemas?.find({ id: input.id, installedImage: input.installedImage }).catch(() => undefined))?.schema;
    const diff = diffConfiguration(input.configuration, actual.value, schema !== undefined ? { schema } : {});
    const lines = formatConfigurationDiff(diff).map((l) => maskAgentText(l, input.configuration));
    if (diff.equal) {
      await deps.redis.hset(key, { drift: '[]', ...checkedNow });
      return { facts: {} };
    }
    if (deps.selfHeal(input.applySet)) {
      this.rec.drift = lines;
      await deps.redis.hset(key, checkedNow);
      return (await this.configure('drift')) ?? { facts: {} };
    }
    await deps.redis.hset(key, { drift: JSON.stringify(lines), ...checkedNow });
    if (JSON.stringify(lines) !== JSON.stringify(this.rec.drift)) {
      await deps.events.record({ name: 'module-configuration-drifted', type: 'Warning', object: this.object, message: `${input.id}: live configuration differs from spec.configuration (self-heal is off): ${lines.join('; ')}`, data: { module: input.id, changes: lines } });
    }
    return { facts: { drift: lines } };
  }

  /** The JSON get-configuration printed, or undefined when it failed or printed no JSON. */
  private liveConfiguration(step: Extract<TaskStep, { kind: 'done' }>): { value: unknown } | undefined {
    if (step.result.exitCode !== 0) return undefined;
    try {
      return { value: JSON.parse(step.result.output) as unknown };
    } catch {
      return undefined;
    }
  }

  /** Runs configure-module; records success (and its event) or failure. Undefined once applied. */
  private async configure(why: 'changed' | 'drift'): Promise<{ facts: ConfigurationFacts; retry?: Error; requeueAfterMs?: number } | undefined> {
    const { input } = this;
    const step = await this.drive('configure-module', why, input.configuration);
    if (step.kind === 'waiting') return { facts: { pending: maskAgentText(`${input.id}: ${step.message}`, input.configuration) }, requeueAfterMs: step.requeueAfterMs };
    if (step.kind === 'unanswered') return { facts: { pending: maskAgentText(`configure-module of ${input.id} could not run: ${step.error.message}`, input.configuration) }, retry: step.error };
    if (step.result.exitCode !== 0) return { facts: { failed: await this.recordFailure(step.taskId, step.result) } };
    await this.recordApplied(step.taskId, step.why);
    return undefined;
  }

  /** Remembers that this content failed for this generation (not retried until either changes); returns the masked message. */
  private async recordFailure(taskId: string, r: TaskResult): Promise<string> {
    const { input, agentId } = this;
    const err = new TaskFailedError({ agentId, action: 'configure-module', taskId, status: r.status, exitCode: r.exitCode, output: r.output, error: r.error });
    const message = describeTaskFailure(err, input.configuration);
    await this.deps.redis.hset(this.key, { instanceUuid: this.instanceUuid, failedHash: this.hash, failedGeneration: String(input.generation), failedMessage: message });
    await this.deps.events.record({ name: 'module-configuration-failed', type: 'Warning', object: this.object, message: `${input.id}: ${message}`, data: { module: input.id, generation: input.generation, task: taskId, exitCode: r.exitCode } });
    return message;
  }

  private async recordApplied(taskId: string, why: Why): Promise<void> {
    const { input, deps, rec } = this;
    const at = deps.now().toISOString();
    await deps.redis
      .multi()
      .hset(this.key, { instanceUuid: this.instanceUuid, appliedHash: this.hash, appliedGeneration: String(input.generation), appliedTime: at, appliedTask: taskId, drift: '[]', driftCheckedTime: at })
      .hdel(this.key, 'failedHash', 'failedGeneration', 'failedMessage')
      .exec();
    if (why === 'drift') {
      await deps.events.record({ name: 'module-configuration-drift-corrected', type: 'Warning', object: this.object, message: `${input.id}: live configuration differed from spec.configuration; configure-module ran again${rec.drift.length ? `: ${rec.drift.join('; ')}` : ''}`, data: { module: input.id, changes: rec.drift } });
    } else {
      await deps.events.record({ name: 'module-configured', type: 'Normal', object: this.object, message: `${input.id}: configure-module applied spec.configuration (generation ${input.generation}, task ${taskId})`, data: { module: input.id, generation: input.generation, task: taskId } });
    }
  }

  private async clearPending(): Promise<void> {
    await this.deps.redis.hdel(this.key, ...PENDING_FIELDS);
    this.rec.pendingTask = '';
  }

  /** Disposes of a pending task nobody wants any more; false while it still runs (wait for it). */
  private async dropPending(): Promise<boolean> {
    const { redis } = this.deps;
    if (!this.rec.pendingTask) return true;
    if (await withdrawTask(redis, this.agentId, this.rec.pendingTask)) {
      await this.clearPending();
      return true;
    }
    if ((await taskState(redis, this.agentId, this.rec.pendingTask)).state === 'running') return false;
    await this.clearPending();
    return true;
  }

  /** Submits `action` (or finds the task an earlier reconcile submitted) and waits a little for it. */
  private async drive(action: Action, why: Why, data: unknown): Promise<TaskStep> {
    const submitted = await this.submitOrFind(action, why, data);
    if ('kind' in submitted) return submitted;
    const { taskId, submittedFor } = submitted;
    const result = await this.waitBriefly(taskId);
    if (result) {
      await this.clearPending();
      return { kind: 'done', taskId, why: submittedFor, result };
    }
    return this.followUp(action, submitted);
  }

  /** The pending task when it is for this action and content; otherwise drops it (or waits for it to end) and submits a new one. */
  private async submitOrFind(action: Action, why: Why, data: unknown): Promise<Submitted | TaskStep> {
    const { rec, input, hash, now } = this;
    if (rec.pendingTask && rec.pendingAction === action && rec.pendingHash === hash) return { taskId: rec.pendingTask, since: Date.parse(rec.pendingSince), submittedFor: (rec.pendingWhy || why) as Why };
    if (!(await this.dropPending())) {
      return { kind: 'waiting', taskId: rec.pendingTask, message: `an earlier ${rec.pendingAction} task ${rec.pendingTask} of ${input.id} is still running`, requeueAfterMs: 2_000 };
    }
    const task = buildTask(action, { data });
    const replies = await this.deps.redis
      .multi()
      .hset(this.key, { instanceUuid: this.instanceUuid, pendingTask: task.id, pendingAction: action, pendingHash: hash, pendingGeneration: String(input.generation), pendingSince: now.toISOString(), pendingWhy: why })
      .lpush(taskQueueKey(this.agentId), task.json)
      .exec();
    const failed = replies?.find(([err]) => err)?.[0];
    if (!replies || failed) throw new RedisError('redis_write_failed', `${input.id}: submitting ${action}: ${failed?.message ?? 'the transaction was discarded'}`, { cause: failed });
    Object.assign(rec, { pendingTask: task.id, pendingAction: action, pendingHash: hash, pendingSince: now.toISOString(), pendingWhy: why });
    return { taskId: task.id, since: now.getTime(), submittedFor: why };
  }

  /** The task's result, waiting at most taskWaitMs (not at all once aborted). */
  private async waitBriefly(taskId: string): Promise<TaskResult | undefined> {
    const { redis, signal } = this.deps;
    const result = await readTaskResult(redis, this.agentId, taskId);
    if (result || this.waitMs <= 0 || signal?.aborted) return result;
    try {
      return await waitForTask(redis, this.agentId, taskId, { timeoutMs: this.waitMs, pollMs: Math.min(500, this.waitMs), ...(signal ? { signal } : {}) });
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code !== 'task_timeout' && code !== 'task_wait_aborted') throw err;
      return undefined;
    }
  }

  /** A task without a result yet: withdrawn when no agent took it in time, lost when nobody holds it, else still waited for. */
  private async followUp(action: Action, { taskId, since, submittedFor }: Submitted): Promise<TaskStep> {
    const { redis } = this.deps;
    const { input, agentId, timeoutMs } = this;
    const age = Math.max(0, this.deps.now().getTime() - (Number.isFinite(since) ? since : this.now.getTime()));
    let state = await taskState(redis, agentId, taskId);
    if (state.state === 'queued' && age >= timeoutMs && (await withdrawTask(redis, agentId, taskId))) {
      await this.clearPending();
      return { kind: 'unanswered', error: new AgentError('task_timeout', `no agent took ${action} task ${taskId} of ${input.id} within ${seconds(timeoutMs)}: withdrawn from ${taskQueueKey(agentId)} (is the module agent running?); it is submitted again after a backoff`) };
    }
    if (state.state === 'unknown') state = await taskState(redis, agentId, taskId);
    if (state.state === 'done') {
      await this.clearPending();
      return { kind: 'done', taskId, why: submittedFor, result: state.result };
    }
    if (state.state === 'unknown') {
      await this.clearPending();
      return { kind: 'unanswered', error: new AgentError('task_lost', `${action} task ${taskId} of ${input.id} was taken by the agent but has neither a result nor a running context (the agent stopped while running it?); it is submitted again after a backoff`) };
    }
    const message =
      state.state === 'queued'
        ? `${action} task ${taskId} waits for the module agent (queued ${seconds(age)} ago; withdrawn after ${seconds(timeoutMs)})`
        : `${action} task ${taskId} is running`;
    return { kind: 'waiting', taskId, message, requeueAfterMs: Math.min(30_000, Math.max(1_000, Math.round(age / 4))) };
  }
}
