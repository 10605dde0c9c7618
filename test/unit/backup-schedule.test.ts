/**
 * Which instances a BackupSchedule selects on a node, the timer and service units it becomes,
 * how the unit dir is kept in step (written, rewritten, removed; systemd calls only on change),
 * and restic's retention options.
 */
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { BackupScheduleSpec } from '../../src/manifest/types.js';
import { selectInstances, type SelectableModule } from '../../src/node-agent/backup/catalog.js';
import { retentionArgs } from '../../src/node-agent/backup/restic.js';
import { syncBackupTimers, wantedBackupUnits } from '../../src/node-agent/backup/timers.js';
import type { InstanceDesired } from '../../src/node-agent/types.js';
import { Ns8ctlError } from '../../src/errors.js';
import { errorOf } from '../support/caught.js';
import { FakeSystemd } from '../support/node-agent-fakes.js';

const modules: SelectableModule[] = [
  { id: 'mail1', node: 1, labels: { tier: 'gold' }, deleting: false },
  { id: 'webapp1', node: 1, labels: {}, deleting: false },
  { id: 'webapp2', node: 2, labels: { tier: 'gold' }, deleting: false },
  { id: 'old1', node: 1, labels: { tier: 'gold' }, deleting: true },
];
const schedule = (s: Partial<BackupScheduleSpec>): BackupScheduleSpec => ({ destination: 'nas', schedule: 'daily', ...s });

describe('selectInstances', () => {
  test('takes the listed ids and the label matches of this node, never one being deleted, sorted', () => {
    expect(selectInstances(schedule({ instances: ['webapp1'], selector: { matchLabels: { tier: 'gold' } } }), modules, 1)).toEqual(['mail1', 'webapp1']);
    expect(selectInstances(schedule({ selector: { matchLabels: { tier: 'gold' } } }), modules, 2)).toEqual(['webapp2']);
    expect(selectInstances(schedule({ instances: ['old1'] }), modules, 1)).toEqual([]);
  });

  test('an instance listed but placed on another node is not backed up here', () => {
    expect(selectInstances(schedule({ instances: ['webapp2'] }), modules, 1)).toEqual([]);
  });

  test('every label of the selector must match', () => {
    expect(selectInstances(schedule({ selector: { matchLabels: { tier: 'gold', zone: 'a' } } }), modules, 1)).toEqual([]);
  });
});

const desired = (id: string, node: number, labels?: Record<string, string>): InstanceDesired => ({ id, node, generation: 1, spec: { image: 'r/x/webapp:1', node }, uuid: 'u', finalizers: [], ...(labels ? { labels } : {}) }) as unknown as InstanceDesired;

describe('backup timers', () => {
  const schedules = new Map<string, BackupScheduleSpec>([
    ['nightly', schedule({ instances: ['webapp1'], schedule: '*-*-* 02:30:00' })],
    ['gold', schedule({ selector: { matchLabels: { tier: 'gold' } } })],
    ['paused', schedule({ instances: ['webapp1'], suspend: true })],
  ]);

  test('a schedule selecting instances of the node gets a timer with its OnCalendar and a oneshot service running backup run for the node', () => {
    const units = wantedBackupUnits(schedules, [desired('webapp1', 1)], 1, ['/usr/local/bin/ns8ctl']);
    expect([...units.keys()].sort()).toEqual(['ns8ctl-backup-nightly.service', 'ns8ctl-backup-nightly.timer']);
    expect(units.get('ns8ctl-backup-nightly.timer')).toContain('OnCalendar=*-*-* 02:30:00\nPersistent=true');
    expect(units.get('ns8ctl-backup-nightly.service')).toContain('Type=oneshot');
    expect(units.get('ns8ctl-backup-nightly.service')).toContain('ExecStart=/usr/local/bin/ns8ctl backup run nightly --node 1');
  });

  test('a schedule name or calendar that could break the unit file (newline, quote, ;) gets no units', () => {
    const hostile = new Map<string, BackupScheduleSpec>([
      ['evil', schedule({ instances: ['webapp1'], schedule: 'daily\nExecStartPre=/bin/sh' })],
      ['Bad;name', schedule({ instances: ['webapp1'] })],
    ]);
    expect(wantedBackupUnits(hostile, [desired('webapp1', 1)], 1).size).toBe(0);
  });

  test('suspended schedules and schedules selecting nothing on the node get no units', () => {
    expect([...wantedBackupUnits(schedules, [desired('webapp9', 1, { tier: 'gold' })], 1).keys()].sort()).toEqual(['ns8ctl-backup-gold.service', 'ns8ctl-backup-gold.timer']);
    expect(wantedBackupUnits(schedules, [desired('webapp1', 2)], 1).size).toBe(0);
  });

  test('the unit dir follows the wanted units: written once, rewritten on change, removed (stopped and disabled) when no longer wanted', async () => {
    const dir = await fs.mkdtemp(path.join(tmpdir(), 'ns8ctl-timers-'));
    try {
      await fs.writeFile(path.join(dir, 'other.service'), 'x');
      const systemd = new FakeSystemd();
      const first = wantedBackupUnits(schedules, [desired('webapp1', 1)], 1);
      expect(await syncBackupTimers(dir, first, systemd)).toEqual({ installed: ['ns8ctl-backup-nightly.service', 'ns8ctl-backup-nightly.timer'], removed: [] });
      expect(systemd.calls).toEqual(['daemon-reload system', 'enable system ns8ctl-backup-nightly.timer', 'restart system ns8ctl-backup-nightly.timer']);
      // Nothing changed: no file written, no systemd call.
      systemd.calls.length = 0;
      expect(await syncBackupTimers(dir, first, systemd)).toEqual({ installed: [], removed: [] });
      expect(systemd.calls).toEqual([]);
      // The schedule goes: its units are stopped, disabled and removed; other units are left alone.
      expect(await syncBackupTimers(dir, new Map(), systemd)).toEqual({ installed: [], removed: ['ns8ctl-backup-nightly.service', 'ns8ctl-backup-nightly.timer'] });
      expect(systemd.calls).toEqual(['stop system ns8ctl-backup-nightly.timer', 'disable system ns8ctl-backup-nightly.timer', 'daemon-reload system']);
      expect((await fs.readdir(dir)).sort()).toEqual(['other.service']);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  test('without systemd the files are still written, and no systemctl runs', async () => {
    const dir = await fs.mkdtemp(path.join(tmpdir(), 'ns8ctl-timers-'));
    try {
      await syncBackupTimers(dir, wantedBackupUnits(schedules, [desired('webapp1', 1)], 1), undefined);
      expect((await fs.readdir(dir)).sort()).toEqual(['ns8ctl-backup-nightly.service', 'ns8ctl-backup-nightly.timer']);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('retentionArgs', () => {
  test('keep-last and keep-daily become restic forget options', () => {
    expect(retentionArgs({ keepLast: 7 })).toEqual(['--keep-last=7']);
    expect(retentionArgs({ keepLast: 3, keepDaily: 14 })).toEqual(['--keep-last=3', '--keep-daily=14']);
  });

  test('no option, zero, a fraction or over 1000 is refused with the allowed range', () => {
    for (const bad of [{}, { keepLast: 0 }, { keepDaily: 1.5 }, { keepLast: 1001 }]) {
      const e = errorOf(Ns8ctlError, () => retentionArgs(bad));
      expect(e.code).toBe('backup_retention_invalid');
      expect(e.message).toMatch(/1 to 1000/);
    }
  });
});
