import fc from 'fast-check';
import { ManifestError, RedisError, RefusedError } from '../../src/errors.js';
import { backoffDelay } from '../../src/runtime/backoff.js';
import { ManualClock } from '../../src/runtime/clock.js';
import { isTerminalError, WorkQueue, type ReconcileReport } from '../../src/runtime/work-queue.js';

/** Lets pending promise callbacks run (the queue's bookkeeping is promise-driven). */
const flush = async (): Promise<void> => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

interface Gate {
  promise: Promise<void>;
  open: () => void;
  fail: (e: unknown) => void;
}
function gate(): Gate {
  let open!: () => void;
  let fail!: (e: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    open = res;
    fail = rej;
  });
  return { promise, open, fail };
}

/** A reconciler whose runs block until the test opens them; records every run. */
function blockingReconciler() {
  const runs: string[] = [];
  const gates: Gate[] = [];
  const signals: AbortSignal[] = [];
  let active = 0;
  let maxActive = 0;
  const activePerKey = new Map<string, number>();
  let maxPerKey = 0;
  const reconcile = async (key: string, signal: AbortSignal): Promise<void> => {
    runs.push(key);
    signals.push(signal);
    active++;
    maxActive = Math.max(maxActive, active);
    activePerKey.set(key, (activePerKey.get(key) ?? 0) + 1);
    maxPerKey = Math.max(maxPerKey, activePerKey.get(key)!);
    const g = gate();
    gates.push(g);
    try {
      await g.promise;
    } finally {
      active--;
      activePerKey.set(key, activePerKey.get(key)! - 1);
    }
  };
  return { reconcile, runs, gates, signals, stats: () => ({ maxActive, maxPerKey, active }) };
}

const noJitter = { baseMs: 1000, maxMs: 60_000, factor: 2, jitter: 0 };

describe('backoffDelay', () => {
  it('doubles from the base per consecutive failure and stops at the cap', () => {
    expect([1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(n, { baseMs: 1000, maxMs: 30_000, jitter: 0 }))).toEqual([1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  });

  it('spreads each delay by at most the jitter fraction and never exceeds the cap', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 200 }), fc.double({ min: 0, max: 0.999999, noNaN: true }), fc.double({ min: 0, max: 1, noNaN: true }), (n, r, jitter) => {
        const opts = { baseMs: 500, maxMs: 120_000, jitter };
        const d = backoffDelay(n, opts, () => r);
        const plain = backoffDelay(n, { ...opts, jitter: 0 });
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThanOrEqual(120_000);
        expect(d).toBeGreaterThanOrEqual(Math.floor(plain * (1 - jitter)) - 1);
        expect(d).toBeLessThanOrEqual(Math.ceil(plain * (1 + jitter)) + 1);
      }),
    );
  });

  it('is non-decreasing in the failure count for a fixed random draw', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 100 }), fc.double({ min: 0, max: 0.999, noNaN: true }), (n, r) => {
        const o = { baseMs: 250, maxMs: 600_000, jitter: 0.2 };
        expect(backoffDelay(n + 1, o, () => r)).toBeGreaterThanOrEqual(backoffDelay(n, o, () => r));
      }),
    );
  });
});

describe('isTerminalError', () => {
  it('treats invalid manifests, refusals and errors marked terminal as terminal, others as transient', () => {
    expect(isTerminalError(new ManifestError([]))).toBe(true);
    expect(isTerminalError(new RefusedError('prune_refused', 'no'))).toBe(true);
    expect(isTerminalError(Object.assign(new Error('x'), { terminal: true }))).toBe(true);
    expect(isTerminalError(new RedisError('redis_unreachable', 'down'))).toBe(false);
    expect(isTerminalError(new Error('boom'))).toBe(false);
    expect(isTerminalError('string')).toBe(false);
  });
});

describe('WorkQueue', () => {
  it('runs nothing before start() and everything queued once started', async () => {
    const r = blockingReconciler();
    const q = new WorkQueue({ reconcile: r.reconcile, clock: new ManualClock() });
    q.add('a');
    q.add('b');
    await flush();
    expect(r.runs).toEqual([]);
    q.start();
    await flush();
    expect(r.runs).toEqual(['a', 'b']);
    r.gates.forEach((g) => g.open());
    await q.stop();
  });

  it('coalesces repeated triggers for a queued key into one reconcile', async () => {
    const r = blockingReconciler();
    const q = new WorkQueue({ reconcile: r.reconcile, clock: new ManualClock(), concurrency: 1 });
    q.start();
    q.add('busy');
    for (let i = 0; i < 10; i++) q.add('k');
    await flush();
    r.gates[0]!.open();
    await flush();
    expect(r.runs).toEqual(['busy', 'k']);
    r.gates[1]!.open();
    await q.whenIdle();
    expect(r.runs).toEqual(['busy', 'k']);
    await q.stop();
  });

  it('runs a key exactly once more when triggered (any number of times) while it was running', async () => {
    const r = blockingReconciler();
    const q = new WorkQueue({ reconcile: r.reconcile, clock: new ManualClock() });
    q.start();
    q.add('k');
    await flush();
    q.add('k');
    q.add('k', 'resync');
    q.add('k');
    await flush();
    expect(r.runs).toEqual(['k']);
    r.gates[0]!.open();
    await flush();
    expect(r.runs).toEqual(['k', 'k']);
    r.gates[1]!.open();
    await q.whenIdle();
    expect(r.runs).toEqual(['k', 'k']);
    await q.stop();
  });

  it('never runs one key twice at the same time and never exceeds the concurrency bound', async () => {
    const r = blockingReconciler();
    const q = new WorkQueue({ reconcile: r.reconcile, clock: new ManualClock(), concurrency: 3 });
    q.start();
    const keys = Array.from({ length: 10 }, (_, i) => `k${i}`);
    let finished = 0;
    for (let round = 0; round < 30; round++) {
      q.addAll(keys);
      q.add(keys[round % 10]!);
      await flush();
      // Finish the oldest running reconcile.
      r.gates[finished]?.open();
      if (finished < r.gates.length) finished++;
      await flush();
    }
    expect(r.stats().maxActive).toBe(3);
    expect(r.stats().maxPerKey).toBe(1);
    for (const g of r.gates) g.open();
    await flush();
    for (const g of r.gates) g.open();
    await q.stop();
    expect(new Set(r.runs)).toEqual(new Set(keys));
  });

  it('retries a transient failure with doubling delays up to the cap, then resets after a success', async () => {
    const clock = new ManualClock();
    let failNext = 5;
    const runs: number[] = [];
    const reports: ReconcileReport[] = [];
    const q = new WorkQueue({
      clock,
      backoff: { baseMs: 1000, maxMs: 5000, jitter: 0 },
      reconcile: async () => {
        runs.push(clock.now());
        if (failNext-- > 0) throw new RedisError('redis_unreachable', 'down');
      },
      onDone: (rep) => reports.push(rep),
    });
    q.start();
    q.add('k');
    await flush();
    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      expect(clock.pending()).toBe(1);
      const d = clock.pendingDelays()[0]!;
      delays.push(d);
      clock.advance(d - 1);
      await flush();
      expect(runs).toHaveLength(i + 1); // not a millisecond early
      clock.advance(1);
      await flush();
    }
    expect(delays).toEqual([1000, 2000, 4000, 5000, 5000]);
    expect(runs).toHaveLength(6);
    expect(reports.map((r) => r.outcome)).toEqual(['error', 'error', 'error', 'error', 'error', 'ok']);
    expect(reports.map((r) => r.failures)).toEqual([1, 2, 3, 4, 5, 0]);
    expect(reports[0]!.retryInMs).toBe(1000);
    expect(q.failures('k')).toBe(0);
    expect(clock.pending()).toBe(0);
    // The next failure starts from the base again.
    failNext = 1;
    q.add('k');
    await flush();
    expect(clock.pendingDelays()).toEqual([1000]);
    await q.stop();
  });

  it('applies jitter to retry delays', async () => {
    const clock = new ManualClock();
    const q = new WorkQueue({
      clock,
      random: () => 0,
      backoff: { baseMs: 1000, maxMs: 60_000, jitter: 0.5 },
      reconcile: async () => {
        throw new Error('transient');
      },
    });
    q.start();
    q.add('k');
    await flush();
    expect(clock.pendingDelays()).toEqual([500]);
    await q.stop();
  });

  it('lets a change cut a backoff short but not a resync', async () => {
    const clock = new ManualClock();
    let n = 0;
    const q = new WorkQueue({
      clock,
      backoff: noJitter,
      reconcile: async () => {
        n++;
        throw new Error('transient');
      },
    });
    q.start();
    q.add('k');
    await flush();
    expect(n).toBe(1);
    q.add('k', 'resync');
    await flush();
    expect(n).toBe(1);
    expect(clock.pendingDelays()).toEqual([1000]);
    q.add('k', 'change');
    await flush();
    expect(n).toBe(2);
    expect(q.failures('k')).toBe(2);
    expect(clock.pendingDelays()).toEqual([2000]);
    await q.stop();
  });

  it('parks a key after a terminal error until a change, ignoring resyncs meanwhile', async () => {
    const clock = new ManualClock();
    let valid = false;
    const reports: ReconcileReport[] = [];
    const q = new WorkQueue({
      clock,
      backoff: noJitter,
      reconcile: async () => {
        if (!valid) throw new ManifestError([{ file: 'a.yaml', line: 1, col: 1, pointer: '/spec', message: 'bad' }]);
      },
      onDone: (r) => reports.push(r),
    });
    q.start();
    q.add('src');
    await flush();
    expect(reports.map((r) => r.outcome)).toEqual(['terminal']);
    expect(q.isParked('src')).toBe(true);
    expect(clock.pending()).toBe(0);
    for (let i = 0; i < 5; i++) q.add('src', 'resync');
    clock.advance(3_600_000);
    await flush();
    expect(reports).toHaveLength(1);
    valid = true;
    q.add('src', 'change');
    await flush();
    expect(reports.map((r) => r.outcome)).toEqual(['terminal', 'ok']);
    expect(q.isParked('src')).toBe(false);
    await q.stop();
  });

  it('runs a key again after requeueAfter, and an earlier trigger replaces the timer', async () => {
    const clock = new ManualClock();
    const runs: number[] = [];
    const start = clock.now();
    const q = new WorkQueue({
      clock,
      reconcile: async () => {
        runs.push(clock.now() - start);
        return { requeueAfterMs: 60_000 };
      },
    });
    q.start();
    q.add('git');
    await flush();
    clock.advance(60_000);
    await flush();
    expect(runs).toEqual([0, 60_000]);
    clock.advance(10_000);
    q.add('git', 'resync');
    await flush();
    expect(runs).toEqual([0, 60_000, 70_000]);
    expect(clock.pendingDelays()).toEqual([60_000]);
    await q.stop();
  });

  it('stop() aborts the running reconcile, waits for it, cancels timers and ignores later triggers', async () => {
    const clock = new ManualClock();
    const r = blockingReconciler();
    const q = new WorkQueue({ reconcile: r.reconcile, clock, concurrency: 1, backoff: noJitter });
    q.start();
    q.add('a');
    q.add('b');
    await flush();
    let stopped = false;
    const stopping = q.stop();
    void stopping.then(() => (stopped = true));
    expect(q.stop()).toBe(stopping);
    await flush();
    expect(r.signals[0]!.aborted).toBe(true);
    expect(stopped).toBe(false); // still waiting for the running reconcile
    r.gates[0]!.open();
    await stopping;
    expect(stopped).toBe(true);
    q.add('c');
    await flush();
    expect(r.runs).toEqual(['a']);
    expect(clock.pending()).toBe(0);
    expect(q.depth()).toBe(0);
  });

  it('does not retry a reconcile that failed because the queue was stopping', async () => {
    const clock = new ManualClock();
    const reports: ReconcileReport[] = [];
    const q = new WorkQueue({
      clock,
      reconcile: (_k, signal) =>
        new Promise((_res, rej) => signal.addEventListener('abort', () => rej(new Error('aborted')))),
      onDone: (r) => reports.push(r),
    });
    q.start();
    q.add('k');
    await flush();
    await q.stop();
    expect(reports.map((r) => r.outcome)).toEqual(['aborted']);
    expect(clock.pending()).toBe(0);
  });

  it('reports durations from the injected clock and survives a throwing observer', async () => {
    const clock = new ManualClock();
    const g = gate();
    const reports: ReconcileReport[] = [];
    const q = new WorkQueue({
      clock,
      reconcile: async () => g.promise,
      onStart: () => {
        throw new Error('observer bug');
      },
      onDone: (r) => {
        reports.push(r);
        throw new Error('observer bug');
      },
    });
    q.start();
    q.add('k');
    await flush();
    clock.advance(1234);
    g.open();
    await q.whenIdle();
    expect(reports).toEqual([{ key: 'k', outcome: 'ok', durationMs: 1234, failures: 0 }]);
    q.add('k');
    await q.whenIdle();
    expect(reports).toHaveLength(2);
    await q.stop();
  });

  it('reports its depth, running and waiting counts', async () => {
    const clock = new ManualClock();
    const r = blockingReconciler();
    const q = new WorkQueue({ reconcile: r.reconcile, clock, concurrency: 1 });
    q.addAll(['a', 'b', 'c']);
    expect(q.depth()).toBe(3);
    q.start();
    await flush();
    expect(q.running()).toBe(1);
    expect(q.depth()).toBe(2);
    r.gates[0]!.fail(new Error('x'));
    await flush();
    expect(q.waiting()).toBe(1);
    q.forget('a');
    expect(q.waiting()).toBe(0);
    r.gates.forEach((g) => g.open());
    await flush();
    r.gates.forEach((g) => g.open());
    await q.stop();
  });
});

describe('WorkQueue start with an AbortSignal', () => {
  it('stops when the signal given to start() aborts', async () => {
    const clock = new ManualClock();
    const ctl = new AbortController();
    let runs = 0;
    const q = new WorkQueue({ clock, reconcile: async () => void runs++ });
    await q.start(ctl.signal);
    q.add('k');
    await q.whenIdle();
    expect(runs).toBe(1);
    ctl.abort();
    await flush();
    expect(q.stopped).toBe(true);
    q.add('k');
    await flush();
    expect(runs).toBe(1);
    const late = new WorkQueue({ clock, reconcile: async () => void runs++ });
    await late.start(ctl.signal);
    expect(late.stopped).toBe(true);
  });
});
