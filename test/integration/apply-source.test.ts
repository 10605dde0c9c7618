import { execFileSync } from 'node:child_process';
import { mkdirSync, renameSync } from 'node:fs';
import path from 'node:path';
import { channels } from '../../src/state/keys.js';
import { runCli } from '../support/cli.js';
import { dumpRedis } from '../support/redis-dump.js';
import { useCliProject } from '../support/cli-project.js';

const node = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata:\n  name: node1\nspec:\n  id: 1\n`;
const mod = (name: string): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata:
  name: ${name}
spec:
  image: 127.0.0.1:5000/ns8ctl-fixtures/webapp:1.0.0
  node: 1
`;

describe('the applied source of each object', () => {
  const t = useCliProject('ns8ctl-source-');

  const write = t.write;
  const git = (...args: string[]): string => execFileSync('git', ['-C', t.dir, '-c', 'user.name=t', '-c', 'user.email=t@example.org', ...args], { encoding: 'utf8' }).trim();

  it('is stored as an absolute path when the manifests are given relative to the working directory', async () => {
    write('m/node.yaml', node);
    const file = write('m/a.yaml', mod('webapp1'));
    const res = await runCli(['apply', '-f', path.relative(process.cwd(), path.join(t.dir, 'm'))], t.env);
    expect(res.code).toBe(0);
    expect(await t.redis.hget('ns8ctl/desired/module/webapp1', 'source')).toBe(file);
    expect(await t.redis.hget('ns8ctl/desired/node/1', 'source')).toBe(path.join(t.dir, 'm', 'node.yaml'));
  });

  it('follows a moved manifest without bumping the generation or notifying, then writes nothing more', async () => {
    write('m/node.yaml', node);
    write('m/a.yaml', mod('webapp1'));
    expect((await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env)).code).toBe(0);
    const object = await t.redis.hget('ns8ctl/desired/module/webapp1', 'object');

    mkdirSync(path.join(t.dir, 'm', 'apps'));
    renameSync(path.join(t.dir, 'm', 'a.yaml'), path.join(t.dir, 'm', 'apps', 'wiki.yaml'));
    const sub = t.srv.client();
    const published: string[] = [];
    await sub.subscribe(channels.desiredChanged);
    sub.on('message', (_c, m) => published.push(m));
    const moved = await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env);
    expect(moved.code).toBe(0);
    expect(moved.stdout).toContain('No changes');
    expect(moved.stderr).toContain('Recorded the new source file of 1 unchanged object (generation unchanged): Module/webapp1.');
    const h = await t.redis.hgetall('ns8ctl/desired/module/webapp1');
    expect(h).toMatchObject({ source: path.join(t.dir, 'm', 'apps', 'wiki.yaml'), generation: '1', object });
    // Messages reach a subscriber in publish order: once this marker arrived, an apply's would have.
    const marker = new Promise<void>((resolve) => sub.on('message', (_c, m) => m === 'marker' && resolve()));
    await t.redis.publish(channels.desiredChanged, 'marker');
    await marker;
    await sub.quit();
    expect(published).toEqual(['marker']);

    const json = JSON.parse((await runCli(['apply', '-f', path.join(t.dir, 'm'), '-o', 'json'], t.env)).stdout);
    expect(json).toMatchObject({ applied: false, sourcesUpdated: [] });
    const before = await dumpRedis(t.redis);
    expect((await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env)).stderr).not.toContain('Recorded');
    expect(await dumpRedis(t.redis)).toEqual(before);
  });

  it('replaces a source recorded relative to another directory, and the revision with the commit of the moved file', async () => {
    write('m/node.yaml', node);
    write('m/a.yaml', mod('webapp1'));
    git('init', '-q');
    git('add', '.');
    git('commit', '-q', '-m', 'one');
    expect((await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env)).code).toBe(0);
    const first = git('rev-parse', 'HEAD');
    expect(await t.redis.hget('ns8ctl/desired/module/webapp1', 'revision')).toBe(first);
    // As an older ns8ctl recorded it: the path as typed.
    await t.redis.hset('ns8ctl/desired/node/1', 'source', 'm/node.yaml');

    git('mv', 'm/a.yaml', 'm/b.yaml');
    git('commit', '-q', '-m', 'two');
    const second = git('rev-parse', 'HEAD');
    const res = await runCli(['apply', '-f', path.join(t.dir, 'm'), '-o', 'json'], t.env);
    expect(res.code).toBe(0);
    expect(JSON.parse(res.stdout)).toMatchObject({ applied: false, sourcesUpdated: ['Module/webapp1', 'Node/1'], summary: { create: 0, update: 0, delete: 0 } });
    expect(await t.redis.hgetall('ns8ctl/desired/module/webapp1')).toMatchObject({ source: path.join(t.dir, 'm', 'b.yaml'), revision: second, generation: '1' });
    expect(await t.redis.hgetall('ns8ctl/desired/node/1')).toMatchObject({ source: path.join(t.dir, 'm', 'node.yaml'), revision: second, generation: '1' });
  });

  it('records the new source together with a real change, in the same apply', async () => {
    write('m/node.yaml', node);
    write('m/a.yaml', mod('webapp1'));
    write('m/b.yaml', mod('webapp2'));
    expect((await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env)).code).toBe(0);
    renameSync(path.join(t.dir, 'm', 'a.yaml'), path.join(t.dir, 'm', 'c.yaml'));
    write('m/b.yaml', mod('webapp2').replace('node: 1', 'node: 1\n  volumes:\n    data: /t.srv/data'));
    const res = await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env);
    expect(res.code).toBe(0);
    expect(res.stderr).toContain('Recorded the new source file of 1 unchanged object (generation unchanged): Module/webapp1.');
    expect(res.stderr).toContain('Applied.');
    expect(await t.redis.hgetall('ns8ctl/desired/module/webapp1')).toMatchObject({ source: path.join(t.dir, 'm', 'c.yaml'), generation: '1' });
    expect(await t.redis.hget('ns8ctl/desired/module/webapp2', 'generation')).toBe('2');
  });
});
