/**
 * `module:` specs resolved by the node agent through the repositories (src/repository/), against a
 * real redis-server and a file:// repository: one catalogue load per pass whatever the number of
 * instances. The repository's images live in a registry that does not answer (127.0.0.1:1), so
 * every instance stops at reading its labels and nothing is created on the host.
 */
import { promises as fs, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Redis } from 'ioredis';
import { ProcessRunner } from '../../src/host/runner.js';
import { createNodeAgentDeps, type NodeAgentDeps } from '../../src/node-agent/deps.js';
import { defaultLayout } from '../../src/node-agent/layout.js';
import { reconcileNodeOnce } from '../../src/node-agent/reconcile.js';
import { readModuleStatuses } from '../../src/node-agent/status.js';
import { makeImageResolver } from '../../src/repository/image-resolver.js';
import { keys } from '../../src/state/keys.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { putDesiredModule } from '../support/desired-module.js';

let redis: TestRedis;
let admin: Redis;
let root: string;
let deps: NodeAgentDeps;
const UNREACHABLE = '127.0.0.1:1/ns8ctl-examples';

async function putModule(id: string, spec: Record<string, unknown>): Promise<void> {
  await putDesiredModule(admin, id, { node: 1, ...spec }, { source: 't.yaml', uuid: { set: '11111111-2222-4333-8444-555555555555' } });
}

async function scans(): Promise<number> {
  const m = /cmdstat_scan:calls=(\d+)/.exec(await admin.info('commandstats'));
  return m ? Number(m[1]) : 0;
}

beforeAll(async () => {
  redis = await startRedis();
  admin = redis.client();
  root = await fs.mkdtemp(path.join(tmpdir(), 'ns8ctl-node-agent-resolution-'));
  // The sample repository, with its webapp images moved to a registry that refuses connections.
  const sample = readFileSync(new URL('../fixtures/repodata/sample.json', import.meta.url), 'utf8').replaceAll('127.0.0.1:5000/ns8ctl-examples', UNREACHABLE);
  await fs.mkdir(path.join(root, 'repo'));
  await fs.writeFile(path.join(root, 'repo', 'repodata.json'), sample);
  await admin.hset(keys.repository('local'), { url: pathToFileURL(path.join(root, 'repo')).href, status: '1', testing: '0' });
  deps = createNodeAgentDeps(
    { node: 1, concurrency: 4 },
    {
      redis: admin,
      runner: new ProcessRunner(),
      layout: defaultLayout({ agentStateDir: path.join(root, 'agent'), homeBase: path.join(root, 'home'), rootfullBase: path.join(root, 'nethserver'), uiBase: path.join(root, 'ui'), systemdRunDir: path.join(root, 'no-systemd') }),
      resolveImage: makeImageResolver(admin, { coreVersion: '3.21.0' }),
      log: () => undefined,
    },
  );
});

afterAll(async () => {
  admin?.disconnect();
  await redis?.stop();
  if (root) await fs.rm(root, { recursive: true, force: true });
});

test('a pass resolves every module: spec against the repositories read once (one SCAN whatever the number of instances)', async () => {
  const webapps = Array.from({ length: 12 }, (_, i) => `webapp${i + 1}`);
  for (const id of webapps) await putModule(id, { module: 'webapp', version: '^1' });
  await putModule('nothere1', { module: 'nothere' });
  // One resolution outside a pass: the SCANs one catalogue load costs with this keyspace.
  const s0 = await scans();
  await makeImageResolver(admin, { coreVersion: '3.21.0' })({ module: 'webapp' });
  const perLoad = (await scans()) - s0;
  expect(perLoad).toBeGreaterThan(0);

  const s1 = await scans();
  const result = await reconcileNodeOnce({ node: 1, concurrency: 4 }, deps);
  expect((await scans()) - s1).toBe(perLoad);

  const statuses = await readModuleStatuses(admin, [...webapps, 'nothere1']);
  for (const id of webapps) {
    // Resolved (^1 -> 1.1.0), then stopped at the unreachable registry.
    expect(statuses.get(id)).toMatchObject({ imageUrl: `${UNREACHABLE}/webapp:1.1.0` });
    expect(statuses.get(id)!.conditions.find((c) => c.type === 'Degraded')?.reason).toBe('RegistryUnreachable');
  }
  const missing = result.instances.find((i) => i.id === 'nothere1')!;
  expect(missing).toMatchObject({ outcome: 'failed', retry: false });
  expect(missing.error?.code).toBe('module_not_found');
  expect(statuses.get('nothere1')!.conditions.find((c) => c.type === 'Degraded')).toMatchObject({ reason: 'ImageResolutionFailed', message: expect.stringContaining("module 'nothere'") });
}, 120_000);
