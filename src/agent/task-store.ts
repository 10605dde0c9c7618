/**
 * NS8's task bookkeeping in Redis, for one agent:
 * - `task/<agent_id>/<task_id>/context`: the task JSON with secrets masked; 60 s while the task
 *   runs (refreshed every heartbeat), 8 h once it finished;
 * - `task/<agent_id>/<task_id>/{output,error,exit_code}`: set once, 8 h expiry;
 * - channel `progress/<agent_id>/task/<task_id>`: `{"status":…,"progress":N}` on each change;
 * - `<agent_id>/environment`: HASH copy of state/environment, replaced after each task.
 * The final writes and the final status message go in one MULTI, as NS8 does.
 */
import type { Redis } from 'ioredis';
import { maskTaskJson } from '../runtime/mask-ns8.js';

/** Task results live 8 hours (NS8's taskExpireDuration). */
export const TASK_TTL_SECONDS = 8 * 3600;
/** While a task runs its context lives 12 heartbeats (NS8: 12 x 5 s). */
export const CONTEXT_RUNNING_TTL_SECONDS = 60;

/** Task statuses, in NS8's words. */
export type TaskStatus = 'pending' | 'running' | 'completed' | 'aborted' | 'validation-failed';

/** The final result of a task. */
export interface TaskResult {
  status: TaskStatus;
  exitCode: number;
  output: string;
  error: string;
}

/** `task/<agent_id>/<task_id>/<part>` */
export function taskKey(agentId: string, taskId: string, part: 'context' | 'output' | 'error' | 'exit_code'): string {
  return `task/${agentId}/${taskId}/${part}`;
}

/** `progress/<agent_id>/task/<task_id>` */
export function progressChannel(agentId: string, taskId: string): string {
  return `progress/${agentId}/task/${taskId}`;
}

/** `<agent_id>/tasks`: the LIST the agent BRPOPs. */
export function taskQueueKey(agentId: string): string {
  return `${agentId}/tasks`;
}

/** `<agent_id>/environment`: HASH copy of the state file. */
export function environmentKey(agentId: string): string {
  return `${agentId}/environment`;
}

/** The progress message NS8 publishes. */
export function progressMessage(status: TaskStatus, progress: number): string {
  return JSON.stringify({ status, progress });
}

/** Stores the masked task JSON as the task context (running TTL). */
export async function storeTaskContext(redis: Redis, agentId: string, taskId: string, rawTask: string): Promise<void> {
  await redis.set(taskKey(agentId, taskId, 'context'), maskTaskJson(rawTask), 'EX', CONTEXT_RUNNING_TTL_SECONDS);
}

/** Heartbeat while a task runs: extends the context and republishes the status. */
export async function heartbeatTask(redis: Redis, agentId: string, taskId: string, status: TaskStatus, progress: number): Promise<void> {
  await redis.multi().expire(taskKey(agentId, taskId, 'context'), CONTEXT_RUNNING_TTL_SECONDS).publish(progressChannel(agentId, taskId), progressMessage(status, progress)).exec();
}

/** Publishes a status/progress message. */
export async function publishProgress(redis: Redis, agentId: string, taskId: string, status: TaskStatus, progress: number): Promise<void> {
  await redis.publish(progressChannel(agentId, taskId), progressMessage(status, progress));
}

/**
 * Finishes a task in one MULTI: replaces `<agent_id>/environment` with `env` (when given), sets
 * output, error and exit_code with the 8 h expiry, extends the context to 8 h and publishes the
 * final status.
 */
export async function finalizeTask(redis: Redis, agentId: string, taskId: string, result: TaskResult, progress: number, env?: ReadonlyMap<string, string>): Promise<void> {
  const m = redis.multi();
  if (env) {
    m.del(environmentKey(agentId));
    if (env.size > 0) m.hset(environmentKey(agentId), Object.fromEntries(env));
  }
  m.set(taskKey(agentId, taskId, 'output'), result.output, 'EX', TASK_TTL_SECONDS);
  m.set(taskKey(agentId, taskId, 'error'), result.error, 'EX', TASK_TTL_SECONDS);
  m.set(taskKey(agentId, taskId, 'exit_code'), String(result.exitCode), 'EX', TASK_TTL_SECONDS);
  m.expire(taskKey(agentId, taskId, 'context'), TASK_TTL_SECONDS);
  m.publish(progressChannel(agentId, taskId), progressMessage(result.status, progress));
  const replies = await m.exec();
  const failed = replies?.find(([err]) => err);
  if (failed?.[0]) throw failed[0];
}

/** Replaces `<agent_id>/environment` with `env` in one MULTI (dump-env). */
export async function mirrorEnvironment(redis: Redis, agentId: string, env: ReadonlyMap<string, string>): Promise<void> {
  const m = redis.multi().del(environmentKey(agentId));
  if (env.size > 0) m.hset(environmentKey(agentId), Object.fromEntries(env));
  const replies = await m.exec();
  const failed = replies?.find(([err]) => err);
  if (failed?.[0]) throw failed[0];
}
