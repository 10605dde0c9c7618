/**
 * Submitting tasks to an agent and following them, as NS8 clients do: LPUSH the task JSON on
 * `<agent_id>/tasks`, follow `progress/<agent_id>/task/<id>`, then read
 * `task/<agent_id>/<id>/{output,error,exit_code}`. Needs a connection that may write the agent's
 * queue and read its task keys (ns8ctl's admin connection). Used by `ns8ctl run-action` and by the
 * reconciler (configure-module, get-configuration).
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { AgentError, TaskFailedError } from './errors.js';
import { isTaskId } from './names.js';
import { progressChannel, taskKey, taskQueueKey, type TaskResult, type TaskStatus } from './task-store.js';

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
  const [output, error, code] = await redis.mget(taskKey(agentId, taskId, 'output'), taskKey(agentId, taskId, 'error'), taskKey(agentId, taskId, 'exit_code'));
  if (code === null || code === undefined) return undefined;
  const exitCode = Number(code);
  return { status: exitCode === 0 ? 'completed' : exitCode === 10 ? 'validation-failed' : 'aborted', exitCode, output: output ?? '', error: error ?? '' };
}

/**
 * Waits until the task has a result. Subscribes to its progress channel (on a duplicate
 * connection) and polls the exit_code key as a fallback. Rejects with AgentError `task_timeout`
 * after timeoutMs, or `task_wait_aborted` when the signal aborts.
 */
export async function waitForTask(redis: Redis, agentId: string, taskId: string, opts: WaitOptions = {}): Promise<TaskResult> {
  const sub = redis.duplicate();
  let finalStatus: TaskStatus | undefined;
  let wake: () => void = () => undefined;
  sub.on('message', (_channel: string, message: string) => {
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
  });
  try {
    await sub.subscribe(progressChannel(agentId, taskId));
    await opts.afterSubscribe?.();
    const deadline = opts.timeoutMs !== undefined ? Date.now() + opts.timeoutMs : Infinity;
    for (;;) {
      const result = await readTaskResult(redis, agentId, taskId);
      if (result) return finalStatus ? { ...result, status: finalStatus } : result;
      if (opts.signal?.aborted) throw new AgentError('task_wait_aborted', `stopped waiting for task ${taskId} on ${agentId}`);
      if (Date.now() > deadline) throw new AgentError('task_timeout', `task ${taskId} on ${agentId} has no result after ${opts.timeoutMs} ms (is the agent running? it pops ${taskQueueKey(agentId)})`);
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
