/**
 * Old sandbox root filesystem caches are removed once a new one is built, except those a sandbox
 * still uses or one being built. Real directories under temporary cache and state roots.
 */
import { promises as fs, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pruneRootfsCaches } from '../../src/sandbox/rootfs-prune.js';

let root: string;
afterAll(async () => {
  if (root) await fs.rm(root, { recursive: true, force: true });
});

test('caches no sandbox uses go; the new one, a used one, one being built and foreign files stay', async () => {
  root = await fs.mkdtemp(path.join(tmpdir(), 'ns8ctl-prune-'));
  const cache = path.join(root, 'cache');
  const state = path.join(root, 'state');
  const hashes = { fresh: 'aaaaaaaaaaaaaaaa', used: 'bbbbbbbbbbbbbbbb', old: 'cccccccccccccccc', building: 'dddddddddddddddd', byPath: 'eeeeeeeeeeeeeeee' };
  for (const h of Object.values(hashes)) {
    await fs.mkdir(path.join(cache, h, 'rootfs', 'etc'), { recursive: true });
    await fs.writeFile(path.join(cache, h, 'complete'), `${h}\n`);
  }
  await fs.mkdir(path.join(cache, `${hashes.building}.lock`));
  await fs.mkdir(path.join(cache, 'notes'));
  await fs.mkdir(path.join(state, 'dev'), { recursive: true });
  await fs.writeFile(path.join(state, 'dev', 'sandbox.json'), JSON.stringify({ name: 'dev', recipeHash: hashes.used, rootfs: path.join(cache, hashes.used, 'rootfs') }));
  // An older record format: only the rootfs path names the cache.
  await fs.mkdir(path.join(state, 'old'), { recursive: true });
  await fs.writeFile(path.join(state, 'old', 'sandbox.json'), JSON.stringify({ name: 'old', rootfs: path.join(cache, hashes.byPath, 'rootfs') }));
  await fs.mkdir(path.join(state, 'broken'), { recursive: true });
  await fs.writeFile(path.join(state, 'broken', 'sandbox.json'), '{not json');
  const said: string[] = [];
  const removed = await pruneRootfsCaches({ env: { NS8CTL_SANDBOX_CACHE: cache, NS8CTL_SANDBOX_STATE: state }, stderr: (t) => said.push(t) }, hashes.fresh);
  expect(removed).toEqual([path.join(cache, hashes.old)]);
  expect(said).toEqual([`sandbox: removed the old root filesystem cache ${path.join(cache, hashes.old)} (no sandbox uses it)\n`]);
  for (const h of [hashes.fresh, hashes.used, hashes.building, hashes.byPath]) expect(existsSync(path.join(cache, h, 'complete'))).toBe(true);
  expect(existsSync(path.join(cache, 'notes'))).toBe(true);
  // Nothing left to prune: a second call removes nothing.
  expect(await pruneRootfsCaches({ env: { NS8CTL_SANDBOX_CACHE: cache, NS8CTL_SANDBOX_STATE: state }, stderr: () => undefined }, hashes.fresh)).toEqual([]);
});
