/**
 * The get-configuration / configure-module convention as the reconciler uses it: apply a
 * Module's `spec.configuration` by running configure-module, read the live configuration back with
 * get-configuration, and compare the two (diffConfiguration) for the Drifted condition. Needs a
 * connection that may submit tasks to the instance and read their results (ns8ctl's admin one).
 */
import type { Redis } from 'ioredis';
import { AgentError } from '../errors.js';
import { diffConfiguration, type ConfigurationDiff } from '../configuration/configuration.js';
import { agentIdOf, assertInstanceId } from './names.js';
import { runTaskOrThrow, type TaskOutcome, type WaitOptions } from './task-client.js';

/**
 * Runs configure-module on `instanceId` with `configuration` as input. Resolves with the task
 * outcome; rejects with TaskFailedError (exit code and output kept: validation errors are the
 * output's JSON array) when the action fails, AgentError `task_timeout` when no agent answers.
 */
export async function applyConfiguration(redis: Redis, instanceId: string, configuration: unknown, opts: WaitOptions = {}): Promise<TaskOutcome> {
  return runTaskOrThrow(redis, agentIdOf(assertInstanceId(instanceId)), 'configure-module', { ...opts, data: configuration ?? {} });
}

/** Runs get-configuration and parses its output. AgentError `configuration_unreadable` when the output is not JSON. */
export async function readConfiguration(redis: Redis, instanceId: string, opts: WaitOptions = {}): Promise<unknown> {
  const r = await runTaskOrThrow(redis, agentIdOf(assertInstanceId(instanceId)), 'get-configuration', { ...opts, data: {} });
  try {
    return JSON.parse(r.output) as unknown;
  } catch (err) {
    throw new AgentError('configuration_unreadable', `${instanceId}: get-configuration printed no JSON (task ${r.taskId}): ${(err as Error).message}`, { cause: err });
  }
}

/** Reads the live configuration and diffs it against the desired one (see diffConfiguration for the rules). */
export async function checkConfigurationDrift(redis: Redis, instanceId: string, desired: unknown, opts: WaitOptions & { schema?: unknown; strict?: boolean } = {}): Promise<ConfigurationDiff> {
  const actual = await readConfiguration(redis, instanceId, opts);
  return diffConfiguration(desired, actual, { ...(opts.schema !== undefined ? { schema: opts.schema } : {}), ...(opts.strict !== undefined ? { strict: opts.strict } : {}) });
}
