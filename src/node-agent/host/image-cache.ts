/**
 * The node's module-image cache: each module image is fetched once per node and digest, as root,
 * and its `imageroot/` and `ui/` directories are kept unpacked in a root-only directory, from which
 * every instance gets its copy (written by the instance's user, so files are theirs). This replaces
 * a `podman pull` into each instance user's storage plus a `podman create` + `podman export | tar`
 * per instance: the module image itself is never run (NS8 units run the service images of
 * `org.nethserver.images`, which users still pull into their own storage).
 *
 * Layout under `dir` (mode 0700, root):
 * - `<hex>/` one entry per manifest digest: `tree/<root>/...` (the unpacked directories),
 *   `meta.json` (url, digest, id, labels, the entries of each root) and `complete` (the digest),
 *   written last; an entry appears only by the rename of a finished temporary directory, so a
 *   process killed mid-fetch leaves at most a `.fill-*` directory, which the next fill removes.
 * - `refs/<sha256(url)>.json`: which digest a URL was fetched as (written after the entry).
 *
 * Fetch: `skopeo copy docker://… dir:` (manifest and blobs as in the registry, no storage
 * initialisation), then each layer is unpacked in order with tar (only the wanted directories),
 * applying OCI whiteouts (`.wh.<name>` deletes, `.wh..wh..opq` makes a directory opaque).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { CommandFailedError, Ns8ctlError, toNs8ctlError } from '../../errors.js';
import { withFileLock } from '../../host/file-lock.js';
import type { CommandRunner } from '../../host/runner.js';
import { writeFileAtomic } from '../atomic-write.js';
import { DIGEST, DigestDirs, hex, readJson, sha } from './digest-dirs.js';
import type { ImageFacts } from '../types.js';
import { imageRepository, normalizeImageRef } from '../../host/image-store.js';
import { ownerPrefix, shq, type Owner } from './owner.js';

/** A module image in the node cache. */
export interface CachedImage extends ImageFacts {
  /** Entries of each unpacked root directory (relative, directories end with `/`); absent: not in the image. */
  roots: Record<string, string[]>;
  /**
   * Per root, `size:mtime` (seconds) of each regular file: tar keeps both through every copy, so
   * a file of an instance that differs was edited there (drift).
   */
  stamps?: Record<string, Record<string, string>>;
}

/** The cache as the node agent uses it. */
export interface ImageCache {
  /** The cached image a URL was fetched as, if its entry is complete. Spawns nothing. */
  lookup(url: string): Promise<CachedImage | undefined>;
  /**
   * The cached image for `url`, fetched and unpacked first when missing (once per digest, even
   * when called concurrently). `digest`, when known (from the labels' inspection), pins the fetch.
   * `roots` are the directories to keep (imageroot and ui labels of the image).
   */
  ensure(url: string, opts: { digest?: string; roots: string[]; purpose: string }): Promise<CachedImage>;
  /**
   * Copies `root` of a cached image into `dest` (which must exist): tar reads the cache as root
   * and a second tar writes as `owner` (files owned by the module user, links it planted never
   * followed by root); as root for root. NS8 extract-image's `--no-overwrite-dir`. Returns the
   * entries copied, or undefined when the image has no such directory.
   */
  copy(image: CachedImage, root: string, dest: string, owner: Owner, purpose: string): Promise<string[] | undefined>;
  /**
   * Removes every entry (and ref) whose id and digest are not in `keep`, and fill directories of
   * killed fills older than an hour; returns the digests removed.
   */
  evict(keep: ReadonlySet<string>): Promise<string[]>;
}

interface Meta {
  url: string;
  digest: string;
  id: string;
  repoDigest: string;
  labels: Record<string, string>;
  roots: Record<string, string[]>;
  stamps: Record<string, Record<string, string>>;
}


/** Uid and gid that unpack layers (nobody): what a layer's links point at is out of its reach. */
const UNPACK_UID = 65534;

/** tar's flag for a layer blob's compression, from its magic bytes (gzip, zstd, or none). */
async function compressionFlag(blob: string): Promise<string[]> {
  const fh = await fs.open(blob, 'r');
  try {
    const { buffer, bytesRead } = await fh.read(Buffer.alloc(4), 0, 4, 0);
    const b = buffer.subarray(0, bytesRead);
    if (b[0] === 0x1f && b[1] === 0x8b) return ['-z'];
    if (b.equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) return ['--zstd'];
    return [];
  } finally {
    await fh.close();
  }
}

/** True when no component of `rel` under `tree` is a symbolic link (missing components are fine). */
async function insideTree(tree: string, rel: string): Promise<boolean> {
  let cur = tree;
  for (const part of rel.split('/').filter(Boolean)) {
    cur = path.join(cur, part);
    const st = await fs.lstat(cur).catch(() => undefined);
    if (!st) return true;
    if (st.isSymbolicLink()) return false;
  }
  return true;
}

/** `size:mtime` (whole seconds) of a regular file: what tar carries from the image to an instance. */
export function fileStamp(st: { size: number; mtimeMs: number }): string {
  return `${st.size}:${Math.floor(st.mtimeMs / 1000)}`;
}

/**
 * Relative entries under `dir`, directories with a trailing `/`, sorted (as `.imageroot.lst`), and
 * the stamp of each regular file. Links are listed, never followed.
 */
async function listTree(dir: string, rel = '', out: string[] = [], stamps: Record<string, string> = {}): Promise<{ entries: string[]; stamps: Record<string, string> }> {
  for (const e of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
    const p = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) {
      out.push(`${p}/`);
      await listTree(dir, p, out, stamps);
    } else {
      out.push(p);
      if (e.isFile()) stamps[p] = fileStamp(await fs.lstat(path.join(dir, p)));
    }
  }
  return { entries: rel ? out : out.sort(), stamps };
}

/** Production cache over the CommandRunner (skopeo, tar). */
export class RunnerImageCache implements ImageCache {
  private readonly dirs: DigestDirs;
  /** Complete entries read already: an entry's content never changes for its digest (only the marker is re-read). */
  private readonly known = new Map<string, CachedImage>();

  constructor(
    private readonly runner: CommandRunner,
    private readonly dir: string,
    private readonly tlsArgs: (url: string) => string[] = () => [],
  ) {
    this.dirs = new DigestDirs(dir);
  }

  private entryDir(digest: string): string {
    return this.dirs.entryDir(digest);
  }

  private refFile(url: string): string {
    return this.dirs.refFile(url);
  }

  /** A complete entry by digest; undefined when missing, half-written or not matching its marker. */
  private async entry(digest: string): Promise<CachedImage | undefined> {
    const d = await this.dirs.completeDir(digest);
    if (!d) {
      this.known.delete(digest);
      return undefined;
    }
    const seen = this.known.get(digest);
    if (seen) return seen;
    const meta = await readJson<Meta>(path.join(d, 'meta.json'));
    if (!meta || meta.digest !== digest || typeof meta.id !== 'string' || typeof meta.roots !== 'object') return undefined;
    const e: CachedImage = { url: meta.url, id: meta.id, digest: meta.digest, repoDigest: meta.repoDigest, labels: meta.labels ?? {}, roots: meta.roots, stamps: meta.stamps ?? {} };
    this.known.set(digest, e);
    return e;
  }

  async lookup(url: string): Promise<CachedImage | undefined> {
    const at = normalizeImageRef(url).indexOf('@');
    const digest = at >= 0 ? normalizeImageRef(url).slice(at + 1) : (await readJson<{ url: string; digest: string }>(this.refFile(url)))?.digest;
    const e = digest ? await this.entry(digest) : undefined;
    return e ? { ...e, url } : undefined;
  }

  ensure(url: string, opts: { digest?: string; roots: string[]; purpose: string }): Promise<CachedImage> {
    const key = opts.digest && DIGEST.test(opts.digest) ? opts.digest : normalizeImageRef(url);
    return this.dirs.once(key, () => this.ensureLocked(url, key, opts));
  }

  private async ensureLocked(url: string, key: string, opts: { digest?: string; roots: string[]; purpose: string }): Promise<CachedImage> {
    const found = DIGEST.test(key) ? await this.entry(key) : await this.lookup(url);
    if (found) {
      if (DIGEST.test(key)) await this.writeRef(url, key);
      return { ...found, url };
    }
    await fs.mkdir(path.join(this.dir, 'refs'), { recursive: true, mode: 0o700 });
    await fs.chmod(this.dir, 0o700);
    // Another agent process on the node (a one-shot reconcile beside the daemon) fills the same way.
    return withFileLock(this.dirs.lockFile(key), async () => {
      const again = DIGEST.test(key) ? await this.entry(key) : await this.lookup(url);
      if (again) return { ...again, url };
      return this.fill(url, key, opts);
    }, { timeoutMs: 30 * 60_000 });
  }

  private async writeRef(url: string, digest: string): Promise<void> {
    if (normalizeImageRef(url).includes('@')) return;
    const file = this.refFile(url);
    const cur = await readJson<{ url: string; digest: string }>(file);
    if (cur?.digest === digest) return;
    await writeFileAtomic(file, JSON.stringify({ url, digest }), { mode: 0o600 });
  }

  private async fill(url: string, key: string, opts: { digest?: string; roots: string[]; purpose: string }): Promise<CachedImage> {
    const tmp = path.join(this.dir, `.fill-${sha(key).slice(0, 16)}`);
    await fs.rm(tmp, { recursive: true, force: true }); // left by a killed fill
    await fs.mkdir(path.join(tmp, 'tree'), { recursive: true, mode: 0o700 });
    await fs.chown(path.join(tmp, 'tree'), UNPACK_UID, UNPACK_UID);
    try {
      const ref = DIGEST.test(key) ? `${imageRepository(url)}@${key}` : normalizeImageRef(url);
      const blobs = path.join(tmp, 'blobs');
      const viaPodman = await this.download(url, ref, blobs, opts.purpose);
      const manifestText = await fs.readFile(path.join(blobs, 'manifest.json'));
      const manifest = JSON.parse(manifestText.toString('utf8')) as { schemaVersion?: number; config?: { digest?: string }; layers?: { digest?: string }[] };
      if (manifest.schemaVersion !== 2 || !manifest.config?.digest || !Array.isArray(manifest.layers)) {
        throw new Ns8ctlError('image_unsupported', `${opts.purpose}: ${url} has a manifest that is neither OCI nor Docker schema 2 (schemaVersion ${String(manifest.schemaVersion)}): it cannot be unpacked`, { user: false });
      }
      // podman save writes a manifest of its own: the registry's digest is the one podman pulled.
      const digest = DIGEST.test(key) ? key : viaPodman?.digest && DIGEST.test(viaPodman.digest) ? viaPodman.digest : `sha256:${sha(manifestText)}`;
      const config = JSON.parse(await fs.readFile(path.join(blobs, hex(manifest.config.digest)), 'utf8')) as { config?: { Labels?: Record<string, string> | null } };
      const roots = [...new Set(opts.roots.map((r) => r.replace(/^\/+|\/+$/g, '')).filter(Boolean))];
      for (const layer of manifest.layers) {
        if (!layer.digest || !DIGEST.test(layer.digest)) throw new Ns8ctlError('image_unsupported', `${opts.purpose}: ${url} names a layer without a sha256 digest`, { user: false });
        await this.unpackLayer(path.join(blobs, hex(layer.digest)), path.join(tmp, 'tree'), roots, `${opts.purpose} (unpack ${url})`);
      }
      const rootEntries: Record<string, string[]> = {};
      const stamps: Record<string, Record<string, string>> = {};
      for (const r of roots) {
        const st = await fs.lstat(path.join(tmp, 'tree', r)).catch(() => undefined);
        if (!st?.isDirectory() || !(await insideTree(path.join(tmp, 'tree'), r))) continue;
        const listed = await listTree(path.join(tmp, 'tree', r));
        rootEntries[r] = listed.entries;
        stamps[r] = listed.stamps;
      }
      const meta: Meta = { url, digest, id: hex(manifest.config.digest), repoDigest: `${imageRepository(url)}@${digest}`, labels: config.config?.Labels ?? {}, roots: rootEntries, stamps };
      await fs.rm(blobs, { recursive: true, force: true });
      await fs.writeFile(path.join(tmp, 'meta.json'), JSON.stringify(meta));
      await fs.writeFile(path.join(tmp, 'complete'), `${digest}\n`);
      const final = this.entryDir(digest);
      // Filled meanwhile under another key (by tag and by digest): keep that one, it may be read.
      const done = await this.entry(digest);
      if (done) {
        await this.writeRef(url, digest);
        return { ...done, url };
      }
      // A half entry (no marker: an older layout, a disk error) is replaced, never trusted.
      await fs.rm(final, { recursive: true, force: true });
      await fs.rename(tmp, final);
      await this.writeRef(url, digest);
      return { url, id: meta.id, digest, repoDigest: meta.repoDigest, labels: meta.labels, roots: rootEntries, stamps };
    } finally {
      await fs.rm(tmp, { recursive: true, force: true });
    }
  }

  /**
   * Downloads manifest, config and layers of `ref` into `blobs` (skopeo's `dir:` layout). A node
   * without skopeo (NS8 nodes need not have it) pulls as root with podman and saves the image in
   * the same layout; a root copy this made is removed again. Returns podman's facts then.
   */
  private async download(url: string, ref: string, blobs: string, purpose: string): Promise<{ digest: string } | undefined> {
    const tls = this.tlsArgs(url);
    try {
      await this.runner.run(['skopeo', 'copy', '-q', '--retry-times', '2', ...tls.map((a) => a.replace('--tls-verify', '--src-tls-verify')), `docker://${ref}`, `dir:${blobs}`], {
        purpose: `${purpose} (fetch ${url} into the node image cache)`,
        mutating: true,
        timeoutMs: 30 * 60_000,
      });
      return undefined;
    } catch (err) {
      if (toNs8ctlError(err).code !== 'command_missing') throw err;
    }
    const had = await this.runner.run(['podman', 'image', 'exists', ref], { purpose: `${purpose} (is ${url} in root's store)`, allowFailure: true });
    await this.runner.run(['podman', 'pull', '--quiet', ...tls, ref], { purpose: `${purpose} (pull ${url} as root for the node image cache: no skopeo)`, mutating: true, timeoutMs: 30 * 60_000 });
    try {
      const res = await this.runner.run(['podman', 'image', 'inspect', '--format', '{{.Digest}}', ref], { purpose: `${purpose} (inspect ${url})` });
      await this.runner.run(['podman', 'image', 'save', '--format', 'docker-dir', '-o', blobs, ref], { purpose: `${purpose} (save ${url} for the node image cache)`, mutating: true, timeoutMs: 30 * 60_000 });
      return { digest: res.stdout.trim() };
    } finally {
      if (had.exitCode !== 0) await this.runner.run(['podman', 'rmi', '--ignore', ref], { purpose: `${purpose} (remove root's copy of ${url})`, mutating: true, allowFailure: true });
    }
  }

  /** Unpacks the `roots` of one layer into `tree`, then applies the layer's whiteouts. */
  private async unpackLayer(blob: string, tree: string, roots: string[], purpose: string): Promise<void> {
    const tops = [...new Set(roots.map((r) => r.split('/')[0]!))];
    // Members: the roots (tar extracts a directory's contents with it) and whiteouts of their top
    // directories (compression told from the blob's first bytes). tar runs as nobody, from
    // inside the tree (it cannot reach the root-only cache otherwise), reading the blob root
    // opened: links an image plants are never followed by root.
    const tar = ['setpriv', `--reuid=${UNPACK_UID}`, `--regid=${UNPACK_UID}`, '--clear-groups', 'tar', '-x', '-v', '-p', ...(await compressionFlag(blob)), '-f', '-', '--no-same-owner', '--exclude-caches-under', '--exclude=.gitignore', ...roots, ...tops.map((t) => `.wh.${t}`)];
    const argv = ['bash', '-c', 'exec "$@" < "$0"', blob, ...tar];
    const res = await this.runner.run(argv, { cwd: tree, purpose, mutating: true, allowFailure: true, timeoutMs: 30 * 60_000 });
    const complaints = res.stderr.split('\n').filter((l) => l.startsWith('tar: ') && !/Exiting with failure status/.test(l));
    if (res.exitCode !== 0 && !(res.exitCode === 2 && complaints.every((l) => /Not found in archive/.test(l)))) {
      throw new CommandFailedError('extract_failed', `${purpose}: tar exited ${res.exitCode ?? 'by signal'}: ${complaints.slice(-3).join(' | ') || res.stderr.trim().split('\n').slice(-2).join(' | ')}`, { argv, exitCode: res.exitCode, stderr: res.stderr });
    }
    const entries = res.stdout.split('\n').map((l) => l.replace(/^\.\//, '').replace(/\/+$/, '')).filter((l) => l !== '' && !l.split('/').includes('..'));
    const inLayer = new Set(entries);
    for (const e of entries) {
      const base = path.posix.basename(e);
      if (!base.startsWith('.wh.')) continue;
      const parent = path.posix.dirname(e) === '.' ? '' : path.posix.dirname(e);
      // Root deletes here: only inside the tree, never through a link the image planted.
      if (!(await insideTree(tree, parent))) throw new Ns8ctlError('image_unsupported', `${purpose}: whiteout ${e} lies under a symbolic link`, { user: false });
      await fs.rm(path.join(tree, e), { force: true });
      if (base === '.wh..wh..opq') {
        // Opaque: what lower layers had in this directory goes; this layer's own entries stay.
        const dir = path.join(tree, parent);
        for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
          const rel = parent ? `${parent}/${name}` : name;
          if (!inLayer.has(rel)) await fs.rm(path.join(dir, name), { recursive: true, force: true });
        }
      } else {
        await fs.rm(path.join(tree, parent, base.slice('.wh.'.length)), { recursive: true, force: true });
      }
    }
  }

  async copy(image: CachedImage, root: string, dest: string, owner: Owner, purpose: string): Promise<string[] | undefined> {
    const r = root.replace(/^\/+|\/+$/g, '');
    const entries = image.roots[r];
    if (!entries) return undefined;
    const src = path.join(this.entryDir(image.digest), 'tree', r);
    const writer = [...ownerPrefix(owner), 'tar', '-x', '--no-overwrite-dir', ...(owner.kind === 'root' ? ['--no-same-owner'] : []), '-C', dest, '-f', '-'].map(shq).join(' ');
    const script = `set -o pipefail; tar -C ${shq(src)} -cf - . | ${writer}`;
    const res = await this.runner.run(['bash', '-c', script], { cwd: owner.kind === 'user' ? owner.home : '/', purpose, mutating: true, allowFailure: true, timeoutMs: 30 * 60_000 });
    if (res.exitCode !== 0) {
      throw new CommandFailedError('extract_failed', `${purpose}: copying ${r}/ of ${image.url} into ${dest} failed (exit ${res.exitCode ?? 'by signal'}): ${res.stderr.trim().split('\n').slice(-3).join(' | ')}`, { argv: ['bash', '-c', script], exitCode: res.exitCode, stderr: res.stderr });
    }
    return entries;
  }

  async evict(keep: ReadonlySet<string>): Promise<string[]> {
    const removed: string[] = [];
    for (const digest of await this.dirs.entriesAndStaleFillsRemoved()) {
      if (keep.has(digest) || this.dirs.filling(digest)) continue;
      const meta = await readJson<Meta>(path.join(this.entryDir(digest), 'meta.json'));
      if (meta?.id && keep.has(meta.id)) continue;
      await fs.rm(this.entryDir(digest), { recursive: true, force: true });
      this.known.delete(digest);
      removed.push(digest);
    }
    if (removed.length) {
      const gone = new Set(removed);
      for (const ref of await fs.readdir(path.join(this.dir, 'refs')).catch(() => [] as string[])) {
        const r = await readJson<{ digest: string }>(path.join(this.dir, 'refs', ref));
        if (!r || gone.has(r.digest)) await fs.rm(path.join(this.dir, 'refs', ref), { force: true });
      }
    }
    return removed;
  }
}
