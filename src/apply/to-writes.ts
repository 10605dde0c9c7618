import { randomUUID } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { Ns8ctlError } from '../errors.js';
import { objectKey, type DesiredObject, type ManifestObject } from '../manifest/types.js';
import { canonicalize } from '../runtime/canonical.js';
import { parseKey } from '../plan/planner.js';
import type { BookkeepingWrite, Plan } from '../plan/types.js';
import type { ClusterState, DeletionMark } from '../state/cluster-state.js';
import { keys } from '../state/keys.js';
import type { WriteOp } from '../state/write-state.js';

/** The exact string stored in a desired hash's `object` field: canonical (sorted-key) JSON. */
export function storedObjectJson(object: ManifestObject): string {
  return JSON.stringify(canonicalize(object));
}

/**
 * The form a source file is stored in (`source` of `ns8ctl/desired/<kind>/<id>`): an absolute
 * path, resolved against `cwd` (the directory the manifests were loaded from), so that it names
 * the same file whatever directory a later command runs in. `-` (stdin), pseudo-sources in
 * parentheses (`(add-module)`) and the empty string are kept as they are. Idempotent.
 */
export function storedSource(file: string, cwd: string = process.cwd()): string {
  if (file === '' || file === '-' || file.startsWith('(')) return file;
  return path.resolve(cwd, file);
}

export interface WriteContext {
  /** Git commit per source file (`` when none). */
  revisionOf: (file: string) => string;
  /** Stored form of a source file (default `storedSource`: absolute). */
  sourceOf?: (file: string) => string;
  /** New uuid4 for `uuid-ensure` (injected for tests). */
  newUuid?: () => string;
  /** Who asks for deletions (`by` of the deletion mark); default `defaultActor()` (user@host). */
  actor?: string;
  /** Time of the request (`at` of the deletion mark); default now. */
  now?: Date;
  /**
   * Why the plan's deletes are asked for (`why` of the deletion mark); default: `pruned: no longer
   * in the manifests of apply set <set>` for a prune, `ns8ctl delete` otherwise.
   */
  why?: string;
}

/** `user@host` of this process: who a deletion mark says asked for it. */
export function defaultActor(): string {
  let user = process.env.USER ?? '';
  try {
    user = os.userInfo().username;
  } catch {
    // A uid without a passwd entry (containers): fall back to $USER, then the uid.
  }
  return `${user || `uid ${process.getuid?.() ?? '?'}`}@${os.hostname()}`;
}

/**
 * The precondition on one object that a write depends on: its stored JSON, recorded apply set,
 * deletion mark and the apply sets whose inventory lists it, as `state` holds them. A write with it
 * fails (nothing written) when any of these moved since `state` was read.
 */
export function expectOp(state: ClusterState, key: string): WriteOp {
  const parsed = parseKey(key);
  if (!parsed) throw new Ns8ctlError('internal', `not an object key: ${key}`, { user: false });
  const stored = state.objects.get(key);
  const inventories = [...state.inventory].filter(([, members]) => members.has(key)).map(([name]) => name).sort();
  return {
    op: 'expect', key: keys.desired(parsed.kind, parsed.id), label: key,
    object: stored ? (stored.objectJson ?? storedObjectJson(stored.object)) : '',
    applyset: stored ? stored.applySet : '',
    deleting: stored?.deleting ? (stored.deletingJson ?? JSON.stringify(stored.deleting)) : '',
    member: key, inventories,
  };
}

function bookkeepingOp(w: BookkeepingWrite, newUuid: () => string): WriteOp {
  switch (w.type) {
    case 'hset':
      return { op: 'hset', key: w.key, field: w.field, value: w.value };
    case 'hdel':
      return { op: 'hdel', key: w.key, field: w.field };
    case 'del':
      return { op: 'del', key: w.key };
    case 'set':
      return { op: 'set', key: w.key, value: w.value };
    case 'set-members':
      return { op: 'sreplace', key: w.key, members: [...w.members] };
    case 'sequence-at-least':
      return { op: 'atleast', key: w.key, value: w.value };
    case 'uuid-ensure':
      return { op: 'hsetnx', key: w.key, field: w.id, value: newUuid() };
  }
}

/**
 * Turns a plan into the ops of one atomic Redis script: first a precondition per changed object
 * (expectOp: its stored form, apply set, deletion mark and inventory membership must still be what
 * the plan was made from), then the object, bookkeeping and inventory writes. Bookkeeping of
 * deletes runs only when the object really goes (no finalizers); otherwise the object gets the
 * deletion mark `{removalPolicy, by, at, why}` (`ctx.actor`, `ctx.now`, `ctx.why`).
 */
export function planToWrites(plan: Plan, state: ClusterState, ctx: WriteContext): WriteOp[] {
  const newUuid = ctx.newUuid ?? randomUUID;
  const ops: WriteOp[] = [];
  for (const c of plan.changes) ops.push(expectOp(state, c.key));
  const by = ctx.actor ?? defaultActor();
  const at = (ctx.now ?? new Date()).toISOString();
  const why = ctx.why ?? (plan.prune ? `pruned: no longer in the manifests of apply set ${plan.applySet}` : 'ns8ctl delete');
  for (const c of plan.changes) {
    const hkey = keys.desired(c.kind, c.id);
    const index = keys.desiredIndex(c.kind);
    if (c.action === 'delete') {
      const also = c.bookkeeping.map((w) => {
        if (w.type === 'hdel') return { key: w.key, field: w.field };
        if (w.type === 'del') return { key: w.key };
        throw new Ns8ctlError('internal', `planner asked for a ${w.type} on delete of ${c.key}; only hdel/del are allowed`, { user: false });
      });
      const mark: DeletionMark = { removalPolicy: c.dataPolicy === 'deleted' ? 'Delete' : 'Preserve', by, at, why };
      ops.push({ op: 'delete', key: hkey, index, id: c.id, deleting: JSON.stringify(mark), also });
    } else {
      if (!c.after) throw new Ns8ctlError('internal', `planned ${c.action} of ${c.key} has no desired object`, { user: false });
      const file = c.source?.file ?? '';
      ops.push({
        op: 'put', key: hkey, index, id: c.id, object: storedObjectJson(c.after), bump: c.specChanged,
        source: (ctx.sourceOf ?? storedSource)(file), revision: file ? ctx.revisionOf(file) : '', applyset: plan.applySet,
      });
      for (const w of c.bookkeeping) ops.push(bookkeepingOp(w, newUuid));
    }
    if (c.inventory.add) {
      ops.push({ op: 'sadd', key: keys.inventory(c.inventory.add), member: c.key });
      ops.push({ op: 'sadd', key: keys.inventories(), member: c.inventory.add });
    }
    for (const s of c.inventory.remove) ops.push({ op: 'srem', key: keys.inventory(s), member: c.key });
  }
  return ops;
}

/** A desired object the plan leaves alone whose stored source is not where it was loaded from now. */
export interface SourceRefresh {
  /** `Kind/id`. */
  key: string;
  /** The loaded file, as the loader named it. */
  file: string;
  /** Stored source now, and what it becomes (stored form). */
  from: string;
  to: string;
}

/**
 * Desired objects whose manifest moved (or was first recorded in another form, such as a
 * relative path) while their content did not change: stored, not being removed, without a
 * change or block in `plan`, and `sourceOf(file)` differs from the stored `source`. Pure.
 */
export function findSourceRefreshes(desired: readonly DesiredObject[], plan: Plan, state: ClusterState, sourceOf: (file: string) => string = storedSource): SourceRefresh[] {
  const planned = new Set([...plan.changes.map((c) => c.key), ...plan.blocked.map((b) => b.key)]);
  const out: SourceRefresh[] = [];
  for (const d of desired) {
    const key = objectKey(d.object);
    if (planned.has(key)) continue;
    const stored = state.objects.get(key);
    if (!stored || stored.deleting) continue;
    const to = sourceOf(d.source.file);
    if (stored.source !== to) out.push({ key, file: d.source.file, from: stored.source, to });
  }
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/**
 * The writes of `refreshes`: per object, a precondition on its stored object (a concurrent change
 * makes the whole apply retry), then `source` and `revision` of its hash. The generation is left
 * alone and nothing is published: the desired object did not change.
 */
export function sourceRefreshWrites(refreshes: readonly SourceRefresh[], state: ClusterState, revisionOf: (file: string) => string): WriteOp[] {
  const ops: WriteOp[] = [];
  for (const r of refreshes) {
    const stored = state.objects.get(r.key);
    const parsed = parseKey(r.key);
    if (!stored || !parsed) continue;
    const hkey = keys.desired(parsed.kind, parsed.id);
    ops.push(expectOp(state, r.key));
    ops.push({ op: 'hset', key: hkey, field: 'source', value: r.to });
    ops.push({ op: 'hset', key: hkey, field: 'revision', value: r.file ? revisionOf(r.file) : '' });
  }
  return ops;
}
