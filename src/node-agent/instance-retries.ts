/**
 * The node agent loop's book of per-instance retries, kept between whole-node passes:
 * - a failing instance backs off (capped exponential, with jitter: runtime/backoff.ts) while the
 *   others go on; a success forgets it;
 * - one whose failure only a spec change can fix waits for a new generation, or for the recheck
 *   (a repository may publish the missing version, the core may be upgraded past an update's
 *   min-core: neither changes the generation);
 * - an installed instance whose wanted image cannot be used (reconcile's Setback) is not skipped:
 *   its setback is held (reused, not resolved again) until a new generation or until its recheck
 *   or backoff is due;
 * - one waiting for dependencies is tried again soon without a growing backoff, and at once when
 *   one of them announces a status change.
 * Time is passed in (the loop's clock), so every rule is unit-tested without waiting.
 */
import { backoffDelay, type BackoffOptions } from '../runtime/backoff.js';
import type { InstanceResult, NodeReconcileResult, ReconcileControl, Setback } from './reconcile.js';

/** The retry times of the book (ms). */
export interface RetryTimes {
  /** Backoff of a failing instance (factor 2, ±20 % jitter unless set). */
  backoff: BackoffOptions;
  /** Recheck of a terminal failure or setback without a new generation. */
  terminalRecheckMs: number;
  /** Next try of an instance waiting for its dependencies, if no status change wakes it first. */
  waitingRetryMs: number;
  /** Random source of the jitter (tests pass a fixed one). */
  random?: () => number;
}

interface Backoff {
  attempts: number;
  until: number;
  /** Generation that failed terminally: skipped until the spec changes or `until` (the recheck). */
  terminalGeneration?: number;
}

/** A held setback: reused until a new generation or `until` (terminal: the recheck; else the backoff). */
interface Hold {
  setback: Setback;
  generation: number | undefined;
  attempts: number;
  until: number;
}

/** See the module documentation. One pass at a time: `passControl`, then `record`. */
export class InstanceRetryBook {
  private readonly backoff = new Map<string, Backoff>();
  private readonly holds = new Map<string, Hold>();
  /** Dependency id -> instances of this node waiting for it to be Ready. */
  private readonly waitingOn = new Map<string, Set<string>>();
  /** Instances whose held setback the current pass reused (not resolved again). */
  private heldThisPass = new Set<string>();

  constructor(private readonly times: RetryTimes) {}

  /** The callbacks a pass starting at `now` gives reconcileNodeOnce: whom to skip, which setbacks to reuse. */
  passControl(now: number): Required<Pick<ReconcileControl, 'skip' | 'held'>> {
    const heldNow = new Set<string>();
    this.heldThisPass = heldNow;
    return {
      skip: (id, generation) => {
        const b = this.backoff.get(id);
        if (!b) return false;
        if (b.terminalGeneration !== undefined && generation !== b.terminalGeneration) return false;
        return b.until > now;
      },
      held: (id, generation) => {
        const h = this.holds.get(id);
        if (!h || h.generation !== generation || h.until <= now) return undefined;
        heldNow.add(id);
        return h.setback;
      },
    };
  }

  /** Books the outcome of the pass that ended at `now`; instances gone from the node are forgotten. */
  record(result: NodeReconcileResult, now: number): void {
    for (const r of result.instances) if (r.outcome !== 'skipped') this.recordInstance(r, now);
    const present = new Set(result.instances.map((r) => r.id));
    for (const id of [...this.backoff.keys()]) if (!present.has(id)) this.backoff.delete(id);
    for (const id of [...this.holds.keys()]) if (!present.has(id)) this.holds.delete(id);
    for (const [dep, waiters] of [...this.waitingOn]) {
      for (const id of waiters) if (!present.has(id)) waiters.delete(id);
      if (waiters.size === 0) this.waitingOn.delete(dep);
    }
  }

  /** Milliseconds from `now` until the earliest backoff, recheck or hold is due; at most `cap`, never negative. */
  nextDueIn(now: number, cap: number): number {
    let next = cap;
    for (const b of [...this.backoff.values(), ...this.holds.values()]) next = Math.min(next, Math.max(0, b.until - now));
    return next;
  }

  /**
   * `dep` announced a status change: the instances waiting for it lose their wait and are tried by
   * the next pass. True when there were any (the caller wakes the loop).
   */
  releaseWaitersOf(dep: string): boolean {
    const waiters = this.waitingOn.get(dep);
    if (!waiters) return false;
    for (const id of waiters) this.backoff.delete(id);
    return true;
  }

  private recordInstance(r: InstanceResult, now: number): void {
    // What it waits for now (skipped instances keep what they waited for).
    for (const [dep, waiters] of this.waitingOn) if (waiters.delete(r.id) && waiters.size === 0) this.waitingOn.delete(dep);
    if (r.waitingFor) {
      this.recordWaiting(r.id, r.waitingFor, now);
      return;
    }
    if (r.setback) {
      this.recordSetback(r, r.setback, now);
      // The installed image converged: nothing to back off from. A step that failed meanwhile is.
      if (r.error?.code === r.setback.code) {
        this.backoff.delete(r.id);
        return;
      }
    } else this.holds.delete(r.id);
    if (r.outcome === 'failed' || r.outcome === 'blocked') this.recordFailure(r, now);
    else this.backoff.delete(r.id);
  }

  /** Waiting is not failing: no growing backoff; woken when a dependency's status changes. */
  private recordWaiting(id: string, deps: readonly string[], now: number): void {
    for (const dep of deps) this.waitingOn.set(dep, (this.waitingOn.get(dep) ?? new Set()).add(id));
    this.backoff.set(id, { attempts: 0, until: now + this.times.waitingRetryMs });
    this.holds.delete(id);
  }

  /** Resolved again this pass and still set back: held (again) until the next recheck or backoff. */
  private recordSetback(r: InstanceResult, setback: Setback, now: number): void {
    if (this.heldThisPass.has(r.id)) return;
    const h = this.holds.get(r.id);
    const generation = r.status?.observedGeneration;
    const attempts = h && h.generation === generation ? h.attempts + 1 : 1;
    const wait = setback.terminal ? this.times.terminalRecheckMs : this.delay(attempts);
    this.holds.set(r.id, { setback, generation, attempts, until: now + wait });
  }

  /** A retryable failure backs off; a terminal one (with a status) waits for a new generation or the recheck. */
  private recordFailure(r: InstanceResult, now: number): void {
    const attempts = (this.backoff.get(r.id)?.attempts ?? 0) + 1;
    const b: Backoff = { attempts, until: now + this.delay(attempts) };
    if (!r.retry && r.status) {
      b.terminalGeneration = r.status.observedGeneration;
      b.until = now + this.times.terminalRecheckMs;
    }
    this.backoff.set(r.id, b);
  }

  private delay(attempts: number): number {
    return backoffDelay(attempts, this.times.backoff, this.times.random);
  }
}
