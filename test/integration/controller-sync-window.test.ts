/**
 * Sync windows with a real controller, a real git remote on disk and a real Redis: outside the
 * window a new commit waits (status and one event say until when) while drift of the last applied
 * commit is still repaired; inside it the commit is applied. The controller's clock is the real
 * one shifted to chosen local times (so git intervals and timers still run).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { Controller } from '../../src/controller/controller.js';
import { readEvents } from '../../src/state/events.js';
import { createLogger } from '../../src/runtime/log.js';
import { readSourceStatus } from '../../src/controller/source-status.js';
import { parseSyncWindow } from '../../src/controller/sync-window.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { gitRemote, type GitRemote } from '../support/git-remote.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait-for.js';

const NODE = 'apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: {name: node1}\nspec: {id: 1}\n';
const mod = (tag: string): string => `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: webapp1\nspec:\n  image: 127.0.0.1:5000/ns8ctl-examples/webapp:${tag}\n  node: 1\n`;

let srv: TestRedis;
let redis: Redis;
let dir: string;
let repo: GitRemote;
let controller: Controller | undefined;
/** Added to the real clock: moves the controller to a chosen local time. */
let offset = 0;
const setLocal = (d: Date): void => void (offset = d.getTime() - Date.now());

beforeAll(async () => {
  srv = await startRedis();
  redis = srv.client();
  dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-window-'));
  repo = gitRemote(dir);
});
afterAll(async () => {
  await controller?.stop();
  await srv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const status = () => readSourceStatus(redis, 'default');
const image = async (): Promise<string | undefined> => {
  const h = await redis.hget('ns8ctl/desired/module/webapp1', 'object');
  return h ? (JSON.parse(h) as { spec: { image: string } }).spec.image : undefined;
};
const reconciling = async () => (await status())?.conditions.find((c) => c.type === 'Reconciling');

test('new commits wait for the window; drift repair does not; inside the window they are applied', async () => {
  setLocal(new Date(2026, 10, 28, 1, 0)); // Sat 01:00, the window is 02:00-04:00
  const first = repo.commit({ 'node.yaml': NODE, 'wiki.yaml': mod('1.0.0') }, 'first');
  controller = new Controller(
    {
      sources: [{ name: 'default', kind: 'git', paths: [], prune: false, selfHeal: true, syncWindows: [parseSyncWindow('02:00-04:00')], git: { url: repo.remote, branch: 'main', path: '.', cacheDir: path.join(dir, 'cache'), intervalMs: 300 } }],
      resyncMs: 0,
      leaseMs: 5000,
      http: { port: 0 },
      backoff: { baseMs: 100, maxMs: 1000, jitter: 0 },
    },
    { redis: srv.client(), runner: new ProcessRunner(), logger: createLogger('text', () => undefined), now: () => new Date(Date.now() + offset) },
  );
  await controller.start();
  const waiting = await waitFor('the first commit deferred', async () => ((await reconciling())?.reason === 'OutsideSyncWindow' ? reconciling() : undefined));
  expect(waiting!.message).toBe(`commit ${first.slice(0, 12)} waits for a sync window: the next opens Sat 2026-11-28 02:00 (in 1h); windows: 02:00-04:00`);
  expect(await image()).toBeUndefined();
  expect((await status())!.conditions.find((c) => c.type === 'Ready')).toMatchObject({ status: 'False', reason: 'OutsideSyncWindow' });
  const deferredEvents = (await readEvents(redis)).filter((e) => e.name === 'source-apply-deferred');
  expect(deferredEvents).toHaveLength(1);
  expect(deferredEvents[0]!.data).toMatchObject({ waiting: first, nextOpen: new Date(2026, 10, 28, 2, 0).toISOString() });

  // 02:30: inside the window.
  setLocal(new Date(2026, 10, 28, 2, 30));
  controller.trigger('source/default');
  await waitFor('the first commit applied', async () => (await status())?.lastAppliedRevision === first);
  expect(await image()).toMatch(/:1\.0\.0$/);

  // 04:30: a new commit waits, and the source keeps desired state equal to the first one.
  setLocal(new Date(2026, 10, 28, 4, 30));
  const second = repo.commit({ 'wiki.yaml': mod('2.0.0') }, 'second');
  await waitFor('the second commit deferred', async () => (await reconciling())?.message.startsWith(`commit ${second.slice(0, 12)} waits for a sync window: the next opens Sun 2026-11-29 02:00`));
  expect((await status())!.lastAppliedRevision).toBe(first);
  expect((await status())!.conditions.find((c) => c.type === 'Ready')).toMatchObject({ status: 'True' });
  const h = await redis.hget('ns8ctl/desired/module/webapp1', 'object');
  await redis.hset('ns8ctl/desired/module/webapp1', 'object', h!.replace(':1.0.0', ':6.6.6'));
  await waitFor('drift repaired from the first commit', async () => (await image())?.endsWith(':1.0.0'));
  await controller.whenIdle();
  expect(await image()).toMatch(/:1\.0\.0$/);
  expect((await readEvents(redis)).filter((e) => e.name === 'source-apply-deferred')).toHaveLength(2);

  // Sunday 02:05: applied.
  setLocal(new Date(2026, 10, 29, 2, 5));
  controller.trigger('source/default');
  await waitFor('the second commit applied', async () => (await status())?.lastAppliedRevision === second);
  expect(await image()).toMatch(/:2\.0\.0$/);
  expect(await reconciling()).toMatchObject({ status: 'False', reason: 'Applied' });
}, 60_000);

test('a directory source waits for the window too, and says so once', async () => {
  await controller?.stop();
  await redis.flushall();
  const manifests = path.join(dir, 'manifests');
  mkdirSync(manifests);
  writeFileSync(path.join(manifests, 'node.yaml'), NODE);
  writeFileSync(path.join(manifests, 'wiki.yaml'), mod('3.0.0'));
  setLocal(new Date(2026, 10, 30, 12, 0)); // Mon noon; the window is Sat,Sun 01:00-05:00
  controller = new Controller(
    { sources: [{ name: 'default', kind: 'directory', paths: [manifests], prune: false, selfHeal: true, syncWindows: [parseSyncWindow('Sat,Sun 01:00-05:00')] }], resyncMs: 0, leaseMs: 5000, http: { port: 0 }, backoff: { baseMs: 100, maxMs: 1000, jitter: 0 } },
    { redis: srv.client(), runner: new ProcessRunner(), logger: createLogger('text', () => undefined), now: () => new Date(Date.now() + offset) },
  );
  await controller.start();
  await waitFor('the manifests deferred', async () => (await reconciling())?.reason === 'OutsideSyncWindow');
  expect((await reconciling())!.message).toBe('the changed manifests waits for a sync window: the next opens Sat 2026-12-05 01:00 (in 109h); windows: Sat,Sun 01:00-05:00');
  controller.trigger('source/default');
  await controller.whenIdle();
  expect(await image()).toBeUndefined();
  expect((await readEvents(redis)).filter((e) => e.name === 'source-apply-deferred')).toHaveLength(1);
  setLocal(new Date(2026, 11, 5, 1, 30));
  controller.trigger('source/default');
  await waitFor('applied in the window', async () => (await image())?.endsWith(':3.0.0'));
}, 60_000);
