/**
 * Leader election on a Redis lease, so that of several controllers exactly one acts:
 * - acquire: `SET ns8ctl/controller/leader <identity> NX PX <lease>`;
 * - renew every `renewEveryMs` with a Lua compare-and-extend (PEXPIRE only if the value is still
 *   ours), so a controller can never extend a lease someone else took;
 * - a leader that could not renew within `renewDeadlineMs` of its last renewal (Redis down, lease
 *   lost) stops acting at once, before the lease can expire and another take over. Each renewal
 *   races the time left until that deadline: a Redis that stops answering (a hung server, a
 *   network partition that drops packets) cannot keep a leader acting past its lease;
 * - release on stop with a Lua compare-and-delete, and publish `controller-leader-released` so
 *   standbys take over at once instead of waiting for the expiry.
 * Standbys retry every `retryEveryMs` (or when `wake()` is called on a release notification).
 */
import type { Redis } from 'ioredis';
import { channels, keys } from '../state/keys.js';
import { sleep, systemClock, type Clock } from '../runtime/clock.js';

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

  /**
   * `p`, or `undefined` when it has not settled within `ms` (on the injected clock). A late
   * rejection is swallowed; a rejection in time is thrown.
   */
  private async within<T>(p: Promise<T>, ms: number): Promise<{ value: T } | undefined> {
    p.catch(() => undefined);
    let handle: unknown;
    const timeout = new Promise<undefined>((resolve) => {
      handle = this.clock.setTimer(() => resolve(undefined), Math.max(0, ms));
    });
    try {
      return await Promise.race([p.then((value) => ({ value })), timeout]);
    } finally {
      this.clock.clearTimer(handle);
    }
  }

  private async loop(): Promise<void> {
    const renewEvery = this.opts.renewEveryMs ?? Math.floor(this.leaseMs / 3);
    const deadline = this.opts.renewDeadlineMs ?? Math.floor((this.leaseMs * 2) / 3);
    const retryEvery = this.opts.retryEveryMs ?? Math.floor(this.leaseMs / 3);
    const stop = this.stopCtl.signal;
    while (!stop.aborted) {
      let acquired = false;
      // The lease counts from when the request was sent (it may have been set long before a
      // slow answer arrived): an answer later than the deadline is not trusted.
      const asked = this.clock.now();
      try {
        acquired = (await this.within(this.tryAcquire(), deadline))?.value ?? false;
      } catch (err) {
        this.opts.log?.('warn', 'leader election: cannot reach Redis', { error: (err as Error).message });
      }
      if (!acquired) {
        this.wakeCtl = new AbortController();
        await sleep(this.clock, retryEvery, AbortSignal.any([stop, this.wakeCtl.signal]));
        continue;
      }
      let lastRenew = asked;
      const leading = new AbortController();
      this.leading = leading;
      this.opts.log?.('info', 'became leader', { identity: this.opts.identity });
      void this.opts.redis.publish(channels.controllerEvent('controller-leader-changed'), JSON.stringify({ name: 'controller-leader-changed', holder: this.opts.identity, time: new Date(this.clock.now()).toISOString() })).catch(() => 0);
      try {
        await this.opts.onStartedLeading(leading.signal);
      } catch (err) {
        this.opts.log?.('warn', 'starting the leader work failed; giving up leadership', { error: (err as Error).message });
        await this.endLeadership(leading, true);
        await sleep(this.clock, retryEvery, stop);
        continue;
      }
      while (!stop.aborted) {
        await sleep(this.clock, Math.min(renewEvery, Math.max(0, lastRenew + deadline - this.clock.now())), stop);
        if (stop.aborted) break;
        const sent = this.clock.now();
        const left = lastRenew + deadline - sent;
        if (left <= 0) {
          this.opts.log?.('warn', 'could not renew the leader lease in time; stopping work');
          break;
        }
        try {
          const answer = await this.within(this.opts.redis.eval(RENEW, 1, keys.controllerLeader(), this.opts.identity, String(this.leaseMs)), left);
          if (!answer) {
            this.opts.log?.('warn', 'Redis did not answer the leader lease renewal in time; stopping work before the lease can lapse', { waited_ms: this.clock.now() - sent });
            break;
          }
          if (Number(answer.value) !== 1) {
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
          // Bounded: a Redis that does not answer must not hold up a stop (the lease lapses by itself).
          const released = await this.within(this.opts.redis.eval(RELEASE, 1, keys.controllerLeader(), this.opts.identity), this.leaseMs);
          if (Number(released?.value) === 1) await this.within(this.opts.redis.publish(channels.controllerEvent('controller-leader-released'), JSON.stringify({ name: 'controller-leader-released', holder: this.opts.identity })), this.leaseMs);
        } catch {
          // The lease expires by itself.
        }
      }
    }
  }
}
