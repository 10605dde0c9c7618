/**
 * One run of a BackupSchedule on one node, as NS8's `module-backup` per instance: each instance
 * of the node the schedule selects is backed up in turn (dump hook, restic, cleanup hook,
 * retention), its status written to `module/<id>/backup_status/<schedule>` and its repository
 * to the destination's backup index; one event per instance (`backup-succeeded` or
 * `backup-failed`). An instance flagged `no_data_backup` (NS8's flag) is skipped. One failing
 * instance does not stop the others; the run reports every outcome.
 *
 * Two runs never back up the same instance at once: each instance is backed up under the lock
 * file `<runDir>/backup-<id>.lock`, so a timer firing during a manual run waits for it.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { Ns8ctlError, toNs8ctlError } from '../../errors.js';
import { withFileLock } from '../../host/file-lock.js';
import type { CommandRunner } from '../../host/runner.js';
import { maskString } from '../../runtime/mask.js';
import { EventRecorder } from '../../state/events.js';
import { parseEnvironment } from '../../agent/env-file.js';
import { readUsers } from '../host/passwd.js';
import { instancePaths, type HostLayout } from '../layout.js';
import { ownerOf } from '../observe.js';
import { ResticBackups, type BackupTarget } from './engine.js';
import { readDestination, readSchedule, readSelectableModules, recordBackupFailure, recordBackupSuccess, selectInstances } from './catalog.js';

export interface BackupRunDeps {
  redis: Redis;
  runner: CommandRunner;
  layout: HostLayout;
  /** Where per-instance lock files go (`/run/ns8ctl`). */
  runDir: string;
  backups?: ResticBackups;
  now?: () => Date;
  log?: (line: string) => void;
}

/** What happened to one instance in a run. */
export interface InstanceBackupOutcome {
  id: string;
  outcome: 'succeeded' | 'failed' | 'skipped';
  snapshot?: string;
  durationMs?: number;
  bytesAdded?: number;
  bytesProcessed?: number;
  message?: string;
}

export interface BackupRunReport {
  schedule: string;
  destination: string;
  node: number;
  instances: InstanceBackupOutcome[];
}

/**
 * The instance `id` of this host, as a backup or restore sees it: owner, paths, MODULE_UUID and
 * IMAGE_URL from its `state/environment`.
 * @throws Ns8ctlError `backup_target_missing` when the instance is not installed on this host.
 */
export async function backupTargetOf(layout: HostLayout, id: string): Promise<BackupTarget> {
  const user = (await readUsers(layout)).users.get(id);
  const rootfull = user === undefined;
  const paths = instancePaths(layout, id, rootfull, user?.home);
  const owner = ownerOf(id, rootfull, user);
  let env: Map<string, string>;
  try {
    env = parseEnvironment(await fs.readFile(path.join(paths.stateDir, 'environment'), 'utf8'));
  } catch (err) {
    throw new Ns8ctlError('backup_target_missing', `${id} is not installed on this node (no ${path.join(paths.stateDir, 'environment')})`, { cause: err });
  }
  const uuid = env.get('MODULE_UUID') ?? '';
  const imageUrl = env.get('IMAGE_URL') ?? '';
  if (!owner || !uuid || !imageUrl) throw new Ns8ctlError('backup_target_missing', `${id}: state/environment has no MODULE_UUID or IMAGE_URL`);
  return { id, owner, rootfull, stateDir: paths.stateDir, installDir: paths.installDir, uuid, imageUrl };
}

/** Runs schedule `name` for the instances of `node` it selects. */
export async function runBackupSchedule(deps: BackupRunDeps, node: number, name: string, only?: readonly string[]): Promise<BackupRunReport> {
  const schedule = await readSchedule(deps.redis, name);
  const dest = await readDestination(deps.redis, schedule.destination);
  const modules = await readSelectableModules(deps.redis);
  const ids = selectInstances(schedule, modules, node).filter((id) => !only || only.includes(id));
  const report: BackupRunReport = { schedule: name, destination: dest.name, node, instances: [] };
  const backups = deps.backups ?? new ResticBackups(deps.runner);
  const events = new EventRecorder(deps.redis, { ...(deps.now ? { now: deps.now } : {}), ...(deps.log ? { log: deps.log } : {}) });
  const now = deps.now ?? (() => new Date());
  await fs.mkdir(deps.runDir, { recursive: true, mode: 0o755 });
  for (const id of ids) {
    const flags = await deps.redis.smembers(`module/${id}/flags`);
    if (flags.includes('no_data_backup')) {
      report.instances.push({ id, outcome: 'skipped', message: 'flag no_data_backup' });
      continue;
    }
    const started = now();
    try {
      const done = await withFileLock(path.join(deps.runDir, `backup-${id}.lock`), async () => {
        const target = await backupTargetOf(deps.layout, id);
        const result = await backups.backup(target, { url: dest.url }, dest.password, { ...(schedule.retention ?? { keepLast: 7 }), tags: [`ns8ctl-schedule=${name}`] });
        const snapshots = (await backups.snapshots(target, { url: dest.url }, dest.password)).length;
        const ended = now();
        await recordBackupSuccess(deps.redis, { destination: dest.name, schedule: name, id, node, uuid: target.uuid, image: target.imageUrl, started, ended, result, snapshots });
        return result;
      }, { timeoutMs: 60 * 60_000 });
      report.instances.push({ id, outcome: 'succeeded', snapshot: done.snapshotId, durationMs: done.durationMs, bytesAdded: done.bytesAdded, bytesProcessed: done.bytesProcessed });
      await events.record({ name: 'backup-succeeded', type: 'Normal', object: `Module/${id}`, message: `${id}: snapshot ${done.snapshotId.slice(0, 8)} in ${dest.name} (schedule ${name}, ${done.durationMs} ms, ${done.bytesAdded} bytes added)`, data: { schedule: name, destination: dest.name, snapshot: done.snapshotId, durationMs: done.durationMs, bytesAdded: done.bytesAdded, bytesProcessed: done.bytesProcessed } });
    } catch (err) {
      const message = maskString(toNs8ctlError(err).message);
      report.instances.push({ id, outcome: 'failed', message });
      await recordBackupFailure(deps.redis, { destination: dest.name, schedule: name, id, started, ended: now(), message });
      await events.record({ name: 'backup-failed', type: 'Warning', object: `Module/${id}`, message: `${id}: backup to ${dest.name} failed (schedule ${name}): ${message}`, data: { schedule: name, destination: dest.name } });
    }
  }
  return report;
}
