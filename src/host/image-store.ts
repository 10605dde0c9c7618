/**
 * Which images an owner (root or a module user) has, read from containers/storage's own metadata
 * file (`<graphroot>/<driver>-images/images.json`: id, digest, names per image) instead of spawning
 * `podman images` once per instance. When the file cannot be read as expected the caller falls
 * back to podman (see PodmanHost.listImages).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';

/** One local image. */
export interface LocalImage {
  id: string;
  digest: string;
  /** Fully qualified names (`registry/repo:tag`). */
  names: string[];
  /** Manifest digests known for the image. */
  digests: string[];
}

/**
 * Normalises an image reference as podman stores names: a registry host is added (`docker.io`,
 * with `library/` for one-segment names) when the first segment is not a host, and `:latest` when
 * there is neither tag nor digest. `docker://` prefixes are dropped.
 */
export function normalizeImageRef(ref: string): string {
  let r = ref.replace(/^docker:\/\//, '');
  const slash = r.indexOf('/');
  const first = slash < 0 ? '' : r.slice(0, slash);
  if (slash < 0 || !(first.includes('.') || first.includes(':') || first === 'localhost')) {
    r = slash < 0 ? `docker.io/library/${r}` : `docker.io/${r}`;
  }
  const last = r.slice(r.lastIndexOf('/') + 1);
  if (!last.includes(':') && !last.includes('@')) r += ':latest';
  return r;
}

/** Repository part of a reference (no tag, no digest): `host/repo/name`. */
export function imageRepository(ref: string): string {
  const n = normalizeImageRef(ref);
  const at = n.indexOf('@');
  const noDigest = at >= 0 ? n.slice(0, at) : n;
  const slash = noDigest.lastIndexOf('/');
  const colon = noDigest.lastIndexOf(':');
  return colon > slash ? noDigest.slice(0, colon) : noDigest;
}

/** The image `ref` names among `images`, if any (by name, or by repository + digest for `@sha256:` refs). */
export function findImage(images: readonly LocalImage[], ref: string): LocalImage | undefined {
  const n = normalizeImageRef(ref);
  const at = n.indexOf('@');
  if (at >= 0) {
    const digest = n.slice(at + 1);
    const repo = imageRepository(ref);
    return images.find((i) => (i.digest === digest || i.digests.includes(digest)) && (i.names.length === 0 || i.names.some((x) => imageRepository(x) === repo)));
  }
  return images.find((i) => i.names.includes(n));
}

/**
 * Reads every `*-images/images.json` under a graphroot. Returns [] when the storage does not exist
 * yet; undefined when it exists but its metadata is not in the expected shape (caller falls back).
 */
export async function readImageStore(graphroot: string): Promise<LocalImage[] | undefined> {
  let entries: string[];
  try {
    entries = await fs.readdir(graphroot);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    return undefined;
  }
  const out: LocalImage[] = [];
  for (const dir of entries.filter((e) => e.endsWith('-images'))) {
    let text: string;
    try {
      text = await fs.readFile(path.join(graphroot, dir, 'images.json'), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      return undefined;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text || '[]');
    } catch {
      return undefined;
    }
    if (!Array.isArray(parsed)) return undefined;
    for (const raw of parsed as Record<string, unknown>[]) {
      if (typeof raw?.id !== 'string') return undefined;
      out.push({
        id: raw.id,
        digest: typeof raw.digest === 'string' ? raw.digest : '',
        names: Array.isArray(raw.names) ? (raw.names as string[]) : [],
        digests: Array.isArray(raw.digests) ? (raw.digests as string[]) : [],
      });
    }
  }
  return out;
}

/**
 * The graphroot podman uses by default for this process's user (root: /var/lib/containers/storage;
 * others: `$XDG_DATA_HOME/containers/storage` or `~/.local/share/containers/storage`), or undefined
 * when a storage.conf may choose another one (`CONTAINERS_STORAGE_CONF`, the user's own file, or a
 * `graphroot`/`rootless_storage_path` in /etc/containers/storage.conf): then only podman knows.
 */
export async function defaultGraphroot(env: Readonly<Record<string, string | undefined>>, rootfull: boolean, etcDir = '/etc/containers'): Promise<string | undefined> {
  if (env.CONTAINERS_STORAGE_CONF) return undefined;
  const home = env.HOME;
  if (!rootfull && !home) return undefined;
  if (!rootfull && (await exists(path.join(env.XDG_CONFIG_HOME || path.join(home!, '.config'), 'containers', 'storage.conf')))) return undefined;
  const system = await fs.readFile(path.join(etcDir, 'storage.conf'), 'utf8').catch(() => '');
  if (/^\s*(graphroot|rootless_storage_path)\s*=/m.test(system)) return undefined;
  if (rootfull) return '/var/lib/containers/storage';
  return path.join(env.XDG_DATA_HOME || path.join(home!, '.local', 'share'), 'containers', 'storage');
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}
