/**
 * A pure simulation of what apply writes for a plan: the state a correct apply leaves behind.
 * Property tests use it to prove that planning again after an apply gives an empty plan, and the
 * Redis store's tests compare it with what was really written.
 */
import { Ns8ctlError } from '../errors.js';
import { keys } from '../state/keys.js';
import { cloneState } from '../state/cluster-state.js';
import type { ClusterState } from '../state/cluster-state.js';
import type { BookkeepingWrite, Plan } from './types.js';

/**
 * Returns a new state with `p` applied to `state` (which is not modified):
 * - create/update: the object is stored with the plan's generation and source file (the revision
 *   of an existing object is kept: only apply knows the git commit), recorded apply set = the
 *   plan's, finalizers kept; it joins the inventory and leaves the other ones; bookkeeping is written.
 * - delete: it leaves the inventory; with finalizers it is only marked `deleting`, otherwise it
 *   is removed and its bookkeeping (HDEL/DEL) is written.
 * Empty inventories, hashes and sets disappear, as in Redis.
 * @param uuidFor makes the uuid for `uuid-ensure` (tests pass a deterministic one).
 * @throws Ns8ctlError `internal` for a bookkeeping write on a key this model does not hold.
 */
export function applyPlanToState(state: ClusterState, p: Plan, uuidFor: (id: string) => string): ClusterState {
  const next = cloneState(state);
  for (const c of p.changes) {
    if (c.action === 'delete') {
      for (const s of c.inventory.remove) removeMember(next, s, c.key);
      const prev = next.objects.get(c.key);
      if (prev && prev.finalizers.length > 0) {
        prev.deleting = { removalPolicy: c.dataPolicy === 'deleted' ? 'Delete' : 'Preserve' };
      } else {
        next.objects.delete(c.key);
        applyWrites(next, c.bookkeeping, uuidFor);
      }
      continue;
    }
    if (!c.after) throw new Ns8ctlError('internal', `${c.action} of ${c.key} has no desired object`, { user: false });
    const prev = next.objects.get(c.key);
    next.objects.set(c.key, {
      key: c.key,
      object: structuredClone(c.after),
      generation: c.generation ?? (prev ? prev.generation : 1),
      source: c.source?.file ?? prev?.source ?? '',
      revision: prev?.revision ?? '',
      applySet: p.applySet,
      finalizers: prev ? [...prev.finalizers] : [],
    });
    if (c.inventory.add !== null) {
      const set = next.inventory.get(c.inventory.add) ?? new Set<string>();
      set.add(c.key);
      next.inventory.set(c.inventory.add, set);
    }
    for (const s of c.inventory.remove) removeMember(next, s, c.key);
    applyWrites(next, c.bookkeeping, uuidFor);
  }
  return next;
}

function removeMember(state: ClusterState, applySet: string, key: string): void {
  const set = state.inventory.get(applySet);
  if (!set) return;
  set.delete(key);
  if (set.size === 0) state.inventory.delete(applySet);
}

const REPOSITORY = /^cluster\/repository\/(.+)$/;
const NODE_UI_NAME = /^node\/([^/]+)\/ui_name$/;
const NODE_FLAGS = /^node\/([^/]+)\/flags$/;

function applyWrites(state: ClusterState, writes: readonly BookkeepingWrite[], uuidFor: (id: string) => string): void {
  for (const w of writes) {
    const unknown = (): never => {
      throw new Ns8ctlError('internal', `bookkeeping ${w.type} on ${w.key} is not modelled by ClusterState`, { user: false });
    };
    switch (w.type) {
      case 'hset': {
        if (w.key === keys.moduleNode()) state.moduleNode.set(w.field, w.value);
        else if (w.key === keys.moduleUuid()) state.moduleUuid.set(w.field, w.value);
        else {
          const name = REPOSITORY.exec(w.key)?.[1] ?? unknown();
          state.repositories.set(name, { ...(state.repositories.get(name) ?? {}), [w.field]: w.value });
        }
        break;
      }
      case 'hdel': {
        if (w.key === keys.moduleNode()) state.moduleNode.delete(w.field);
        else if (w.key === keys.moduleUuid()) state.moduleUuid.delete(w.field);
        else {
          const name = REPOSITORY.exec(w.key)?.[1] ?? unknown();
          const hash = { ...(state.repositories.get(name) ?? {}) };
          delete hash[w.field];
          if (Object.keys(hash).length) state.repositories.set(name, hash);
          else state.repositories.delete(name);
        }
        break;
      }
      case 'del': {
        const repo = REPOSITORY.exec(w.key)?.[1];
        const ui = NODE_UI_NAME.exec(w.key)?.[1];
        const flags = NODE_FLAGS.exec(w.key)?.[1];
        // The repository metadata cache is not part of ClusterState: expiring it changes nothing here.
        if (w.key.startsWith(keys.repositoryCache(''))) break;
        if (repo !== undefined) state.repositories.delete(repo);
        else if (ui !== undefined) state.nodeUiName.delete(ui);
        else if (flags !== undefined) state.nodeFlags.delete(flags);
        else unknown();
        break;
      }
      case 'set': {
        const node = NODE_UI_NAME.exec(w.key)?.[1] ?? unknown();
        state.nodeUiName.set(node, w.value);
        break;
      }
      case 'set-members': {
        const node = NODE_FLAGS.exec(w.key)?.[1] ?? unknown();
        if (w.members.length) state.nodeFlags.set(node, [...w.members]);
        else state.nodeFlags.delete(node);
        break;
      }
      case 'sequence-at-least': {
        const cur = state.moduleSequence.get(w.module);
        if (cur === undefined || cur < w.value) state.moduleSequence.set(w.module, w.value);
        break;
      }
      case 'uuid-ensure': {
        if (!state.moduleUuid.has(w.id)) state.moduleUuid.set(w.id, uuidFor(w.id));
        break;
      }
    }
  }
}
