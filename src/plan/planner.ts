/**
 * The planner: a pure function from desired objects and observed cluster state to an ordered list
 * of changes with reasons. No I/O, no clock, no randomness; the same input always gives a
 * deep-equal plan, whatever the order of `desired` or of the state's maps. docs/plan.md explains
 * the rules.
 */
import { createRequire } from 'node:module';
import type { Operation } from 'fast-json-patch';
import { Ns8ctlError, RefusedError } from '../errors.js';
import { KINDS, objectKey, splitInstanceId } from '../manifest/types.js';
import type { DesiredObject, Kind, ManifestObject, ModuleObject, NodeObject, RemovalPolicy, RepositoryObject } from '../manifest/types.js';
import { keys } from '../state/keys.js';
import { canonicalize, compareNatural, compareTokens, jsonEqual, naturalTokens } from '../runtime/canonical.js';
import type { ClusterState, StoredObject } from '../state/cluster-state.js';
import { noModulesNodes, noModulesRefusal } from './node-flags.js';
import type { BlockedChange, BookkeepingWrite, Change, Plan } from './types.js';

export type { BlockedChange, BookkeepingWrite, Change, ChangeAction, Plan, ResolutionProblem, ResolvedImage, UpdateNotice } from './types.js';
export { applyPlanToState } from './simulate.js';

/** Options of `plan`. */
export interface PlanOptions {
  /** Inventory name (`default`): created/updated objects join it; prune only looks inside it. */
  applySet: string;
  /** Plan deletes for inventory members that are no longer desired. */
  prune: boolean;
}

/**
 * fast-json-patch's `compare`, loaded on the first change planned: a plan with nothing to change
 * (the no-op `diff`) never loads the package. With `require`: it is CommonJS, which an ES module
 * `import` would send through the ES module loader (slower on Node 20); same module instance.
 */
let comparePatch: ((a: object, b: object) => Operation[]) | undefined;
function jsonPatch(before: object, after: object): Operation[] {
  comparePatch ??= (createRequire(import.meta.url)('fast-json-patch') as { compare: (a: object, b: object) => Operation[] }).compare;
  return comparePatch(before, after);
}

const KIND_RANK: Record<Kind, number> = { Node: 0, Repository: 1, BackupDestination: 2, BackupSchedule: 3, Module: 4 };

/** Splits `Kind/id`; undefined when the kind is unknown or the id empty. */
export function parseKey(key: string): { kind: Kind; id: string } | undefined {
  const slash = key.indexOf('/');
  if (slash < 0) return undefined;
  const kind = key.slice(0, slash);
  const id = key.slice(slash + 1);
  if (!id || !(KINDS as readonly string[]).includes(kind)) return undefined;
  return { kind: kind as Kind, id };
}

/** Order of create/update: Node, Repository, BackupDestination, BackupSchedule, Module, then natural id order (reversed kinds for deletes). */
export function compareKeys(a: string, b: string, reverseKinds = false): number {
  const pa = parseKey(a);
  const pb = parseKey(b);
  if (!pa || !pb) return a < b ? -1 : a > b ? 1 : 0;
  const rank = KIND_RANK[pa.kind] - KIND_RANK[pb.kind];
  if (rank !== 0) return reverseKinds ? -rank : rank;
  return compareNatural(pa.id, pb.id);
}

/** `keys` sorted like `compareKeys`, splitting each id once (plans of thousands of objects). */
function sortKeys(list: Iterable<string>, reverseKinds = false): string[] {
  const dir = reverseKinds ? -1 : 1;
  return [...list]
    .map((key) => {
      const p = parseKey(key);
      return { key, rank: p ? KIND_RANK[p.kind] : KINDS.length, tokens: naturalTokens(p ? p.id : key) };
    })
    .sort((a, b) => (a.rank - b.rank) * dir || compareTokens(a.tokens, b.tokens) || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    .map((x) => x.key);
}

/**
 * Plans the changes that make `state` hold `desired`.
 * - create: the object is not stored; update: spec or metadata differ, NS8 bookkeeping drifted,
 *   or the object is not (only) in this apply set's inventory; delete (only with `prune`): a
 *   member of `inventory[applySet]` that is no longer desired. Nothing outside that inventory is
 *   ever deleted.
 * - An object being removed (stored `deleting`) that is desired again is put in `blocked`, as is
 *   a Module whose id NS8 already records on another node, a new or moved Module on a node
 *   flagged `nomodules` (node-flags.ts), and a Node that still has modules.
 * @throws Ns8ctlError `duplicate_object` when two desired objects have the same `Kind/id`
 *   (validation reports it with both files first; this only guards the contract).
 */
export function plan(desired: readonly DesiredObject[], state: ClusterState, opts: PlanOptions): Plan {
  const byKey = indexDesired(desired);
  const ctx: PlanContext = {
    state,
    opts,
    inventory: state.inventory.get(opts.applySet) ?? new Set<string>(),
    otherInventories: [...state.inventory.keys()].filter((s) => s !== opts.applySet).sort(compareNatural),
    noModules: noModulesNodes(desired, state),
  };
  const writes: Change[] = [];
  const blocked: BlockedChange[] = [];
  for (const key of sortKeys(byKey.keys())) {
    const outcome = planWrite(key, byKey.get(key) as DesiredObject, ctx);
    if (outcome?.blocked) blocked.push(outcome.blocked);
    if (outcome?.change) writes.push(outcome.change);
  }
  const { deletes, pruneCandidates } = planDeletes(byKey, ctx, blocked);
  const changes = [...writes, ...deletes];
  return {
    applySet: opts.applySet,
    prune: opts.prune,
    changes,
    blocked: blocked.sort((a, b) => compareKeys(a.key, b.key)),
    summary: {
      create: changes.filter((c) => c.action === 'create').length,
      update: changes.filter((c) => c.action === 'update').length,
      delete: deletes.length,
    },
    pruneRatio: { prune: deletes.length, inventory: ctx.inventory.size },
    pruneCandidates,
  };
}

/** What plan() works with besides the desired objects. */
interface PlanContext {
  state: ClusterState;
  opts: PlanOptions;
  /** The apply set's inventory. */
  inventory: ReadonlySet<string>;
  /** The other apply sets, in natural order. */
  otherInventories: string[];
  /** Nodes flagged `nomodules` once the plan is applied: node id -> where the flag comes from. */
  noModules: ReadonlyMap<string, string>;
}

/** Desired objects by `Kind/id`. @throws Ns8ctlError `duplicate_object` when a key appears twice. */
function indexDesired(desired: readonly DesiredObject[]): Map<string, DesiredObject> {
  const byKey = new Map<string, DesiredObject>();
  for (const d of desired) {
    const key = objectKey(d.object);
    const other = byKey.get(key);
    if (other) {
      throw new Ns8ctlError('duplicate_object', `${key} is desired twice (${other.source.file} and ${d.source.file}); each object may appear once`);
    }
    byKey.set(key, d);
  }
  return byKey;
}

/** The outcome for one desired object: a write, a blocked change, a refusal, or nothing (up to date). */
type WriteOutcome = { change?: Change; blocked?: BlockedChange } | undefined;

function planWrite(key: string, d: DesiredObject, ctx: PlanContext): WriteOutcome {
  const stored = ctx.state.objects.get(key);
  const held = holdBack(key, d, stored, ctx);
  if (held) return held;
  const others = ctx.otherInventories.filter((s) => ctx.state.inventory.get(s)?.has(key));
  if (!stored) return { change: createChange(key, d, others, ctx) };
  const change = updateChange(key, d, stored, others, ctx);
  return change ? { change } : undefined;
}

/**
 * A desired object that cannot be written now: one being removed (blocked until the removal
 * finishes), a new Module whose id NS8 records on another node, or a Module that would be
 * created on or moved to a `nomodules` node (blocked). Any other stored Module whose spec.node
 * changes is not held back: it is a move (moduleBookkeeping).
 */
function holdBack(key: string, d: DesiredObject, stored: StoredObject | undefined, ctx: PlanContext): WriteOutcome {
  const obj = d.object;
  if (stored?.deleting) {
    const waiting = stored.finalizers.length ? `waiting for ${stored.finalizers.join(', ')}` : 'finishing';
    return {
      blocked: {
        key,
        message: `${key} is being removed (removalPolicy ${stored.deleting.removalPolicy}, ${waiting}); it cannot be desired again until the removal finishes: apply again later, or give the new object another id`,
      },
    };
  }
  if (obj.kind !== 'Module') return undefined;
  const recorded = ctx.state.moduleNode.get(idOf(obj));
  if (!stored && recorded !== undefined && recorded !== String(obj.spec.node)) {
    return {
      blocked: {
        key,
        message: `${key} already exists in NS8 on node ${recorded} (cluster/module_node) but the manifest places it on node ${obj.spec.node}; set spec.node: ${recorded} to adopt the instance, or choose another id`,
      },
    };
  }
  const refused = noModulesRefusal(key, obj, stored, recorded, ctx.noModules);
  return refused ? { blocked: refused } : undefined;
}

function createChange(key: string, d: DesiredObject, others: string[], ctx: PlanContext): Change {
  const after = canonicalize(d.object);
  return {
    action: 'create',
    key,
    kind: after.kind,
    id: idOf(d.object),
    reasons: [createReason(after, ctx.state), ...originReasons(after)],
    patch: jsonPatch({}, after.spec),
    after,
    specChanged: true,
    generation: 1,
    source: d.source,
    bookkeeping: bookkeepingFor(d.object, ctx.state).writes,
    inventory: { add: ctx.opts.applySet, remove: others },
  };
}

/** The update of a stored object, or undefined when nothing differs (object, inventories, recorded apply set, bookkeeping). */
function updateChange(key: string, d: DesiredObject, stored: StoredObject, others: string[], ctx: PlanContext): Change | undefined {
  const obj = d.object;
  const bk = bookkeepingFor(obj, ctx.state);
  const { specChanged, reasons } = objectReasons(stored, obj);
  reasons.push(...membershipReasons(key, stored, others, ctx));
  reasons.push(...bk.reasons);
  if (reasons.length === 0) return undefined;
  const before = canonicalize(stored.object);
  const after = canonicalize(obj);
  return {
    action: 'update',
    key,
    kind: after.kind,
    id: idOf(obj),
    reasons,
    patch: jsonPatch(before.spec, after.spec),
    before,
    after,
    specChanged,
    generation: stored.generation + (specChanged ? 1 : 0),
    source: d.source,
    bookkeeping: bk.writes,
    inventory: { add: ctx.opts.applySet, remove: others },
  };
}

/** What differs between the stored and the desired object (spec, apiVersion, metadata). */
function objectReasons(stored: StoredObject, obj: DesiredObject['object']): { specChanged: boolean; reasons: string[] } {
  // The common case (nothing changed) is one walk over both objects, no text built.
  const objectChanged = !jsonEqual(stored.object, obj);
  const reasons: string[] = [];
  if (!objectChanged) return { specChanged: false, reasons };
  const specChanged = !jsonEqual(stored.object.spec, obj.spec);
  if (specChanged) reasons.push(...fieldReasons('spec', stored.object.spec, obj.spec).map((r) => (obj.kind === 'Module' ? withCreationNote(r) : r)));
  if (stored.object.apiVersion !== obj.apiVersion) reasons.push(`apiVersion changed`);
  reasons.push(...fieldReasons('metadata', stored.object.metadata, obj.metadata));
  return { specChanged, reasons };
}

/** Why the object's apply-set membership needs a write: not in this inventory, also in others, or recorded under another apply set. */
function membershipReasons(key: string, stored: StoredObject, others: string[], ctx: PlanContext): string[] {
  const { applySet } = ctx.opts;
  const reasons: string[] = [];
  if (!ctx.inventory.has(key)) {
    reasons.push(
      others.length ? `moves from apply set ${others.map((s) => JSON.stringify(s)).join(', ')} to ${JSON.stringify(applySet)}` : `not in apply set ${JSON.stringify(applySet)}'s inventory (adopting it)`,
    );
  } else if (others.length) {
    reasons.push(`also listed in apply set ${others.map((s) => JSON.stringify(s)).join(', ')} (keeping it in ${JSON.stringify(applySet)} only)`);
  }
  if (stored.applySet !== applySet) {
    reasons.push(`recorded apply set is ${JSON.stringify(stored.applySet)}, want ${JSON.stringify(applySet)}`);
  }
  return reasons;
}

/**
 * Deletions of inventory members no longer desired (with `prune`; without it they are only
 * prune candidates). Objects being removed are skipped. Nodes go last; one that still hosts a
 * module after this plan is added to `blocked` instead.
 */
function planDeletes(byKey: Map<string, DesiredObject>, ctx: PlanContext, blocked: BlockedChange[]): { deletes: Change[]; pruneCandidates: string[] } {
  const { state, opts } = ctx;
  const deletes: Change[] = [];
  const pruneCandidates: string[] = [];
  const deletedIds = new Set<string>();
  const nodeDeletes: string[] = [];
  const destinationDeletes: string[] = [];
  for (const key of sortKeys(ctx.inventory, true)) {
    if (byKey.has(key)) continue;
    const parsed = parseKey(key);
    if (!parsed) continue;
    const stored = state.objects.get(key);
    if (stored?.deleting) continue;
    if (!opts.prune) {
      pruneCandidates.push(key);
      continue;
    }
    if (parsed.kind === 'Node' && stored) {
      nodeDeletes.push(key);
      continue;
    }
    if (parsed.kind === 'BackupDestination' && stored) {
      destinationDeletes.push(key);
      continue;
    }
    // A module with finalizers stays on its node until its removal finishes.
    if (parsed.kind === 'Module' && !stored?.finalizers.length) deletedIds.add(parsed.id);
    deletes.push(deleteChange(key, parsed.kind, parsed.id, stored?.object, state, opts.applySet));
  }
  const users = destinationUsers(state, byKey, new Set(deletes.map((c) => c.key)));
  for (const key of destinationDeletes) {
    const { kind, id } = parseKey(key) as { kind: Kind; id: string };
    const refusal = destinationStillUsed(key, id, users);
    if (refusal) blocked.push(refusal);
    else deletes.push(deleteChange(key, kind, id, state.objects.get(key)?.object, state, opts.applySet));
  }
  const placement = modulePlacement(state, byKey, deletedIds);
  for (const key of nodeDeletes) {
    const { kind, id } = parseKey(key) as { kind: Kind; id: string };
    const refusal = nodeStillUsed(key, id, placement);
    if (refusal) blocked.push(refusal);
    else deletes.push(deleteChange(key, kind, id, state.objects.get(key)?.object, state, opts.applySet));
  }
  deletes.sort((a, b) => compareKeys(a.key, b.key, true));
  return { deletes, pruneCandidates };
}

/**
 * Plans the deletion of one stored object on request (`ns8ctl delete`, `remove-module`), with the
 * same rules as prune: data policy, delete bookkeeping, and a Node that still hosts modules is
 * blocked. The object leaves every inventory that lists it. `removalPolicy` overrides the
 * object's own for a Module (`--no-preserve` = `Delete`). An unknown key, or an object already
 * being removed, gives a plan without changes. `pruneRatio` is zero: a named delete is not a prune.
 */
export function planDeletion(state: ClusterState, key: string, opts: { removalPolicy?: RemovalPolicy } = {}): Plan {
  const stored = state.objects.get(key);
  const parsed = parseKey(key);
  const result: Plan = {
    applySet: stored?.applySet ?? 'default',
    prune: false,
    changes: [],
    blocked: [],
    summary: { create: 0, update: 0, delete: 0 },
    pruneRatio: { prune: 0, inventory: 0 },
    pruneCandidates: [],
  };
  if (!stored || !parsed || stored.deleting) return result;
  if (parsed.kind === 'Node' || parsed.kind === 'BackupDestination') {
    const refusal = parsed.kind === 'Node' ? nodeStillUsed(key, parsed.id, modulePlacement(state, new Map(), new Set())) : destinationStillUsed(key, parsed.id, destinationUsers(state, new Map(), new Set()));
    if (refusal) {
      result.blocked.push(refusal);
      return result;
    }
  }
  const change = deleteChange(key, parsed.kind, parsed.id, stored.object, state, result.applySet, opts.removalPolicy);
  change.reasons[0] = 'deleted on request';
  change.inventory.remove = [...state.inventory].filter(([, members]) => members.has(key)).map(([name]) => name).sort(compareNatural);
  result.changes.push(change);
  result.summary.delete = 1;
  return result;
}

/** The refusal for deleting Node `key` while modules are placed on it, if any. */
function nodeStillUsed(key: string, nodeId: string, placement: Map<string, string>): BlockedChange | undefined {
  const hosted = [...placement].filter(([, node]) => node === nodeId).map(([m]) => m).sort(compareNatural);
  if (!hosted.length) return undefined;
  const one = hosted.length === 1;
  return {
    key,
    message: `${key} cannot be deleted: module${one ? '' : 's'} ${hosted.join(', ')} ${one ? 'is' : 'are'} still placed on it; delete or move ${one ? 'it' : 'them'} first (a module being removed stays until its removal finishes)`,
  };
}

/**
 * Who names each BackupDestination once the plan is applied: `BackupSchedule/x` for a schedule's
 * destination, `Module/y` for a Module's restoreFrom. Desired objects replace their stored form;
 * stored objects being removed, or deleted by this plan (`deleted` keys), name nothing.
 */
function destinationUsers(state: ClusterState, desired: Map<string, DesiredObject>, deleted: Set<string>): Map<string, string[]> {
  const objects = new Map<string, ManifestObject>();
  for (const [key, stored] of state.objects) if (!stored.deleting && !deleted.has(key)) objects.set(key, stored.object);
  for (const [key, d] of desired) objects.set(key, d.object);
  const users = new Map<string, string[]>();
  const add = (destination: string, key: string): void => {
    users.set(destination, [...(users.get(destination) ?? []), key]);
  };
  for (const [key, o] of objects) {
    if (o.kind === 'BackupSchedule') add(o.spec.destination, key);
    else if (o.kind === 'Module' && o.spec.restoreFrom) add(o.spec.restoreFrom.destination, key);
  }
  return users;
}

/**
 * The refusal for deleting BackupDestination `key` while a schedule backs up to it or a Module's
 * restoreFrom names it (a Module not yet created would have no snapshot to start from, and the
 * manifests naming it would no longer validate).
 */
function destinationStillUsed(key: string, name: string, users: Map<string, string[]>): BlockedChange | undefined {
  const list = [...(users.get(name) ?? [])].sort((a, b) => compareKeys(a, b));
  if (!list.length) return undefined;
  const modules = list.filter((k) => k.startsWith('Module/'));
  const ways = [
    ...(list.length > modules.length ? ['delete those BackupSchedules or point them at another destination'] : []),
    ...(modules.length ? [`drop spec.restoreFrom from ${modules.map((k) => k.slice('Module/'.length)).join(', ')} (it is used only when an instance is created)`] : []),
  ];
  return { key, message: `${key} cannot be deleted: ${list.join(', ')} still name${list.length === 1 ? 's' : ''} it; ${ways.join(', and ')} first` };
}

/** True when the plan changes nothing and blocks nothing. */
export function isEmpty(p: Plan): boolean {
  return p.changes.length === 0 && p.blocked.length === 0;
}

/**
 * The prune safety rule: deleting more than half of the apply set's inventory, or all of a
 * non-empty one, needs `forcePrune`. Call it before apply writes anything.
 * @throws RefusedError `prune_refused` naming how many of how many and `--force-prune`.
 */
export function checkPruneSafety(p: Plan, opts: { forcePrune: boolean }): void {
  const { prune, inventory } = p.pruneRatio;
  if (opts.forcePrune || prune === 0) return;
  if (prune * 2 > inventory || prune >= inventory) {
    const what = prune >= inventory ? 'all' : 'more than half';
    throw new RefusedError(
      'prune_refused',
      `refusing to prune ${prune} of ${inventory} objects in apply set ${JSON.stringify(p.applySet)} (${what} of it); nothing was written. ` +
        `Check that -f points at all your manifests, or pass --force-prune to delete them.`,
    );
  }
}

function idOf(obj: ManifestObject): string {
  return obj.kind === 'Node' ? String(obj.spec.id) : obj.metadata.name;
}

function createReason(obj: ManifestObject, state: ClusterState): string {
  if (obj.kind === 'Module' && state.moduleNode.has(obj.metadata.name)) {
    return `new in ns8ctl; NS8 already has instance ${obj.metadata.name} on node ${obj.spec.node} (adopting it)`;
  }
  if (obj.kind === 'Repository' && state.repositories.has(obj.metadata.name)) {
    return `new in ns8ctl; NS8 already has repository ${obj.metadata.name} (adopting it)`;
  }
  return 'new object';
}

/** Where a new instance's data comes from, when not from an empty install: a snapshot or another instance. */
function originReasons(obj: ManifestObject): string[] {
  if (obj.kind !== 'Module') return [];
  const out: string[] = [];
  if (obj.spec.restoreFrom) out.push(`restore from ${obj.spec.restoreFrom.destination} (${obj.spec.restoreFrom.snapshot ?? 'latest'}${obj.spec.restoreFrom.instance ? ` of ${obj.spec.restoreFrom.instance}` : ''})`);
  if (obj.spec.cloneFrom) out.push(`clone of ${obj.spec.cloneFrom}`);
  return out;
}

/** What a change of these Module fields does to an existing instance: nothing at once, no task. */
const IN_PLACE_NOTES: Record<string, string> = {
  'spec.restoreFrom': 'restoreFrom is used only at creation: no task, the running instance is not touched',
  'spec.cloneFrom': 'cloneFrom is used only at creation: no task, the running instance is not touched',
  'spec.updatePolicy': 'updatePolicy applies to the next update: no task now',
};

/** `spec.restoreFrom changed` -> `spec.restoreFrom changed (restoreFrom is used only at creation: ...)`. */
function withCreationNote(reason: string): string {
  const field = reason.slice(0, reason.indexOf(' '));
  const note = IN_PLACE_NOTES[field];
  return note ? `${reason} (${note})` : reason;
}

/** One reason per top-level field of `before`/`after` that differs: `spec.version changed`. */
function fieldReasons(prefix: string, before: object, after: object): string[] {
  const b = before as Record<string, unknown>;
  const a = after as Record<string, unknown>;
  const names = [...new Set([...Object.keys(b), ...Object.keys(a)])].sort();
  const out: string[] = [];
  for (const n of names) {
    if (jsonEqual(b[n], a[n])) continue;
    const path = `${prefix}.${n}`;
    if (!(n in b)) out.push(`${path} added`);
    else if (!(n in a)) out.push(`${path} removed`);
    else out.push(`${path} changed`);
  }
  return out;
}

interface Bookkeeping {
  writes: BookkeepingWrite[];
  reasons: string[];
}

/** The NS8 keys a desired object implies, compared with what the state holds. */
function bookkeepingFor(obj: ManifestObject, state: ClusterState): Bookkeeping {
  switch (obj.kind) {
    case 'Module':
      return moduleBookkeeping(obj, state);
    case 'Repository':
      return repositoryBookkeeping(obj, state);
    case 'Node':
      return nodeBookkeeping(obj, state);
    case 'BackupDestination':
    case 'BackupSchedule':
      // Backup objects have no NS8 key of their own: the node agents act on the desired object.
      return { writes: [], reasons: [] };
  }
}

function moduleBookkeeping(obj: ModuleObject, state: ClusterState): Bookkeeping {
  const out: Bookkeeping = { writes: [], reasons: [] };
  const id = obj.metadata.name;
  const node = String(obj.spec.node);
  const key = keys.moduleNode();
  const current = state.moduleNode.get(id);
  const stored = state.objects.get(`Module/${id}`);
  const storedNode = stored?.object.kind === 'Module' ? String(stored.object.spec.node) : undefined;
  if (stored && storedNode !== node && current !== undefined && current !== node) {
    // A move: the node agents carry it out and name the new node in cluster/module_node at the end.
    out.writes.push({ type: 'hset', key: keys.moves(), field: id, value: JSON.stringify({ from: Number(current), to: Number(obj.spec.node), state: 'requested' }) });
    out.reasons.push(`⇄ move node ${current} -> ${node}: a live copy while it runs, then its services stop for the final copy (downtime: that final pass), then node ${current}'s copy is removed`);
  } else if (stored && storedNode !== node && current === node && state.moving.has(id)) {
    // Back to the node it runs on before the move ended: the move is cancelled.
    out.writes.push({ type: 'hdel', key: keys.moves(), field: id });
    out.reasons.push(`move to node ${storedNode} cancelled: ${id} stays on node ${node} (the partial copy there is removed)`);
  } else if (current !== node && !state.moving.has(id)) {
    // (While a move is under way, cluster/module_node names the source: the target sets it at the end.)
    out.writes.push({ type: 'hset', key, field: id, value: node });
    out.reasons.push(`${key}[${id}] is ${current ?? 'missing'}, want ${node}`);
  }
  const split = splitInstanceId(id);
  if (split) {
    const seqKey = keys.moduleSequence(split.module);
    const seq = state.moduleSequence.get(split.module);
    if (seq === undefined || seq < split.n) {
      out.writes.push({ type: 'sequence-at-least', key: seqKey, module: split.module, value: split.n });
      out.reasons.push(`${seqKey} is ${seq ?? 'missing'}, want at least ${split.n}`);
    }
  }
  if (!state.moduleUuid.has(id)) {
    out.writes.push({ type: 'uuid-ensure', key: keys.moduleUuid(), id });
    out.reasons.push(`${keys.moduleUuid()}[${id}] is missing`);
  }
  return out;
}

/** NS8 encodes repository booleans as "1"/"0". */
const flag = (b: boolean): string => (b ? '1' : '0');

function repositoryBookkeeping(obj: RepositoryObject, state: ClusterState): Bookkeeping {
  const out: Bookkeeping = { writes: [], reasons: [] };
  const key = keys.repository(obj.metadata.name);
  const current = state.repositories.get(obj.metadata.name) ?? {};
  const want: [string, string][] = [
    ['url', obj.spec.url],
    ['status', flag(obj.spec.enabled ?? true)],
    ['testing', flag(obj.spec.testing ?? false)],
  ];
  for (const [field, value] of want) {
    const cur = current[field];
    if (cur === value) continue;
    out.writes.push({ type: 'hset', key, field, value });
    out.reasons.push(`${key}[${field}] is ${cur === undefined ? 'missing' : JSON.stringify(cur)}, want ${JSON.stringify(value)}`);
  }
  // The metadata cache is keyed by name only: a new URL must not be served the old URL's modules.
  if (out.writes.some((w) => w.type === 'hset' && w.field === 'url')) out.writes.push({ type: 'del', key: keys.repositoryCache(obj.metadata.name) });
  return out;
}

function nodeBookkeeping(obj: NodeObject, state: ClusterState): Bookkeeping {
  const out: Bookkeeping = { writes: [], reasons: [] };
  const id = String(obj.spec.id);
  const uiKey = keys.nodeUiName(id);
  const uiName = state.nodeUiName.get(id);
  if (uiName !== obj.metadata.name) {
    out.writes.push({ type: 'set', key: uiKey, value: obj.metadata.name });
    out.reasons.push(`${uiKey} is ${uiName === undefined ? 'missing' : JSON.stringify(uiName)}, want ${JSON.stringify(obj.metadata.name)}`);
  }
  if (obj.spec.flags !== undefined) {
    const flagsKey = keys.nodeFlags(id);
    const want = [...new Set(obj.spec.flags)].sort();
    const have = [...new Set(state.nodeFlags.get(id) ?? [])].sort();
    if (!jsonEqual(want, have)) {
      out.writes.push({ type: 'set-members', key: flagsKey, members: want });
      out.reasons.push(`${flagsKey} is [${have.join(' ')}], want [${want.join(' ')}]`);
    }
  }
  return out;
}

/** Where every known module instance sits once the plan is applied: id -> node id. */
function modulePlacement(state: ClusterState, desired: Map<string, DesiredObject>, deleted: Set<string>): Map<string, string> {
  const placement = new Map(state.moduleNode);
  for (const stored of state.objects.values()) {
    if (stored.object.kind === 'Module') placement.set(stored.object.metadata.name, String(stored.object.spec.node));
  }
  for (const d of desired.values()) {
    if (d.object.kind === 'Module') placement.set(d.object.metadata.name, String(d.object.spec.node));
  }
  for (const id of deleted) placement.delete(id);
  return placement;
}

function deleteChange(
  key: string,
  kind: Kind,
  id: string,
  stored: ManifestObject | undefined,
  state: ClusterState,
  applySet: string,
  policyOverride?: RemovalPolicy,
): Change {
  const change: Change = {
    action: 'delete',
    key,
    kind,
    id,
    reasons: [],
    patch: [],
    specChanged: false,
    bookkeeping: [],
    inventory: { add: null, remove: [applySet] },
  };
  if (!stored) {
    change.reasons.push(`listed in apply set ${JSON.stringify(applySet)} but has no stored object: only the inventory entry is removed`);
    if (kind === 'Module') change.dataPolicy = 'preserved';
    return change;
  }
  const before = canonicalize(stored);
  change.before = before;
  change.reasons.push(`no longer in the manifests of apply set ${JSON.stringify(applySet)}`);
  if (before.kind === 'Module') {
    const policy = policyOverride ?? before.spec.removalPolicy ?? 'Preserve';
    change.dataPolicy = policy === 'Delete' ? 'deleted' : 'preserved';
    change.reasons.push(policy === 'Delete' ? 'removalPolicy is Delete: the instance home and volumes are erased' : 'removalPolicy is Preserve: the instance home and volumes are kept');
    if (state.moduleNode.has(id)) change.bookkeeping.push({ type: 'hdel', key: keys.moduleNode(), field: id });
    if (state.moduleUuid.has(id)) change.bookkeeping.push({ type: 'hdel', key: keys.moduleUuid(), field: id });
  } else if (before.kind === 'Repository') {
    if (state.repositories.has(id)) change.bookkeeping.push({ type: 'del', key: keys.repository(id) }, { type: 'del', key: keys.repositoryCache(id) });
  }
  // Node: node/<id>/* keys describe a real machine and are left as they are.
  return change;
}
