import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import type { Redis } from 'ioredis';
import { applyPlan, knownNodesOf, resolvePlan } from '../../apply/pipeline.js';
import { NotFoundError, RefusedError, UsageError } from '../../errors.js';
import { parseManifestText } from '../../manifest/load.js';
import { assertObjectId } from '../../manifest/names.js';
import { API_VERSION, moduleNameOf, type Kind, type ModuleObject } from '../../manifest/types.js';
import { validateManifests } from '../../manifest/validate.js';
import { plan as makePlan, planDeletion } from '../../plan/planner.js';
import { renderPlanText } from '../../plan/render.js';
import { keys } from '../../state/keys.js';
import { readClusterState, readNodeRecords } from '../../state/read-state.js';
import type { CliDeps } from '../deps.js';
import { parseOutput, renderJson, useColor } from '../output.js';
import { resourceKind } from './get.js';

export interface DeleteOptions {
  noPreserve?: boolean;
  output?: string;
  manifests?: string;
}

/** `ns8ctl delete module|repository|node ID`: removes one object from desired state. */
export async function deleteCommand(resource: string, id: string, opts: DeleteOptions, deps: CliDeps): Promise<number> {
  const kind: Kind = resourceKind(resource);
  assertObjectId(kind, id); // the id names a file under --manifests: no '/', no '..'
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  const { redis } = await deps.connect();
  const state = await readClusterState(redis);
  const key = `${kind}/${id}`;
  const stored = state.objects.get(key);
  if (!stored) throw new NotFoundError(`${kind.toLowerCase()} "${id}" not found in desired state; see \`ns8ctl get ${kind.toLowerCase()}s\``);
  const p = planDeletion(state, key, opts.noPreserve ? { removalPolicy: 'Delete' } : {});
  if (p.changes.length === 0 && p.blocked.length === 0) {
    deps.stderr(`${key} is already being removed; waiting for ${stored.finalizers.join(', ') || 'its finalizers'}.\n`);
    return 0;
  }
  const result = await applyPlan({ desired: [], state, plan: p }, redis, { applySet: 'default', prune: false, forcePrune: true, runner: deps.runner, maxAttempts: 1 });
  if (opts.manifests) {
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
}

async function nextInstanceId(redis: Redis, module: string): Promise<string> {
  const n = await redis.incr(keys.moduleSequence(module));
  return `${module}${n}`;
}

/**
 * `ns8ctl add-module <module|image-url> <node_id> [--manifests DIR]`: the seeds' imperative
 * command as a thin wrapper: INCR `cluster/module_sequence/<module>` for the id (as NS8), write
 * `<DIR>/<id>.yaml` when asked, and apply that one object.
 */
export async function addModuleCommand(ref: string, nodeArg: string, opts: AddModuleOptions, deps: CliDeps): Promise<number> {
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  const node = Number(nodeArg);
  if (!Number.isInteger(node) || node < 1) throw new UsageError(`node_id must be an integer >= 1, got "${nodeArg}"`);
  const spec = ref.includes('/') ? { image: ref } : { module: ref };
  const module = moduleNameOf(spec);
  if (!/^[a-z][a-z0-9_-]*$/.test(module)) throw new UsageError(`cannot derive a module name from "${ref}": expected a name like "dokuwiki" or an image URL like "ghcr.io/nethserver/dokuwiki:1.2.3"`);
  const { redis } = await deps.connect();
  const before = await readClusterState(redis, { modules: [module] });
  // Validate before taking an id, so bad input consumes nothing.
  const draft: ModuleObject = { apiVersion: API_VERSION, kind: 'Module', metadata: { name: `${module}1` }, spec: { ...spec, node } };
  const check = validateManifests({ ...parseManifestText('(add-module)', YAML.stringify(draft)), files: ['(add-module)'] }, { knownNodes: knownNodesOf(before, await readNodeRecords(redis)) });
  if (check.diagnostics.length > 0) throw new RefusedError('add_module_invalid', check.diagnostics.map((d) => d.message).join('; '));
  const id = await nextInstanceId(redis, module);
  const object: ModuleObject = { ...draft, metadata: { name: id } };
  const text = YAML.stringify(object);
  let file = '(add-module)';
  if (opts.manifests) {
    mkdirSync(opts.manifests, { recursive: true });
    file = path.join(opts.manifests, `${id}.yaml`);
    writeFileSync(file + '.tmp', text);
    renameSync(file + '.tmp', file);
  }
  const loaded = { ...parseManifestText(file, text), files: [file] };
  const state = await readClusterState(redis, { modules: [module] });
  const valid = validateManifests(loaded, { knownNodes: knownNodesOf(state, await readNodeRecords(redis)) });
  const { plan: p, warnings } = await resolvePlan(redis, valid.objects, state, makePlan(valid.objects, state, { applySet: 'default', prune: false }));
  for (const w of warnings) deps.stderr(`warning: ${w}\n`);
  const result = await applyPlan({ desired: valid.objects, state, plan: p }, redis, { applySet: 'default', prune: false, forcePrune: false, runner: deps.runner });
  if (format === 'json') deps.stdout(renderJson({ module_id: id, module, node, ...(opts.manifests ? { file } : {}), generation: result.plan.changes[0]?.generation ?? 1 }));
  else deps.stdout(`${id} added on node ${node}${opts.manifests ? ` (manifest: ${file})` : ''}\n`);
  return 0;
}

/** `ns8ctl remove-module [--no-preserve] <id>`: deletes the module's desired object. */
export async function removeModuleCommand(id: string, opts: DeleteOptions, deps: CliDeps): Promise<number> {
  return deleteCommand('module', id, opts, deps);
}
