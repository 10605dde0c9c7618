/**
 * Repository metadata I/O: read the configured repositories from Redis, fetch `repodata.json`
 * over http(s) or file://, validate it, and cache it in Redis exactly as NS8 does
 * (`cluster/repository_cache/<name>`: `data`, `updated`, `repo_view`, TTL 3600 s).
 */
import { readFile, stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { Redis } from 'ioredis';
import { RedisError } from '../errors.js';
import { keys } from '../state/keys.js';
import { RepositoryError } from './errors.js';
import { parseRepodata, REPODATA_FILE, type RepodataPackage } from './repodata.js';
import type { RepositoryInfo, RepositorySnapshot } from './resolve.js';
import { scanKeys, scanNames } from '../state/scan.js';

/** Seconds a cached repodata stays in Redis (NS8: 3600). */
export const CACHE_TTL_SECONDS = 3600;
/** Default HTTP timeout for one repodata download. */
export const DEFAULT_FETCH_TIMEOUT_MS = 15_000;
/** Largest repodata.json accepted. */
export const MAX_REPODATA_BYTES = 64 * 1024 * 1024;
/** View asked for by default (`?view=latest`; NS8's apply-updates asks for `managed`). */
export const DEFAULT_VIEW = 'latest';

export interface FetchOptions {
  /** Abort an HTTP download after this many ms (default 15000). */
  timeoutMs?: number;
  /** `?view=` query parameter sent to http(s) repositories (default `latest`). */
  view?: string;
  /** Fetch implementation (default global fetch); injected by tests only if needed. */
  fetchImpl?: typeof fetch;
}

/** Raw metadata as downloaded. */
export interface FetchedRepodata {
  /** The exact text received (stored verbatim in the cache's `data`, as NS8). */
  text: string;
  packages: RepodataPackage[];
  /** `Last-Modified` header, or the file's mtime for file://, or ''. */
  updated: string;
  /** Where it was read from. */
  from: string;
}

/** URL of `repodata.json` under a repository URL (a trailing slash is implied: `.../updates` -> `.../updates/repodata.json`). */
export function repodataUrl(repositoryUrl: string): URL {
  let base: URL;
  try {
    base = new URL(repositoryUrl.endsWith('/') ? repositoryUrl : `${repositoryUrl}/`);
  } catch (err) {
    throw new RepositoryError('repository_not_accessible', `repository URL ${JSON.stringify(repositoryUrl)} is not a valid URL`, { cause: err });
  }
  base.search = '';
  base.hash = '';
  return new URL(REPODATA_FILE, base);
}

/** Offline mode (air-gapped sites, tests): `NS8CTL_OFFLINE` set to anything but `0` or empty. */
export function isOffline(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env.NS8CTL_OFFLINE;
  return v !== undefined && v !== '' && v !== '0';
}

/** 127.0.0.0/8, ::1 and localhost. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/**
 * Downloads and validates the metadata of one repository (http, https or file URL).
 * @throws RepositoryError `repodata_not_found` (HTTP 404, missing file), `repository_not_accessible`
 *   (network error, timeout, other HTTP status, unsupported scheme, too large),
 *   `repodata_is_not_json`, `repodata_is_not_valid_metadata` (every problem with its JSON pointer).
 */
export async function fetchRepodata(repo: Pick<RepositoryInfo, 'name' | 'url'>, opts: FetchOptions = {}): Promise<FetchedRepodata> {
  const url = repodataUrl(repo.url);
  const where = `repository '${repo.name}'`;
  if (url.protocol === 'file:') {
    const path = fileURLToPath(url);
    let text: string;
    let updated = '';
    try {
      const st = await stat(path);
      if (st.size > MAX_REPODATA_BYTES) throw new RepositoryError('repository_not_accessible', `${where}: ${path} is larger than ${MAX_REPODATA_BYTES} bytes`);
      updated = st.mtime.toUTCString();
      text = await readFile(path, 'utf8');
    } catch (err) {
      if (err instanceof RepositoryError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new RepositoryError('repodata_not_found', `${where}: ${path} does not exist`, { cause: err });
      throw new RepositoryError('repository_not_accessible', `${where}: cannot read ${path}: ${(err as Error).message}`, { cause: err });
    }
    return { text, packages: parseRepodata(text, repo.name, url.href), updated, from: url.href };
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new RepositoryError('repository_not_accessible', `${where}: URL scheme ${url.protocol} is not supported (use http://, https:// or file://)`);
  }
  if (isOffline() && !isLoopbackHost(url.hostname)) {
    throw new RepositoryError('repository_not_accessible', `${where}: not downloading ${url.href}: offline mode (NS8CTL_OFFLINE is set; only file:// and loopback repositories are read)`);
  }
  url.searchParams.set('view', opts.view ?? DEFAULT_VIEW);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS;
  const doFetch = opts.fetchImpl ?? fetch;
  let res: Response;
  let text: string;
  try {
    res = await doFetch(url, { headers: { 'User-Agent': 'ns8ctl (ns8-downloader)', Accept: 'application/json' }, redirect: 'follow', signal: AbortSignal.timeout(timeoutMs) });
    if (res.status === 404) throw new RepositoryError('repodata_not_found', `${where}: ${url.href} answered 404 Not Found (is the repository URL right?)`);
    if (!res.ok) throw new RepositoryError('repository_not_accessible', `${where}: ${url.href} answered HTTP ${res.status} ${res.statusText}`.trim());
    const len = Number(res.headers.get('content-length') ?? '0');
    if (len > MAX_REPODATA_BYTES) throw new RepositoryError('repository_not_accessible', `${where}: ${url.href} is larger than ${MAX_REPODATA_BYTES} bytes`);
    text = await res.text();
  } catch (err) {
    if (err instanceof RepositoryError) throw err;
    const e = err as Error & { cause?: { code?: string; message?: string } };
    const reason =
      e.name === 'TimeoutError' || e.name === 'AbortError' ? `no answer within ${timeoutMs} ms` : (e.cause?.code ?? e.cause?.message ?? e.message);
    throw new RepositoryError('repository_not_accessible', `${where}: cannot download ${url.href}: ${reason}`, { cause: err });
  }
  return { text, packages: parseRepodata(text, repo.name, url.href), updated: res.headers.get('last-modified') ?? '', from: url.href };
}

/** Parses a `cluster/repository/<name>` hash (`url`, `status`, `testing`). */
export function repositoryFromHash(name: string, h: Record<string, string>): RepositoryInfo {
  return { name, url: h.url ?? '', enabled: h.status === '1', testing: h.testing === '1' };
}

function redisFailure(step: string, err: unknown): RedisError {
  return new RedisError('redis_failed', `${step}: ${(err as Error).message}`, { cause: err, user: false });
}

/**
 * Reads every configured repository (`cluster/repository/*`), sorted by name.
 * @throws RedisError when Redis fails.
 */
export async function readRepositories(redis: Redis): Promise<RepositoryInfo[]> {
  const prefix = keys.repository('');
  try {
    const unique = await scanNames(redis, prefix);
    const pipe = redis.pipeline();
    for (const n of unique) pipe.hgetall(keys.repository(n));
    const res = (await pipe.exec()) ?? [];
    return unique.map((n, i) => {
      const [err, h] = res[i] ?? [null, {}];
      if (err) throw err;
      return repositoryFromHash(n, (h ?? {}) as Record<string, string>);
    });
  } catch (err) {
    throw redisFailure('reading cluster/repository/*', err);
  }
}

/** Where a snapshot came from. */
export type SnapshotOrigin = 'cache' | 'network';

/** Parsed metadata kept per Redis client and repository, with the cache entry it came from. */
interface ParsedEntry {
  text: string;
  packages: RepodataPackage[];
  /** Fingerprint of the cache entry: data length, `updated`, `repo_view`, absolute expiry (ms). */
  length: number;
  updated: string;
  view: string;
  expiresAt: number;
}

let parsedMemo = new WeakMap<object, Map<string, ParsedEntry>>();

/**
 * Forgets the parsed metadata kept in this process (cached repodata is re-read, re-parsed and
 * re-validated on next use). For benchmarks and long-lived processes that want to drop memory.
 */
export function forgetParsedRepodata(): void {
  parsedMemo = new WeakMap();
}

function memoFor(redis: Redis): Map<string, ParsedEntry> {
  let m = parsedMemo.get(redis);
  if (!m) {
    m = new Map();
    parsedMemo.set(redis, m);
  }
  return m;
}

/** Two expiry readings farther apart than this mean the entry was rewritten (EXPIRE reset). */
const EXPIRY_TOLERANCE_MS = 250;

function sameEntry(e: ParsedEntry, length: number, updated: string, view: string, expiresAt: number): boolean {
  return e.length === length && e.updated === updated && e.view === view && (expiresAt === e.expiresAt || Math.abs(expiresAt - e.expiresAt) < EXPIRY_TOLERANCE_MS);
}

/**
 * The metadata of one repository, from the Redis cache when present (and of the same view),
 * else downloaded, validated and cached. The parsed cache is kept in this process while the cached
 * text is unchanged (same `packages` array, so callers may memoise on it). Downloads are cached: HSET `data`/`updated`/`repo_view` + EXPIRE 3600, only
 * when it holds at least one package (as NS8). A cache that no longer validates is re-fetched.
 * Caching is skipped silently when the Redis user may not write (a read-only replica user).
 * @throws RepositoryError from fetchRepodata; RedisError when Redis fails.
 */
export async function getRepodata(redis: Redis, repo: RepositoryInfo, opts: FetchOptions = {}): Promise<RepositorySnapshot & { origin: SnapshotOrigin }> {
  const key = keys.repositoryCache(repo.name);
  const view = opts.view ?? DEFAULT_VIEW;
  const memo = memoFor(redis);
  try {
    // One cheap round trip first: the 1-10 MB `data` is read only when the entry changed.
    const probe = (await redis.pipeline().hstrlen(key, 'data').hmget(key, 'updated', 'repo_view').pttl(key).exec()) ?? [];
    for (const [err] of probe) if (err) throw err;
    const length = Number(probe[0]?.[1] ?? 0);
    const [updatedField, viewField] = (probe[1]?.[1] ?? []) as (string | null)[];
    const pttl = Number(probe[2]?.[1] ?? -2);
    const cachedView = viewField ?? DEFAULT_VIEW;
    if (pttl !== -2 && cachedView === view) {
      const expiresAt = pttl < 0 ? Number.POSITIVE_INFINITY : Date.now() + pttl;
      const entry = memo.get(repo.name);
      if (entry && sameEntry(entry, length, updatedField ?? '', view, expiresAt)) {
        return { repository: repo, packages: entry.packages, updated: entry.updated, origin: 'cache' };
      }
      const cache = await redis.hgetall(key);
      if (cache.data !== undefined && (cache.repo_view ?? DEFAULT_VIEW) === view) {
        try {
          const packages = entry && entry.text === cache.data ? entry.packages : parseRepodata(cache.data, repo.name, `cache ${key}`);
          memo.set(repo.name, { text: cache.data, packages, length, updated: cache.updated ?? '', view, expiresAt });
          return { repository: repo, packages, updated: cache.updated ?? '', origin: 'cache' };
        } catch (err) {
          if (!(err instanceof RepositoryError)) throw err;
          // An invalid cache (written by another tool, or truncated) is replaced by a fresh download.
        }
      }
    }
  } catch (err) {
    if (err instanceof RepositoryError) throw err;
    throw redisFailure(`reading ${key}`, err);
  }
  const fetched = await fetchRepodata(repo, opts);
  memo.delete(repo.name);
  if (fetched.packages.length > 0) {
    try {
      await redis.multi().hset(key, { data: fetched.text, updated: fetched.updated, repo_view: view }).expire(key, CACHE_TTL_SECONDS).exec();
      memo.set(repo.name, {
        text: fetched.text,
        packages: fetched.packages,
        length: Buffer.byteLength(fetched.text, 'utf8'),
        updated: fetched.updated,
        view,
        expiresAt: Date.now() + CACHE_TTL_SECONDS * 1000,
      });
    } catch (err) {
      if (!/NOPERM|READONLY/i.test((err as Error).message)) throw redisFailure(`writing ${key}`, err);
    }
  }
  return { repository: repo, packages: fetched.packages, updated: fetched.updated, origin: 'network' };
}

/** Per-repository failure while loading metadata. */
export interface RepositoryFailure {
  repository: string;
  error: RepositoryError;
}

/**
 * The repositories as a plan will leave them: `current` (from Redis) with `planned.upsert`
 * replacing or adding same-named entries and `planned.remove` names dropped. Sorted by name. Pure.
 */
export function effectiveRepositories(current: readonly RepositoryInfo[], planned: PlannedRepositories | undefined): RepositoryInfo[] {
  const byName = new Map(current.map((r) => [r.name, r]));
  for (const r of planned?.upsert ?? []) byName.set(r.name, r);
  for (const n of planned?.remove ?? []) byName.delete(n);
  return [...byName.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Repository changes not applied yet (plan time): declared Repository objects and pruned names. */
export interface PlannedRepositories {
  /** Repositories as the manifests declare them; they replace same-named ones from Redis. */
  upsert?: readonly RepositoryInfo[];
  /** Names a plan deletes. */
  remove?: readonly string[];
}

/** Options of loadSnapshots. */
export interface SnapshotOptions extends FetchOptions {
  /** Load only this repository. */
  only?: string;
  /**
   * Use the repositories as this (not yet applied) change leaves them. A planned repository whose
   * URL differs from the one in Redis (or that Redis does not have) is downloaded without touching
   * its cache, which belongs to the configured URL.
   */
  planned?: PlannedRepositories;
}

/**
 * Loads the metadata of every enabled repository (disabled ones are skipped without I/O), one
 * at a time. A repository that fails does not stop the others: it is returned in `failures`
 * (NS8 silently treats it as empty; we say why). `repositories` lists every repository considered
 * (with `planned`, the effective ones).
 * @throws RedisError when Redis fails.
 */
export async function loadSnapshots(redis: Redis, opts: SnapshotOptions = {}): Promise<{ snapshots: RepositorySnapshot[]; failures: RepositoryFailure[]; repositories: RepositoryInfo[] }> {
  const configured = await readRepositories(redis);
  const repositories = opts.planned ? effectiveRepositories(configured, opts.planned) : configured;
  const configuredUrl = new Map(configured.map((r) => [r.name, r.url]));
  const snapshots: RepositorySnapshot[] = [];
  const failures: RepositoryFailure[] = [];
  for (const repo of repositories) {
    if (!repo.enabled || (opts.only !== undefined && repo.name !== opts.only)) continue;
    try {
      if (configuredUrl.get(repo.name) === repo.url) {
        const { origin: _o, ...snap } = await getRepodata(redis, repo, opts);
        snapshots.push(snap);
      } else {
        const fetched = await fetchRepodata(repo, opts);
        snapshots.push({ repository: repo, packages: fetched.packages, updated: fetched.updated });
      }
    } catch (err) {
      if (err instanceof RepositoryError) failures.push({ repository: repo.name, error: err });
      else throw err;
    }
  }
  return { snapshots, failures, repositories };
}

/**
 * Expires the repodata cache (NS8's clean-repositories-cache): of repository `name`, or of all
 * repositories. Returns the names whose cache existed and was removed.
 * @throws RedisError when Redis fails.
 */
export async function refreshRepositories(redis: Redis, name?: string): Promise<string[]> {
  const prefix = keys.repositoryCache('');
  try {
    let cacheKeys: string[];
    if (name !== undefined) {
      cacheKeys = [keys.repositoryCache(name)];
    } else {
      cacheKeys = await scanKeys(redis, `${prefix}*`, 200);
    }
    const removed: string[] = [];
    for (const k of cacheKeys) {
      if ((await redis.del(k)) > 0) removed.push(k.slice(prefix.length));
      memoFor(redis).delete(k.slice(prefix.length));
    }
    return removed;
  } catch (err) {
    throw redisFailure(`expiring ${name === undefined ? `${prefix}*` : keys.repositoryCache(name)}`, err);
  }
}
