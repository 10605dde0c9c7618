/**
 * `ns8ctl backup run <schedule>`: backs up, on this node, the instances a BackupSchedule selects
 * (what its timer runs; as root on the node). `ns8ctl backup list`: the instances each
 * destination holds backups of, with the last run's status, read from Redis (no restic needed).
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { hostname } from 'node:os';
import { UsageError, Ns8ctlError } from '../../errors.js';
import { checkSnapshotRef } from '../../node-agent/backup/restic.js';
import { RESTORE_REQUESTS_KEY, type RestoreRequest } from '../../node-agent/backup/restore-request.js';
import { parseDuration } from '../../runtime/duration.js';
import { defaultLayout } from '../../node-agent/layout.js';
import { readIndex, readIndexEntry } from '../../node-agent/backup/catalog.js';
import { runBackupSchedule, type BackupRunReport } from '../../node-agent/backup/schedule-run.js';
import { parseOutput, renderJson, renderTable } from '../../runtime/output.js';
import { keys } from '../../state/keys.js';
import type { CliDeps } from '../deps.js';

export interface BackupRunOptions {
  node?: string;
  instance?: string[];
  output?: string;
}

/** The node this process runs on: --node, else $NS8CTL_NODE_ID. */
export function nodeOf(flag: string | undefined, env: NodeJS.ProcessEnv): number {
  const raw = flag ?? env.NS8CTL_NODE_ID;
  const n = Number(raw);
  if (raw === undefined || !Number.isInteger(n) || n < 1) throw new UsageError(`--node must be this node's id (an integer >= 1; default $NS8CTL_NODE_ID), got ${JSON.stringify(raw ?? '')}`);
  return n;
}

/** Runs the schedule here; exit code 1 when an instance failed. */
export async function backupRunCommand(schedule: string, opts: BackupRunOptions, d: CliDeps): Promise<number> {
  const output = parseOutput(opts.output, ['text', 'json'], 'text');
  const node = nodeOf(opts.node, d.env);
  const { redis } = await d.connect();
  const report = await runBackupSchedule({ redis, runner: d.runner, layout: defaultLayout(), runDir: '/run/ns8ctl' }, node, schedule, opts.instance?.length ? opts.instance : undefined);
  d.stdout(output === 'json' ? renderJson(report) : renderRunReport(report));
  return report.instances.some((i) => i.outcome === 'failed') ? 1 : 0;
}

/** One row per instance of a run. */
export function renderRunReport(r: BackupRunReport): string {
  if (!r.instances.length) return `schedule ${r.schedule}: no instance of node ${r.node} selected\n`;
  const rows = r.instances.map((i) => [i.id, i.outcome, i.snapshot?.slice(0, 8) ?? '', i.durationMs !== undefined ? `${(i.durationMs / 1000).toFixed(1)}s` : '', i.bytesAdded !== undefined ? String(i.bytesAdded) : '', i.message ?? '']);
  return `schedule ${r.schedule} -> ${r.destination} (node ${r.node})\n` + renderTable(['instance', 'outcome', 'snapshot', 'duration', 'added', 'message'], rows);
}

export interface BackupListOptions {
  destination?: string;
  output?: string;
}

interface ListedBackup {
  destination: string;
  instance: string;
  uuid: string;
  image: string;
  node: number;
  lastSnapshot: string;
  lastBackup: string;
}

/** Every instance with backups, per destination (from the backup index). */
export async function backupListCommand(opts: BackupListOptions, d: CliDeps): Promise<number> {
  const output = parseOutput(opts.output, ['text', 'json'], 'text');
  const { redis } = await d.connect();
  const destinations = opts.destination ? [opts.destination] : (await redis.smembers(keys.desiredIndex('BackupDestination'))).sort();
  if (opts.destination && !(await redis.exists(keys.desired('BackupDestination', opts.destination)))) throw new Ns8ctlError('backup_destination_missing', `BackupDestination ${opts.destination} does not exist`);
  const rows: ListedBackup[] = [];
  for (const dest of destinations) {
    for (const [instance, e] of await readIndex(redis, dest)) rows.push({ destination: dest, instance, uuid: e.uuid, image: e.image, node: e.node, lastSnapshot: e.snapshot, lastBackup: e.time });
  }
  if (output === 'json') {
    d.stdout(renderJson(rows));
    return 0;
  }
  if (!rows.length) {
    d.stdout('no backups recorded\n');
    return 0;
  }
  d.stdout(renderTable(['destination', 'instance', 'node', 'last backup', 'snapshot', 'uuid'], rows.map((r) => [r.destination, r.instance, String(r.node), r.lastBackup, r.lastSnapshot.slice(0, 8), r.uuid])));
  return 0;
}

export interface RestoreOptions {
  snapshot?: string;
  destination?: string;
  from?: string;
  wait?: boolean;
  timeout?: string;
  output?: string;
}

/**
 * Records a request to restore instance `id`'s data from a snapshot; its node agent carries it
 * out (services stopped, data restored, services started). With --wait, returns once done.
 */
export async function restoreCommand(id: string, opts: RestoreOptions, d: CliDeps): Promise<number> {
  const output = parseOutput(opts.output, ['text', 'json'], 'text');
  const snapshot = checkSnapshotRef(opts.snapshot ?? 'latest');
  const from = opts.from ?? id;
  const { redis } = await d.connect();
  const module = await redis.hgetall(keys.desired('Module', id));
  if (!module.object || module.deleting) throw new Ns8ctlError('restore_target_missing', `Module ${id} does not exist (or is being deleted): restore puts data back into an existing instance; to re-create one from a backup, apply it with spec.restoreFrom`);
  const destination = opts.destination ?? (await destinationHolding(redis, from));
  if (!(await readIndexEntry(redis, destination, from))) throw new Ns8ctlError('restore_source_missing', `${from} was never backed up to ${destination} (no entry in its backup index)`);
  const request: RestoreRequest = { request: randomUUID(), destination, snapshot, from, by: `${d.env.USER ?? 'root'}@${hostname()}`, at: new Date().toISOString() };
  await redis.hset(RESTORE_REQUESTS_KEY, id, JSON.stringify(request));
  const done = opts.wait ? await waitForRestore(redis, id, request.request, parseDuration(opts.timeout ?? '10m', '--timeout')) : undefined;
  if (output === 'json') d.stdout(renderJson({ ...request, id, ...(opts.wait ? { done } : {}) }));
  else d.stdout(`${id}: restore of snapshot ${snapshot} of ${from} from ${destination} ${done ? 'done' : opts.wait ? 'not done yet (still pending: the node agent carries it out)' : 'requested (the node agent of its node carries it out)'}\n`);
  return opts.wait && !done ? 1 : 0;
}

/** The one destination holding backups of `from`; a usage error naming them when several do. */
async function destinationHolding(redis: Redis, from: string): Promise<string> {
  const holding: string[] = [];
  for (const dest of (await redis.smembers(keys.desiredIndex('BackupDestination'))).sort()) if (await readIndexEntry(redis, dest, from)) holding.push(dest);
  if (holding.length === 1) return holding[0]!;
  if (!holding.length) throw new Ns8ctlError('restore_source_missing', `${from} has no backup in any BackupDestination`);
  throw new UsageError(`${from} has backups in ${holding.join(', ')}: choose one with --destination`);
}

/** True once the request was carried out (its field removed), false at the timeout. Polls every 500 ms. */
async function waitForRestore(redis: Redis, id: string, request: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const cur = await redis.hget(RESTORE_REQUESTS_KEY, id);
    if (!cur || !cur.includes(request)) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 500));
  }
}
