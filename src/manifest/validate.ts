/**
 * Validation of loaded manifests: JSON Schema per kind, the rules a schema cannot say (semver,
 * URLs, id fits module), then cross-document checks (duplicate ids, unknown nodes). Pure: no I/O
 * besides reading the schema files once. Every problem is returned at once.
 */
import { isIP } from 'node:net';
import { ManifestError } from '../errors.js';
import type { Diagnostic } from '../errors.js';
import type { LoadResult, LoadedDocument } from './load.js';
import { locate } from './locate.js';
import type { LocateMode } from './locate.js';
import { isSemverVersionOrRange } from './lazy-packages.js';
import { INSTANCE_ID } from './names.js';
import { kindSchema } from './schemas.js';
import { closest, showValue } from './schema-errors.js';
import { translateSchemaErrors } from './schema-errors.js';
import { API_VERSION, KINDS, moduleNameOf, splitInstanceId } from './types.js';
import type { BackupRetention, BackupScheduleSpec, DesiredObject, Kind, ManifestObject, Metadata, ModuleObject, ModuleSpec, NodeObject, RepositoryObject, RestoreFrom, UpdatePolicy } from './types.js';

/** Facts about the live cluster the caller read (from Redis), used by cross-document checks. */
export interface ClusterFacts {
  /** Ids of nodes the cluster already has records for. */
  knownNodes: number[];
  /** Instances the cluster already has (desired by ns8ctl, or made by NS8): valid `dependsOn` targets. */
  knownModules?: string[];
  /** BackupDestinations already desired in the cluster: valid `destination` / `restoreFrom.destination` targets. */
  knownBackupDestinations?: string[];
}

/** Result of validation: the normalised objects and every problem found. */
export interface ValidationResult {
  /**
   * Objects of documents that have no problem of their own, defaults applied, sorted by kind
   * (Node, Repository, BackupDestination, BackupSchedule, Module) then id. Use them only when `diagnostics` is empty.
   */
  objects: DesiredObject[];
  /** Load problems first in file order, then validation problems; sorted by file, line, column. */
  diagnostics: Diagnostic[];
}

/** Order kinds are listed and applied in. */
export const KIND_ORDER: readonly Kind[] = ['Node', 'Repository', 'BackupDestination', 'BackupSchedule', 'Module'];

/** Module name rule, kept in step with schemas/module.schema.json. */
const MODULE_NAME = /^[a-z]([a-z0-9_-]*[a-z_-])?$/;

type Doc = LoadedDocument;

interface DocState {
  doc: Doc;
  kind?: Kind;
  value?: Record<string, unknown>;
  bad: boolean;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function report(diags: Diagnostic[], st: DocState, pointer: string, message: string, mode: LocateMode = 'value'): void {
  const pos = locate(st.doc.doc, st.doc.lineCounter, pointer, mode);
  diags.push({ file: st.doc.source.file, line: pos.line, col: pos.col, pointer, message });
  st.bad = true;
}

function where(st: DocState, pointer: string): string {
  const pos = locate(st.doc.doc, st.doc.lineCounter, pointer, 'value');
  return `${st.doc.source.file}:${pos.line}:${pos.col}`;
}

/** Checks `apiVersion` and `kind`; returns the kind when it is known. */
function checkHeader(diags: Diagnostic[], st: DocState, v: Record<string, unknown>): Kind | undefined {
  const kinds = KINDS.join(', ');
  const kind = v['kind'];
  if (kind === undefined) {
    report(diags, st, '/kind', `missing required field "kind" in /: expected one of ${kinds}`);
  } else if (typeof kind !== 'string' || !(KINDS as readonly string[]).includes(kind)) {
    const hint = typeof kind === 'string' ? closest(kind, KINDS) : undefined;
    report(diags, st, '/kind', `unknown kind ${showValue(kind)}; allowed kinds: ${kinds}${hint ? ` (did you mean "${hint}"?)` : ''}`);
  } else {
    return kind as Kind;
  }
  // The kind schema reports apiVersion problems; without a kind, report them here.
  const api = v['apiVersion'];
  if (api === undefined) report(diags, st, '/apiVersion', `missing required field "apiVersion" in /: expected "${API_VERSION}"`);
  else if (api !== API_VERSION) report(diags, st, '/apiVersion', `apiVersion must be "${API_VERSION}"; got ${showValue(api)}`);
  return undefined;
}

/** Rules of a Module the schema cannot express. Runs only on fields the schema accepted. */
function checkModule(diags: Diagnostic[], st: DocState, v: Record<string, unknown>, schemaBad: Set<string>): void {
  const spec = isRecord(v['spec']) ? v['spec'] : undefined;
  const meta = isRecord(v['metadata']) ? v['metadata'] : undefined;
  if (!spec) return;
  const version = spec['version'];
  if (typeof version === 'string' && version !== '' && !schemaBad.has('/spec/version') && !('image' in spec)) {
    if (version !== 'latest' && !isSemverVersionOrRange(version)) {
      report(diags, st, '/spec/version', `version ${showValue(version)} is not valid: expected "latest", an exact version (1.2.3) or a semver range (^1.2, ~1.2.3, >=1.0.0 <2.0.0)`);
    }
  }
  const hasModule = typeof spec['module'] === 'string';
  const hasImage = typeof spec['image'] === 'string';
  if (hasModule === hasImage || schemaBad.has('/spec/module') || schemaBad.has('/spec/image')) return;
  const ref: Pick<ModuleSpec, 'module' | 'image'> = hasModule ? { module: spec['module'] as string } : { image: spec['image'] as string };
  const module = moduleNameOf(ref);
  if (hasImage && !MODULE_NAME.test(module)) {
    report(
      diags,
      st,
      '/spec/image',
      `image ${showValue(spec['image'])} gives module name ${showValue(module)}, which is not a valid NS8 module name: the last path segment without tag must be lowercase letters, digits, '-' and '_', starting with a letter and not ending with a digit`,
    );
    return;
  }
  const name = meta?.['name'];
  if (typeof name !== 'string' || schemaBad.has('/metadata/name')) return;
  const split = splitInstanceId(name);
  if (!split || split.module !== module) {
    report(diags, st, '/metadata/name', `metadata.name ${showValue(name)} does not fit module "${module}": expected ${module}<N>`);
  } else if (name.length > 32) {
    report(diags, st, '/metadata/name', `metadata.name ${showValue(name)} is too long for a Unix user name: at most 32 characters`);
  }
}

/** A DNS host name (RFC 1123 labels of letters, digits and '-', at most 253 characters, optional final dot). */
const HOST_NAME = /^(?=.{1,253}\.?$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/** True for an IPv4 or IPv6 address or a DNS host name: what `spec.address` of a Node may be. */
export function isNodeAddress(address: string): boolean {
  return isIP(address) !== 0 || HOST_NAME.test(address);
}

/** Rules of a Node the schema cannot express: the address is an IP address or a host name. */
function checkNode(diags: Diagnostic[], st: DocState, v: Record<string, unknown>, schemaBad: Set<string>): void {
  const spec = isRecord(v['spec']) ? v['spec'] : undefined;
  const address = spec?.['address'];
  if (typeof address !== 'string' || schemaBad.has('/spec/address') || isNodeAddress(address)) return;
  report(diags, st, '/spec/address', `address ${showValue(address)} is not valid: expected an IPv4 or IPv6 address or a host name (letters, digits, '-' and '.')`);
}

/** Rules of a Repository the schema cannot express. */
function checkRepository(diags: Diagnostic[], st: DocState, v: Record<string, unknown>, schemaBad: Set<string>): void {
  const spec = isRecord(v['spec']) ? v['spec'] : undefined;
  const url = spec?.['url'];
  if (typeof url !== 'string' || schemaBad.has('/spec/url')) return;
  let ok = true;
  try {
    const u = new URL(url);
    ok = ['http:', 'https:', 'file:'].includes(u.protocol) && (u.protocol === 'file:' || u.hostname !== '');
  } catch {
    ok = false;
  }
  if (!ok) report(diags, st, '/spec/url', `url ${showValue(url)} is not a valid URL: expected an http://, https:// or file:// URL`);
}

/** Rules of a BackupSchedule the schema cannot say clearly: it selects instances one way or both. */
function checkBackupSchedule(diags: Diagnostic[], st: DocState, v: Record<string, unknown>): void {
  const spec = isRecord(v['spec']) ? v['spec'] : undefined;
  if (!spec || 'instances' in spec || 'selector' in spec) return;
  report(diags, st, '/spec', 'a BackupSchedule selects no instance: give "instances" (a list of instance ids), "selector" (matchLabels), or both', 'key');
}

/** restoreFrom and cloneFrom each say where a new instance's data comes from: at most one, and not the instance itself. */
function checkModuleOrigin(diags: Diagnostic[], st: DocState, v: Record<string, unknown>, schemaBad: Set<string>): void {
  const spec = isRecord(v['spec']) ? v['spec'] : undefined;
  if (!spec) return;
  if ('restoreFrom' in spec && 'cloneFrom' in spec) {
    report(diags, st, '/spec/cloneFrom', '"restoreFrom" and "cloneFrom" are mutually exclusive: a new instance gets its data from a snapshot (restoreFrom) or from another instance (cloneFrom), not both', 'key');
  }
  const name = isRecord(v['metadata']) ? v['metadata']['name'] : undefined;
  if (typeof spec['cloneFrom'] === 'string' && spec['cloneFrom'] === name && !schemaBad.has('/spec/cloneFrom')) {
    report(diags, st, '/spec/cloneFrom', `${name} cannot be a clone of itself: cloneFrom names another instance`);
  }
}

function copyMetadata(m: Record<string, unknown>): Metadata {
  const out: Metadata = { name: m['name'] as string };
  if (m['labels'] !== undefined) out.labels = { ...(m['labels'] as Record<string, string>) };
  if (m['annotations'] !== undefined) out.annotations = { ...(m['annotations'] as Record<string, string>) };
  return out;
}

/** Builds the normalised object (defaults applied, fields in schema order) of a valid document. */
function normalise(kind: Kind, v: Record<string, unknown>): ManifestObject {
  const metadata = copyMetadata(v['metadata'] as Record<string, unknown>);
  const s = v['spec'] as Record<string, unknown>;
  if (kind === 'Node') {
    const spec: NodeObject['spec'] = { id: s['id'] as number };
    if (s['address'] !== undefined) spec.address = s['address'] as string;
    if (s['flags'] !== undefined) spec.flags = [...(s['flags'] as string[])];
    return { apiVersion: API_VERSION, kind, metadata, spec };
  }
  if (kind === 'Repository') {
    const spec: RepositoryObject['spec'] = { url: s['url'] as string, enabled: (s['enabled'] as boolean | undefined) ?? true, testing: (s['testing'] as boolean | undefined) ?? false };
    return { apiVersion: API_VERSION, kind, metadata, spec };
  }
  if (kind === 'BackupDestination') return { apiVersion: API_VERSION, kind, metadata, spec: { url: s['url'] as string } };
  if (kind === 'BackupSchedule') return { apiVersion: API_VERSION, kind, metadata, spec: normaliseSchedule(s) };
  const spec: ModuleSpec = { node: s['node'] as number };
  if (s['module'] !== undefined) {
    spec.module = s['module'] as string;
    spec.version = (s['version'] as string | undefined) ?? 'latest';
  } else {
    spec.image = s['image'] as string;
  }
  // Key order: module/image, version, node, then the rest as the schema lists them.
  const ordered: ModuleSpec = { ...(spec.module !== undefined ? { module: spec.module, version: spec.version as string } : { image: spec.image as string }), node: spec.node };
  // Order carries no meaning: sorted, so reordering the list is no change; empty is the default.
  const deps = s['dependsOn'] as string[] | undefined;
  if (deps && deps.length > 0) ordered.dependsOn = [...deps].sort();
  if (s['volumes'] !== undefined) ordered.volumes = { ...(s['volumes'] as Record<string, string>) };
  if (s['configuration'] !== undefined) ordered.configuration = s['configuration'] as Record<string, unknown>;
  ordered.removalPolicy = (s['removalPolicy'] as ModuleSpec['removalPolicy'] | undefined) ?? 'Preserve';
  // `suspend: false` is the default: leave it out so writing it or not gives the same stored spec.
  if (s['suspend'] === true) ordered.suspend = true;
  const restore = s['restoreFrom'] as RestoreFrom | undefined;
  if (restore) ordered.restoreFrom = { destination: restore.destination, snapshot: restore.snapshot ?? 'latest', ...(restore.instance ? { instance: restore.instance } : {}) };
  if (s['cloneFrom'] !== undefined) ordered.cloneFrom = s['cloneFrom'] as string;
  // `backupFirst: false` is the default: an empty policy is left out, as `suspend: false` is.
  if ((s['updatePolicy'] as UpdatePolicy | undefined)?.backupFirst === true) ordered.updatePolicy = { backupFirst: true };
  const obj: ModuleObject = { apiVersion: API_VERSION, kind: 'Module', metadata, spec: ordered };
  return obj;
}

/** A BackupSchedule spec with defaults (keepLast 7 when no retention is given), instances sorted. */
function normaliseSchedule(s: Record<string, unknown>): BackupScheduleSpec {
  const spec: BackupScheduleSpec = { destination: s['destination'] as string, schedule: s['schedule'] as string };
  // Order carries no meaning: sorted, so reordering the list is no change.
  const instances = s['instances'] as string[] | undefined;
  if (instances) spec.instances = [...instances].sort();
  const selector = s['selector'] as BackupScheduleSpec['selector'];
  if (selector) spec.selector = { matchLabels: { ...selector.matchLabels } };
  const r = s['retention'] as BackupRetention | undefined;
  spec.retention = r ? { ...(r.keepLast !== undefined ? { keepLast: r.keepLast } : {}), ...(r.keepDaily !== undefined ? { keepDaily: r.keepDaily } : {}) } : { keepLast: 7 };
  if (s['suspend'] === true) spec.suspend = true;
  return spec;
}

/** What validObjects sorts by, worked out once per object (a sort compares n log n times). */
interface SortKey {
  rank: number;
  kind: Kind;
  id: string;
  /** Module ids split as `<module><N>`, when they are. */
  split: { module: string; n: number } | undefined;
}

function sortKeyOf(o: ManifestObject): SortKey {
  const id = o.kind === 'Node' ? String(o.spec.id) : o.metadata.name;
  return { rank: KIND_ORDER.indexOf(o.kind), kind: o.kind, id, split: o.kind === 'Module' ? splitInstanceId(id) : undefined };
}

/** Kind order, then ids: Nodes by number, instances of one module by their number, else code units. */
function compareSortKeys(a: SortKey, b: SortKey): number {
  if (a.rank !== b.rank) return a.rank - b.rank;
  if (a.kind === 'Node') return Number(a.id) - Number(b.id);
  if (a.split && b.split && a.split.module === b.split.module) return a.split.n - b.split.n;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/** Id of a document for duplicate detection, when its id field has the right type. */
function rawId(kind: Kind, v: Record<string, unknown>): { id: string; pointer: string } | undefined {
  if (kind === 'Node') {
    const spec = v['spec'];
    const id = isRecord(spec) ? spec['id'] : undefined;
    return typeof id === 'number' && Number.isInteger(id) ? { id: String(id), pointer: '/spec/id' } : undefined;
  }
  const meta = v['metadata'];
  const name = isRecord(meta) ? meta['name'] : undefined;
  return typeof name === 'string' ? { id: name, pointer: '/metadata/name' } : undefined;
}

/**
 * Validates loaded documents and returns normalised objects plus every problem at once, each as
 * a Diagnostic (`file:line:col  /json/pointer  message`, see formatDiagnostic). Load diagnostics
 * of `loaded` are included. Checks: schema per kind (unknown fields, types, enums, patterns),
 * version is `latest`/semver/range, repository URL parses, metadata.name fits the module
 * (`dokuwiki<N>`), no duplicate Module/Repository names or Node ids, and every Module's node is
 * declared by a Node document or listed in `facts.knownNodes` (omitted facts: no known nodes).
 * Backup kinds: a BackupSchedule selects instances (`instances` and/or `selector`); its
 * `destination` and a Module's `restoreFrom.destination` name a BackupDestination of the
 * documents or of `facts.knownBackupDestinations`; a Module's `cloneFrom` names another instance
 * of the same module (documents or `facts.knownModules`) and excludes `restoreFrom`.
 * Defaults applied: Module removalPolicy Preserve, version latest (for `module`), restoreFrom
 * snapshot latest; Repository enabled true, testing false; BackupSchedule retention keepLast 7
 * when none is given. Never throws for bad input.
 */
export function validateManifests(loaded: LoadResult, facts?: ClusterFacts): ValidationResult {
  const diags: Diagnostic[] = [];
  const states: DocState[] = loaded.documents.map((doc) => ({ doc, bad: false }));
  for (const st of states) checkDocument(diags, st);
  checkDuplicateIds(states, diags);
  checkModuleNodes(states, facts, diags);
  checkDependencies(states, facts, diags);
  checkBackupReferences(states, facts, diags);
  checkClones(states, facts, diags);
  return { objects: validObjects(states), diagnostics: sortDiagnostics([...loaded.diagnostics, ...diags], loaded.files ?? []) };
}

/** One document on its own: a mapping, its header, its kind's schema, then the kind's own rules. */
function checkDocument(diags: Diagnostic[], st: DocState): void {
  const v = st.doc.value;
  if (!isRecord(v)) {
    // The content is not shown: a document that is not a mapping may be a file read by mistake.
    const got = typeof v === 'string' ? `a string of ${[...v].length} characters` : Array.isArray(v) ? 'a list' : `${typeof v} ${showValue(v)}`;
    report(diags, st, '', `a manifest must be a mapping with apiVersion, kind, metadata and spec; got ${got}`);
    return;
  }
  st.value = v;
  const kind = checkHeader(diags, st, v);
  if (!kind) return;
  st.kind = kind;
  const validate = kindSchema(kind).validate;
  const schemaBad = new Set<string>();
  if (!validate(v)) {
    for (const m of translateSchemaErrors(validate.errors ?? [])) {
      report(diags, st, m.pointer, m.message, m.mode);
      schemaBad.add(m.pointer);
    }
  }
  if (kind === 'Module') {
    checkModule(diags, st, v, schemaBad);
    checkModuleOrigin(diags, st, v, schemaBad);
  }
  if (kind === 'BackupSchedule') checkBackupSchedule(diags, st, v);
  if (kind === 'Repository') checkRepository(diags, st, v, schemaBad);
  if (kind === 'Node') checkNode(diags, st, v, schemaBad);
}

/** Duplicate ids within a kind: reports each later occurrence, naming the first. */
function checkDuplicateIds(states: DocState[], diags: Diagnostic[]): void {
  const firstById = new Map<string, DocState>();
  for (const st of states) {
    if (!st.kind || !st.value) continue;
    const id = rawId(st.kind, st.value);
    if (!id) continue;
    const key = `${st.kind}/${id.id}`;
    const first = firstById.get(key);
    if (!first) {
      firstById.set(key, st);
      continue;
    }
    const what = st.kind === 'Node' ? `Node id ${id.id}` : `${st.kind} ${JSON.stringify(id.id)}`;
    report(diags, st, id.pointer, `duplicate ${what}: already defined at ${where(first, id.pointer)}; ids must be unique`);
    first.bad = true;
  }
}

/** Every Module's node must be declared: by a Node document or in `facts.knownNodes`. */
function checkModuleNodes(states: DocState[], facts: ClusterFacts | undefined, diags: Diagnostic[]): void {
  const declared = new Set<number>(facts?.knownNodes ?? []);
  for (const st of states) {
    if (st.kind !== 'Node' || !st.value) continue;
    const id = rawId('Node', st.value);
    if (id) declared.add(Number(id.id));
  }
  for (const st of states) {
    if (st.kind !== 'Module' || !st.value) continue;
    const spec = st.value['spec'];
    const node = isRecord(spec) ? spec['node'] : undefined;
    if (typeof node !== 'number' || !Number.isInteger(node) || node < 1 || declared.has(node)) continue;
    const known = [...declared].sort((a, b) => a - b);
    report(
      diags,
      st,
      '/spec/node',
      `node ${node} is not declared: no Node manifest has spec.id ${node} and the cluster has no node ${node}; known nodes: ${known.length ? known.join(', ') : 'none'}`,
    );
  }
}

/** The normalised objects of the documents without problems, by kind order then id. */
function validObjects(states: DocState[]): DesiredObject[] {
  const objects: DesiredObject[] = [];
  for (const st of states) {
    if (st.bad || !st.kind || !st.value) continue;
    objects.push({ object: normalise(st.kind, st.value), source: { ...st.doc.source } });
  }
  return objects
    .map((d) => ({ d, key: sortKeyOf(d.object) }))
    .sort((a, b) => compareSortKeys(a.key, b.key))
    .map((x) => x.d);
}

/**
 * `spec.dependsOn`: every id names another Module of these manifests or one the cluster has
 * (`facts.knownModules`; without facts, only the manifests), and the dependencies have no cycle
 * (reported at each Module of the cycle, naming it).
 */
function checkDependencies(states: DocState[], facts: ClusterFacts | undefined, diags: Diagnostic[]): void {
  const modules = new Map<string, { st: DocState; deps: string[] }>();
  for (const st of states) {
    if (st.kind !== 'Module' || !st.value) continue;
    const name = isRecord(st.value['metadata']) ? st.value['metadata']['name'] : undefined;
    const spec = st.value['spec'];
    const deps = isRecord(spec) && Array.isArray(spec['dependsOn']) ? spec['dependsOn'].filter((x): x is string => typeof x === 'string') : [];
    if (typeof name === 'string') modules.set(name, { st, deps });
  }
  const known = new Set(facts?.knownModules ?? []);
  for (const [name, { st, deps }] of modules) {
    deps.forEach((dep, i) => {
      if (dep === name) report(diags, st, `/spec/dependsOn/${i}`, `${name} cannot depend on itself`);
      else if (!modules.has(dep) && !known.has(dep)) {
        const near = closest(dep, [...modules.keys(), ...known]);
        report(diags, st, `/spec/dependsOn/${i}`, `${JSON.stringify(dep)} is not a Module of these manifests${facts ? ' nor an instance the cluster has' : ''}${near ? ` (did you mean "${near}"?)` : ''}`);
      }
    });
  }
  // Cycles: depth-first, each cycle reported once per Module on it.
  const state = new Map<string, 'open' | 'done'>();
  const onCycle = new Set<string>();
  const visit = (name: string, path: string[]): void => {
    if (state.get(name) === 'done') return;
    if (state.get(name) === 'open') {
      const cycle = [...path.slice(path.indexOf(name)), name];
      for (const m of cycle.slice(0, -1)) {
        if (onCycle.has(m)) continue;
        onCycle.add(m);
        const entry = modules.get(m)!;
        const next = cycle[cycle.indexOf(m) + 1]!;
        report(diags, entry.st, `/spec/dependsOn/${entry.deps.indexOf(next)}`, `dependency cycle: ${cycle.join(' -> ')}; an instance can only be created after the ones it depends on`);
      }
      return;
    }
    state.set(name, 'open');
    for (const dep of modules.get(name)?.deps ?? []) if (modules.has(dep) && dep !== name) visit(dep, [...path, name]);
    state.set(name, 'done');
  };
  for (const name of modules.keys()) visit(name, []);
}

/** Names (metadata.name) of the documents of one kind that have one. */
function namesOf(states: DocState[], kind: Kind): Map<string, DocState> {
  const out = new Map<string, DocState>();
  for (const st of states) {
    if (st.kind !== kind || !st.value) continue;
    const name = isRecord(st.value['metadata']) ? st.value['metadata']['name'] : undefined;
    if (typeof name === 'string' && !out.has(name)) out.set(name, st);
  }
  return out;
}

/**
 * `BackupSchedule.spec.destination` and `Module.spec.restoreFrom.destination` name a
 * BackupDestination of these manifests or one the cluster has (`facts.knownBackupDestinations`;
 * without it, only the manifests).
 */
function checkBackupReferences(states: DocState[], facts: ClusterFacts | undefined, diags: Diagnostic[]): void {
  const declared = new Set([...namesOf(states, 'BackupDestination').keys(), ...(facts?.knownBackupDestinations ?? [])]);
  const refs: Array<{ st: DocState; pointer: string; name: unknown }> = [];
  for (const st of states) {
    const spec = st.value && isRecord(st.value['spec']) ? st.value['spec'] : undefined;
    if (!spec) continue;
    if (st.kind === 'BackupSchedule') refs.push({ st, pointer: '/spec/destination', name: spec['destination'] });
    if (st.kind === 'Module' && isRecord(spec['restoreFrom'])) refs.push({ st, pointer: '/spec/restoreFrom/destination', name: spec['restoreFrom']['destination'] });
  }
  const known = [...declared].sort();
  for (const { st, pointer, name } of refs) {
    if (typeof name !== 'string' || declared.has(name)) continue;
    const near = closest(name, known);
    const where = facts?.knownBackupDestinations ? 'no BackupDestination of these manifests nor of the cluster has that name' : 'no BackupDestination of these manifests has that name';
    report(diags, st, pointer, `destination ${JSON.stringify(name)} is not declared: ${where}; known destinations: ${known.length ? known.join(', ') : 'none'}${near ? ` (did you mean "${near}"?)` : ''}`);
  }
}

/**
 * `Module.spec.cloneFrom` names another instance of the same module: one of these manifests or
 * one the cluster has (`facts.knownModules`; without facts, only the manifests).
 */
function checkClones(states: DocState[], facts: ClusterFacts | undefined, diags: Diagnostic[]): void {
  const modules = namesOf(states, 'Module');
  const known = new Set([...modules.keys(), ...(facts?.knownModules ?? [])]);
  for (const [name, st] of modules) {
    const spec = isRecord(st.value!['spec']) ? st.value!['spec'] : undefined;
    const from = spec?.['cloneFrom'];
    if (typeof from !== 'string' || from === name || !INSTANCE_ID.test(from)) continue;
    const a = splitInstanceId(name);
    const b = splitInstanceId(from);
    if (a && b && a.module !== b.module) {
      report(diags, st, '/spec/cloneFrom', `cloneFrom ${JSON.stringify(from)} is a ${b.module} instance: a clone is an instance of the same module, ${a.module}<N>`);
    } else if (!known.has(from)) {
      const near = closest(from, [...known].filter((k) => k !== name));
      report(diags, st, '/spec/cloneFrom', `${JSON.stringify(from)} is not a Module of these manifests${facts ? ' nor an instance the cluster has' : ''}${near ? ` (did you mean "${near}"?)` : ''}`);
    }
  }
}

/** Sorts diagnostics by file (load order), then line, column; stable otherwise. */
function sortDiagnostics(list: Diagnostic[], files: readonly string[]): Diagnostic[] {
  const rank = new Map<string, number>();
  files.forEach((f, i) => rank.set(f, i));
  let next = files.length;
  for (const d of list) if (!rank.has(d.file)) rank.set(d.file, next++);
  return list
    .map((d, i) => ({ d, i }))
    .sort((a, b) => (rank.get(a.d.file) ?? 0) - (rank.get(b.d.file) ?? 0) || a.d.line - b.d.line || a.d.col - b.d.col || a.i - b.i)
    .map((x) => x.d);
}

/**
 * Validates like validateManifests and returns the objects.
 * @throws ManifestError carrying every diagnostic when there is any problem.
 */
export function assertValid(loaded: LoadResult, facts?: ClusterFacts): DesiredObject[] {
  const r = validateManifests(loaded, facts);
  if (r.diagnostics.length > 0) throw new ManifestError(r.diagnostics);
  return r.objects;
}
