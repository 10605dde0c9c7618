/**
 * NS8 node flags the planner honours. NS8's add-module refuses a node whose SET `node/<id>/flags`
 * holds `nomodules` (an NS7 machine being migrated: it joins the cluster but runs no modules), so
 * the plan refuses to place an instance there: a new Module and a move are blocked; an instance
 * already on the node (stored, or recorded by NS8 and adopted where it runs) is left as it is.
 * Pure: the flags come from the desired Node objects and the state read before planning.
 */
import type { DesiredObject, ModuleObject } from '../manifest/types.js';
import type { ClusterState, StoredObject } from '../state/cluster-state.js';
import { keys } from '../state/keys.js';
import { describeMove, keepIt } from './move-preflight.js';
import type { BlockedChange } from './types.js';

/** The flag that keeps modules off a node. */
export const NO_MODULES_FLAG = 'nomodules';

/** The code of the refusal, listed in docs/errors.md. */
export const NO_MODULES_CODE = 'node_nomodules';

/**
 * Nodes that take no modules once the plan is applied: node id -> where the flag comes from. A
 * desired Node with `spec.flags` decides for its node (the plan writes those flags); otherwise
 * NS8's `node/<id>/flags` as read.
 */
export function noModulesNodes(desired: Iterable<DesiredObject>, state: ClusterState): Map<string, string> {
  const out = new Map<string, string>();
  for (const [node, flags] of state.nodeFlags) if (flags.includes(NO_MODULES_FLAG)) out.set(node, keys.nodeFlags(node));
  for (const d of desired) {
    const o = d.object;
    if (o.kind !== 'Node' || o.spec.flags === undefined) continue;
    const node = String(o.spec.id);
    if (o.spec.flags.includes(NO_MODULES_FLAG)) out.set(node, `spec.flags of Node ${JSON.stringify(o.metadata.name)} in ${d.source.file}`);
    else out.delete(node);
  }
  return out;
}

/**
 * The refusal of placing `obj` on a `nomodules` node, if it would be: a new instance (not stored,
 * not recorded by NS8 on that node) or a move there (stored on another node).
 */
export function noModulesRefusal(key: string, obj: ModuleObject, stored: StoredObject | undefined, recordedNode: string | undefined, noModules: ReadonlyMap<string, string>): BlockedChange | undefined {
  const node = String(obj.spec.node);
  const source = noModules.get(node);
  if (source === undefined) return undefined;
  const id = obj.metadata.name;
  const storedNode = stored?.object.kind === 'Module' ? String(stored.object.spec.node) : undefined;
  const why = `node ${node} has the NS8 flag ${NO_MODULES_FLAG} (${source}; NS8's add-module refuses such a node, an NS7 machine being migrated)`;
  const unflag = `or remove ${NO_MODULES_FLAG} from node ${node}'s flags`;
  if (storedNode !== undefined && storedNode !== node) {
    const move = { id, from: Number(storedNode), to: obj.spec.node };
    return { key, code: NO_MODULES_CODE, message: `${describeMove(move)}: ${why}; ${keepIt(move)}, ${unflag}` };
  }
  if (storedNode === undefined && recordedNode !== node) {
    return { key, code: NO_MODULES_CODE, message: `cannot create ${id} on node ${node}: ${why}; place it on another node, ${unflag}` };
  }
  return undefined;
}
