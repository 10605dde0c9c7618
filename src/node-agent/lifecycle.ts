/**
 * NS8's lifecycle actions, run by the node agent through the instance's own module agent, as
 * tasks (src/agent/task-client.ts): `create-module` once a new instance is in place (ns8-core-facts
 * §1 step 17), `update-module` after an update (§10 step 5), `destroy-module` before removal (§4
 * step 2). Waits are bounded; a task submitted by an earlier attempt (kept in the agent's record)
 * is waited for again, never submitted twice.
 */
import type { Redis } from 'ioredis';
import { agentIdOf } from '../agent/names.js';
import { buildTask, taskState, waitForTask } from '../agent/task-client.js';
import { taskQueueKey, type TaskResult } from '../agent/task-store.js';
import { Ns8ctlError } from '../errors.js';

export type LifecycleAction = 'create-module' | 'update-module' | 'destroy-module';

/** The agent's exit code for an action that does not exist (NS8: 8). */
const NOT_DEFINED = 8;

export interface LifecycleRunOptions {
  /** Give up waiting after this many ms (the task stays queued: a later attempt waits for it). */
  timeoutMs: number;
  /** A task an earlier attempt submitted: waited for unless it is lost. */
  taskId?: string;
  /** Called with the new task's id before it is submitted (to record it). */
  onSubmit?: (taskId: string) => Promise<void>;
  signal?: AbortSignal;
}

function interpret(id: string, action: LifecycleAction, taskId: string, r: TaskResult): 'completed' | 'not_defined' {
  if (r.exitCode === 0) return 'completed';
  if (r.exitCode === NOT_DEFINED) return 'not_defined';
  const tail = r.error.trim().split('\n').slice(-3).join(' | ');
  throw new Ns8ctlError('lifecycle_action_failed', `${id}: ${action} failed with exit code ${r.exitCode} (task ${taskId})${tail ? `: ${tail}` : ''}`);
}

/**
 * Runs `action` with `data` on `module/<id>` and waits for its result, at most `timeoutMs`.
 * Resolves `completed` (exit 0) or `not_defined` (exit 8: the module has no such action, e.g. no
 * update-module of its own; nothing to do). Needs a connection that may push to the instance's
 * task queue and read its task keys (the node agent's).
 * @throws Ns8ctlError `lifecycle_action_failed` (another exit code; the message has the end of the
 *   task's error output), AgentError `task_timeout` (no result in time: is the module agent
 *   running?) or `task_wait_aborted`.
 */
export async function runLifecycleAction(redis: Redis, id: string, action: LifecycleAction, data: unknown, opts: LifecycleRunOptions): Promise<'completed' | 'not_defined'> {
  const agentId = agentIdOf(id);
  const wait = { timeoutMs: opts.timeoutMs, ...(opts.signal ? { signal: opts.signal } : {}) };
  if (opts.taskId) {
    const st = await taskState(redis, agentId, opts.taskId);
    if (st.state === 'done') return interpret(id, action, opts.taskId, st.result);
    if (st.state !== 'unknown') return interpret(id, action, opts.taskId, await waitForTask(redis, agentId, opts.taskId, wait));
    // Lost (the agent stopped while running it, or its result expired): submitted again below.
  }
  const task = buildTask(action, { data });
  await opts.onSubmit?.(task.id);
  const result = await waitForTask(redis, agentId, task.id, {
    ...wait,
    afterSubscribe: async () => {
      await redis.lpush(taskQueueKey(agentId), task.json);
    },
  });
  return interpret(id, action, task.id, result);
}
