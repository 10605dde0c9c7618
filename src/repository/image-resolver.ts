/**
 * Resolution wired to Redis: loads the enabled repositories' metadata (cached as NS8 does) and
 * resolves Module specs to images. This is what the cluster controller and the node agent inject.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Redis } from 'ioredis';
import { readCoreVersion } from './core-version.js';
import { loadSnapshots, type FetchOptions, type PlannedRepositories, type RepositoryFailure } from './fetch.js';
import { listAvailable, resolveInCatalog, resolveModule, type AvailableModule, type ImageSpec, type RepositoryInfo, type RepositorySnapshot, type Resolution } from './resolve.js';

export interface ResolverOptions extends FetchOptions {
  /** Core version min-core labels are compared with; default readCoreVersion() (env, core.env, 3.21.0). */
  coreVersion?: string;
  /** Called once per repository that could not be loaded (its modules are then not offered). */
  onWarning?: (message: string) => void;
  /** Resolve against the repositories as a plan will leave them (see loadSnapshots). */
  planned?: PlannedRepositories;
}

/** The catalog of installable modules, plus what could not be loaded. */
export interface AvailableCatalog {
  available: AvailableModule[];
  repositories: RepositoryInfo[];
  failures: RepositoryFailure[];
  coreVersion: string;
}

let lastCatalog: { key: string; packages: readonly unknown[][]; available: AvailableModule[] } | undefined;

/** listAvailable, reused while the repositories, their parsed metadata and the core version are the same. */
function availableOf(snapshots: readonly RepositorySnapshot[], coreVersion: string): AvailableModule[] {
  const key = JSON.stringify([coreVersion, snapshots.map((s) => s.repository)]);
  const packages = snapshots.map((s) => s.packages as unknown[]);
  if (lastCatalog && lastCatalog.key === key && lastCatalog.packages.length === packages.length && lastCatalog.packages.every((p, i) => p === packages[i])) {
    return lastCatalog.available;
  }
  const available = listAvailable(snapshots, { coreVersion });
  lastCatalog = { key, packages, available };
  return available;
}

/** Catalogue loads of the current resolution pass, per Redis client and options. */
const passScope = new AsyncLocalStorage<WeakMap<Redis, Map<string, Promise<AvailableCatalog>>>>();

/**
 * Runs `fn` as one resolution pass: within it (across awaits, through any wrapper of the
 * resolvers), `loadAvailable` - hence `resolveFromRedis`, `makeModuleResolver`,
 * `makeImageResolver` - reads the repositories once per Redis client and options, however many
 * specs are resolved; concurrent callers share the one load, and its failure (a RedisError) is
 * the pass's answer for every caller. `onWarning` is called by the load that ran. The node
 * agent wraps each reconcile of a node in it: the repositories' SCAN, pipeline and cache probes
 * cost the same for 1 or 500 instances with `module:` specs. Outside a pass nothing is shared.
 */
export function withResolutionPass<T>(fn: () => Promise<T>): Promise<T> {
  return passScope.run(new WeakMap(), fn);
}

/**
 * Reads `cluster/repository/*`, gets each enabled repository's metadata (cache or download) and
 * lists the available modules (resolve.listAvailable; the last result is reused while nothing
 * changed, so per-instance resolution stays cheap). A repository that fails is reported in
 * `failures` (and to `onWarning`), not thrown. Treat `available` as read-only. Inside
 * `withResolutionPass`, loaded once per pass.
 * @throws RedisError when Redis fails.
 */
export async function loadAvailable(redis: Redis, opts: ResolverOptions = {}): Promise<AvailableCatalog> {
  const pass = passScope.getStore();
  if (!pass) return loadCatalog(redis, opts);
  let loads = pass.get(redis);
  if (!loads) {
    loads = new Map();
    pass.set(redis, loads);
  }
  const key = JSON.stringify([opts.coreVersion ?? null, opts.view ?? null, opts.timeoutMs ?? null, opts.planned ?? null]);
  let load = loads.get(key);
  if (!load) {
    load = loadCatalog(redis, opts);
    loads.set(key, load);
  }
  return load;
}

async function loadCatalog(redis: Redis, opts: ResolverOptions): Promise<AvailableCatalog> {
  const coreVersion = opts.coreVersion ?? (await readCoreVersion());
  const { snapshots, failures, repositories } = await loadSnapshots(redis, opts);
  for (const f of failures) opts.onWarning?.(f.error.message);
  return { available: availableOf(snapshots, coreVersion), repositories, failures, coreVersion };
}

/**
 * Resolves one Module spec against the repositories in Redis. A full image URL is returned
 * without touching Redis. When resolution fails and some repositories could not be loaded, the
 * error says so (the module may be in one of them).
 * @throws RepositoryError (`module_not_found`, `version_not_found`, `invalid_version_spec`, ...),
 *   RedisError.
 */
export async function resolveFromRedis(redis: Redis, spec: ImageSpec | string, opts: ResolverOptions = {}): Promise<Resolution> {
  const direct = typeof spec === 'string' ? spec.includes('/') : spec.image !== undefined || (spec.module?.includes('/') ?? false);
  if (direct) return resolveModule(spec, []);
  const catalog = await loadAvailable(redis, opts);
  return resolveInCatalog(spec, catalog.available, catalog.failures.map((f) => f.error.message));
}

/** Returns a function resolving Module specs to full Resolutions (for plan and status). */
export function makeModuleResolver(redis: Redis, opts: ResolverOptions = {}): (spec: ImageSpec | string) => Promise<Resolution> {
  return (spec) => resolveFromRedis(redis, spec, opts);
}

/**
 * The node agent's `resolveImage`: a Module spec (`{module, version}` or `{image}`, or a bare
 * name / URL string) -> full image URL with tag (`ghcr.io/x/webapp:1.1.0`).
 * @throws as resolveFromRedis.
 */
export function makeImageResolver(redis: Redis, opts: ResolverOptions = {}): (spec: ImageSpec | string) => Promise<string> {
  return async (spec) => (await resolveFromRedis(redis, spec, opts)).image;
}
