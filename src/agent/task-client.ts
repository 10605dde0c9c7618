/**
 * Submitting tasks to an agent and following them, as NS8 clients do: LPUSH the task JSON on
 * `<agent_id>/tasks`, follow `progress/<agent_id>/task/<id>`, then read
 * `task/<agent_id>/<id>/{output,error,exit_code}`. Needs a connection that may write the agent's
 * queue and read its task keys (ns8ctl's admin connection). Used by `ns8ctl run-action` and by the
 * reconciler (configure-module, get-configuration).
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { AgentError } from '../errors.js';
import { TaskFailedError } from './errors.js';
import { isTaskId } from './names.js';
import { progressChannel, taskKey, taskQueueKey, type TaskResult, type TaskStatus } from './task-store.js';
import { buildRelayRequest, relayProgressChannel, relayQueueKey, relayResultKey } from './task-relay.js';

/** Task fields besides the action. */
export interface SubmitOptions {
  data?: unknown;
  extra?: unknown;
  parent?: string;
  /** Principal the task runs for (`module/traefik1`); omit for the privileged cluster submitter. */
  user?: string;
  /** Task id (default: a new uuid). */
  id?: string;
}

/** How to wait. */
export interface WaitOptions {
  /** Called for every progress message. */
  onProgress?(status: TaskStatus, progress: number): void;
  signal?: AbortSignal;
  /** Give up after this many ms (default: wait forever). */
  timeoutMs?: number;
  /** Also check the result keys this often, in case a message was missed (default 2000 ms). */
  pollMs?: number;
  /** Runs once the progress channel is subscribed (runTask submits the task here). */
  afterSubscribe?(): Promise<void>;
}

const FINAL: readonly string[] = ['completed', 'aborted', 'validation-failed'];

/** Builds the NS8 task JSON. */
export function buildTask(action: string, opts: SubmitOptions = {}): { id: string; json: string } {
  const id = opts.id ?? randomUUID();
  if (!isTaskId(id)) throw new AgentError('task_id_invalid', `task id ${JSON.stringify(id)} is not valid: use letters, digits, ".", "_" and "-"`);
  const task: Record<string, unknown> = { id, action, data: opts.data ?? {}, extra: opts.extra ?? {}, parent: opts.parent ?? '' };
  if (opts.user) task['user'] = opts.user;
  task['timestamp'] = new Date().toISOString();
  return { id, json: JSON.stringify(task) };
}

/** LPUSHes a task on `<agentId>/tasks`; returns its id. */
export async function submitTask(redis: Redis, agentId: string, action: string, opts: SubmitOptions = {}): Promise<string> {
  const { id, json } = buildTask(action, opts);
  await redis.lpush(taskQueueKey(agentId), json);
  return id;
}

/** Reads a finished task's result, or undefined while it has none. */
export async function readTaskResult(redis: Redis, agentId: string, taskId: string): Promise<TaskResult | undefined> {
  return resultOf(await redis.mget(taskKey(agentId, taskId, 'output'), taskKey(agentId, taskId, 'error'), taskKey(agentId, taskId, 'exit_code')));
}

/** A result from its [output, error, exit_code] keys; undefined while exit_code is unset. */
function resultOf([output, error, code]: (string | null | undefined)[]): TaskResult | undefined {
  if (code === null || code === undefined) return undefined;
  const exitCode = Number(code);
  return { status: exitCode === 0 ? 'completed' : exitCode === 10 ? 'validation-failed' : 'aborted', exitCode, output: output ?? '', error: error ?? '' };
}

/** What awaitResult follows: a progress channel, how to read the result, how to name the task. */
interface ResultWatch {
  /** Connection to SUBSCRIBE on (none, or SUBSCRIBE refused: the result is polled only). */
  subscriber: Redis | undefined;
  channel: string;
  read(): Promise<TaskResult | undefined>;
  /** Messages of the `task_wait_aborted` and `task_timeout` errors. */
  abortedMessage: string;
  timeoutMessage(ms: number | undefined): string;
}

/**
 * Follows `w.channel` for progress and polls `w.read()` until a result exists (the final status of
 * the progress messages wins over the one derived from the exit code). Unsubscribes at the end.
 */
async function awaitResult(w: ResultWatch, opts: WaitOptions): Promise<TaskResult> {
  const sub = w.subscriber;
  let finalStatus: TaskStatus | undefined;
  let wake: () => void = () => undefined;
  const onMessage = (ch: string, message: string): void => {
    if (ch !== w.channel) return;
    try {
      const m = JSON.parse(message) as { status?: string; progress?: number };
      const status = (m.status ?? 'running') as TaskStatus;
      opts.onProgress?.(status, typeof m.progress === 'number' ? m.progress : 0);
      if (FINAL.includes(status)) {
        finalStatus = status;
        wake();
      }
    } catch {
      // not a progress message
    }
  };
  let subscribed = false;
  if (sub) {
    sub.on('message', onMessage);
    subscribed = await sub.subscribe(w.channel).then(
      () => true,
      () => false, // SUBSCRIBE refused: poll only
    );
  }
  try {
    await opts.afterSubscribe?.();
    const deadline = opts.timeoutMs !== undefined ? Date.now() + opts.timeoutMs : Infinity;
    for (;;) {
      const result = await w.read();
      if (result) return finalStatus ? { ...result, status: finalStatus } : result;
      if (opts.signal?.aborted) throw new AgentError('task_wait_aborted', w.abortedMessage);
      if (Date.now() > deadline) throw new AgentError('task_timeout', w.timeoutMessage(opts.timeoutMs));
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.min(opts.pollMs ?? 2000, Math.max(0, deadline - Date.now())));
        const onAbort = (): void => done();
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        function done(): void {
          clearTimeout(t);
          opts.signal?.removeEventListener('abort', onAbort);
          wake = () => undefined;
          resolve();
        }
        wake = done;
      });
    }
  } finally {
    if (sub) {
      sub.off('message', onMessage);
      if (subscribed) await sub.unsubscribe(w.channel).catch(() => undefined);
    }
  }
}

/**
 * Waits until the task has a result. Subscribes to its progress channel (on a duplicate
 * connection) and polls the exit_code key as a fallback. Rejects with AgentError `task_timeout`
 * after timeoutMs, or `task_wait_aborted` when the signal aborts.
 */
export async function waitForTask(redis: Redis, agentId: string, taskId: string, opts: WaitOptions = {}): Promise<TaskResult> {
  const sub = redis.duplicate();
  try {
    return await awaitResult(
      {
        subscriber: sub,
        channel: progressChannel(agentId, taskId),
        read: () => readTaskResult(redis, agentId, taskId),
        abortedMessage: `stopped waiting for task ${taskId} on ${agentId}`,
        timeoutMessage: (ms) => `task ${taskId} on ${agentId} has no result after ${ms} ms (is the agent running? it pops ${taskQueueKey(agentId)})`,
      },
      opts,
    );
  } finally {
    sub.disconnect();
  }
}

/** A task's result with its id. */
export interface TaskOutcome extends TaskResult {
  taskId: string;
}

/**
 * Submits a task and waits for its result (subscribing before submitting, so no progress
 * message is missed). Resolves whatever the exit code; see runTaskOrThrow.
 */
export async function runTask(redis: Redis, agentId: string, action: string, opts: SubmitOptions & WaitOptions = {}): Promise<TaskOutcome> {
  const { id, json } = buildTask(action, opts);
  const result = await waitForTask(redis, agentId, id, {
    ...opts,
    afterSubscribe: async () => {
      await redis.lpush(taskQueueKey(agentId), json);
    },
  });
  return { taskId: id, ...result };
}

/** Like runTask, but a non-zero exit code rejects with TaskFailedError (exit code kept). */
export async function runTaskOrThrow(redis: Redis, agentId: string, action: string, opts: SubmitOptions & WaitOptions = {}): Promise<TaskOutcome> {
  const r = await runTask(redis, agentId, action, opts);
  if (r.exitCode !== 0) throw new TaskFailedError({ agentId, action, taskId: r.taskId, status: r.status, exitCode: r.exitCode, output: r.output, error: r.error });
  return r;
}

/** Where a submitted task is (see taskState). */
export type TaskState = { state: 'done'; result: TaskResult } | { state: 'queued' | 'running' | 'unknown' };

/**
 * Where task `taskId` of `agentId` is now: `done` (it has a result), `queued` (still in
 * `<agent_id>/tasks`, no agent took it), `running` (an agent took it: its context key lives,
 * refreshed by the agent's heartbeat), or `unknown` (none of these: the agent stopped while
 * running it, or the result expired). Reads only. @throws the Redis client's error.
 */
export async function taskState(redis: Redis, agentId: string, taskId: string): Promise<TaskState> {
  const result = await readTaskResult(redis, agentId, taskId);
  if (result) return { state: 'done', result };
  if (await queuedTaskJson(redis, agentId, taskId)) return { state: 'queued' };
  if ((await redis.exists(taskKey(agentId, taskId, 'context'))) === 1) return { state: 'running' };
  // Taken between the two reads above: the result may have landed meanwhile.
  const late = await readTaskResult(redis, agentId, taskId);
  return late ? { state: 'done', result: late } : { state: 'unknown' };
}

async function queuedTaskJson(redis: Redis, agentId: string, taskId: string): Promise<string | undefined> {
  const queued = await redis.lrange(taskQueueKey(agentId), 0, -1);
  return queued.find((json) => {
    try {
      return (JSON.parse(json) as { id?: unknown }).id === taskId;
    } catch {
      return false;
    }
  });
}

/**
 * Takes task `taskId` back out of `<agent_id>/tasks` if no agent took it yet (LREM of its exact
 * JSON). Returns true when it was removed (it will never run), false when it was not queued
 * (already taken, finished, or never submitted). @throws the Redis client's error.
 */
export async function withdrawTask(redis: Redis, agentId: string, taskId: string): Promise<boolean> {
  const json = await queuedTaskJson(redis, agentId, taskId);
  if (json === undefined) return false;
  return (await redis.lrem(taskQueueKey(agentId), 1, json)) > 0;
}

// ---- Through the task relay (a module's own credentials; see task-relay.ts) --------------------

/** Task fields a module may set when it submits through the relay (the relay sets `user`). */
export type RelaySubmitOptions = Omit<SubmitOptions, 'user'>;

/** How to wait for a relayed task. */
export interface RelayWaitOptions extends WaitOptions {
  /**
   * A connection that may SUBSCRIBE (NS8's read-only `default` user: module users may not) for
   * progress messages; this function subscribes and unsubscribes on it. Without it, or when
   * SUBSCRIBE is refused, the result is polled every pollMs.
   */
  subscriber?: Redis;
}

/**
 * Submits a task to `agentId` as instance `self` through the task relay: LPUSHes the request on
 * `module/<self>/relay/tasks`, the only queue a module's ACL lets it write; the relay runs it as
 * `module/<self>`. Returns the task id. Rejects with AgentError `relay_request_invalid` for an
 * agent id or action the relay would refuse, or with the Redis client's error (NOPERM when
 * `redis` is not `self`'s connection).
 */
export async function submitTaskViaRelay(redis: Redis, self: string, agentId: string, action: string, opts: RelaySubmitOptions = {}): Promise<string> {
  const { id, json } = buildRelayRequest(agentId, action, opts);
  await redis.lpush(relayQueueKey(self), json);
  return id;
}

/** Reads a relayed task's result from `task/module/<self>/relay/<id>/...`, or undefined while it has none. */
export async function readRelayedTaskResult(redis: Redis, self: string, taskId: string): Promise<TaskResult | undefined> {
  return resultOf(await redis.mget(relayResultKey(self, taskId, 'output'), relayResultKey(self, taskId, 'error'), relayResultKey(self, taskId, 'exit_code')));
}

/**
 * Waits until the relay has copied the task's result to `self`'s relay result keys, following
 * `progress/module/<self>/relay/<id>` on opts.subscriber. Rejects with AgentError `task_timeout`
 * after timeoutMs (naming the relay queue: is the controller leader running the relay?), or
 * `task_wait_aborted` when the signal aborts.
 */
export async function waitForRelayedTask(redis: Redis, self: string, taskId: string, opts: RelayWaitOptions = {}): Promise<TaskResult> {
  return awaitResult(
    {
      subscriber: opts.subscriber,
      channel: relayProgressChannel(self, taskId),
      read: () => readRelayedTaskResult(redis, self, taskId),
      abortedMessage: `stopped waiting for relayed task ${taskId} of module/${self}`,
      timeoutMessage: (ms) => `relayed task ${taskId} of module/${self} has no result after ${ms} ms (is the task relay running? the controller leader runs it and pops ${relayQueueKey(self)}; is the target agent running?)`,
    },
    opts,
  );
}

/**
 * Submits a task through the relay and waits for its result (subscribing first, so no progress
 * message is missed). Resolves whatever the exit code: 32 `module_permission_denied` when `self`
 * holds no role allowing the action, 10 with NS8's validation output when the relay refused the
 * request, 11 when the relay is busy.
 */
export async function runTaskViaRelay(redis: Redis, self: string, agentId: string, action: string, opts: RelaySubmitOptions & RelayWaitOptions = {}): Promise<TaskOutcome> {
  const { id, json } = buildRelayRequest(agentId, action, opts);
  const result = await waitForRelayedTask(redis, self, id, {
    ...opts,
    afterSubscribe: async () => {
      await redis.lpush(relayQueueKey(self), json);
    },
  });
  return { taskId: id, ...result };
}
