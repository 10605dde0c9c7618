import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Ns8ctlError } from '../../errors.js';
import { writeFileAtomic } from '../atomic-write.js';
import { findImage } from '../host/image-store.js';
import { asOwner, type Owner } from '../host/owner.js';
import type { ExtractPart } from '../host/podman.js';
import { readImagerootList } from '../observe.js';
import type { Step } from '../types.js';
import { paths, requireOwner, mkdirOwned, purposeOf, type StepContext, type StepHandlers } from './context.js';

/** Images: pulls by the instance's owner, extraction of imageroot/ and ui/, removals. */
export const imageSteps: StepHandlers<'pull-image' | 'pull-service-image' | 'extract-image' | 'remove-old-images' | 'remove-images' | 'remove-ui'> = {
  'pull-image': async (step, ctx) => {
    const { deps, id } = ctx;
    const purpose = purposeOf(step);
    const { owner } = await requireOwner(ctx, 'pulling the image');
    await deps.podman.pull(owner, step.url, purpose);
    const facts = await deps.podman.inspectLocal(owner, step.url, `${purpose} (inspect)`);
    await deps.records.update(id, { image: facts, imageUrl: step.url, rootfull: ctx.rootfull });
    // The copy pulled as root only to read the labels is not needed once the user has its own.
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
    await deps.podman.pull(owner, step.url, purpose);
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

async function extractImage(step: Extract<Step, { kind: 'extract-image' }>, ctx: StepContext): Promise<void> {
  const { deps, id } = ctx;
  const purpose = purposeOf(step);
  const { owner, user, p } = await requireOwner(ctx, 'extracting the image');
  const local = findImage(await deps.podman.listImages(owner), step.url);
  if (!local) throw new Ns8ctlError('image_not_found', `${purpose}: image ${step.url} is not present for ${owner.kind === 'root' ? 'root' : id}`, { user: false });
  const parts: ExtractPart[] = [];
  if (step.imageroot) {
    await mkdirOwned(p.installDir, user?.uid ?? 0, user?.gid ?? 0, 0o700);
    parts.push({ root: step.imageroot, dest: p.installDir, tarAsOwner: owner.kind === 'user' });
  }
  // The UI goes next to the old dir and is swapped in, as NS8's update-module does: never a half-old UI.
  const fresh = `${p.uiDir}.ns8ctl-new`;
  if (step.uiroot) {
    await fs.rm(fresh, { recursive: true, force: true });
    await fs.mkdir(fresh, { recursive: true, mode: 0o755 });
    parts.push({ root: step.uiroot, dest: fresh, tarAsOwner: false });
  }
  const results = await deps.podman.extract(owner, step.url, parts, { container: `ns8ctl-extract-${id}`, purpose });
  if (step.imageroot) {
    const entries = results[0] ?? [];
    const old = (await readImagerootList(p.installDir)) ?? [];
    await removeStale(ctx, owner, p.installDir, old, entries, purpose);
    await writeFileAtomic(path.join(p.installDir, '.imageroot.lst'), entries.map((e) => e + '\n').join(''), { mode: 0o644, uid: user?.uid ?? 0, gid: user?.gid ?? 0 });
    await deps.records.update(id, { extractedImageId: local.id, imageUrl: step.url });
  }
  if (step.uiroot) {
    await fs.rm(p.uiDir, { recursive: true, force: true });
    await fs.rename(fresh, p.uiDir);
    await deps.records.update(id, { uiImageId: local.id });
  }
}
