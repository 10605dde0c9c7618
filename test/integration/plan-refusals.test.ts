import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { runCli } from '../support/cli.js';
import { dumpRedis } from '../support/redis-dump.js';
import { moduleManifest, nodeManifests } from '../support/manifest-text.js';
import { useCliProject } from '../support/cli-project.js';

const nodes = nodeManifests([1, 2]);

const mod = (name: string, node: number, image = `127.0.0.1:5000/ns8ctl-fixtures/${name.replace(/[0-9]+$/, '')}:1.0.0`): string => moduleManifest(name, node, image);

describe('plans the real apply would refuse', () => {
  const t = useCliProject('ns8ctl-refusals-', { NS8CTL_CORE_VERSION: '3.21.0' });

  const write = t.write;

  it('plans a move when the node of an existing Module changes: diff shows it, apply records it for the node agents and leaves cluster/module_node to them', async () => {
    write('m/nodes.yaml', nodes);
    write('m/wiki.yaml', mod('webapp1', 1));
    expect((await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env)).code).toBe(0);
    write('m/wiki.yaml', mod('webapp1', 2));
    const diff = await runCli(['diff', '-f', path.join(t.dir, 'm')], t.env);
    expect(diff.code).toBe(1);
    expect(diff.stdout).toContain('⇄ move node 1 -> 2');
    expect(diff.stdout).toContain('downtime');
    expect((await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env)).code).toBe(0);
    expect(JSON.parse((await t.redis.hget('ns8ctl/moves', 'webapp1')) ?? '{}')).toEqual({ from: 1, to: 2, state: 'requested' });
    expect(await t.redis.hget('cluster/module_node', 'webapp1')).toBe('1');
    // Applied again while the move runs: nothing to do.
    expect((await runCli(['diff', '-f', path.join(t.dir, 'm')], t.env)).code).toBe(0);
    // Back to node 1 before it ended: the move is cancelled.
    write('m/wiki.yaml', mod('webapp1', 1));
    expect((await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env)).code).toBe(0);
    expect(await t.redis.hexists('ns8ctl/moves', 'webapp1')).toBe(0);
  });

  it('apply --dry-run exits 1 when the real apply would refuse to prune most of the apply set, and writes nothing', async () => {
    write('m/nodes.yaml', nodes);
    write('m/mods.yaml', [1, 2, 3, 4, 5].map((n) => mod(`webapp${n}`, 1 + (n % 2))).join('---\n'));
    expect((await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env)).code).toBe(0);
    write('m/mods.yaml', mod('webapp1', 2));
    const before = await dumpRedis(t.redis);

    const dry = await runCli(['apply', '--dry-run', '--prune', '-f', path.join(t.dir, 'm')], t.env);
    expect(dry.code).toBe(1);
    expect(dry.stdout).toContain('- Module/webapp2 (delete, data preserved)');
    expect(dry.stderr).toContain('error: refusing to prune 4 of 7 objects in apply set "default" (more than half of it)');
    expect(dry.stderr).toContain('Dry run: nothing was written; the real apply would be refused');
    const json = await runCli(['apply', '--dry-run', '--prune', '-f', path.join(t.dir, 'm'), '-o', 'json'], t.env);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({ kind: 'Plan', dryRun: true, refused: { error: 'prune_refused', message: expect.stringContaining('--force-prune') } });
    expect((await runCli(['apply', '--prune', '-f', path.join(t.dir, 'm')], t.env)).code).toBe(1);
    expect(await dumpRedis(t.redis)).toEqual(before);

    // With --force-prune the dry run says the apply would go through, and still writes nothing.
    const forced = await runCli(['apply', '--dry-run', '--prune', '--force-prune', '-f', path.join(t.dir, 'm'), '-o', 'json'], t.env);
    expect(forced.code).toBe(0);
    expect(JSON.parse(forced.stdout)).toMatchObject({ dryRun: true, refused: null, summary: { delete: 4 } });
    expect(await dumpRedis(t.redis)).toEqual(before);
  });

  it('apply --dry-run exits 1 on blocked changes, naming them, as the real apply', async () => {
    write('m/nodes.yaml', nodes);
    write('m/mods.yaml', [mod('webapp1', 1), mod('webapp2', 1)].join('---\n'));
    await t.redis.hset('cluster/module_node', 'webapp2', '2');
    const before = await dumpRedis(t.redis);
    const dry = await runCli(['apply', '--dry-run', '-f', path.join(t.dir, 'm')], t.env);
    expect(dry.code).toBe(1);
    expect(dry.stdout).toContain('! Module/webapp2 (blocked)');
    expect(dry.stderr).toContain('error: nothing was written; the plan has blocked changes:\n  Module/webapp2: Module/webapp2 already exists in NS8 on node 2');
    const real = await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env);
    expect(real.code).toBe(1);
    expect(real.stderr).toContain('Module/webapp2 already exists in NS8 on node 2');
    expect(await dumpRedis(t.redis)).toEqual(before);

    write('m/mods.yaml', mod('webapp1', 1));
    const ok = await runCli(['apply', '--dry-run', '-f', path.join(t.dir, 'm')], t.env);
    expect(ok.code).toBe(0);
    expect(ok.stderr).not.toContain('error');
    expect(ok.stderr.endsWith('Dry run: nothing was written.\n')).toBe(true);
    expect(await dumpRedis(t.redis)).toEqual(before);
  });

  it('refuses to place a new instance on a node NS8 flags nomodules (apply and add-module write nothing); an instance on another node goes through', async () => {
    write('m/nodes.yaml', nodes);
    write('m/mods.yaml', mod('webapp1', 1));
    // As NS8 flags a migrated NS7 machine: the Node manifests do not list flags, so NS8's record decides.
    await t.redis.sadd('node/2/flags', 'nomodules');
    expect((await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env)).code).toBe(0);
    expect(await t.redis.hget('cluster/module_node', 'webapp1')).toBe('1');
    expect(await t.redis.smembers('node/2/flags')).toEqual(['nomodules']);

    write('m/mods.yaml', [mod('webapp1', 1), mod('webapp2', 2)].join('---\n'));
    const before = await dumpRedis(t.redis);
    const real = await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env);
    expect(real.code).toBe(1);
    expect(real.stderr).toContain("Module/webapp2: [node_nomodules] cannot create webapp2 on node 2: node 2 has the NS8 flag nomodules (node/2/flags; NS8's add-module refuses such a node, an NS7 machine being migrated); place it on another node, or remove nomodules from node 2's flags");
    expect(await dumpRedis(t.redis)).toEqual(before);
    const added = await runCli(['add-module', '127.0.0.1:5000/ns8ctl-fixtures/webapp:1.0.0', '2', '--manifests', path.join(t.dir, 'added')], t.env);
    expect(added.code).not.toBe(0);
    expect(added.stderr).toContain('cannot create webapp2 on node 2: node 2 has the NS8 flag nomodules');
    expect(await dumpRedis(t.redis)).toEqual(before);
    expect(existsSync(path.join(t.dir, 'added', 'webapp2.yaml'))).toBe(false);
  });

  describe('org.nethserver.max-per-node of a full image URL', () => {
    // A labelled image in root's local storage, built from scratch with buildah (no network).
    const image = `localhost/ns8ctl-test-${randomBytes(4).toString('hex')}/solo:1.0.0`;
    beforeAll(() => {
      const container = `ns8ctl-test-solo-${randomBytes(4).toString('hex')}`;
      execFileSync('buildah', ['from', '--name', container, 'scratch'], { stdio: 'pipe' });
      try {
        execFileSync('buildah', ['config', '--label', 'org.nethserver.max-per-node=1', container], { stdio: 'pipe' });
        execFileSync('buildah', ['commit', '-q', container, image], { stdio: 'pipe' });
      } finally {
        execFileSync('buildah', ['rm', container], { stdio: 'pipe' });
      }
    });
    afterAll(() => {
      execFileSync('podman', ['rmi', '-f', image], { stdio: 'pipe' });
    });

    it('is read from the image in local storage: a second instance on the node is refused and nothing is written', async () => {
      write('m/nodes.yaml', nodes);
      write('m/solo.yaml', [mod('solo1', 1, image), mod('solo2', 1, image), mod('solo3', 2, image)].join('---\n'));
      const before = await dumpRedis(t.redis);
      const res = await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env);
      expect(res.code).toBe(1);
      expect(res.stderr).toContain('Module/solo2: solo2: module solo allows at most 1 instance per node (org.nethserver.max-per-node=1); node 1 already has solo1; place it on another node');
      expect(await dumpRedis(t.redis)).toEqual(before);

      const diff = await runCli(['diff', '-f', path.join(t.dir, 'm')], t.env);
      expect(diff.code).toBe(1);
      expect(diff.stdout).toContain('! Module/solo2 (blocked)');
      expect(diff.stdout).toContain('+ Module/solo3 (create)');
    });

    it('warns, without refusing, when the labels are found neither locally nor in a repository', async () => {
      const unknown = image.replace(':1.0.0', ':0.0.1');
      write('m/nodes.yaml', nodes);
      write('m/solo.yaml', [mod('solo1', 1, unknown), mod('solo2', 1, unknown)].join('---\n'));
      const res = await runCli(['apply', '-f', path.join(t.dir, 'm')], t.env);
      expect(res.code).toBe(0);
      expect(res.stderr).toContain(`warning: org.nethserver.max-per-node not checked for ${unknown} (solo1, solo2): its labels are neither in local image storage nor in a repository`);
    });
  });
});
