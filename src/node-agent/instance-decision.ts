/**
 * What the node agent does with one instance id, from what desired state, its own host record
 * and the removal requests say. Pure: no I/O.
 *
 * Removal happens only on an explicit, recorded request (see removal-request.ts): the desired
 * object's deletion mark, a removal already recorded on the host (resumed), or an orphan's
 * removal request. A desired object that is missing for an instance the host runs is never a
 * removal: the instance is an orphan, reported and left running untouched.
 */
import type { DeletionMark } from './removal-request.js';
import type { InstanceDesired, InstanceRecord } from './types.js';

/** Where a removal request came from. */
export type RemovalOrigin = 'deletion-mark' | 'host-record' | 'removal-request';

export type InstanceDecision =
  | { action: 'suspended' }
  | { action: 'remove'; mark: DeletionMark; origin: RemovalOrigin }
  | { action: 'converge' }
  | { action: 'orphaned' }
  | { action: 'nothing' };

/** Decides (see module doc). `request` is the orphan removal request of the id, if any. */
export function decideInstance(d: InstanceDesired | undefined, rec: InstanceRecord | undefined, request: DeletionMark | undefined): InstanceDecision {
  if (d?.deleting) return { action: 'remove', mark: d.deleting, origin: 'deletion-mark' };
  if (d) return d.spec.suspend ? { action: 'suspended' } : { action: 'converge' };
  if (!rec) return { action: 'nothing' };
  // A pending request first: it is moved into the record (and its key deleted) even when a crash
  // came between the two last time.
  if (request) return { action: 'remove', mark: request, origin: 'removal-request' };
  if (rec.removing) return { action: 'remove', mark: rec.removing, origin: 'host-record' };
  return { action: 'orphaned' };
}

/** The message an orphan reports (status and event): what happened and what to do. */
export function orphanMessage(id: string, node: number): string {
  return (
    `the desired object Module/${id} is missing but node ${node} runs the instance; it is left running untouched (a missing object is never a delete order). ` +
    `Re-apply its manifest (or \`ns8ctl recover\` to rebuild desired state from the nodes) to manage it again, or remove it explicitly with \`ns8ctl delete module ${id}\``
  );
}
