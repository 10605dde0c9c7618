/**
 * The load and validate stages of the pipeline, apart so that `validate` loads only them (no
 * planner, resolver or write path): manifests from files, directories or stdin, validated against
 * the schemas and, with a Redis, the cluster's facts (known nodes and instances).
 */
import type { Redis } from 'ioredis';
import type { DocumentLocator } from '../configuration/configuration-validation.js';
import { ManifestError } from '../errors.js';
import { loadManifests, type LoadedDocument, type LoadResult } from '../manifest/load.js';
import { locate } from '../manifest/locate.js';
import { moduleNameOf, type DesiredObject, type ModuleSpec } from '../manifest/types.js';
import { validateManifests } from '../manifest/validate.js';
import type { ClusterState } from '../state/cluster-state.js';
import { readClusterState, readNodeRecords, type ReadScope } from '../state/read-state.js';

/** The document each validated object came from (set by loadAndValidate), for precise diagnostics. */
const documentOf = new WeakMap<object, LoadedDocument>();

/**
 * Locates a pointer in the loaded document of a desired object (one returned by
 * loadAndValidate); falls back to the document start for any other object. Pure lookup.
 */
export const locateInDocument: DocumentLocator = (d, pointer, mode) => {
  const doc = documentOf.get(d);
  if (!doc) return { file: d.source.file, line: d.source.line, col: d.source.col };
  const pos = locate(doc.doc, doc.lineCounter, pointer, mode);
  return { file: doc.source.file, line: pos.line, col: pos.col };
};

/** `PlanOptions.locate` for `plan()`: the value a pointer designates, in the object's loaded document. */
export const locateDesired = (d: DesiredObject, pointer: string): { file: string; line: number; col: number } => locateInDocument(d, pointer, 'value');

/**
 * Best-effort names from raw documents, so one read fetches the NS8 keys they will need,
 * including the running image of every Module instance they name (for the resolution step).
 */
export function scopeOf(loaded: LoadResult): ReadScope {
  const modules: string[] = [];
  const repositories: string[] = [];
  const nodes: string[] = [];
  const instances: string[] = [];
  for (const d of loaded.documents) {
    const v = d.value as { kind?: unknown; metadata?: { name?: unknown }; spec?: Record<string, unknown> } | null;
    if (!v || typeof v !== 'object') continue;
    if (v.kind === 'Module' && v.spec) {
      const name = moduleNameOf({ ...(typeof v.spec.module === 'string' ? { module: v.spec.module } : {}), ...(typeof v.spec.image === 'string' ? { image: v.spec.image } : {}) } as ModuleSpec);
      if (name) modules.push(name);
      if (typeof v.metadata?.name === 'string') instances.push(v.metadata.name);
      // Its node's flags (nomodules) decide whether it may be placed there.
      if (typeof v.spec.node === 'number') nodes.push(String(v.spec.node));
    } else if (v.kind === 'Repository' && typeof v.metadata?.name === 'string') repositories.push(v.metadata.name);
    else if (v.kind === 'Node' && v.spec && v.spec.id !== undefined) nodes.push(String(v.spec.id));
  }
  return { modules, repositories, nodes, instances };
}

/** Instances the cluster has: Modules in desired state, and those NS8 places (`cluster/module_node`). */
export function knownModulesOf(state: ClusterState): string[] {
  const ids = new Set(state.moduleNode.keys());
  for (const k of state.objects.keys()) if (k.startsWith('Module/')) ids.add(k.slice('Module/'.length));
  return [...ids].sort();
}

/** BackupDestinations in desired state that are not being deleted: what a schedule or restoreFrom may name. */
export function knownBackupDestinationsOf(state: ClusterState): string[] {
  const out: string[] = [];
  for (const o of state.objects.values()) if (o.object.kind === 'BackupDestination' && !o.deleting) out.push(o.object.metadata.name);
  return out.sort();
}

/** Nodes the cluster knows: Node objects in desired state, plus NS8 node records (`records`). */
export function knownNodesOf(state: ClusterState, records: readonly number[] = []): number[] {
  const out = new Set<number>(records);
  for (const o of state.objects.values()) if (o.object.kind === 'Node' && !o.deleting) out.add(o.object.spec.id);
  return [...out].sort((a, b) => a - b);
}

/** Start of the loader's message for a directory without manifest files. */
export const EMPTY_DIRECTORY = 'directory has no manifest files';

/**
 * Loads and validates manifests against the live state; throws ManifestError listing every problem.
 * `allowEmpty`: true accepts directories without manifest files (an empty set of objects: with
 * prune, everything of the apply set goes); false refuses them naming `--allow-empty`; undefined
 * refuses them as the loader says.
 */
export async function loadAndValidate(
  paths: string[],
  redis: Redis | undefined,
  opts: { stdin?: () => Promise<string>; allowEmpty?: boolean } = {},
): Promise<{ desired: DesiredObject[]; state: ClusterState | undefined; loaded: LoadResult }> {
  const raw = await loadManifests(paths, opts.stdin ? { stdin: opts.stdin } : {});
  const loaded: LoadResult =
    opts.allowEmpty === undefined
      ? raw
      : {
          ...raw,
          diagnostics: raw.diagnostics.flatMap((d) => {
            if (!d.message.startsWith(EMPTY_DIRECTORY)) return [d];
            return opts.allowEmpty ? [] : [{ ...d, message: `${d.message}; to remove the last objects of the apply set, apply it with --prune --allow-empty` }];
          }),
        };
  const state = redis ? await readClusterState(redis, scopeOf(loaded)) : undefined;
  const records = redis ? await readNodeRecords(redis) : [];
  const result = validateManifests(loaded, state ? { knownNodes: knownNodesOf(state, records), knownModules: knownModulesOf(state), knownBackupDestinations: knownBackupDestinationsOf(state) } : undefined);
  const diagnostics = result.diagnostics; // includes the load diagnostics, sorted
  if (diagnostics.length > 0) throw new ManifestError(diagnostics);
  const docs = new Map(loaded.documents.map((d) => [`${d.source.file}\u0000${d.source.doc}`, d] as const));
  for (const o of result.objects) {
    const doc = docs.get(`${o.source.file}\u0000${o.source.doc}`);
    if (doc) documentOf.set(o, doc);
  }
  return { desired: result.objects, state, loaded };
}

