/**
 * Backup figures in the controller's `/metrics`, per instance and schedule: runs by result, the
 * time of the last success, and the duration, size and added bytes of the last success. They
 * follow the node agents' `backup-succeeded` / `backup-failed` events; at start they are read
 * from the status hashes (`module/<id>/backup_status/<schedule>`), so a restarted controller
 * shows the last backups at once, not only those after it started.
 */
import type { Redis } from 'ioredis';
import { keys } from '../state/keys.js';
import { Counter, Gauge } from './metrics.js';

export class BackupMetrics {
  readonly runs = new Counter('ns8ctl_backup_runs_total', 'Backups of an instance run by a schedule since the controller started, by module, schedule and result (succeeded, failed).');
  readonly lastSuccess = new Gauge('ns8ctl_backup_last_success_timestamp_seconds', 'Unix time of the last successful backup of an instance by a schedule.');
  readonly duration = new Gauge('ns8ctl_backup_duration_seconds', 'How long the last successful backup of an instance by a schedule took.');
  readonly size = new Gauge('ns8ctl_backup_size_bytes', 'Bytes the last successful backup of an instance covered (restic total_bytes_processed).');
  readonly added = new Gauge('ns8ctl_backup_added_bytes', 'Bytes the last successful backup of an instance added to its repository.');

  /** Takes one controller event (its name and JSON payload); other events are ignored. */
  observe(name: string, payload: unknown): void {
    if (name !== 'backup-succeeded' && name !== 'backup-failed') return;
    const e = (payload ?? {}) as { object?: unknown; time?: unknown; data?: Record<string, unknown> };
    const module = typeof e.object === 'string' && e.object.startsWith('Module/') ? e.object.slice('Module/'.length) : '';
    const schedule = typeof e.data?.schedule === 'string' ? e.data.schedule : '';
    if (!module || !schedule) return;
    const labels = { module, schedule };
    this.runs.inc({ ...labels, result: name === 'backup-succeeded' ? 'succeeded' : 'failed' });
    if (name !== 'backup-succeeded') return;
    const at = typeof e.time === 'string' ? Date.parse(e.time) : NaN;
    this.setLast(labels, { at: Number.isNaN(at) ? Date.now() : at, durationMs: Number(e.data?.durationMs), size: Number(e.data?.bytesProcessed), added: Number(e.data?.bytesAdded) });
  }

  /** Reads the status hash of every desired Module for every desired schedule (one pipeline). */
  async seed(redis: Redis): Promise<void> {
    const [modules, schedules] = await Promise.all([redis.smembers(keys.desiredIndex('Module')), redis.smembers(keys.desiredIndex('BackupSchedule'))]);
    const pairs = modules.flatMap((module) => schedules.map((schedule) => ({ module, schedule })));
    if (!pairs.length) return;
    const p = redis.pipeline();
    for (const { module, schedule } of pairs) p.hgetall(`module/${module}/backup_status/${schedule}`);
    const res = (await p.exec()) ?? [];
    pairs.forEach((labels, i) => {
      const h = (res[i]?.[1] ?? {}) as Record<string, string>;
      const at = h.last_success ? Date.parse(h.last_success) : NaN;
      if (Number.isNaN(at)) return;
      // After a failure the hash keeps the last success's time; its other figures are the failure's.
      if (h.errors === '0') this.setLast(labels, { at, durationMs: Number(h.duration_ms), size: Number(h.total_size), added: Number(h.added_size) });
      else this.lastSuccess.set(at / 1000, labels);
    });
  }

  private setLast(labels: { module: string; schedule: string }, v: { at: number; durationMs: number; size: number; added: number }): void {
    this.lastSuccess.set(v.at / 1000, labels);
    if (Number.isFinite(v.durationMs)) this.duration.set(v.durationMs / 1000, labels);
    if (Number.isFinite(v.size)) this.size.set(v.size, labels);
    if (Number.isFinite(v.added)) this.added.set(v.added, labels);
  }

  render(): string {
    return [this.runs, this.lastSuccess, this.duration, this.size, this.added].map((m) => m.render()).join('\n');
  }
}
