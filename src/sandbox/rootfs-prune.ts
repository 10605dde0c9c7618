/**
 * Old root filesystem caches go once a new one is built: a recipe change (new packages, another
 * ns8ctl file) leaves the previous `<cache>/<hash>/` behind, about 300 MB each. A cache still
 * named by a sandbox record (its nodes use it as their overlay lower layer) or being built (its
 * `.lock` exists) is kept.
 */
import { promises as fsp, existsSync } from 'node:fs';
import path from 'node:path';
import type { SandboxDeps } from './deps.js';
import { cacheRoot, stateRoot } from './naming.js';

const CACHE_DIR = /^[0-9a-f]{16}$/;

/** Recipe hashes the existing sandboxes use (from their records; unreadable records keep nothing). */
async function hashesInUse(env: NodeJS.ProcessEnv): Promise<Set<string>> {
  const used = new Set<string>();
  const root = stateRoot(env);
  for (const name of await fsp.readdir(root).catch(() => [] as string[])) {
    const text = await fsp.readFile(path.join(root, name, 'sandbox.json'), 'utf8').catch(() => '');
    try {
      const rec = JSON.parse(text) as { recipeHash?: unknown; rootfs?: unknown };
      if (typeof rec.recipeHash === 'string') used.add(rec.recipeHash);
      if (typeof rec.rootfs === 'string') used.add(path.basename(path.dirname(rec.rootfs)));
    } catch {
      /* no record or not JSON: nothing it uses is known */
    }
  }
  return used;
}

/** Removes the caches other than `keep` that no sandbox uses; returns the removed directories. */
export async function pruneRootfsCaches(deps: Pick<SandboxDeps, 'env' | 'stderr'>, keep: string): Promise<string[]> {
  const root = cacheRoot(deps.env);
  const used = await hashesInUse(deps.env);
  const removed: string[] = [];
  for (const name of (await fsp.readdir(root).catch(() => [] as string[])).sort()) {
    if (!CACHE_DIR.test(name) || name === keep || used.has(name) || existsSync(path.join(root, `${name}.lock`))) continue;
    const dir = path.join(root, name);
    await fsp.rm(dir, { recursive: true, force: true });
    deps.stderr(`sandbox: removed the old root filesystem cache ${dir} (no sandbox uses it)\n`);
    removed.push(dir);
  }
  return removed;
}
