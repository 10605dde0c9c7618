/**
 * Backup figures in /metrics: they follow the node agents' backup events, and a controller that
 * starts reads the last backups from the status hashes (real redis-server).
 */
import { BackupMetrics } from '../../src/controller/backup-metrics.js';
import { keys } from '../../src/state/keys.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';

let redis: TestRedis;
beforeAll(async () => {
  redis = await startRedis();
}, 60_000);
afterAll(async () => {
  await redis?.stop();
});

const event = (name: string, module: string, data: Record<string, unknown>) => ({ name, type: 'Normal', object: `Module/${module}`, message: '', time: '2026-12-05T10:00:00.000Z', data });

test('backup events become runs by result and the last success figures of each instance and schedule', () => {
  const m = new BackupMetrics();
  m.observe('backup-succeeded', event('backup-succeeded', 'mail1', { schedule: 'nightly', durationMs: 2500, bytesAdded: 10, bytesProcessed: 4096 }));
  m.observe('backup-failed', event('backup-failed', 'mail1', { schedule: 'nightly' }));
  m.observe('module-status-changed', { module: 'mail1' });
  const text = m.render();
  expect(text).toContain('ns8ctl_backup_runs_total{module="mail1",schedule="nightly",result="succeeded"} 1');
  expect(text).toContain('ns8ctl_backup_runs_total{module="mail1",schedule="nightly",result="failed"} 1');
  expect(text).toContain(`ns8ctl_backup_last_success_timestamp_seconds{module="mail1",schedule="nightly"} ${Date.parse('2026-12-05T10:00:00.000Z') / 1000}`);
  expect(text).toContain('ns8ctl_backup_duration_seconds{module="mail1",schedule="nightly"} 2.5');
  expect(text).toContain('ns8ctl_backup_size_bytes{module="mail1",schedule="nightly"} 4096');
  expect(text).toContain('ns8ctl_backup_added_bytes{module="mail1",schedule="nightly"} 10');
});

test('at start the last successes are read from the status hashes of the desired modules and schedules', async () => {
  const c = redis.client();
  await c.sadd(keys.desiredIndex('Module'), 'mail1', 'web1');
  await c.sadd(keys.desiredIndex('BackupSchedule'), 'nightly');
  await c.hset('module/mail1/backup_status/nightly', { errors: '0', last_success: '2026-12-04T03:00:00.000Z', duration_ms: '1200', total_size: '999', added_size: '5' });
  // A failed last run keeps the time of the last success; its own figures are not a success's.
  await c.hset('module/web1/backup_status/nightly', { errors: '1', last_success: '2026-12-03T03:00:00.000Z', duration_ms: '7' });
  const m = new BackupMetrics();
  await m.seed(c);
  const text = m.render();
  expect(text).toContain(`ns8ctl_backup_last_success_timestamp_seconds{module="mail1",schedule="nightly"} ${Date.parse('2026-12-04T03:00:00.000Z') / 1000}`);
  expect(text).toContain('ns8ctl_backup_duration_seconds{module="mail1",schedule="nightly"} 1.2');
  expect(text).toContain(`ns8ctl_backup_last_success_timestamp_seconds{module="web1",schedule="nightly"} ${Date.parse('2026-12-03T03:00:00.000Z') / 1000}`);
  expect(text).not.toContain('ns8ctl_backup_duration_seconds{module="web1"');
});
