/**
 * Builds (once) and caches the node root filesystem: debootstrap from the host's Debian mirror,
 * then apt inside a chroot, then ns8ctl's files and links. The result lives at
 * `<cache>/<recipe hash>/rootfs` and is only ever used as a read-only overlay lower layer.
 */
import { promises as fsp, existsSync } from 'node:fs';
import path from 'node:path';
import { CommandFailedError, Ns8ctlError } from '../errors.js';
import { hostMirror } from './apt-mirror.js';
import type { SandboxDeps } from './deps.js';
import { cacheRoot } from './naming.js';
import { requireTool } from './preflight.js';
import { pruneRootfsCaches } from './rootfs-prune.js';
import { step } from './progress.js';
import { defaultRecipe, recipeHash, type RootfsRecipe } from './rootfs-recipe.js';

/** A ready root filesystem. */
export interface CachedRootfs {
  path: string;
  hash: string;
  /** True when it was built by this call (a cold create). */
  built: boolean;
}

const LOCK_STALE_MS = 20 * 60_000;

async function writeFiles(rootfs: string, recipe: RootfsRecipe): Promise<void> {
  for (const [rel, f] of Object.entries(recipe.files)) {
    const dest = path.join(rootfs, rel);
    await fsp.mkdir(path.dirname(dest), { recursive: true });
    await fsp.rm(dest, { force: true });
    await fsp.writeFile(dest, f.content, { mode: f.mode });
    await fsp.chmod(dest, f.mode);
  }
  for (const [rel, target] of Object.entries(recipe.symlinks)) {
    const dest = path.join(rootfs, rel);
    await fsp.mkdir(path.dirname(dest), { recursive: true });
    await fsp.rm(dest, { force: true });
    await fsp.symlink(target, dest);
  }
}

async function build(deps: SandboxDeps, recipe: RootfsRecipe, tmp: string): Promise<void> {
  const rootfs = path.join(tmp, 'rootfs');
  const mirror = deps.env.NS8CTL_SANDBOX_MIRROR || (await hostMirror());
  const run = (argv: string[], purpose: string, timeoutMs = 900_000) => deps.runner.run(argv, { purpose, mutating: true, timeoutMs });
  await step(deps, `building the node root filesystem: debootstrap ${recipe.suite} from ${mirror} (2-3 minutes, once; cached afterwards)`, () =>
    run(['debootstrap', `--variant=${recipe.variant}`, `--include=${recipe.include.join(',')}`, recipe.suite, rootfs, mirror], 'sandbox rootfs: debootstrap'),
  );
  const proc = path.join(rootfs, 'proc');
  await fsp.copyFile('/etc/resolv.conf', path.join(rootfs, 'etc', 'resolv.conf')).catch(() => undefined);
  // No service may start inside the chroot while packages install.
  await fsp.writeFile(path.join(rootfs, 'usr/sbin/policy-rc.d'), '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  await run(['mount', '-t', 'proc', 'proc', proc], 'sandbox rootfs: mount /proc in the chroot');
  try {
    await step(deps, `installing packages into the node root filesystem: ${recipe.packages.join(' ')}`, async () => {
      const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C' };
      await deps.runner.run(['chroot', rootfs, 'apt-get', 'update', '-qq'], { purpose: 'sandbox rootfs: apt-get update', mutating: true, env, timeoutMs: 600_000 });
      await deps.runner.run(['chroot', rootfs, 'apt-get', 'install', '-y', '-qq', '--no-install-recommends', ...recipe.packages], {
        purpose: 'sandbox rootfs: apt-get install',
        mutating: true,
        env,
        timeoutMs: 900_000,
      });
      await deps.runner.run(['chroot', rootfs, 'apt-get', 'clean'], { purpose: 'sandbox rootfs: apt-get clean', mutating: true, env });
    });
  } finally {
    await deps.runner.run(['umount', proc], { purpose: 'sandbox rootfs: unmount /proc', mutating: true, allowFailure: true });
  }
  await fsp.rm(path.join(rootfs, 'usr/sbin/policy-rc.d'), { force: true });
  await fsp.rm(path.join(rootfs, 'var/lib/apt/lists'), { recursive: true, force: true });
  await fsp.mkdir(path.join(rootfs, 'var/lib/apt/lists/partial'), { recursive: true });
  await fsp.rm(path.join(rootfs, 'var/lib/dbus/machine-id'), { force: true });
  await fsp.symlink('/etc/machine-id', path.join(rootfs, 'var/lib/dbus/machine-id')).catch(() => undefined);
  await writeFiles(rootfs, recipe);
  await fsp.writeFile(path.join(tmp, 'recipe.json'), JSON.stringify({ ...recipe, mirror, builtAt: new Date(deps.now()).toISOString() }, null, 2) + '\n');
}

/**
 * Returns the cached root filesystem for the recipe, building it first when missing. Concurrent
 * callers (two test files, two shells) wait for the one that builds. Fails with `rootfs_build_failed`
 * naming the step (debootstrap, apt) and the mirror; a failed build leaves nothing in the cache.
 */
export async function ensureRootfs(deps: SandboxDeps, recipe: RootfsRecipe = defaultRecipe()): Promise<CachedRootfs> {
  const hash = recipeHash(recipe);
  const root = cacheRoot(deps.env);
  const dir = path.join(root, hash);
  const rootfs = path.join(dir, 'rootfs');
  const ready = path.join(dir, 'complete');
  if (existsSync(ready)) return { path: rootfs, hash, built: false };
  await fsp.mkdir(root, { recursive: true });
  const lock = `${dir}.lock`;
  let announced = false;
  for (;;) {
    try {
      await fsp.mkdir(lock);
      break;
    } catch {
      if (existsSync(ready)) return { path: rootfs, hash, built: false };
      const age = await fsp.stat(lock).then((s) => deps.now() - s.mtimeMs, () => 0);
      if (age > LOCK_STALE_MS) await fsp.rm(lock, { recursive: true, force: true });
      if (!announced) deps.stderr(`sandbox: waiting for another process building the root filesystem (${lock})\n`);
      announced = true;
      await deps.sleep(1000);
    }
  }
  try {
    if (existsSync(ready)) return { path: rootfs, hash, built: false };
    await requireTool(deps, 'debootstrap');
    const tmp = path.join(root, `.build-${hash}-${process.pid}`);
    await fsp.rm(tmp, { recursive: true, force: true });
    await fsp.mkdir(tmp, { recursive: true });
    try {
      await build(deps, recipe, tmp);
    } catch (err) {
      await deps.runner.run(['umount', path.join(tmp, 'rootfs', 'proc')], { allowFailure: true });
      await fsp.rm(tmp, { recursive: true, force: true });
      const detail = err instanceof CommandFailedError ? err.message : (err as Error).message;
      throw new Ns8ctlError('rootfs_build_failed', `building the sandbox node root filesystem failed: ${detail}. Check that the Debian mirror is reachable (set NS8CTL_SANDBOX_MIRROR to override) and that there is disk space under ${root}`, { cause: err });
    }
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.rename(tmp, dir);
    await fsp.writeFile(ready, `${hash}\n`);
    await pruneRootfsCaches(deps, hash);
    return { path: rootfs, hash, built: true };
  } finally {
    await fsp.rm(lock, { recursive: true, force: true });
  }
}
