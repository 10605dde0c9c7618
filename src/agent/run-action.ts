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
import { parseAgentCommand } from './comfd-protocol.js';
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
  let status: TaskStatus = 'pending';
  let output = '';
  let error = '';
  let exitCode = 0;
  let lastStep = '{unknown}';
  const envFile = path.join(ctx.stateDir, 'environment');
  type Entry = { name: string; weight: number; run: 'input' | 'output' | PlannedStep };
  const entries: Entry[] = [];
  if (plan?.inputSchema) entries.push({ name: STEP_INPUT, weight: 0, run: 'input' });
  for (const s of plan?.steps ?? []) entries.push({ name: s.name, weight: 1, run: s });
  if (plan?.outputSchema) entries.push({ name: STEP_OUTPUT, weight: 0, run: 'output' });
  const tracker = new ProgressTracker(entries);
  ctx.onStatus(status, 0);
  for (const ignored of plan?.ignored ?? []) ctx.log(`warning: ${ctx.agentId}: action ${task.action}: ignored file ${ignored} (not a valid step name)`);

  if (entries.length === 0) {
    ctx.log(`error: ${ctx.agentId}: action ${task.action} is not defined`);
    return { status: 'aborted', exitCode: 8, output: '', error: `Action ${task.action} is not defined\n`, progress: 0, lastStep };
  }
  const definitions = await readDefinitions(path.join(ctx.installDir, 'validator-definitions.json')).catch(() => []);

  for (let index = 0; index < entries.length; index++) {
    const entry = entries[index] as Entry;
    lastStep = entry.name;
    if (entry.run === 'input' || entry.run === 'output') {
      const which = entry.run;
      const src = which === 'input' ? plan?.inputSchema : plan?.outputSchema;
      if (!src) continue;
      let doc: unknown = task.data ?? null;
      let validate;
      try {
        const { schema, origin } = await loadSchema(src);
        validate = compileSchemaCached(schema, origin, definitions);
        if (which === 'output') doc = JSON.parse(output) as unknown;
      } catch (err) {
        error += `JSON Schema ${which} validation aborted at step ${'path' in src ? src.path : src.origin}: ${(err as Error).message}\n`;
        status = 'aborted';
        exitCode = 1;
        break;
      }
      if (!validate(doc)) {
        const list = toNs8Errors(validate.errors, doc);
        error += `Validation errors: ${list.map((e) => `${e.field}: ${e.error}`).join('; ')}\n`;
        if (which === 'input') {
          output += JSON.stringify(list);
          exitCode = 10;
          status = 'validation-failed';
        } else {
          exitCode = 1;
          status = 'aborted';
        }
        ctx.log(`${ctx.agentId}: task ${task.id}: action ${task.action} ${status} at ${entry.name}`);
        break;
      }
      tracker.setStepProgress(index, 100);
      continue;
    }
    if (status === 'pending') {
      status = 'running';
      ctx.onStatus(status, tracker.progress);
    }
    const step = entry.run;
    const state = await readEnvironmentFile(envFile).catch(() => new Map<string, string>());

    // Agent commands are applied in order; the step's end waits for all of them.
    let chain: Promise<void> = Promise.resolve();
    const refuse = (msg: string): void => {
      ctx.log(`warning: ${ctx.agentId}: task ${task.id}: step ${step.name}: ${msg}`);
      error += `agent: step ${step.name}: ${msg}\n`;
    };
    const handleLine = (line: string): Promise<void> => {
      chain = chain.then(async () => {
        const cmd = parseAgentCommand(line);
        if ('error' in cmd) return refuse(cmd.error);
        try {
          switch (cmd.kind) {
            case 'set-status':
              status = 'validation-failed';
              break;
            case 'set-progress':
              ctx.onStatus(status, tracker.setStepProgress(index, cmd.progress));
              break;
            case 'set-weight':
              if (!tracker.setWeight(cmd.step, cmd.weight)) refuse(`set-weight: no step named ${JSON.stringify(cmd.step)} in action ${task.action}`);
              break;
            case 'set-env':
              await updateEnvironmentFile(envFile, (env) => {
                env.set(cmd.name, cmd.value);
                // validated by the writer; a refused value leaves the file untouched
              });
              break;
            case 'unset-env':
              await updateEnvironmentFile(envFile, (env) => {
                env.delete(cmd.name);
              });
              break;
            case 'dump-env': {
              const env = await updateEnvironmentFile(envFile, () => undefined);
              await ctx.onEnvDumped?.(env);
              break;
            }
          }
        } catch (err) {
          refuse(`${cmd.kind} refused: ${(err as Error).message}`);
        }
      });
      return chain;
    };

    let code: number;
    if (step.kind === 'builtin') {
      const bctx: BuiltinStepContext = {
        task,
        input: task.data ?? null,
        env: stepEnvironment(ctx, state, task, '3'),
        agentId: ctx.agentId,
        installDir: ctx.installDir,
        stateDir: ctx.stateDir,
        rootfull: ctx.rootfull,
        signal: ctx.signal,
        out: (t) => {
          output += t;
        },
        err: (t) => {
          error += t;
          ctx.log(t.replace(/\n$/, ''));
        },
        command: handleLine,
        services: ctx.services,
      };
      try {
        code = await step.step.run(bctx);
      } catch (err) {
        error += `${step.name}: ${(err as Error).message}\n`;
        ctx.log(`error: ${ctx.agentId}: task ${task.id}: built-in step ${task.action}/${step.name} failed: ${(err as Error).message}`);
        code = 1;
      }
    } else {
      ctx.log(`task/${ctx.agentId}/${task.id}: ${task.action}/${step.name} is starting`);
      const res = await runStepProcess({
        file: step.path,
        cwd: ctx.stateDir,
        env: stepEnvironment(ctx, state, task, '3'),
        input: JSON.stringify(task.data ?? null),
        comfd: true,
        signal: ctx.signal,
        onStdout: (t) => {
          output += t;
        },
        onStderr: (t) => {
          error += t;
          ctx.log(t.replace(/\n$/, ''));
        },
        onCommandLine: (line) => void handleLine(line),
        ...(ctx.drainMs !== undefined ? { drainMs: ctx.drainMs } : {}),
      });
      if (res.spawnError) {
        const msg = `Action ${task.action} skipped step ${step.name}: ${res.spawnError.code ?? ''} ${res.spawnError.message}`.trim();
        ctx.log(`warning: ${ctx.agentId}: ${msg}`);
        error += `${msg}\n`;
        ctx.onStatus(status, tracker.setStepProgress(index, 100));
        continue;
      }
      code = res.exitCode;
    }
    await chain;
    if (code !== 0) {
      exitCode = code;
      if (status === 'running') status = 'aborted';
      break;
    }
    if ((status as TaskStatus) === 'validation-failed') {
      exitCode = 10;
      break;
    }
    ctx.onStatus(status, tracker.setStepProgress(index, 100));
  }
  if (exitCode === 0 && (status === 'running' || status === 'pending')) status = 'completed';
  if (exitCode !== 0 && (status === 'running' || status === 'pending')) status = 'aborted';
  return { status, exitCode, output, error, progress: tracker.progress, lastStep };
}
