/**
 * Pure version resolution over repository metadata: which modules and versions are available
 * (NS8's priority, testing and min-core rules), which image a `module` + `version` resolves to,
 * and the checks on image labels NS8 only advises (max-per-node) or applies to updates
 * (min-from, min-core). No I/O and no clock: callers pass repositories, repodata and the core
 * version in. See docs/repositories.md.
 */
import type { Range, SemVer } from 'semver';
import semver from './semver-subset.js';
import { RepositoryError } from './errors.js';
import { packageId, type RepodataAuthor, type RepodataDocs, type RepodataPackage } from './repodata.js';
import { compareDesc, effectiveCoreVersion, parseVersion } from './semver-tags.js';

/** Image labels the resolution reads. */
export const LABELS = {
  minCore: 'org.nethserver.min-core',
  minFrom: 'org.nethserver.min-from',
  maxPerNode: 'org.nethserver.max-per-node',
} as const;

/** A configured repository, as `cluster/repository/<name>` holds it. */
export interface RepositoryInfo {
  name: string;
  url: string;
  /** `status == "1"` in NS8. */
  enabled: boolean;
  /** `testing == "1"` in NS8: prerelease versions are offered. */
  testing: boolean;
}

/** A repository together with its (already fetched and validated) metadata. */
export interface RepositorySnapshot {
  repository: RepositoryInfo;
  packages: readonly RepodataPackage[];
  /** `Last-Modified` of the metadata, when known. */
  updated?: string;
}

/** A version that can be installed. */
export interface AvailableVersion {
  tag: string;
  /** Normalised semantic version (equals `tag` for valid tags). */
  version: string;
  prerelease: boolean;
  labels: Record<string, string>;
}

/** Why a version listed in repodata is not offered. */
export type HiddenReason = 'not_semver' | 'prerelease' | 'min_core' | 'invalid_min_core';

export interface HiddenVersion {
  tag: string;
  reason: HiddenReason;
  message: string;
}

/** A module offered by an enabled repository, with its installable versions newest first. */
export interface AvailableModule {
  /** Name modules are looked up by (`dokuwiki`). */
  id: string;
  name: string;
  upstreamName?: string;
  /** Image URL without tag. */
  source: string;
  repository: string;
  repositoryUrl: string;
  repositoryTesting: boolean;
  repositoryUpdated?: string;
  /** NS8's trust level of the repository host: 3 NethServer distfeed, 2 forge, 1 other. */
  certificationLevel: number;
  description: Record<string, string>;
  categories: string[];
  authors: RepodataAuthor[];
  docs: RepodataDocs;
  /** Absolute logo URL (`<repo url>/<id>/<logo>`) or null. */
  logo: string | null;
  screenshots: string[];
  versions: AvailableVersion[];
  /** Versions present in repodata but not offered, with the reason. */
  hidden: HiddenVersion[];
  /** Set when `versions` is empty: NS8's `no_version_reason` message. */
  noVersionReason?: 'core_version_too_low' | 'no_app_version';
}

/** Options shared by the functions that compare against the core version. */
export interface CoreOptions {
  /** Version of the (leader) core; a value that does not parse counts as 999.0.0, as in NS8. */
  coreVersion: string;
}

/** The result of resolving a module spec to an image. */
export interface Resolution {
  /** Module name (`webapp`). */
  module: string;
  /** Full image URL with tag (`ghcr.io/x/webapp:1.1.0`), what podman pulls. */
  image: string;
  /** Image URL without tag. */
  source: string;
  /** Image tag (empty for a digest reference). */
  tag: string;
  /** Semantic version of the tag; undefined when the tag is not a version. */
  version: string | undefined;
  /** Repository the version came from; undefined for a full image URL. */
  repository: string | undefined;
  /** Labels published in repodata; undefined for a full image URL (inspect the image instead). */
  labels: Record<string, string> | undefined;
  prerelease: boolean;
}

/** Outcome of a check: ok, or refused with a stable code and a message naming object and rule. */
export type Check = { ok: true } | { ok: false; code: string; message: string };

/** NS8's certification level for a repository URL (cluster/modules.py). */
export function certificationLevel(repositoryUrl: string, source: string): number {
  let host = '';
  try {
    host = new URL(repositoryUrl).host;
  } catch {
    return 1;
  }
  if (host === 'distfeed.nethserver.org' || host === 'subscription.nethserver.com') {
    return source.startsWith('ghcr.io/nethserver/') || source.startsWith('ghcr.io/nethesis/') ? 4 : 3;
  }
  if (host === 'forge.nethserver.org') return 2;
  return 1;
}

function joinUrl(base: string, ...parts: string[]): string {
  return [base.replace(/\/+$/, ''), ...parts.map((p) => p.replace(/^\/+|\/+$/g, '').split('/').map(encodeURIComponent).join('/'))].join('/');
}

/** Orders repositories by NS8 priority: names reverse-sorted, so the alphabetically last wins. */
export function byPriority<T extends { name: string }>(repos: readonly T[]): T[] {
  return [...repos].sort((a, b) => (a.name < b.name ? 1 : a.name > b.name ? -1 : 0));
}

function describeCore(core: string): string {
  return parseVersion(core) ? core : `${core} (unparsable, counted as 999.0.0)`;
}

/**
 * Why an image with `labels` cannot run on core `coreVersion` because of `org.nethserver.min-core`
 * (`needs core >= 3.22.0 (org.nethserver.min-core); core is 3.21.0`, or the label is not a
 * version), or undefined when the label is absent or met. Pure.
 */
export function minCoreProblem(labels: Readonly<Record<string, string>> | undefined, coreVersion: string): string | undefined {
  const text = labels?.[LABELS.minCore]?.trim();
  if (!text) return undefined;
  const minCore = parseVersion(text);
  if (!minCore) return `label ${LABELS.minCore}=${JSON.stringify(text)} is not a semantic version`;
  if (!semver.gt(minCore, effectiveCoreVersion(coreVersion))) return undefined;
  return `needs core >= ${text} (${LABELS.minCore}); core is ${describeCore(coreVersion)}`;
}

/**
 * Lists the modules of the enabled repositories, NS8's way:
 * - repositories are taken in reverse-sorted name order and a package is keyed by `source`: the
 *   first occurrence wins, so the alphabetically last repository has priority;
 * - tags that are not strict semantic versions are dropped;
 * - prerelease tags are dropped unless the repository has `testing`;
 * - versions whose `org.nethserver.min-core` exceeds the core version are dropped;
 * - versions are sorted newest first (repodata order is not trusted).
 * Dropped versions stay visible in `hidden` with the reason, for error messages. The order of
 * the result is the lookup priority.
 */
export function listAvailable(snapshots: readonly RepositorySnapshot[], opts: CoreOptions): AvailableModule[] {
  const core = effectiveCoreVersion(opts.coreVersion);
  const seen = new Set<string>();
  const out: AvailableModule[] = [];
  const ordered = byPriority(snapshots.map((s) => ({ name: s.repository.name, s }))).map((x) => x.s);
  for (const snap of ordered) {
    const repo = snap.repository;
    if (!repo.enabled) continue;
    for (const pkg of snap.packages) {
      if (seen.has(pkg.source)) continue;
      seen.add(pkg.source);
      out.push(toAvailable(pkg, snap, core, opts.coreVersion));
    }
  }
  return out;
}

function toAvailable(pkg: RepodataPackage, snap: RepositorySnapshot, core: SemVer, coreText: string): AvailableModule {
  const repo = snap.repository;
  const id = packageId(pkg);
  const versions: { v: AvailableVersion; parsed: SemVer }[] = [];
  const hidden: HiddenVersion[] = [];
  const tags = new Set<string>();
  for (const v of pkg.versions) {
    if (tags.has(v.tag)) continue;
    tags.add(v.tag);
    const parsed = parseVersion(v.tag);
    if (!parsed) {
      hidden.push({ tag: v.tag, reason: 'not_semver', message: `tag ${v.tag} is not a semantic version` });
      continue;
    }
    const prerelease = parsed.prerelease.length > 0;
    if (prerelease && !repo.testing) {
      hidden.push({ tag: v.tag, reason: 'prerelease', message: `${v.tag} is a prerelease and repository '${repo.name}' has testing disabled` });
      continue;
    }
    const minCoreText = v.labels[LABELS.minCore];
    if (minCoreText !== undefined && minCoreText !== '') {
      const minCore = parseVersion(minCoreText.trim());
      if (!minCore) {
        hidden.push({ tag: v.tag, reason: 'invalid_min_core', message: `${v.tag} has label ${LABELS.minCore}=${JSON.stringify(minCoreText)}, which is not a semantic version` });
        continue;
      }
      if (semver.gt(minCore, core)) {
        hidden.push({ tag: v.tag, reason: 'min_core', message: `${v.tag} needs core >= ${minCoreText} (${LABELS.minCore}); core is ${describeCore(coreText)}` });
        continue;
      }
    }
    // Labels are shared with the parsed repodata, not copied: both are read-only from here on.
    versions.push({ v: { tag: v.tag, version: parsed.version, prerelease, labels: v.labels }, parsed });
  }
  versions.sort((a, b) => compareDesc(a.parsed, b.parsed));
  const mod: AvailableModule = {
    id,
    name: pkg.name,
    source: pkg.source,
    repository: repo.name,
    repositoryUrl: repo.url,
    repositoryTesting: repo.testing,
    certificationLevel: certificationLevel(repo.url, pkg.source),
    description: { ...pkg.description },
    categories: [...pkg.categories],
    authors: pkg.authors.map((a) => ({ ...a })),
    docs: { ...pkg.docs },
    logo: pkg.logo ? joinUrl(repo.url, id, pkg.logo) : null,
    screenshots: (pkg.screenshots ?? []).map((s) => joinUrl(repo.url, id, s)),
    versions: versions.map((x) => x.v),
    hidden,
  };
  if (pkg.upstream_name !== undefined) mod.upstreamName = pkg.upstream_name;
  if (snap.updated !== undefined) mod.repositoryUpdated = snap.updated;
  if (mod.versions.length === 0) mod.noVersionReason = hidden.some((h) => h.reason === 'min_core') ? 'core_version_too_low' : 'no_app_version';
  return mod;
}

/** A parsed image reference. */
export interface ImageRef {
  /** URL without tag or digest. */
  source: string;
  tag: string | undefined;
  digest: string | undefined;
}

/** Splits an image URL into source, tag and digest (`host:5000/a/b:1.0` -> tag `1.0`). */
export function parseImageUrl(url: string): ImageRef {
  let rest = url.replace(/^docker:\/\//, '');
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > slash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  return { source: rest, tag, digest };
}

/** NS8 module name of an image URL: last path segment without tag/digest. */
export function imageModuleName(url: string): string {
  return parseImageUrl(url).source.split('/').pop() ?? '';
}

/**
 * A parsed version spec. A range keeps two forms: node-semver re-parses both operands on every
 * comparison when the options of version and range differ, so stable versions are tested against
 * a default-options range (fast) and prereleases against an `includePrerelease` one.
 */
type VersionSpec =
  | { kind: 'latest' }
  | { kind: 'exact'; version: SemVer }
  | { kind: 'range'; range: Range; withPrerelease: Range };

const ranges = new Map<string, VersionSpec>();

/**
 * Parses a Module's `version`: `latest` (or empty/undefined), an exact version `1.2.3`, or a
 * semver range (`^1.2`, `~1.2.3`, `>=1 <2`, `1.x`).
 * @throws RepositoryError `invalid_version_spec` naming the module and what is allowed.
 */
export function parseVersionSpec(spec: string | undefined, moduleName: string): VersionSpec {
  const s = (spec ?? '').trim();
  if (s === '' || s === 'latest') return { kind: 'latest' };
  const exact = parseVersion(s);
  if (exact) return { kind: 'exact', version: exact };
  const known = ranges.get(s);
  if (known) return known;
  if (semver.validRange(s) !== null) {
    const parsed: VersionSpec = { kind: 'range', range: new semver.Range(s), withPrerelease: new semver.Range(s, { includePrerelease: true }) };
    if (ranges.size > 10_000) ranges.clear();
    ranges.set(s, parsed);
    return parsed;
  }
  throw new RepositoryError(
    'invalid_version_spec',
    `module '${moduleName}': version ${JSON.stringify(spec)} is not "latest", an exact version (1.2.3) or a semver range (^1.2, ~1.2.3, >=1.0.0 <2.0.0)`,
  );
}

function matches(spec: VersionSpec, version: string): boolean {
  if (spec.kind === 'latest') return true;
  if (spec.kind === 'exact') {
    const v = parseVersion(version);
    return v !== undefined && semver.eq(v, spec.version);
  }
  const v = parseVersion(version);
  if (v === undefined) return false;
  if (v.prerelease.length === 0) return spec.range.test(v);
  return spec.withPrerelease.test(parseVersion(version, true) as SemVer);
}

const indexes = new WeakMap<readonly AvailableModule[], Map<string, AvailableModule[]>>();

/** The modules with id `name`, in priority order (memoised per `available` array). */
export function findModules(available: readonly AvailableModule[], name: string): AvailableModule[] {
  let index = indexes.get(available);
  if (!index) {
    index = new Map();
    for (const m of available) {
      const list = index.get(m.id);
      if (list) list.push(m);
      else index.set(m.id, [m]);
    }
    indexes.set(available, index);
  }
  return index.get(name) ?? [];
}

function listTags(versions: readonly { tag: string }[], max = 15): string {
  if (versions.length === 0) return 'none';
  const shown = versions.slice(0, max).map((v) => v.tag);
  return shown.join(', ') + (versions.length > max ? `, ... (${versions.length - max} more)` : '');
}

/**
 * Resolves a module name and version spec to an image through the available modules (output of
 * listAvailable, in priority order). Among the packages with id `moduleName`, the first that has a
 * version matching the spec wins (NS8's "first package with a version"); within it, the newest
 * matching version. `latest` is the newest offered version, a prerelease too when the repository
 * has testing (as NS8's add-module). Ranges include prereleases only from testing repositories.
 * @throws RepositoryError `module_not_found` (no enabled repository has it; lists close names),
 *   `version_not_found` (lists the available versions and why matching ones are hidden),
 *   `invalid_version_spec`.
 */
export function resolveVersion(moduleName: string, versionSpec: string | undefined, available: readonly AvailableModule[]): Resolution {
  const spec = parseVersionSpec(versionSpec, moduleName);
  const candidates = findModules(available, moduleName);
  if (candidates.length === 0) {
    const close = [...new Set(available.map((m) => m.id))].filter((id) => id.includes(moduleName) || moduleName.includes(id)).slice(0, 5);
    const repos = [...new Set(available.map((m) => m.repository))];
    throw new RepositoryError(
      'module_not_found',
      `module '${moduleName}' is not offered by any enabled repository` +
        (repos.length ? ` (searched: ${repos.join(', ')})` : ' (no enabled repository has metadata)') +
        (close.length ? `; similar: ${close.join(', ')}` : '') +
        `; use a full image URL (image:) to bypass repositories`,
    );
  }
  for (const mod of candidates) {
    const hit = mod.versions.find((v) => matches(spec, v.tag));
    if (hit) {
      return {
        module: mod.id,
        image: `${mod.source}:${hit.tag}`,
        source: mod.source,
        tag: hit.tag,
        version: hit.version,
        repository: mod.repository,
        labels: { ...hit.labels },
        prerelease: hit.prerelease,
      };
    }
  }
  const want = spec.kind === 'latest' ? 'installable version' : `version matching ${JSON.stringify(versionSpec)}`;
  const details = candidates.map((m) => {
    const hiddenMatching = m.hidden.filter((h) => h.reason !== 'not_semver' && matches(spec, h.tag));
    return (
      `repository '${m.repository}' (${m.source}) offers ${listTags(m.versions)}` +
      (hiddenMatching.length ? `; not offered: ${hiddenMatching.slice(0, 5).map((h) => h.message).join('; ')}` : '')
    );
  });
  throw new RepositoryError('version_not_found', `module '${moduleName}' has no ${want}: ${details.join(' | ')}`);
}

/** What a Module asks for: a repository module (+ version spec) or a full image URL. */
export interface ImageSpec {
  module?: string | undefined;
  image?: string | undefined;
  version?: string | undefined;
}

/**
 * Resolves a Module spec: a full image URL (`image:`, or a `module:` containing `/` as in NS8's
 * add-module) is used as-is and bypasses repositories; a bare module name goes through
 * resolveVersion. A bare string is read as `image` when it contains `/`, else as `module`.
 * @throws RepositoryError as resolveVersion, or `invalid_image_spec` when neither is given.
 */
export function resolveModule(spec: ImageSpec | string, available: readonly AvailableModule[]): Resolution {
  const s: ImageSpec = typeof spec === 'string' ? (spec.includes('/') ? { image: spec } : { module: spec }) : spec;
  const url = s.image ?? (s.module?.includes('/') ? s.module : undefined);
  if (url !== undefined) {
    const ref = parseImageUrl(url);
    const name = ref.source.split('/').pop() ?? '';
    const tag = ref.tag ?? (ref.digest ? '' : 'latest');
    const image = ref.tag === undefined && !ref.digest ? `${url}:latest` : url.replace(/^docker:\/\//, '');
    const parsed = parseVersion(tag);
    return {
      module: name,
      image,
      source: ref.source,
      tag,
      version: parsed?.version,
      repository: undefined,
      labels: undefined,
      prerelease: parsed ? parsed.prerelease.length > 0 : false,
    };
  }
  if (!s.module) throw new RepositoryError('invalid_image_spec', 'a module spec needs either a module name (module:) or a full image URL (image:)');
  return resolveVersion(s.module, s.version, available);
}

/** An instance placed (or asked to be placed) on a node. */
export interface Placement {
  id: string;
  /** Module name (`webapp`). */
  module: string;
  node: number;
}

/** Reads `org.nethserver.max-per-node`; undefined when absent or not a non-negative integer. */
export function maxPerNodeOf(labels: Record<string, string> | undefined): number | undefined {
  const raw = labels?.[LABELS.maxPerNode]?.trim();
  if (raw === undefined || !/^\d+$/.test(raw)) return undefined;
  return Number(raw);
}

/**
 * Enforces `org.nethserver.max-per-node` (NS8 only advises it in the UI): refuses `candidate` when
 * `others` already hold that many instances of the same module on the same node. `others` are the
 * instances admitted before this one (the candidate itself is ignored if listed).
 * Returns `{ok:false, code:'max_per_node_exceeded'}` with a message naming the instance, node,
 * limit and the instances occupying it.
 */
export function checkMaxPerNode(candidate: Placement, labels: Record<string, string> | undefined, others: readonly Placement[]): Check {
  const max = maxPerNodeOf(labels);
  if (max === undefined) return { ok: true };
  const present = others.filter((o) => o.id !== candidate.id && o.module === candidate.module && o.node === candidate.node).map((o) => o.id);
  if (present.length < max) return { ok: true };
  return {
    ok: false,
    code: 'max_per_node_exceeded',
    message:
      `${candidate.id}: module ${candidate.module} allows at most ${max} instance${max === 1 ? '' : 's'} per node (${LABELS.maxPerNode}=${max}); ` +
      `node ${candidate.node} already has ${present.length ? present.sort().join(', ') : 'none allowed'}; place it on another node`,
  };
}

function instanceNumber(id: string): number {
  const m = /(\d+)$/.exec(id);
  return m ? Number(m[1]) : Number.MAX_SAFE_INTEGER;
}

/**
 * Applies checkMaxPerNode to a whole desired set deterministically: instances that already exist
 * are admitted first, then the others by instance number (`webapp1` before `webapp2`), so the same
 * manifests always refuse the same instances. Returns one Check per instance id.
 */
export function admitMaxPerNode(requests: readonly (Placement & { labels?: Record<string, string> | undefined; existing?: boolean })[]): Map<string, Check> {
  const ordered = [...requests].sort(
    (a, b) => Number(b.existing ?? false) - Number(a.existing ?? false) || instanceNumber(a.id) - instanceNumber(b.id) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
  );
  const admitted: Placement[] = [];
  const out = new Map<string, Check>();
  for (const r of ordered) {
    const check = r.existing ? ({ ok: true } as const) : checkMaxPerNode(r, r.labels, admitted);
    out.set(r.id, check);
    if (check.ok) admitted.push({ id: r.id, module: r.module, node: r.node });
  }
  return out;
}

/** An installed instance, as its environment says (`IMAGE_URL`). */
export interface InstalledInstance {
  id: string;
  /** Current image URL with tag (`IMAGE_URL`). */
  image: string;
  node?: number;
  /** The Module's `version` spec, when it came from a repository module. */
  versionSpec?: string;
}

/** The image an instance would move to; labels undefined when unknown (inspect it first). */
export interface UpdateTarget {
  image: string;
  labels?: Record<string, string> | undefined;
}

/** Outcome of checkUpdate. `kind` says what the move is even when refused. */
export type UpdateCheck =
  | { ok: true; kind: 'none' | 'upgrade' | 'downgrade' | 'change' }
  | { ok: false; kind: 'none' | 'upgrade' | 'downgrade' | 'change'; code: string; message: string };

export interface UpdateCheckOptions extends CoreOptions {
  /** Allow moving to an older version (refused by default: data written by a newer version may not be readable). */
  allowDowngrade?: boolean;
  /** The available module, used to suggest intermediate versions when min-from refuses. */
  available?: AvailableModule | undefined;
}

/**
 * Decides whether instance `current` may move to `target`:
 * - same module name required (NS8's update-module refuses another image name): `module_mismatch`;
 * - same image: ok, kind `none`;
 * - `org.nethserver.min-core` > core version: `min_core_not_met`;
 * - `org.nethserver.min-from` > current version: `min_from_not_met` (message names the running
 *   version, the label and, given `available`, the intermediate versions to go through);
 *   a min-from with a current tag that is not a version: `current_version_unknown`;
 * - an older version: `downgrade_refused` unless `allowDowngrade`.
 * A tag that is not a version on either side (`latest`, a digest) is a `change` and only the
 * name and min-core rules apply. Pure: labels of a full-URL target must be inspected beforehand.
 */
export function checkUpdate(current: InstalledInstance, target: UpdateTarget, opts: UpdateCheckOptions): UpdateCheck {
  const cur = parseImageUrl(current.image);
  const next = parseImageUrl(target.image);
  const curName = cur.source.split('/').pop() ?? '';
  const nextName = next.source.split('/').pop() ?? '';
  const curV = parseVersion(cur.tag);
  const nextV = parseVersion(next.tag);
  const kind: UpdateCheck['kind'] =
    current.image === target.image ? 'none' : curV && nextV ? (semver.gt(nextV, curV) ? 'upgrade' : semver.lt(nextV, curV) ? 'downgrade' : cur.source === next.source ? 'none' : 'change') : 'change';
  const refuse = (code: string, message: string): UpdateCheck => ({ ok: false, kind, code, message });
  const what = `${current.id}: cannot update ${cur.tag ?? current.image} -> ${next.tag ?? target.image}`;
  if (curName !== nextName) return refuse('module_mismatch', `${current.id} runs module ${curName}; it cannot be updated to ${target.image} (module ${nextName})`);
  if (kind === 'none') return { ok: true, kind };
  const labels = target.labels ?? {};
  const minCore = minCoreProblem(labels, opts.coreVersion);
  if (minCore) return refuse('min_core_not_met', `${what}: ${minCore.startsWith('needs') ? `${next.tag} ${minCore}` : minCore}`);
  const minFromText = labels[LABELS.minFrom]?.trim();
  if (minFromText) {
    const minFrom = parseVersion(minFromText);
    if (!minFrom) return refuse('min_from_not_met', `${what}: label ${LABELS.minFrom}=${JSON.stringify(minFromText)} is not a semantic version`);
    if (!curV) return refuse('current_version_unknown', `${what}: ${next.tag} requires the running version to be >= ${minFromText} (${LABELS.minFrom}), but the running tag ${JSON.stringify(cur.tag ?? '')} is not a version`);
    if (semver.lt(curV, minFrom)) {
      const path = nextV && opts.available ? planUpdatePath(curV.version, nextV.version, opts.available) : undefined;
      const hint = path && path.length > 1 ? `; update through ${path.slice(0, -1).join(' -> ')} first (set version: ${path[0]})` : '; no intermediate version is available';
      return refuse('min_from_not_met', `${what}: ${next.tag} can only update instances running >= ${minFromText} (${LABELS.minFrom})${hint}`);
    }
  }
  if (kind === 'downgrade' && !opts.allowDowngrade) return refuse('downgrade_refused', `${what}: that is a downgrade; data written by ${cur.tag} may not be readable by ${next.tag} (remove and re-create the instance, or allow downgrades explicitly)`);
  return { ok: true, kind };
}

function minFromAllows(v: AvailableVersion, from: SemVer): boolean {
  const mf = v.labels[LABELS.minFrom]?.trim();
  if (!mf) return true;
  const p = parseVersion(mf);
  return p !== undefined && semver.gte(from, p);
}

/**
 * The versions to go through from `current` to `target` when min-from labels forbid a direct jump:
 * at each step the newest offered version <= target whose min-from the running version meets.
 * Returns the steps ending with `target` (`['1.1.0', '2.0.0']`), or undefined when stuck.
 * Only stable steps are used unless the target itself is a prerelease.
 */
export function planUpdatePath(current: string, target: string, mod: AvailableModule): string[] | undefined {
  let cur = parseVersion(current);
  const tgt = parseVersion(target);
  if (!cur || !tgt || !semver.gt(tgt, cur)) return undefined;
  const steps: string[] = [];
  const candidates = mod.versions.filter((v) => {
    const p = parseVersion(v.tag);
    return p !== undefined && semver.lte(p, tgt) && (!v.prerelease || semver.eq(p, tgt));
  });
  while (semver.lt(cur, tgt)) {
    const from: SemVer = cur;
    const next = candidates.find((v) => semver.gt(v.version, from) && minFromAllows(v, from));
    if (!next) return undefined;
    steps.push(next.tag);
    cur = parseVersion(next.tag) as SemVer;
  }
  return steps;
}

/** A version newer than the running one that cannot be used, and why. */
export interface BlockedUpdate {
  tag: string;
  code: string;
  message: string;
}

/** Updates available for one instance. */
export interface InstanceUpdates {
  id: string;
  module: string;
  /** Running tag. */
  current: string;
  /** Newest stable version > current that passes min-from and min-core (NS8's `update`). */
  update?: string;
  /** Newest prerelease > current (and > update) from a testing repository (NS8's `testing_update`). */
  testingUpdate?: string;
  /** Newest usable version > current that also matches the instance's version spec. */
  inSpec?: string;
  /** Newer versions that cannot be used (min-from not met, ...). */
  blocked: BlockedUpdate[];
}

/**
 * Lists updates per instance, as NS8's list_updates: instances are matched to available modules
 * by `source`; instances whose running tag is not a version are skipped; a candidate must be newer,
 * pass min-from and min-core, and be stable (prereleases, offered only by testing repositories,
 * are reported as `testingUpdate`). Instances with no newer version are returned with no update.
 */
export function listUpdates(instances: readonly InstalledInstance[], available: readonly AvailableModule[], opts: CoreOptions): InstanceUpdates[] {
  const bySource = new Map<string, AvailableModule>();
  for (const m of available) if (!bySource.has(m.source)) bySource.set(m.source, m);
  const out: InstanceUpdates[] = [];
  for (const inst of instances) {
    const ref = parseImageUrl(inst.image);
    const curV = parseVersion(ref.tag);
    const mod = bySource.get(ref.source);
    if (!curV || !mod) continue;
    const result: InstanceUpdates = { id: inst.id, module: mod.id, current: ref.tag ?? '', blocked: [] };
    let spec: VersionSpec | undefined;
    try {
      spec = inst.versionSpec !== undefined ? parseVersionSpec(inst.versionSpec, mod.id) : undefined;
    } catch {
      spec = undefined;
    }
    for (const v of mod.versions) {
      if (!semver.gt(v.version, curV)) break;
      const check = checkUpdate(inst, { image: `${mod.source}:${v.tag}`, labels: v.labels }, { ...opts, available: mod });
      if (!check.ok) {
        result.blocked.push({ tag: v.tag, code: check.code, message: check.message });
        continue;
      }
      if (v.prerelease) {
        if (result.testingUpdate === undefined && result.update === undefined) result.testingUpdate = v.tag;
      } else if (result.update === undefined) {
        result.update = v.tag;
      }
      if (result.inSpec === undefined && spec && matches(spec, v.tag)) result.inSpec = v.tag;
    }
    out.push(result);
  }
  return out;
}

/**
 * The one resolution of a Module spec against a catalogue: the plan (what `diff` shows) and the
 * node agent (what it pulls) both call it, with the same catalogue read from Redis, so both get
 * the same image. When the module or version is not found and some repositories could not be
 * read, the error names them (the module may be in one of them).
 * @param unreadable messages of the repositories that could not be read.
 * @throws RepositoryError as resolveModule.
 */
export function resolveInCatalog(spec: ImageSpec | string, available: readonly AvailableModule[], unreadable: readonly string[] = []): Resolution {
  try {
    return resolveModule(spec, available);
  } catch (err) {
    if (err instanceof RepositoryError && unreadable.length > 0 && (err.code === 'module_not_found' || err.code === 'version_not_found')) {
      throw new RepositoryError(err.code, `${err.message}; some repositories could not be read: ${unreadable.join('; ')}`, { cause: err });
    }
    throw err;
  }
}
