/**
 * The plan data model: what `plan()` returns, what the renderers print and what apply executes.
 * Plans hold real values (apply needs them); only the renderers mask secrets.
 */
import type { Operation } from 'fast-json-patch';
import type { Kind, ManifestObject, SourceRef } from '../manifest/types.js';

export type ChangeAction = 'create' | 'update' | 'delete';

/**
 * One write to an NS8 bookkeeping key, as data. `key` is always the exact Redis key.
 * - `hset`: HSET key field value. `hdel`: HDEL key field. `del`: DEL key.
 * - `set`: SET key value (a STRING key such as `node/1/ui_name`).
 * - `set-members`: make the SET `key` hold exactly `members` (DEL + SADD, atomically).
 * - `sequence-at-least`: raise the INT `cluster/module_sequence/<module>` to `value` when lower
 *   (never lowers it: NS8 INCRs it for new ids).
 * - `uuid-ensure`: HSETNX `cluster/module_uuid` id <new uuid4>: a uuid is made once and kept.
 */
export type BookkeepingWrite =
  | { type: 'hset'; key: string; field: string; value: string }
  | { type: 'hdel'; key: string; field: string }
  | { type: 'del'; key: string }
  | { type: 'set'; key: string; value: string }
  | { type: 'set-members'; key: string; members: string[] }
  | { type: 'sequence-at-least'; key: string; module: string; value: number }
  | { type: 'uuid-ensure'; key: string; id: string };

/** One planned change to one object. */
export interface Change {
  action: ChangeAction;
  /** `Kind/id`, e.g. `Module/dokuwiki1`. */
  key: string;
  kind: Kind;
  id: string;
  /** Why the change is needed, one short sentence each, most important first. Never hold secret values. */
  reasons: string[];
  /**
   * Module: property names its configure-module schema marks secret (`format: password`,
   * `writeOnly`, `secret: true`), found by the plan's configuration check; masked wherever the plan
   * is shown, on top of the name rule. Absent when no schema was found (the name rule still applies).
   */
  secretNames?: string[];
  /** JSON Patch from the stored spec to the desired spec (`compare({}, spec)` for create, `[]` for delete). */
  patch: Operation[];
  /** The stored object (update, delete), canonical form. */
  before?: ManifestObject;
  /** The desired object (create, update), canonical form. */
  after?: ManifestObject;
  /** True when the spec changes: only then does the generation go up. False for delete. */
  specChanged: boolean;
  /** Generation the object has after apply (create: 1; update: +1 only when specChanged). */
  generation?: number;
  /** Where the desired object was loaded from (create, update): apply records it. */
  source?: SourceRef;
  /**
   * NS8 bookkeeping writes. For create/update: apply performs them with the object write. For
   * delete: performed when the object is finally removed (at once when it has no finalizers,
   * otherwise by the finalizer's owner once it has cleaned up).
   */
  bookkeeping: BookkeepingWrite[];
  /** Inventory membership to write: SADD to `add`'s inventory, SREM from each of `remove`. */
  inventory: { add: string | null; remove: string[] };
  /** Module deletes only: what happens to the instance's data. */
  dataPolicy?: 'preserved' | 'deleted';
  /** Module creates/updates, when resolution ran (annotatePlan): the image the spec resolves to now. */
  resolved?: ResolvedImage;
  /** Module creates/updates whose image could not be resolved without blocking them (see annotatePlan). */
  resolutionError?: ResolutionProblem;
}

/** The image a Module's spec resolves to at plan time (repositories for `module`, as-is for `image`). */
export interface ResolvedImage {
  /** Full image URL with tag, what podman pulls (`ghcr.io/nethserver/dokuwiki:1.3.0`). */
  image: string;
  tag: string;
  /** Semantic version of the tag; null when the tag is not a version (`latest`, a digest). */
  version: string | null;
  /** Repository the version came from; null for a full image URL. */
  repository: string | null;
  prerelease: boolean;
}

/** Why something about a Module's image is refused or unknown: a stable code and a message. */
export interface ResolutionProblem {
  code: string;
  message: string;
}

/**
 * A version change the node agent will make to a running instance: the resolved image differs
 * from the one running (a new release inside the version range, or an edited version). Not a
 * change of desired state: it never makes a plan non-empty.
 */
export interface UpdateNotice {
  /** `Module/<id>`. */
  key: string;
  id: string;
  kind: 'upgrade' | 'downgrade' | 'change';
  /** Running tag (or image URL when it has no tag). */
  from: string;
  fromImage: string;
  /** Resolved tag (or image URL when it has no tag). */
  to: string;
  resolved: ResolvedImage;
  /** Set when the node agent will refuse the move (min-from, min-core, downgrade, ...): it says why. */
  refused?: ResolutionProblem;
}

/** A desired change the planner refuses to make, with the reason and the way out. */
export interface BlockedChange {
  key: string;
  message: string;
  /**
   * Stable code of the refusal, when it has one (a move the target node cannot take:
   * `move_unsupported`, `move_ports_exhausted`, ...; docs/errors.md). Shown in the text and JSON forms.
   */
  code?: string;
}

export interface Plan {
  /** Apply set the plan was made for. */
  applySet: string;
  /** Whether deletes of objects that left the manifests were planned. */
  prune: boolean;
  /** Ordered: creates/updates by kind (Node, Repository, BackupDestination, BackupSchedule, Module) then id; deletes last, kinds reversed. */
  changes: Change[];
  blocked: BlockedChange[];
  summary: { create: number; update: number; delete: number };
  /** Deletes planned vs. size of the apply set's inventory (input of `checkPruneSafety`). */
  pruneRatio: { prune: number; inventory: number };
  /** Without prune: inventory members no longer in the manifests (kept; `--prune` would delete them). */
  pruneCandidates: string[];
  /** Version updates the node agent will perform (annotatePlan); absent or empty when none. */
  updates?: UpdateNotice[];
  /** Things the plan could not check (a module not resolvable right now, ...); absent or empty when none. */
  warnings?: string[];
}
