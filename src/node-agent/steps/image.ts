import { promises as fs } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../atomic-write.js';
import { findImage } from '../../host/image-store.js';
import type { CachedImage } from '../host/image-cache.js';
import { asOwner, ROOT, type Owner } from '../host/owner.js';
import type { ExtractPart } from '../host/podman.js';
import { readImagerootList } from '../observe.js';
import type { ImageFacts, Step } from '../types.js';
import { paths, requireOwner, mkdirOwned, purposeOf, type StepContext, type StepHandlers } from './context.js';

/**
 * Images: the module image fetched once per node and digest into the node cache (image-cache.ts)
 * and its imageroot/ and ui/ copied from there; service images fetched once per node into the
 * service-image cache (service-image-cache.ts) and imported by each rootless instance's user
 * (pulled by root for rootfull instances, or by the user when the cache cannot serve them);
 * removals.
 */
export const imageSteps: StepHandlers<'pull-image' | 'pull-service-image' | 'extract-image' | 'remove-old-images' | 'remove-images' | 'remove-ui'> = {
  'pull-image': async (step, ctx) => {
    const { deps, id } = ctx;
    const purpose = purposeOf(step);
    // The instance's user comes first (the plan orders create-user before): a missing one is named.
    const { owner } = await requireOwner(ctx, 'pulling the image');
    const facts = factsOf(await fetchModuleImage(ctx, step.url, purpose));
    await deps.records.update(id, { image: facts, imageUrl: step.url, rootfull: ctx.rootfull });
    // The copy pulled as root only to read the labels is not needed once the node cache has the image.
    const rootCopy = (await deps.records.get(id))?.rootCopy;
    if (rootCopy && owner.kind === 'user') {
      await deps.podman.removeImages({ kind: 'root' }, [rootCopy], [], `${purpose} (remove the root copy)`);
      await deps.records.update(id, { rootCopy: undefined });
    }
  },
  'pull-service-image': async (step, ctx) => {
    const { deps } = ctx;
    const purpose = purposeOf(step);
    const { owner } = await requireOwner(ctx, 'pulling a service image');
    // Rootless: fetched once per node into the service-image cache, then imported by the user.
    const cache = deps.podman.serviceCache;
    const cached = cache && owner.kind === 'user' ? await cache.ensure(step.url, purpose) : undefined;
    if (cache && cached && owner.kind === 'user') await cache.importInto(cached, owner, purpose);
    else await deps.podman.pull(owner, step.url, purpose);
  },
  'extract-image': async (step, ctx) => {
    await extractImage(step, ctx);
  },
  'remove-old-images': async (step, ctx) => {
    const { deps } = ctx;
    const purpose = purposeOf(step);
    // As NS8's 95cleanup_images: an image still in use is left (podman refuses; not an error).
    const { owner } = await requireOwner(ctx, 'removing the previous images');
    await deps.podman.removeImages(owner, step.refs, [], purpose);
  },
  'remove-images': async (step, ctx) => {
    const { deps, id } = ctx;
    const purpose = purposeOf(step);
    await deps.podman.removeImages({ kind: 'root' }, step.refs, ctx.rootfull ? [`ns8ctl-extract-${id}`] : [], purpose);
  },
  'remove-ui': async (_step, ctx) => {
    const { p } = await paths(ctx);
    await fs.rm(p.uiDir, { recursive: true, force: true });
    await fs.rm(`${p.uiDir}.ns8ctl-new`, { recursive: true, force: true });
  },
};

/** Removes entries of an old `.imageroot.lst` that the new extraction no longer has. */
async function removeStale(ctx: StepContext, owner: Owner, installDir: string, oldList: string[], newList: string[], purpose: string): Promise<void> {
  const keep = new Set(newList);
  const stale = oldList.filter((e) => !keep.has(e) && e !== '' && !e.startsWith('/') && !e.split('/').includes('..'));
  if (!stale.length) return;
  const files = stale.filter((e) => !e.endsWith('/'));
  // Deepest directories first, so parents empty out before they are tried.
  const dirs = stale.filter((e) => e.endsWith('/')).sort((a, b) => b.split('/').length - a.split('/').length);
  // As the module user for rootless instances: the install dir is theirs, and root must not
  // follow links a module could have planted there.
  const script = 'cd "$1" && shift && for f in "$@"; do case "$f" in */) rmdir -- "$f" 2>/dev/null || true;; *) rm -f -- "$f";; esac; done';
  const { argv, opts } = asOwner(owner, ['sh', '-c', script, 'sh', installDir, ...files, ...dirs]);
  await ctx.deps.runner.run(argv, { ...opts, purpose: `${purpose} (remove files gone from the image)`, mutating: true });
}

/** Facts of a cached image (what the record keeps). */
export function factsOf(c: CachedImage): ImageFacts {
  return { url: c.url, id: c.id, digest: c.digest, repoDigest: c.repoDigest, labels: c.labels };
}

/**
 * The module image in the node cache, fetched when missing. The digest the labels were read from
 * (the record's, else the converge pass's) pins the fetch, so the files are those of the image the
 * labels describe even if the tag moved since; imageroot and ui (from the labels) are what is kept.
 */
async function fetchModuleImage(ctx: StepContext, url: string, purpose: string): Promise<CachedImage> {
  const rec = await ctx.deps.records.get(ctx.id);
  const digest = rec?.image?.url === url && rec.image.digest ? rec.image.digest : ctx.imageUrl === url ? ctx.imageDigest : undefined;
  const roots = [ctx.labels?.imageroot ?? 'imageroot', ctx.labels?.uiroot ?? 'ui'];
  return ctx.deps.podman.cache.ensure(url, { ...(digest ? { digest } : {}), roots, purpose });
}

async function extractImage(step: Extract<Step, { kind: 'extract-image' }>, ctx: StepContext): Promise<void> {
  const { deps, id } = ctx;
  const purpose = purposeOf(step);
  const { owner, user, p } = await requireOwner(ctx, 'extracting the image');
  let cached = await deps.podman.cache.lookup(step.url);
  // An instance converged before the node cache existed has its image in its owner's store:
  // extracted from there (no registry needed); otherwise the cache is filled again (evicted, or
  // a half entry).
  const local = cached ? undefined : findImage(await deps.podman.listImages(owner), step.url);
  if (!cached && !local) cached = await fetchModuleImage(ctx, step.url, purpose);
  if (step.imageroot) await mkdirOwned(p.installDir, user?.uid ?? 0, user?.gid ?? 0, 0o700);
  // The UI goes next to the old dir and is swapped in, as NS8's update-module does: never a half-old UI.
  const fresh = `${p.uiDir}.ns8ctl-new`;
  if (step.uiroot) {
    await fs.rm(fresh, { recursive: true, force: true });
    await fs.mkdir(fresh, { recursive: true, mode: 0o755 });
  }
  let rootEntries: string[] | undefined;
  let imageId: string;
  if (cached) {
    const image = cached;
    imageId = image.id;
    if (step.imageroot) rootEntries = (await deps.podman.cache.copy(image, step.imageroot, p.installDir, owner, `${purpose} (${step.imageroot}/)`)) ?? [];
    if (step.uiroot) await deps.podman.cache.copy(image, step.uiroot, fresh, ROOT, `${purpose} (${step.uiroot}/)`);
  } else {
    imageId = local!.id;
    const parts: ExtractPart[] = [];
    if (step.imageroot) parts.push({ root: step.imageroot, dest: p.installDir, tarAsOwner: owner.kind === 'user' });
    if (step.uiroot) parts.push({ root: step.uiroot, dest: fresh, tarAsOwner: false });
    const results = await deps.podman.extract(owner, step.url, parts, { container: `ns8ctl-extract-${id}`, purpose });
    if (step.imageroot) rootEntries = results[0] ?? [];
  }
  if (step.imageroot) {
    const entries = rootEntries ?? [];
    const old = (await readImagerootList(p.installDir)) ?? [];
    await removeStale(ctx, owner, p.installDir, old, entries, purpose);
    await writeFileAtomic(path.join(p.installDir, '.imageroot.lst'), entries.map((e) => e + '\n').join(''), { mode: 0o644, uid: user?.uid ?? 0, gid: user?.gid ?? 0 });
    await deps.records.update(id, { extractedImageId: imageId, imageUrl: step.url });
  }
  if (step.uiroot) {
    await fs.rm(p.uiDir, { recursive: true, force: true });
    await fs.rename(fresh, p.uiDir);
    await deps.records.update(id, { uiImageId: imageId });
  }
}
