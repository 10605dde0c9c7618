/**
 * One reconcile of a node: observe (desired state, the agent's records, Redis in one pipeline,
 * host files) -> plan per instance (pure) -> apply with bounded concurrency -> observe again, until
 * each instance's plan is empty. One failing instance never blocks the others; each gets a status
 * in Redis. An unchanged instance runs no command and writes nothing.
 */
import { toNs8ctlError } from '../errors.js';
import { moduleNameOf } from '../manifest/types.js';
import { withResolutionPass } from '../repository/image-resolver.js';
import { convergeInstance } from './converge.js';
import { defaultInstanceModule } from './default-instance.js';
import type { NodeAgentDeps, NodeAgentOptions } from './deps.js';
import { checkDesiredState } from './desired-state-guard.js';
import { readUsers } from './host/passwd.js';
import { decideInstance } from './instance-decision.js';
import { readRedisSnapshot, type ObserveContext } from './observe.js';
import { removeInstance } from './removal.js';
import { readRemovalRequests, type DeletionMark } from './removal-request.js';
import { readBackupSchedules, syncBackupTimers, wantedBackupUnits } from './backup/timers.js';
import { cloneOut, moveOut, removeLocalCopy } from './move/source.js';
import type { InstanceResult, NodeReconcileResult, ReconcileControl } from './result.js';
import { reportOrphan } from './status-report.js';
import type { InstanceDesired, InstanceRecord } from './types.js';

export type { InstanceResult, NodeReconcileResult, ReconcileControl, Setback } from './result.js';
export { REASONS, TERMINAL_REASONS } from './reasons.js';

/** Bounded-concurrency map: at most `limit` calls of `fn` run at once; results keep input order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (;;) {
      const i = next++;
      if (i >= items.length) return;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return out;
}

/**
 * Reconciles every instance placed on `opts.node` once (see module doc). Never throws for one
 * instance's failure (that goes into its result and status); throws only when desired state or
 * the node's Redis snapshot cannot be read at all.
 */
export function reconcileNodeOnce(opts: NodeAgentOptions, deps: NodeAgentDeps, control: ReconcileControl = {}): Promise<NodeReconcileResult> {
  // One pass: `module:` specs are resolved against the repositories read once (src/repository/).
  return withResolutionPass(() => reconcilePass(opts, deps, control));
}

async function reconcilePass(opts: NodeAgentOptions, deps: NodeAgentDeps, control: ReconcileControl): Promise<NodeReconcileResult> {
  const node = opts.node;
  const [desired, records, systemdMissing] = await Promise.all([deps.source.listForNode(node), deps.records.list(), deps.systemd.missing()]);
  // Desired state that looks wiped or replaced is not acted on at all (desired-state-guard.ts).
  const guard = await checkDesiredState(deps, node, { records: records.size, desiredHere: desired.length });
  if (!guard.act) {
    if (control.logSuspect?.(guard.reason) ?? true) deps.log(`node-agent: node ${node}: DesiredStateSuspect (${guard.reason}): ${guard.message}`);
    return { node, instances: [], suspect: { reason: guard.reason, message: guard.message }, ...(systemdMissing ? { systemdMissing } : {}) };
  }
  const desiredById = new Map(desired.map((d) => [d.id, d]));
  const ids = [...new Set([...desired.map((d) => d.id), ...[...records.values()].filter((r) => r.node === undefined || r.node === node).map((r) => r.id)])].sort();
  // Orphans (recorded here, no desired object) are removed only on an explicit request.
  const requests = await readRemovalRequests(
    deps.redis,
    ids.filter((id) => !desiredById.has(id)),
  );
  // Module names whose default-instance keys the snapshot reads (the image's name; see default-instance.ts).
  const modules = [...desired.map((d) => moduleNameOf(d.spec)), ...[...records.values()].flatMap((r) => (r.imageUrl ? [defaultInstanceModule(r.imageUrl)] : []))].filter(Boolean);
  const [snapshot, users] = await Promise.all([readRedisSnapshot(deps.redis, node, ids, modules), readUsers(deps.layout)]);
  const shared: ObserveContext = { layout: deps.layout, podman: deps.podman, systemd: deps.systemd, users: users.users, subids: users.subids, systemdMissing, redis: snapshot, node, ...(deps.agentUnits ? { agentUnits: deps.agentUnits } : {}) };
  const instances = await mapLimit(ids, opts.concurrency ?? 4, async (id) => {
    if (control.signal?.aborted || control.skip?.(id, desiredById.get(id)?.generation)) return { id, outcome: 'skipped', applied: [], drift: [], retry: true } satisfies InstanceResult;
    const started = performance.now();
    const took = (): number => Math.round(performance.now() - started);
    try {
      return { ...(await reconcileInstance(id, desiredById.get(id), records.get(id), requests.get(id), node, deps, shared, control)), durationMs: took() };
    } catch (err) {
      // Only status writes can land here (instance errors are caught inside): report, go on.
      const e = toNs8ctlError(err);
      deps.log(`node-agent: ${id}: ${e.message}`);
      return { id, outcome: 'failed', applied: [], drift: [], error: e, retry: true, durationMs: took() } satisfies InstanceResult;
    }
  });
  await keepBackupTimers(deps, node, desired, systemdMissing);
  // Only a pass that changed something can have released an image: a no-op pass reads nothing more.
  if (instances.some((i) => i.applied.length > 0)) {
    await evictImages(deps);
    await evictServiceImages(deps);
  }
  return { node, instances, ...(systemdMissing ? { systemdMissing } : {}) };
}

/** The node's backup timers follow the BackupSchedules (timers.ts); a failure is logged, the pass goes on. */
async function keepBackupTimers(deps: NodeAgentDeps, node: number, desired: readonly InstanceDesired[], systemdMissing: string | undefined): Promise<void> {
  try {
    const wanted = wantedBackupUnits(await readBackupSchedules(deps.redis), desired, node, deps.backupCommand);
    const sync = await syncBackupTimers(deps.layout.systemUnitDir, wanted, systemdMissing ? undefined : deps.systemd);
    if (sync.installed.length || sync.removed.length) deps.log(`node-agent: node ${node}: backup timers${sync.installed.length ? ` installed ${sync.installed.join(' ')}` : ''}${sync.removed.length ? ` removed ${sync.removed.join(' ')}` : ''}`);
  } catch (err) {
    deps.log(`node-agent: node ${node}: backup timers not updated: ${toNs8ctlError(err).message}`);
  }
}

/**
 * Bounded disk: module images in the node cache that no instance record names any more (by id,
 * digest or URL: the image in place, the one extracted, the one an update came from) are removed
 * once the pass is over. A failure is logged; the next pass tries again.
 */
async function evictImages(deps: NodeAgentDeps): Promise<void> {
  try {
    const keep = new Set<string>();
    for (const r of (await deps.records.list()).values()) {
      const urls = [r.imageUrl, r.image?.url, r.failedUpdate?.from, r.failedUpdate?.image, r.managedEnv?.IMAGE_URL];
      for (const v of [r.image?.id, r.image?.digest, r.extractedImageId, r.uiImageId]) if (v) keep.add(v);
      for (const u of urls) {
        const c = u ? await deps.podman.cache.lookup(u) : undefined;
        if (c) keep.add(c.digest);
      }
    }
    const removed = await deps.podman.cache.evict(keep);
    if (removed.length) deps.log(`node-agent: removed ${removed.length} module image(s) no instance uses from the node cache`);
  } catch (err) {
    deps.log(`node-agent: evicting unused module images from the node cache failed: ${toNs8ctlError(err).message}`);
  }
}

/**
 * Bounded disk: service images in the node's service-image cache that no instance's module image
 * names any more (`org.nethserver.images`) are removed once the pass is over; each user keeps its
 * imported copy. A failure is logged; the next pass tries again.
 */
async function evictServiceImages(deps: NodeAgentDeps): Promise<void> {
  if (!deps.podman.serviceCache) return;
  try {
    const keep = new Set<string>();
    for (const r of (await deps.records.list()).values()) {
      for (const u of (r.image?.labels['org.nethserver.images'] ?? '').split(/\s+/)) if (u) keep.add(u);
    }
    const removed = await deps.podman.serviceCache.evict(keep);
    if (removed.length) deps.log(`node-agent: removed ${removed.length} service image(s) no instance uses from the node cache`);
  } catch (err) {
    deps.log(`node-agent: evicting unused service images from the node cache failed: ${toNs8ctlError(err).message}`);
  }
}

async function reconcileInstance(
  id: string,
  d: InstanceDesired | undefined,
  rec: InstanceRecord | undefined,
  request: DeletionMark | undefined,
  node: number,
  deps: NodeAgentDeps,
  shared: ObserveContext,
  control: ReconcileControl,
): Promise<InstanceResult> {
  // A move (`spec.node` changed): this node is its source, or holds a cancelled move's partial copy.
  const mv = shared.redis.moves.get(id);
  if (!d && rec && mv && mv.from === node && mv.to !== node) return moveOut(id, rec, mv, node, deps, shared);
  if (!d && rec?.move && !rec.move.completed && !(mv && mv.to === node)) {
    const applied = await removeLocalCopy(id, rec, node, deps, shared);
    deps.log(`node-agent: ${id}: the move from node ${rec.move.from} was cancelled; the partial copy here is removed`);
    return { id, outcome: 'removed', applied, drift: [], retry: false };
  }
  const decision = decideInstance(d, rec, request);
  switch (decision.action) {
    case 'suspended':
      return { id, outcome: 'suspended', applied: [], drift: [], retry: false };
    case 'remove':
      return removeInstance(id, d, rec, decision.mark, decision.origin, node, deps, shared);
    case 'orphaned':
      return reportOrphan(id, rec!, node, deps, shared);
    case 'nothing':
      return { id, outcome: 'unchanged', applied: [], drift: [], retry: false };
    case 'converge': {
      // Clones of this instance: their data is sent from here first (services stopped only for the final pass).
      const clones = await cloneOut(id, rec, node, deps, shared);
      const r = await convergeInstance(d!, rec, node, deps, shared, control);
      // Waiting for the clones' receivers: their status changes wake this instance.
      return clones.length && !r.waitingFor && (r.outcome === 'converged' || r.outcome === 'unchanged') ? { ...r, waitingFor: clones } : r;
    }
  }
}
