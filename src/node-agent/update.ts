/**
 * Image updates of an installed instance (issue 6), as NS8's update-module does them: the
 * running image is `IMAGE_URL` of what the agent last wrote; a move to another image is first
 * checked with the repositories' `checkUpdate` (min-from, min-core, module name, downgrade), and
 * when it proceeds the new environment carries the previous image in `PREV_*` variables. Pure.
 */
import { imageEnvName } from './image-env-name.js';

/**
 * The image the instance runs now: `IMAGE_URL` the agent last wrote (its record), else the one in
 * `module/<id>/environment` (an instance made by NS8 itself); undefined for a new instance.
 */
export function installedImageUrl(managedEnv: Record<string, string> | undefined, envRedis: Record<string, string> | undefined): string | undefined {
  return managedEnv?.IMAGE_URL || envRedis?.IMAGE_URL || undefined;
}

const SERVICE_IMAGE = /^(?!PREV_|IMAGE_)[A-Z0-9_]+_IMAGE$/;

/**
 * NS8's update-module `mset_env` PREV_ variables from the previous environment: `PREV_IMAGE_ID`,
 * `PREV_IMAGE_URL`, `PREV_IMAGE_DIGEST`, `PREV_IMAGE_REOPODIGEST` (NS8's spelling, which modules
 * read) and `PREV_IMAGE_REPODIGEST`, and `PREV_<NAME>_IMAGE` for every service image the old or
 * the new image has (the old value; empty when the old image had none).
 */
export function previousImageEnvironment(old: Record<string, string>, newServiceImages: readonly string[]): Record<string, string> {
  const repo = old.IMAGE_REOPODIGEST ?? old.IMAGE_REPODIGEST ?? '';
  const out: Record<string, string> = {
    PREV_IMAGE_ID: old.IMAGE_ID ?? '',
    PREV_IMAGE_URL: old.IMAGE_URL ?? '',
    PREV_IMAGE_DIGEST: old.IMAGE_DIGEST ?? '',
    PREV_IMAGE_REOPODIGEST: repo,
    PREV_IMAGE_REPODIGEST: old.IMAGE_REPODIGEST ?? repo,
  };
  const names = new Set([...Object.keys(old).filter((n) => SERVICE_IMAGE.test(n)), ...newServiceImages.map(imageEnvName)]);
  for (const n of [...names].sort()) out[`PREV_${n}`] = old[n] ?? '';
  return out;
}

/**
 * Images to remove once an update succeeded (NS8's 95cleanup_images): the previous module image
 * and each previous service image that the new environment no longer names.
 */
export function imagesToClean(previous: Record<string, string>, current: Record<string, string>): string[] {
  const inUse = new Set(Object.entries(current).filter(([n]) => n === 'IMAGE_URL' || SERVICE_IMAGE.test(n)).map(([, v]) => v));
  const old = [previous.PREV_IMAGE_URL ?? '', ...Object.entries(previous).filter(([n]) => SERVICE_IMAGE.test(n.replace(/^PREV_/, '')) && n.startsWith('PREV_')).map(([, v]) => v)];
  return [...new Set(old.filter((u) => u && !inUse.has(u)))].sort();
}
