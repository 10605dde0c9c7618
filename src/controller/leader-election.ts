/**
 * Leader election on a Redis lease, so that of several controllers exactly one acts:
 * - acquire: `SET ns8ctl/controller/leader <identity> NX PX <lease>`;
 * - renew every `renewEveryMs` with a Lua compare-and-extend (PEXPIRE only if the value is still
 *   ours), so a controller can never extend a lease someone else took;
 * - a leader that could not renew within `renewDeadlineMs` of its last renewal (Redis down, lease
 *   lost) stops acting at once, before the lease can expire and another take over;
 * - release on stop with a Lua compare-and-delete, and publish `controller-leader-released` so
 *   standbys take over at once instead of waiting for the expiry.
 * Standbys retry every `retryEveryMs` (or when `wake()` is called on a release notification).
 */
import type { Redis } from 'ioredis';
import { channels, keys } from '../state/keys.js';
import { sleep, systemClock, type Clock } from './clock.js';

const RENEW = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`;

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`;

export interface LeaderElectionOptions {
  redis: Redis;
  /** Unique per process: `host:pid:random`. */
  identity: string;
  /** Lease length (default 15 s). */
  leaseMs?: number;
  /** Renewal period (default lease / 3). */
  renewEveryMs?: number;
  /** Give up leadership when not renewed for this long (default lease * 2 / 3). */
  renewDeadlineMs?: number;
  /** Standby retry period (default lease / 3). */
  retryEveryMs?: number;
  clock?: Clock;
  /**
   * Called when this process becomes leader. `signal` aborts when leadership ends. The returned
   * promise is awaited before renewals start (start the work, do not run it to completion).
   */
  onStartedLeading: (signal: AbortSignal) => Promise<void> | void;
  /** Called when leadership ends (lost or released); awaited before the lease is released. */
  onStoppedLeading: () => Promise<void> | void;
  /** Diagnostics (Redis errors while renewing). */
  log?: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;
}

/** See the module doc. `run()` loops until `stop()`; both are safe to call once each. */
export class LeaderElector {
  private readonly stopCtl = new AbortController();
  private wakeCtl = new AbortController();
  private leading: AbortController | undefined;
  private running: Promise<void> | undefined;
  private readonly leaseMs: number;
  private readonly clock: Clock;

  constructor(private readonly opts: LeaderElectionOptions) {
    this.leaseMs = opts.leaseMs ?? 15_000;
    this.clock = opts.clock ?? systemClock;
  }

  /** True while this process holds the lease (as far as it knows). */
  get isLeader(): boolean {
    return this.leading !== undefined;
  }

  /** Cuts a standby's wait short (someone released the lease). */
  wake(): void {
    this.wakeCtl.abort();
  }

  /** Starts the election loop (idempotent). The returned promise settles after stop(). */
  run(): Promise<void> {
    this.running ??= this.loop();
    return this.running;
  }

  /** Stops: ends leadership (awaiting onStoppedLeading), releases the lease, ends the loop. */
  async stop(): Promise<void> {
    this.stopCtl.abort();
    this.wakeCtl.abort();
    await this.running;
  }

  private async tryAcquire(): Promise<boolean> {
    const key = keys.controllerLeader();
    const r = await this.opts.redis.set(key, this.opts.identity, 'PX', this.leaseMs, 'NX');
    if (r === 'OK') return true;
    // Our own lease from before a quick restart with the same identity: take it back.
    return Number(await this.opts.redis.eval(RENEW, 1, key, this.opts.identity, String(this.leaseMs))) === 1;
  }

  private async loop(): Promise<void> {
    const renewEvery = this.opts.renewEveryMs ?? Math.floor(this.leaseMs / 3);
    const deadline = this.opts.renewDeadlineMs ?? Math.floor((this.leaseMs * 2) / 3);
    const retryEvery = this.opts.retryEveryMs ?? Math.floor(this.leaseMs / 3);
    const stop = this.stopCtl.signal;
    while (!stop.aborted) {
      let acquired = false;
      try {
        acquired = await this.tryAcquire();
      } catch (err) {
        this.opts.log?.('warn', 'leader election: cannot reach Redis', { error: (err as Error).message });
      }
      if (!acquired) {
        this.wakeCtl = new AbortController();
        await sleep(this.clock, retryEvery, AbortSignal.any([stop, this.wakeCtl.signal]));
        continue;
      }
      let lastRenew = this.clock.now();
      const leading = new AbortController();
      this.leading = leading;
      this.opts.log?.('info', 'became leader', { identity: this.opts.identity });
      await this.opts.redis.publish(channels.controllerEvent('controller-leader-changed'), JSON.stringify({ name: 'controller-leader-changed', holder: this.opts.identity, time: new Date(this.clock.now()).toISOString() })).catch(() => 0);
      try {
        await this.opts.onStartedLeading(leading.signal);
      } catch (err) {
        this.opts.log?.('warn', 'starting the leader work failed; giving up leadership', { error: (err as Error).message });
        await this.endLeadership(leading, true);
        await sleep(this.clock, retryEvery, stop);
        continue;
      }
      while (!stop.aborted) {
        await sleep(this.clock, renewEvery, stop);
        if (stop.aborted) break;
        const sent = this.clock.now();
        try {
          const ok = Number(await this.opts.redis.eval(RENEW, 1, keys.controllerLeader(), this.opts.identity, String(this.leaseMs))) === 1;
          if (!ok) {
            this.opts.log?.('warn', 'lost the leader lease to another controller');
            break;
          }
          lastRenew = sent;
        } catch (err) {
          if (this.clock.now() - lastRenew >= deadline) {
            this.opts.log?.('warn', 'could not renew the leader lease in time; stopping work', { error: (err as Error).message });
            break;
          }
        }
      }
      await this.endLeadership(leading, stop.aborted);
    }
  }

  private async endLeadership(leading: AbortController, release: boolean): Promise<void> {
    leading.abort();
    try {
      await this.opts.onStoppedLeading();
    } finally {
      this.leading = undefined;
      if (release) {
        try {
          const released = Number(await this.opts.redis.eval(RELEASE, 1, keys.controllerLeader(), this.opts.identity));
          if (released === 1) await this.opts.redis.publish(channels.controllerEvent('controller-leader-released'), JSON.stringify({ name: 'controller-leader-released', holder: this.opts.identity }));
        } catch {
          // The lease expires by itself.
        }
      }
    }
  }
}
