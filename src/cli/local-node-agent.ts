/**
 * The node agent as `ns8ctl run` embeds it (controller + node agent for the local node in one
 * process). The seam is `LocalNodeAgentFactory`: `startLocalNodeAgent` runs the node agent's own
 * loop (`runNodeAgent` from src/node-agent/) and adds what the controller needs around it:
 * - module suspension (`ns8ctl/suspend/module/<id>`) is honoured: suspended instances reach the
 *   agent as `spec.suspend: true`, which it already leaves alone; suspend/resume wake it at once;
 * - after each pass it publishes `ns8ctl/event/module-status-changed` for instances whose status
 *   changed, so the controller's summaries and `get modules -w` follow without polling.
 * Tests and benchmarks inject their own factory.
 */
import type { Redis } from 'ioredis';
import type { CommandRunner } from '../host/runner.js';
import type { ModuleSpec } from '../manifest/types.js';
import { runNodeAgent } from '../node-agent/agent-loop.js';
import { createNodeAgentDeps } from '../node-agent/deps.js';
import { RedisDesiredSource, type DesiredSource } from '../node-agent/desired-source.js';
import type { HostLayout } from '../node-agent/layout.js';
import type { NodeReconcileResult } from '../node-agent/reconcile.js';
import type { InstanceDesired } from '../node-agent/types.js';
import { channels } from '../state/keys.js';
import { longLivedConnection } from '../controller/connections.js';
import { readSuspensions } from '../controller/suspend.js';

/** A running local node agent. */
export interface LocalNodeAgent {
  /** Stops after the current step; resolves when stopped. Idempotent. */
  stop(): Promise<void>;
  /** Settles when the agent's loop ended (on stop, or on its own). */
  readonly done: Promise<void>;
}

export interface LocalNodeAgentOptions {
  node: number;
  concurrency?: number;
  /** Full pass at least this often (ms). */
  resyncMs?: number;
  insecureRegistries?: string[];
  /** Host layout overrides (tests point the roots at temp dirs). */
  layout?: Partial<HostLayout>;
  /** Image URL for a `module:` spec (repositories); default: `image:` specs only. */
  resolveImage?: (spec: ModuleSpec) => Promise<string>;
  /** Called when a pass starts reading desired state (pickup benchmarks). */
  onPassStart?: () => void;
  onPass?: (result: NodeReconcileResult) => void;
}

export interface LocalNodeAgentDeps {
  /** A connected client; the agent opens its own long-lived duplicates. */
  redis: Redis;
  runner: CommandRunner;
  log: (line: string) => void;
  signal: AbortSignal;
}

export type LocalNodeAgentFactory = (opts: LocalNodeAgentOptions, deps: LocalNodeAgentDeps) => Promise<LocalNodeAgent>;

/**
 * A DesiredSource that marks suspended instances `spec.suspend: true` (one MGET per pass) and
 * reports when a pass starts.
 */
export class SuspensionAwareSource implements DesiredSource {
  constructor(
    private readonly inner: DesiredSource,
    private readonly redis: Redis,
    private readonly onList?: () => void,
  ) {}

  async listForNode(node: number): Promise<InstanceDesired[]> {
    this.onList?.();
    const list = await this.inner.listForNode(node);
    const suspended = await readSuspensions(this.redis, 'module', list.map((d) => d.id));
    if (suspended.size === 0) return list;
    return list.map((d) => (suspended.has(d.id) ? { ...d, spec: { ...d.spec, suspend: true } } : d));
  }

  addFinalizer(id: string): Promise<boolean> {
    return this.inner.addFinalizer(id);
  }

  releaseFinalizer(id: string): Promise<void> {
    return this.inner.releaseFinalizer(id);
  }
}

/**
 * Remembers the last status seen per instance and returns the ids whose status changed in a
 * pass (removed instances included), so only real changes are announced.
 */
export class StatusChangeTracker {
  private last = new Map<string, string>();

  changed(result: NodeReconcileResult): string[] {
    const out: string[] = [];
    const seen = new Set<string>();
    for (const r of result.instances) {
      if (r.outcome === 'skipped' || r.outcome === 'suspended') {
        seen.add(r.id);
        continue;
      }
      seen.add(r.id);
      const text = r.outcome === 'removed' ? 'removed' : JSON.stringify(r.status?.conditions?.map(({ lastTransitionTime: _t, ...c }) => c) ?? null) + (r.status?.observedGeneration ?? '') + JSON.stringify(r.status?.drift ?? []);
      if (this.last.get(r.id) !== text) {
        out.push(r.id);
        this.last.set(r.id, text);
      }
    }
    for (const id of [...this.last.keys()]) if (!seen.has(id)) this.last.delete(id);
    return out.sort();
  }
}

/** The production factory (see the module doc). */
export const startLocalNodeAgent: LocalNodeAgentFactory = async (opts, d) => {
  const redis = await longLivedConnection(d.redis, `ns8ctl-node-agent-${opts.node}`);
  const subscriber = await longLivedConnection(d.redis, `ns8ctl-node-agent-${opts.node}-events`);
  const agentOpts = { node: opts.node, concurrency: opts.concurrency ?? 4, insecureRegistries: opts.insecureRegistries ?? [], ...(opts.layout ? { layout: opts.layout } : {}) };
  const deps = createNodeAgentDeps(agentOpts, {
    redis,
    runner: d.runner,
    log: d.log,
    source: new SuspensionAwareSource(new RedisDesiredSource(redis), redis, opts.onPassStart),
    ...(opts.resolveImage ? { resolveImage: opts.resolveImage } : {}),
  });
  const tracker = new StatusChangeTracker();
  const handle = runNodeAgent(
    {
      ...agentOpts,
      ...(opts.resyncMs !== undefined ? { resyncMs: opts.resyncMs } : {}),
      signal: d.signal,
      subscriber,
      onReconcile: (result) => {
        for (const id of tracker.changed(result)) void redis.publish(channels.moduleStatusChanged, JSON.stringify({ module: id, node: opts.node })).catch(() => 0);
        opts.onPass?.(result);
      },
    },
    deps,
  );
  // Suspend and resume take effect at once, not at the next resync.
  const wake = [channels.controllerEvent('module-suspended'), channels.controllerEvent('module-resumed')];
  subscriber.on('message', (channel: string) => {
    if (wake.includes(channel)) handle.trigger();
  });
  await subscriber.subscribe(...wake);
  const done = handle.done.finally(() => {
    subscriber.disconnect();
    redis.disconnect();
  });
  return {
    done,
    async stop() {
      await handle.stop();
      await done;
    },
  };
};
