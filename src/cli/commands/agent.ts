/**
 * The module agent's commands, wired into the ns8ctl command tree by registerAgentCommands:
 * - `ns8ctl run-action <id> <action> [--data JSON]`: submit a task, follow its progress, print
 *   its output; exits with the task's exit code;
 * - `ns8ctl publish <channel> <json>`: PUBLISH an event (`<source>/event/<name>`, JSON payload);
 * - `ns8ctl runagent -m <id> [CMD...]`: a command (or shell) in the instance's agent environment;
 * - `ns8ctl agent --id <id>`: the module agent itself (run by the instance's unit).
 * Each command is a function (options, deps) -> exit code; only main() sets the process's.
 */
import path from 'node:path';
import type { Command } from 'commander';
import { Redis } from 'ioredis';
import { AgentError, UsageError } from '../../errors.js';
import type { CommandRunner } from '../../host/runner.js';
import { runAgent } from '../../agent/agent.js';
import { createBaseActions } from '../../agent/base-actions.js';
import { runEventHandlers } from '../../agent/events.js';
import { agentIdOf, assertInstanceId, isInstanceId, parseEventChannel } from '../../agent/names.js';
import { planRunagent, withPathFirst, type InstancePaths } from '../../agent/runagent.js';
import { runInteractive } from '../../host/step-process.js';
import { SystemctlStatusAdapter } from '../../agent/systemd-status.js';
import { runTask, runTaskViaRelay, submitTask, submitTaskViaRelay } from '../../agent/task-client.js';
import type { TaskStatus } from '../../agent/task-store.js';

/** What the agent commands need from main() (a subset of the CLI's deps). */
export interface AgentCliDeps {
  stdout(text: string): void;
  stderr(text: string): void;
  env: NodeJS.ProcessEnv;
  /** stdout is a terminal: progress is shown on stderr. */
  isTTY: boolean;
  runner: CommandRunner;
  /** ns8ctl's own (admin) Redis connection. */
  connect(): Promise<{ redis: Redis }>;
  /** Reads standard input to the end (`--data-file -`). */
  stdin?(): Promise<string>;
}

/** Things tests and embedders may replace. */
export interface AgentCliExtras {
  /** Opens a connection with given credentials (the agent's ACL user, or the read-only default user). */
  openRedis?(opts: { url: string; username?: string; password?: string; name?: string }): Promise<Redis>;
  /** Current uid (runagent decides whether to switch user). */
  uid?(): number;
  paths?: InstancePaths;
  /** Install SIGTERM/SIGINT/SIGHUP handlers for `agent` (default true). */
  processSignals?: boolean;
  /** Stops `agent` when aborted (tests). */
  signal?: AbortSignal;
}

/** `dokuwiki1` -> `module/dokuwiki1`; `module/x`, `node/1`, `cluster` unchanged. */
export function resolveAgentTarget(target: string): string {
  if (target === 'cluster' || /^node\/\d+$/.test(target)) return target;
  const m = /^module\/(.+)$/.exec(target);
  const id = m ? (m[1] as string) : target;
  if (!isInstanceId(id)) throw new UsageError(`"${target}" is not an instance id (dokuwiki1) nor an agent id (module/dokuwiki1, node/1, cluster)`);
  return agentIdOf(id);
}

/** Options of run-action. */
export interface RunActionOptions {
  data?: string;
  dataFile?: string;
  wait?: boolean;
  timeout?: string;
  output?: string;
  progress?: boolean;
  as?: string;
  /** Global --redis: with module credentials, where to connect (else REDIS_ADDRESS, NS8CTL_REDIS_URL, 127.0.0.1:6379). */
  redis?: string;
}

/** A module instance's own Redis credentials, as its agent environment carries them. */
export interface ModuleCredentials {
  instanceId: string;
  username: string;
  password: string;
}

/**
 * The module identity in `env`: REDIS_USER `module/<id>` (what `runagent` and the agent give
 * steps) with REDIS_PASSWORD. Undefined when REDIS_USER is unset or not a module user (admin
 * credentials). Throws UsageError for a module REDIS_USER without a password.
 */
export function moduleCredentialsOf(env: NodeJS.ProcessEnv): ModuleCredentials | undefined {
  const user = env.REDIS_USER;
  const m = user ? /^module\/(.+)$/.exec(user) : null;
  if (!user || !m || !isInstanceId(m[1] as string)) return undefined;
  if (!env.REDIS_PASSWORD) throw new UsageError(`REDIS_USER is ${user} but REDIS_PASSWORD is empty: run it in the instance's agent environment (ns8ctl runagent -m ${m[1]} ...) or unset REDIS_USER to use admin credentials`);
  return { instanceId: m[1] as string, username: user, password: env.REDIS_PASSWORD };
}

/**
 * `ns8ctl run-action`: returns the task's exit code (0 on success). With a module's credentials
 * in the environment (moduleCredentialsOf) the task goes through the task relay as that module
 * (its roles are checked; `--as` is refused); otherwise it is pushed on the agent's queue with
 * ns8ctl's admin connection (deps.connect).
 */
export async function runActionCommand(target: string, action: string, opts: RunActionOptions, deps: AgentCliDeps, extras: AgentCliExtras = {}): Promise<number> {
  const agentId = resolveAgentTarget(target);
  const format = opts.output ?? 'text';
  if (format !== 'text' && format !== 'json') throw new UsageError(`unknown output format "${format}"; allowed: text, json`);
  if (opts.data !== undefined && opts.dataFile !== undefined) throw new UsageError('give --data or --data-file, not both');
  const self = moduleCredentialsOf(deps.env);
  if (self && opts.as !== undefined) throw new UsageError(`--as cannot be used with module credentials (REDIS_USER=${self.username}): the task relay submits as ${self.username}`);
  const data = await readTaskData(opts, deps);
  const timeoutMs = opts.timeout !== undefined ? Number(opts.timeout) * 1000 : undefined;
  if (timeoutMs !== undefined && !(timeoutMs > 0)) throw new UsageError(`--timeout must be a positive number of seconds, got "${opts.timeout}"`);
  const open = extras.openRedis ?? openRedis;
  const url = agentRedisUrl(opts.redis, deps.env);
  const opened: Redis[] = [];
  let redis: Redis;
  if (self) {
    redis = await open({ url, username: self.username, password: self.password });
    opened.push(redis);
  } else ({ redis } = await deps.connect());
  try {
    if (opts.wait === false) {
      const id = self ? await submitTaskViaRelay(redis, self.instanceId, agentId, action, { data }) : await submitTask(redis, agentId, action, { data, ...(opts.as ? { user: opts.as } : {}) });
      deps.stdout(format === 'json' ? JSON.stringify({ task: id, agent: agentId, action }, null, 2) + '\n' : `${id}\n`);
      return 0;
    }
    const submit: TaskSubmission = { redis, self, agentId, action, data, timeoutMs, as: opts.as, url, open, opened };
    const r = await runAndFollow(submit, opts.progress ?? deps.isTTY, deps);
    printTaskResult(r, format, agentId, action, deps);
    return r.exitCode === 0 ? 0 : r.exitCode > 0 && r.exitCode < 256 ? r.exitCode : 1;
  } finally {
    for (const c of opened) c.disconnect();
  }
}

/** The task data: --data, or --data-file (`-`: standard input), parsed as JSON; `{}` when neither is given. */
async function readTaskData(opts: RunActionOptions, deps: AgentCliDeps): Promise<unknown> {
  let text = opts.data;
  if (opts.dataFile !== undefined) {
    if (opts.dataFile === '-') {
      if (!deps.stdin) throw new UsageError('--data-file - needs standard input');
      text = await deps.stdin();
    } else {
      const { readFile } = await import('node:fs/promises');
      text = await readFile(opts.dataFile, 'utf8').catch((err: Error) => {
        throw new UsageError(`cannot read --data-file ${opts.dataFile}: ${err.message}`);
      });
    }
  }
  if (text === undefined) return {};
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new UsageError(`--data is not valid JSON: ${(err as Error).message}`);
  }
}

/** One task run-action submits and follows. */
interface TaskSubmission {
  redis: Redis;
  /** Module credentials: the task goes through the relay. */
  self: ModuleCredentials | undefined;
  agentId: string;
  action: string;
  data: unknown;
  timeoutMs: number | undefined;
  as: string | undefined;
  url: string;
  open: NonNullable<AgentCliExtras['openRedis']>;
  /** Connections opened here, closed by the caller. */
  opened: Redis[];
}

/** Submits the task and waits for its result, printing progress lines (when asked) and one hint when nothing is heard for 10 s. */
async function runAndFollow(s: TaskSubmission, showProgress: boolean, deps: AgentCliDeps): Promise<Awaited<ReturnType<typeof runTask>>> {
  const { redis, self, agentId, action } = s;
  let last = '';
  // One hint when nothing at all is heard: the task waits in the queue until an agent pops it.
  const waiting = self
    ? `waiting for the task relay and ${agentId} (the controller leader relays ${self.username}/relay/tasks to ${agentId}/tasks)`
    : `waiting for ${agentId} to pick up the task (is its agent running? it reads ${agentId}/tasks)`;
  const hint = setTimeout(() => deps.stderr(waiting + '\n'), 10_000);
  hint.unref();
  const common = {
    data: s.data,
    ...(s.timeoutMs !== undefined ? { timeoutMs: s.timeoutMs } : {}),
    onProgress: (status: TaskStatus, progress: number) => {
      clearTimeout(hint);
      const line = `${agentId} ${action}: ${status} ${progress}%`;
      if (showProgress && line !== last) deps.stderr(line + '\n');
      last = line;
    },
  };
  try {
    if (!self) return await runTask(redis, agentId, action, { ...common, ...(s.as ? { user: s.as } : {}) });
    // Module users may not SUBSCRIBE: progress comes through NS8's read-only default user; without it, polling.
    const subscriber = await s.open({ url: s.url }).catch(() => undefined);
    if (subscriber) s.opened.push(subscriber);
    return await runTaskViaRelay(redis, self.instanceId, agentId, action, { ...common, ...(subscriber ? { subscriber } : {}) });
  } finally {
    clearTimeout(hint);
  }
}

/** Prints the result: one JSON document (output parsed when it is JSON), or the output, and on failure the error and a summary line on stderr. */
function printTaskResult(r: Awaited<ReturnType<typeof runTask>>, format: string, agentId: string, action: string, deps: AgentCliDeps): void {
  if (format === 'json') {
    let output: unknown = r.output;
    try {
      output = r.output.trim() === '' ? null : (JSON.parse(r.output) as unknown);
    } catch {
      // not JSON: keep the text
    }
    deps.stdout(JSON.stringify({ task: r.taskId, agent: agentId, action, status: r.status, exitCode: r.exitCode, output, error: r.error }, null, 2) + '\n');
    return;
  }
  if (r.output !== '') deps.stdout(r.output.endsWith('\n') ? r.output : r.output + '\n');
  if (r.exitCode !== 0) {
    if (r.error.trim() !== '') deps.stderr(r.error.endsWith('\n') ? r.error : r.error + '\n');
    deps.stderr(`error: ${agentId}: action ${action} ${r.status} with exit code ${r.exitCode} (task ${r.taskId})\n`);
  }
}

/** `ns8ctl publish`: refuses a channel that is not `<source>/event/<name>` or a payload that is not JSON. */
export async function publishCommand(channel: string, payload: string, opts: { output?: string }, deps: AgentCliDeps): Promise<number> {
  if (!parseEventChannel(channel)) throw new UsageError(`channel "${channel}" is not an event channel: expected <source>/event/<name>, e.g. module/traefik1/event/certificate-updated (name: letters, digits, ".", "_", "-")`);
  try {
    JSON.parse(payload);
  } catch (err) {
    throw new UsageError(`event payload is not valid JSON: ${(err as Error).message}`);
  }
  const { redis } = await deps.connect();
  const receivers = await redis.publish(channel, payload);
  if (opts.output === 'json') deps.stdout(JSON.stringify({ channel, receivers }, null, 2) + '\n');
  else deps.stderr(`published ${channel} to ${receivers} subscriber${receivers === 1 ? '' : 's'}\n`);
  return 0;
}

/** `ns8ctl runagent`: returns the command's exit code. */
export async function runagentCommand(opts: { module: string; keepCwd?: boolean }, command: readonly string[], deps: AgentCliDeps, extras: AgentCliExtras = {}): Promise<number> {
  const plan = await planRunagent(opts.module, command, {
    uid: extras.uid ? extras.uid() : (process.getuid?.() ?? 0),
    isTTY: deps.isTTY && Boolean(process.stdin.isTTY),
    env: deps.env,
    ...(opts.keepCwd ? { keepCwd: process.cwd() } : {}),
    ...(extras.paths ? { paths: extras.paths } : {}),
  });
  const res = await runInteractive(plan.argv, { cwd: plan.cwd, env: plan.env, ...(plan.uid !== undefined ? { uid: plan.uid, gid: plan.gid as number } : {}) });
  if (res.spawnError) throw new AgentError('runagent_exec_failed', `runagent -m ${opts.module}: cannot run ${plan.argv[0]}: ${res.spawnError.message}`, { exitCode: 127 });
  return res.exitCode;
}

/** Options of `ns8ctl agent`. */
export interface AgentCommandOptions {
  id: string;
  installDir?: string;
  stateDir?: string;
  actionsdir?: string[];
  eventsdir?: string[];
  rootfull?: boolean;
  baseActions?: boolean;
  maxConcurrency?: string;
  redis?: string;
}

/** Where the agent's Redis is: --redis, REDIS_ADDRESS (NS8, host:port), NS8CTL_REDIS_URL, else 127.0.0.1:6379. */
export function agentRedisUrl(flag: string | undefined, env: NodeJS.ProcessEnv, replica = false): string {
  if (flag) return flag;
  const address = replica ? env.REDIS_REPLICA_ADDRESS ?? env.REDIS_ADDRESS : env.REDIS_ADDRESS;
  if (address) return /^rediss?:\/\//.test(address) ? address : `redis://${address}`;
  return env.NS8CTL_REDIS_URL ?? 'redis://127.0.0.1:6379';
}

/** Opens an ioredis connection and checks it answers; errors name the URL (without password) and the user. */
export async function openRedis(opts: { url: string; username?: string; password?: string; name?: string }): Promise<Redis> {
  const u = new URL(opts.url);
  const redis = new Redis({
    host: u.hostname || '127.0.0.1',
    port: Number(u.port || 6379),
    lazyConnect: true,
    maxRetriesPerRequest: null,
    enableReadyCheck: false, // module users may not run INFO (NS8 ACL: -@admin, no @dangerous)
    ...(opts.username ? { username: opts.username } : {}),
    ...(opts.password ? { password: opts.password } : {}),
    ...(opts.name ? { connectionName: opts.name } : {}),
  });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    await redis.ping();
  } catch (err) {
    redis.disconnect();
    throw new AgentError('redis_unreachable', `cannot connect to Redis at ${u.host}${opts.username ? ` as ${opts.username}` : ''}: ${(err as Error).message}`, { cause: err });
  }
  return redis;
}

/** `ns8ctl agent`: runs until SIGTERM/SIGINT (or extras.signal); SIGHUP re-reads eventsgw.conf. */
export async function agentCommand(opts: AgentCommandOptions, deps: AgentCliDeps, extras: AgentCliExtras = {}): Promise<number> {
  const id = assertInstanceId(opts.id.replace(/^module\//, ''));
  const agentId = agentIdOf(id);
  const env = deps.env;
  const rootfull = opts.rootfull ?? false;
  const installDir = path.resolve(opts.installDir ?? env.AGENT_INSTALL_DIR ?? (rootfull ? `/var/lib/nethserver/${id}` : path.join(env.HOME ?? `/home/${id}`, '.config')));
  const stateDir = path.resolve(opts.stateDir ?? env.AGENT_STATE_DIR ?? path.join(installDir, 'state'));
  const actionsDirs = opts.actionsdir?.length ? opts.actionsdir : [...(env.AGENT_BASEACTIONS_DIR ? [env.AGENT_BASEACTIONS_DIR] : []), path.join(installDir, 'actions')];
  const eventsDirs = opts.eventsdir?.length ? opts.eventsdir : [path.join(installDir, 'events')];
  const maxConcurrency = opts.maxConcurrency !== undefined ? Number(opts.maxConcurrency) : undefined;
  if (maxConcurrency !== undefined && !(Number.isInteger(maxConcurrency) && maxConcurrency > 0)) throw new UsageError(`--max-concurrency must be a positive integer, got "${opts.maxConcurrency}"`);
  const open = extras.openRedis ?? openRedis;
  const password = env.REDIS_PASSWORD || undefined;
  const username = password ? env.REDIS_USER || agentId : undefined;
  const redis = await open({ url: agentRedisUrl(opts.redis, env), name: agentId, ...(username ? { username } : {}), ...(password ? { password } : {}) });
  const subscriber = await open({ url: agentRedisUrl(opts.redis, env, true) }).catch((err: Error) => {
    redis.disconnect();
    throw err;
  });
  const log = (line: string): void => deps.stderr(line + '\n');
  const stepEnv = { ...env, AGENT_ID: agentId, AGENT_INSTALL_DIR: installDir, AGENT_STATE_DIR: stateDir, PATH: withPathFirst(env.PATH, path.join(installDir, 'bin')) };
  const agent = runAgent(
    {
      agentId,
      installDir,
      stateDir,
      actionsDirs,
      builtins: opts.baseActions === false ? [] : createBaseActions(),
      rootfull,
      env: stepEnv,
      log,
      ...(maxConcurrency !== undefined ? { maxConcurrency } : {}),
    },
    { redis, runner: deps.runner, systemd: new SystemctlStatusAdapter(deps.runner) },
  );
  const events = runEventHandlers({ agentId, installDir, stateDir, eventsDirs, env: stepEnv, log }, { subscriber, redis, runner: deps.runner });
  const stop = new AbortController();
  const onStop = (): void => stop.abort();
  const onHup = (): void => void events.reload().catch((err: Error) => log(`error: ${agentId}: reload: ${err.message}`));
  if (extras.processSignals !== false) {
    process.on('SIGTERM', onStop);
    process.on('SIGINT', onStop);
    process.on('SIGHUP', onHup);
  }
  extras.signal?.addEventListener('abort', onStop, { once: true });
  if (extras.signal?.aborted) onStop();
  try {
    await agent.start();
    // Tasks matter more than events: an agent whose subscriptions fail still runs its tasks.
    await events.start().catch((err: Error) => log(`error: ${agentId}: event handlers not started: ${err.message}`));
    await Promise.race([new Promise<void>((r) => stop.signal.addEventListener('abort', () => r(), { once: true })), agent.done]);
  } finally {
    await events.stop();
    await agent.stop();
    if (extras.processSignals !== false) {
      process.off('SIGTERM', onStop);
      process.off('SIGINT', onStop);
      process.off('SIGHUP', onHup);
    }
    subscriber.disconnect();
    redis.disconnect();
  }
  return 0;
}

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

/**
 * Splits the raw arguments after `runagent` into its own options and the command, so a command's
 * options stay in place (`runagent -m web1 ls -la`): runagent options are read only up to the
 * first other word or `--`. Commander reorders unknown options, so this reads rawArgs instead.
 */
export function splitRunagentArgs(raw: readonly string[]): { module?: string; keepCwd: boolean; command: string[] } {
  const at = raw.indexOf('runagent');
  const args = at >= 0 ? raw.slice(at + 1) : [...raw];
  let module: string | undefined;
  let keepCwd = false;
  let i = 0;
  for (; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '--') {
      i++;
      break;
    }
    if (a === '-m' || a === '--module') module = args[++i];
    else if (a.startsWith('--module=')) module = a.slice('--module='.length);
    else if (/^-m./.test(a)) module = a.slice(2);
    else if (a === '-c' || a === '--keep-cwd') keepCwd = true;
    else break;
  }
  return { ...(module !== undefined ? { module } : {}), keepCwd, command: args.slice(i) };
}

/**
 * Adds run-action, publish, runagent and agent to `program`. `deps` is called when a command runs
 * (main()'s lazily built CliDeps fits); `setExitCode` records the exit code for main().
 */
export function registerAgentCommands(program: Command, deps: () => AgentCliDeps, setExitCode: (code: number) => void, extras: AgentCliExtras = {}): void {
  program
    .command('run-action')
    .description("Run an action of an instance's agent: submit a task, follow its progress, print its output (exit code: the task's)")
    .argument('<id>', 'instance id (dokuwiki1) or agent id (module/dokuwiki1, node/1, cluster)')
    .argument('<action>', 'action name, e.g. get-configuration')
    .option('--data <json>', 'task input as JSON (default {})')
    .option('--data-file <path>', 'read the task input from a file (- for stdin)')
    .option('--no-wait', 'submit and print the task id only')
    .option('--timeout <seconds>', 'give up waiting after this many seconds')
    .option('--progress', 'show progress on stderr even when not on a terminal')
    .option('--as <principal>', 'submit on behalf of a principal (module/traefik1): its roles are checked (admin credentials only; with REDIS_USER=module/<id> the task relay submits as that module)')
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (id: string, action: string, opts: RunActionOptions) => {
      const redisFlag = program.opts<{ redis?: string }>().redis;
      setExitCode(await runActionCommand(id, action, { ...opts, ...(redisFlag ? { redis: redisFlag } : {}) }, deps(), extras));
    });

  program
    .command('publish')
    .description('Publish an event: PUBLISH <source>/event/<name> with a JSON payload')
    .argument('<channel>', 'event channel, e.g. module/traefik1/event/certificate-updated')
    .argument('<json>', 'payload (JSON)')
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (channel: string, payload: string, opts: { output?: string }) => setExitCode(await publishCommand(channel, payload, opts, deps())));

  program
    .command('runagent')
    .description("Run a command (or a login shell on a terminal) in an instance's agent environment, as its user")
    .requiredOption('-m, --module <id>', 'instance id')
    .option('-c, --keep-cwd', 'stay in the current directory instead of the state directory')
    .argument('[command...]', 'command and arguments')
    .allowUnknownOption()
    .action(async (command: string[], opts: { module: string; keepCwd?: boolean }) => {
      // rawArgs is commander's untyped copy of the arguments it parsed
      const raw = (program as unknown as { rawArgs?: string[] }).rawArgs ?? [];
      const split = raw.includes('runagent') ? splitRunagentArgs(raw) : { keepCwd: Boolean(opts.keepCwd), command: command ?? [] };
      setExitCode(await runagentCommand({ module: split.module ?? opts.module, keepCwd: split.keepCwd }, split.command, deps(), extras));
    });

  program
    .command('agent')
    .description("Run an instance's module agent (normally started by its agent unit)")
    .requiredOption('--id <id>', 'instance id (dokuwiki1)')
    .option('--install-dir <dir>', 'install directory (default $AGENT_INSTALL_DIR, ~/.config, or /var/lib/nethserver/<id> with --rootfull)')
    .option('--state-dir <dir>', 'state directory (default $AGENT_STATE_DIR or <install dir>/state)')
    .option('--actionsdir <dir>', 'actions directory, lowest precedence first; repeatable (default $AGENT_BASEACTIONS_DIR, <install dir>/actions)', collect)
    .option('--eventsdir <dir>', 'event handlers directory; repeatable (default <install dir>/events)', collect)
    .option('--rootfull', 'the instance is rootfull')
    .option('--no-base-actions', 'do not provide the built-in base actions (create-module, destroy-module, get-status)')
    .option('--max-concurrency <n>', 'running tasks cap (default 32)')
    .action(async (opts: AgentCommandOptions) => {
      const redisFlag = program.opts<{ redis?: string }>().redis;
      setExitCode(await agentCommand({ ...opts, ...(redisFlag ? { redis: redisFlag } : {}) }, deps(), extras));
    });
}
