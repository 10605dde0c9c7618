/**
 * The on-disk layout the node's image caches share (image-cache.ts for module images,
 * service-image-cache.ts for service images): one directory per manifest digest,
 * `<dir>/<hex>/`, complete only when its `complete` marker names that digest (an entry appears by
 * the rename of a finished fill directory), and `<dir>/refs/<sha256(url)>.json` for the digest a
 * URL was fetched as; plus one fill per key at a time in this process.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { normalizeImageRef } from '../../host/image-store.js';

/** A manifest digest as the caches key entries by. */
export const DIGEST = /^sha256:[0-9a-f]{64}$/;

/** Age after which a fill directory is taken as left by a killed fill. */
export const STALE_FILL_MS = 60 * 60_000;

/** Hex sha256 of a string or buffer. */
export const sha = (s: string | Buffer): string => createHash('sha256').update(s).digest('hex');

/** A digest without its `sha256:` prefix (the entry directory's name). */
export const hex = (digest: string): string => digest.replace(/^sha256:/, '');

/** A JSON file's content; undefined when missing or not JSON. */
export async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

/** Paths of a cache directory in the shared layout. */
export class DigestDirs {
  /** Fills under way in this process, by key: a second caller gets the first one's promise. */
  private readonly inflight = new Map<string, Promise<unknown>>();

  constructor(readonly dir: string) {}

  /** The entry directory of `digest`. */
  entryDir(digest: string): string {
    return path.join(this.dir, hex(digest));
  }

  /** The ref file of `url` (normalized). */
  refFile(url: string): string {
    return path.join(this.dir, 'refs', `${sha(normalizeImageRef(url))}.json`);
  }

  /** The lock file serializing fills of `key` across processes. */
  lockFile(key: string): string {
    return path.join(this.dir, `.lock-${sha(key).slice(0, 16)}`);
  }

  /** The entry directory of `digest` when it is complete (its marker names it); undefined when missing or half-written. */
  async completeDir(digest: string): Promise<string | undefined> {
    if (!DIGEST.test(digest)) return undefined;
    const d = this.entryDir(digest);
    const marker = await fs.readFile(path.join(d, 'complete'), 'utf8').catch(() => undefined);
    return marker?.trim() === digest ? d : undefined;
  }

  /** Runs `fill` once per `key` at a time in this process; callers meanwhile share its result. */
  once<T>(key: string, fill: () => Promise<T>): Promise<T> {
    const running = this.inflight.get(key) as Promise<T> | undefined;
    if (running) return running;
    const p = fill().finally(() => this.inflight.delete(key));
    this.inflight.set(key, p);
    return p;
  }

  /**
   * The digests of the entries present, for an eviction; on the way, fill directories left by a
   * fill killed more than STALE_FILL_MS ago are removed (an hour: no fill of another agent
   * process on the node is still writing them). None when the cache directory does not exist.
   */
  async entriesAndStaleFillsRemoved(): Promise<string[]> {
    let names: string[];
    try {
      names = await fs.readdir(this.dir);
    } catch {
      return [];
    }
    const out: string[] = [];
    for (const name of names) {
      if (name.startsWith('.fill-')) {
        const st = await fs.lstat(path.join(this.dir, name)).catch(() => undefined);
        if (st && Date.now() - st.mtimeMs > STALE_FILL_MS) await fs.rm(path.join(this.dir, name), { recursive: true, force: true });
      } else if (/^[0-9a-f]{64}$/.test(name)) out.push(`sha256:${name}`);
    }
    return out;
  }

  /** True while a fill of `key` runs in this process. */
  filling(key: string): boolean {
    return this.inflight.has(key);
  }
}
