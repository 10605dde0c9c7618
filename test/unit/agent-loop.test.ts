/**
 * The node agent's loop on fakes: a scripted whole-node reconcile, a ManualClock, a fake
 * subscriber. Time moves only when a test advances it; a pass ends when the promise callbacks
 * have run (`settle`), so nothing here sleeps or measures time.
 */
import { EventEmitter } from 'node:events';
import { ManifestError, Ns8ctlError, RedisError } from '../../src/errors.js';
import { RepeatedReasonLimiter, startNodeLoop, type NodeAgentHandle, type NodeLoopOptions, type WakeSubscriber } from '../../src/node-agent/agent-loop.js';
import type { InstanceResult, NodeReconcileResult, ReconcileControl, Setback } from '../../src/node-agent/reconcile.js';
import type { ModuleStatus } from '../../src/node-agent/types.js';
import { ManualClock } from '../../src/runtime/clock.js';
import { channels } from '../../src/state/keys.js';

/** Lets pending promise callbacks run (the loop's bookkeeping is promise-driven). */
const settle = async (): Promise<void> => {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
};

interface Gate {
  promise: Promise<void>;
  open: () => void;
}
function gate(): Gate {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

/** One scripted instance: its generation and what each try of it gives. */
interface FakeInstance {
  id: string;
  generation: number;
  /** `attempt` counts the tries of this instance (1 = first); `held` is the setback the loop made it reuse. */
  behave: (attempt: number, held: Setback | undefined) => Partial<InstanceResult>;
}

interface Pass {
  at: number;
  tried: string[];
  skipped: string[];
  /** Instances whose setback the loop held (not resolved again). */
  held: string[];
  signal: AbortSignal | undefined;
}

/** A whole-node reconcile on scripted instances, recording every pass and try. */
class FakeNode {
  readonly passes: Pass[] = [];
  readonly tries = new Map<string, number[]>();
  private gates: Gate[] = [];
  private failures: Error[] = [];
  /** While set, every pass refuses (DesiredStateSuspect) and asks the loop whether to say so. */
  suspect: 'EpochMissing' | 'EpochUnknown' | undefined;
  /** The loop's answers, one per refusing pass. */
  readonly suspectSaid: boolean[] = [];

  constructor(
    readonly instances: FakeInstance[],
    private readonly clock: ManualClock,
  ) {}

  /** The next pass waits until the returned gate is opened. */
  blockNextPass(): Gate {
    const g = gate();
    this.gates.push(g);
    return g;
  }

  /** The next passes throw these errors (desired state or Redis unreadable). */
  failNextPasses(...errors: Error[]): void {
    this.failures.push(...errors);
  }

  triedAt(id: string): number[] {
    return this.tries.get(id) ?? [];
  }

  readonly reconcile = async (control: ReconcileControl): Promise<NodeReconcileResult> => {
    const pass: Pass = { at: this.clock.now(), tried: [], skipped: [], held: [], signal: control.signal };
    this.passes.push(pass);
    const g = this.gates.shift();
    if (g) await g.promise;
    const failure = this.failures.shift();
    if (failure) throw failure;
    if (this.suspect) {
      this.suspectSaid.push(control.logSuspect?.(this.suspect) ?? true);
      return { node: 1, instances: [], suspect: { reason: this.suspect, message: 'desired state looks wiped' } };
    }
    return { node: 1, instances: this.instances.map((i) => this.reconcileInstance(i, control, pass)) };
  };

  private reconcileInstance(i: FakeInstance, control: ReconcileControl, pass: Pass): InstanceResult {
    if (control.signal?.aborted || control.skip?.(i.id, i.generation)) {
      pass.skipped.push(i.id);
      return { id: i.id, outcome: 'skipped', applied: [], drift: [], retry: true };
    }
    const held = control.held?.(i.id, i.generation);
    if (held) pass.held.push(i.id);
    pass.tried.push(i.id);
    const tries = this.tries.get(i.id) ?? [];
    tries.push(this.clock.now());
    this.tries.set(i.id, tries);
    return { id: i.id, outcome: 'unchanged', applied: [], drift: [], retry: true, status: statusOf(i), ...i.behave(tries.length, held) };
  }
}

function statusOf(i: FakeInstance): ModuleStatus {
  return { id: i.id, node: 1, observedGeneration: i.generation, conditions: [], imageUrl: '', imageDigest: '', ports: {}, units: [], drift: [] };
}

const ok: FakeInstance['behave'] = () => ({ outcome: 'unchanged' });
const failing: FakeInstance['behave'] = () => ({ outcome: 'failed', error: new Ns8ctlError('registry_unreachable', 'registry 127.0.0.1:1 unreachable') });
const terminal: FakeInstance['behave'] = () => ({ outcome: 'blocked', retry: false, error: new Ns8ctlError('version_not_found', 'no version 9 of dokuwiki') });

/** A subscriber connection: messages are emitted by the test; subscribe can be held back. */
class FakeSubscriber extends EventEmitter implements WakeSubscriber {
  subscribed: string[] = [];
  holdSubscribe: Promise<void> | undefined;

  async subscribe(...names: string[]): Promise<unknown> {
    await this.holdSubscribe;
    this.subscribed.push(...names);
    return names.length;
  }

  async unsubscribe(...names: string[]): Promise<unknown> {
    this.subscribed = this.subscribed.filter((n) => !names.includes(n));
    return 0;
  }
}

interface Harness {
  clock: ManualClock;
  node: FakeNode;
  handle: NodeAgentHandle;
  lines: string[];
  results: NodeReconcileResult[];
}

const handles: NodeAgentHandle[] = [];
afterEach(async () => {
  await Promise.all(handles.splice(0).map((h) => h.stop()));
});

/**
 * A loop on `instances`: resync 60 s, backoff 1 s doubling up to 8 s, recheck 10 min, and a random
 * source of 0.5 (jitter that leaves the exponential value as is) unless `random` is given.
 */
function start(instances: FakeInstance[], opts: Partial<NodeLoopOptions> = {}, random: () => number = () => 0.5, prepare?: (node: FakeNode) => void): Harness {
  const clock = new ManualClock(0);
  const node = new FakeNode(instances, clock);
  prepare?.(node);
  const lines: string[] = [];
  const results: NodeReconcileResult[] = [];
  const handle = startNodeLoop(
    { node: 1, resyncMs: 60_000, backoffBaseMs: 1_000, backoffMaxMs: 8_000, terminalRecheckMs: 600_000, onReconcile: (r) => results.push(r), ...opts },
    { reconcile: node.reconcile, log: (l) => lines.push(l), clock, random },
  );
  handles.push(handle);
  return { clock, node, handle, lines, results };
}

/** Moves the clock and lets the passes it started end. */
async function advance(clock: ManualClock, ms: number): Promise<void> {
  clock.advance(ms);
  await settle();
}

describe('node agent loop: wake-ups', () => {
  it('runs a first pass at once, then one per resync period and none in between', async () => {
    const { clock, node } = start([{ id: 'web1', generation: 1, behave: ok }]);
    await settle();
    expect(node.passes.map((p) => p.at)).toEqual([0]);
    expect(clock.pendingDelays()).toEqual([60_000]);
    await advance(clock, 59_999);
    expect(node.passes).toHaveLength(1);
    await advance(clock, 1);
    expect(node.passes.map((p) => p.at)).toEqual([0, 60_000]);
  });

  it('coalesces the triggers that arrive during a pass into one more pass', async () => {
    let first!: Gate;
    const { clock, node, handle } = start([{ id: 'web1', generation: 1, behave: ok }], {}, undefined, (n) => (first = n.blockNextPass()));
    await settle();
    expect(node.passes).toHaveLength(1);
    handle.trigger();
    handle.trigger();
    handle.trigger();
    first.open();
    await settle();
    expect(node.passes).toHaveLength(2);
    // Then it waits for the resync again.
    expect(clock.pendingDelays()).toEqual([60_000]);
  });

  it('coalesces the triggers that arrive while it waits into one pass, run at once', async () => {
    const { clock, node, handle } = start([{ id: 'web1', generation: 1, behave: ok }]);
    await settle();
    await advance(clock, 10_000);
    handle.trigger();
    handle.trigger();
    await settle();
    expect(node.passes.map((p) => p.at)).toEqual([0, 10_000]);
    expect(clock.pendingDelays()).toEqual([60_000]);
  });

  it('subscribes before the first pass, wakes on a desired-state change and unsubscribes when stopped', async () => {
    const subscriber = new FakeSubscriber();
    const subscribed = gate();
    subscriber.holdSubscribe = subscribed.promise;
    const { clock, node, handle } = start([{ id: 'web1', generation: 1, behave: ok }], { subscriber });
    await settle();
    expect(node.passes).toHaveLength(0);
    subscribed.open();
    await settle();
    expect(subscriber.subscribed).toEqual([channels.desiredChanged, channels.moduleStatusChanged]);
    expect(node.passes).toHaveLength(1);
    await advance(clock, 5_000);
    subscriber.emit('message', channels.desiredChanged, JSON.stringify({ keys: ['Module/web1'] }));
    await settle();
    expect(node.passes.map((p) => p.at)).toEqual([0, 5_000]);
    await handle.stop();
    expect(subscriber.subscribed).toEqual([]);
    expect(subscriber.listenerCount('message')).toBe(0);
  });

  it('tries an instance waiting for a dependency at once when that dependency announces a status change, and not for other modules', async () => {
    const subscriber = new FakeSubscriber();
    let dbReady = false;
    const app: FakeInstance = { id: 'app1', generation: 1, behave: () => (dbReady ? { outcome: 'converged' } : { outcome: 'blocked', waitingFor: ['db1'] }) };
    const { clock, node, handle } = start([app, { id: 'web1', generation: 1, behave: ok }], { subscriber });
    await settle();
    // Waiting is not failing: retried within 30 s, without a growing backoff.
    expect(clock.pendingDelays()).toEqual([30_000]);
    await advance(clock, 1_000);
    handle.trigger();
    await settle();
    expect(node.passes[1]).toMatchObject({ at: 1_000, skipped: ['app1'], tried: ['web1'] });
    subscriber.emit('message', channels.moduleStatusChanged, JSON.stringify({ module: 'other1', node: 1 }));
    subscriber.emit('message', channels.moduleStatusChanged, 'not json');
    await settle();
    expect(node.passes).toHaveLength(2);
    dbReady = true;
    await advance(clock, 1_000);
    subscriber.emit('message', channels.moduleStatusChanged, JSON.stringify({ module: 'db1', node: 1 }));
    await settle();
    expect(node.passes[2]).toMatchObject({ at: 2_000, tried: ['app1', 'web1'] });
    expect(node.triedAt('app1')).toEqual([0, 2_000]);
  });
});

describe('node agent loop: retries', () => {
  it('backs a failing instance off exponentially up to the cap while the others are reconciled on every pass', async () => {
    const { clock, node, handle } = start([
      { id: 'bad1', generation: 1, behave: failing },
      { id: 'good1', generation: 1, behave: ok },
    ]);
    await settle();
    const delays = [clock.pendingDelays()[0]];
    // A trigger before the retry is due leaves the failing instance alone.
    await advance(clock, 500);
    handle.trigger();
    await settle();
    expect(node.passes[1]).toMatchObject({ skipped: ['bad1'], tried: ['good1'] });
    await advance(clock, 500);
    for (let i = 0; i < 4; i++) {
      delays.push(clock.pendingDelays()[0]);
      await advance(clock, clock.pendingDelays()[0]!);
    }
    expect(delays).toEqual([1_000, 2_000, 4_000, 8_000, 8_000]);
    expect(node.triedAt('bad1')).toEqual([0, 1_000, 3_000, 7_000, 15_000, 23_000]);
    expect(node.triedAt('good1')).toEqual(node.passes.map((p) => p.at));
  });

  it('spreads the backoff by the jitter of runtime/backoff (±20 %)', async () => {
    const low = start([{ id: 'bad1', generation: 1, behave: failing }], {}, () => 0);
    const high = start([{ id: 'bad1', generation: 1, behave: failing }], {}, () => 0.999999);
    await settle();
    expect(low.clock.pendingDelays()).toEqual([800]);
    expect(high.clock.pendingDelays()).toEqual([1_200]);
  });

  it('forgets the backoff of an instance once it succeeds', async () => {
    let broken = true;
    const { clock, node } = start([{ id: 'web1', generation: 1, behave: (n, h) => (broken ? failing(n, h) : ok(n, h)) }]);
    await settle();
    await advance(clock, 1_000);
    expect(clock.pendingDelays()).toEqual([2_000]);
    broken = false;
    await advance(clock, 2_000);
    expect(clock.pendingDelays()).toEqual([60_000]);
    broken = true;
    await advance(clock, 60_000);
    // The count started again: the first delay.
    expect(clock.pendingDelays()).toEqual([1_000]);
    expect(node.triedAt('web1')).toEqual([0, 1_000, 3_000, 63_000]);
  });

  it('leaves a terminal failure alone on resyncs until a new generation, tried at once, or until the recheck', async () => {
    const wiki: FakeInstance = { id: 'wiki1', generation: 1, behave: terminal };
    const { clock, node, handle } = start([wiki, { id: 'web1', generation: 1, behave: ok }]);
    await settle();
    for (let i = 0; i < 3; i++) await advance(clock, 60_000);
    expect(node.triedAt('wiki1')).toEqual([0]);
    expect(node.passes.at(-1)).toMatchObject({ at: 180_000, skipped: ['wiki1'], tried: ['web1'] });
    wiki.generation = 2;
    handle.trigger();
    await settle();
    expect(node.triedAt('wiki1')).toEqual([0, 180_000]);
    // Same generation again: rechecked 10 minutes after the last try, not before.
    for (let i = 0; i < 9; i++) await advance(clock, 60_000);
    expect(node.triedAt('wiki1')).toEqual([0, 180_000]);
    await advance(clock, 60_000);
    expect(node.triedAt('wiki1')).toEqual([0, 180_000, 780_000]);
  });

  it('reuses a held setback on the passes before its backoff is due, converging the instance every pass, and resolves it again after', async () => {
    const setback: Setback = { code: 'registry_unreachable', reason: 'RegistryUnreachable', message: 'registry 127.0.0.1:1 unreachable', terminal: false };
    const upd: FakeInstance = { id: 'upd1', generation: 3, behave: (_n, held) => ({ outcome: 'unchanged', setback: held ?? setback, error: new Ns8ctlError(setback.code, setback.message) }) };
    const { clock, node, handle } = start([upd]);
    await settle();
    expect(clock.pendingDelays()).toEqual([1_000]);
    await advance(clock, 400);
    handle.trigger();
    await settle();
    expect(node.passes[1]).toMatchObject({ tried: ['upd1'], held: ['upd1'] });
    await advance(clock, 600);
    expect(node.passes[2]).toMatchObject({ at: 1_000, tried: ['upd1'], held: [] });
    // Resolved again and still set back: the hold's own backoff grows.
    expect(clock.pendingDelays()).toEqual([2_000]);
  });

  it('backs off an instance set back from its wanted image whose convergence on the installed image failed too', async () => {
    const setback: Setback = { code: 'UpdateRefused', reason: 'UpdateRefused', message: 'min-core 3.9 is above this core', terminal: true };
    const upd: FakeInstance = { id: 'upd1', generation: 2, behave: (_n, held) => ({ outcome: 'failed', setback: held ?? setback, error: new Ns8ctlError('unit_failed', 'unit webapp.service did not start') }) };
    const { clock, node, handle } = start([upd]);
    await settle();
    expect(clock.pendingDelays()).toEqual([1_000]);
    await advance(clock, 500);
    handle.trigger();
    await settle();
    expect(node.passes[1]).toMatchObject({ skipped: ['upd1'] });
    await advance(clock, 500);
    // Tried again after its backoff, its setback still held until the recheck.
    expect(node.passes[2]).toMatchObject({ at: 1_000, tried: ['upd1'], held: ['upd1'] });
    expect(clock.pendingDelays()).toEqual([2_000]);
  });

  it('forgets an instance that left the node: back on it, its backoff starts over', async () => {
    const bad: FakeInstance = { id: 'bad1', generation: 1, behave: failing };
    const { clock, node, handle } = start([bad]);
    await settle();
    await advance(clock, 1_000);
    expect(clock.pendingDelays()).toEqual([2_000]);
    node.instances.splice(0);
    handle.trigger();
    await settle();
    expect(clock.pendingDelays()).toEqual([60_000]);
    node.instances.push(bad);
    handle.trigger();
    await settle();
    expect(node.triedAt('bad1')).toEqual([0, 1_000, 1_000]);
    expect(clock.pendingDelays()).toEqual([1_000]);
  });

  it('backs the whole pass off when the node cannot be read, says when it retries, and starts over after a success', async () => {
    const { clock, node, lines, results } = start([{ id: 'web1', generation: 1, behave: ok }], {}, undefined, (n) =>
      n.failNextPasses(new RedisError('redis_unavailable', 'Redis at 127.0.0.1:6379 refused the connection'), new RedisError('redis_unavailable', 'Redis at 127.0.0.1:6379 refused the connection')),
    );
    await settle();
    expect(clock.pendingDelays()).toEqual([1_000]);
    await advance(clock, 1_000);
    expect(clock.pendingDelays()).toEqual([2_000]);
    expect(lines).toEqual([
      'node-agent: node 1: reconcile failed, retrying in 1 s: Redis at 127.0.0.1:6379 refused the connection',
      'node-agent: node 1: reconcile failed, retrying in 2 s: Redis at 127.0.0.1:6379 refused the connection',
    ]);
    await advance(clock, 2_000);
    expect(results).toHaveLength(1);
    expect(clock.pendingDelays()).toEqual([60_000]);
    expect(node.passes.map((p) => p.at)).toEqual([0, 1_000, 3_000]);
  });

  it('retries a pass whatever the error, even one the controller parks, and a trigger cuts its backoff short', async () => {
    const { clock, node, handle } = start([], {}, undefined, (n) => n.failNextPasses(new ManifestError([{ file: 'desired', line: 1, col: 1, pointer: '', message: 'unreadable' }])));
    await settle();
    expect(clock.pendingDelays()).toEqual([1_000]);
    await advance(clock, 300);
    handle.trigger();
    await settle();
    expect(node.passes.map((p) => p.at)).toEqual([0, 300]);
    expect(clock.pendingDelays()).toEqual([60_000]);
  });
});

describe('node agent loop: stopping', () => {
  it('stop() lets the current pass finish with its signal aborted, then runs no pass again', async () => {
    let first!: Gate;
    const { clock, node, handle, results } = start([{ id: 'web1', generation: 1, behave: ok }], {}, undefined, (n) => (first = n.blockNextPass()));
    await settle();
    let stopped = false;
    const stopping = handle.stop().then(() => (stopped = true));
    await settle();
    expect(stopped).toBe(false);
    expect(node.passes[0]!.signal?.aborted).toBe(true);
    first.open();
    await stopping;
    expect(results).toHaveLength(1);
    expect(clock.pending()).toBe(0);
    handle.trigger();
    await advance(clock, 3_600_000);
    expect(node.passes).toHaveLength(1);
    await handle.stop();
    await handle.done;
  });

  it('ends as stop() does when the caller aborts its signal', async () => {
    const abort = new AbortController();
    const { clock, node, handle } = start([{ id: 'web1', generation: 1, behave: ok }], { signal: abort.signal });
    await settle();
    abort.abort();
    await handle.done;
    expect(clock.pending()).toBe(0);
    await advance(clock, 3_600_000);
    expect(node.passes).toHaveLength(1);
  });

  it('runs no pass when started with an aborted signal', async () => {
    const subscriber = new FakeSubscriber();
    const { node, handle } = start([{ id: 'web1', generation: 1, behave: ok }], { signal: AbortSignal.abort(), subscriber });
    await handle.done;
    await settle();
    expect(node.passes).toHaveLength(0);
    expect(subscriber.subscribed).toEqual([]);
  });
});

describe('node agent loop: the DesiredStateSuspect refusal', () => {
  it('is said at most once per period per reason, at once for a new reason, and at once again after a pass that acted', async () => {
    const { clock, node } = start([], { suspectLogEveryMs: 60_000, resyncMs: 20_000 }, undefined, (n) => (n.suspect = 'EpochMissing'));
    await settle();
    for (let i = 0; i < 3; i++) await advance(clock, 20_000);
    // Passes at 0, 20, 40 and 60 s.
    expect(node.suspectSaid).toEqual([true, false, false, true]);
    node.suspect = 'EpochUnknown';
    await advance(clock, 20_000);
    node.suspect = undefined;
    await advance(clock, 20_000);
    node.suspect = 'EpochUnknown';
    await advance(clock, 20_000);
    expect(node.passes).toHaveLength(7);
    expect(node.suspectSaid).toEqual([true, false, false, true, true, true]);
  });

  it('RepeatedReasonLimiter admits a reason once per period, a new reason at once, and any after a reset', () => {
    let now = 0;
    const l = new RepeatedReasonLimiter(60_000, () => now);
    const seen: boolean[] = [];
    seen.push(l.admit('EpochMissing'));
    now = 59_999;
    seen.push(l.admit('EpochMissing'));
    seen.push(l.admit('EpochUnknown'));
    now = 60_000;
    seen.push(l.admit('EpochUnknown'));
    l.reset();
    seen.push(l.admit('EpochUnknown'));
    now = 119_999;
    seen.push(l.admit('EpochUnknown'));
    expect(seen).toEqual([true, false, true, false, true, false]);
  });
});
