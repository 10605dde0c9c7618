/**
 * Saved plans (Terraform's `plan -out` / `apply PLANFILE`): `ns8ctl diff --out FILE` stores the
 * exact atomic writes of a plan, with a precondition on every desired object the plan read (the
 * ones it changes and the unchanged ones of its manifests); `ns8ctl apply --plan FILE` runs those
 * writes and nothing else. When desired state moved since (another apply, the controller, a
 * delete), the preconditions fail and nothing is written: the plan is stale (exit code 3) and is
 * never silently re-planned. The file holds spec values in clear (secrets too, as Terraform's
 * plan files do): it is written 0600.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { ConflictError, Ns8ctlError } from '../errors.js';
import { objectId, objectKey } from '../manifest/types.js';
import { canonicalJson } from '../plan/canonical.js';
import type { Plan } from '../plan/types.js';
import { keys } from '../state/keys.js';
import { executeWrites, type WriteOp } from '../state/write-state.js';
import type { PreparedPlan } from './pipeline.js';
import { findSourceRefreshes, planToWrites, sourceRefreshWrites, storedObjectJson, storedSource } from './to-writes.js';

export const SAVED_PLAN_KIND = 'SavedPlan';
const API_VERSION = 'ns8ctl.nethserver.org/v1';
/** Exit code of `apply --plan` when desired state changed since the plan was made. */
export const STALE_PLAN_EXIT_CODE = 3;

export interface SavedPlan {
  apiVersion: typeof API_VERSION;
  kind: typeof SAVED_PLAN_KIND;
  createdAt: string;
  applySet: string;
  prune: boolean;
  /** The plan as `diff -o json` prints it (secrets masked). */
  plan: Record<string, unknown>;
  /** The plan as `diff` prints it (masked, no colour), printed again by `apply --plan`. */
  text: string;
  /** How many objects the plan changes (0: applying it only checks that nothing moved). */
  changes: number;
  /** The writes, preconditions first. */
  ops: WriteOp[];
  /** sha256 of the canonical document without this field: a damaged or edited file is refused. */
  digest: string;
}

/** sha256 of the canonical plan document without its digest. */
const digestOf = (saved: Omit<SavedPlan, 'digest'> & { digest?: unknown }): string => {
  const { digest: _ignored, ...rest } = saved;
  return createHash('sha256').update(canonicalJson(rest)).digest('hex');
};

/**
 * The saved form of `prepared`: planToWrites' ops (with the sources of moved manifests), plus a
 * precondition per unchanged desired object, so that any change to what the plan read makes it
 * stale. `render` gives the masked text and JSON of the plan. Pure but for `revisionOf`.
 */
export function makeSavedPlan(
  prepared: PreparedPlan,
  opts: { applySet: string; prune: boolean; revisionOf: (file: string) => string; now: Date; render: (plan: Plan) => { text: string; json: Record<string, unknown> } },
): SavedPlan {
  const { plan, state, desired } = prepared;
  const refreshes = findSourceRefreshes(desired, plan, state);
  const writes = [...planToWrites(plan, state, { revisionOf: opts.revisionOf, sourceOf: storedSource }), ...sourceRefreshWrites(refreshes, state, opts.revisionOf)];
  const changed = new Set(plan.changes.map((c) => c.key));
  const unchanged: WriteOp[] = [];
  for (const d of desired) {
    const key = objectKey(d.object);
    if (changed.has(key)) continue;
    const stored = state.objects.get(key);
    unchanged.push({ op: 'expect', key: keys.desired(d.object.kind, objectId(d.object)), object: stored ? storedObjectJson(stored.object) : '', label: key });
  }
  // Preconditions are checked before any write, wherever they are in the list; first is clearer.
  const ops = [...writes.filter((o) => o.op === 'expect'), ...unchanged, ...writes.filter((o) => o.op !== 'expect')];
  const shown = opts.render(plan);
  const doc = { apiVersion: API_VERSION, kind: SAVED_PLAN_KIND, createdAt: opts.now.toISOString(), applySet: opts.applySet, prune: opts.prune, plan: shown.json, text: shown.text, changes: plan.changes.length, ops } as const;
  return { ...doc, digest: digestOf(doc) };
}

/** Writes the plan file atomically, mode 0600 (it holds secrets in clear). */
export async function writeSavedPlan(file: string, saved: SavedPlan): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  try {
    await fs.writeFile(tmp, JSON.stringify(saved, null, 2) + '\n', { mode: 0o600, flag: 'wx' });
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw new Ns8ctlError('saved_plan_write_failed', `cannot write the plan to ${file}: ${(err as Error).message}`, { cause: err, user: true });
  }
}

/**
 * Reads and checks a plan file.
 * @throws Ns8ctlError `saved_plan_invalid` naming the file and what is wrong (not JSON, not a
 *   saved plan, digest mismatch: damaged or edited).
 */
export async function readSavedPlan(file: string): Promise<SavedPlan> {
  const bad = (why: string): Ns8ctlError => new Ns8ctlError('saved_plan_invalid', `${file}: ${why}; make a new plan with: ns8ctl diff -f PATH --out ${file}`, { user: true });
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    throw new Ns8ctlError('saved_plan_invalid', `cannot read the plan ${file}: ${(err as Error).message}`, { cause: err, user: true });
  }
  let v: Partial<SavedPlan>;
  try {
    v = JSON.parse(text) as Partial<SavedPlan>;
  } catch {
    throw bad('not a saved plan (not JSON)');
  }
  if (!v || typeof v !== 'object' || v.kind !== SAVED_PLAN_KIND || v.apiVersion !== API_VERSION) throw bad(`not a saved plan (kind must be ${SAVED_PLAN_KIND}, apiVersion ${API_VERSION})`);
  if (!Array.isArray(v.ops) || typeof v.digest !== 'string' || typeof v.text !== 'string' || typeof v.applySet !== 'string') throw bad('the saved plan is incomplete (ops, digest, text, applySet)');
  if (digestOf(v as SavedPlan) !== v.digest) throw bad('the saved plan does not match its digest (the file was damaged or edited)');
  return v as SavedPlan;
}

/**
 * Runs the saved writes atomically.
 * @throws Ns8ctlError `plan_stale` (exit code 3) naming the object that changed since the plan
 *   was made; nothing is written then.
 */
export async function applySavedPlan(saved: SavedPlan, redis: Parameters<typeof executeWrites>[0]): Promise<void> {
  try {
    await executeWrites(redis, saved.ops);
  } catch (err) {
    if (!(err instanceof ConflictError)) throw err;
    const label = /^(\S+) was changed/.exec(err.message)?.[1] ?? 'an object';
    throw new Ns8ctlError('plan_stale', `the saved plan is stale: ${label} changed in desired state since the plan was made (${saved.createdAt}); nothing was written. Make a new plan (ns8ctl diff -f PATH --out FILE), review it, and apply that one`, {
      cause: err,
      user: true,
      exitCode: STALE_PLAN_EXIT_CODE,
    });
  }
}
