import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { runCli } from '../support/cli.js';
import { dumpRedis } from '../support/redis-dump.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';

const node = (id: number): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Node
metadata:
  name: node${id}
spec:
  id: ${id}
  address: 10.5.4.${id}
`;

const mod = (name: string, extra = '', nodeId = 1): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata:
  name: ${name}
spec:
  image: 127.0.0.1:5000/ns8ctl-fixtures/${name.replace(/[0-9]+$/, '')}:1.0.0
  node: ${nodeId}
${extra}`;

describe('apply against a real Redis', () => {
  let srv: TestRedis;
  let redis: Redis;
  let dir: string;
  let env: NodeJS.ProcessEnv;

  beforeEach(async () => {
    srv = await startRedis();
    redis = srv.client();
    dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-apply-'));
    env = { NS8CTL_REDIS_URL: srv.url, NS8CTL_STATE_DIR: path.join(dir, '.state') };
  });
  afterEach(async () => {
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const write = (rel: string, text: string): string => {
    const file = path.join(dir, rel);
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, text);
    return file;
  };

  it('stores spec, generation 1, source and NS8 bookkeeping keys on create', async () => {
    write('m/node.yaml', node(1));
    write('m/wiki.yaml', mod('webapp3'));
    const res = await runCli(['apply', '-f', path.join(dir, 'm')], env);
    expect(res.stderr).toContain('Applied');
    expect(res.code).toBe(0);
    const h = await redis.hgetall('ns8ctl/desired/module/webapp3');
    expect(JSON.parse(h.object!).spec).toEqual({ image: '127.0.0.1:5000/ns8ctl-fixtures/webapp:1.0.0', node: 1, removalPolicy: 'Preserve' });
    expect(h.generation).toBe('1');
    expect(h.source).toBe(path.join(dir, 'm', 'wiki.yaml'));
    expect(h.applyset).toBe('default');
    expect(await redis.hget('cluster/module_node', 'webapp3')).toBe('1');
    expect(await redis.hget('cluster/module_uuid', 'webapp3')).toMatch(/^[0-9a-f-]{36}$/);
    expect(await redis.get('cluster/module_sequence/webapp')).toBe('3');
    expect(await redis.smembers('ns8ctl/inventory/default')).toEqual(expect.arrayContaining(['Module/webapp3', 'Node/1']));
  });

  it('a second apply of unchanged manifests changes nothing in Redis', async () => {
    write('m/node.yaml', node(1));
    write('m/a.yaml', mod('webapp1', '  configuration:\n    password: s3cret\n    title: Hello\n'));
    write('m/b.yaml', `apiVersion: ns8ctl.nethserver.org/v1\nkind: Repository\nmetadata:\n  name: local\nspec:\n  url: http://127.0.0.1:8080/\n`);
    expect((await runCli(['apply', '-f', path.join(dir, 'm')], env)).code).toBe(0);
    const before = await dumpRedis(redis);
    const again = await runCli(['apply', '-f', path.join(dir, 'm')], env);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('No changes');
    expect(await dumpRedis(redis)).toEqual(before);
  });

  it('bumps the generation only when the spec really changes', async () => {
    write('m/node.yaml', node(1));
    const f = write('m/a.yaml', mod('webapp1'));
    await runCli(['apply', '-f', path.join(dir, 'm')], env);
    writeFileSync(f, mod('webapp1').replace('name: webapp1', 'name: webapp1\n  labels:\n    team: ops'));
    const labelsOnly = await runCli(['apply', '-f', path.join(dir, 'm')], env);
    expect(labelsOnly.stdout).toContain('~ Module/webapp1');
    expect(await redis.hget('ns8ctl/desired/module/webapp1', 'generation')).toBe('1');
    writeFileSync(f, mod('webapp1', '  configuration:\n    title: New\n'));
    await runCli(['apply', '-f', path.join(dir, 'm')], env);
    expect(await redis.hget('ns8ctl/desired/module/webapp1', 'generation')).toBe('2');
  });

  it('accepts a module on a node NS8 has a record of (node/<id>/vpn), without a Node manifest', async () => {
    await redis.set('cluster/node_sequence', '2');
    await redis.hset('node/2/vpn', 'ip_address', '10.5.4.2');
    write('m/a.yaml', mod('webapp1', '', 2));
    const res = await runCli(['apply', '-f', path.join(dir, 'm')], env);
    expect(res.stderr).not.toContain('not declared');
    expect(res.code).toBe(0);
    expect(await redis.hget('cluster/module_node', 'webapp1')).toBe('2');
    const nodes = await runCli(['get', 'nodes'], env);
    expect(nodes.stdout).toMatch(/^2 +node2 +10\.5\.4\.2 .*NS8 record/m);
  });

  it('writing a default value (suspend: false) is no change', async () => {
    write('m/node.yaml', node(1));
    const f = write('m/a.yaml', mod('webapp1'));
    await runCli(['apply', '-f', path.join(dir, 'm')], env);
    writeFileSync(f, mod('webapp1', '  suspend: false\n  removalPolicy: Preserve\n'));
    expect((await runCli(['diff', '-f', path.join(dir, 'm')], env)).code).toBe(0);
  });

  it('invalid manifests write nothing and report every problem with file:line:col', async () => {
    write('m/node.yaml', node(1));
    write('m/good.yaml', mod('webapp1'));
    write('m/bad.yaml', mod('webapp2').replace('node: 1', 'node: 7\n  colour: blue'));
    const before = await dumpRedis(redis);
    const res = await runCli(['apply', '-f', path.join(dir, 'm')], env);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/bad\.yaml:7:9 +\/spec\/node +node 7 is not declared/);
    expect(res.stderr).toMatch(/bad\.yaml:8:3 +\/spec\/colour +unknown field "colour" in \/spec; allowed: module, image/);
    expect(res.stderr).toContain('nothing was written');
    expect(await dumpRedis(redis)).toEqual(before);
  });

  it('records the git commit of manifests kept in a git work tree', async () => {
    write('repo/node.yaml', node(1));
    write('repo/a.yaml', mod('webapp1'));
    const git = (...args: string[]): string => execFileSync('git', ['-C', path.join(dir, 'repo'), ...args], { encoding: 'utf8' }).trim();
    git('init', '-q');
    git('-c', 'user.name=t', '-c', 'user.email=t@example.org', 'commit', '-q', '--allow-empty', '-m', 'x');
    git('add', '.');
    git('-c', 'user.name=t', '-c', 'user.email=t@example.org', 'commit', '-q', '-m', 'manifests');
    await runCli(['apply', '-f', path.join(dir, 'repo')], env);
    expect(await redis.hget('ns8ctl/desired/module/webapp1', 'revision')).toBe(git('rev-parse', 'HEAD'));
  });

  it('prunes only inventory members that left the manifests, keeping data by default', async () => {
    write('m/node.yaml', node(1));
    for (const n of [1, 2, 3, 4]) write(`m/w${n}.yaml`, mod(`webapp${n}`, n === 4 ? '  removalPolicy: Delete\n' : ''));
    await runCli(['apply', '-f', path.join(dir, 'm')], env);
    // An object written by someone else (another apply set) must never be pruned.
    write('other/o.yaml', mod('other1'));
    await runCli(['apply', '-f', path.join(dir, 'other'), '--applyset', 'team-b'], env);
    rmSync(path.join(dir, 'm', 'w4.yaml'));
    const noPrune = await runCli(['apply', '-f', path.join(dir, 'm')], env);
    expect(noPrune.code).toBe(0);
    expect(await redis.sismember('ns8ctl/desired/module', 'webapp4')).toBe(1);
    const diff = await runCli(['diff', '-f', path.join(dir, 'm'), '--prune'], env);
    expect(diff.code).toBe(1);
    expect(diff.stdout).toContain('- Module/webapp4 (delete, DATA DELETED)');
    const pruned = await runCli(['apply', '-f', path.join(dir, 'm'), '--prune'], env);
    expect(pruned.code).toBe(0);
    expect(await redis.sismember('ns8ctl/desired/module', 'webapp4')).toBe(0);
    expect(await redis.hget('cluster/module_node', 'webapp4')).toBeNull();
    expect(await redis.sismember('ns8ctl/desired/module', 'other1')).toBe(1);
    expect(await redis.hget('cluster/module_node', 'other1')).toBe('1');
  });

  it('refuses to prune more than half of the inventory without --force-prune', async () => {
    write('m/node.yaml', node(1));
    for (const n of [1, 2, 3]) write(`m/w${n}.yaml`, mod(`webapp${n}`));
    await runCli(['apply', '-f', path.join(dir, 'm')], env);
    rmSync(path.join(dir, 'm', 'w1.yaml'));
    rmSync(path.join(dir, 'm', 'w2.yaml'));
    rmSync(path.join(dir, 'm', 'w3.yaml'));
    const before = await dumpRedis(redis);
    const refused = await runCli(['apply', '-f', path.join(dir, 'm'), '--prune'], env);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/refusing to prune 3 of 4/);
    expect(refused.stderr).toContain('--force-prune');
    expect(await dumpRedis(redis)).toEqual(before);
    const forced = await runCli(['apply', '-f', path.join(dir, 'm'), '--prune', '--force-prune'], env);
    expect(forced.code).toBe(0);
    expect(await redis.smembers('ns8ctl/desired/module')).toEqual([]);
  });

  it('diff exits 0 without changes, 1 with changes and above 1 on errors', async () => {
    write('m/node.yaml', node(1));
    write('m/a.yaml', mod('webapp1'));
    expect((await runCli(['diff', '-f', path.join(dir, 'm')], env)).code).toBe(1);
    await runCli(['apply', '-f', path.join(dir, 'm')], env);
    expect((await runCli(['diff', '-f', path.join(dir, 'm')], env)).code).toBe(0);
    expect((await runCli(['diff', '-f', path.join(dir, 'missing')], env)).code).toBeGreaterThan(1);
    const bad = await runCli(['diff', '-f', path.join(dir, 'm')], { ...env, NS8CTL_REDIS_URL: 'redis://127.0.0.1:1' });
    expect(bad.code).toBeGreaterThan(1);
    expect(bad.stderr).toContain('redis://127.0.0.1:1');
  });

  it('masks secret values in the plan text and JSON', async () => {
    write('m/node.yaml', node(1));
    write('m/a.yaml', mod('webapp1', '  configuration:\n    admin_password: hunter2\n    api_token: tok-123\n    title: Wiki\n'));
    const text = await runCli(['diff', '-f', path.join(dir, 'm')], env);
    const json = await runCli(['diff', '-f', path.join(dir, 'm'), '-o', 'json'], env);
    for (const out of [text.stdout, json.stdout]) {
      expect(out).not.toContain('hunter2');
      expect(out).not.toContain('tok-123');
      expect(out).toContain('Wiki');
    }
    expect(JSON.parse(json.stdout).summary).toMatchObject({ create: 2, update: 0, delete: 0 });
  });

  it('add-module takes the next id from the NS8 sequence, writes the manifest and applies it', async () => {
    write('m/node.yaml', node(1));
    write('m/a.yaml', mod('webapp1'));
    await runCli(['apply', '-f', path.join(dir, 'm')], env);
    const res = await runCli(['add-module', '127.0.0.1:5000/ns8ctl-fixtures/webapp:1.1.0', '1', '--manifests', path.join(dir, 'm'), '-o', 'json'], env);
    expect(res.code).toBe(0);
    expect(JSON.parse(res.stdout).module_id).toBe('webapp2');
    expect(readFileSync(path.join(dir, 'm', 'webapp2.yaml'), 'utf8')).toContain('webapp:1.1.0');
    expect(await redis.hget('cluster/module_node', 'webapp2')).toBe('1');
    // The written manifest is part of the set: the next apply of the directory changes nothing.
    expect((await runCli(['diff', '-f', path.join(dir, 'm')], env)).code).toBe(0);
    const rm = await runCli(['remove-module', 'webapp2', '--manifests', path.join(dir, 'm')], env);
    expect(rm.code).toBe(0);
    expect(rm.stdout).toContain('data preserved');
    expect(existsSync(path.join(dir, 'm', 'webapp2.yaml'))).toBe(false);
    expect(await redis.sismember('ns8ctl/desired/module', 'webapp2')).toBe(0);
    expect(await redis.get('cluster/module_sequence/webapp')).toBe('2');
  });

  it('add-module on an undeclared node consumes no id', async () => {
    const res = await runCli(['add-module', 'webapp', '9'], env);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('node 9');
    expect(await redis.get('cluster/module_sequence/webapp')).toBeNull();
  });

  it('delete waits for finalizers: the object is marked, not removed', async () => {
    write('m/node.yaml', node(1));
    write('m/a.yaml', mod('webapp1'));
    await runCli(['apply', '-f', path.join(dir, 'm')], env);
    await redis.hset('ns8ctl/desired/module/webapp1', 'finalizers', 'node-agent');
    const res = await runCli(['delete', 'module', 'webapp1', '--no-preserve'], env);
    expect(res.code).toBe(0);
    expect(res.stdout).toContain('DATA DELETED');
    // The deletion mark says who asked, when and why.
    const mark = JSON.parse((await redis.hget('ns8ctl/desired/module/webapp1', 'deleting'))!) as Record<string, string>;
    expect(mark).toEqual({ removalPolicy: 'Delete', by: expect.stringMatching(/^.+@.+$/), at: expect.stringMatching(/^\d{4}-\d\d-\d\dT.*Z$/), why: 'ns8ctl delete' });
    expect(Date.parse(mark.at!)).not.toBeNaN();
    const get = await runCli(['get', 'modules', 'webapp1', '-o', 'json'], env);
    expect(JSON.parse(get.stdout).metadata).toMatchObject({ deletionRequested: true, removalPolicy: 'Delete', deletionRequestedBy: mark.by, deletionTimestamp: mark.at, deletionReason: 'ns8ctl delete' });
    expect((await runCli(['get', 'modules'], env)).stdout).toContain('Terminating');
  });

  it('get lists objects as table, json and yaml, and names unknown ones', async () => {
    write('m/node.yaml', node(1));
    write('m/a.yaml', mod('webapp1'));
    await runCli(['apply', '-f', path.join(dir, 'm')], env);
    const table = await runCli(['get', 'modules'], env);
    expect(table.stdout).toMatch(/^NAME +MODULE +VERSION +NODE +GEN +STATUS\nwebapp1 +webapp +1\.0\.0 +1 +1 +Pending\n$/);
    const json = JSON.parse((await runCli(['get', 'nodes', '-o', 'json'], env)).stdout);
    expect(json.items[0].spec).toEqual({ id: 1, address: '10.5.4.1' });
    expect((await runCli(['get', 'modules', '-o', 'yaml'], env)).stdout).toContain('kind: List');
    const missing = await runCli(['get', 'modules', 'nope1'], env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('"nope1" not found');
    const badOut = await runCli(['get', 'modules', '-o', 'xml'], env);
    expect(badOut.code).toBe(2);
    expect(badOut.stderr).toContain('allowed: table, wide, json, yaml');
  });
});
