/**
 * `apply -f DIR --prune --allow-empty`: removing the last objects of an apply set the GitOps way
 * (delete the manifests, apply the empty directory), with the mass-prune guard still in charge.
 */
import { rmSync } from 'node:fs';
import path from 'node:path';
import { runCli } from '../support/cli.js';
import { useCliProject } from '../support/cli-project.js';
import { dumpRedis } from '../support/redis-dump.js';

const node = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: { name: node1 }\nspec: { id: 1 }\n`;
const mod = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata: { name: webapp1 }\nspec: { image: 127.0.0.1:5000/ns8ctl-fixtures/webapp:1.0.0, node: 1 }\n`;

describe('apply --allow-empty', () => {
  const t = useCliProject('ns8ctl-allow-empty-');
  const cli = (...args: string[]) => runCli(args, t.env);

  it('an emptied directory is refused naming --allow-empty; with it the apply set is pruned, behind the mass-prune guard', async () => {
    t.write('base/node.yaml', node);
    expect((await cli('apply', '-f', path.join(t.dir, 'base'), '--applyset', 'nodes')).code).toBe(0);
    const dir = path.join(t.dir, 'm');
    t.write('m/webapp1.yaml', mod);
    expect((await cli('apply', '-f', dir)).code).toBe(0);
    rmSync(path.join(dir, 'webapp1.yaml'));
    const before = await dumpRedis(t.redis);

    const plain = await cli('apply', '-f', dir, '--prune');
    expect(plain.code).toBe(1);
    expect(plain.stderr).toContain('directory has no manifest files');
    expect(plain.stderr).toContain('--prune --allow-empty');

    const guarded = await cli('apply', '-f', dir, '--prune', '--allow-empty');
    expect(guarded.code).toBe(1);
    expect(guarded.stderr).toContain('--force-prune');
    expect(await dumpRedis(t.redis)).toEqual(before);

    const diff = await cli('diff', '-f', dir, '--prune', '--allow-empty');
    expect(diff.code).toBe(1);
    expect(diff.stdout).toContain('- Module/webapp1');

    const done = await cli('apply', '-f', dir, '--prune', '--allow-empty', '--force-prune');
    expect(done.stderr).toContain('Applied');
    expect(done.code).toBe(0);
    expect(await t.redis.exists('ns8ctl/desired/module/webapp1')).toBe(0);
    expect(await t.redis.smembers('ns8ctl/inventory/default')).toEqual([]);
    // Other apply sets are not touched.
    expect(await t.redis.exists('ns8ctl/desired/node/1')).toBe(1);
  });

  it('an empty manifest file with --prune is refused naming --allow-empty, and without --prune changes nothing', async () => {
    t.write('m/webapp1.yaml', mod + node.replace(/^/, '---\n'));
    expect((await cli('apply', '-f', path.join(t.dir, 'm'))).code).toBe(0);
    const empty = t.write('empty.yaml', '# nothing left\n');
    const before = await dumpRedis(t.redis);
    const refused = await cli('apply', '-f', empty, '--prune');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`${empty} holds no objects: with --prune that would remove every object of apply set default; nothing was written. If that is what you want, add --allow-empty`);
    expect((await cli('apply', '-f', empty)).code).toBe(0);
    expect(await dumpRedis(t.redis)).toEqual(before);
  });
});
