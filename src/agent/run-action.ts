/**
 * Runs one resolved action for one task, as NS8's agent does: the input schema first, then each
 * step in order with the task data on stdin, stdout appended to the output and stderr to the error
 * (and to the agent log), AGENT_COMFD commands handled while the step runs, the state file re-read
 * before every step, the output schema last. The first failing step ends the action (`aborted`,
 * its exit code); `set-status validation-failed` ends it with 10 unless the step exited non-zero.
 * A step that cannot be started (not executable, missing) is skipped with a warning, as in NS8.
 */
import path from 'node:path';
import type { ActionPlan, AgentTask, BuiltinStepContext, PlannedStep, SchemaSource, StepServices } from './action-catalog.js';
import { parseAgentCommand, type AgentCommand } from './comfd-protocol.js';
import { readEnvironmentFile, updateEnvironmentFile } from './env-file.js';
import { ProgressTracker } from './progress.js';
import { compileSchemaCached, readDefinitions, readJsonFile, toNs8Errors } from '../configuration/schema-validation.js';
import { runStepProcess } from '../host/step-process.js';
import type { TaskResult, TaskStatus } from './task-store.js';

/** Everything an action run needs from its agent. */
export interface ActionRunContext {
  agentId: string;
  installDir: string;
  stateDir: string;
  rootfull: boolean;
  /** The agent's own environment (process.env of the agent). */
  baseEnv: Readonly<Record<string, string | undefined>>;
  services: StepServices;
  /** Aborted by cancel-task: the running step's process group gets SIGTERM. */
  signal: AbortSignal;
  /** Called on every status/progress change; must not throw. */
  onStatus(status: TaskStatus, progress: number): void;
  /** Called after dump-env with the environment just written; mirror it to Redis. */
  onEnvDumped?(env: ReadonlyMap<string, string>): Promise<void>;
  /** Agent log line (stderr/journal). Never receives task data. */
  log(line: string): void;
  /** Milliseconds to wait for a step's pipes after it exits (tests shorten it). */
  drainMs?: number;
}

/** A finished action: NS8 result plus the last progress value and the step it ended at. */
export interface ActionOutcome extends TaskResult {
  progress: number;
  lastStep: string;
}

const STEP_INPUT = 'validate-input';
const STEP_OUTPUT = 'validate-output';

async function loadSchema(src: SchemaSource): Promise<{ schema: unknown; origin: string }> {
  if ('json' in src) return { schema: src.json, origin: src.origin };
  return { schema: await readJsonFile(src.path), origin: src.path };
}

/** The environment every step gets. */
export function stepEnvironment(ctx: Pick<ActionRunContext, 'baseEnv' | 'agentId' | 'installDir' | 'stateDir'>, state: ReadonlyMap<string, string>, task: AgentTask, comfd: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(ctx.baseEnv)) if (v !== undefined) env[k] = v;
  for (const [k, v] of state) env[k] = v;
  env['AGENT_COMFD'] = comfd;
  env['AGENT_TASK_ID'] = task.id;
  env['AGENT_TASK_ACTION'] = task.action;
  env['AGENT_TASK_USER'] = task.user ?? '';
  env['AGENT_INSTALL_DIR'] = ctx.installDir;
  env['AGENT_STATE_DIR'] = ctx.stateDir;
  env['AGENT_ID'] = ctx.agentId;
  return env;
}

/**
 * Executes `plan` for `task`. `plan` undefined (or without steps and schemas) gives NS8's exit
 * code 8. Never throws for step or schema failures: they are in the outcome.
 */
export async function executeAction(plan: ActionPlan | undefined, task: AgentTask, ctx: ActionRunContext): Promise<ActionOutcome> {
  const entries = actionEntries(plan);
  const run = new ActionRun(plan, task, ctx, new ProgressTracker(entries));
  ctx.onStatus(run.status, 0);
  for (const ignored of plan?.ignored ?? []) ctx.log(`warning: ${ctx.agentId}: action ${task.action}: ignored file ${ignored} (not a valid step name)`);
  if (entries.length === 0) {
    ctx.log(`error: ${ctx.agentId}: action ${task.action} is not defined`);
    return { status: 'aborted', exitCode: 8, output: '', error: `Action ${task.action} is not defined\n`, progress: 0, lastStep: run.lastStep };
  }
  const definitions = await readDefinitions(path.join(ctx.installDir, 'validator-definitions.json')).catch(() => []);
  for (const [index, entry] of entries.entries()) {
    run.lastStep = entry.name;
    const next = entry.run === 'input' || entry.run === 'output' ? await run.validate(entry.run, entry.name, index, definitions) : await run.runStep(entry.run, index);
    if (next === 'stop') break;
  }
  return run.outcome();
}

/** One entry of an action: the input schema, a step, or the output schema (weight 0: no progress share). */
interface Entry {
  name: string;
  weight: number;
  run: 'input' | 'output' | PlannedStep;
}

function actionEntries(plan: ActionPlan | undefined): Entry[] {
  const entries: Entry[] = [];
  if (plan?.inputSchema) entries.push({ name: STEP_INPUT, weight: 0, run: 'input' });
  for (const s of plan?.steps ?? []) entries.push({ name: s.name, weight: 1, run: s });
  if (plan?.outputSchema) entries.push({ name: STEP_OUTPUT, weight: 0, run: 'output' });
  return entries;
}

/** Whether the action goes on after an entry. */
type Next = 'next' | 'stop';

/** The state of one action run: status, output and error so far, exit code, progress. */
class ActionRun {
  status: TaskStatus = 'pending';
  output = '';
  error = '';
  exitCode = 0;
  lastStep = '{unknown}';
  private readonly envFile: string;

  constructor(
    private readonly plan: ActionPlan | undefined,
    private readonly task: AgentTask,
    private readonly ctx: ActionRunContext,
    private readonly tracker: ProgressTracker,
  ) {
    this.envFile = path.join(ctx.stateDir, 'environment');
  }

  /** The result: a run still pending or running is completed when its exit code is 0, else aborted. */
  outcome(): ActionOutcome {
    let status = this.status;
    if (this.exitCode === 0 && (status === 'running' || status === 'pending')) status = 'completed';
    if (this.exitCode !== 0 && (status === 'running' || status === 'pending')) status = 'aborted';
    return { status, exitCode: this.exitCode, output: this.output, error: this.error, progress: this.tracker.progress, lastStep: this.lastStep };
  }

  /** Validates the task data (input) or the output so far (output) against the action's schema: invalid input is validation-failed (10), invalid output aborted (1). */
  async validate(which: 'input' | 'output', name: string, index: number, definitions: Awaited<ReturnType<typeof readDefinitions>>): Promise<Next> {
    const src = which === 'input' ? this.plan?.inputSchema : this.plan?.outputSchema;
    if (!src) return 'next';
    let doc: unknown = this.task.data ?? null;
    let validate;
    try {
      const { schema, origin } = await loadSchema(src);
      validate = 'validate' in src && src.validate ? src.validate : compileSchemaCached(schema, origin, definitions);
      if (which === 'output') doc = JSON.parse(this.output) as unknown;
    } catch (err) {
      this.error += `JSON Schema ${which} validation aborted at step ${'path' in src ? src.path : src.origin}: ${(err as Error).message}\n`;
      this.status = 'aborted';
      this.exitCode = 1;
      return 'stop';
    }
    if (!validate(doc)) {
      const list = toNs8Errors(validate.errors, doc);
      this.error += `Validation errors: ${list.map((e) => `${e.field}: ${e.error}`).join('; ')}\n`;
      if (which === 'input') {
        this.output += JSON.stringify(list);
        this.exitCode = 10;
        this.status = 'validation-failed';
      } else {
        this.exitCode = 1;
        this.status = 'aborted';
      }
      this.ctx.log(`${this.ctx.agentId}: task ${this.task.id}: action ${this.task.action} ${this.status} at ${name}`);
      return 'stop';
    }
    this.tracker.setStepProgress(index, 100);
    return 'next';
  }

  /**
   * Runs one step with the state file as it is now; its agent commands are applied in order and
   * the step's end waits for all of them. A non-zero exit ends the action, so does set-status
   * validation-failed (10); a step that cannot be started is skipped.
   */
  async runStep(step: PlannedStep, index: number): Promise<Next> {
    if (this.status === 'pending') {
      this.status = 'running';
      this.ctx.onStatus(this.status, this.tracker.progress);
    }
    const state = await readEnvironmentFile(this.envFile).catch(() => new Map<string, string>());
    const commands = new CommandChannel(this, step.name, index);
    const code = step.kind === 'builtin' ? await this.runBuiltinStep(step, state, commands) : await this.runProcessStep(step, state, commands);
    if (code === undefined) {
      this.ctx.onStatus(this.status, this.tracker.setStepProgress(index, 100));
      return 'next';
    }
    await commands.settled();
    if (code !== 0) {
      this.exitCode = code;
      if (this.status === 'running') this.status = 'aborted';
      return 'stop';
    }
    if (this.status === 'validation-failed') {
      this.exitCode = 10;
      return 'stop';
    }
    this.ctx.onStatus(this.status, this.tracker.setStepProgress(index, 100));
    return 'next';
  }

  private async runBuiltinStep(step: Extract<PlannedStep, { kind: 'builtin' }>, state: ReadonlyMap<string, string>, commands: CommandChannel): Promise<number> {
    const { task, ctx } = this;
    const bctx: BuiltinStepContext = {
      task,
      input: task.data ?? null,
      env: stepEnvironment(ctx, state, task, '3'),
      agentId: ctx.agentId,
      installDir: ctx.installDir,
      stateDir: ctx.stateDir,
      rootfull: ctx.rootfull,
      signal: ctx.signal,
      out: (t) => this.appendOutput(t),
      err: (t) => this.appendError(t),
      command: (line) => commands.handle(line),
      services: ctx.services,
    };
    try {
      return await step.step.run(bctx);
    } catch (err) {
      this.error += `${step.name}: ${(err as Error).message}\n`;
      ctx.log(`error: ${ctx.agentId}: task ${task.id}: built-in step ${task.action}/${step.name} failed: ${(err as Error).message}`);
      return 1;
    }
  }

  /** Runs a step file; undefined when it could not be started (skipped with a warning, as NS8 does). */
  private async runProcessStep(step: Exclude<PlannedStep, { kind: 'builtin' }>, state: ReadonlyMap<string, string>, commands: CommandChannel): Promise<number | undefined> {
    const { task, ctx } = this;
    ctx.log(`task/${ctx.agentId}/${task.id}: ${task.action}/${step.name} is starting`);
    const res = await runStepProcess({
      file: step.path,
      cwd: ctx.stateDir,
      env: stepEnvironment(ctx, state, task, '3'),
      input: JSON.stringify(task.data ?? null),
      comfd: true,
      signal: ctx.signal,
      onStdout: (t) => this.appendOutput(t),
      onStderr: (t) => this.appendError(t),
      onCommandLine: (line) => void commands.handle(line),
      ...(ctx.drainMs !== undefined ? { drainMs: ctx.drainMs } : {}),
    });
    if (res.spawnError) {
      const msg = `Action ${task.action} skipped step ${step.name}: ${res.spawnError.code ?? ''} ${res.spawnError.message}`.trim();
      ctx.log(`warning: ${ctx.agentId}: ${msg}`);
      this.error += `${msg}\n`;
      return undefined;
    }
    return res.exitCode;
  }

  private appendOutput(t: string): void {
    this.output += t;
  }

  /** Step stderr goes to the task's error and to the agent log. */
  private appendError(t: string): void {
    this.error += t;
    this.ctx.log(t.replace(/\n$/, ''));
  }

  /** A refused agent command: logged and added to the task's error. */
  refuseCommand(stepName: string, msg: string): void {
    this.ctx.log(`warning: ${this.ctx.agentId}: task ${this.task.id}: step ${stepName}: ${msg}`);
    this.error += `agent: step ${stepName}: ${msg}\n`;
  }

  /** Applies one agent command of step `index` (set-status, set-progress, set-weight, set-env, unset-env, dump-env). */
  async applyCommand(cmd: AgentCommand, stepName: string, index: number): Promise<void> {
    const { ctx, envFile } = this;
    switch (cmd.kind) {
      case 'set-status':
        this.status = 'validation-failed';
        break;
      case 'set-progress':
        ctx.onStatus(this.status, this.tracker.setStepProgress(index, cmd.progress));
        break;
      case 'set-weight':
        if (!this.tracker.setWeight(cmd.step, cmd.weight)) this.refuseCommand(stepName, `set-weight: no step named ${JSON.stringify(cmd.step)} in action ${this.task.action}`);
        break;
      case 'set-env':
        // validated by the writer; a refused value leaves the file untouched
        await updateEnvironmentFile(envFile, (env) => void env.set(cmd.name, cmd.value));
        break;
      case 'unset-env':
        await updateEnvironmentFile(envFile, (env) => void env.delete(cmd.name));
        break;
      case 'dump-env': {
        const env = await updateEnvironmentFile(envFile, () => undefined);
        await ctx.onEnvDumped?.(env);
        break;
      }
    }
  }
}

/** The agent commands of one step, applied one after the other in the order they arrive. */
class CommandChannel {
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly run: ActionRun,
    private readonly stepName: string,
    private readonly index: number,
  ) {}

  /** Queues one command line; resolves once it (and every one before it) is applied. A bad or failing command is refused, never thrown. */
  handle(line: string): Promise<void> {
    this.chain = this.chain.then(async () => {
      const cmd = parseAgentCommand(line);
      if ('error' in cmd) return this.run.refuseCommand(this.stepName, cmd.error);
      try {
        await this.run.applyCommand(cmd, this.stepName, this.index);
      } catch (err) {
        this.run.refuseCommand(this.stepName, `${cmd.kind} refused: ${(err as Error).message}`);
      }
    });
    return this.chain;
  }

  /** Resolves once every command queued so far is applied. */
  settled(): Promise<void> {
    return this.chain;
  }
}
