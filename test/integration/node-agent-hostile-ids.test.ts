/**
 * Instance ids read from Redis are checked before they become host paths: real redis-server, the
 * node agent's real reconcile and RedisDesiredSource over a temporary host layout; the runner
 * refuses every changing command, so nothing can be done for a bad id even by mistake.
 */
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { readEvents } from '../../src/state/events.js';
import { CommandFailedError } from '../../src/errors.js';
import { ProcessRunner, type CommandRecord, type CommandRunner, type RunOptions } from '../../src/host/runner.js';
import { createNodeAgentDeps, type NodeAgentDeps, type NodeAgentOptions } from '../../src/node-agent/deps.js';
import { RedisDesiredSource } from '../../src/node-agent/desired-source.js';
import { reconcileNodeOnce } from '../../src/node-agent/reconcile.js';
import { readRemovalRequests, removalRequestKey } from '../../src/node-agent/removal-request.js';
import { keys } from '../../src/state/keys.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { putDesiredModule } from '../support/desired-module.js';

/** Runs read-only commands; refuses (and counts) every changing one. */
class ReadOnlyRunner implements CommandRunner {
  refused: string[][] = [];
  private readonly inner = new ProcessRunner(10_000);
  get history(): CommandRunner['history'] {
    return this.inner.history;
  }
  async run(argv: string[], opts: RunOptions = {}): Promise<CommandRecord & { stdoutBuffer?: Buffer }> {
    if (opts.mutating) {
      this.refused.push(argv);
      throw new CommandFailedError('command_failed', `${argv.join(' ')}: refused by the test`, { argv, exitCode: 1, stderr: 'refused by the test' });
    }
    return this.inner.run(argv, opts);
  }
}

const BAD = ['../../escape1', '../../../escape2', 'a/../escape3', 'Escape4', 'escape5 x'];
let redis: TestRedis;
let admin: Redis;
let root: string;
let deps: NodeAgentDeps;
let opts: NodeAgentOptions;
let runner: ReadOnlyRunner;
const logs: string[] = [];

async function putModule(id: string, node: number): Promise<void> {
  await putDesiredModule(admin, id, { node, image: 'registry.invalid/webapp:1' }, { fields: { finalizers: 'node-agent', deleting: '{"removalPolicy":"Delete"}' }, node, uuid: { set: '00000000-0000-4000-8000-000000000001' } });
  await admin.set(removalRequestKey(id), JSON.stringify({ removalPolicy: 'Delete', by: 'attacker', why: 'escape' }));
}

/** Every path under `dir` (bounded by the small test tree). */
async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    out.push(p);
    if (e.isDirectory()) out.push(...(await tree(p)));
  }
  return out;
}

beforeAll(async () => {
  redis = await startRedis();
  admin = redis.client();
  root = await fs.mkdtemp(path.join(tmpdir(), 'ns8ctl-hostile-ids-'));
  // Layout three levels down, so `../../x` from any base still lands inside `root` where the test can look.
  const base = path.join(root, 'a', 'b', 'c');
  await fs.mkdir(path.join(base, 'home'), { recursive: true });
  runner = new ReadOnlyRunner();
  opts = { node: 1, concurrency: 2 };
  deps = createNodeAgentDeps(opts, { redis: admin, runner, layout: tempHostLayout(base), log: (line) => logs.push(line), delay: async () => undefined });
  for (const id of BAD) await putModule(id, 1);
}, 60_000);

afterAll(async () => {
  await redis?.stop();
  if (root) await fs.rm(root, { recursive: true, force: true });
});

describe('instance ids read from Redis', () => {
  test('a desired object whose id is not an instance id is left out of the node list and reported once, however many reads', async () => {
    const src = new RedisDesiredSource(admin);
    expect(await src.listForNode(1)).toEqual([]);
    expect(await src.listForNode(1)).toEqual([]);
    const events = (await readEvents(admin, 1000)).filter((e) => e.name === 'module-id-refused');
    expect(events.map((e) => e.data?.['id']).sort()).toEqual([...BAD].sort());
    for (const e of events) {
      expect(e).toMatchObject({ type: 'Warning', object: 'node/1' });
      expect(e.message).toContain(`read from ${keys.desiredIndex('Module')}: not a valid NS8 instance id`);
    }
  });

  test('a removal request is never read for an id that is not an instance id', async () => {
    expect((await readRemovalRequests(admin, BAD)).size).toBe(0);
    await admin.set(removalRequestKey('web1'), JSON.stringify({ removalPolicy: 'Preserve' }));
    expect([...(await readRemovalRequests(admin, [...BAD, 'web1'])).keys()]).toEqual(['web1']);
  });

  test('a reconcile pass over hostile ids (desired objects, cluster/module_node, removal requests) touches no path and runs no changing command', async () => {
    const r1 = await reconcileNodeOnce(opts, deps);
    const r2 = await reconcileNodeOnce(opts, deps);
    expect(r1.suspect).toBeUndefined();
    expect([...r1.instances, ...r2.instances].map((i) => i.id)).toEqual([]);
    expect(runner.refused).toEqual([]);
    const touched = (await tree(root)).filter((p) => /escape/i.test(p));
    expect(touched).toEqual([]);
    // The bad keys are reported, never acted on: the desired objects and requests are still there.
    for (const id of BAD) {
      expect(await admin.exists(keys.desired('Module', id))).toBe(1);
      expect(await admin.exists(removalRequestKey(id))).toBe(1);
    }
  });
});
