/**
 * The module agent (`ns8ctl agent`): one per instance, run by the instance's own unit with its
 * Redis ACL credentials. It BRPOPs `<agent_id>/tasks` (timeout 5 s), stores each task's masked
 * context, checks that the submitter may run the action, runs it (built-ins list-actions and
 * cancel-task, or an action made of steps), publishes progress and stores the results as NS8's
 * agent does. At most `maxConcurrency` tasks run at once; a task popped while all slots are busy
 * waits `overloadWaitMs` once, then ends with exit code 11 ("Agent is busy").
 * start()/stop() are idempotent; stop() stops popping and waits for the running tasks.
 */
import path from 'node:path';
import type { Redis } from 'ioredis';
import type { CommandRunner } from '../host/runner.js';
import { listActionNames, resolveAction, type AgentTask, type BuiltinAction } from './action-catalog.js';
import { PERMISSION_DENIED_ERROR, PERMISSION_DENIED_EXIT_CODE, checkTaskPermission } from './authorizations.js';
import { readEnvironmentFile } from './env-file.js';
import { isSafeName, isTaskId } from './names.js';
import { executeAction, type ActionOutcome } from './run-action.js';
import type { SystemdAdapter } from './systemd-status.js';
import { finalizeTask, heartbeatTask, mirrorEnvironment, publishProgress, storeTaskContext, taskQueueKey, type TaskResult, type TaskStatus } from './task-store.js';

/** How one agent runs. */
export interface AgentOptions {
  /** `module/<id>` (also the Redis ACL user name). */
  agentId: string;
  /** `~/.config` (rootless) or `/var/lib/nethserver/<id>` (rootfull). */
  installDir: string;
  /** `<installDir>/state`: working directory, `environment` file. */
  stateDir: string;
  /** Actions directories, lowest precedence first: base actions dir(s), then `<installDir>/actions`. */
  actionsDirs: readonly string[];
  /** Base actions in TypeScript (createBaseActions()); files with the same step names replace them. */
  builtins?: readonly BuiltinAction[];
  rootfull?: boolean;
  /** Environment given to steps (default: process.env). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Running tasks cap (NS8 MAX_CONCURRENCY = 32). */
  maxConcurrency?: number;
  /** BRPOP timeout in seconds (NS8 polling interval: 5). */
  pollSeconds?: number;
  /** Wait before refusing a task when all slots are busy (NS8: 500 ms). */
  overloadWaitMs?: number;
  /** Heartbeat period: context TTL extension and status republish (NS8: 5 s). */
  heartbeatMs?: number;
  /** How long a step's pipes may stay open after it exits (default 5000 ms). */
  drainMs?: number;
  /** Agent log (default: stderr). Never receives task data or secrets. */
  log?: (line: string) => void;
}

/** What the agent talks to. `redis` is connected with the agent's own ACL credentials. */
export interface AgentDeps {
  redis: Redis;
  runner: CommandRunner;
  systemd?: SystemdAdapter;
}

/** A running agent. */
export interface AgentHandle {
  /** Starts popping tasks; resolves once the queue connection is ready. `signal` aborting calls stop(). */
  start(signal?: AbortSignal): Promise<void>;
  /** Stops popping, waits for running tasks, closes the connections the agent opened. */
  stop(): Promise<void>;
  /** Resolves when the pop loop has ended (after stop(), or a fatal error). */
  readonly done: Promise<void>;
  /** Ids of the tasks running now. */
  running(): string[];
}

const BUSY_EXIT_CODE = 11;

/** Creates the agent. Nothing happens until start(). */
export function runAgent(opts: AgentOptions, deps: AgentDeps): AgentHandle {
  const log = opts.log ?? ((line: string) => process.stderr.write(line + '\n'));
  const maxConcurrency = opts.maxConcurrency ?? 32;
  const pollSeconds = opts.pollSeconds ?? 5;
  const heartbeatMs = opts.heartbeatMs ?? 5000;
  const builtins = opts.builtins ?? [];
  const running = new Map<string, { controller: AbortController; done: Promise<void> }>();
  let blocking: Redis | undefined;
  let stopping = false;
  let started: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));

  const finish = async (task: AgentTask, result: TaskResult, progress: number): Promise<void> => {
    const env = await readEnvironmentFile(path.join(opts.stateDir, 'environment')).catch(() => undefined);
    try {
      await finalizeTask(deps.redis, opts.agentId, task.id, result, progress, env);
    } catch (err) {
      log(`error: ${opts.agentId}: task ${task.id}: cannot store the result: ${(err as Error).message}`);
    }
    log(`task/${opts.agentId}/${task.id}: action "${task.action}" status is "${result.status}" (${result.exitCode})`);
  };

  const publish = (task: AgentTask, status: TaskStatus, progress: number): void => {
    publishProgress(deps.redis, opts.agentId, task.id, status, progress).catch((err: Error) => log(`error: ${opts.agentId}: publish progress: ${err.message}`));
  };

  const runBuiltin = async (task: AgentTask): Promise<TaskResult | undefined> => {
    if (task.action === 'list-actions') {
      const names = await listActionNames(opts.actionsDirs, builtins);
      return { status: 'completed', exitCode: 0, output: JSON.stringify(names), error: '' };
    }
    if (task.action === 'cancel-task') {
      const target = (task.data as { task?: unknown } | null | undefined)?.task;
      if (typeof target !== 'string' || target === '') {
        return { status: 'validation-failed', exitCode: 10, output: JSON.stringify([{ parameter: 'task', error: 'task_required', value: target ?? null, field: 'task' }]), error: 'cancel-task: input must be {"task":"<task id>"}\n' };
      }
      const r = running.get(target);
      if (!r) return { status: 'aborted', exitCode: 2, output: '', error: `cancel-task: task ${target} is not running on ${opts.agentId}\n` };
      log(`warning: task/${opts.agentId}/${target}: cancelled by task ${task.id}`);
      r.controller.abort();
      return { status: 'completed', exitCode: 0, output: '', error: '' };
    }
    return undefined;
  };

  const handle = async (task: AgentTask, controller: AbortController): Promise<void> => {
    let status: TaskStatus = 'pending';
    let progress = 0;
    const beat = setInterval(() => {
      heartbeatTask(deps.redis, opts.agentId, task.id, status, progress).catch(() => undefined);
    }, heartbeatMs);
    beat.unref();
    try {
      const decision = await checkTaskPermission(deps.redis, opts.agentId, task.user, task.action);
      if (!decision.allowed) {
        log(`warning: ${opts.agentId}: task ${task.id} refused: ${decision.reason}`);
        await finish(task, { status: 'aborted', exitCode: PERMISSION_DENIED_EXIT_CODE, output: '', error: `${PERMISSION_DENIED_ERROR}: ${decision.reason}\n` }, 0);
        return;
      }
      const builtinResult = await runBuiltin(task);
      if (builtinResult) {
        await finish(task, builtinResult, 100);
        return;
      }
      let outcome: ActionOutcome;
      if (!isSafeName(task.action)) {
        outcome = { status: 'aborted', exitCode: 8, output: '', error: `Action ${JSON.stringify(task.action)} is not defined (not a valid action name)\n`, progress: 0, lastStep: '{unknown}' };
      } else {
        const plan = await resolveAction(task.action, opts.actionsDirs, builtins);
        outcome = await executeAction(plan, task, {
          agentId: opts.agentId,
          installDir: opts.installDir,
          stateDir: opts.stateDir,
          rootfull: opts.rootfull ?? false,
          baseEnv: opts.env ?? process.env,
          services: { runner: deps.runner, redis: deps.redis, ...(deps.systemd ? { systemd: deps.systemd } : {}) },
          signal: controller.signal,
          onStatus: (s, p) => {
            status = s;
            progress = p;
            publish(task, s, p);
          },
          onEnvDumped: (env) => mirrorEnvironment(deps.redis, opts.agentId, env),
          log,
          ...(opts.drainMs !== undefined ? { drainMs: opts.drainMs } : {}),
        });
      }
      await finish(task, outcome, outcome.progress);
    } catch (err) {
      log(`error: ${opts.agentId}: task ${task.id} (${task.action}) failed in the agent: ${(err as Error).message}`);
      await finish(task, { status: 'aborted', exitCode: 1, output: '', error: `agent error: ${(err as Error).message}\n` }, progress);
    } finally {
      clearInterval(beat);
    }
  };

  const accept = async (raw: string): Promise<void> => {
    let task: AgentTask;
    try {
      const parsed = JSON.parse(raw) as unknown;
      if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new TypeError('not a JSON object');
      task = parsed as AgentTask;
    } catch (err) {
      log(`error: ${opts.agentId}: task ignored for decoding error: ${(err as Error).message}`);
      return;
    }
    if (!isTaskId(task.id)) {
      log(`error: ${opts.agentId}: task ignored: "id" must be a string of letters, digits, ".", "_", "-" (got ${JSON.stringify(String(task.id as unknown).slice(0, 64))})`);
      return;
    }
    if (typeof task.action !== 'string') task.action = String(task.action ?? '');
    if (task.user !== undefined && typeof task.user !== 'string') task.user = String(task.user);
    try {
      await storeTaskContext(deps.redis, opts.agentId, task.id, raw);
    } catch (err) {
      log(`error: ${opts.agentId}: context set error: ${(err as Error).message}`);
    }
    if (running.size >= maxConcurrency) {
      await new Promise((r) => setTimeout(r, opts.overloadWaitMs ?? 500));
      if (running.size >= maxConcurrency) {
        log(`warning: ${opts.agentId}: task ${task.id} refused: ${running.size} tasks running (limit ${maxConcurrency})`);
        await finish(task, { status: 'aborted', exitCode: BUSY_EXIT_CODE, output: '', error: 'Agent is busy\n' }, 0);
        return;
      }
    }
    const controller = new AbortController();
    const entry = { controller, done: Promise.resolve() };
    running.set(task.id, entry);
    entry.done = handle(task, controller).finally(() => running.delete(task.id));
  };

  const loop = async (): Promise<void> => {
    let lastError = '';
    while (!stopping && blocking) {
      let popped: [string, string] | null;
      try {
        popped = (await blocking.brpop(taskQueueKey(opts.agentId), pollSeconds)) as [string, string] | null;
        lastError = '';
      } catch (err) {
        if (stopping) break;
        const msg = (err as Error).message;
        if (msg !== lastError) log(`error: ${opts.agentId}: task queue pop error: ${msg}`);
        lastError = msg;
        await new Promise((r) => setTimeout(r, Math.min(pollSeconds, 5) * 1000));
        continue;
      }
      if (popped) await accept(popped[1]);
    }
  };

  return {
    start(signal?: AbortSignal): Promise<void> {
      if (started) return started;
      started = (async () => {
        blocking = deps.redis.duplicate({ connectionName: opts.agentId.replace(/\s/g, '_') });
        await blocking.ping();
        log(`${opts.agentId}: agent started; actions from ${opts.actionsDirs.join(', ') || '(none)'}${builtins.length ? ' + base actions' : ''}`);
        void loop()
          .catch((err: Error) => log(`error: ${opts.agentId}: agent loop ended: ${err.message}`))
          .finally(resolveDone);
        if (signal) {
          if (signal.aborted) void this.stop();
          else signal.addEventListener('abort', () => void this.stop(), { once: true });
        }
      })();
      return started;
    },
    stop(): Promise<void> {
      if (stopped) return stopped;
      stopping = true;
      stopped = (async () => {
        if (!started) {
          resolveDone();
          return;
        }
        await started.catch(() => undefined);
        blocking?.disconnect();
        await done;
        await Promise.all([...running.values()].map((r) => r.done));
        log(`${opts.agentId}: agent stopped`);
      })();
      return stopped;
    },
    done,
    running: () => [...running.keys()],
  };
}
