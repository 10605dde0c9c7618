/**
 * One short text per instance for the UPDATE column of `ns8ctl get modules -o wide`, from the
 * result of listUpdates. Pure.
 */
import type { InstanceUpdates } from './resolve.js';

/** Short names of the refusal codes of checkUpdate, for table cells. */
const SHORT: Record<string, string> = {
  min_from_not_met: 'min-from',
  min_core_not_met: 'min-core',
  current_version_unknown: 'running version unknown',
  downgrade_refused: 'downgrade',
  module_mismatch: 'other module',
};

/**
 * The UPDATE cell of one instance:
 * - `1.1.0`: the newest usable version inside the Module's version spec (`inSpec`), or, without a
 *   spec (a full image URL), the newest usable stable version;
 * - `, 2.0.0 outside ^1.0` appended when a newer usable stable version is outside the spec
 *   (alone when nothing in the spec is newer);
 * - `2.1.0-rc.1 (testing)` when the only newer usable version is a prerelease;
 * - `2.0.0 (blocked: min-from)` when newer versions exist but none is usable (the newest named);
 * - `` when the instance is up to date or unknown to the repositories (`u` undefined).
 * `versionSpec` is the Module's `version` (undefined for a full image URL; `latest` counts as none).
 */
export function describeUpdate(u: InstanceUpdates | undefined, versionSpec?: string): string {
  if (!u) return '';
  const spec = versionSpec === undefined || versionSpec.trim() === '' || versionSpec.trim() === 'latest' ? undefined : versionSpec.trim();
  const parts: string[] = [];
  if (spec === undefined) {
    if (u.update !== undefined) parts.push(u.update);
  } else {
    if (u.inSpec !== undefined) parts.push(u.inSpec);
    if (u.update !== undefined && u.update !== u.inSpec) parts.push(`${u.update} outside ${spec}`);
  }
  if (parts.length) return parts.join(', ');
  if (u.testingUpdate !== undefined) return `${u.testingUpdate} (testing)`;
  const newest = u.blocked[0];
  if (newest) return `${newest.tag} (blocked: ${SHORT[newest.code] ?? newest.code})`;
  return '';
}
