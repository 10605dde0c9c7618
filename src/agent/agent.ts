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
  return new Agent(opts, deps);
}

/** A task's last published status and progress, which the heartbeat repeats. */
interface LiveStatus {
  status: TaskStatus;
  progress: number;
}

/** The agent behind runAgent's handle. */
class Agent implements AgentHandle {
  readonly done: Promise<void>;
  private readonly log: (line: string) => void;
  private readonly maxConcurrency: number;
  private readonly pollSeconds: number;
  private readonly builtins: readonly BuiltinAction[];
  private readonly tasks = new Map<string, { controller: AbortController; done: Promise<void> }>();
  private blocking: Redis | undefined;
  private stopping = false;
  private started: Promise<void> | undefined;
  private stopped: Promise<void> | undefined;
  private resolveDone!: () => void;

  constructor(
    private readonly opts: AgentOptions,
    private readonly deps: AgentDeps,
  ) {
    this.log = opts.log ?? ((line: string) => process.stderr.write(line + '\n'));
    this.maxConcurrency = opts.maxConcurrency ?? 32;
    this.pollSeconds = opts.pollSeconds ?? 5;
    this.builtins = opts.builtins ?? [];
    this.done = new Promise<void>((r) => (this.resolveDone = r));
  }

  start(signal?: AbortSignal): Promise<void> {
    if (this.started) return this.started;
    this.started = (async () => {
      const { agentId, actionsDirs } = this.opts;
      this.blocking = this.deps.redis.duplicate({ connectionName: agentId.replace(/\s/g, '_') });
      await this.blocking.ping();
      this.log(`${agentId}: agent started; actions from ${actionsDirs.join(', ') || '(none)'}${this.builtins.length ? ' + base actions' : ''}`);
      void this.loop()
        .catch((err: Error) => this.log(`error: ${agentId}: agent loop ended: ${err.message}`))
        .finally(this.resolveDone);
      if (signal) {
        if (signal.aborted) void this.stop();
        else signal.addEventListener('abort', () => void this.stop(), { once: true });
      }
    })();
    return this.started;
  }

  stop(): Promise<void> {
    if (this.stopped) return this.stopped;
    this.stopping = true;
    this.stopped = (async () => {
      if (!this.started) {
        this.resolveDone();
        return;
      }
      await this.started.catch(() => undefined);
      this.blocking?.disconnect();
      await this.done;
      await Promise.all([...this.tasks.values()].map((r) => r.done));
      this.log(`${this.opts.agentId}: agent stopped`);
    })();
    return this.stopped;
  }

  running(): string[] {
    return [...this.tasks.keys()];
  }

  /** Pops tasks until stopped; a pop error is logged once per distinct message and retried after a pause. */
  private async loop(): Promise<void> {
    const { agentId } = this.opts;
    let lastError = '';
    while (!this.stopping && this.blocking) {
      let popped: [string, string] | null;
      try {
        popped = (await this.blocking.brpop(taskQueueKey(agentId), this.pollSeconds)) as [string, string] | null;
        lastError = '';
      } catch (err) {
        if (this.stopping) break;
        const msg = (err as Error).message;
        if (msg !== lastError) this.log(`error: ${agentId}: task queue pop error: ${msg}`);
        lastError = msg;
        await new Promise((r) => setTimeout(r, Math.min(this.pollSeconds, 5) * 1000));
        continue;
      }
      if (popped) await this.accept(popped[1]);
    }
  }

  /** Decodes a popped task, stores its context, and starts it unless every slot stays busy. */
  private async accept(raw: string): Promise<void> {
    const { agentId } = this.opts;
    const task = this.decode(raw);
    if (!task) return;
    try {
      await storeTaskContext(this.deps.redis, agentId, task.id, raw);
    } catch (err) {
      this.log(`error: ${agentId}: context set error: ${(err as Error).message}`);
    }
    if (this.tasks.size >= this.maxConcurrency) {
      await new Promise((r) => setTimeout(r, this.opts.overloadWaitMs ?? 500));
      if (this.tasks.size >= this.maxConcurrency) {
        this.log(`warning: ${agentId}: task ${task.id} refused: ${this.tasks.size} tasks running (limit ${this.maxConcurrency})`);
        await this.finish(task, { status: 'aborted', exitCode: BUSY_EXIT_CODE, output: '', error: 'Agent is busy\n' }, 0);
        return;
      }
    }
    const controller = new AbortController();
    const entry = { controller, done: Promise.resolve() };
    this.tasks.set(task.id, entry);
    entry.done = this.handle(task, controller).finally(() => this.tasks.delete(task.id));
  }

  /** The task in `raw`, with `action` and `user` made strings; undefined (logged) when it is not a JSON object with a valid id. */
  private decode(raw: string): AgentTask | undefined {
    const { agentId } = this.opts;
    let task: AgentTask;
    try {
      const parsed = JSON.parse(raw) as unknown;
      if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new TypeError('not a JSON object');
      task = parsed as AgentTask;
    } catch (err) {
      this.log(`error: ${agentId}: task ignored for decoding error: ${(err as Error).message}`);
      return undefined;
    }
    if (!isTaskId(task.id)) {
      this.log(`error: ${agentId}: task ignored: "id" must be a string of letters, digits, ".", "_", "-" (got ${JSON.stringify(String(task.id as unknown).slice(0, 64))})`);
      return undefined;
    }
    if (typeof task.action !== 'string') task.action = String(task.action ?? '');
    if (task.user !== undefined && typeof task.user !== 'string') task.user = String(task.user);
    return task;
  }

  /** Runs one task with a heartbeat; an error of the agent itself ends it aborted (1). */
  private async handle(task: AgentTask, controller: AbortController): Promise<void> {
    const { agentId } = this.opts;
    const live: LiveStatus = { status: 'pending', progress: 0 };
    const beat = setInterval(() => {
      heartbeatTask(this.deps.redis, agentId, task.id, live.status, live.progress).catch(() => undefined);
    }, this.opts.heartbeatMs ?? 5000);
    beat.unref();
    try {
      await this.serve(task, controller, live);
    } catch (err) {
      this.log(`error: ${agentId}: task ${task.id} (${task.action}) failed in the agent: ${(err as Error).message}`);
      await this.finish(task, { status: 'aborted', exitCode: 1, output: '', error: `agent error: ${(err as Error).message}\n` }, live.progress);
    } finally {
      clearInterval(beat);
    }
  }

  /** Permission check, then a built-in or the action's steps; stores the result. */
  private async serve(task: AgentTask, controller: AbortController, live: LiveStatus): Promise<void> {
    const decision = await checkTaskPermission(this.deps.redis, this.opts.agentId, task.user, task.action);
    if (!decision.allowed) {
      this.log(`warning: ${this.opts.agentId}: task ${task.id} refused: ${decision.reason}`);
      await this.finish(task, { status: 'aborted', exitCode: PERMISSION_DENIED_EXIT_CODE, output: '', error: `${PERMISSION_DENIED_ERROR}: ${decision.reason}\n` }, 0);
      return;
    }
    const builtinResult = await this.runBuiltin(task);
    if (builtinResult) {
      await this.finish(task, builtinResult, 100);
      return;
    }
    const outcome = await this.runSteps(task, controller, live);
    await this.finish(task, outcome, outcome.progress);
  }

  /** Runs the action's steps (an unsafe action name is undefined: exit code 8). */
  private async runSteps(task: AgentTask, controller: AbortController, live: LiveStatus): Promise<ActionOutcome> {
    if (!isSafeName(task.action)) {
      return { status: 'aborted', exitCode: 8, output: '', error: `Action ${JSON.stringify(task.action)} is not defined (not a valid action name)\n`, progress: 0, lastStep: '{unknown}' };
    }
    const { opts, deps } = this;
    const plan = await resolveAction(task.action, opts.actionsDirs, this.builtins);
    return executeAction(plan, task, {
      agentId: opts.agentId,
      installDir: opts.installDir,
      stateDir: opts.stateDir,
      rootfull: opts.rootfull ?? false,
      baseEnv: opts.env ?? process.env,
      services: { runner: deps.runner, redis: deps.redis, ...(deps.systemd ? { systemd: deps.systemd } : {}) },
      signal: controller.signal,
      onStatus: (s, p) => {
        live.status = s;
        live.progress = p;
        this.publish(task, s, p);
      },
      onEnvDumped: (env) => mirrorEnvironment(deps.redis, opts.agentId, env),
      log: this.log,
      ...(opts.drainMs !== undefined ? { drainMs: opts.drainMs } : {}),
    });
  }

  /** The built-ins list-actions and cancel-task; undefined for any other action. */
  private async runBuiltin(task: AgentTask): Promise<TaskResult | undefined> {
    if (task.action === 'list-actions') {
      const names = await listActionNames(this.opts.actionsDirs, this.builtins);
      return { status: 'completed', exitCode: 0, output: JSON.stringify(names), error: '' };
    }
    if (task.action === 'cancel-task') return this.cancelTask(task);
    return undefined;
  }

  /** cancel-task `{"task": "<id>"}`: aborts that running task. */
  private cancelTask(task: AgentTask): TaskResult {
    const { agentId } = this.opts;
    const target = (task.data as { task?: unknown } | null | undefined)?.task;
    if (typeof target !== 'string' || target === '') {
      return { status: 'validation-failed', exitCode: 10, output: JSON.stringify([{ parameter: 'task', error: 'task_required', value: target ?? null, field: 'task' }]), error: 'cancel-task: input must be {"task":"<task id>"}\n' };
    }
    const r = this.tasks.get(target);
    if (!r) return { status: 'aborted', exitCode: 2, output: '', error: `cancel-task: task ${target} is not running on ${agentId}\n` };
    this.log(`warning: task/${agentId}/${target}: cancelled by task ${task.id}`);
    r.controller.abort();
    return { status: 'completed', exitCode: 0, output: '', error: '' };
  }

  /** Stores the result (with the instance's environment, for masking) and logs the final status. */
  private async finish(task: AgentTask, result: TaskResult, progress: number): Promise<void> {
    const { agentId } = this.opts;
    const env = await readEnvironmentFile(path.join(this.opts.stateDir, 'environment')).catch(() => undefined);
    try {
      await finalizeTask(this.deps.redis, agentId, task.id, result, progress, env);
    } catch (err) {
      this.log(`error: ${agentId}: task ${task.id}: cannot store the result: ${(err as Error).message}`);
    }
    this.log(`task/${agentId}/${task.id}: action "${task.action}" status is "${result.status}" (${result.exitCode})`);
  }

  private publish(task: AgentTask, status: TaskStatus, progress: number): void {
    publishProgress(this.deps.redis, this.opts.agentId, task.id, status, progress).catch((err: Error) => this.log(`error: ${this.opts.agentId}: publish progress: ${err.message}`));
  }
}
