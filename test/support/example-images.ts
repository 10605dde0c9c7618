/**
 * Test harness: the example module images (examples/modules/) pushed into a test registry.
 *
 * Building takes ~20 s on 2 cores, so it happens once per source tree: `build-images.sh` runs with a
 * placeholder registry name and writes OCI layouts under a stable cache directory keyed by a hash
 * of examples/modules/ (+ busybox). For each registry, the placeholder inside each image config
 * (the `org.nethserver.images` label and the build history naming it) is replaced by the real
 * address, which yields exactly the images `build-images.sh --registry ADDR` would make; layers are
 * shared. Then every tag is pushed with skopeo. Fails (never skips) when podman/skopeo are missing.
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ProcessRunner } from '../../src/host/runner.js';
import { preparePodmanHost } from './host-podman.js';
import { withImageBuildLock } from './image-build-lock.js';

/** Full image URLs (`127.0.0.1:PORT/ns8ctl-examples/webapp:1.0.0`) of every pushed tag. */
export interface ExampleImages {
  registry: string;
  /** Rootless module image, tags 1.0.0, 1.1.0, 2.0.0 (2.0.0: min-from 1.1.0, service image 2.0.0). */
  webapp: { '1.0.0': string; '1.1.0': string; '2.0.0': string };
  /** Service image (busybox httpd on 8080 serving a page with its version), tags 1.0.0, 2.0.0. */
  webappHttpd: { '1.0.0': string; '2.0.0': string };
  /** Rootfull module image (tcp-ports-demand 2, max-per-node 1), tags 1.0.0, 1.1.0. */
  rootfullDemo: { '1.0.0': string; '1.1.0': string };
  /** Every image by name and tag (`byName['webapp']['1.0.0']`). */
  byName: Record<string, Record<string, string>>;
}

/** The registry name baked into the cached build; replaced per registry. */
export const PLACEHOLDER_REGISTRY = 'ns8ctl-example-registry.invalid';
const IMAGE_NAMES = ['webapp-httpd', 'webapp', 'rootfull-demo'] as const;

const here = path.dirname(fileURLToPath(import.meta.url));
/** examples/modules/ of this checkout (found upward, so the compiled copy under dist/ finds it too). */
export const EXAMPLES_DIR = ((): string => {
  for (let dir = here; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'examples', 'modules');
    if (existsSync(path.join(candidate, 'build-images.sh'))) return candidate;
    if (path.dirname(dir) === dir) return path.resolve(here, '..', '..', 'examples', 'modules');
  }
})();
const cacheRoot = (): string => process.env.NS8CTL_EXAMPLE_IMAGES_CACHE ?? '/var/tmp/ns8ctl-example-images';

async function hashTree(dir: string, h: ReturnType<typeof createHash>, rel = ''): Promise<void> {
  const entries = (await fsp.readdir(path.join(dir, rel), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const e of entries) {
    const p = path.join(rel, e.name);
    const full = path.join(dir, p);
    if (e.isDirectory()) {
      h.update(`d ${p}\n`);
      await hashTree(dir, h, p);
    } else {
      const st = await fsp.stat(full);
      h.update(`f ${p} ${st.mode & 0o111 ? 'x' : '-'}\n`);
      h.update(await fsp.readFile(full));
    }
  }
}

/** Hash of the example sources and the busybox binary: the cache key of a build. */
export async function exampleSourcesHash(): Promise<string> {
  const h = createHash('sha256');
  await hashTree(EXAMPLES_DIR, h);
  h.update(await fsp.readFile(process.env.BUSYBOX ?? '/bin/busybox'));
  return h.digest('hex').slice(0, 16);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Builds the OCI layouts once per source hash; concurrent processes wait for the first one. */
async function ensureBuilt(): Promise<string> {
  const dir = path.join(cacheRoot(), await exampleSourcesHash());
  const done = path.join(dir, 'complete');
  if (existsSync(done)) return dir;
  await fsp.mkdir(cacheRoot(), { recursive: true });
  const lock = `${dir}.lock`;
  for (;;) {
    try {
      await fsp.mkdir(lock);
      break;
    } catch {
      if (existsSync(done)) return dir;
      const age = await fsp.stat(lock).then((s) => Date.now() - s.mtimeMs, () => 0);
      if (age > 300_000) await fsp.rm(lock, { recursive: true, force: true });
      await sleep(500);
    }
  }
  try {
    if (existsSync(done)) return dir;
    await preparePodmanHost();
    const runner = new ProcessRunner();
    await fsp.rm(dir, { recursive: true, force: true });
    let refs: string[] = [];
    await withImageBuildLock(async () => {
      const res = await runner.run([path.join(EXAMPLES_DIR, 'build-images.sh'), '--registry', PLACEHOLDER_REGISTRY, '--out', path.join(dir, 'oci')], {
        purpose: 'build example module images',
        timeoutMs: 300_000,
      });
      refs = res.stdout.split('\n').filter(Boolean);
      // The cache is what matters: drop the placeholder-named images from local storage.
      await runner.run(['podman', 'rmi', '--ignore', ...refs], { allowFailure: true });
    });
    await fsp.writeFile(done, refs.join('\n') + '\n');
    // Builds of older sources are dead weight: keep only this one.
    for (const entry of await fsp.readdir(cacheRoot())) {
      if (/^[0-9a-f]{16}$/.test(entry) && path.join(cacheRoot(), entry) !== dir) await fsp.rm(path.join(cacheRoot(), entry), { recursive: true, force: true });
    }
    return dir;
  } finally {
    await fsp.rm(lock, { recursive: true, force: true });
  }
}

interface OciDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** Writes a blob by digest, replacing a symlink to the cache of the same name (never writing through it). */
async function putBlob(blobs: string, bytes: Buffer): Promise<{ digest: string; size: number }> {
  const hex = createHash('sha256').update(bytes).digest('hex');
  await fsp.rm(path.join(blobs, hex), { force: true });
  await fsp.writeFile(path.join(blobs, hex), bytes);
  return { digest: `sha256:${hex}`, size: bytes.length };
}

/**
 * Makes an OCI layout for one image name whose configs name `registry` instead of the placeholder.
 * Unchanged blobs are symlinked to the cache. Returns the layout dir and its tags.
 */
async function relabelLayout(cached: string, registry: string, into: string): Promise<string[]> {
  const blobsIn = path.join(cached, 'blobs', 'sha256');
  const blobsOut = path.join(into, 'blobs', 'sha256');
  await fsp.mkdir(blobsOut, { recursive: true });
  for (const name of await fsp.readdir(blobsIn)) await fsp.symlink(path.join(blobsIn, name), path.join(blobsOut, name));
  const index = JSON.parse(await fsp.readFile(path.join(cached, 'index.json'), 'utf8')) as { schemaVersion: number; manifests: OciDescriptor[] };
  const manifests: OciDescriptor[] = [];
  const tags: string[] = [];
  for (const desc of index.manifests) {
    const manifest = JSON.parse(await fsp.readFile(path.join(blobsIn, desc.digest.slice(7)), 'utf8')) as { config: OciDescriptor };
    const configText = await fsp.readFile(path.join(blobsIn, manifest.config.digest.slice(7)), 'utf8');
    const config = await putBlob(blobsOut, Buffer.from(configText.split(PLACEHOLDER_REGISTRY).join(registry)));
    manifest.config = { ...manifest.config, ...config };
    const m = await putBlob(blobsOut, Buffer.from(JSON.stringify(manifest)));
    manifests.push({ ...desc, ...m });
    const tag = desc.annotations?.['org.opencontainers.image.ref.name'];
    if (tag) tags.push(tag);
  }
  await fsp.writeFile(path.join(into, 'oci-layout'), await fsp.readFile(path.join(cached, 'oci-layout')));
  await fsp.writeFile(path.join(into, 'index.json'), JSON.stringify({ ...index, manifests }));
  return tags;
}

const pushed = new Map<string, Promise<ExampleImages>>();

/**
 * Ensures every example image tag exists in the registry at `registryAddress` (`127.0.0.1:PORT`,
 * plain HTTP) with labels naming that registry, and returns their URLs. Builds at most once per
 * source tree (disk cache shared by processes), pushes once per registry per process.
 */
export function ensureExampleImages(registryAddress: string): Promise<ExampleImages> {
  let p = pushed.get(registryAddress);
  if (!p) {
    p = pushExampleImages(registryAddress);
    pushed.set(registryAddress, p);
    p.catch(() => pushed.delete(registryAddress));
  }
  return p;
}

async function pushExampleImages(registry: string): Promise<ExampleImages> {
  const built = await ensureBuilt();
  const runner = new ProcessRunner();
  const work = path.join(tmpdir(), `ns8ctl-example-push-${randomBytes(4).toString('hex')}`);
  const byName: Record<string, Record<string, string>> = {};
  try {
    for (const name of IMAGE_NAMES) {
      const layout = path.join(work, name);
      const tags = await relabelLayout(path.join(built, 'oci', name), registry, layout);
      byName[name] = {};
      for (const tag of tags) {
        const url = `${registry}/ns8ctl-examples/${name}:${tag}`;
        await runner.run(['skopeo', 'copy', '-q', '--dest-tls-verify=false', `oci:${layout}:${tag}`, `docker://${url}`], { purpose: `push example image ${url}`, timeoutMs: 120_000 });
        byName[name][tag] = url;
      }
    }
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
  const pick = <T extends string>(name: string, tags: readonly T[]): Record<T, string> => {
    const out = {} as Record<T, string>;
    for (const t of tags) {
      const url = byName[name]?.[t];
      if (!url) throw new Error(`example image ${name}:${t} was not built (see examples/modules/${name}/versions/)`);
      out[t] = url;
    }
    return out;
  };
  return {
    registry,
    webapp: pick('webapp', ['1.0.0', '1.1.0', '2.0.0'] as const),
    webappHttpd: pick('webapp-httpd', ['1.0.0', '2.0.0'] as const),
    rootfullDemo: pick('rootfull-demo', ['1.0.0', '1.1.0'] as const),
    byName,
  };
}
