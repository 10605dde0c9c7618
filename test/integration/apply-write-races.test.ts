/**
 * The one write path (src/state/write-state.ts) against a real redis-server: concurrent writers
 * never lose an update silently, and a write whose input is bad writes nothing at all.
 */
import path from 'node:path';
import { applyPlan, preparePlan } from '../../src/apply/pipeline.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { keys } from '../../src/state/keys.js';
import { runCli } from '../support/cli.js';
import { useCliProject } from '../support/cli-project.js';
import { dumpRedis } from '../support/redis-dump.js';
import { planToWrites } from '../../src/apply/to-writes.js';
import type { WriteOp } from '../../src/state/write-state.js';

const IMAGE = '127.0.0.1:5000/ns8ctl-fixtures/webapp:1.0.0';
const node = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: { name: node1 }\nspec: { id: 1 }\n`;
const mod = (name: string, title = 'from-apply'): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata: { name: ${name} }
spec:
  image: ${IMAGE}
  node: 1
  configuration: { title: "${title}" }
`;

describe('concurrent writers of desired state', () => {
  const t = useCliProject('ns8ctl-races-');
  const cli = (...args: string[]) => runCli(args, t.env);

  it('add-module racing an apply that creates the same next id: each success is a write nobody overwrote, and the loser says why', async () => {
    const TRIALS = 12;
    let collisions = 0;
    for (let trial = 0; trial < TRIALS; trial++) {
      await t.redis.flushall();
      const base = t.write(`t${trial}/base/node.yaml`, node);
      expect((await cli('apply', '-f', base)).code).toBe(0);
      const file = t.write(`t${trial}/m/webapp1.yaml`, mod('webapp1'));
      const [added, applied] = await Promise.all([cli('add-module', IMAGE, '1', '-o', 'json'), cli('apply', '-f', file)]);

      // add-module never fails on a taken id: it takes the next one.
      expect(added.stderr).not.toMatch(/error/i);
      expect(added.code).toBe(0);
      const id = (JSON.parse(added.stdout) as { module_id: string }).module_id;
      const ours = await t.redis.hgetall(keys.desired('Module', id));
      // What add-module reported is what desired state holds: its object, generation 1.
      expect({ source: ours.source, generation: ours.generation, config: JSON.parse(ours.object!).spec.configuration }).toEqual({ source: '(add-module)', generation: '1', config: undefined });
      if (id !== 'webapp1') collisions++;
      if (applied.code === 0) {
        // The apply's webapp1 is its own, untouched by add-module.
        expect(id).not.toBe('webapp1');
        const h = await t.redis.hgetall(keys.desired('Module', 'webapp1'));
        expect({ source: h.source, generation: h.generation, title: JSON.parse(h.object!).spec.configuration.title }).toEqual({ source: file, generation: '1', title: 'from-apply' });
      } else {
        // The apply lost webapp1 to add-module: it says so, and wrote nothing over it.
        collisions++;
        expect(id).toBe('webapp1');
        expect(applied.stderr).toContain('Module/webapp1 was created by another writer');
        expect(applied.stderr).toContain('nothing was written');
      }
      expect(Number(await t.redis.get(keys.moduleSequence('webapp')))).toBeGreaterThanOrEqual(Number(id.slice('webapp'.length)));
    }
    process.stderr.write(`add-module vs apply: ${TRIALS} trials, ${collisions} collided on webapp1, 0 lost updates\n`);
  }, 600_000);

  it('a stale prune is refused: an object another apply set took over meanwhile is not deleted, and nothing is written', async () => {
    const opts = { applySet: 'default', prune: true, imageLabels: false as const, configuration: false as const };
    const runner = new ProcessRunner();
    t.write('m/node.yaml', node);
    t.write('m/a.yaml', mod('webapp1'));
    expect((await cli('apply', '-f', path.join(t.dir, 'm'))).code).toBe(0);
    // A plan pruning webapp1 from `default`, made before apply set `other` adopts the same object.
    t.write('m2/node.yaml', node);
    const pruning = await preparePlan([path.join(t.dir, 'm2')], t.redis, opts);
    expect(pruning.plan.changes.map((c) => `${c.action} ${c.key}`)).toEqual(['delete Module/webapp1']);
    const adopt = t.write('o/a.yaml', mod('webapp1'));
    expect((await cli('apply', '-f', adopt, '--applyset', 'other')).code).toBe(0);
    const before = await dumpRedis(t.redis);
    await expect(applyPlan(pruning, t.redis, { ...opts, forcePrune: true, runner, maxAttempts: 1 })).rejects.toThrow(/Module\/webapp1 (was taken over by another writer|changed apply set membership)/);
    expect(await dumpRedis(t.redis)).toEqual(before);
  }, 120_000);

  it('the first write of desired state creates ns8ctl/cluster/epoch, and no later write changes it', async () => {
    t.write('m/node.yaml', node);
    expect((await cli('apply', '-f', path.join(t.dir, 'm'))).code).toBe(0);
    const epoch = JSON.parse((await t.redis.get(keys.clusterEpoch()))!) as { id: string; created: string };
    expect(epoch.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(new Date(epoch.created).toISOString()).toBe(epoch.created);
    t.write('m/a.yaml', mod('webapp1'));
    expect((await cli('apply', '-f', path.join(t.dir, 'm'))).code).toBe(0);
    expect((await cli('delete', 'module', 'webapp1')).code).toBe(0);
    expect(JSON.parse((await t.redis.get(keys.clusterEpoch()))!)).toEqual(epoch);
  }, 120_000);

  describe('all or nothing', () => {
    const opts = { applySet: 'default', prune: true, imageLabels: false as const, configuration: false as const };
    const runner = new ProcessRunner();
    const nodeWith = (name: string, flags: string): string => `apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: { name: ${name} }\nspec: { id: 1, flags: [${flags}] }\n`;
    const repo = (url: string): string => `apiVersion: ns8ctl.nethserver.org/v1\nkind: Repository\nmetadata: { name: r1 }\nspec: { url: "${url}" }\n`;

    /** Desired state A applied; returns the plan from A to B: every kind of write the script makes. */
    async function prepareAll(): Promise<Awaited<ReturnType<typeof preparePlan>>> {
      await t.redis.flushall();
      t.write('a/node.yaml', nodeWith('node1', 'maintenance'));
      t.write('a/repo.yaml', repo('http://127.0.0.1:9/a/'));
      t.write('a/old.yaml', mod('webapp1'));
      await applyPlan(await preparePlan([path.join(t.dir, 'a')], t.redis, opts), t.redis, { ...opts, forcePrune: true, runner });
      t.write('b/node.yaml', nodeWith('first', ''));
      t.write('b/repo.yaml', repo('http://127.0.0.1:9/b/'));
      t.write('b/new.yaml', mod('webapp2'));
      const prepared = await preparePlan([path.join(t.dir, 'b')], t.redis, opts);
      expect(prepared.plan.changes.map((c) => `${c.action} ${c.key}`)).toEqual(['update Node/1', 'update Repository/r1', 'create Module/webapp2', 'delete Module/webapp1']);
      return prepared;
    }

    /** Every key an op of `ops` writes (with the kind of op), in script order; plain DEL takes any type. */
    function targets(ops: WriteOp[]): { key: string; op: string }[] {
      const out = new Map<string, { key: string; op: string }>();
      const add = (key: string, op: string): void => void out.set(`${op} ${key}`, { key, op });
      for (const o of ops) {
        if (o.op === 'expect' || o.op === 'expect-value' || o.op === 'del') continue;
        add(o.key, o.op);
        if (o.op === 'put' || o.op === 'delete') add(o.index, 'index');
        if (o.op === 'delete') for (const a of o.also) if (a.field) add(a.key, 'hdel');
      }
      return [...out.values()];
    }

    it('a wrong-typed key at any point of the script makes the whole write fail before its first change', async () => {
      const first = await prepareAll();
      const points = targets(planToWrites(first.plan, first.state, { revisionOf: () => '' }));
      expect(new Set(points.map((p) => p.op))).toEqual(new Set(['put', 'index', 'set', 'sreplace', 'hset', 'atleast', 'hsetnx', 'sadd', 'srem', 'delete', 'hdel']));
      const injections: { what: string; corrupt: () => Promise<unknown> }[] = [
        ...points.map((p) => ({
          what: `${p.op} ${p.key}`,
          // A sequence that is not an integer; any other key becomes a LIST, the wrong type for every op.
          corrupt: p.op === 'atleast' ? () => t.redis.set(p.key, 'abc') : async () => (await t.redis.del(p.key), t.redis.rpush(p.key, 'x')),
        })),
        { what: 'non-integer generation of an updated object', corrupt: () => t.redis.hset(keys.desired('Node', '1'), 'generation', 'two') },
      ];
      let refused = 0;
      for (const inj of injections) {
        const prepared = await prepareAll();
        await inj.corrupt();
        const before = await dumpRedis(t.redis);
        let error: unknown;
        await applyPlan(prepared, t.redis, { ...opts, forcePrune: true, runner, maxAttempts: 1 }).catch((e: unknown) => (error = e));
        expect({ what: inj.what, dump: await dumpRedis(t.redis) }).toEqual({ what: inj.what, dump: before });
        expect({ what: inj.what, error: (error as { message?: string } | undefined)?.message ?? 'none' }).toEqual({ what: inj.what, error: expect.stringContaining('nothing was written') });
        refused++;
      }
      // The same plan without injected faults writes everything.
      const clean = await prepareAll();
      await applyPlan(clean, t.redis, { ...opts, forcePrune: true, runner, maxAttempts: 1 });
      expect(await t.redis.exists(keys.desired('Module', 'webapp2'), keys.desired('Module', 'webapp1'))).toBe(1);
      process.stderr.write(`all-or-nothing: ${refused} failure points injected, 0 partial writes\n`);
    }, 600_000);

    it('a non-integer module sequence is refused with a message naming the key', async () => {
      const prepared = await prepareAll();
      await t.redis.set(keys.moduleSequence('webapp'), 'abc');
      await expect(applyPlan(prepared, t.redis, { ...opts, forcePrune: true, runner, maxAttempts: 1 })).rejects.toThrow('nothing was written: cluster/module_sequence/webapp holds abc, not an integer');
      const added = await cli('add-module', IMAGE, '1');
      expect(added.code).toBe(1);
      expect(added.stderr).toContain('cluster/module_sequence/webapp holds "abc", not an integer');
    }, 120_000);
  });
});
