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
import { advanceMove, clearMove, MOVE_SECRETS_KEY, type MoveRecord } from './record.js';

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
        return { id, outcome: 'converged', applied: [], drift: [], retry: true };
      }
      case 'receiving':
        await sendAll(id, rec, mv, deps, shared);
        return { id, outcome: 'converged', applied: [], drift: [], retry: true };
      case 'done': {
        const applied = await removeLocalCopy(id, rec, node, deps, shared);
        await clearMove(deps.redis, id);
        deps.log(`node-agent: ${id}: moved to node ${mv.to}; the copy on node ${node} is removed`);
        return { id, outcome: 'removed', applied, drift: [], retry: false };
      }
      default:
        return { id, outcome: 'unchanged', applied: [], drift: [], retry: true };
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

/** Live pass, services stopped, final pass, then `sent` (with when the services stopped). */
async function sendAll(id: string, rec: InstanceRecord, mv: MoveRecord, deps: NodeAgentDeps, shared: ObserveContext): Promise<void> {
  const password = await deps.redis.hget(MOVE_SECRETS_KEY, id);
  if (!password || !mv.address || !mv.port) throw new Ns8ctlError('move_failed', `${id}: the receiver on node ${mv.to} published no address or password yet`);
  const to = { address: mv.address, port: mv.port, user: id, password };
  const target = await backupTargetOf(deps.layout, id);
  const transfer = new StateTransfer(deps.runner);
  await transfer.send(target, to, { final: false });
  const user = shared.users.get(id);
  const units = Object.keys(rec.units ?? {});
  const downtimeFrom = deps.now().getTime();
  if (user && units.length && !shared.systemdMissing) await deps.systemd.stop({ kind: 'user', user: id, uid: user.uid }, units, `${id}: stop the services for the final pass of the move to node ${mv.to}`);
  await transfer.send(target, to, { final: true });
  if (!(await advanceMove(deps.redis, id, 'receiving', { state: 'sent', downtimeFrom }))) throw new Ns8ctlError('move_failed', `${id}: the move record changed during the transfer; it is sent again next pass`);
  await wakeTarget(deps, id);
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
