/**
 * BackupDestination and BackupSchedule through the real CLI and a real redis-server: apply,
 * get (table, json), a refused delete of a destination still named, delete, and
 * `backup set-password`, whose value is in no output and readable by the admin only (a module's
 * Redis user, with the ACL a node agent gives it, is refused).
 */
import { Redis } from 'ioredis';
import path from 'node:path';
import { applyModuleAcl } from '../../src/node-agent/redis-acl.js';
import { runCli, type CliRun } from '../support/cli.js';
import { useCliProject } from '../support/cli-project.js';
import { dumpRedis } from '../support/redis-dump.js';

const API = 'apiVersion: ns8ctl.nethserver.org/v1';
const PASSWORD = 'Restic-Pw-In-Test-7f3a';
const URL_PASSWORD = 'Url-Pw-In-Test-91c';

const MANIFESTS = `${API}
kind: Node
metadata: {name: node1}
spec: {id: 1}
---
${API}
kind: BackupDestination
metadata: {name: offsite}
spec:
  url: "rest:https://alice:${URL_PASSWORD}@backup.example.org:8000/ns8"
---
${API}
kind: BackupSchedule
metadata: {name: nightly}
spec:
  destination: offsite
  instances: [webapp1]
  selector: {matchLabels: {backup: nightly}}
  schedule: "*-*-* 02:30:00"
  retention: {keepLast: 3, keepDaily: 7}
`;

const all = (...runs: CliRun[]): string => runs.map((r) => r.stdout + r.stderr).join('\n');

describe('backup kinds through the CLI', () => {
  const t = useCliProject('ns8ctl-backup-kinds-');

  it('applies, lists, refuses to delete a destination a schedule names, then deletes both', async () => {
    const dir = path.dirname(t.write('m/all.yaml', MANIFESTS));
    const applied = await runCli(['apply', '-f', dir], t.env);
    expect(applied.code).toBe(0);
    expect(applied.stdout).toContain('? BackupDestination offsite has no password yet: backups to it and restores from it wait until `ns8ctl backup set-password offsite --password-file FILE`');
    expect(await t.redis.hget('ns8ctl/desired/backupdestination/offsite', 'generation')).toBe('1');
    expect(await t.redis.sismember('ns8ctl/desired/backupschedule', 'nightly')).toBe(1);
    expect(await t.redis.smembers('ns8ctl/inventory/default')).toEqual(expect.arrayContaining(['BackupDestination/offsite', 'BackupSchedule/nightly']));

    const bd = await runCli(['get', 'bd'], t.env);
    expect(bd.code).toBe(0);
    expect(bd.stdout).toMatch(/^NAME +URL +PASSWORD +GEN\noffsite +rest:https:\/\/alice:\(sensitive value\)@backup\.example\.org:8000\/ns8 +missing +1\n$/);
    const bs = await runCli(['get', 'backupschedules'], t.env);
    expect(bs.stdout).toMatch(/^NAME +DESTINATION +SCHEDULE +INSTANCES +GEN\nnightly +offsite +\*-\*-\* 02:30:00 +webapp1 \+ labels backup=nightly +1\n$/);
    const one = JSON.parse((await runCli(['get', 'backupschedule', 'nightly', '-o', 'json'], t.env)).stdout) as { spec: unknown };
    expect(one.spec).toEqual({ destination: 'offsite', instances: ['webapp1'], selector: { matchLabels: { backup: 'nightly' } }, schedule: '*-*-* 02:30:00', retention: { keepLast: 3, keepDaily: 7 } });
    const doc = JSON.parse((await runCli(['get', 'backupdestination', 'offsite', '-o', 'json'], t.env)).stdout) as { status: unknown };
    expect(doc.status).toEqual({
      conditions: [{ type: 'PasswordSet', status: 'False', reason: 'PasswordMissing', message: 'no password: set it with ns8ctl backup set-password offsite' }],
    });

    const before = await dumpRedis(t.redis);
    const refused = await runCli(['delete', 'bd', 'offsite'], t.env);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('BackupDestination/offsite cannot be deleted: BackupSchedule/nightly still names it');
    expect(await dumpRedis(t.redis)).toEqual(before);

    expect((await runCli(['delete', 'bs', 'nightly'], t.env)).code).toBe(0);
    expect((await runCli(['delete', 'backupdestination', 'offsite'], t.env)).code).toBe(0);
    expect(await t.redis.exists('ns8ctl/desired/backupdestination/offsite', 'ns8ctl/desired/backupschedule/nightly')).toBe(0);
    expect(all(applied, bd, bs, refused)).not.toContain(URL_PASSWORD);
  });

  it('a schedule naming an unknown destination is refused with its file, line and the known destinations; nothing is written', async () => {
    const f = t.write('s.yaml', MANIFESTS.split('---\n').filter((d) => !d.includes('BackupDestination')).join('---\n'));
    const r = await runCli(['apply', '-f', f], t.env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${f}:10:16  /spec/destination  destination "offsite" is not declared: no BackupDestination of these manifests nor of the cluster has that name; known destinations: none`);
    expect(await t.redis.dbsize()).toBe(0);
  });

  it('set-password stores the password for the admin only and never prints it', async () => {
    const f = t.write('pw', `${PASSWORD}\n`);
    const outputs: CliRun[] = [];
    const set = await runCli(['backup', 'set-password', 'offsite', '--password-file', f], t.env);
    outputs.push(set);
    expect(set.code).toBe(0);
    expect(set.stdout).toBe('Password of backup destination offsite set (ns8ctl/secret/backup_destination/offsite).\n');
    expect(set.stderr).toContain('no BackupDestination offsite is in desired state yet');
    // The trailing newline of the file is stripped.
    expect(await t.redis.hget('ns8ctl/secret/backup_destination/offsite', 'password')).toBe(PASSWORD);

    const again = await runCli(['backup', 'set-password', 'offsite', '--password-stdin', '-o', 'json'], t.env, `${PASSWORD}-2\n`);
    outputs.push(again);
    expect(JSON.parse(again.stdout)).toEqual({ destination: 'offsite', key: 'ns8ctl/secret/backup_destination/offsite', password: 'replaced', declared: false });
    expect(await t.redis.hget('ns8ctl/secret/backup_destination/offsite', 'password')).toBe(`${PASSWORD}-2`);

    t.write('m/all.yaml', MANIFESTS);
    const applied = await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env);
    outputs.push(applied);
    expect(applied.stdout).not.toContain('has no password');
    const table = await runCli(['get', 'bd'], t.env);
    outputs.push(table, await runCli(['get', 'bd', '-o', 'yaml'], t.env), await runCli(['get', 'bd', '-o', 'wide', '--show-secrets'], t.env));
    expect(table.stdout).toMatch(/offsite +.+ +set +1\n/);

    // Refusals: nothing written, the value never quoted.
    const stored = await dumpRedis(t.redis);
    const refusals: Array<[string, string]> = [
      ['', 'it is empty'],
      ['\n', 'it is empty'],
      [`${PASSWORD}\nsecond-line`, 'it holds a line break before its end; a password is one line (only one trailing newline is stripped)'],
      [`${'x'.repeat(4097)}`, 'it is 4097 bytes long; at most 4096 bytes are allowed'],
    ];
    for (const [input, why] of refusals) {
      const r = await runCli(['backup', 'set-password', 'offsite', '--password-stdin'], t.env, input);
      outputs.push(r);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`the backup password is refused: ${why}; nothing was written`);
    }
    const usage = await runCli(['backup', 'set-password', 'offsite'], t.env);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('exactly one of --password-file FILE and --password-stdin');
    expect((await runCli(['backup', 'set-password', 'Bad_Name', '--password-stdin'], t.env, 'x')).code).toBe(2);
    expect(await dumpRedis(t.redis)).toEqual(stored);
    expect(all(...outputs)).not.toContain(PASSWORD);

    // A module's Redis user (the ACL a node agent gives it) reads cluster/* but not the secret.
    await t.redis.set('cluster/probe', 'readable');
    await applyModuleAcl(t.redis, 'webapp1', 'module-pw-1');
    const asModule = new Redis(t.srv.url, { username: 'module/webapp1', password: 'module-pw-1', maxRetriesPerRequest: 1, enableReadyCheck: false });
    try {
      expect(await asModule.get('cluster/probe')).toBe('readable');
      await expect(asModule.hget('ns8ctl/secret/backup_destination/offsite', 'password')).rejects.toThrow(/NOPERM/);
      await expect(asModule.hgetall('ns8ctl/secret/backup_destination/offsite')).rejects.toThrow(/NOPERM/);
    } finally {
      asModule.disconnect();
    }
  });
});
