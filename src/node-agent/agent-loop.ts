/**
 * The node agent's loop, informer style: level-triggered reconciles of the whole node, woken by a
 * periodic resync, by `ns8ctl/event/desired-state-changed` on Redis, or by `trigger()`; repeated
 * wake-ups coalesce. A failing instance is retried with capped exponential backoff (with jitter)
 * while the others go on; one whose failure only a spec change can fix waits for a new generation,
 * rechecked now and then all the same (a repository may publish the missing version, the core
 * may be upgraded past an update's min-core: neither changes the generation). An installed
 * instance whose wanted image cannot be used (unresolvable, update refused, unreachable) is not
 * skipped meanwhile: it converges on its installed image every pass, and its spec is resolved
 * again on the same schedule (recheck or backoff).
 * `stop()` (or the AbortSignal) lets the current reconcile finish its step and ends the loop.
 */
import { backoffDelay } from '../runtime/backoff.js';
import type { Redis } from 'ioredis';
import { toNs8ctlError } from '../errors.js';
import { channels } from '../state/keys.js';
import type { NodeAgentDeps, NodeAgentOptions } from './deps.js';
import { reconcileNodeOnce, type NodeReconcileResult, type Setback } from './reconcile.js';

export interface RunNodeAgentOptions extends NodeAgentOptions {
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
  subscriber?: Redis;
  /**
   * While desired state looks wiped or replaced (DesiredStateSuspect), the refusal is logged at
   * most this often (ms; again at once when the reason changes). Default 60 s.
   */
  suspectLogEveryMs?: number;
  /** Called after every reconcile (for logs, metrics, tests). */
  onReconcile?: (result: NodeReconcileResult) => void;
}

/** A running node agent. */
export interface NodeAgentHandle {
  /** Asks for a reconcile as soon as the current one ends (coalesced). */
  trigger(): void;
  /** Stops the loop after the current step; resolves when it has stopped. Idempotent. */
  stop(): Promise<void>;
  /** Resolves when the loop has ended. */
  readonly done: Promise<void>;
}

interface Backoff {
  attempts: number;
  until: number;
  /** Generation that failed terminally: skipped until the spec changes or `until` (the recheck). */
  terminalGeneration?: number;
}

/**
 * An installed instance whose wanted image cannot be used (see reconcile's Setback): it is not
 * skipped (drift repair goes on every pass on the installed image) but its spec is resolved again
 * only on a new generation or once `until` passed (terminal: the recheck; else the backoff).
 */
interface Hold {
  setback: Setback;
  generation: number | undefined;
  attempts: number;
  until: number;
}

/** Starts the loop (see module doc) and returns its handle at once. */
export function runNodeAgent(opts: RunNodeAgentOptions, deps: NodeAgentDeps): NodeAgentHandle {
  const resyncMs = opts.resyncMs ?? 60_000;
  const baseMs = opts.backoffBaseMs ?? 2_000;
  const maxMs = opts.backoffMaxMs ?? 300_000;
  // The controller's backoff (runtime/backoff.ts): base * 2^(n-1), capped, +-20 % jitter.
  const retry = { baseMs, maxMs };
  const terminalRecheckMs = opts.terminalRecheckMs ?? 600_000;
  const suspectLogEveryMs = opts.suspectLogEveryMs ?? 60_000;
  let lastSuspectLog: { reason: string; at: number } | undefined;
  const logSuspect = (reason: string): boolean => {
    const at = deps.now().getTime();
    if (lastSuspectLog && lastSuspectLog.reason === reason && at - lastSuspectLog.at < suspectLogEveryMs) return false;
    lastSuspectLog = { reason, at };
    return true;
  };
  const backoff = new Map<string, Backoff>();
  const holds = new Map<string, Hold>();
  const control = new AbortController();
  let pending = true;
  let wake: (() => void) | undefined;
  const trigger = (): void => {
    pending = true;
    wake?.();
  };
  const onAbort = (): void => {
    control.abort();
    wake?.();
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  /** Dependency id -> instances of this node waiting for it to be Ready. */
  const waitingOn = new Map<string, Set<string>>();
  const onMessage = (channel: string, message: string): void => {
    if (channel === channels.desiredChanged) trigger();
    if (channel !== channels.moduleStatusChanged) return;
    let module: unknown;
    try {
      module = (JSON.parse(message) as { module?: unknown }).module;
    } catch {
      return;
    }
    const waiters = typeof module === 'string' ? waitingOn.get(module) : undefined;
    if (!waiters) return;
    // A dependency changed: its waiters are tried at once, not at their next retry.
    for (const id of waiters) backoff.delete(id);
    trigger();
  };

  const loop = async (): Promise<void> => {
    if (opts.subscriber) {
      opts.subscriber.on('message', onMessage);
      await opts.subscriber.subscribe(channels.desiredChanged, channels.moduleStatusChanged);
    }
    let nodeFailures = 0;
    while (!control.signal.aborted) {
      pending = false;
      let nextWait = resyncMs;
      try {
        const now = deps.now().getTime();
        // Instances whose held setback this pass reused (not resolved again).
        const heldNow = new Set<string>();
        const result = await reconcileNodeOnce(opts, deps, {
          signal: control.signal,
          logSuspect,
          skip: (id, generation) => {
            const b = backoff.get(id);
            if (!b) return false;
            if (b.terminalGeneration !== undefined && generation !== b.terminalGeneration) return false;
            return b.until > now;
          },
          held: (id, generation) => {
            const h = holds.get(id);
            if (!h || h.generation !== generation || h.until <= now) return undefined;
            heldNow.add(id);
            return h.setback;
          },
        });
        nodeFailures = 0;
        if (!result.suspect) lastSuspectLog = undefined;
        const after = deps.now().getTime();
        for (const r of result.instances) {
          if (r.outcome === 'skipped') continue;
          // What it waits for now (skipped instances keep what they waited for).
          for (const [dep, waiters] of waitingOn) if (waiters.delete(r.id) && waiters.size === 0) waitingOn.delete(dep);
          if (r.waitingFor) {
            // Waiting is not failing: no growing backoff; woken when a dependency's status changes
            // (or, without a subscriber, tried again within 30 s).
            for (const dep of r.waitingFor) waitingOn.set(dep, (waitingOn.get(dep) ?? new Set()).add(r.id));
            backoff.set(r.id, { attempts: 0, until: after + Math.min(resyncMs, 30_000) });
            holds.delete(r.id);
            continue;
          }
          if (r.setback) {
            // Resolved again this pass and still set back: hold it (again) until the next recheck.
            if (!heldNow.has(r.id)) {
              const h = holds.get(r.id);
              const generation = r.status?.observedGeneration;
              const attempts = h && h.generation === generation ? h.attempts + 1 : 1;
              holds.set(r.id, { setback: r.setback, generation, attempts, until: after + (r.setback.terminal ? terminalRecheckMs : backoffDelay(attempts, retry)) });
            }
            // The installed image converged: nothing to back off from. A step that failed meanwhile is.
            if (r.error?.code === r.setback.code) {
              backoff.delete(r.id);
              continue;
            }
          } else holds.delete(r.id);
          if (r.outcome === 'failed' || r.outcome === 'blocked') {
            const attempts = (backoff.get(r.id)?.attempts ?? 0) + 1;
            const b: Backoff = { attempts, until: after + backoffDelay(attempts, retry) };
            if (!r.retry && r.status) {
              b.terminalGeneration = r.status.observedGeneration;
              b.until = after + terminalRecheckMs;
            }
            backoff.set(r.id, b);
          } else backoff.delete(r.id);
        }
        for (const id of [...backoff.keys()]) if (!result.instances.some((r) => r.id === id)) backoff.delete(id);
        for (const id of [...holds.keys()]) if (!result.instances.some((r) => r.id === id)) holds.delete(id);
        for (const [dep, waiters] of [...waitingOn]) {
          for (const id of waiters) if (!result.instances.some((r) => r.id === id)) waiters.delete(id);
          if (waiters.size === 0) waitingOn.delete(dep);
        }
        for (const b of [...backoff.values(), ...holds.values()]) nextWait = Math.min(nextWait, Math.max(0, b.until - after));
        opts.onReconcile?.(result);
      } catch (err) {
        // Desired state or Redis could not be read at all: the whole node waits and retries.
        nodeFailures++;
        nextWait = backoffDelay(nodeFailures, retry);
        deps.log(`node-agent: node ${opts.node}: reconcile failed, retrying in ${Math.round(nextWait / 1000)} s: ${toNs8ctlError(err).message}`);
      }
      if (pending || control.signal.aborted) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, nextWait);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
  };

  const done = loop().finally(async () => {
    opts.signal?.removeEventListener('abort', onAbort);
    if (opts.subscriber) {
      opts.subscriber.off('message', onMessage);
      await opts.subscriber.unsubscribe(channels.desiredChanged, channels.moduleStatusChanged).catch(() => undefined);
    }
  });
  return {
    trigger,
    async stop() {
      control.abort();
      wake?.();
      await done;
    },
    done,
  };
}
