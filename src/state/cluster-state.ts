/**
 * The observed cluster state the planner compares desired objects against. Plain data only: the
 * Redis reader (src/state/) fills it, tests build it by hand, and `applyPlanToState` simulates
 * what an apply writes into it.
 */
import type { ManifestObject, RemovalPolicy } from '../manifest/types.js';

/** One desired object as stored in `ns8ctl/desired/<kind>/<id>` (see `keys.desired`). */
export interface StoredObject {
  /** `Kind/id`, e.g. `Module/dokuwiki1`. */
  key: string;
  /** The object as last applied (canonical JSON of apiVersion, kind, metadata, spec). */
  object: ManifestObject;
  /**
   * Optional: the stored `object` field text as read from Redis, written back unchanged when only
   * an object's source moves (to-writes.ts). The planner compares `object` itself (jsonEqual),
   * so a hand-edited or old-format text never hides a change or invents one.
   */
  objectJson?: string;
  /** +1 each time the spec really changed; 1 after creation. */
  generation: number;
  /** File the object was last written from (`-` for stdin). */
  source: string;
  /** Git commit of that file, or `` when not in a git work tree. */
  revision: string;
  /** Apply set (inventory name) that last wrote the object. */
  applySet: string;
  /** Who must clean up before the object may vanish (e.g. `node-agent`). */
  finalizers: string[];
  /** Set once deletion was requested while finalizers remained: the deletion mark. */
  deleting?: DeletionMark;
  /** The stored `deleting` field text, when read from Redis (preconditions compare it exactly). */
  deletingJson?: string;
}

/**
 * The deletion mark of an object whose removal waits for finalizers: the data policy, and who
 * asked, when and why (absent in marks written before they were recorded).
 */
export interface DeletionMark {
  removalPolicy: RemovalPolicy;
  /** `user@host`, or the controller source that pruned it. */
  by?: string;
  /** ISO-8601 time of the request. */
  at?: string;
  /** `pruned: no longer in the manifests of apply set default`, `ns8ctl delete`, `remove-module`. */
  why?: string;
}

/** Everything the planner reads: ns8ctl's own keys plus the NS8 bookkeeping keys it maintains. */
export interface ClusterState {
  /** `Kind/id` -> stored desired object. */
  objects: Map<string, StoredObject>;
  /** Apply set name -> `Kind/id` members of `ns8ctl/inventory/<applySet>`. */
  inventory: Map<string, Set<string>>;
  /** `cluster/module_sequence/<module>`: module name -> last number handed out. */
  moduleSequence: Map<string, number>;
  /** `cluster/module_node`: instance id -> node id (a decimal string, as NS8 stores it). */
  moduleNode: Map<string, string>;
  /** `cluster/module_uuid`: instance id -> uuid4. */
  moduleUuid: Map<string, string>;
  /** `cluster/repository/<name>` hashes: name -> {url, status, testing, ...}. */
  repositories: Map<string, Record<string, string>>;
  /** `node/<id>/ui_name`: node id -> display name. */
  nodeUiName: Map<string, string>;
  /** `node/<id>/flags` SET: node id -> members (order not significant). */
  nodeFlags: Map<string, string[]>;
  /** Instance ids with a move under way (fields of `ns8ctl/moves`). */
  moving: Set<string>;
}

/** A state with nothing in it: an empty Redis. */
export function emptyState(): ClusterState {
  return {
    objects: new Map(),
    inventory: new Map(),
    moduleSequence: new Map(),
    moduleNode: new Map(),
    moduleUuid: new Map(),
    repositories: new Map(),
    nodeUiName: new Map(),
    nodeFlags: new Map(),
    moving: new Set(),
  };
}

/** A deep copy of `state`: mutating the copy never touches the original. */
export function cloneState(state: ClusterState): ClusterState {
  const objects = new Map<string, StoredObject>();
  for (const [k, v] of state.objects) {
    const copy: StoredObject = {
      key: v.key,
      object: structuredClone(v.object),
      generation: v.generation,
      source: v.source,
      revision: v.revision,
      applySet: v.applySet,
      finalizers: [...v.finalizers],
    };
    if (v.objectJson !== undefined) copy.objectJson = v.objectJson;
    if (v.deleting) copy.deleting = { ...v.deleting };
    if (v.deletingJson !== undefined) copy.deletingJson = v.deletingJson;
    objects.set(k, copy);
  }
  return {
    objects,
    inventory: new Map([...state.inventory].map(([k, v]) => [k, new Set(v)])),
    moduleSequence: new Map(state.moduleSequence),
    moduleNode: new Map(state.moduleNode),
    moduleUuid: new Map(state.moduleUuid),
    repositories: new Map([...state.repositories].map(([k, v]) => [k, { ...v }])),
    nodeUiName: new Map(state.nodeUiName),
    nodeFlags: new Map([...state.nodeFlags].map(([k, v]) => [k, [...v]])),
    moving: new Set(state.moving),
  };
}
