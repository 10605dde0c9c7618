/**
 * BackupSchedules become systemd timers on the nodes that run instances they select: for schedule
 * S, `ns8ctl-backup-S.timer` (its `OnCalendar`, `Persistent=true` so a run missed while the node
 * was off happens at boot) and `ns8ctl-backup-S.service` (a oneshot `ns8ctl backup run S --node N`).
 * NS8 makes transient `systemd-run --on-calendar` units, which a reboot loses until its agent
 * recreates them; these are unit files, kept in step with desired state at every node pass.
 *
 * A node pass that changes nothing reads the schedules (one round trip when there are none) and
 * the unit dir, and runs no process. Timers of schedules gone, suspended or selecting nothing
 * here are disabled and their files removed.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import type { BackupScheduleSpec } from '../../manifest/types.js';
import { parseStoredObject } from '../../state/read-state.js';
import { keys } from '../../state/keys.js';
import { writeFileAtomic } from '../atomic-write.js';
import type { SystemdHost } from '../host/systemd.js';
import type { InstanceDesired } from '../types.js';
import { selectInstances } from './catalog.js';

const PREFIX = 'ns8ctl-backup-';
const SAFE_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const SAFE_CALENDAR = /^[A-Za-z0-9 *:,./~+-]{1,128}$/;

/** The command a backup service runs (the node's ns8ctl; its Redis settings come from the environment file). */
export const DEFAULT_BACKUP_COMMAND = ['/usr/local/bin/ns8ctl'];

/** Environment file the backup services read (NS8CTL_REDIS_URL and friends), optional. */
export const BACKUP_ENV_FILE = '/etc/ns8ctl/node-agent.env';

/** Unit file name -> content of the timers and services wanted on `node` (pure). */
export function wantedBackupUnits(schedules: ReadonlyMap<string, BackupScheduleSpec>, desired: readonly InstanceDesired[], node: number, command: readonly string[] = DEFAULT_BACKUP_COMMAND): Map<string, string> {
  const modules = desired.map((d) => ({ id: d.id, node: Number(d.spec.node), labels: d.labels ?? {}, deleting: Boolean(d.deleting) }));
  const out = new Map<string, string>();
  for (const [name, spec] of schedules) {
    // Both end up in unit files: what validation lets through only (Redis may hold anything).
    if (!SAFE_NAME.test(name) || !SAFE_CALENDAR.test(spec.schedule)) continue;
    if (spec.suspend || selectInstances(spec, modules, node).length === 0) continue;
    out.set(`${PREFIX}${name}.service`, renderService(name, node, command));
    out.set(`${PREFIX}${name}.timer`, renderTimer(name, spec.schedule));
  }
  return out;
}

function renderService(name: string, node: number, command: readonly string[]): string {
  return [
    '[Unit]',
    `Description=ns8ctl backup of schedule ${name} on node ${node}`,
    'After=network-online.target redis-server.service',
    '',
    '[Service]',
    'Type=oneshot',
    `EnvironmentFile=-${BACKUP_ENV_FILE}`,
    `ExecStart=${[...command, 'backup', 'run', name, '--node', String(node)].join(' ')}`,
    '',
  ].join('\n');
}

function renderTimer(name: string, schedule: string): string {
  return ['[Unit]', `Description=ns8ctl backup schedule ${name}`, '', '[Timer]', `OnCalendar=${schedule}`, 'Persistent=true', 'RandomizedDelaySec=60', '', '[Install]', 'WantedBy=timers.target', ''].join('\n');
}

/** Every desired BackupSchedule, deleting ones left out (one round trip when there are none). */
export async function readBackupSchedules(redis: Redis): Promise<Map<string, BackupScheduleSpec>> {
  const names = (await redis.smembers(keys.desiredIndex('BackupSchedule'))).sort();
  const out = new Map<string, BackupScheduleSpec>();
  if (!names.length) return out;
  const p = redis.pipeline();
  for (const n of names) p.hgetall(keys.desired('BackupSchedule', n));
  const res = (await p.exec()) ?? [];
  names.forEach((n, i) => {
    const stored = parseStoredObject('BackupSchedule', n, (res[i]?.[1] ?? {}) as Record<string, string>);
    if (stored && !stored.deleting) out.set(n, (stored.object as unknown as { spec: BackupScheduleSpec }).spec);
  });
  return out;
}

/** What a sync changed. */
export interface TimerSync {
  installed: string[];
  removed: string[];
}

/**
 * Writes the wanted backup units into `unitDir` and removes the others; with systemd, the changed
 * timers are (re)enabled and started after one daemon-reload, the removed ones disabled first.
 */
export async function syncBackupTimers(unitDir: string, wanted: ReadonlyMap<string, string>, systemd: SystemdHost | undefined): Promise<TimerSync> {
  const present = (await fs.readdir(unitDir).catch(() => [] as string[])).filter((f) => f.startsWith(PREFIX) && /\.(service|timer)$/.test(f));
  const removed = present.filter((f) => !wanted.has(f)).sort();
  const installed: string[] = [];
  for (const [file, content] of wanted) {
    const cur = await fs.readFile(path.join(unitDir, file), 'utf8').catch(() => undefined);
    if (cur !== content) installed.push(file);
  }
  installed.sort();
  if (!installed.length && !removed.length) return { installed, removed };
  const scope = { kind: 'system' as const };
  const removedTimers = removed.filter((f) => f.endsWith('.timer'));
  if (systemd && removedTimers.length) {
    await systemd.stop(scope, removedTimers, 'stop backup timers no schedule wants here');
    await systemd.disable(scope, removedTimers, 'disable backup timers no schedule wants here');
  }
  for (const f of removed) await fs.rm(path.join(unitDir, f), { force: true });
  await fs.mkdir(unitDir, { recursive: true });
  for (const f of installed) await writeFileAtomic(path.join(unitDir, f), wanted.get(f) as string, { mode: 0o644 });
  if (systemd) {
    await systemd.daemonReload(scope, 'backup timer units changed');
    const timers = installed.filter((f) => f.endsWith('.timer'));
    if (timers.length) {
      await systemd.enable(scope, timers, 'enable backup timers');
      await systemd.restart(scope, timers, 'start backup timers with their schedule');
    }
  }
  return { installed, removed };
}
