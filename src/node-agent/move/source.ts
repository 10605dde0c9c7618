/**
 * The source side of a move, and the removal of a copy an instance leaves on a node it moved
 * away from (or a target's partial copy when the move is cancelled). The source node agent
 * advances the move record (record.ts): it lists the volumes to send, then, once the target's
 * receiver listens, sends a live pass while the instance runs, stops its services, sends the final
 * pass (NS8's transfer-state), and once the target says done, removes its own copy: user, home,
 * volumes, ports of this node, UI dir, record. Cluster-wide keys (environment mirror, ACL user,
 * authorizations, the desired object and its finalizer) now belong to the target: untouched.
 * Each state is re-entered safely after a crash: a pass is sent again, a stopped unit stays stopped.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { toNs8ctlError, Ns8ctlError } from '../../errors.js';
import { channels } from '../../state/keys.js';
import { applyStep, type StepContext } from '../applier.js';
import { backupTargetOf } from '../backup/schedule-run.js';
import { srvVolumesOf } from '../backup/srv.js';
import { StateTransfer } from '../backup/transfer.js';
import type { NodeAgentDeps } from '../deps.js';
import type { ObserveContext } from '../observe.js';
import type { InstanceResult } from '../result.js';
import type { InstanceRecord, Step } from '../types.js';
import { advanceMove, clearMove, CLONES_KEY, MOVE_SECRETS_KEY, type MoveRecord } from './record.js';

/** One pass of the source side; never throws (failures are in the result, retried next pass). */
export async function moveOut(id: string, rec: InstanceRecord, mv: MoveRecord, node: number, deps: NodeAgentDeps, shared: ObserveContext): Promise<InstanceResult> {
  try {
    if (rec.rootfull) throw new Ns8ctlError('move_unsupported', `${id} is rootfull: moving rootfull instances is not supported yet; set spec.node back to ${node}`);
    switch (mv.state) {
      case 'requested': {
        const target = await backupTargetOf(deps.layout, id);
        const volumes = (await srvVolumesOf(deps.runner, target)).map((v) => v.shown).sort();
        const enabled = await enabledUnits(path.join(target.installDir, 'systemd', 'user'));
        if (await advanceMove(deps.redis, id, 'requested', { state: 'source-ready', volumes, enabled })) await wakeTarget(deps, id);
        deps.log(`node-agent: ${id}: moving to node ${mv.to}: volumes to send: ${volumes.join(' ') || '(none)'}`);
        return { id, outcome: 'converged', applied: [], drift: [], retry: true, waitingFor: [id] };
      }
      case 'receiving':
        await sendAll({ recordId: id, key: undefined, sourceId: id, rec, mv, restart: false }, deps, shared);
        return { id, outcome: 'converged', applied: [], drift: [], retry: true, waitingFor: [id] };
      case 'done': {
        const applied = await removeLocalCopy(id, rec, node, deps, shared);
        await clearMove(deps.redis, id);
        deps.log(`node-agent: ${id}: moved to node ${mv.to}; the copy on node ${node} is removed`);
        return { id, outcome: 'removed', applied, drift: [], retry: false };
      }
      default:
        // Waiting for the target (its receiver, or its instance running): its status change wakes this one.
        return { id, outcome: 'unchanged', applied: [], drift: [], retry: true, waitingFor: [id] };
    }
  } catch (err) {
    const e = toNs8ctlError(err);
    deps.log(`node-agent: ${id}: moving to node ${mv.to}: ${e.message}`);
    return { id, outcome: 'failed', applied: [], drift: [], retry: true, error: e };
  }
}

/** Units enabled in a user unit dir: the names linked from its `*.wants/` directories. */
async function enabledUnits(unitDir: string): Promise<string[]> {
  const out = new Set<string>();
  for (const d of await fs.readdir(unitDir).catch(() => [] as string[])) {
    if (!d.endsWith('.wants')) continue;
    for (const u of await fs.readdir(path.join(unitDir, d)).catch(() => [] as string[])) out.add(u);
  }
  return [...out].sort();
}

/** What one send is about: the record (a move's or a clone's) and the instance whose data goes. */
interface Sending {
  /** The record's id: the instance moving, or the new instance of a clone. */
  recordId: string;
  /** The record's hash: the moves' unless given. */
  key: string | undefined;
  /** The instance whose data is sent (the record's id for a move, the clone's source). */
  sourceId: string;
  rec: InstanceRecord;
  mv: MoveRecord;
  /** A clone's source runs on: its services start again right after the final pass. */
  restart: boolean;
}

/**
 * Live pass, services stopped, final pass (services started again for a clone's source), then
 * `sent` with when the services stopped. A failure is noted in the record (`lastError`, shown by
 * the target while it waits) and thrown; stopped services of a clone's source are started again.
 */
async function sendAll(s: Sending, deps: NodeAgentDeps, shared: ObserveContext): Promise<void> {
  const { recordId, key, sourceId, rec, mv } = s;
  const password = await deps.redis.hget(MOVE_SECRETS_KEY, recordId);
  if (!password || !mv.address || !mv.port) throw new Ns8ctlError('move_failed', `${recordId}: the receiver on node ${mv.to} published no address or password yet`);
  const to = { address: mv.address, port: mv.port, user: recordId, password };
  const target = await backupTargetOf(deps.layout, sourceId);
  const transfer = new StateTransfer(deps.runner);
  const user = shared.users.get(sourceId);
  const units = Object.keys(rec.units ?? {});
  const scope = user && units.length && !shared.systemdMissing ? { kind: 'user' as const, user: sourceId, uid: user.uid } : undefined;
  const where = s.restart ? `the clone ${recordId} on node ${mv.to}` : `node ${mv.to}`;
  let stopped = false;
  try {
    await transfer.send(target, to, { final: false });
    const downtimeFrom = deps.now().getTime();
    if (scope) {
      stopped = true;
      await deps.systemd.stop(scope, units, `${sourceId}: stop the services for the final pass to ${where}`);
    }
    await transfer.send(target, to, { final: true });
    if (scope && s.restart) {
      await deps.systemd.start(scope, units, `${sourceId}: start the services again after the final pass to ${where}`);
      stopped = false;
    }
    const downtime = s.restart ? { downtimeMs: Math.max(0, deps.now().getTime() - downtimeFrom) } : { downtimeFrom };
    if (!(await advanceMove(deps.redis, recordId, 'receiving', { state: 'sent', ...downtime, lastError: null }, key))) throw new Ns8ctlError('move_failed', `${recordId}: the record changed during the transfer; it is sent again next pass`);
  } catch (err) {
    const e = toNs8ctlError(err);
    await advanceMove(deps.redis, recordId, 'receiving', { state: 'receiving', lastError: e.message }, key).catch(() => false);
    if (stopped && s.restart && scope) await deps.systemd.start(scope, units, `${sourceId}: start the services again after a failed transfer to ${where}`).catch(() => undefined);
    throw e;
  }
  await wakeTarget(deps, recordId);
}

/**
 * The source side of clones of `id` (a desired instance running on this node): for each clone
 * record naming it, one step of the transfer (list the data, or send it). Never throws: a failure
 * is logged and noted in the clone record (the target shows it), and sent again next pass.
 * Returns the clones still waiting on their target (the source waits for their status changes).
 */
export async function cloneOut(id: string, rec: InstanceRecord | undefined, node: number, deps: NodeAgentDeps, shared: ObserveContext): Promise<string[]> {
  const waiting: string[] = [];
  for (const [cloneId, mv] of shared.redis.clones) {
    if (mv.source !== id || mv.from !== node) continue;
    // The clone is no instance of the cluster any more (deleted before it was made): its record goes.
    if (!shared.redis.moduleNode[cloneId]) {
      await clearMove(deps.redis, cloneId, CLONES_KEY).catch(() => undefined);
      continue;
    }
    waiting.push(cloneId);
    // Not running here yet (a source created in the same apply): the clone waits for it.
    if (!rec?.managedEnv) continue;
    try {
      if (rec.rootfull) throw new Ns8ctlError('move_unsupported', `${id} is rootfull: cloning rootfull instances is not supported yet`);
      if (mv.state === 'requested') {
        const target = await backupTargetOf(deps.layout, id);
        const volumes = (await srvVolumesOf(deps.runner, target)).map((v) => v.shown).sort();
        const enabled = await enabledUnits(path.join(target.installDir, 'systemd', 'user'));
        if (await advanceMove(deps.redis, cloneId, 'requested', { state: 'source-ready', volumes, enabled }, CLONES_KEY)) await wakeTarget(deps, cloneId);
        deps.log(`node-agent: ${id}: cloning into ${cloneId} on node ${mv.to}: volumes to send: ${volumes.join(' ') || '(none)'}`);
      } else if (mv.state === 'receiving') {
        await sendAll({ recordId: cloneId, key: CLONES_KEY, sourceId: id, rec, mv, restart: true }, deps, shared);
        deps.log(`node-agent: ${id}: cloned into ${cloneId} on node ${mv.to}`);
      }
    } catch (err) {
      const e = toNs8ctlError(err);
      deps.log(`node-agent: ${id}: cloning into ${cloneId} on node ${mv.to}: ${e.message}`);
      if (mv.state === 'requested') await advanceMove(deps.redis, cloneId, 'requested', { state: 'requested', lastError: e.message }, CLONES_KEY).catch(() => false);
    }
  }
  return waiting;
}

/** The target waits for the instance's own status change (waitingFor): this wakes it at once. */
async function wakeTarget(deps: NodeAgentDeps, id: string): Promise<void> {
  await deps.redis.publish(channels.moduleStatusChanged, JSON.stringify({ module: id }));
}

/**
 * Removes the instance's copy on this node only (a moved-away source, or a target's partial copy
 * of a cancelled move): user manager stopped, processes ended, user and data removed, this node's
 * ports and UI dir freed, record forgotten. Returns the steps applied.
 */
export async function removeLocalCopy(id: string, rec: InstanceRecord, node: number, deps: NodeAgentDeps, shared: ObserveContext): Promise<Step[]> {
  await new StateTransfer(deps.runner).stopReceiver(id);
  const ctx: StepContext = { deps, node, id, rootfull: Boolean(rec.rootfull), ...(rec.imageUrl ? { imageUrl: rec.imageUrl } : {}) };
  const user = shared.users.get(id);
  const steps: Step[] = [
    ...(user && !shared.systemdMissing ? [{ id, kind: 'disable-linger' as const, reason: `stop the user manager of ${id}` }] : []),
    ...(user ? [{ id, kind: 'kill-processes' as const, reason: `end the processes of ${id}` }, { id, kind: 'remove-user' as const, reason: `remove Unix user ${id}` }] : []),
    { id, kind: 'erase-data', volumeBases: rec.volumeBases ?? [], reason: 'the instance runs on another node now: its data here is erased' },
    { id, kind: 'free-ports', reason: 'free the ports of this node' },
    { id, kind: 'remove-ui', reason: 'remove the UI dir' },
    { id, kind: 'forget-record', reason: 'forget the node agent record' },
  ];
  for (const s of steps) await applyStep(s, ctx);
  return steps;
}
