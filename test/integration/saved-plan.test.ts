/**
 * Saved plans: `ns8ctl diff --out FILE` then `ns8ctl apply --plan FILE` applies exactly that plan,
 * or nothing (exit 3) when desired state moved since. Real CLI (in-process) and a real Redis.
 */
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { canonicalJson } from '../../src/runtime/canonical.js';
import { loadPlanKey, sealObjects, unsealObjects, type SealedObjects } from '../../src/apply/saved-plan.js';
import type { DesiredObject } from '../../src/manifest/types.js';
import { runCli } from '../support/cli.js';
import { dumpRedis } from '../support/redis-dump.js';
import { useCliProject } from '../support/cli-project.js';

const node = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata:\n  name: node1\nspec:\n  id: 1\n`;
const mod = (name: string, tag: string, password = 's3cret-admin-pw'): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata:
  name: ${name}
spec:
  image: 127.0.0.1:5000/ns8ctl-fixtures/webapp:${tag}
  node: 1
  configuration:
    admin_password: ${password}
`;

describe('saved plans', () => {
  const t = useCliProject('ns8ctl-saved-plan-');
  const write = t.write;
  const cli = (...args: string[]) => runCli(args, t.env);
  const image = async (id: string): Promise<string | undefined> => {
    const o = await t.redis.hget(`ns8ctl/desired/module/${id}`, 'object');
    return o ? (JSON.parse(o) as { spec: { image: string } }).spec.image : undefined;
  };

  it('diff --out saves the plan without writing; apply --plan applies exactly it', async () => {
    write('m/node.yaml', node);
    write('m/a.yaml', mod('webapp1', '1.0.0'));
    const planFile = path.join(t.dir, 'plan.json');
    const diff = await cli('diff', '-f', path.join(t.dir, 'm'), '--out', planFile);
    expect(diff.code).toBe(1);
    expect(diff.stdout).toContain('+ Module/webapp1');
    expect(diff.stderr).toContain(`Saved the plan to ${planFile}`);
    expect(statSync(planFile).mode & 0o777).toBe(0o600);
    expect(await t.redis.keys('ns8ctl/desired/*')).toEqual([]);
    // The reviewed desired objects carry the secret, sealed with the host key; what is shown masks it.
    const raw = readFileSync(planFile, 'utf8');
    expect(raw).not.toContain('s3cret-admin-pw');
    const saved = JSON.parse(raw) as { text: string; desired: SealedObjects; ops?: unknown };
    expect(saved.ops).toBeUndefined();
    expect(saved.desired.alg).toBe('aes-256-gcm');
    const key = await loadPlanKey(t.env.NS8CTL_STATE_DIR!, false);
    expect(statSync(path.join(t.env.NS8CTL_STATE_DIR!, 'plan.key')).mode & 0o777).toBe(0o600);
    expect(JSON.stringify(unsealObjects(saved.desired, key, planFile))).toContain('s3cret-admin-pw');

    // The manifests change after the plan: apply --plan still applies what was reviewed.
    write('m/a.yaml', mod('webapp1', '9.9.9'));
    const applied = await cli('apply', '--plan', planFile);
    expect(applied.stderr).toContain(`Applied the saved plan ${planFile}`);
    expect(applied.code).toBe(0);
    expect(applied.stdout).toContain('+ Module/webapp1');
    expect(applied.stdout).not.toContain('s3cret-admin-pw');
    expect(await image('webapp1')).toMatch(/:1\.0\.0$/);
    expect(await t.redis.hget('ns8ctl/desired/module/webapp1', 'generation')).toBe('1');
    expect(await t.redis.smembers('ns8ctl/inventory/default')).toEqual(expect.arrayContaining(['Module/webapp1', 'Node/1']));
    // A second apply of the same plan: its preconditions (nothing there yet) no longer hold.
    const again = await cli('apply', '--plan', planFile);
    expect(again.code).toBe(3);
    expect(again.stderr).toMatch(/the saved plan is stale: (Module\/webapp1|Node\/1) changed in desired state \(it was created by another writer \(apply set default, source .*\)\) since the plan was made/);
  });

  it('refuses a stale plan (a changed object, or a changed object the plan left alone) and writes nothing', async () => {
    write('m/node.yaml', node);
    write('m/a.yaml', mod('webapp1', '1.0.0'));
    write('m/b.yaml', mod('webapp2', '1.0.0'));
    expect((await cli('apply', '-f', path.join(t.dir, 'm'))).code).toBe(0);
    write('m/a.yaml', mod('webapp1', '1.1.0'));
    const planFile = path.join(t.dir, 'p.json');
    expect((await cli('diff', '-f', path.join(t.dir, 'm'), '--out', planFile)).code).toBe(1);

    // Stored objects the plan read (with their secrets) are fingerprinted by digest only.
    expect(readFileSync(planFile, 'utf8')).not.toContain('s3cret-admin-pw');

    // Someone changes webapp2, which the plan does not change but read.
    const other = path.join(t.dir, 'other');
    mkdirSync(other);
    writeFileSync(path.join(other, 'b.yaml'), mod('webapp2', '2.0.0'));
    writeFileSync(path.join(other, 'node.yaml'), node);
    expect((await cli('apply', '-f', other)).code).toBe(0);
    const before = await t.redis.hgetall('ns8ctl/desired/module/webapp1');
    const stale = await cli('apply', '--plan', planFile);
    expect(stale.code).toBe(3);
    expect(stale.stderr).toContain('the saved plan is stale: Module/webapp2 changed in desired state (it was changed by another writer (now apply set default, source');
    expect(stale.stderr).toContain('nothing was written');
    expect(await t.redis.hgetall('ns8ctl/desired/module/webapp1')).toEqual(before);
    expect(await image('webapp1')).toMatch(/:1\.0\.0$/);

    // A fresh plan applies.
    write('m/b.yaml', mod('webapp2', '2.0.0'));
    expect((await cli('diff', '-f', path.join(t.dir, 'm'), '--out', planFile)).code).toBe(1);
    expect((await cli('apply', '--plan', planFile)).code).toBe(0);
    expect(await image('webapp1')).toMatch(/:1\.1\.0$/);
    expect(await t.redis.hget('ns8ctl/desired/module/webapp1', 'generation')).toBe('2');
  });

  it('refuses a saved plan whose new instance NS8 can no longer take: its node was flagged nomodules after the plan was saved', async () => {
    write('m/node.yaml', node);
    write('m/a.yaml', mod('webapp1', '1.0.0'));
    const planFile = path.join(t.dir, 'plan.json');
    expect((await cli('diff', '-f', path.join(t.dir, 'm'), '--out', planFile)).code).toBe(1);
    await t.redis.sadd('node/1/flags', 'nomodules');
    const before = await dumpRedis(t.redis);
    const applied = await cli('apply', '--plan', planFile);
    expect(applied.code).toBe(1);
    expect(applied.stderr).toContain('Module/webapp1: [node_nomodules] cannot create webapp1 on node 1: node 1 has the NS8 flag nomodules (node/1/flags;');
    expect(await dumpRedis(t.redis)).toEqual(before);
  });

  it('refuses damaged plan files, wrong flag combinations, and plans apply would refuse', async () => {
    write('m/node.yaml', node);
    write('m/a.yaml', mod('webapp1', '1.0.0'));
    const planFile = path.join(t.dir, 'plan.json');
    expect((await cli('diff', '-f', path.join(t.dir, 'm'), '--out', planFile)).code).toBe(1);
    const text = readFileSync(planFile, 'utf8');
    writeFileSync(planFile, text.replaceAll('1.0.0', '6.6.6'));
    const damaged = await cli('apply', '--plan', planFile);
    expect(damaged.code).toBe(1);
    expect(damaged.stderr).toContain(`${planFile}: the saved plan does not match its digest (the file was damaged or edited)`);
    writeFileSync(planFile, 'apiVersion: v1\n');
    expect((await cli('apply', '--plan', planFile)).stderr).toContain('not a saved plan (not JSON)');
    expect(await t.redis.keys('ns8ctl/desired/*')).toEqual([]);

    expect((await cli('apply', '--plan', planFile, '-f', path.join(t.dir, 'm'))).code).toBe(2);
    const none = await cli('apply');
    expect(none.code).toBe(2);
    expect(none.stderr).toContain('apply needs the manifests (-f PATH) or a saved plan (--plan FILE)');
    expect((await cli('diff', '-f', path.join(t.dir, 'm'), '--force-prune')).code).toBe(2);

    // Pruning most of an apply set (2 of 3): refused, and so not saved (unless --force-prune).
    write('m/b.yaml', mod('webapp2', '1.0.0'));
    expect((await cli('apply', '-f', path.join(t.dir, 'm'))).code).toBe(0);
    const empty = path.join(t.dir, 'empty');
    mkdirSync(empty);
    writeFileSync(path.join(empty, 'node.yaml'), node);
    const pruneFile = path.join(t.dir, 'prune.json');
    const refused = await cli('diff', '-f', empty, '--prune', '--out', pruneFile);
    expect(refused.code).toBe(2); // diff: 1 means changes, errors are above
    expect(refused.stderr).toMatch(/refus/i);
    expect(existsSync(pruneFile)).toBe(false);
    expect((await cli('diff', '-f', empty, '--prune', '--force-prune', '--out', pruneFile)).code).toBe(1);
    expect((await cli('apply', '--plan', pruneFile)).code).toBe(0);
    expect(await t.redis.exists('ns8ctl/desired/module/webapp1')).toBe(0);
  });

  describe('stale plans', () => {
    it('a prune planned before another apply set adopted the object does not delete it', async () => {
      write('m/node.yaml', node);
      write('m/a.yaml', mod('webapp1', '1.0.0'));
      write('m/b.yaml', mod('webapp2', '1.0.0'));
      write('m/c.yaml', mod('webapp3', '1.0.0'));
      expect((await cli('apply', '-f', path.join(t.dir, 'm'))).code).toBe(0);
      rmSync(path.join(t.dir, 'm', 'b.yaml'));
      const planFile = path.join(t.dir, 'prune.json');
      const diff = await cli('diff', '-f', path.join(t.dir, 'm'), '--prune', '--out', planFile);
      expect(diff.stdout).toContain('- Module/webapp2');
      // Apply set `other` adopts webapp2 (same content) after the plan was made.
      const other = write('o/b.yaml', mod('webapp2', '1.0.0'));
      expect((await cli('apply', '-f', other, '--applyset', 'other')).code).toBe(0);
      const before = await dumpRedis(t.redis);
      const stale = await cli('apply', '--plan', planFile);
      expect(stale.code).toBe(3);
      expect(stale.stderr).toContain('the saved plan is stale: Module/webapp2 changed in desired state');
      expect(stale.stderr).toContain('other');
      expect(await dumpRedis(t.redis)).toEqual(before);
      expect(await t.redis.smembers('ns8ctl/inventory/other')).toEqual(['Module/webapp2']);
    });

    it('a plan made before ns8ctl delete does not resurrect the object being deleted', async () => {
      write('m/node.yaml', node);
      write('m/a.yaml', mod('webapp1', '1.0.0'));
      expect((await cli('apply', '-f', path.join(t.dir, 'm'))).code).toBe(0);
      await t.redis.hset('ns8ctl/desired/module/webapp1', 'finalizers', 'node-agent');
      write('m/a.yaml', mod('webapp1', '1.1.0'));
      const planFile = path.join(t.dir, 'update.json');
      expect((await cli('diff', '-f', path.join(t.dir, 'm'), '--out', planFile)).stdout).toContain('~ Module/webapp1');
      expect((await cli('delete', 'module', 'webapp1')).code).toBe(0);
      const before = await dumpRedis(t.redis);
      const stale = await cli('apply', '--plan', planFile);
      expect(stale.code).toBe(3);
      expect(stale.stderr).toMatch(/the saved plan is stale: Module\/webapp1 changed in desired state \(it was marked for deletion by \S+@\S+ at \S+ \(ns8ctl delete\)\)/);
      expect(await dumpRedis(t.redis)).toEqual(before);
      expect(await image('webapp1')).toMatch(/:1\.0\.0$/);
    });
  });

  describe('a plan file is not a way to run raw Redis writes', () => {
    /**
     * Edits the plan file as the strongest attacker would: one who can read the host's plan key
     * (root), so the desired objects are decrypted, edited and sealed again, and the digest made anew.
     */
    const tamper = async (file: string, edit: (doc: Record<string, unknown> & { objects: DesiredObject[] }) => void): Promise<void> => {
      const key = await loadPlanKey(t.env.NS8CTL_STATE_DIR!, false);
      const parsed = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
      const doc: Record<string, unknown> & { objects: DesiredObject[] } = { ...parsed, objects: unsealObjects(parsed.desired as SealedObjects, key, file) };
      edit(doc);
      doc.desired = sealObjects(doc.objects, key);
      const { objects: _objects, ...rest } = doc;
      writeRaw(file, rest);
    };
    const writeRaw = (file: string, doc: Record<string, unknown>): void => {
      delete doc.digest;
      doc.digest = createHash('sha256').update(canonicalJson(doc)).digest('hex');
      writeFileSync(file, JSON.stringify(doc));
    };
    const setup = async (): Promise<string> => {
      write('m/node.yaml', node);
      write('m/a.yaml', mod('webapp1', '1.0.0'));
      expect((await cli('apply', '-f', path.join(t.dir, 'm'))).code).toBe(0);
      await t.redis.hset('ns8ctl/desired/module/webapp1', 'finalizers', 'node-agent');
      await t.redis.hset('module/webapp1/environment', 'IMAGE_URL', '127.0.0.1:5000/ns8ctl-fixtures/webapp:1.0.0');
      write('m/b.yaml', mod('webapp2', '1.0.0'));
      const planFile = path.join(t.dir, 'plan.json');
      expect((await cli('diff', '-f', path.join(t.dir, 'm'), '--out', planFile)).code).toBe(1);
      return planFile;
    };
    const refusedAndUnchanged = async (planFile: string, message: string | RegExp): Promise<void> => {
      const before = await dumpRedis(t.redis);
      const res = await cli('apply', '--plan', planFile);
      expect(res.code).not.toBe(0);
      expect(res.stderr).toMatch(message);
      expect(await dumpRedis(t.redis)).toEqual(before);
    };

    it('refuses a plan carrying writes (setting an instance IMAGE_URL)', async () => {
      const planFile = await setup();
      await tamper(planFile, (doc) => {
        doc.ops = [{ op: 'hset', key: 'module/webapp1/environment', field: 'IMAGE_URL', value: 'evil.example/x:1' }];
      });
      await refusedAndUnchanged(planFile, 'holds the reviewed desired objects, not Redis writes (this file carries writes (ops)), and is refused');
      await tamper(planFile, (doc) => {
        delete doc.ops;
        doc.format = 1;
      });
      await refusedAndUnchanged(planFile, 'has format 1');
    });

    it('refuses desired objects edited without the host key, and plans from another host', async () => {
      const planFile = await setup();
      const doc = JSON.parse(readFileSync(planFile, 'utf8')) as { desired: SealedObjects } & Record<string, unknown>;
      const data = Buffer.from(doc.desired.data, 'base64');
      data[0] = data[0]! ^ 1;
      writeRaw(planFile, { ...doc, desired: { ...doc.desired, data: data.toString('base64') } });
      await refusedAndUnchanged(planFile, "its desired objects do not decrypt with this host's plan key");
      const elsewhere = await runCli(['apply', '--plan', planFile], { ...t.env, NS8CTL_STATE_DIR: path.join(t.dir, 'other-host') });
      expect(elsewhere.code).toBe(1);
      expect(elsewhere.stderr).toContain('this host has no plan key');
    });

    it('refuses edited desired objects that would delete an object: the changes must be the reviewed ones, and finalizers stay in charge', async () => {
      const planFile = await setup();
      await tamper(planFile, (doc) => {
        doc.objects = doc.objects.filter((d) => d.object.metadata.name !== 'webapp1');
        doc.prune = true;
        doc.forcePrune = true;
      });
      await refusedAndUnchanged(planFile, 'its desired objects do not give the changes that were reviewed');
      expect(await t.redis.hget('ns8ctl/desired/module/webapp1', 'deleting')).toBeNull();
    });

    it('refuses an edited Module named ../../x: the objects are validated again', async () => {
      const planFile = await setup();
      await tamper(planFile, (doc) => {
        for (const d of doc.objects) if (d.object.metadata.name === 'webapp2') d.object.metadata.name = '../../x';
      });
      await refusedAndUnchanged(planFile, /metadata\/name/);
      expect(await t.redis.keys('*x*')).toEqual([]);
    });
  });
});
