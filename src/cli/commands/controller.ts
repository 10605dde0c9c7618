/**
 * Commands of the controller area, as (options, deps) -> exit code functions plus the commander
 * wiring (`registerControllerCommands`):
 * - `ns8ctl controller [-f PATH... | --git URL ...]`: the cluster controller (until SIGTERM);
 * - `ns8ctl run`: controller + node agent for the local node in one process (embedded Redis when
 *   no Redis answers);
 * - `ns8ctl suspend|resume [module ID | source NAME] [--for D] [--reason TEXT]`;
 * - `ns8ctl events [-w] [-o json] [--limit N]`;
 * and `watchModules`, which the lead wires as `ns8ctl get modules -w`.
 */
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { Option, type Command } from 'commander';
import type { CliDeps } from '../deps.js';
import { parseOutput, renderJson } from '../../runtime/output.js';
import { UsageError } from '../../errors.js';
import type { ModuleSpec } from '../../manifest/types.js';
import { resolveStateDir } from '../../state/state-dir.js';
import { Controller, type ControllerOptions } from '../../controller/controller.js';
import { formatDuration, parseDuration } from '../../runtime/duration.js';
import { EventRecorder, followEvents, formatEventLine, readEvents, type ControllerEvent } from '../../state/events.js';
import { createLogger, parseLogFormat } from '../../runtime/log.js';
import { shutdownSignal } from '../../runtime/shutdown.js';
import { startLocalNodeAgent, type LocalNodeAgentFactory } from '../local-node-agent.js';
import { logReconcileResult } from './node-agent.js';
import { NotificationSubscriber } from '../../controller/notifications.js';
import { maskString } from '../../runtime/mask.js';
import { buildSources } from '../../controller/source-options.js';
import { parseSyncWindow } from '../../controller/sync-window.js';
import { assertTargetExists, parseSuspendTarget, resumeTarget, suspendTarget } from '../../controller/suspend.js';

/** Default HTTP port of /healthz, /readyz, /metrics and the webhook. */
export const DEFAULT_HTTP_PORT = 9780;

/** What the long-running commands need beyond CliDeps. */
export interface ControllerCliDeps extends CliDeps {
  /** Aborts on SIGTERM/SIGINT (the command then stops cleanly). */
  signal: AbortSignal;
  /** `--state-dir` resolved (git cache clones live under it). */
  stateDir: string;
}

export interface ControllerCommandOptions {
  filename?: string[];
  /** `NAME=PATH[,SETTING...]` (repeatable): named directory sources. */
  source?: string[];
  /** `URL` (the unnamed source) or `NAME=URL[,SETTING...]`; repeatable. */
  git?: string | string[];
  branch?: string;
  path?: string;
  interval?: string;
  /** OpenPGP public keys (file or directory) every git source requires its commits to be signed by. */
  trustedKeys?: string;
  /** `[DAYS ]HH:MM-HH:MM` (repeatable): sources apply new revisions only while one is open. */
  syncWindow?: string[];
  /** File every event is appended to (JSON lines). */
  auditLog?: string;
  /** Webhook URL Warning events are POSTed to (or $NS8CTL_NOTIFY_URL). */
  notifyUrl?: string;
  /** The same Warning is not sent again within this (default 1h). */
  notifyQuiet?: string;
  sourceName?: string;
  prune?: boolean;
  selfHeal?: boolean;
  allowEmpty?: boolean;
  resync?: string;
  concurrency?: string;
  httpPort?: string;
  http?: boolean;
  webhookSecretFile?: string;
  lease?: string;
  logFormat?: string;
  cacheDir?: string;
}

export interface RunCommandOptions extends ControllerCommandOptions {
  node?: string;
  insecureRegistry?: string[];
  agentResync?: string;
  agentConcurrency?: string;
}

/** Wiring from other areas. */
export interface ControllerExtras {
  /** Image resolution through repositories for the embedded node agent. */
  resolveImage?: (spec: ModuleSpec) => Promise<string>;
  /** Replaces the embedded node agent (tests). */
  nodeAgentFactory?: LocalNodeAgentFactory;
  /** Replaces the SIGTERM/SIGINT signal (tests). */
  signal?: AbortSignal;
}

function positiveInt(value: string | undefined, flag: string, dflt: number, min = 1): number {
  if (value === undefined) return dflt;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${flag} must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  return n;
}

/**
 * Turns command-line options into controller options (sources, timings, HTTP, webhook secret).
 * Sources: see buildSources (`-f`/`--git` for the unnamed source, `--source NAME=PATH` and
 * `--git NAME=URL` for any number of named ones).
 * @throws UsageError for a bad combination or value (see buildSources), a bad duration or port,
 *   an unreadable or empty webhook secret file.
 */
export async function buildControllerOptions(opts: ControllerCommandOptions, deps: Pick<ControllerCliDeps, 'env' | 'stateDir' | 'cwd'>): Promise<ControllerOptions> {
  const windows = (opts.syncWindow ?? []).map((w) => parseSyncWindow(w));
  const sources = buildSources(opts, deps).map((s) => (windows.length > 0 ? { ...s, syncWindows: windows } : s));
  let webhookSecret: string | undefined = deps.env.NS8CTL_WEBHOOK_SECRET || undefined;
  if (opts.webhookSecretFile) {
    try {
      webhookSecret = (await readFile(path.resolve(deps.cwd, opts.webhookSecretFile), 'utf8')).trim();
    } catch (err) {
      throw new UsageError(`--webhook-secret-file ${opts.webhookSecretFile}: ${(err as Error).message}`);
    }
    if (!webhookSecret) throw new UsageError(`--webhook-secret-file ${opts.webhookSecretFile} is empty`);
  }
  const resyncMs = parseDuration(opts.resync ?? '10m', '--resync');
  const leaseMs = parseDuration(opts.lease ?? '15s', '--lease');
  if (leaseMs < 1000) throw new UsageError('--lease must be at least 1s');
  const out: ControllerOptions = {
    sources,
    resyncMs,
    leaseMs,
    concurrency: positiveInt(opts.concurrency, '--concurrency', 4),
  };
  if (opts.http !== false) out.http = { host: '127.0.0.1', port: positiveInt(opts.httpPort, '--http-port', DEFAULT_HTTP_PORT, 0) };
  if (webhookSecret) out.webhookSecret = webhookSecret;
  if (opts.auditLog) out.auditLog = path.resolve(deps.cwd, opts.auditLog);
  const notifyUrl = opts.notifyUrl ?? (deps.env.NS8CTL_NOTIFY_URL || undefined);
  if (notifyUrl) {
    let u: URL;
    try {
      u = new URL(notifyUrl);
    } catch {
      throw new UsageError(`--notify-url ${maskString(notifyUrl)} is not a URL (an http:// or https:// webhook address)`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new UsageError(`--notify-url ${maskString(notifyUrl)}: only http:// and https:// webhooks are supported`);
    out.notify = { url: notifyUrl, quietMs: parseDuration(opts.notifyQuiet ?? '1h', '--notify-quiet') };
  } else if (opts.notifyQuiet) throw new UsageError('--notify-quiet needs --notify-url (or $NS8CTL_NOTIFY_URL)');
  return out;
}

function waitForAbort(signal: AbortSignal): Promise<void> {
  return new Promise((r) => (signal.aborted ? r() : signal.addEventListener('abort', () => r(), { once: true })));
}

function describeSources(o: ControllerOptions): string {
  if (o.sources.length === 0) return 'no source (summaries and events only; apply manifests with `ns8ctl apply`)';
  return o.sources
    .map((s) => `${s.name}: ` + (s.kind === 'git' ? `git ${maskString(s.git!.url)} branch ${s.git!.branch} path ${s.git!.path} every ${formatDuration(s.git!.intervalMs)}` : `directory ${s.paths.join(', ')}`) + `${s.prune ? ' with prune' : ''}`)
    .join('; ');
}

/**
 * `ns8ctl controller`: runs until `deps.signal` aborts, then stops cleanly (the running step
 * finishes, the lease is released) and returns 0.
 * @throws Ns8ctlError when Redis or the HTTP port is unavailable at start.
 */
export async function controllerCommand(opts: ControllerCommandOptions, deps: ControllerCliDeps): Promise<number> {
  const options = await buildControllerOptions(opts, deps);
  const logger = createLogger(parseLogFormat(opts.logFormat), deps.stderr);
  const conn = await deps.connect({ startEmbedded: false });
  const controller = new Controller(options, { redis: conn.redis, runner: deps.runner, logger });
  logger.log('info', 'starting controller', { redis: conn.url, sources: describeSources(options) });
  try {
    await controller.start();
    await waitForAbort(deps.signal);
  } finally {
    await controller.stop();
  }
  return 0;
}

/**
 * `ns8ctl run`: the controller and the node agent of the local node (`--node`, default 1) in one
 * process, with an embedded redis-server when none answers. Runs until `deps.signal` aborts.
 */
export async function runCommand(opts: RunCommandOptions, deps: ControllerCliDeps, extras: ControllerExtras = {}): Promise<number> {
  const options = await buildControllerOptions(opts, deps);
  const node = positiveInt(opts.node, '--node', 1);
  const agentResyncMs = parseDuration(opts.agentResync ?? '60s', '--agent-resync');
  const logger = createLogger(parseLogFormat(opts.logFormat), deps.stderr);
  const conn = await deps.connect({ startEmbedded: true });
  logger.log('info', 'starting controller and node agent', { redis: conn.url, embedded: conn.embedded, node, sources: describeSources(options) });
  const controller = new Controller(options, { redis: conn.redis, runner: deps.runner, logger });
  const stopAgent = new AbortController();
  const onAbort = (): void => stopAgent.abort();
  deps.signal.addEventListener('abort', onAbort, { once: true });
  const factory = extras.nodeAgentFactory ?? startLocalNodeAgent;
  let agent: Awaited<ReturnType<LocalNodeAgentFactory>> | undefined;
  try {
    await controller.start();
    agent = await factory(
      {
        node,
        resyncMs: agentResyncMs,
        concurrency: positiveInt(opts.agentConcurrency, '--agent-concurrency', 4),
        insecureRegistries: opts.insecureRegistry ?? [],
        ...(extras.resolveImage ? { resolveImage: extras.resolveImage } : {}),
        // One log line per instance the agent changed or failed on, as `ns8ctl node-agent` logs them.
        onPass: (result) => logReconcileResult(logger, result),
      },
      { redis: conn.redis, runner: deps.runner, log: (line) => logger.log('info', line), signal: stopAgent.signal },
    );
    // Either a signal, or the agent loop ending on its own, ends the process.
    await Promise.race([waitForAbort(deps.signal), agent.done]);
  } finally {
    deps.signal.removeEventListener('abort', onAbort);
    stopAgent.abort();
    await Promise.allSettled([controller.stop(), agent?.stop() ?? Promise.resolve()]);
  }
  return 0;
}

function whoami(env: NodeJS.ProcessEnv): string {
  return `${env.SUDO_USER || env.USER || env.LOGNAME || 'unknown'}@${hostname()}`;
}

/**
 * `ns8ctl suspend [module ID | source NAME] [--for D] [--reason TEXT] [--force] [-o json]`.
 * @throws NotFoundError (exit 1) when the module or source does not exist, unless `force`.
 */
export async function suspendCommand(resource: string | undefined, name: string | undefined, opts: { for?: string; reason?: string; output?: string; force?: boolean }, deps: CliDeps): Promise<number> {
  const target = parseSuspendTarget(resource, name);
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  const forMs = opts.for !== undefined ? parseDuration(opts.for, '--for') : undefined;
  if (forMs !== undefined && forMs < 1000) throw new UsageError('--for must be at least 1s');
  const { redis } = await deps.connect({ startEmbedded: false });
  if (!opts.force) await assertTargetExists(redis, target);
  const s = await suspendTarget(redis, new EventRecorder(redis), target, { by: whoami(deps.env), now: new Date(), ...(opts.reason ? { reason: opts.reason } : {}), ...(forMs !== undefined ? { forMs } : {}) });
  if (format === 'json') deps.stdout(renderJson({ kind: target.kind, name: target.name, suspended: true, ...s }));
  else deps.stdout(`${target.kind} ${target.name} suspended${s.until ? ` until ${s.until}` : ''}; \`ns8ctl resume ${target.kind} ${target.name}\` resumes it\n`);
  return 0;
}

/** `ns8ctl resume [module ID | source NAME] [-o json]`. Exit 0 also when it was not suspended (said on stderr). */
export async function resumeCommand(resource: string | undefined, name: string | undefined, opts: { output?: string }, deps: CliDeps): Promise<number> {
  const target = parseSuspendTarget(resource, name);
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  const { redis } = await deps.connect({ startEmbedded: false });
  const was = await resumeTarget(redis, new EventRecorder(redis), target, whoami(deps.env));
  if (format === 'json') deps.stdout(renderJson({ kind: target.kind, name: target.name, suspended: false, wasSuspended: was }));
  else if (was) deps.stdout(`${target.kind} ${target.name} resumed\n`);
  else deps.stderr(`${target.kind} ${target.name} was not suspended\n`);
  return 0;
}

/**
 * `ns8ctl events [-w] [-o json] [--limit N]`: the last N events (oldest first); `-w` then follows
 * new ones until interrupted. `-o json`: one JSON document `{"items":[...]}`, or with `-w` one
 * JSON object per line.
 */
export async function eventsCommand(opts: { watch?: boolean; output?: string; limit?: string }, deps: CliDeps & { signal?: AbortSignal }): Promise<number> {
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  const limit = positiveInt(opts.limit, '--limit', 50);
  const { redis } = await deps.connect({ startEmbedded: false });
  const history = await readEvents(redis, limit);
  const print = (e: ControllerEvent): void => {
    if (format === 'json') deps.stdout(JSON.stringify(e) + '\n');
    else deps.stdout(formatEventLine(e) + '\n');
  };
  if (!opts.watch) {
    if (format === 'json') deps.stdout(renderJson({ items: history }));
    else if (history.length === 0) deps.stderr('No events.\n');
    else history.forEach(print);
    return 0;
  }
  history.forEach(print);
  const signal = deps.signal ?? new AbortController().signal;
  const follower = redis.duplicate();
  follower.on('error', () => undefined);
  try {
    // From the last event shown (or the start of an empty stream): nothing falls in between.
    await followEvents(follower, print, signal, history.at(-1)?.id ?? '0-0');
  } finally {
    follower.disconnect();
  }
  return 0;
}

/**
 * Follows changes for `ns8ctl get modules -w`: calls `render` once, then again after every
 * relevant Redis notification (desired state written, a node agent's status changed, a
 * suspension), debounced by `debounceMs`; on a terminal the screen is cleared first, otherwise a
 * blank line separates the renderings. No polling. Returns `render`'s last exit code when
 * `deps.signal` aborts.
 */
export async function watchModules(deps: CliDeps & { signal: AbortSignal }, render: () => Promise<number>, opts: { debounceMs?: number } = {}): Promise<number> {
  const { redis } = await deps.connect({ startEmbedded: false });
  let code = await render();
  let timer: NodeJS.Timeout | undefined;
  let chain: Promise<void> = Promise.resolve();
  const rerender = (): void => {
    chain = chain.then(async () => {
      if (deps.signal.aborted) return;
      deps.stdout(deps.isTTY ? '\x1b[H\x1b[2J' : '\n');
      code = await render();
    });
  };
  const relevant = new Set(['desired-state-changed', 'module-status-changed', 'module-status-written', 'module-suspended', 'module-resumed', 'module-became-ready', 'module-became-unready', 'module-stalled', 'module-drifted']);
  const sub = new NotificationSubscriber(redis, {
    name: 'ns8ctl-watch',
    onNotification: (n) => {
      if (!relevant.has(n.name)) return;
      if (timer) clearTimeout(timer);
      timer = setTimeout(rerender, opts.debounceMs ?? 100);
    },
    onReconnect: rerender,
  });
  await sub.start();
  try {
    await waitForAbort(deps.signal);
  } finally {
    if (timer) clearTimeout(timer);
    await sub.stop();
    await chain;
  }
  return code;
}

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

function addControllerOptions(cmd: Command): Command {
  return cmd
    .option('-f, --filename <path>', 'manifest file or directory to watch (repeatable): the source named by --source-name', collect)
    .option('--source <name=path>', 'a named manifests directory source, NAME=PATH[,prune|no-prune|no-self-heal|allow-empty] (repeatable; the same NAME again adds a path)', collect)
    .option('--git <url>', 'git repository to follow: URL (the source named by --source-name) or NAME=URL[,branch=B,path=P,interval=D,cache-dir=DIR,trusted-keys=F,prune,no-self-heal,allow-empty] (repeatable)', collect)
    .option('--branch <name>', 'git branch to follow (default main; default of every git source)')
    .option('--path <dir>', 'directory of the manifests inside the repository (default .)')
    .option('--interval <duration>', 'git poll interval, e.g. 30s, 1m (default 1m); the webhook fetches at once')
    .option('--sync-window <window>', 'apply new revisions only in this window, [DAYS ]HH:MM-HH:MM local time, e.g. "Sat,Sun 01:00-06:00" (repeatable; drift repair goes on at any time)', collect)
    .option('--audit-log <file>', 'append every event (applied commits with author, rejections, drift, module conditions, rollbacks...) to this file as JSON lines, resuming after restarts; 0600, rotated at 10 MiB (5 kept)')
    .option('--notify-url <url>', 'POST Warning events (and their resolution) as JSON {"text", "event"} to this webhook, e.g. Slack, Mattermost or ntfy (or $NS8CTL_NOTIFY_URL)')
    .option('--notify-quiet <duration>', 'do not send the same Warning again within this (default 1h)')
    .option('--trusted-keys <path>', 'apply only git commits signed by one of these OpenPGP public keys (a file, or a directory of *.asc|*.gpg|*.pub|*.key); default of every git source')
    .option('--source-name <name>', 'name of the source given by -f or an unnamed --git; also its apply set (inventory)', 'default')
    .option('--prune', 'delete objects of a source\'s apply set that left it (refused for more than half of it); default of every source')
    .option('--allow-empty', 'let a source that yields no object prune the last object it holds (an empty source is otherwise refused, never pruned); default of every source')
    .option('--no-self-heal', 'report desired state changed outside a source (Drifted) instead of restoring it; default of every source')
    .option('--resync <duration>', 'recheck everything this often', '10m')
    .option('--concurrency <n>', 'reconciles at once', '4')
    .option('--http-port <port>', `port of /healthz, /readyz, /metrics and the webhook on 127.0.0.1 (0: any free port)`, String(DEFAULT_HTTP_PORT))
    .option('--no-http', 'no HTTP endpoint')
    .option('--webhook-secret-file <file>', 'shared secret of POST /hooks/<source> (or $NS8CTL_WEBHOOK_SECRET)')
    .option('--lease <duration>', 'leader lease length', '15s')
    .option('--cache-dir <dir>', 'where the cache clone of the (single) git source lives (default <state-dir>/git/<source name>)')
    .addOption(new Option('--log-format <format>', 'log lines on stderr').choices(['text', 'json']).default('text'));
}

/**
 * Adds `controller`, `run`, `suspend`, `resume` and `events` to `program`. `deps` is called when a
 * command runs; `setExitCode` records the exit code for main(). Long-running commands stop cleanly on
 * SIGTERM/SIGINT (or `extras.signal`).
 */
export function registerControllerCommands(program: Command, deps: () => CliDeps, setExitCode: (code: number) => void, extras: ControllerExtras = {}): void {
  const longRunning = async (fn: (d: ControllerCliDeps) => Promise<number>): Promise<void> => {
    const sig = extras.signal ? { signal: extras.signal, dispose: () => undefined } : shutdownSignal();
    try {
      const d = deps();
      const g = program.opts<{ stateDir?: string }>();
      setExitCode(await fn({ ...d, signal: sig.signal, stateDir: resolveStateDir(g.stateDir, d.env) }));
    } finally {
      sig.dispose();
    }
  };

  addControllerOptions(program.command('controller').description('Run the cluster controller: keep desired state equal to its sources (manifests directories, git branches), report conditions and events (until SIGTERM)')).action(
    (opts: ControllerCommandOptions) => longRunning((d) => controllerCommand(opts, d)),
  );

  addControllerOptions(program.command('run').description('Run the controller and the node agent of this node in one process (embedded Redis when none answers; until SIGTERM)'))
    .option('--node <id>', 'NS8 node id of this machine', '1')
    .option('--insecure-registry <host:port>', 'registry reached without TLS verification (repeatable)', collect)
    .option('--agent-resync <duration>', 'node agent full pass at least this often', '60s')
    .option('--agent-concurrency <n>', 'instances the node agent converges at once', '4')
    .action((opts: RunCommandOptions) => longRunning((d) => runCommand(opts, d, extras)));

  program
    .command('suspend')
    .description('Suspend reconciliation of a module instance or of a whole source (no arguments: the source "default")')
    .argument('[resource]', 'module | source')
    .argument('[name]', 'instance id or source name')
    .option('--for <duration>', 'lapse by itself after this long (e.g. 2h)')
    .option('--reason <text>', 'why (shown in status and events)')
    .option('--force', 'suspend even if no such module or source exists yet')
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (resource: string | undefined, name: string | undefined, opts: { for?: string; reason?: string; output?: string; force?: boolean }) => setExitCode(await suspendCommand(resource, name, opts, deps())));

  program
    .command('resume')
    .description('Resume reconciliation of a suspended module instance or source')
    .argument('[resource]', 'module | source')
    .argument('[name]', 'instance id or source name')
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (resource: string | undefined, name: string | undefined, opts: { output?: string }) => setExitCode(await resumeCommand(resource, name, opts, deps())));

  program
    .command('events')
    .description('Show controller events (newest last); -w follows new ones')
    .option('-w, --watch', 'keep printing new events until interrupted')
    .option('-o, --output <format>', 'text or json (with -w: one JSON object per line)', 'text')
    .option('--limit <n>', 'how many past events to show', '50')
    .action(async (opts: { watch?: boolean; output?: string; limit?: string }) => {
      if (!opts.watch) return setExitCode(await eventsCommand(opts, deps()));
      await longRunning((d) => eventsCommand(opts, d));
    });
}
