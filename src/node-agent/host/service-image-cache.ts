/**
 * The node's service-image cache: each service image a rootless instance runs is fetched from its
 * registry once per node and digest, as root, into skopeo's `dir:` layout (manifest and blobs as
 * in the registry), and each instance user imports it from there into its own storage with
 * `skopeo copy dir:… containers-storage:…`. The registry is reached once per image instead of once
 * per instance, and the per-user import skips the registry round trips of a `podman pull` (about
 * a third less time per user on the development host, see docs/performance.md).
 *
 * Why not a read-only store shared by every user (`additionalimagestores`): files of one on-disk
 * tree cannot belong to two users' different subordinate id ranges. With podman 4.3 and
 * fuse-overlayfs 1.10 the store's owners can be presented through `force_mask` xattrs, but a
 * directory copied up by a write gets the overflow owner (65534), so a service user's second
 * write into its own directory fails (docs/performance.md has the details).
 *
 * Layout under `dir` (mode 0711, root: users can open an entry they name, never list):
 * - `<hex>/` one entry per manifest digest (mode 0755, files 0644: users read it as themselves):
 *   skopeo's `manifest.json`, `version` and blobs, and `complete` (the digest) written last; an
 *   entry appears only by the rename of a finished `.fill-*` directory, so a fetch killed
 *   half-way is never imported from.
 * - `refs/<sha256(url)>.json` (root only): the digest a URL was fetched as, and when. A tag is
 *   fetched again once its ref is older than REF_TTL_MS, so a moved tag reaches new instances.
 *
 * Service images named by digest (`repo@sha256:…`), a node without skopeo, or a cache directory
 * the users cannot reach (an ancestor without search permission for others) keep the per-user
 * `podman pull`: `ensure` returns undefined then.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { CommandFailedError, toNs8ctlError } from '../../errors.js';
import { withFileLock } from '../../host/file-lock.js';
import type { CommandRunner } from '../../host/runner.js';
import { writeFileAtomic } from '../atomic-write.js';
import { DigestDirs, readJson, sha } from './digest-dirs.js';
import { normalizeImageRef } from '../../host/image-store.js';
import { asOwner, type Owner } from './owner.js';

/** A service image in the node cache. */
export interface CachedServiceImage {
  /** The URL as the instance names it. */
  url: string;
  /** Manifest digest (what `podman images --digests` shows after the import). */
  digest: string;
  /** The entry directory (skopeo `dir:` layout). */
  dir: string;
}

/** The cache as the `pull-service-image` step uses it. */
export interface ServiceImageCache {
  /** The complete entry a URL was fetched as (ref younger than REF_TTL_MS). Spawns nothing. */
  lookup(url: string): Promise<CachedServiceImage | undefined>;
  /**
   * The cached image for `url`, fetched first when missing (once per node and digest, also when
   * called concurrently or by another agent process). Undefined when the cache cannot serve it
   * (digest reference, no skopeo, directory out of the users' reach): pull per user then.
   * @throws CommandFailedError when the registry fetch fails (as `podman pull` would).
   */
  ensure(url: string, purpose: string): Promise<CachedServiceImage | undefined>;
  /** `skopeo copy dir:<entry> containers-storage:<url>` as the instance user: the image under its URL, same digest. */
  importInto(image: CachedServiceImage, owner: Extract<Owner, { kind: 'user' }>, purpose: string): Promise<void>;
  /**
   * Removes every entry no URL of `keepUrls` was fetched as, refs of other URLs, and fill
   * directories of killed fetches older than an hour; returns the digests removed.
   */
  evict(keepUrls: ReadonlySet<string>): Promise<string[]>;
}

/** How long a tag's digest is trusted before new instances make the node fetch it again. */
export const REF_TTL_MS = 60 * 60_000;

interface Ref {
  url: string;
  digest: string;
  /** Epoch ms of the fetch that resolved the tag. */
  at: number;
}

/** Makes every directory under `dir` 0755 and every file 0644 (users read the entry as themselves). */
async function openUp(dir: string): Promise<void> {
  await fs.chmod(dir, 0o755);
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await openUp(p);
    else if (e.isFile()) await fs.chmod(p, 0o644);
  }
}

/** Production cache over the CommandRunner (skopeo). */
export class RunnerServiceImageCache implements ServiceImageCache {
  private readonly dirs: DigestDirs;
  private reachable: Promise<boolean> | undefined;

  constructor(
    private readonly runner: CommandRunner,
    private readonly dir: string,
    private readonly tlsArgs: (url: string) => string[] = () => [],
    private readonly log: (line: string) => void = () => undefined,
  ) {
    this.dirs = new DigestDirs(dir);
  }

  private entryDir(digest: string): string {
    return this.dirs.entryDir(digest);
  }

  private refFile(url: string): string {
    return this.dirs.refFile(url);
  }

  /** A complete entry by digest; undefined when missing or half-written. */
  private entry(digest: string): Promise<string | undefined> {
    return this.dirs.completeDir(digest);
  }

  async lookup(url: string): Promise<CachedServiceImage | undefined> {
    const ref = await readJson<Ref>(this.refFile(url));
    if (!ref || typeof ref.digest !== 'string' || !(Date.now() - Number(ref.at) < REF_TTL_MS)) return undefined;
    const d = await this.entry(ref.digest);
    return d ? { url, digest: ref.digest, dir: d } : undefined;
  }

  ensure(url: string, purpose: string): Promise<CachedServiceImage | undefined> {
    const key = normalizeImageRef(url);
    if (key.includes('@')) return Promise.resolve(undefined);
    return this.dirs.once(key, () => this.ensureLocked(url, key, purpose));
  }

  /**
   * True when every ancestor of the cache directory lets others search it (users open entries by
   * path). The directories that do not exist yet (a fresh node has no /var/lib/ns8ctl) are made
   * searchable, not listable (0711); an existing one is left as its owner set it. Checked once per
   * process; false is logged, and users pull for themselves.
   */
  private usable(): Promise<boolean> {
    this.reachable ??= (async () => {
      const missing: string[] = [];
      for (let d = path.resolve(this.dir); ; d = path.dirname(d)) {
        const st = await fs.stat(d).catch(() => undefined);
        if (!st) {
          missing.unshift(d);
        } else if ((st.mode & 0o001) === 0 && d !== path.resolve(this.dir)) {
          this.log(`node-agent: ${d} is not searchable by other users, so instance users cannot import service images from the node cache in ${this.dir}: each pulls them from the registry`);
          return false;
        }
        if (path.dirname(d) === d) break;
      }
      for (const d of missing) await mkdirSearchable(d);
      return true;
    })();
    return this.reachable;
  }

  private async ensureLocked(url: string, key: string, purpose: string): Promise<CachedServiceImage | undefined> {
    if (!(await this.usable())) return undefined;
    const found = await this.lookup(url);
    if (found) return found;
    await fs.mkdir(path.join(this.dir, 'refs'), { recursive: true, mode: 0o700 });
    await fs.chmod(this.dir, 0o711);
    // Another agent process on the node (a one-shot reconcile beside the daemon) fetches the same way.
    return withFileLock(
      this.dirs.lockFile(key),
      async () => {
        const again = await this.lookup(url);
        if (again) return again;
        return this.fill(url, key, purpose);
      },
      { timeoutMs: 30 * 60_000 },
    );
  }

  private async fill(url: string, key: string, purpose: string): Promise<CachedServiceImage | undefined> {
    const tmp = path.join(this.dir, `.fill-${sha(key).slice(0, 16)}`);
    await fs.rm(tmp, { recursive: true, force: true }); // left by a killed fetch
    try {
      const tls = this.tlsArgs(url).map((a) => a.replace('--tls-verify', '--src-tls-verify'));
      try {
        await this.runner.run(['skopeo', 'copy', '-q', '--retry-times', '2', ...tls, `docker://${key}`, `dir:${tmp}`], {
          purpose: `${purpose} (fetch ${url} into the node's service-image cache)`,
          mutating: true,
          timeoutMs: 30 * 60_000,
        });
      } catch (err) {
        if (toNs8ctlError(err).code === 'command_missing') return undefined;
        throw err;
      }
      // dir: keeps the registry's manifest byte for byte: its hash is the digest users will see.
      const digest = `sha256:${sha(await fs.readFile(path.join(tmp, 'manifest.json')))}`;
      await fs.writeFile(path.join(tmp, 'complete'), `${digest}\n`);
      await openUp(tmp);
      if (!(await this.entry(digest))) {
        // A half entry (no marker: a disk error) is replaced, never trusted.
        await fs.rm(this.entryDir(digest), { recursive: true, force: true });
        await fs.rename(tmp, this.entryDir(digest));
      }
      const ref: Ref = { url, digest, at: Date.now() };
      await writeFileAtomic(this.refFile(url), JSON.stringify(ref), { mode: 0o600 });
      return { url, digest, dir: this.entryDir(digest) };
    } finally {
      await fs.rm(tmp, { recursive: true, force: true });
    }
  }

  async importInto(image: CachedServiceImage, owner: Extract<Owner, { kind: 'user' }>, purpose: string): Promise<void> {
    const dest = `containers-storage:${normalizeImageRef(image.url)}`;
    const { argv, opts } = asOwner(owner, ['skopeo', 'copy', '-q', `dir:${image.dir}`, dest]);
    const res = await this.runner.run(argv, { ...opts, purpose: `${purpose} (import ${image.url} from the node's service-image cache)`, mutating: true, allowFailure: true, timeoutMs: 30 * 60_000 });
    if (res.exitCode !== 0) {
      throw new CommandFailedError('command_failed', `${purpose}: importing ${image.url} (${image.digest}) from ${image.dir} into the storage of ${owner.name} failed (exit ${res.exitCode ?? 'by signal'}): ${res.stderr.trim().split('\n').slice(-3).join(' | ')}`, {
        argv,
        exitCode: res.exitCode,
        stderr: res.stderr,
      });
    }
  }

  async evict(keepUrls: ReadonlySet<string>): Promise<string[]> {
    // Listed before the refs are read: an entry a concurrent fetch adds meanwhile is not seen, so not evicted.
    const present = await this.dirs.entriesAndStaleFillsRemoved();
    const keepRefs = new Set([...keepUrls].map((u) => `${sha(normalizeImageRef(u))}.json`));
    const keep = new Set<string>();
    for (const name of await fs.readdir(path.join(this.dir, 'refs')).catch(() => [] as string[])) {
      const ref = await readJson<Ref>(path.join(this.dir, 'refs', name));
      // A fetch in flight in this process writes its ref after the entry: it is never evicted.
      if (ref && (keepRefs.has(name) || this.dirs.filling(normalizeImageRef(ref.url)))) keep.add(ref.digest);
      else await fs.rm(path.join(this.dir, 'refs', name), { force: true });
    }
    const removed: string[] = [];
    for (const digest of present) {
      if (keep.has(digest)) continue;
      await fs.rm(this.entryDir(digest), { recursive: true, force: true });
      removed.push(digest);
    }
    return removed;
  }
}

/** Makes `dir` with mode 0711 (the umask does not narrow it); an existing one is left alone. */
async function mkdirSearchable(dir: string): Promise<void> {
  try {
    await fs.mkdir(dir, { mode: 0o711 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return;
    throw err;
  }
  await fs.chmod(dir, 0o711);
}
