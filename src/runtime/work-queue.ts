/**
 * A keyed work queue written like client-go's workqueue + controller-runtime's reconcile loop:
 * - one reconcile per key at a time; a trigger for a key that is queued is dropped (coalesced),
 *   one for a key that is running makes it run once more afterwards;
 * - at most `concurrency` reconciles at once (no unbounded fan-out);
 * - a transient error requeues the key with capped exponential backoff and jitter; a success
 *   resets its failure count;
 * - a terminal error (invalid manifests, a refused prune, ...) parks the key: periodic resyncs
 *   leave it alone and only a `change` trigger (the spec or the source changed) runs it again;
 * - `start()` and `stop()` are idempotent and awaitable; `stop()` aborts the signal the running
 *   reconciles got, waits for them to return, and cancels every timer.
 * Time comes from an injected Clock, so every rule above is unit-tested without waiting.
 * The controller queues one key per source and per Module; the node agent queues its whole-node
 * pass as a single key (so its passes never overlap and its wake-ups coalesce).
 */
import { ManifestError, RefusedError } from '../errors.js';
import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js';
import { systemClock, type Clock, type TimerHandle } from './clock.js';

/**
 * Why a key is queued. `change`: something it depends on changed (file, Redis notification, git
 * commit, webhook): it also wakes a key parked on a terminal error. `resync`: the periodic
 * level-triggered recheck: it never wakes a parked key and never cuts a backoff short.
 */
export type TriggerKind = 'change' | 'resync';

/** What a reconcile may ask for when it succeeds. */
export interface ReconcileResult {
  /** Run this key again after this many ms (periodic recheck, e.g. a git poll interval). */
  requeueAfterMs?: number;
}

/** The function the queue runs for one key. It must honour `signal` between steps. */
export type Reconciler = (key: string, signal: AbortSignal) => Promise<ReconcileResult | void>;

/** How one reconcile ended. */
export type Outcome = 'ok' | 'error' | 'terminal' | 'aborted';

/** Reported after every reconcile (logs and metrics hang off this). */
export interface ReconcileReport {
  key: string;
  outcome: Outcome;
  durationMs: number;
  /** Consecutive failures of this key so far (0 after a success). */
  failures: number;
  error?: unknown;
  /** When the key runs next because of this outcome (backoff or requeueAfter), in ms. */
  retryInMs?: number;
}

export interface WorkQueueOptions {
  reconcile: Reconciler;
  /** Reconciles running at once (default 2). */
  concurrency?: number;
  clock?: Clock;
  backoff?: BackoffOptions;
  /** Random source for the jitter (tests pass a fixed one). */
  random?: () => number;
  /** Errors that only a change can fix. Default: `isTerminalError`. */
  isTerminal?: (err: unknown) => boolean;
  /** Called when a reconcile starts. */
  onStart?: (key: string) => void;
  /** Called after every reconcile. Exceptions thrown by it are ignored. */
  onDone?: (report: ReconcileReport) => void;
}

/**
 * Default terminal-error rule: invalid manifests (ManifestError), refusals by a safety rule
 * (RefusedError), or any error carrying `terminal: true`.
 */
export function isTerminalError(err: unknown): boolean {
  if (err instanceof ManifestError || err instanceof RefusedError) return true;
  return typeof err === 'object' && err !== null && (err as { terminal?: unknown }).terminal === true;
}

interface KeyState {
  queued: boolean;
  running: boolean;
  /** Strongest trigger that arrived while running (run again afterwards). */
  dirty: TriggerKind | undefined;
  failures: number;
  terminal: boolean;
  timer: TimerHandle | undefined;
  timerDue: number;
  timerWhy: 'backoff' | 'requeue' | undefined;
}

/** See the module documentation. */
export class WorkQueue {
  private readonly states = new Map<string, KeyState>();
  private readonly ready: string[] = [];
  private readonly inFlight = new Map<string, Promise<void>>();
  private readonly controller = new AbortController();
  private readonly clock: Clock;
  private readonly concurrency: number;
  private readonly backoff: BackoffOptions;
  private readonly random: () => number;
  private readonly isTerminal: (err: unknown) => boolean;
  private started = false;
  private stopping: Promise<void> | undefined;
  private idleWaiters: (() => void)[] = [];

  constructor(private readonly opts: WorkQueueOptions) {
    this.clock = opts.clock ?? systemClock;
    this.concurrency = Math.max(1, Math.floor(opts.concurrency ?? 2));
    this.backoff = opts.backoff ?? DEFAULT_BACKOFF;
    this.random = opts.random ?? Math.random;
    this.isTerminal = opts.isTerminal ?? isTerminalError;
  }

  /** Aborted when `stop()` is called. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /**
   * Starts dispatching (keys added before start wait for it). Idempotent. When `signal` is given,
   * its abort stops the queue (as `stop()`). Resolves at once: the queue runs in the background.
   */
  async start(signal?: AbortSignal): Promise<void> {
    if (this.stopping) return;
    if (signal) {
      if (signal.aborted) {
        await this.stop();
        return;
      }
      signal.addEventListener('abort', () => void this.stop(), { once: true });
    }
    this.started = true;
    this.pump();
  }

  /**
   * Stops: no new reconcile starts, timers are cancelled, running reconciles see their signal
   * aborted and are awaited. Idempotent: every call returns the same promise. Never rejects.
   */
  stop(): Promise<void> {
    if (!this.stopping) {
      this.controller.abort();
      for (const s of this.states.values()) this.clearTimer(s);
      this.ready.length = 0;
      for (const s of this.states.values()) s.queued = false;
      this.stopping = Promise.allSettled([...this.inFlight.values()]).then(() => this.notifyIdle());
    }
    return this.stopping;
  }

  /** True once stop() was called. */
  get stopped(): boolean {
    return this.stopping !== undefined;
  }

  /**
   * Asks for `key` to be reconciled (see TriggerKind). Coalesces with a queued run, marks a running
   * key to run once more, cuts a requeue timer short; a `change` also cuts a backoff short and
   * wakes a key parked on a terminal error. Ignored after stop().
   */
  add(key: string, kind: TriggerKind = 'change'): void {
    if (this.stopping) return;
    const s = this.state(key);
    if (kind === 'change') s.terminal = false;
    else if (s.terminal) return;
    if (s.running) {
      if (s.dirty !== 'change') s.dirty = kind;
      return;
    }
    if (s.queued) return;
    if (s.timer !== undefined) {
      if (kind === 'resync' && s.timerWhy === 'backoff') return;
      this.clearTimer(s);
    }
    this.enqueue(key, s);
  }

  /** Adds every key in `keys` (one call per key; see add). */
  addAll(keys: Iterable<string>, kind: TriggerKind = 'change'): void {
    for (const k of keys) this.add(k, kind);
  }

  /** Forgets a key's failures, parking and timers (the object is gone). A running reconcile finishes. */
  forget(key: string): void {
    const s = this.states.get(key);
    if (!s) return;
    this.clearTimer(s);
    s.failures = 0;
    s.terminal = false;
    if (!s.running && !s.queued) this.states.delete(key);
  }

  /** Keys waiting to run now (not running, not in backoff): the queue depth metric. */
  depth(): number {
    return this.ready.length;
  }

  /** Reconciles running now. */
  running(): number {
    return this.inFlight.size;
  }

  /** Keys waiting on a timer (backoff or requeueAfter). */
  waiting(): number {
    let n = 0;
    for (const s of this.states.values()) if (s.timer !== undefined) n++;
    return n;
  }

  /** Consecutive failures of `key`. */
  failures(key: string): number {
    return this.states.get(key)?.failures ?? 0;
  }

  /** True when `key` is parked on a terminal error. */
  isParked(key: string): boolean {
    return this.states.get(key)?.terminal ?? false;
  }

  /** Resolves when nothing is queued or running (timers may still be pending). */
  whenIdle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private isIdle(): boolean {
    return this.inFlight.size === 0 && (this.ready.length === 0 || !this.started || this.stopping !== undefined);
  }

  private notifyIdle(): void {
    if (!this.isIdle()) return;
    const w = this.idleWaiters;
    this.idleWaiters = [];
    for (const r of w) r();
  }

  private state(key: string): KeyState {
    let s = this.states.get(key);
    if (!s) {
      s = { queued: false, running: false, dirty: undefined, failures: 0, terminal: false, timer: undefined, timerDue: 0, timerWhy: undefined };
      this.states.set(key, s);
    }
    return s;
  }

  private enqueue(key: string, s: KeyState): void {
    s.queued = true;
    this.ready.push(key);
    this.pump();
  }

  private clearTimer(s: KeyState): void {
    if (s.timer !== undefined) this.clock.clearTimer(s.timer);
    s.timer = undefined;
    s.timerWhy = undefined;
  }

  private schedule(key: string, s: KeyState, ms: number, why: 'backoff' | 'requeue'): void {
    const due = this.clock.now() + ms;
    // An earlier timer already set wins (a requeue never postpones a sooner run).
    if (s.timer !== undefined && s.timerDue <= due) return;
    this.clearTimer(s);
    s.timerDue = due;
    s.timerWhy = why;
    s.timer = this.clock.setTimer(() => {
      s.timer = undefined;
      s.timerWhy = undefined;
      if (this.stopping || s.running || s.queued) return;
      this.enqueue(key, s);
    }, ms);
  }

  private pump(): void {
    if (!this.started || this.stopping) return;
    while (this.inFlight.size < this.concurrency && this.ready.length > 0) {
      const key = this.ready.shift() as string;
      const s = this.state(key);
      s.queued = false;
      s.running = true;
      const p = this.runOne(key, s).finally(() => {
        this.inFlight.delete(key);
        s.running = false;
        if (s.dirty && !this.stopping) {
          const kind = s.dirty;
          s.dirty = undefined;
          this.add(key, kind);
        }
        s.dirty = undefined;
        this.pump();
        this.notifyIdle();
      });
      this.inFlight.set(key, p);
    }
  }

  private async runOne(key: string, s: KeyState): Promise<void> {
    const started = this.clock.now();
    const signal = this.controller.signal;
    let report: ReconcileReport;
    try {
      this.opts.onStart?.(key);
    } catch {
      // observers never break the loop
    }
    try {
      const result = (await this.opts.reconcile(key, signal)) ?? {};
      s.failures = 0;
      s.terminal = false;
      report = { key, outcome: 'ok', durationMs: this.clock.now() - started, failures: 0 };
      if (result.requeueAfterMs !== undefined && result.requeueAfterMs >= 0 && !this.stopping) {
        this.schedule(key, s, result.requeueAfterMs, 'requeue');
        report.retryInMs = result.requeueAfterMs;
      }
    } catch (error) {
      const durationMs = this.clock.now() - started;
      if (signal.aborted) {
        report = { key, outcome: 'aborted', durationMs, failures: s.failures, error };
      } else if (this.isTerminal(error)) {
        s.terminal = true;
        s.failures = 0;
        this.clearTimer(s);
        report = { key, outcome: 'terminal', durationMs, failures: 0, error };
      } else {
        s.failures++;
        const delay = backoffDelay(s.failures, this.backoff, this.random);
        this.clearTimer(s);
        this.schedule(key, s, delay, 'backoff');
        report = { key, outcome: 'error', durationMs, failures: s.failures, error, retryInMs: delay };
      }
    }
    // A change that arrived while a transient failure ran is honoured at once; a resync waits for the backoff.
    if (report.outcome === 'error' && s.dirty === 'resync') s.dirty = undefined;
    if (report.outcome === 'terminal' && s.dirty === 'resync') s.dirty = undefined;
    try {
      this.opts.onDone?.(report);
    } catch {
      // observers never break the loop
    }
  }
}
