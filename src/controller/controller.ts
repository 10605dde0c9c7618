/**
 * The cluster controller: keeps desired state in Redis equal to its sources and keeps a summary
 * of every Module's conditions, informer style:
 * - triggers (level-triggered, they only say *when*): watched manifest directories, Redis
 *   notifications, a git poll interval and webhook, and a periodic resync;
 * - one keyed work queue (`source/<name>`, `Module/<id>`) with bounded concurrency and backoff;
 * - leader election on a Redis lease: only the leader runs triggers and the queue; standbys
 *   serve health and metrics and take over when the leader's lease lapses or is released;
 * - HTTP on 127.0.0.1: /healthz, /readyz, /metrics and the webhook;
 * - one structured log line per reconcile.
 * `start()` and `stop()` are idempotent and awaitable; `stop()` lets the running step finish.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { startAuditLog, type AuditLog } from './audit-log.js';
import { startNotifier, type Notifier } from './notifier.js';
import { startTaskRelay, type TaskRelay } from '../agent/task-relay.js';
import { defaultSchemaLookup } from '../apply/pipeline.js';
import { toNs8ctlError } from '../errors.js';
import type { CommandRunner } from '../host/runner.js';
import type { ClusterState } from '../state/cluster-state.js';
import { keys } from '../state/keys.js';
import { systemClock, type Clock, type TimerHandle } from '../runtime/clock.js';
import type { BackoffOptions } from '../runtime/backoff.js';
import type { ConfigurationSchemaLookup } from '../configuration/configuration-schema.js';
import { longLivedConnection } from './connections.js';
import { DirectoryWatch } from './directory-watch.js';
import { EventRecorder } from '../state/events.js';
import { ControllerHttpServer } from './http-server.js';
import { LeaderElector } from './leader-election.js';
import type { Logger } from '../runtime/log.js';
import { ControllerMetrics } from './metrics.js';
import { BackupMetrics } from './backup-metrics.js';
import { moduleKey, reconcileModuleSummary } from './module-reconciler.js';
import { changedModules, NotificationSubscriber, type Notification } from './notifications.js';
import { sourceKey, SourceReconciler, type SourceSpec } from './source-reconciler.js';
import { isTerminalError, WorkQueue, type ReconcileReport, type ReconcileResult } from '../runtime/work-queue.js';
import { scanNames } from '../state/scan.js';

/** Default `ControllerOptions.redisCommandTimeoutMs`. */
export const DEFAULT_REDIS_COMMAND_TIMEOUT_MS = 15_000;

export interface ControllerOptions {
  sources: SourceSpec[];
  /** Periodic recheck of everything (default 10 min, ±10 % jitter). */
  resyncMs?: number;
  /** Reconciles at once (default 4). */
  concurrency?: number;
  /** Quiet time after file events (default 100 ms). */
  debounceMs?: number;
  /** HTTP endpoint; omitted: none. */
  http?: { host?: string; port: number };
  /** Shared secret of the webhook (none: webhook disabled). */
  webhookSecret?: string;
  /** Every event appended to this file as JSON lines, by the leader (see audit-log.ts). */
  auditLog?: string;
  /** Notifications of Warning events to a webhook, by the leader (see notifier.ts). */
  notify?: { url: string; quietMs?: number };
  /** Leader lease (default 15 s). */
  leaseMs?: number;
  /**
   * A Redis command of the controller's connection without an answer after this long fails
   * (default 15 s): a hung Redis fails the step (retried with backoff) instead of holding it, and a
   * stop, forever. Longer than any apply script of a large cluster takes.
   */
  /**
   * Run the module-to-module task relay (src/agent/task-relay.ts) while leading: NS8's api-server
   * role, so instances can submit tasks to other agents under their own ACL. Default true.
   */
  taskRelay?: boolean;
  redisCommandTimeoutMs?: number;
  /** Leader identity (default host:pid:random). */
  identity?: string;
  backoff?: BackoffOptions;
  /**
   * Declarative configuration (docs/controller.md): run configure-module when spec.configuration
   * changes, drift-check with get-configuration every `driftCheckEveryMs` (default: the resync
   * interval). A reconcile waits `taskWaitMs` (5 s) for a task, then polls it later; a task no
   * agent took within `taskTimeoutMs` (120 s) is withdrawn. `false`: leave module configuration alone.
   */
  configuration?: { driftCheckEveryMs?: number; taskTimeoutMs?: number; taskWaitMs?: number } | false;
}

export interface ControllerDeps {
  /** A connected client; the controller opens its own long-lived duplicates of it. */
  redis: Redis;
  runner: CommandRunner;
  logger: Logger;
  clock?: Clock;
  now?: () => Date;
  random?: () => number;
  /** Observers (benchmarks, tests). */
  onReconcileStart?: (key: string) => void;
  onReconcileDone?: (report: ReconcileReport) => void;
  /** configure-module schemas (plan-time validation, drift normalisation); default defaultSchemaLookup(runner). */
  configurationSchemas?: ConfigurationSchemaLookup;
}

/** Error codes no retry can fix. */
function terminal(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === 'plan_blocked') return false;
  return isTerminalError(err);
}

interface LeaderRuntime {
  queue: WorkQueue;
  watches: DirectoryWatch[];
  resync: TimerHandle | undefined;
  relay?: TaskRelay;
  notifier?: Notifier;
  audit?: AuditLog;
}

/** See the module doc. */
export class Controller {
  readonly identity: string;
  readonly metrics: ControllerMetrics;
  /** Backup figures for /metrics (backup-metrics.ts). */
  readonly backupMetrics = new BackupMetrics();
  private readonly clock: Clock;
  private readonly now: () => Date;
  private readonly random: () => number;
  private readonly reconcilers = new Map<string, SourceReconciler>();
  private readonly drifted = new Map<string, boolean>();
  /** Sources waiting because another source of this controller declares one of their objects. */
  private readonly conflicted = new Set<string>();
  /** Source keys parked on a terminal error (a resync skips them). */
  private readonly parked = new Set<string>();
  /** Suspended targets as the last reconciles saw them (the ns8ctl_suspended gauge). */
  private readonly suspended = { module: new Set<string>(), source: new Set<string>() };
  /** Source keys whose running reconcile changed what they declare or wrote desired state. */
  private readonly wakeAfter = new Set<string>();
  private redis: Redis | undefined;
  private events: EventRecorder | undefined;
  private subscriber: NotificationSubscriber | undefined;
  private elector: LeaderElector | undefined;
  private electing: Promise<void> | undefined;
  private http: ControllerHttpServer | undefined;
  private runtime: LeaderRuntime | undefined;
  private starting: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;

  constructor(
    private readonly opts: ControllerOptions,
    private readonly deps: ControllerDeps,
  ) {
    this.identity = opts.identity ?? `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
    this.clock = deps.clock ?? systemClock;
    this.now = deps.now ?? (() => new Date(this.clock.now()));
    this.random = deps.random ?? Math.random;
    this.metrics = new ControllerMetrics({ depth: () => this.runtime?.queue.depth() ?? 0, inFlight: () => this.runtime?.queue.running() ?? 0 });
  }

  /** True while this controller holds the lease and acts. */
  get isLeader(): boolean {
    return this.runtime !== undefined;
  }

  /** Port of the HTTP endpoint (0 when none). */
  get httpPort(): number {
    return this.http?.port ?? 0;
  }

  /**
   * Connects, starts the HTTP endpoint and the election; resolves once they run (leadership may
   * come later). Idempotent. @throws Ns8ctlError when Redis or the HTTP port is unavailable.
   */
  start(): Promise<void> {
    this.starting ??= this.doStart();
    return this.starting;
  }

  private async doStart(): Promise<void> {
    const log = this.deps.logger;
    const redis = await longLivedConnection(this.deps.redis, 'ns8ctl-controller', { commandTimeoutMs: this.opts.redisCommandTimeoutMs ?? DEFAULT_REDIS_COMMAND_TIMEOUT_MS });
    this.redis = redis;
    this.events = new EventRecorder(redis, { now: this.now, log: (l) => log.log('warn', l) });
    for (const spec of this.opts.sources) {
      this.reconcilers.set(
        sourceKey(spec.name),
        new SourceReconciler(spec, {
          redis,
          runner: this.deps.runner,
          events: this.events,
          log,
          now: this.now,
          random: this.random,
          onSynced: (name, at) => this.metrics.lastSuccessfulSync.set(at.getTime() / 1000, { source: name }),
          onDriftCorrected: (name, n) => this.metrics.driftCorrections.inc({ source: name }, n),
          onObjectsTouched: (ks) => ks.forEach((k) => this.runtime?.queue.add(k)),
          configurationSchemas: this.schemas(),
          claimedElsewhere: (name, ks, state, o) => this.claimedElsewhere(name, ks, state, o.declaredOnly),
          onDesiredKeysChanged: (name) => this.wakeAfter.add(sourceKey(name)),
          onApplied: (name) => this.wakeAfter.add(sourceKey(name)),
        }),
      );
    }
    this.subscriber = new NotificationSubscriber(this.deps.redis, {
      onNotification: (n) => this.onNotification(n),
      onReconnect: () => {
        log.log('info', 'Redis notifications reconnected; rechecking everything');
        void this.enqueueAll('resync');
      },
    });
    await this.subscriber.start();
    await this.backupMetrics.seed(this.redis).catch((err: unknown) => log.log('warn', 'backup figures not read for /metrics', { error: (err as Error).message }));
    if (this.opts.http) {
      this.http = new ControllerHttpServer({
        ...this.opts.http,
        health: () => ({ ok: !this.stopping, detail: this.stopping ? 'stopping' : 'running' }),
        ready: () => {
          const ok = this.redis?.status === 'ready' && (this.subscriber?.ready ?? false);
          return { ok, detail: ok ? (this.isLeader ? 'leader' : 'standby') : 'Redis connection down' };
        },
        metrics: () => this.metrics.render() + this.backupMetrics.render() + '\n',
        ...(this.opts.webhookSecret ? { webhook: { secret: this.opts.webhookSecret, trigger: (s) => this.requestFetch(s) } } : {}),
      });
      await this.http.start();
    }
    this.elector = new LeaderElector({
      redis,
      identity: this.identity,
      leaseMs: this.opts.leaseMs ?? 15_000,
      clock: this.clock,
      onStartedLeading: () => this.lead(),
      onStoppedLeading: () => this.unlead(),
      log: (level, msg, fields) => log.log(level, msg, fields),
    });
    this.electing = this.elector.run();
    log.log('info', 'controller started', {
      identity: this.identity,
      sources: this.opts.sources.map((s) => `${s.name}=${s.kind === 'git' ? `${s.git?.url}#${s.git?.branch}:${s.git?.path}` : s.paths.join(',')}`).join(' '),
      ...(this.http ? { http: `127.0.0.1:${this.http.port}` } : {}),
    });
  }

  /**
   * Stops: leadership ends (the running reconcile finishes its step), the lease is released,
   * watchers, subscriber and HTTP close. Idempotent; never rejects.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.starting?.catch(() => undefined);
      await this.elector?.stop();
      await this.electing;
      await this.http?.stop();
      await this.subscriber?.stop();
      this.redis?.disconnect();
      this.deps.logger.log('info', 'controller stopped', { identity: this.identity });
    })();
    return this.stopping;
  }

  private schemaLookup: ConfigurationSchemaLookup | undefined;

  private schemas(): ConfigurationSchemaLookup {
    this.schemaLookup ??= this.deps.configurationSchemas ?? defaultSchemaLookup(this.deps.runner);
    return this.schemaLookup;
  }

  /** Queues a key now (tests, benchmarks). No effect on a standby. */
  trigger(key: string): void {
    this.runtime?.queue.add(key);
  }

  /** Resolves when the leader's queue has nothing queued or running. */
  async whenIdle(): Promise<void> {
    await this.runtime?.queue.whenIdle();
  }

  /**
   * Which of `objectKeys` another source of this controller claims (key -> its name): the other
   * source declared them at its last load or, before its first load, holds them in its apply set
   * (`declaredOnly`: declared only). Records whether `name` waits on a conflict.
   */
  private claimedElsewhere(name: string, objectKeys: readonly string[], state: ClusterState, declaredOnly: boolean): Map<string, string> {
    const out = new Map<string, string>();
    for (const r of this.reconcilers.values()) {
      const other = r.spec.name;
      if (other === name || (declaredOnly && !r.loaded)) continue;
      const held = r.loaded ? r.desiredKeys : (state.inventory.get(other) ?? new Set<string>());
      for (const k of objectKeys) if (!out.has(k) && held.has(k)) out.set(k, other);
    }
    if (!declaredOnly) {
      if (out.size > 0) this.conflicted.add(name);
      else this.conflicted.delete(name);
    }
    return out;
  }

  /**
   * After source `name` changed what it declares or wrote desired state, sources that wait on it
   * run again: one in conflict with it, or one parked because its manifests did not validate
   * (e.g. its Modules need a Node that `name` declares).
   */
  private wakeWaitingSources(name: string): void {
    const rt = this.runtime;
    if (!rt) return;
    const self = sourceKey(name);
    for (const key of new Set([...this.parked, ...[...this.conflicted].map(sourceKey)])) if (key !== self) rt.queue.add(key, 'change');
  }

  private requestFetch(source: string): boolean {
    const r = this.reconcilers.get(sourceKey(source));
    if (!r) return false;
    r.requestFetch();
    this.runtime?.queue.add(sourceKey(source));
    // Standbys forward it; the leader hears the event too (a duplicate coalesces).
    void this.events?.record({ name: 'source-fetch-requested', type: 'Normal', object: sourceKey(source), message: `webhook asked source ${source} to fetch now`, data: { source } });
    return true;
  }

  private async lead(): Promise<void> {
    const log = this.deps.logger;
    const queue = new WorkQueue({
      reconcile: (key, signal) => this.reconcile(key, signal),
      concurrency: this.opts.concurrency ?? 4,
      clock: this.clock,
      random: this.random,
      isTerminal: terminal,
      ...(this.opts.backoff ? { backoff: this.opts.backoff } : {}),
      onStart: (key) => this.deps.onReconcileStart?.(key),
      onDone: (r) => this.observe(r),
    });
    const runtime: LeaderRuntime = { queue, watches: [], resync: undefined };
    this.runtime = runtime;
    this.metrics.leader.set(1);
    this.resetSuspended();
    for (const spec of this.opts.sources) {
      if (spec.kind !== 'directory') continue;
      const w = new DirectoryWatch({
        paths: spec.paths,
        clock: this.clock,
        ...(this.opts.debounceMs !== undefined ? { debounceMs: this.opts.debounceMs } : {}),
        onChange: () => queue.add(sourceKey(spec.name)),
        onError: (err) => log.log('warn', 'file watch error', { source: spec.name, error: err.message }),
      });
      runtime.watches.push(w);
      await w.start();
    }
    await queue.start();
    if (this.opts.taskRelay !== false && this.redis) {
      runtime.relay = startTaskRelay(this.redis, { log: (line) => log.log('info', line, { component: 'task-relay' }) });
    }
    if (this.opts.auditLog && this.redis) {
      runtime.audit = await startAuditLog(this.redis, { file: this.opts.auditLog, log: (line) => log.log('warn', line, { component: 'audit-log' }) });
    }
    if (this.opts.notify && this.redis) {
      runtime.notifier = await startNotifier(this.redis, { ...this.opts.notify, log: (line) => log.log('warn', line, { component: 'notifier' }) });
    }
    await this.enqueueAll('change');
    await this.enqueueOrphans();
    this.scheduleResync(runtime);
  }

  private async unlead(): Promise<void> {
    const rt = this.runtime;
    if (!rt) return;
    if (rt.resync !== undefined) this.clock.clearTimer(rt.resync);
    rt.resync = undefined;
    await Promise.all([...rt.watches.map((w) => w.stop()), rt.relay?.stop(), rt.notifier?.stop(), rt.audit?.stop()]);
    await rt.queue.stop();
    this.runtime = undefined;
    this.metrics.leader.set(0);
    this.resetSuspended();
  }

  private scheduleResync(rt: LeaderRuntime): void {
    const every = this.opts.resyncMs ?? 600_000;
    if (every <= 0) return;
    rt.resync = this.clock.setTimer(() => {
      if (this.runtime !== rt) return;
      void this.enqueueAll('resync');
      this.scheduleResync(rt);
    }, Math.round(every * (0.9 + 0.2 * this.random())));
  }

  /** Queues every source and every desired Module. */
  private async enqueueAll(kind: 'change' | 'resync'): Promise<void> {
    const rt = this.runtime;
    if (!rt || !this.redis) return;
    for (const key of this.reconcilers.keys()) rt.queue.add(key, kind);
    try {
      const ids = await this.redis.smembers(keys.desiredIndex('Module'));
      for (const id of ids.sort()) rt.queue.add(moduleKey(id), kind);
    } catch (err) {
      this.deps.logger.log('warn', 'cannot list desired modules for a resync', { error: (err as Error).message });
    }
  }

  /** Summaries of modules deleted while no controller ran: found once per leadership (SCAN). */
  private async enqueueOrphans(): Promise<void> {
    const rt = this.runtime;
    if (!rt || !this.redis) return;
    const prefix = keys.objectConditions('Module', '');
    try {
      for (const id of await scanNames(this.redis, prefix, { nested: true, count: 500 })) rt.queue.add(moduleKey(id), 'resync');
    } catch (err) {
      this.deps.logger.log('warn', 'cannot look for stale module summaries', { error: (err as Error).message });
    }
  }

  private async reconcile(key: string, signal: AbortSignal): Promise<ReconcileResult | void> {
    const src = this.reconcilers.get(key);
    if (src) {
      try {
        return await src.reconcile(signal);
      } finally {
        this.noteSuspended('source', src.spec.name, src.suspended);
      }
    }
    if (key.startsWith('Module/')) {
      const id = key.slice('Module/'.length);
      let requeueAfterMs: number | undefined;
      const summary = await reconcileModuleSummary(id, {
        redis: this.redis as Redis,
        events: this.events as EventRecorder,
        now: this.now,
        requeueAfter: (ms) => (requeueAfterMs = ms),
        onDrift: (mid, d) => {
          if (d) this.drifted.set(mid, true);
          else this.drifted.delete(mid);
          this.metrics.driftedObjects.set(this.drifted.size);
        },
        ...(this.opts.configuration === false
          ? {}
          : {
              configuration: {
                schemas: this.schemas(),
                selfHeal: (applySet: string) => this.reconcilers.get(sourceKey(applySet))?.spec.selfHeal ?? false,
                driftCheckEveryMs: this.opts.configuration?.driftCheckEveryMs ?? this.opts.resyncMs ?? 600_000,
                signal,
                ...(this.opts.configuration?.taskTimeoutMs !== undefined ? { taskTimeoutMs: this.opts.configuration.taskTimeoutMs } : {}),
                ...(this.opts.configuration?.taskWaitMs !== undefined ? { taskWaitMs: this.opts.configuration.taskWaitMs } : {}),
              },
            }),
      });
      this.noteSuspended('module', id, summary?.suspended ?? false);
      return requeueAfterMs !== undefined ? { requeueAfterMs } : {};
    }
    this.runtime?.queue.forget(key);
  }

  private noteSuspended(kind: 'module' | 'source', name: string, suspended: boolean): void {
    const set = this.suspended[kind];
    if (suspended === set.has(name)) return;
    if (suspended) set.add(name);
    else set.delete(name);
    this.metrics.suspended.set(set.size, { kind });
  }

  private resetSuspended(): void {
    for (const kind of ['module', 'source'] as const) {
      this.suspended[kind].clear();
      this.metrics.suspended.set(0, { kind });
    }
  }

  private observe(r: ReconcileReport): void {
    if (this.reconcilers.has(r.key)) {
      if (r.outcome === 'terminal') this.parked.add(r.key);
      else if (r.outcome !== 'aborted') this.parked.delete(r.key);
      // Only now (its apply is done) may a source waiting on it run again.
      if (this.wakeAfter.delete(r.key)) this.wakeWaitingSources(r.key.slice('source/'.length));
    }
    const kind = r.key.startsWith('source/') ? 'source' : r.key.startsWith('Module/') ? 'module' : 'other';
    this.metrics.reconcileDuration.observe(r.durationMs / 1000, { kind });
    this.metrics.reconciles.inc({ kind, result: r.outcome });
    if (r.outcome === 'error' || r.outcome === 'terminal') this.metrics.errors.inc({ kind });
    const fields: Record<string, unknown> = { key: r.key, result: r.outcome, duration_ms: Math.round(r.durationMs) };
    if (r.error !== undefined) fields.error = toNs8ctlError(r.error).message.split('\n')[0];
    if (r.retryInMs !== undefined) fields.retry_in_ms = r.retryInMs;
    if (r.failures > 0) fields.failures = r.failures;
    this.deps.logger.log(r.outcome === 'ok' || r.outcome === 'aborted' ? 'info' : 'warn', 'reconciled', fields);
    this.deps.onReconcileDone?.(r);
  }

  private onNotification(n: Notification): void {
    this.backupMetrics.observe(n.name, n.payload);
    if (n.name === 'controller-leader-released') {
      if (!this.isLeader) this.elector?.wake();
      return;
    }
    const rt = this.runtime;
    if (!rt) return;
    const payload = (n.payload ?? {}) as Record<string, unknown>;
    const object = typeof payload.object === 'string' ? payload.object : '';
    switch (n.name) {
      case 'desired-state-changed': {
        const { modules } = changedModules(n.payload);
        for (const id of modules) rt.queue.add(moduleKey(id));
        // Someone wrote desired state: sources recheck (drift), without waking parked ones.
        for (const key of this.reconcilers.keys()) rt.queue.add(key, 'resync');
        break;
      }
      case 'module-status-changed':
      case 'module-status-written':
        if (typeof payload.module === 'string') rt.queue.add(moduleKey(payload.module));
        break;
      case 'module-suspended':
      case 'module-resumed':
        if (object.startsWith('Module/')) rt.queue.add(object);
        for (const key of this.reconcilers.keys()) rt.queue.add(key);
        break;
      case 'source-suspended':
      case 'source-resumed':
        if (this.reconcilers.has(object)) rt.queue.add(object);
        break;
      case 'source-fetch-requested': {
        const s = (payload.data as { source?: unknown } | undefined)?.source;
        const r = typeof s === 'string' ? this.reconcilers.get(sourceKey(s)) : undefined;
        if (r) {
          r.requestFetch();
          rt.queue.add(r.key);
        }
        break;
      }
      default:
        break;
    }
  }
}
