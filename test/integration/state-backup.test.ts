/**
 * `ns8ctl backup-state` / `restore-state` on a real redis-server, through the CLI: a backup,
 * FLUSHALL and a restore give back exactly the keys there were; a wrong passphrase, a changed file
 * or an invalid object restore nothing; objects that differ are listed and kept unless --force;
 * secrets never appear in the file.
 */
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { encryptArchive } from '../../src/state/state-archive.js';
import { runCli } from '../support/cli.js';
import { useCliProject } from '../support/cli-project.js';
import { dumpRedis } from '../support/redis-dump.js';

const PASS = 'a long enough test passphrase';
const CONFIG_SECRET = 'cfg-Secret-9f1d2';
const ENV_SECRET = 'env-Secret-77ab3';

const node = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata:\n  name: node1\nspec:\n  id: 1\n  flags: [maintenance]\n`;
const repo = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Repository\nmetadata:\n  name: extra\nspec:\n  url: https://repo.example.org/ns8/\n  enabled: false\n`;
const mod = (name: string, tag: string): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata:
  name: ${name}
spec:
  image: 127.0.0.1:5000/ns8ctl-fixtures/webapp:${tag}
  node: 1
  configuration:
    admin_password: ${CONFIG_SECRET}
`;

describe('backup-state and restore-state', () => {
  const t = useCliProject('ns8ctl-state-backup-', { NS8CTL_STATE_PASSPHRASE: PASS });
  const cli = (...args: string[]) => runCli(args, t.env);

  /** A cluster as apply, the node agent and the controller leave it, with secrets in it. */
  async function cluster(): Promise<void> {
    t.write('m/node.yaml', node);
    t.write('m/repo.yaml', repo);
    t.write('m/a.yaml', mod('webapp1', '1.0.0'));
    t.write('m/b.yaml', mod('webapp2', '1.0.0'));
    const applied = await cli('apply', '-f', path.join(t.dir, 'm'));
    expect(applied.code).toBe(0);
    expect((await cli('apply', '-f', t.write('other/c.yaml', mod('webapp3', '1.1.0')), '--applyset', 'other')).code).toBe(0);
    await t.redis.hset('ns8ctl/desired/module/webapp2', { finalizers: 'node-agent', deleting: JSON.stringify({ removalPolicy: 'Preserve' }) });
    await t.redis.hset('ns8ctl/desired/module/webapp1', 'finalizers', 'node-agent');
    await t.redis.set('ns8ctl/cluster/epoch', JSON.stringify({ id: 'epoch-a1', created: '2026-12-01T00:00:00Z' }));
    await t.redis.set('cluster/node_sequence', '1');
    await t.redis.hset('node/1/vpn', { ip_address: '10.5.4.1', endpoint: 'node1.example.org:55820' });
    await t.redis.hset('module/webapp1/environment', { MODULE_ID: 'webapp1', TCP_PORT: '20001', DB_PASSWORD: ENV_SECRET });
    await t.redis.hset('ns8ctl/node/1/ports', { 'webapp1/tcp': '20001-20001' });
    await t.redis.set('node/1/tcp_ports_sequence', '20002');
    await t.redis.hset('ns8ctl/configuration/module/webapp1', { appliedHash: 'h1', appliedGeneration: '1', appliedTime: '2026-12-01T00:00:00Z', appliedTask: 't1' });
  }

  it('backup, FLUSHALL, restore gives back every key exactly; a second restore writes nothing; no secret is in the file', async () => {
    await cluster();
    const before = await dumpRedis(t.redis);
    const file = path.join(t.dir, 'state.enc');
    const backup = await cli('backup-state', '--out', file);
    expect(backup.code).toBe(0);
    expect(backup.stderr).toContain(`Saved the desired state to ${file} (3 modules, 1 repositories, 1 nodes, 2 inventories`);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const bytes = readFileSync(file);
    for (const secret of [CONFIG_SECRET, ENV_SECRET, 'webapp1', 'admin_password']) expect(bytes.includes(secret)).toBe(false);

    await t.redis.flushall();
    const restored = await cli('restore-state', file, '--yes');
    expect(restored.stderr).toContain('Restored 20 item(s)');
    expect(restored.code).toBe(0);
    expect(restored.stdout).toContain('Module/webapp1 restored');
    expect(await dumpRedis(t.redis)).toEqual(before);

    const again = await cli('restore-state', file, '--yes');
    expect(again.code).toBe(0);
    expect(again.stderr).toContain('Nothing to restore');
    expect(await dumpRedis(t.redis)).toEqual(before);
    // What apply sees: the restored objects are exactly the manifests (webapp2 is being removed).
    const m = (f: string): string[] => ['-f', path.join(t.dir, 'm', f)];
    expect((await cli('diff', ...m('node.yaml'), ...m('repo.yaml'), ...m('a.yaml'))).code).toBe(0);
  }, 60_000);

  it('a wrong passphrase or a changed file restores nothing, with a clear error', async () => {
    await cluster();
    const file = path.join(t.dir, 'state.enc');
    expect((await cli('backup-state', '--out', file)).code).toBe(0);
    await t.redis.flushall();
    const wrong = await runCli(['restore-state', file, '--yes'], { ...t.env, NS8CTL_STATE_PASSPHRASE: 'not the passphrase used' });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain(`cannot decrypt ${file}: the passphrase is wrong, or the file was changed since it was written (nothing was restored)`);
    const text = readFileSync(file, 'utf8');
    const at = text.indexOf('\n') + 40;
    writeFileSync(file, text.slice(0, at) + (text[at] === 'A' ? 'B' : 'A') + text.slice(at + 1));
    const tampered = await cli('restore-state', file, '--yes');
    expect(tampered.code).toBe(1);
    expect(tampered.stderr).toContain('the passphrase is wrong, or the file was changed');
    expect(await t.redis.keys('*')).toEqual([]);
  }, 60_000);

  it('over different objects it refuses listing them and writes nothing; --force restores the file; --dry-run and a missing --yes write nothing', async () => {
    await cluster();
    const file = path.join(t.dir, 'state.enc');
    expect((await cli('backup-state', '--out', file)).code).toBe(0);
    const saved = await dumpRedis(t.redis);
    t.write('m/a.yaml', mod('webapp1', '2.0.0'));
    expect((await cli('apply', '-f', path.join(t.dir, 'm', 'a.yaml'))).code).toBe(0);
    await t.redis.del('ns8ctl/desired/module/webapp3');
    await t.redis.srem('ns8ctl/desired/module', 'webapp3');
    const changed = await dumpRedis(t.redis);

    const refused = await cli('restore-state', file, '--yes');
    expect(refused.code).toBe(1);
    expect(refused.stdout).toContain('conflict: Module/webapp1: desired state has another Module (generation 2, apply set default) than the file (generation 1, apply set default)');
    expect(refused.stderr).toContain('differ from');
    expect(refused.stderr).toContain('nothing was written');
    expect(await dumpRedis(t.redis)).toEqual(changed);
    // -o json: one document on stdout, the refusal in it.
    const json = await cli('restore-state', file, '--yes', '-o', 'json');
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({ written: false, refused: { error: 'restore_conflicts' }, conflicts: expect.arrayContaining([expect.stringContaining('Module/webapp1')]) });

    const dry = await cli('restore-state', file, '--force', '--dry-run');
    expect(dry.code).toBe(0);
    expect(dry.stdout).toContain('Module/webapp3 restored');
    expect(dry.stdout).toContain('Module/webapp1 replaced');
    expect(await dumpRedis(t.redis)).toEqual(changed);
    const unconfirmed = await cli('restore-state', file, '--force');
    expect(unconfirmed.code).toBe(1);
    expect(unconfirmed.stderr).toContain('run it again with --yes');
    expect(await dumpRedis(t.redis)).toEqual(changed);

    const forced = await cli('restore-state', file, '--force', '--yes');
    expect(forced.code).toBe(0);
    expect(await dumpRedis(t.redis)).toEqual(saved);
  }, 60_000);

  it('a file whose objects do not validate restores nothing and names each problem', async () => {
    const bad = {
      version: 1,
      objects: [{ kind: 'Module', id: 'web1', fields: { object: JSON.stringify({ apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: 'web1' }, spec: { image: 'x', node: 9 } }), generation: '1' } }],
      inventories: {},
      epoch: null,
      strings: { 'cluster/module_sequence/web': 'many' },
      hashes: {},
      sets: {},
    };
    const file = path.join(t.dir, 'bad.enc');
    writeFileSync(file, await encryptArchive(bad, PASS, { created: new Date(), counts: { modules: 1 } }));
    const r = await cli('restore-state', file, '--yes');
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${file}: `);
    expect(r.stderr).toContain('cluster/module_sequence/web: counter "many" is not an integer');
    expect(r.stderr).toContain(`${file}#Module/web1 /spec/image`);
    expect(r.stderr).toContain(`${file}#Module/web1 /spec/node`);
    expect(await t.redis.keys('*')).toEqual([]);
  });

  it('an empty desired state is not backed up unless --allow-empty; the passphrase is never a command-line value', async () => {
    const file = path.join(t.dir, 'empty.enc');
    const r = await cli('backup-state', '--out', file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('desired state has no objects');
    expect((await cli('backup-state', '--out', file, '--allow-empty')).code).toBe(0);
    const noPass = await runCli(['backup-state', '--out', file], { NS8CTL_REDIS_URL: t.srv.url });
    expect(noPass.code).toBe(2);
    expect(noPass.stderr).toContain('--passphrase-file FILE or the environment variable NS8CTL_STATE_PASSPHRASE');
    expect((await cli('backup-state', '--out', file, '--passphrase', 'x')).code).toBe(2);
  });

  it('a backup destination and its restic password come back from the file, the password only inside the encrypted part, never printed', async () => {
    const RESTIC = 'restic-Secret-5e21c';
    t.write('m/node.yaml', node);
    t.write('m/dest.yaml', 'apiVersion: ns8ctl.nethserver.org/v1\nkind: BackupDestination\nmetadata:\n  name: offsite\nspec:\n  url: /srv/backup/ns8\n');
    expect((await cli('apply', '-f', path.join(t.dir, 'm'))).code).toBe(0);
    expect((await runCli(['backup', 'set-password', 'offsite', '--password-stdin'], t.env, RESTIC)).code).toBe(0);
    const before = await dumpRedis(t.redis);
    const file = path.join(t.dir, 'state.enc');
    const backup = await cli('backup-state', '--out', file);
    expect(backup.code).toBe(0);
    expect(backup.stderr).toContain('1 backup destinations');
    const bytes = readFileSync(file);
    for (const s of [RESTIC, Buffer.from(RESTIC).toString('base64').slice(0, 16), 'offsite']) expect(bytes.includes(s)).toBe(false);

    await t.redis.flushall();
    const restored = await cli('restore-state', file, '--yes');
    expect(restored.code).toBe(0);
    expect(restored.stdout).toContain('ns8ctl/secret/backup_destination/offsite: 1 field(s) restored');
    expect(await dumpRedis(t.redis)).toEqual(before);
    // A different password now: a conflict names the field, never a value.
    await t.redis.hset('ns8ctl/secret/backup_destination/offsite', 'password', 'another-one-0');
    const conflict = await cli('restore-state', file, '--yes');
    expect(conflict.code).toBe(1);
    expect(conflict.stdout).toContain('conflict: ns8ctl/secret/backup_destination/offsite: field(s) password differ from the file');
    for (const out of [backup, restored, conflict]) expect(out.stdout + out.stderr).not.toMatch(/restic-Secret|another-one-0/);
  }, 60_000);
});
