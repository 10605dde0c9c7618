import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { applyPlan, checkApplicable, knownNodesOf, resolvePlan } from '../../apply/pipeline.js';
import { knownBackupDestinationsOf } from '../../apply/load-validate.js';
import { defaultActor, planToWrites, storedSource } from '../../apply/to-writes.js';
import { ConflictError, NotFoundError, RedisError, RefusedError, UsageError } from '../../errors.js';
import { parseManifestText } from '../../manifest/load.js';
import { assertObjectId } from '../../manifest/names.js';
import { API_VERSION, moduleNameOf, type Kind, type ModuleObject, type ModuleSpec } from '../../manifest/types.js';
import { validateManifests } from '../../manifest/validate.js';
import { plan as makePlan, planDeletion } from '../../plan/planner.js';
import { renderPlanText } from '../../plan/render.js';
import { keys } from '../../state/keys.js';
import { readClusterState, readNodeRecords } from '../../state/read-state.js';
import { executeWrites, type WriteOp } from '../../state/write-state.js';
import type { ClusterState } from '../../state/cluster-state.js';
import type { Redis } from 'ioredis';
import { requestOrphanRemoval } from '../../node-agent/removal-request.js';
import type { CliDeps } from '../deps.js';
import { parseOutput, renderJson, useColor } from '../../runtime/output.js';
import { resourceKind } from './get.js';

export interface DeleteOptions {
  noPreserve?: boolean;
  output?: string;
  manifests?: string;
}

/** True when a node runs instance `id`: NS8 places it (`cluster/module_node`) or an agent reports on it. */
async function isRunningSomewhere(redis: Redis, state: ClusterState, id: string): Promise<boolean> {
  if (state.moduleNode.has(id)) return true;
  return (await redis.exists(keys.moduleStatus(id))) === 1;
}

/**
 * `ns8ctl delete module|repository|node ID`: removes one object from desired state, or (with
 * finalizers) marks it for deletion, recording who (`user@host`), when and why (`why`: `ns8ctl
 * delete` or `remove-module`). The write has preconditions on the object as read (content, apply
 * set, inventories, deletion mark): when another writer changed it in between, nothing is written
 * and the ConflictError names the object and the change.
 */
export async function deleteCommand(resource: string, id: string, opts: DeleteOptions, deps: CliDeps, why = 'ns8ctl delete'): Promise<number> {
  const kind: Kind = resourceKind(resource);
  assertObjectId(kind, id); // the id names a file under --manifests: no '/', no '..'
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  const { redis } = await deps.connect();
  const state = await readClusterState(redis);
  const key = `${kind}/${id}`;
  const stored = state.objects.get(key);
  if (!stored && kind === 'Module' && (await isRunningSomewhere(redis, state, id))) {
    // An orphan (a node runs it, desired state has no object): the explicit, recorded request the
    // node agent honours; absence alone never removes an instance.
    const mark = await requestOrphanRemoval(redis, id, { removalPolicy: opts.noPreserve ? 'Delete' : 'Preserve', by: defaultActor(), why: `${why} (orphan)` });
    if (format === 'json') deps.stdout(renderJson({ deleted: key, orphan: true, dataPolicy: mark.removalPolicy, finalizers: [] }));
    else deps.stderr(`${key} has no desired object but a node runs it: removal requested (${mark.removalPolicy === 'Delete' ? 'DATA DELETED' : 'data preserved'}; by ${mark.by}); its node agent removes it.\n`);
    return 0;
  }
  if (!stored) throw new NotFoundError(`${kind.toLowerCase()} "${id}" not found in desired state; see \`ns8ctl get ${kind.toLowerCase()}s\``);
  const p = planDeletion(state, key, opts.noPreserve ? { removalPolicy: 'Delete' } : {});
  if (p.changes.length === 0 && p.blocked.length === 0) {
    deps.stderr(`${key} is already being removed; waiting for ${stored.finalizers.join(', ') || 'its finalizers'}.\n`);
    return 0;
  }
  const result = await applyPlan({ desired: [], state, plan: p }, redis, { applySet: 'default', prune: false, forcePrune: true, runner: deps.runner, maxAttempts: 1, why });
  if (opts.manifests) {
    // The id names a file: never one outside DIR, whatever Redis holds.
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(id)) throw new RefusedError('id_invalid', `${key} was deleted, but its manifest was not removed from ${opts.manifests}: the id is not a plain file name`);
    const file = path.join(opts.manifests, `${id}.yaml`);
    if (existsSync(file)) rmSync(file);
  }
  if (format === 'json') deps.stdout(renderJson({ deleted: key, dataPolicy: result.plan.changes[0]?.dataPolicy ?? null, finalizers: stored.finalizers }));
  else {
    deps.stdout(renderPlanText(result.plan, { color: useColor(deps.isTTY, deps.env) }));
    if (stored.finalizers.length > 0) deps.stderr(`${key} is marked for removal; ${stored.finalizers.join(', ')} will finish it.\n`);
  }
  return 0;
}

export interface AddModuleOptions {
  manifests?: string;
  output?: string;
  /** Further spec fields and labels of the new instance (backup verify: restoreFrom, removalPolicy). */
  spec?: Omit<ModuleSpec, 'module' | 'image' | 'node'>;
  labels?: Record<string, string>;
  /** Told the id taken, once the instance is in desired state. */
  onAdded?: (id: string) => void;
}

/** How many times add-module takes a new id after losing one to a concurrent writer. */
const ADD_MODULE_ATTEMPTS = 20;

/**
 * The number of the next instance of `module`: one above `cluster/module_sequence/<module>`
 * (`raw`, null when absent), skipping numbers whose id desired state or NS8 already has.
 * @throws RedisError `state_invalid` when the sequence is not an integer.
 */
function nextInstanceNumber(module: string, raw: string | null, state: ClusterState): number {
  if (raw !== null && !/^\d+$/.test(raw)) {
    throw new RedisError('state_invalid', `${keys.moduleSequence(module)} holds ${JSON.stringify(raw.slice(0, 40))}, not an integer: no instance id can be taken from it; nothing was written. Set it to the highest instance number of ${module} (or delete it), then try again`, { user: true });
  }
  let n = Number(raw ?? 0) + 1;
  for (let i = 0; i < 10_000 && (state.objects.has(`Module/${module}${n}`) || state.moduleNode.has(`${module}${n}`)); i++) n++;
  return n;
}

function writeManifestFile(dir: string, id: string, text: string): string {
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${id}.yaml`);
  writeFileSync(file + '.tmp', text);
  renameSync(file + '.tmp', file);
  return file;
}

/**
 * `ns8ctl add-module <module|image-url> <node_id> [--manifests DIR]`: the seeds' imperative
 * command as a thin wrapper: takes the next id of `cluster/module_sequence/<module>` (as NS8's
 * INCR), writes `<DIR>/<id>.yaml` when asked, and creates that one object. The id is taken in the
 * same atomic write that creates the object, with preconditions that the sequence and the object
 * are still as read: when a concurrent writer (an apply, another add-module) took that id first,
 * nothing is written and a new id is taken (up to ADD_MODULE_ATTEMPTS times), so add-module never
 * overwrites another writer's object and never reports an id another writer owns.
 * Bad input consumes no id.
 */
export async function addModuleCommand(ref: string, nodeArg: string, opts: AddModuleOptions, deps: CliDeps): Promise<number> {
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  const node = Number(nodeArg);
  if (!Number.isInteger(node) || node < 1) throw new UsageError(`node_id must be an integer >= 1, got "${nodeArg}"`);
  const spec = ref.includes('/') ? { image: ref } : { module: ref };
  const module = moduleNameOf(spec);
  if (!/^[a-z][a-z0-9_-]*$/.test(module)) throw new UsageError(`cannot derive a module name from "${ref}": expected a name like "dokuwiki" or an image URL like "ghcr.io/nethserver/dokuwiki:1.2.3"`);
  const { redis } = await deps.connect();
  const seqKey = keys.moduleSequence(module);
  let lastConflict: ConflictError | undefined;
  for (let attempt = 1; attempt <= ADD_MODULE_ATTEMPTS; attempt++) {
    const seqRaw = await redis.get(seqKey);
    const state = await readClusterState(redis, { modules: [module], nodes: [String(node)] });
    const knownNodes = knownNodesOf(state, await readNodeRecords(redis));
    const n = nextInstanceNumber(module, seqRaw, state);
    const id = `${module}${n}`;
    const object: ModuleObject = { apiVersion: API_VERSION, kind: 'Module', metadata: { name: id, ...(opts.labels ? { labels: opts.labels } : {}) }, spec: { ...spec, node, ...opts.spec } };
    const text = YAML.stringify(object);
    // Validated before any file or key is written, so bad input leaves nothing behind.
    const draft = validateManifests({ ...parseManifestText('(add-module)', text), files: ['(add-module)'] }, { knownNodes, knownBackupDestinations: knownBackupDestinationsOf(state) });
    if (draft.diagnostics.length > 0) throw new RefusedError('add_module_invalid', draft.diagnostics.map((d) => d.message).join('; '));
    const file = opts.manifests ? writeManifestFile(opts.manifests, id, text) : '(add-module)';
    try {
      const valid = validateManifests({ ...parseManifestText(file, text), files: [file] }, { knownNodes, knownBackupDestinations: knownBackupDestinationsOf(state) });
      const { plan: p, warnings } = await resolvePlan(redis, valid.objects, state, makePlan(valid.objects, state, { applySet: 'default', prune: false }));
      checkApplicable(p, { forcePrune: false });
      if (attempt === 1) for (const w of warnings) deps.stderr(`warning: ${w}\n`);
      const ops: WriteOp[] = [
        { op: 'expect-value', key: seqKey, value: seqRaw ?? '', label: `Module/${id}` },
        ...planToWrites(p, state, { revisionOf: () => '', sourceOf: storedSource }),
        { op: 'atleast', key: seqKey, value: n },
      ];
      await executeWrites(redis, ops);
      opts.onAdded?.(id);
      if (format === 'json') deps.stdout(renderJson({ module_id: id, module, node, ...(opts.manifests ? { file } : {}), generation: p.changes[0]?.generation ?? 1 }));
      else deps.stdout(`${id} added on node ${node}${opts.manifests ? ` (manifest: ${file})` : ''}${attempt > 1 ? ` (after ${attempt - 1} id${attempt === 2 ? '' : 's'} taken by concurrent writers)` : ''}\n`);
      return 0;
    } catch (err) {
      if (opts.manifests) rmSync(file, { force: true });
      if (!(err instanceof ConflictError)) throw err;
      lastConflict = err;
      deps.stderr(`${err.message}; taking a new id\n`);
    }
  }
  throw new ConflictError(`add-module gave up after ${ADD_MODULE_ATTEMPTS} attempts: concurrent writers kept taking the next ${module} id (last: ${lastConflict?.message ?? 'unknown'}); nothing was written`);
}

/** `ns8ctl remove-module [--no-preserve] <id>`: deletes the module's desired object. */
export async function removeModuleCommand(id: string, opts: DeleteOptions, deps: CliDeps): Promise<number> {
  return deleteCommand('module', id, opts, deps, 'remove-module');
}
