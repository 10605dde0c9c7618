/**
 * The node agent's loop, informer style: level-triggered reconciles of the whole node, woken by a
 * periodic resync, by `ns8ctl/event/desired-state-changed` on Redis, or by `trigger()`; repeated
 * wake-ups coalesce. It stands on the loop kit the controller uses (src/runtime/): the whole-node
 * pass is the one key of a WorkQueue (one pass at a time, a trigger during a pass runs one more,
 * the next pass is requeued after the resync or the earliest per-instance retry, a pass that
 * cannot read desired state backs off), on an injected Clock, with backoffDelay's jitter.
 * A failing instance is retried with capped exponential backoff while the others go on; one whose
 * failure only a spec change can fix waits for a new generation, rechecked now and then all the
 * same; an installed instance whose wanted image cannot be used converges on its installed image
 * every pass (see instance-retries.ts for these rules).
 * `stop()` (or the AbortSignal) lets the current reconcile finish its step and ends the loop.
 */
import { toNs8ctlError } from '../errors.js';
import type { BackoffOptions } from '../runtime/backoff.js';
import { systemClock, type Clock } from '../runtime/clock.js';
import { WorkQueue, type ReconcileReport, type ReconcileResult } from '../runtime/work-queue.js';
import { channels } from '../state/keys.js';
import type { NodeAgentDeps, NodeAgentOptions } from './deps.js';
import { InstanceRetryBook } from './instance-retries.js';
import { reconcileNodeOnce, type NodeReconcileResult, type ReconcileControl } from './reconcile.js';

/** The part of a subscribed Redis connection the loop uses (ioredis's `Redis` has it). */
export interface WakeSubscriber {
  on(event: 'message', listener: (channel: string, message: string) => void): unknown;
  off(event: 'message', listener: (channel: string, message: string) => void): unknown;
  subscribe(...channels: string[]): Promise<unknown>;
  unsubscribe(...channels: string[]): Promise<unknown>;
}

/** How the loop runs (the part of RunNodeAgentOptions that is not about reconciling). */
export interface NodeLoopOptions {
  /** NS8 node id (for log lines). */
  node: number;
  /** Full reconcile at least this often (ms), to catch drift. Default 60 s. */
  resyncMs?: number;
  /** Backoff of a failing instance: first delay and cap (ms). Default 2 s and 5 min. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /**
   * A terminal failure (image unresolvable, update refused, ...) is retried at once on a new
   * generation, and otherwise rechecked this often (ms), since repositories and the core version
   * change without the spec changing. Default 10 min.
   */
  terminalRecheckMs?: number;
  signal?: AbortSignal;
  /**
   * A dedicated connection to subscribe on (a subscribed connection can do nothing else). When
   * given, desired-state changes wake the loop at once instead of waiting for the resync.
   */
  subscriber?: WakeSubscriber;
  /**
   * While desired state looks wiped or replaced (DesiredStateSuspect), the refusal is logged at
   * most this often (ms; again at once when the reason changes). Default 60 s.
   */
  suspectLogEveryMs?: number;
  /** Called after every reconcile (for logs, metrics, tests). */
  onReconcile?: (result: NodeReconcileResult) => void;
}

export interface RunNodeAgentOptions extends NodeAgentOptions, NodeLoopOptions {}

/** A running node agent. */
export interface NodeAgentHandle {
  /** Asks for a reconcile as soon as the current one ends (coalesced). */
  trigger(): void;
  /** Stops the loop after the current step; resolves when it has stopped. Idempotent. */
  stop(): Promise<void>;
  /** Resolves when the loop has ended. */
  readonly done: Promise<void>;
}


/** What the loop drives: one pass over the whole node, a log, a clock. */
export interface NodeLoopDeps {
  /** One reconcile of the whole node under `control` (reconcileNodeOnce in production). */
  reconcile: (control: ReconcileControl) => Promise<NodeReconcileResult>;
  log: (line: string) => void;
  /** Time of the retry book and of the suspect-log limit, and the loop's timers. */
  clock: Clock;
  /** Random source of the backoff jitter; default Math.random. */
  random?: () => number;
}

/** The one WorkQueue key: the whole node is reconciled in one level-triggered pass. */
const NODE_KEY = 'node';

/**
 * Says a repeated refusal at most once per `everyMs`, and at once when its reason changes;
 * `reset()` (the refusal ended) makes the next one said at once.
 */
export class RepeatedReasonLimiter {
  private last: { reason: string; at: number } | undefined;

  constructor(
    private readonly everyMs: number,
    private readonly now: () => number,
  ) {}

  /** True when `reason` is to be logged now (and books it as logged). */
  admit(reason: string): boolean {
    const at = this.now();
    if (this.last && this.last.reason === reason && at - this.last.at < this.everyMs) return false;
    this.last = { reason, at };
    return true;
  }

  reset(): void {
    this.last = undefined;
  }
}

/**
 * Listens on `subscriber` for what wakes the loop: a desired-state change, and a status change of
 * a module some instance of this node waits for (its waiters lose their wait).
 */
class WakeSubscription {
  private readonly channels = [channels.desiredChanged, channels.moduleStatusChanged];
  private readonly onMessage = (channel: string, message: string): void => {
    if (channel === channels.desiredChanged) this.wake();
    if (channel !== channels.moduleStatusChanged) return;
    let module: unknown;
    try {
      module = (JSON.parse(message) as { module?: unknown }).module;
    } catch {
      return;
    }
    // A dependency changed: its waiters are tried at once, not at their next retry.
    if (typeof module === 'string' && this.book.releaseWaitersOf(module)) this.wake();
  };

  constructor(
    private readonly subscriber: WakeSubscriber,
    private readonly book: InstanceRetryBook,
    private readonly wake: () => void,
  ) {}

  async open(): Promise<void> {
    this.subscriber.on('message', this.onMessage);
    await this.subscriber.subscribe(...this.channels);
  }

  async close(): Promise<void> {
    this.subscriber.off('message', this.onMessage);
    await this.subscriber.unsubscribe(...this.channels).catch(() => undefined);
  }
}

/** The loop behind a NodeAgentHandle (see the module doc). */
class NodeLoop implements NodeAgentHandle {
  readonly done: Promise<void>;
  private readonly resyncMs: number;
  private readonly book: InstanceRetryBook;
  private readonly suspect: RepeatedReasonLimiter;
  private readonly queue: WorkQueue;
  private readonly wakeups: WakeSubscription | undefined;
  /** Aborted by stop() or by the caller's signal: the loop ends after the current step. */
  private readonly ended = new AbortController();
  private readonly onAbort = (): void => this.ended.abort();
  /** A trigger is waiting for the end of the current tick (see trigger). */
  private wakeQueued = false;

  constructor(
    private readonly opts: NodeLoopOptions,
    private readonly deps: NodeLoopDeps,
  ) {
    this.resyncMs = opts.resyncMs ?? 60_000;
    const backoff: BackoffOptions = { baseMs: opts.backoffBaseMs ?? 2_000, maxMs: opts.backoffMaxMs ?? 300_000 };
    const random = deps.random ?? Math.random;
    const terminalRecheckMs = opts.terminalRecheckMs ?? 600_000;
    this.book = new InstanceRetryBook({ backoff, terminalRecheckMs, waitingRetryMs: Math.min(this.resyncMs, 30_000), random });
    this.suspect = new RepeatedReasonLimiter(opts.suspectLogEveryMs ?? 60_000, () => deps.clock.now());
    this.queue = new WorkQueue({
      reconcile: (_key, signal) => this.pass(signal),
      concurrency: 1,
      clock: deps.clock,
      backoff,
      random,
      // Desired state or Redis that cannot be read is retried with backoff, never parked.
      isTerminal: () => false,
      onDone: (report) => this.logNodeFailure(report),
    });
    this.wakeups = opts.subscriber ? new WakeSubscription(opts.subscriber, this.book, () => this.trigger()) : undefined;
    this.ended.signal.addEventListener('abort', () => void this.queue.stop(), { once: true });
    if (opts.signal?.aborted) this.ended.abort();
    else opts.signal?.addEventListener('abort', this.onAbort, { once: true });
    this.queue.add(NODE_KEY);
    this.done = this.run().finally(() => this.cleanUp());
  }

  trigger(): void {
    // The queue starts a pass synchronously: a burst of wake-ups in one tick (several messages of
    // one Redis reply) is gathered first, so it makes one pass, not a pass and a rerun.
    if (this.wakeQueued) return;
    this.wakeQueued = true;
    queueMicrotask(() => {
      this.wakeQueued = false;
      this.queue.add(NODE_KEY);
    });
  }

  async stop(): Promise<void> {
    this.ended.abort();
    await this.done;
  }

  private async run(): Promise<void> {
    if (this.ended.signal.aborted) return;
    // Subscribed before the first pass: a change made after it is not missed.
    await this.wakeups?.open();
    if (this.ended.signal.aborted) return;
    await this.queue.start();
    await new Promise<void>((resolve) => this.ended.signal.addEventListener('abort', () => resolve(), { once: true }));
  }

  private async cleanUp(): Promise<void> {
    await this.queue.stop();
    this.opts.signal?.removeEventListener('abort', this.onAbort);
    await this.wakeups?.close();
  }

  /** One whole-node pass; the next runs after the resync or the earliest retry due, whichever comes first. */
  private async pass(signal: AbortSignal): Promise<ReconcileResult> {
    const result = await this.deps.reconcile({ signal, logSuspect: (reason) => this.suspect.admit(reason), ...this.book.passControl(this.deps.clock.now()) });
    if (!result.suspect) this.suspect.reset();
    const after = this.deps.clock.now();
    this.book.record(result, after);
    this.opts.onReconcile?.(result);
    return { requeueAfterMs: Math.max(0, this.book.nextDueIn(after, this.resyncMs)) };
  }

  private logNodeFailure(report: ReconcileReport): void {
    if (report.outcome !== 'error') return;
    const wait = Math.round((report.retryInMs ?? 0) / 1000);
    this.deps.log(`node-agent: node ${this.opts.node}: reconcile failed, retrying in ${wait} s: ${toNs8ctlError(report.error).message}`);
  }
}

/**
 * Starts the loop on `deps.reconcile` (see module doc) and returns its handle at once. The first
 * pass starts as soon as the subscription (if any) is in place.
 */
export function startNodeLoop(opts: NodeLoopOptions, deps: NodeLoopDeps): NodeAgentHandle {
  return new NodeLoop(opts, deps);
}

/**
 * Starts the node agent's loop on reconcileNodeOnce (see module doc) and returns its handle at
 * once. Its time is `deps.now` (as the statuses it writes), its timers the system's.
 */
export function runNodeAgent(opts: RunNodeAgentOptions, deps: NodeAgentDeps): NodeAgentHandle {
  const clock: Clock = { ...systemClock, now: () => deps.now().getTime() };
  return startNodeLoop(opts, { reconcile: (control) => reconcileNodeOnce(opts, deps, control), log: deps.log, clock });
}
