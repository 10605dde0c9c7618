/**
 * Finds the steps of an action: every non-directory file in `<dir>/<action>/` of each actions
 * directory (base first, instance last), merged by file name (a later directory wins), run in
 * alphabetical order of file name whatever directory it came from. Built-in steps (the base
 * actions ns8ctl ships in TypeScript) come first in precedence, so a file of the same name in an
 * actions directory replaces them. `validate-input.json` / `validate-output.json` are schemas,
 * not steps (the last directory that has one wins).
 */
import type { ValidateFunction } from 'ajv';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import type { CommandRunner } from '../host/runner.js';
import { assertActionName, isSafeName } from './names.js';
import type { SystemdAdapter } from './systemd-status.js';

/** NS8's task JSON, as popped from `<agent_id>/tasks`. */
export interface AgentTask {
  id: string;
  action: string;
  data?: unknown;
  extra?: unknown;
  parent?: string;
  /** Who submitted the task (`module/traefik1`, a user name); empty or absent for the cluster. */
  user?: string;
  queue?: string;
  timestamp?: string;
}

/** What built-in steps may use besides the process environment. */
export interface StepServices {
  runner: CommandRunner;
  /** The agent's own Redis connection (its ACL user). */
  redis?: Redis;
  systemd?: SystemdAdapter;
}

/** What a built-in step gets: the same facts a file step sees in its environment, plus services. */
export interface BuiltinStepContext {
  task: AgentTask;
  /** Task data (what a file step reads on stdin). */
  input: unknown;
  /** The step environment: agent env + state/environment + AGENT_* variables. */
  env: Readonly<Record<string, string>>;
  agentId: string;
  installDir: string;
  stateDir: string;
  rootfull: boolean;
  /** Aborted when the task is cancelled. */
  signal: AbortSignal;
  /** Appends to the action output (stdout). */
  out(text: string): void;
  /** Appends to the action error (stderr). */
  err(text: string): void;
  /** Sends one AGENT_COMFD command line (`set-env X 1`), handled exactly as a file step's. */
  command(line: string): Promise<void>;
  services: StepServices;
}

/** A step implemented in TypeScript; resolves with its exit code. */
export interface BuiltinStep {
  name: string;
  run(ctx: BuiltinStepContext): Promise<number>;
}

/** A base action shipped with ns8ctl: steps and optional schemas, all overridable by files. */
export interface BuiltinAction {
  name: string;
  steps: BuiltinStep[];
  inputSchema?: object;
  outputSchema?: object;
  /** `inputSchema` compiled ahead of time (same options as at run time): used instead of compiling it. */
  inputValidate?: ValidateFunction;
  /** `outputSchema` compiled ahead of time. */
  outputValidate?: ValidateFunction;
}

/** One step to run, in order. */
export type PlannedStep = { kind: 'file'; name: string; path: string } | { kind: 'builtin'; name: string; step: BuiltinStep };

/** Where a schema comes from: a file, or a built-in object. */
export type SchemaSource = { path: string } | { json: object; origin: string; validate?: ValidateFunction };

/** The resolved action: steps in run order, and its schemas. */
export interface ActionPlan {
  action: string;
  steps: PlannedStep[];
  inputSchema?: SchemaSource;
  outputSchema?: SchemaSource;
  /** File names that were ignored because they are not safe step names (hidden, odd characters). */
  ignored: string[];
}

const INPUT_SCHEMA = 'validate-input.json';
const OUTPUT_SCHEMA = 'validate-output.json';

async function listDir(dir: string): Promise<{ name: string; isDir: boolean }[]> {
  try {
    const entries = await fs.readdir(dir, { withFileTypes: true });
    const out: { name: string; isDir: boolean }[] = [];
    for (const e of entries) {
      let isDir = e.isDirectory();
      if (e.isSymbolicLink()) {
        try {
          isDir = (await fs.stat(path.join(dir, e.name))).isDirectory();
        } catch {
          isDir = false;
        }
      }
      out.push({ name: e.name, isDir });
    }
    return out;
  } catch {
    return [];
  }
}

/**
 * Resolves `action` across built-ins and `actionsDirs`. Returns undefined when no directory and
 * no built-in defines it (NS8 exit code 8). Throws AgentError for an unsafe action name.
 */
export async function resolveAction(action: string, actionsDirs: readonly string[], builtins: readonly BuiltinAction[] = []): Promise<ActionPlan | undefined> {
  assertActionName(action);
  const byName = new Map<string, PlannedStep>();
  let inputSchema: SchemaSource | undefined;
  let outputSchema: SchemaSource | undefined;
  let found = false;
  const ignored: string[] = [];
  const builtin = builtins.find((b) => b.name === action);
  if (builtin) {
    found = true;
    for (const s of builtin.steps) byName.set(s.name, { kind: 'builtin', name: s.name, step: s });
    if (builtin.inputSchema) inputSchema = { json: builtin.inputSchema, origin: `built-in ${action}/${INPUT_SCHEMA}`, ...(builtin.inputValidate ? { validate: builtin.inputValidate } : {}) };
    if (builtin.outputSchema) outputSchema = { json: builtin.outputSchema, origin: `built-in ${action}/${OUTPUT_SCHEMA}`, ...(builtin.outputValidate ? { validate: builtin.outputValidate } : {}) };
  }
  for (const root of actionsDirs) {
    const dir = path.join(root, action);
    let st;
    try {
      st = await fs.stat(dir);
    } catch {
      continue;
    }
    if (!st.isDirectory()) continue;
    found = true;
    for (const e of await listDir(dir)) {
      if (e.isDir) continue;
      if (e.name === INPUT_SCHEMA) inputSchema = { path: path.join(dir, e.name) };
      else if (e.name === OUTPUT_SCHEMA) outputSchema = { path: path.join(dir, e.name) };
      else if (!isSafeName(e.name)) ignored.push(path.join(dir, e.name));
      else byName.set(e.name, { kind: 'file', name: e.name, path: path.join(dir, e.name) });
    }
  }
  if (!found) return undefined;
  const steps = [...byName.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { action, steps, ignored, ...(inputSchema ? { inputSchema } : {}), ...(outputSchema ? { outputSchema } : {}) };
}

/** Names of every action the agent can run (directories, built-in base actions, list-actions, cancel-task), sorted. */
export async function listActionNames(actionsDirs: readonly string[], builtins: readonly BuiltinAction[] = []): Promise<string[]> {
  const names = new Set<string>(['list-actions', 'cancel-task']);
  for (const b of builtins) names.add(b.name);
  for (const root of actionsDirs) for (const e of await listDir(root)) if (e.isDir && isSafeName(e.name)) names.add(e.name);
  return [...names].sort();
}
