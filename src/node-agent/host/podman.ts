/**
 * Podman (and skopeo) behind an interface: pull, inspect, the node's module-image cache
 * (image-cache.ts: module images fetched once per node and digest, their imageroot/ and ui/
 * copied into each instance), extraction of a directory of an image already in an owner's store
 * the way NS8's extract-image does (`podman create` + `podman export | tar`, ns8-core-facts §3:
 * the fallback for instances whose image is only there), remove images. Every command goes
 * through the CommandRunner; rootless work runs as the module user.
 */
import path from 'node:path';
import { Ns8ctlError, CommandFailedError } from '../../errors.js';
import type { CommandRunner } from '../../host/runner.js';
import type { ImageFacts } from '../types.js';
import { RunnerImageCache, type ImageCache } from './image-cache.js';
import { RunnerServiceImageCache, type ServiceImageCache } from './service-image-cache.js';
import { findImage, imageRepository, normalizeImageRef, readImageStore, type LocalImage } from '../../host/image-store.js';
import { asOwner, ownerPrefix, shq, type Owner } from './owner.js';
import type { HostLayout } from '../layout.js';
import { userStorage } from '../layout.js';

/** What the node agent needs from podman. */
export interface PodmanHost {
  /** The node's module-image cache (fetched once per digest as root, copied per instance). */
  readonly cache: ImageCache;
  /**
   * The node's service-image cache (fetched once per digest as root, imported by each rootless
   * instance user); absent: every user pulls from the registry.
   */
  readonly serviceCache?: ServiceImageCache;
  /** Images in the owner's store (read from storage metadata; podman only as a fallback). */
  listImages(owner: Owner): Promise<LocalImage[]>;
  /** `podman pull` as the owner. Throws with code registry_unreachable / image_not_found / command_failed. */
  pull(owner: Owner, url: string, purpose: string): Promise<void>;
  /** Labels, id and digests of a local image. */
  inspectLocal(owner: Owner, url: string, purpose: string): Promise<ImageFacts>;
  /** Labels and digest of an image in its registry, without pulling (skopeo). */
  inspectRemote(url: string, purpose: string): Promise<ImageFacts>;
  /**
   * Extracts directories of the image as NS8's extract-image does: one `podman create`, then per
   * part `podman export | tar -x --strip-components` of `root` into `dest` (which must exist).
   * Returns, per part, the extracted entries (relative, directories end with `/`), or undefined
   * when the image has no such directory. `tarAsOwner` runs that part's tar as the owner (files
   * owned by the module user); else as root.
   */
  extract(owner: Owner, url: string, parts: ExtractPart[], opts: { container: string; purpose: string }): Promise<(string[] | undefined)[]>;
  /** `podman rm -f` of a leftover extraction container and `podman rmi --ignore` of images (no error when absent). */
  removeImages(owner: Owner, refs: string[], containers: string[], purpose: string): Promise<void>;
}

/** One directory of an image to extract. */
export interface ExtractPart {
  root: string;
  dest: string;
  tarAsOwner: boolean;
}

export interface PodmanHostOptions {
  /** Registry hosts (`host:port`) reached over plain HTTP / without TLS verification. */
  insecureRegistries?: string[];
  /** Where a line about the node (a cache it cannot use) goes; stderr by default. */
  log?: (line: string) => void;
}

function registryHost(url: string): string {
  return normalizeImageRef(url).split('/')[0] ?? '';
}

/** Where the node's module-image cache lives: `<agentStateDir>/image-cache` (root only). */
export function imageCacheDir(layout: Pick<HostLayout, 'agentStateDir'>): string {
  return path.join(layout.agentStateDir, 'image-cache');
}

/** Where the node's service-image cache lives (HostLayout.serviceImageCacheDir): instance users must reach its entries. */
export function serviceImageCacheDir(layout: Pick<HostLayout, 'serviceImageCacheDir'>): string {
  return layout.serviceImageCacheDir;
}

/** Production PodmanHost over the CommandRunner. */
export class RunnerPodmanHost implements PodmanHost {
  readonly cache: ImageCache;
  readonly serviceCache: ServiceImageCache;

  constructor(
    private readonly runner: CommandRunner,
    private readonly layout: HostLayout,
    private readonly opts: PodmanHostOptions = {},
  ) {
    this.cache = new RunnerImageCache(runner, imageCacheDir(layout), (url) => this.tls(url));
    this.serviceCache = new RunnerServiceImageCache(runner, serviceImageCacheDir(layout), (url) => this.tls(url), opts.log ?? ((line) => process.stderr.write(`${line}\n`)));
  }

  private tls(url: string): string[] {
    return (this.opts.insecureRegistries ?? []).includes(registryHost(url)) ? ['--tls-verify=false'] : [];
  }

  private graphroot(owner: Owner): string {
    return owner.kind === 'root' ? this.layout.rootStorage : userStorage(owner.home);
  }

  async listImages(owner: Owner): Promise<LocalImage[]> {
    const fromFile = await readImageStore(this.graphroot(owner));
    if (fromFile) return fromFile;
    const { argv, opts } = asOwner(owner, ['podman', 'images', '--format', 'json']);
    const res = await this.runner.run(argv, { ...opts, purpose: `list images of ${owner.kind === 'root' ? 'root' : owner.name}` });
    const rows = JSON.parse(res.stdout || '[]') as { Id: string; Digest?: string; Names?: string[]; RepoDigests?: string[] }[];
    return rows.map((r) => ({ id: r.Id, digest: r.Digest ?? '', names: r.Names ?? [], digests: (r.RepoDigests ?? []).map((d) => d.slice(d.indexOf('@') + 1)) }));
  }

  async pull(owner: Owner, url: string, purpose: string): Promise<void> {
    const { argv, opts } = asOwner(owner, ['podman', 'pull', '--quiet', ...this.tls(url), url]);
    await this.runner.run(argv, { ...opts, purpose, mutating: true, timeoutMs: 30 * 60_000 });
  }

  async inspectLocal(owner: Owner, url: string, purpose: string): Promise<ImageFacts> {
    const { argv, opts } = asOwner(owner, ['podman', 'image', 'inspect', '--format', 'json', url]);
    const res = await this.runner.run(argv, { ...opts, purpose });
    const [img] = JSON.parse(res.stdout || '[]') as { Id: string; Digest?: string; RepoDigests?: string[]; Labels?: Record<string, string> | null; Config?: { Labels?: Record<string, string> | null } }[];
    if (!img) throw new Ns8ctlError('image_not_found', `${purpose}: podman image inspect ${url} returned nothing`);
    const repo = imageRepository(url);
    const repoDigest = (img.RepoDigests ?? []).find((d) => d.startsWith(`${repo}@`)) ?? img.RepoDigests?.[0] ?? (img.Digest ? `${repo}@${img.Digest}` : '');
    return { url, id: img.Id, digest: img.Digest ?? '', repoDigest, labels: img.Labels ?? img.Config?.Labels ?? {} };
  }

  async inspectRemote(url: string, purpose: string): Promise<ImageFacts> {
    const ref = url.replace(/^docker:\/\//, '');
    const res = await this.runner.run(['skopeo', 'inspect', '--no-tags', '--retry-times', '0', ...this.tls(url), `docker://${ref}`], { purpose, timeoutMs: 120_000 });
    const info = JSON.parse(res.stdout || '{}') as { Digest?: string; Labels?: Record<string, string> | null };
    const digest = info.Digest ?? '';
    return { url, id: '', digest, repoDigest: digest ? `${imageRepository(url)}@${digest}` : '', labels: info.Labels ?? {} };
  }

  async extract(owner: Owner, url: string, parts: ExtractPart[], o: { container: string; purpose: string }): Promise<(string[] | undefined)[]> {
    const p = ownerPrefix(owner).map(shq).join(' ');
    // podman export opens /dev/stdout by path: as a module user it cannot reopen a pipe root
    // created, so for a user the pipe to tar is made by the user's own shell (`| cat`).
    const exporter = owner.kind === 'root' ? `podman export ${shq(o.container)}` : `"\${P[@]}" bash -o pipefail -c 'podman export "$1" | cat' bash ${shq(o.container)}`;
    const lines = [
      `P=(${p})`,
      `"\${P[@]}" podman create --replace --name ${shq(o.container)} --entrypoint=/ ${shq(url)} >/dev/null || exit 11`,
      `cleanup() { "\${P[@]}" podman rm -f ${shq(o.container)} >/dev/null 2>&1 || true; }`,
      'trap cleanup EXIT',
    ];
    parts.forEach((part, i) => {
      const depth = part.root.split('/').filter(Boolean).length;
      lines.push(
        `T=(${part.tarAsOwner ? p : ''})`,
        `${exporter} | "\${T[@]}" tar -x -v --no-overwrite-dir --no-same-owner --exclude-caches-under --exclude=.gitignore --strip-components=${depth} -C ${shq(part.dest)} ${shq(part.root)} 2>&1`,
        'st=("${PIPESTATUS[@]}")',
        `echo "@@ns8ctl-part ${i} \${st[0]} \${st[1]}"`,
      );
    });
    const script = lines.join('\n');
    const cwd = owner.kind === 'user' ? owner.home : '/';
    const res = await this.runner.run(['bash', '-c', script], { cwd, purpose: o.purpose, mutating: true, allowFailure: true, timeoutMs: 30 * 60_000 });
    const fail = (why: string): never => {
      throw new CommandFailedError('extract_failed', `${o.purpose}: extracting ${parts.map((x) => `${x.root}/`).join(' and ')} of ${url} failed: ${why}`, { argv: ['bash', '-c', script], exitCode: res.exitCode, stderr: res.stderr });
    };
    if (res.exitCode === 11) fail(`podman create: ${res.stderr.trim().split('\n').slice(-2).join(' | ')}`);
    const out: (string[] | undefined)[] = [];
    let chunk: string[] = [];
    for (const line of res.stdout.split('\n')) {
      const m = /^@@ns8ctl-part (\d+) (\d+) (\d+)$/.exec(line);
      if (!m) {
        chunk.push(line);
        continue;
      }
      const part = parts[Number(m[1])]!;
      const [exportRc, tarRc] = [Number(m[2]), Number(m[3])];
      const complaints = chunk.filter((l) => l.startsWith('tar: ') && !/Exiting with failure status/.test(l));
      if (exportRc !== 0) fail(`podman export exited ${exportRc}: ${res.stderr.trim().split('\n').slice(-2).join(' | ')}`);
      if (tarRc !== 0) {
        // The image has no such directory: tar's only complaint is "Not found in archive".
        if (tarRc === 2 && complaints.length > 0 && complaints.every((l) => /Not found in archive/.test(l))) out.push(undefined);
        else fail(`tar into ${part.dest} exited ${tarRc}: ${complaints.slice(-3).join(' | ')}`);
      } else {
        const prefix = part.root.replace(/\/+$/, '') + '/';
        out.push(
          chunk
            .map((l) => l.replace(/^\.\//, ''))
            .filter((l) => l.startsWith(prefix))
            .map((l) => l.slice(prefix.length))
            .filter((l) => l !== '' && !l.split('/').includes('..'))
            .sort(),
        );
      }
      chunk = [];
    }
    if (out.length !== parts.length) fail(`the extraction script ended early (exit ${res.exitCode}): ${res.stderr.trim().split('\n').slice(-2).join(' | ')}`);
    return out;
  }

  async removeImages(owner: Owner, refs: string[], containers: string[], purpose: string): Promise<void> {
    if (containers.length) {
      const c = asOwner(owner, ['podman', 'rm', '--force', '--ignore', ...containers]);
      await this.runner.run(c.argv, { ...c.opts, purpose, mutating: true });
    }
    if (refs.length) {
      const r = asOwner(owner, ['podman', 'rmi', '--ignore', ...refs]);
      await this.runner.run(r.argv, { ...r.opts, purpose, mutating: true, allowFailure: true });
    }
  }
}

export { findImage };
