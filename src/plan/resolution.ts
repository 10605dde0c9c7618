/**
 * Plan-time image resolution, as a pure step after `plan()`: which image each desired Module
 * resolves to, which desired Modules cannot be resolved or exceed `org.nethserver.max-per-node`
 * (blocked), and which running instances the node agent will move to another version (update
 * notices). The catalog of available modules and the running images are observed beforehand
 * (src/apply/pipeline.ts) and passed in as data: no I/O, no clock. docs/plan.md describes it.
 */
import { moduleNameOf, objectKey, splitInstanceId, type DesiredObject, type ModuleObject, type ModuleSpec } from '../manifest/types.js';
import { RepositoryError } from '../repository/errors.js';
import { admitMaxPerNode, checkUpdate, findModules, resolveInCatalog, type AvailableModule, type Placement, type Resolution } from '../repository/resolve.js';
import { sortNatural } from '../runtime/canonical.js';
import { keys } from '../state/keys.js';
import { compareKeys } from './planner.js';
import { describeMove, MOVE_CODES, movesOf, preflightMoves, type MoveFacts, type MoveRequest } from './move-preflight.js';
import type { ClusterState } from '../state/cluster-state.js';
import type { BlockedChange, Change, Plan, ResolutionProblem, ResolvedImage, UpdateNotice } from './types.js';

/** The modules the enabled repositories offer, as `loadAvailable` returns them. */
export interface ResolutionCatalog {
  /** listAvailable's result, in priority order. */
  available: readonly AvailableModule[];
  /** Core version min-core and update checks compare with. */
  coreVersion: string;
  /** Repositories whose metadata could not be read (their modules are missing from `available`). */
  failures: readonly { repository: string; message: string }[];
}

/** What annotatePlan needs besides the plan: both optional. */
export interface ResolutionInputs {
  /**
   * The catalog. Without it, Modules naming a repository module (`spec.module`) are not resolved
   * (no `resolved`, no block, no update notice); full image URLs still are.
   */
  catalog?: ResolutionCatalog | undefined;
  /** Instance id -> image URL running now (as the node agent reports it). */
  running?: ReadonlyMap<string, string> | undefined;
  /**
   * Labels of full image URLs (`spec.image`), by resolved image URL, as observed offline (local
   * image storage; see src/apply/image-labels.ts). Used, after the catalog (same source and tag),
   * to enforce `org.nethserver.max-per-node` on Modules that name a full image URL.
   */
  imageLabels?: ReadonlyMap<string, Readonly<Record<string, string>>> | undefined;
  /**
   * What the preflight of moves needs (node records, module flags, node port ranges, core
   * version; see move-preflight.ts). Without it moves are checked for max-per-node only.
   */
  moves?: MoveFacts | undefined;
}

/** True when the spec names a repository module (`module: dokuwiki`) rather than a full image URL. */
export function usesRepository(spec: Pick<ModuleSpec, 'module' | 'image'>): boolean {
  return spec.image === undefined && spec.module !== undefined && !spec.module.includes('/');
}

type Outcome =
  /** `labels`: what max-per-node reads (repodata labels; for a full image URL, the catalog's or the observed image's). */
  | { kind: 'resolved'; resolution: Resolution; module: AvailableModule | undefined; labels: Readonly<Record<string, string>> | undefined }
  /** `definite`: the catalog is complete and still does not offer it (else a repository failed). */
  | { kind: 'error'; problem: ResolutionProblem; definite: boolean }
  | { kind: 'skipped' };

/**
 * Labels a repository publishes for image `source` at `tag` (a full image URL that is also in a
 * repository's catalog); undefined when no offered version matches. Pure.
 */
export function catalogLabels(available: readonly AvailableModule[], source: string, tag: string): Record<string, string> | undefined {
  for (const m of available) {
    if (m.source !== source) continue;
    const v = m.versions.find((x) => x.tag === tag);
    if (v) return v.labels;
  }
  return undefined;
}

function resolveSpec(spec: ModuleSpec, inputs: ResolutionInputs): Outcome {
  const { catalog } = inputs;
  const repo = usesRepository(spec);
  if (repo && !catalog) return { kind: 'skipped' };
  try {
    const failures = catalog?.failures ?? [];
    const resolution = resolveInCatalog(spec, repo && catalog ? catalog.available : [], repo ? failures.map((f) => f.message) : []);
    const module = repo && catalog ? findModules(catalog.available, resolution.module).find((m) => m.source === resolution.source && m.repository === resolution.repository) : undefined;
    const labels = resolution.labels ?? (catalog ? catalogLabels(catalog.available, resolution.source, resolution.tag) : undefined) ?? inputs.imageLabels?.get(resolution.image);
    return { kind: 'resolved', resolution, module, labels };
  } catch (err) {
    if (!(err instanceof RepositoryError)) throw err;
    const uncertain = (catalog?.failures.length ?? 0) > 0 && (err.code === 'module_not_found' || err.code === 'version_not_found');
    return { kind: 'error', problem: { code: err.code, message: err.message }, definite: !uncertain };
  }
}

function toResolved(r: Resolution): ResolvedImage {
  return { image: r.image, tag: r.tag, version: r.version ?? null, repository: r.repository ?? null, prerelease: r.prerelease };
}

const versionOf = (spec: ModuleSpec): string => (spec.version === undefined || spec.version.trim() === '' ? 'latest' : spec.version.trim());

/** True when the stored spec asks for the same module/image and version as the desired one. */
function sameSelection(a: ModuleSpec, b: ModuleSpec): boolean {
  return a.module === b.module && a.image === b.image && versionOf(a) === versionOf(b);
}

/** The tag of an image URL, or the URL itself when it has none. */
function tagOrImage(url: string, tag: string | undefined): string {
  return tag !== undefined && tag !== '' ? tag : url;
}

function tagOf(url: string): string | undefined {
  const at = url.indexOf('@');
  const rest = at >= 0 ? url.slice(0, at) : url;
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  return colon > slash ? rest.slice(colon + 1) : undefined;
}

/**
 * Adds image resolution to a plan made by `plan(desired, state, ...)` with the same desired
 * objects and state. Returns a new plan; the input is not modified. Rules (docs/plan.md):
 * - every desired Module is resolved (`resolveInCatalog`, the function the node agent resolves with too): `spec.image` as-is, `spec.module` through
 *   `inputs.catalog`. Module create/update changes carry `resolved` (or `resolutionError`);
 * - a Module that cannot be resolved while every repository was read (unknown module, no version
 *   in the range, invalid range) is blocked when it is new or its module/image/version changed;
 *   otherwise (a repository failed, or the selection is unchanged and the instance runs) nothing
 *   is blocked: its change carries `resolutionError`, or, without a change, the plan a warning;
 * - a move (a changed spec.node, see movesOf) the target node cannot take is blocked with a code
 *   (preflightMoves: unknown node, rootfull, min-core, ports; given `inputs.moves`), before
 *   max-per-node, so a refused move does not count on its target;
 * - `org.nethserver.max-per-node` of the resolved version is enforced with `admitMaxPerNode` over
 *   every instance placed after this plan (desired, stored, and NS8-recorded ones; existing
 *   instances first): a new instance (or one whose module changed) over the limit is blocked with
 *   the node, the limit and the occupants. A full image URL's labels come from the catalog (same
 *   source and tag) or else `inputs.imageLabels`; unknown labels mean no limit is checked;
 * - a desired Module whose resolved image differs from `inputs.running` gets an update notice
 *   (`plan.updates`), with `refused` when `checkUpdate` refuses it (min-from, min-core, downgrade,
 *   another module) or the Module is suspended.
 * Blocked Modules lose their change; `summary` is recomputed. Deterministic: the same input gives
 * a deep-equal plan.
 */
export function annotatePlan(p: Plan, desired: readonly DesiredObject[], state: ClusterState, inputs: ResolutionInputs): Plan {
  const alreadyBlocked = new Set(p.blocked.map((b) => b.key));
  const changeKeys = new Set(p.changes.filter((c) => c.kind === 'Module' && c.action !== 'delete').map((c) => c.key));
  const modules = sortNatural(
    desired.map((d) => d.object).filter((o): o is ModuleObject => o.kind === 'Module'),
    (m) => m.metadata.name,
  );
  const outcomes = new Map<string, Outcome>();
  const blocked: BlockedChange[] = [];
  const newlyBlocked = new Set<string>();
  const warnings: string[] = [];

  for (const m of modules) {
    const key = objectKey(m);
    if (alreadyBlocked.has(key)) continue;
    const outcome = resolveSpec(m.spec, inputs);
    if (outcome.kind === 'error') {
      const stored = state.objects.get(key)?.object;
      const changed = !stored || stored.kind !== 'Module' || !sameSelection(stored.spec, m.spec);
      if (outcome.definite && changed) {
        blocked.push({ key, message: `cannot resolve the image of ${m.metadata.name}: ${outcome.problem.message}` });
        newlyBlocked.add(key);
        continue;
      }
      // A change shows the problem itself (resolutionError); an unchanged Module needs a warning.
      if (!changeKeys.has(key)) {
        warnings.push(
          `${key}: image not resolved at plan time: ${outcome.problem.message}` +
            (outcome.definite ? '; its module and version did not change, so the instance is left as it is' : '; the node agent resolves it when it reconciles'),
        );
      }
    }
    outcomes.set(key, outcome);
  }

  const moves = movesOf(p);
  const preflight = moveRefusals(moves, outcomes, inputs.moves, new Set([...alreadyBlocked, ...newlyBlocked]));
  for (const b of preflight.blocked) {
    blocked.push(b);
    newlyBlocked.add(b.key);
  }
  warnings.push(...preflight.warnings);
  const movesById = new Map(moves.map((m) => [m.id, m] as const));
  for (const b of maxPerNodeRefusals(modules, outcomes, alreadyBlocked, newlyBlocked, p, state, movesById)) {
    blocked.push(b);
    newlyBlocked.add(b.key);
  }

  const changes: Change[] = [];
  for (const c of p.changes) {
    if (newlyBlocked.has(c.key)) continue;
    const outcome = c.kind === 'Module' && c.action !== 'delete' ? outcomes.get(c.key) : undefined;
    if (outcome?.kind === 'resolved') changes.push({ ...c, resolved: toResolved(outcome.resolution) });
    else if (outcome?.kind === 'error') changes.push({ ...c, resolutionError: { ...outcome.problem } });
    else changes.push(c);
  }

  const updates: UpdateNotice[] = [];
  for (const m of modules) {
    const key = objectKey(m);
    const outcome = outcomes.get(key);
    if (newlyBlocked.has(key) || outcome?.kind !== 'resolved') continue;
    const notice = updateNotice(m, outcome, inputs);
    if (notice) updates.push(notice);
  }

  return {
    ...p,
    changes,
    blocked: [...p.blocked, ...blocked].sort((a, b) => compareKeys(a.key, b.key)),
    summary: {
      create: changes.filter((c) => c.action === 'create').length,
      update: changes.filter((c) => c.action === 'update').length,
      delete: changes.filter((c) => c.action === 'delete').length,
    },
    updates: [...(p.updates ?? []), ...updates],
    warnings: [...(p.warnings ?? []), ...warnings],
  };
}

function updateNotice(m: ModuleObject, outcome: Extract<Outcome, { kind: 'resolved' }>, inputs: ResolutionInputs): UpdateNotice | undefined {
  const id = m.metadata.name;
  const running = inputs.running?.get(id);
  const r = outcome.resolution;
  if (!running || running === r.image) return undefined;
  // Without a catalog only full image URLs are resolved; their labels are unknown, so min-core is not read.
  const coreVersion = inputs.catalog?.coreVersion ?? '0.0.0';
  const check = checkUpdate({ id, image: running }, { image: r.image, labels: r.labels }, { coreVersion, available: outcome.module });
  if (check.kind === 'none') return undefined;
  const notice: UpdateNotice = {
    key: objectKey(m),
    id,
    kind: check.kind,
    from: tagOrImage(running, tagOf(running)),
    fromImage: running,
    to: tagOrImage(r.image, r.tag),
    resolved: toResolved(r),
  };
  if (!check.ok) notice.refused = { code: check.code, message: check.message };
  else if (m.spec.suspend) notice.refused = { code: 'suspended', message: `${id} has spec.suspend: true: the node agent leaves it on ${notice.from} until it is resumed` };
  return notice;
}

/**
 * The preflight of `moves` (preflightMoves) with the labels each Module resolved to; nothing
 * without the facts. A move whose labels are unknown is checked on NS8's records only: a warning
 * says so.
 */
function moveRefusals(moves: readonly MoveRequest[], outcomes: ReadonlyMap<string, Outcome>, facts: MoveFacts | undefined, skip: ReadonlySet<string>): { blocked: BlockedChange[]; warnings: string[] } {
  if (!moves.length || !facts) return { blocked: [], warnings: [] };
  const labelsOf = (id: string): Readonly<Record<string, string>> | undefined => {
    const o = outcomes.get(`Module/${id}`);
    return o?.kind === 'resolved' ? o.labels : undefined;
  };
  const blocked = preflightMoves(moves, labelsOf, facts, skip);
  const refused = new Set(blocked.map((b) => b.key));
  const warnings = moves
    .filter((m) => !skip.has(m.key) && !refused.has(m.key) && labelsOf(m.id) === undefined)
    .map((m) => `${m.key}: move to node ${m.to} checked without its image labels (not found): rootfull from ${keys.moduleFlags(m.id)} and the port demand from the ranges it holds on node ${m.from}; min-core not checked`);
  return { blocked, warnings };
}

/** Blocked entries for desired Modules over their resolved version's max-per-node (moves named as such, with a code). */
function maxPerNodeRefusals(
  modules: readonly ModuleObject[],
  outcomes: ReadonlyMap<string, Outcome>,
  alreadyBlocked: ReadonlySet<string>,
  newlyBlocked: ReadonlySet<string>,
  p: Plan,
  state: ClusterState,
  moves: ReadonlyMap<string, MoveRequest>,
): BlockedChange[] {
  const anyLimit = [...outcomes.values()].some((o) => o.kind === 'resolved' && o.labels?.['org.nethserver.max-per-node'] !== undefined);
  if (!anyLimit) return [];
  // Where each instance sits now (NS8's record, then ns8ctl's stored spec).
  const current = new Map<string, Placement>();
  for (const [id, node] of state.moduleNode) {
    const split = splitInstanceId(id);
    if (split && /^\d+$/.test(node)) current.set(id, { id, module: split.module, node: Number(node) });
  }
  for (const s of state.objects.values()) {
    if (s.object.kind === 'Module') current.set(s.object.metadata.name, { id: s.object.metadata.name, module: moduleNameOf(s.object.spec), node: s.object.spec.node });
  }
  // Instances this plan removes for good (no finalizer keeps them on their node).
  for (const c of p.changes) {
    if (c.action === 'delete' && c.kind === 'Module' && !state.objects.get(c.key)?.finalizers.length) current.delete(c.id);
  }
  const requests: (Placement & { labels?: Record<string, string> | undefined; existing?: boolean })[] = [];
  const candidates = new Set<string>();
  for (const m of modules) {
    const id = m.metadata.name;
    const key = objectKey(m);
    const here = current.get(id);
    current.delete(id);
    if (alreadyBlocked.has(key) || newlyBlocked.has(key)) {
      // Not changed by this plan: it stays where it is, if anywhere.
      if (here) requests.push({ ...here, existing: true });
      continue;
    }
    const outcome = outcomes.get(key);
    const existing = here !== undefined && here.node === m.spec.node && here.module === moduleNameOf(m.spec);
    const labels = outcome?.kind === 'resolved' && outcome.labels ? { ...outcome.labels } : undefined;
    requests.push({ id, module: moduleNameOf(m.spec), node: m.spec.node, labels, existing });
    if (!existing) candidates.add(id);
  }
  for (const other of current.values()) requests.push({ ...other, existing: true });
  const checks = admitMaxPerNode(requests);
  const out: BlockedChange[] = [];
  for (const id of sortNatural([...candidates], (c) => c)) {
    const check = checks.get(id);
    if (!check || check.ok) continue;
    const move = moves.get(id);
    // A move is a new placement on its target: the way out includes keeping it where it runs.
    if (move) out.push({ key: move.key, code: MOVE_CODES.maxPerNode, message: `${describeMove(move)}: ${check.message}, or set spec.node back to ${move.from} to keep it there` });
    else out.push({ key: `Module/${id}`, message: check.message });
  }
  return out;
}
