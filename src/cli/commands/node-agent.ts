/**
 * `ns8ctl node-agent --node N`: runs the node agent for one node (as root, on that node), or
 * reconciles once with `--once`. Wired into the command tree by `registerNodeAgentCommand`.
 */
import { Option, type Command } from 'commander';
import { UsageError } from '../../errors.js';
import type { CommandRunner } from '../../host/runner.js';
import type { ModuleSpec } from '../../manifest/types.js';
import type { CliDeps } from '../deps.js';
import { renderJson, renderTable, parseOutput } from '../../runtime/output.js';
import { createLogger, parseLogFormat, type Logger } from '../../runtime/log.js';
import { shutdownSignal } from '../../runtime/shutdown.js';
import { StatusChangeTracker, SuspensionAwareSource } from '../local-node-agent.js';
import { channels } from '../../state/keys.js';
import { RedisDesiredSource } from '../../node-agent/desired-source.js';
import { defaultLayout, type HostLayout } from '../../node-agent/layout.js';
import { acceptDesiredStateOnHost, hostEpochFile } from '../../node-agent/desired-state-guard.js';
import { runNodeAgent } from '../../node-agent/agent-loop.js';
import { createNodeAgentDeps, type NodeAgentDeps } from '../../node-agent/deps.js';
import { reconcileNodeOnce, type NodeReconcileResult } from '../../node-agent/reconcile.js';

export interface NodeAgentCommandOptions {
  node: string;
  once?: boolean;
  concurrency?: string;
  resync?: string;
  insecureRegistry?: string[];
  output?: string;
  /** `text` (default) or `json`: format of the log lines on stderr. */
  logFormat?: string;
  /** Confirm desired state as it is (after a DesiredStateSuspect refusal) and exit. */
  acceptDesiredState?: boolean;
}

/** Extra wiring from other areas (image resolution through repositories, issue 6). */
export interface NodeAgentCommandExtras {
  resolveImage?: (spec: ModuleSpec) => Promise<string>;
  /** Host layout overrides (tests point the roots at temp dirs). */
  layout?: Partial<HostLayout>;
}

function positiveInt(value: string | undefined, flag: string, dflt: number): number {
  if (value === undefined) return dflt;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${flag} must be a positive integer, got ${JSON.stringify(value)}`);
  return n;
}

/**
 * Logs one line per instance a pass reconciled: `instance reconciled id=... outcome=...
 * duration_ms=... reason=...` (the status reason: `Converged`, `ImageResolutionFailed`,
 * `UnitFailed`...), plus the steps applied, the drift repaired and the error. Instances left
 * unchanged, skipped (backoff) or suspended write no line: an idle node logs nothing.
 */
export function logReconcileResult(logger: Logger, r: NodeReconcileResult): void {
  for (const i of r.instances) {
    // An orphan is logged (and announced) once, when it becomes one, not at every pass.
    if (i.outcome === 'unchanged' || i.outcome === 'skipped' || i.outcome === 'suspended' || i.outcome === 'orphaned') continue;
    const degraded = i.status?.conditions.find((c) => c.type === 'Degraded' && c.status === 'True');
    const reason = degraded?.reason ?? i.status?.conditions.find((c) => c.type === 'Ready')?.reason ?? (i.outcome === 'removed' ? 'Removed' : i.error?.code);
    const level = i.outcome === 'failed' || i.outcome === 'blocked' ? 'warn' : 'info';
    logger.log(level, 'instance reconciled', {
      id: i.id,
      node: r.node,
      outcome: i.outcome,
      duration_ms: i.durationMs,
      reason,
      ...(i.applied.length ? { steps: i.applied.map((s) => s.kind).join(',') } : {}),
      ...(i.drift.length ? { drift: i.drift.join('; ') } : {}),
      ...(i.status?.targetImage ? { target_image: i.status.targetImage } : {}),
      ...(i.error ? { error: i.error.message } : {}),
    });
  }
}

/** Renders a reconcile result: one row per instance (id, outcome, steps, drift or error). */
export function renderReconcileResult(r: NodeReconcileResult): string {
  const rows = r.instances.map((i) => [i.id, i.outcome, String(i.applied.length), i.error ? i.error.message : i.drift.length ? `drift: ${i.drift.join('; ')}` : '']);
  const suspect = r.suspect ? `node ${r.node}: refusing to act: DesiredStateSuspect (${r.suspect.reason}): ${r.suspect.message}\n` : '';
  const head = suspect + (r.systemdMissing ? `node ${r.node}: ${r.systemdMissing}: units are installed but not started\n` : '');
  return head + renderTable(['instance', 'result', 'steps', 'detail'], rows);
}


/** A runner that counts the commands of this run (the runner's own history is bounded). */
function countingRunner(inner: CommandRunner): { runner: CommandRunner; counted: { all: number; mutating: number } } {
  const counted = { all: 0, mutating: 0 };
  const runner: CommandRunner = {
    get history() {
      return inner.history;
    },
    run: (argv, o) => {
      counted.all++;
      if (o?.mutating) counted.mutating++;
      return inner.run(argv, o);
    },
  };
  return { runner, counted };
}

/** `node-agent --once -o json`: the pass, its commands and each instance's steps. */
function renderOnceJson(result: NodeReconcileResult, counted: { all: number; mutating: number }): string {
  return renderJson({
    node: result.node,
    systemdMissing: result.systemdMissing ?? null,
    suspect: result.suspect ?? null,
    commands: counted,
    instances: result.instances.map((i) => ({ id: i.id, outcome: i.outcome, steps: i.applied.map((s) => ({ kind: s.kind, reason: s.reason })), drift: i.drift, error: i.error?.toJSON() ?? null })),
  });
}

/**
 * `node-agent` command body: `--once` reconciles and returns 0 (all fine) or 1 (an instance
 * failed); without it, runs until SIGTERM/SIGINT and returns 0.
 */
export async function nodeAgentCommand(opts: NodeAgentCommandOptions, d: CliDeps, extras: NodeAgentCommandExtras = {}): Promise<number> {
  const node = positiveInt(opts.node, '--node', 0);
  const output = parseOutput(opts.output, ['text', 'json'], 'text');
  const concurrency = positiveInt(opts.concurrency, '--concurrency', 4);
  const resyncMs = positiveInt(opts.resync, '--resync', 60) * 1000;
  const logger = createLogger(parseLogFormat(opts.logFormat), d.stderr);
  if (opts.acceptDesiredState) return acceptCommand(node, output, d, extras);
  const conn = await d.connect({ startEmbedded: true });
  const agentOpts = { node, concurrency, insecureRegistries: opts.insecureRegistry ?? [], ...(extras.layout ? { layout: extras.layout } : {}) };
  const { runner, counted } = countingRunner(d.runner);
  const deps: NodeAgentDeps = createNodeAgentDeps(agentOpts, {
    redis: conn.redis,
    runner,
    // Refusals and orphans need a human: warn level.
    log: (line) => logger.log(/: (DesiredStateSuspect|Orphaned)\b/.test(line) ? 'warn' : 'info', line.replace(/^node-agent: /, '')),
    // Suspended instances (`ns8ctl suspend module <id>`) reach the agent as spec.suspend: true.
    source: new SuspensionAwareSource(new RedisDesiredSource(conn.redis), conn.redis),
    ...(extras.resolveImage ? { resolveImage: extras.resolveImage } : {}),
  });
  // Standalone, this command is the one publisher of module-status-changed (under `ns8ctl run`
  // the controller's seam publishes with the same tracker; this code path is not used there).
  const tracker = new StatusChangeTracker();
  // A suspended instance writes no status: nothing to announce for it.
  const announce = async (result: NodeReconcileResult, only?: (r: NodeReconcileResult['instances'][number]) => boolean): Promise<void> => {
    const changed = new Set(tracker.changed(result));
    const ids = result.instances.filter((r) => changed.has(r.id) && r.outcome !== 'suspended' && (!only || only(r))).map((r) => r.id);
    await Promise.all(ids.map((id) => conn.redis.publish(channels.moduleStatusChanged, JSON.stringify({ module: id, node })).catch(() => 0)));
  };
  if (opts.once) {
    const result = await reconcileNodeOnce(agentOpts, deps);
    logReconcileResult(logger, result);
    // No earlier pass to compare with: an instance left unchanged wrote no status.
    await announce(result, (r) => r.outcome !== 'unchanged');
    d.stdout(output === 'json' ? renderOnceJson(result, counted) : renderReconcileResult(result) + `${counted.all} command(s) run, ${counted.mutating} changing the host\n`);
    return result.suspect || result.instances.some((i) => i.outcome === 'failed' || i.outcome === 'blocked') ? 1 : 0;
  }
  const subscriber = conn.redis.duplicate();
  // Handlers stay registered until the command ended: a second signal ends the process with
  // 128+n instead of killing it uncleanly.
  const stop = shutdownSignal();
  logger.log('info', `reconciling node ${node} (resync every ${resyncMs / 1000} s, ${concurrency} at a time)`, { node });
  try {
    const onReconcile = (result: NodeReconcileResult): void => {
      logReconcileResult(logger, result);
      void announce(result);
    };
    const handle = runNodeAgent({ ...agentOpts, resyncMs, signal: stop.signal, subscriber, onReconcile }, deps);
    // Suspend and resume take effect at once, not at the next resync (as `ns8ctl run`).
    const wake = [channels.controllerEvent('module-suspended'), channels.controllerEvent('module-resumed')];
    subscriber.on('message', (channel: string) => {
      if (wake.includes(channel)) handle.trigger();
    });
    await subscriber.subscribe(...wake);
    await handle.done;
  } finally {
    stop.dispose();
    subscriber.disconnect();
  }
  return 0;
}

/**
 * `--accept-desired-state`: an operator confirms desired state as it is (see
 * desired-state-guard.ts); this host's epoch file is written and the command exits.
 */
async function acceptCommand(node: number, output: string, d: CliDeps, extras: NodeAgentCommandExtras): Promise<number> {
  const conn = await d.connect({ startEmbedded: true });
  const layout = defaultLayout(extras.layout);
  const a = await acceptDesiredStateOnHost(conn.redis, layout);
  if (output === 'json') {
    d.stdout(renderJson({ node, epoch: a.epoch, previous: a.previous?.id ?? null, desiredModules: a.desiredModules, hostEpochFile: hostEpochFile(layout) }));
    return 0;
  }
  const was = a.previous ? (a.previous.id === a.epoch.id ? ' (unchanged)' : ` (was ${a.previous.id})`) : ' (none before)';
  const empty = a.desiredModules === 0 ? '; desired state holds no Module: instances of this node are reported Orphaned and left running' : '';
  d.stdout(`node ${node}: desired state accepted: epoch ${a.epoch.id}, created ${a.epoch.created}${was}; ${a.desiredModules} Module object(s)${empty}. The node agent acts on it from its next pass.\n`);
  return 0;
}

/** Adds `node-agent` to the command tree (call from src/cli/extensions.ts). */
export function registerNodeAgentCommand(program: Command, deps: () => CliDeps, setExitCode: (code: number) => void, extras: NodeAgentCommandExtras = {}): void {
  program
    .command('node-agent')
    .description('Reconcile the module instances placed on one node against this host (run as root on that node)')
    .requiredOption('--node <id>', 'NS8 node id of this host')
    .option('--once', 'reconcile once, print what was done, and exit (1 when an instance failed)')
    .option('--concurrency <n>', 'instances reconciled at the same time', '4')
    .option('--resync <seconds>', 'full reconcile at least this often, to repair drift', '60')
    .option('--insecure-registry <host:port>', 'registry reached without TLS verification (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .option('-o, --output <format>', 'text or json (with --once)', 'text')
    .option('--accept-desired-state', 'confirm desired state as it is now, after the agent refused to act on it (DesiredStateSuspect: Redis lost or replaced its data), and exit')
    .addOption(new Option('--log-format <format>', 'log lines on stderr: one per instance reconciled (id, outcome, duration, reason)').choices(['text', 'json']).default('text'))
    .action(async (opts: NodeAgentCommandOptions) => setExitCode(await nodeAgentCommand(opts, deps(), extras)));
}
