/**
 * `ns8ctl adopt`: manifests for instances and repositories NS8 made on its own, from NS8's keys in
 * a real Redis (as NS8's add-node, add-module and add-repository leave them); applying them
 * adopts the objects without changing NS8's records.
 */
import { existsSync, readFileSync, readdirSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { runCli } from '../support/cli.js';
import { useCliProject } from '../support/cli-project.js';

describe('ns8ctl adopt', () => {
  const t = useCliProject('ns8ctl-adopt-');
  const cli = (...args: string[]) => runCli(args, t.env);

  /** What an NS8 cluster with one node, two instances and one repository has in Redis. */
  async function ns8Cluster(): Promise<void> {
    await t.redis.set('cluster/node_sequence', '1');
    await t.redis.hset('node/1/vpn', { ip_address: '10.5.4.1' });
    await t.redis.hset('cluster/module_node', { dokuwiki1: '1', webapp3: '1' });
    await t.redis.hset('module/dokuwiki1/environment', { MODULE_ID: 'dokuwiki1', IMAGE_URL: 'ghcr.io/nethserver/dokuwiki:1.2.3', NODE_ID: '1' });
    await t.redis.hset('module/webapp3/environment', { MODULE_ID: 'webapp3', IMAGE_URL: '127.0.0.1:5000/ns8ctl-examples/webapp:1.1.0', NODE_ID: '1' });
    await t.redis.hset('cluster/repository/default', { url: 'https://distfeed.nethserver.org/ns8/updates/', status: '1', testing: '0' });
  }

  it('writes a manifest per unmanaged instance; applying them adopts the instances and leaves NS8 records alone', async () => {
    await ns8Cluster();
    const printed = await cli('adopt', 'modules');
    expect(printed.code).toBe(0);
    expect(printed.stdout).toContain('# NS8 runs dokuwiki1 on node 1 (ghcr.io/nethserver/dokuwiki:1.2.3)');
    expect(printed.stdout).toMatch(/kind: Module\nmetadata:\n {2}name: webapp3\nspec:\n {2}image: 127.0.0.1:5000\/ns8ctl-examples\/webapp:1.1.0\n {2}node: 1\n/);
    expect(await t.redis.keys('ns8ctl/*')).toEqual([]);

    const dir = path.join(t.dir, 'adopted');
    const wrote = await cli('adopt', 'modules', '--manifests', dir);
    expect(wrote.code).toBe(0);
    expect(readdirSync(dir).sort()).toEqual(['dokuwiki1.yaml', 'webapp3.yaml']);
    expect(wrote.stderr).toContain(`Wrote 2 manifest(s) to ${dir}: Module/dokuwiki1, Module/webapp3`);

    const plan = await cli('diff', '-f', dir);
    expect(plan.code).toBe(1);
    expect(plan.stdout).toContain('NS8 already has instance dokuwiki1 on node 1 (adopting it)');
    const before = { node: await t.redis.hgetall('cluster/module_node'), env: await t.redis.hgetall('module/dokuwiki1/environment') };
    expect((await cli('apply', '-f', dir)).code).toBe(0);
    expect(await t.redis.hgetall('cluster/module_node')).toEqual(before.node);
    expect(await t.redis.hgetall('module/dokuwiki1/environment')).toEqual(before.env);
    expect(await t.redis.smembers('ns8ctl/desired/module')).toEqual(expect.arrayContaining(['dokuwiki1', 'webapp3']));
    expect((await cli('diff', '-f', dir)).code).toBe(0);

    // Adopted once: nothing left to adopt, and a named one is reported as managed.
    const again = await cli('adopt', 'modules');
    expect(again.stdout).toBe('');
    expect(again.stderr).toContain('Nothing to adopt');
    expect((await cli('adopt', 'modules', 'dokuwiki1')).stderr).toContain('Module/dokuwiki1: already managed by ns8ctl, skipped');
  });

  it('adopts repositories; -o json lists the objects', async () => {
    await ns8Cluster();
    const r = await cli('adopt', 'repositories', '-o', 'json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      items: [{ apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Repository', metadata: { name: 'default' }, spec: { url: 'https://distfeed.nethserver.org/ns8/updates/', enabled: true, testing: false } }],
      skipped: [],
    });
  });

  it('refuses unknown names, unfinished instances and existing files, writing nothing', async () => {
    await ns8Cluster();
    const unknown = await cli('adopt', 'modules', 'mail9');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('NS8 has no instance mail9 (not in cluster/module_node)');
    await t.redis.hset('cluster/module_node', 'half1', '1');
    const half = await cli('adopt', 'modules');
    expect(half.code).toBe(1);
    expect(half.stderr).toContain('NS8 instance half1 has no IMAGE_URL in module/half1/environment');
    const dir = path.join(t.dir, 'm');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'webapp3.yaml'), 'mine\n');
    const clash = await cli('adopt', 'modules', 'dokuwiki1', 'webapp3', '--manifests', dir);
    expect(clash.code).toBe(1);
    expect(clash.stderr).toContain(`not overwriting ${path.join(dir, 'webapp3.yaml')} (nothing written)`);
    expect(existsSync(path.join(dir, 'dokuwiki1.yaml'))).toBe(false);
    expect(readFileSync(path.join(dir, 'webapp3.yaml'), 'utf8')).toBe('mine\n');
    expect((await cli('adopt', 'nodes')).code).toBe(2);
  });
});
