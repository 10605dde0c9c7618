/**
 * What the node agent reads and writes in Redis about backups:
 * - a destination: the desired `BackupDestination` (its URL) and its password, kept apart in
 *   `ns8ctl/secret/backup_destination/<name>` (only the admin and node agents can read it);
 * - a schedule: the desired `BackupSchedule`, and which instances of a node it selects;
 * - the **backup index** of a destination, `ns8ctl/backup/index/<destination>`: one field per
 *   instance id that was ever backed up there, naming the restic repository (image name and
 *   MODULE_UUID) of its snapshots. It outlives the instance: a Module re-created with
 *   `restoreFrom` finds its data through it, after its `module/<id>/*` keys are gone;
 * - the status of each run, NS8's `module/<id>/backup_status/<schedule>` hash.
 *
 * The password is returned to the caller only; it is never part of an error message.
 */
import type { Redis } from 'ioredis';
import { Ns8ctlError } from '../../errors.js';
import type { BackupScheduleSpec, ModuleObject } from '../../manifest/types.js';
import { parseStoredObject } from '../../state/read-state.js';
import { keys } from '../../state/keys.js';
import type { BackupResult } from './engine.js';
import { destinationKind } from './restic.js';

/** A destination with what restic needs to open it. */
export interface DestinationAccess {
  name: string;
  url: string;
  password: string;
}

/** One instance's entry in a destination's backup index. */
export interface IndexEntry {
  /** MODULE_UUID the snapshots were taken under (names the repository). */
  uuid: string;
  /** IMAGE_URL of the instance at its last backup (its image name names the repository). */
  image: string;
  node: number;
  /** Last snapshot taken, and when (ISO-8601). */
  snapshot: string;
  time: string;
}

/** A module on the node, as a schedule's selection sees it. */
export interface SelectableModule {
  id: string;
  node: number;
  labels: Record<string, string>;
  deleting: boolean;
}

/** The index key of a destination. */
export function backupIndexKey(destination: string): string {
  return `ns8ctl/backup/index/${destination}`;
}

/** NS8's status hash of one instance for one schedule. */
export function backupStatusKey(id: string, schedule: string): string {
  return `module/${id}/backup_status/${schedule}`;
}

async function desiredSpec<T>(redis: Redis, kind: 'BackupDestination' | 'BackupSchedule', name: string): Promise<T | undefined> {
  const stored = parseStoredObject(kind, name, await redis.hgetall(keys.desired(kind, name)));
  if (!stored || stored.deleting) return undefined;
  return (stored.object as unknown as { spec: T }).spec;
}

/**
 * The destination `name` and its password.
 * @throws Ns8ctlError `backup_destination_missing` (no such BackupDestination),
 *   `backup_password_missing` (`ns8ctl backup set-password` was not run for it).
 */
export async function readDestination(redis: Redis, name: string): Promise<DestinationAccess> {
  const spec = await desiredSpec<{ url: string }>(redis, 'BackupDestination', name);
  if (!spec) throw new Ns8ctlError('backup_destination_missing', `BackupDestination ${name} does not exist: apply one, or fix the name`);
  destinationKind(spec.url);
  const password = (await redis.hget(keys.backupPassword(name), 'password')) ?? '';
  if (!password) throw new Ns8ctlError('backup_password_missing', `BackupDestination ${name} has no password: run ns8ctl backup set-password ${name} --password-file FILE`);
  return { name, url: spec.url, password };
}

/** The schedule `name`. @throws Ns8ctlError `backup_schedule_missing`. */
export async function readSchedule(redis: Redis, name: string): Promise<BackupScheduleSpec> {
  const spec = await desiredSpec<BackupScheduleSpec>(redis, 'BackupSchedule', name);
  if (!spec) throw new Ns8ctlError('backup_schedule_missing', `BackupSchedule ${name} does not exist: apply one, or fix the name`);
  return spec;
}

/** Every desired Module with its node and labels. */
export async function readSelectableModules(redis: Redis): Promise<SelectableModule[]> {
  const ids = (await redis.smembers(keys.desiredIndex('Module'))).sort();
  const pipe = redis.pipeline();
  for (const id of ids) pipe.hgetall(keys.desired('Module', id));
  const res = (await pipe.exec()) ?? [];
  const out: SelectableModule[] = [];
  ids.forEach((id, i) => {
    const stored = parseStoredObject('Module', id, (res[i]?.[1] ?? {}) as Record<string, string>);
    if (!stored) return;
    const o = stored.object as ModuleObject;
    out.push({ id, node: o.spec.node, labels: o.metadata.labels ?? {}, deleting: Boolean(stored.deleting) });
  });
  return out;
}

/** Ids a schedule selects on `node`: listed ones and label matches, not being deleted, sorted. */
export function selectInstances(schedule: BackupScheduleSpec, modules: readonly SelectableModule[], node: number): string[] {
  const listed = new Set(schedule.instances ?? []);
  const match = schedule.selector?.matchLabels;
  const chosen = modules.filter((m) => {
    if (m.node !== node || m.deleting) return false;
    if (listed.has(m.id)) return true;
    return match !== undefined && Object.entries(match).every(([k, v]) => m.labels[k] === v);
  });
  return chosen.map((m) => m.id).sort();
}

/** The index entry of `id` in `destination`, if it was ever backed up there. */
export async function readIndexEntry(redis: Redis, destination: string, id: string): Promise<IndexEntry | undefined> {
  const raw = await redis.hget(backupIndexKey(destination), id);
  if (!raw) return undefined;
  try {
    const e = JSON.parse(raw) as Partial<IndexEntry>;
    if (typeof e.uuid === 'string' && typeof e.image === 'string') return { uuid: e.uuid, image: e.image, node: Number(e.node ?? 0), snapshot: String(e.snapshot ?? ''), time: String(e.time ?? '') };
  } catch {
    // fall through: an entry ns8ctl did not write is not used
  }
  throw new Ns8ctlError('state_corrupt', `${backupIndexKey(destination)}[${id}] is not an entry ns8ctl wrote (JSON with uuid and image)`);
}

/** Every instance of a destination's index. */
export async function readIndex(redis: Redis, destination: string): Promise<Map<string, IndexEntry>> {
  const h = await redis.hgetall(backupIndexKey(destination));
  const out = new Map<string, IndexEntry>();
  for (const id of Object.keys(h).sort()) {
    const e = await readIndexEntry(redis, destination, id).catch(() => undefined);
    if (e) out.set(id, e);
  }
  return out;
}

/** Records (or refreshes) the index entry of `id` in `destination`. */
export async function recordIndexEntry(redis: Redis, destination: string, id: string, entry: IndexEntry): Promise<void> {
  await redis.hset(backupIndexKey(destination), id, JSON.stringify(entry));
}

/** Records a successful backup: the index entry and the status hash (one MULTI). */
export async function recordBackupSuccess(redis: Redis, run: { destination: string; schedule: string; id: string; node: number; uuid: string; image: string; started: Date; ended: Date; result: BackupResult; snapshots: number }): Promise<void> {
  const entry: IndexEntry = { uuid: run.uuid, image: run.image, node: run.node, snapshot: run.result.snapshotId, time: run.ended.toISOString() };
  const status = {
    destination: run.destination,
    start: String(Math.floor(run.started.getTime() / 1000)),
    end: String(Math.floor(run.ended.getTime() / 1000)),
    duration_ms: String(run.result.durationMs),
    errors: '0',
    error_message: '',
    snapshot: run.result.snapshotId,
    snapshots_count: String(run.snapshots),
    total_size: String(run.result.bytesProcessed),
    added_size: String(run.result.bytesAdded),
    last_success: run.ended.toISOString(),
  };
  await redis.multi().hset(backupIndexKey(run.destination), run.id, JSON.stringify(entry)).hset(backupStatusKey(run.id, run.schedule), status).exec();
}

/** Records a failed backup in the status hash (the last success, if any, is kept). */
export async function recordBackupFailure(redis: Redis, run: { destination: string; schedule: string; id: string; started: Date; ended: Date; message: string }): Promise<void> {
  await redis.hset(backupStatusKey(run.id, run.schedule), {
    destination: run.destination,
    start: String(Math.floor(run.started.getTime() / 1000)),
    end: String(Math.floor(run.ended.getTime() / 1000)),
    duration_ms: String(run.ended.getTime() - run.started.getTime()),
    errors: '1',
    error_message: run.message,
  });
}
