/**
 * `updatePolicy.backupFirst`: a snapshot of the instance (tagged `ns8ctl-pre-update`) before its
 * update touches anything, in the destination of the first BackupSchedule (by name) selecting it.
 * When the update fails and is rolled back, the rollback restores that snapshot along with the
 * previous image (converge.ts). NS8 has no data rollback for a failed update.
 */
import { Ns8ctlError, toNs8ctlError } from '../../errors.js';
import type { NodeAgentDeps } from '../deps.js';
import type { InstanceDesired, InstanceRecord } from '../types.js';
import { readDestination, recordIndexEntry, selectInstances } from './catalog.js';
import { ResticBackups } from './engine.js';
import { backupTargetOf } from './schedule-run.js';
import { readBackupSchedules } from './timers.js';

export const PRE_UPDATE_TAG = 'ns8ctl-pre-update';

/** The destination of the first schedule (by name) selecting `d` on `node`, or undefined. */
export async function destinationFor(deps: NodeAgentDeps, d: InstanceDesired, node: number): Promise<string | undefined> {
  const me = [{ id: d.id, node, labels: d.labels ?? {}, deleting: false }];
  for (const [, spec] of await readBackupSchedules(deps.redis)) if (selectInstances(spec, me, node).length) return spec.destination;
  return undefined;
}

/**
 * Takes the pre-update snapshot of `d` (updating `from` -> `url`) unless the record has one for
 * `url` already, and records it. Returns the record.
 * @throws Ns8ctlError `backup_first_unavailable` (no schedule selects the instance: nowhere to
 *   write the snapshot), `backup_first_failed` (the snapshot failed; the update does not start).
 */
export async function snapshotBeforeUpdate(deps: NodeAgentDeps, d: InstanceDesired, rec: InstanceRecord | undefined, node: number, from: string, url: string): Promise<InstanceRecord | undefined> {
  if (rec?.preUpdate?.image === url && rec.preUpdate.from === from) return rec;
  const destination = await destinationFor(deps, d, node);
  if (!destination) throw new Ns8ctlError('backup_first_unavailable', `${d.id}: updatePolicy.backupFirst needs a BackupSchedule selecting ${d.id} (its destination takes the snapshot); the update to ${url} waits, the instance keeps running ${from}`);
  try {
    const dest = await readDestination(deps.redis, destination);
    const target = await backupTargetOf(deps.layout, d.id);
    const result = await new ResticBackups(deps.runner).backup(target, { url: dest.url }, dest.password, { tags: [PRE_UPDATE_TAG] });
    await recordIndexEntry(deps.redis, destination, d.id, { uuid: target.uuid, image: target.imageUrl, node, snapshot: result.snapshotId, time: deps.now().toISOString() });
    deps.log(`node-agent: ${d.id}: snapshot ${result.snapshotId.slice(0, 8)} in ${destination} before the update to ${url}`);
    return await deps.records.update(d.id, { preUpdate: { image: url, from, destination, snapshot: result.snapshotId } });
  } catch (err) {
    const e = toNs8ctlError(err);
    throw new Ns8ctlError('backup_first_failed', `${d.id}: the snapshot before the update to ${url} failed, so the update does not start (the instance keeps running ${from}): ${e.message}`, { cause: err });
  }
}
