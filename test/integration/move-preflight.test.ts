/**
 * The preflight of moves through the real CLI (built dist/, real redis-server, labelled images
 * built with buildah in root's local storage, where the plan reads the labels of full image URLs):
 * a changed spec.node the target node cannot take is blocked with its code and reason, `diff`
 * and `apply` exit 1 as for the other blocked changes, and nothing is written.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { runCli } from '../support/cli.js';
import { useCliProject } from '../support/cli-project.js';
import { dumpRedis } from '../support/redis-dump.js';
import { moduleManifest, nodeManifests } from '../support/manifest-text.js';

const nodes = nodeManifests([1, 2]);

const mod = moduleManifest;

/** Builds an empty image with `labels` from scratch (no network); returns its URL. */
function buildImage(name: string, labels: Record<string, string>, tag: string): string {
  const image = `localhost/ns8ctl-test-${tag}/${name}:1.0.0`;
  const container = `ns8ctl-test-${name}-${tag}`;
  execFileSync('buildah', ['from', '--name', container, 'scratch'], { stdio: 'pipe' });
  try {
    for (const [k, v] of Object.entries(labels)) execFileSync('buildah', ['config', '--label', `${k}=${v}`, container], { stdio: 'pipe' });
    execFileSync('buildah', ['commit', '-q', container, image], { stdio: 'pipe' });
  } finally {
    execFileSync('buildah', ['rm', container], { stdio: 'pipe' });
  }
  return image;
}

describe('preflight of moves, through ns8ctl diff and apply', () => {
  const t = useCliProject('ns8ctl-move-preflight-', { NS8CTL_CORE_VERSION: '3.21.0' });
  const tag = randomBytes(4).toString('hex');
  let rootweb = '';
  let ported = '';
  let future = '';
  let solo = '';
  beforeAll(() => {
    rootweb = buildImage('rootweb', { 'org.nethserver.rootfull': '1' }, tag);
    ported = buildImage('ported', { 'org.nethserver.tcp-ports-demand': '3' }, tag);
    future = buildImage('future', { 'org.nethserver.min-core': '9.0.0' }, tag);
    solo = buildImage('solo', { 'org.nethserver.max-per-node': '1' }, tag);
  });
  afterAll(() => {
    for (const image of [rootweb, ported, future, solo]) if (image) execFileSync('podman', ['rmi', '-f', image], { stdio: 'pipe' });
  });

  /** Applies `name` on node 1, then asks for node 2 (with `extra` manifests beside it). */
  async function placedThenMoved(name: string, image: string, extra = ''): Promise<string> {
    const dir = path.join(t.dir, 'm');
    t.write('m/nodes.yaml', nodes);
    t.write('m/app.yaml', mod(name, 1, image));
    const first = await runCli(['apply', '-f', dir], t.env);
    expect(first.stderr).not.toContain('error');
    expect(first.code).toBe(0);
    t.write('m/app.yaml', mod(name, 2, image) + (extra ? `---\n${extra}` : ''));
    return dir;
  }

  it('refuses to move a rootfull instance (move_unsupported): diff and apply exit 1 with the reason, the move record is not written, spec.node stays', async () => {
    const dir = await placedThenMoved('rootweb1', rootweb, mod('rootweb2', 1, rootweb));
    const before = await dumpRedis(t.redis);

    const diff = await runCli(['diff', '-f', dir], t.env);
    expect(diff.code).toBe(1);
    expect(diff.stdout).toContain('! Module/rootweb1 (blocked: move_unsupported)\n    # cannot move rootweb1 from node 1 to node 2: rootweb1 is rootfull (its image has org.nethserver.rootfull=1)');
    expect(diff.stdout).toContain('set spec.node back to 1 to keep it there');
    // The other objects of the plan are still planned (the controller applies them; apply refuses the whole plan).
    expect(diff.stdout).toContain('+ Module/rootweb2 (create)');
    expect(diff.stdout).not.toContain('⇄ move');

    const json = await runCli(['diff', '-f', dir, '-o', 'json'], t.env);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout).blocked).toEqual([{ key: 'Module/rootweb1', code: 'move_unsupported', message: expect.stringContaining('moving rootfull instances is not supported yet') }]);

    const apply = await runCli(['apply', '-f', dir], t.env);
    expect(apply.code).toBe(1);
    expect(apply.stderr).toContain('error: nothing was written; the plan has blocked changes:\n  Module/rootweb1: [move_unsupported] cannot move rootweb1 from node 1 to node 2');
    expect(await dumpRedis(t.redis)).toEqual(before);
    expect(await t.redis.hexists('ns8ctl/moves', 'rootweb1')).toBe(0);
    expect(JSON.parse((await t.redis.hget('ns8ctl/desired/module/rootweb1', 'object')) ?? '{}')).toMatchObject({ spec: { node: 1 } });
  });

  it('refuses a move whose TCP ports do not fit on the target (move_ports_exhausted), and plans it once ports are free there', async () => {
    const dir = await placedThenMoved('ported1', ported);
    // Node 2's range is taken but for two ports; the image asks for three.
    await t.redis.hset('ns8ctl/node/2/ports', 'other1/tcp', '20000-44998');
    const before = await dumpRedis(t.redis);

    const apply = await runCli(['apply', '-f', dir], t.env);
    expect(apply.code).toBe(1);
    expect(apply.stderr).toContain(
      'Module/ported1: [move_ports_exhausted] cannot move ported1 from node 1 to node 2: it needs 3 TCP ports in a row (org.nethserver.tcp-ports-demand) and node 2 has no such gap left in 20000-45000 (2 free in all, ns8ctl/node/2/ports)',
    );
    expect(await dumpRedis(t.redis)).toEqual(before);

    await t.redis.hset('ns8ctl/node/2/ports', 'other1/tcp', '20000-44990');
    const ok = await runCli(['apply', '-f', dir], t.env);
    expect(ok.stderr).not.toContain('error');
    expect(ok.code).toBe(0);
    expect(JSON.parse((await t.redis.hget('ns8ctl/moves', 'ported1')) ?? '{}')).toEqual({ from: 1, to: 2, state: 'requested' });
  });

  it('refuses a move when the image needs a newer core than the cluster runs (move_min_core_not_met)', async () => {
    const dir = await placedThenMoved('future1', future);
    const before = await dumpRedis(t.redis);
    const diff = await runCli(['diff', '-f', dir], t.env);
    expect(diff.code).toBe(1);
    expect(diff.stdout).toContain('! Module/future1 (blocked: move_min_core_not_met)\n    # cannot move future1 from node 1 to node 2: its image needs core >= 9.0.0 (org.nethserver.min-core); core is 3.21.0');
    expect((await runCli(['apply', '-f', dir], t.env)).code).toBe(1);
    expect(await dumpRedis(t.redis)).toEqual(before);
  });

  it('refuses a move to a node that already holds max-per-node instances of the module (max_per_node_exceeded)', async () => {
    const dir = path.join(t.dir, 'm');
    t.write('m/nodes.yaml', nodes);
    t.write('m/app.yaml', mod('solo1', 1, solo) + `---\n${mod('solo2', 2, solo)}`);
    expect((await runCli(['apply', '-f', dir], t.env)).code).toBe(0);
    t.write('m/app.yaml', mod('solo1', 2, solo) + `---\n${mod('solo2', 2, solo)}`);
    const before = await dumpRedis(t.redis);
    const apply = await runCli(['apply', '-f', dir], t.env);
    expect(apply.code).toBe(1);
    expect(apply.stderr).toContain(
      'Module/solo1: [max_per_node_exceeded] cannot move solo1 from node 1 to node 2: solo1: module solo allows at most 1 instance per node (org.nethserver.max-per-node=1); node 2 already has solo2; place it on another node, or set spec.node back to 1 to keep it there',
    );
    expect(await dumpRedis(t.redis)).toEqual(before);
  });

  it('refuses to move an instance NS8 records as rootfull (module/<id>/flags), whatever its image says', async () => {
    const dir = await placedThenMoved('ported1', ported);
    await t.redis.sadd('module/ported1/flags', 'rootfull');
    const before = await dumpRedis(t.redis);
    const apply = await runCli(['apply', '-f', dir], t.env);
    expect(apply.code).toBe(1);
    expect(apply.stderr).toContain('Module/ported1: [move_unsupported] cannot move ported1 from node 1 to node 2: ported1 is rootfull (NS8 records it as rootfull (module/ported1/flags))');
    expect(await dumpRedis(t.redis)).toEqual(before);
  });
});
