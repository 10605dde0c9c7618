/**
 * The node's module-image cache (src/node-agent/host/image-cache.ts) on the real host: skopeo,
 * tar and a loopback registry holding a two-layer image made here, whose second layer deletes a
 * file (`.wh.a`) and makes a directory opaque (`.wh..wh..opq`), as OCI layers do.
 */
import { createHash } from 'node:crypto';
import { RecordingRunner } from '../support/recording-runner.js';
import { promises as fs, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ProcessRunner, type CommandRunner } from '../../src/host/runner.js';
import { fileStamp, RunnerImageCache } from '../../src/node-agent/host/image-cache.js';
import { normalizeImageRef } from '../../src/host/image-store.js';
import { startRegistry, type TestRegistry } from '../support/registry.js';


const host = new ProcessRunner();
let registry: TestRegistry;
let work: string;
let url: string;
let digest: string;

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/** Writes files (`rel -> content`) under a fresh dir and returns it. */
async function tree(files: Record<string, string>): Promise<string> {
  const dir = mkdtempSync(path.join(work, 'layer-'));
  for (const [rel, text] of Object.entries(files)) {
    await fs.mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
    await fs.writeFile(path.join(dir, rel), text);
  }
  return dir;
}

/** An OCI layout with one image of gzip layers made from `layers`, pushed to `ref`. */
async function pushImage(ref: string, layers: Record<string, string>[], labels: Record<string, string>): Promise<string> {
  const layout = mkdtempSync(path.join(work, 'oci-'));
  const blobs = path.join(layout, 'blobs', 'sha256');
  await fs.mkdir(blobs, { recursive: true });
  const put = async (b: Buffer): Promise<{ digest: string; size: number }> => {
    await fs.writeFile(path.join(blobs, sha(b)), b);
    return { digest: `sha256:${sha(b)}`, size: b.length };
  };
  const descs: { mediaType: string; digest: string; size: number }[] = [];
  const diffIds: string[] = [];
  for (const files of layers) {
    const dir = await tree(files);
    const tarFile = `${dir}.tar`;
    await host.run(['tar', '-C', dir, '--sort=name', '--owner=0', '--group=0', '-cf', tarFile, ...(await fs.readdir(dir))]);
    const raw = await fs.readFile(tarFile);
    diffIds.push(`sha256:${sha(raw)}`);
    await host.run(['gzip', '-n', tarFile]);
    descs.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...(await put(await fs.readFile(`${tarFile}.gz`))) });
  }
  const config = await put(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Labels: labels }, rootfs: { type: 'layers', diff_ids: diffIds } })));
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers: descs }));
  const m = await put(manifest);
  await fs.writeFile(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await fs.writeFile(path.join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...m, annotations: { 'org.opencontainers.image.ref.name': 'x' } }] }));
  await host.run(['skopeo', 'copy', '-q', '--dest-tls-verify=false', `oci:${layout}:x`, `docker://${ref}`], { timeoutMs: 60_000 });
  return m.digest;
}

const newCache = (runner: CommandRunner, dir: string): RunnerImageCache => new RunnerImageCache(runner, dir, () => ['--tls-verify=false']);
const skopeoCopies = (r: RecordingRunner): number => r.all.filter((c) => c.argv[0] === 'skopeo' && c.argv[1] === 'copy').length;
const ROOTS = ['imageroot', 'ui'];

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error('the image cache tests unpack as nobody and copy as another user: run them as root (CI does)');
  work = mkdtempSync(path.join(tmpdir(), 'ns8ctl-image-cache-'));
  await fs.chmod(work, 0o755);
  registry = await startRegistry();
  url = `${registry.address}/ns8ctl-test/whiteouts:1.0.0`;
  digest = await pushImage(
    url,
    [
      { 'bin/busybox': 'not in any root', 'imageroot/a': 'A', 'imageroot/keep': 'K', 'imageroot/d/x': 'X', 'ui/index.html': '<h1>ui</h1>' },
      { 'imageroot/.wh.a': '', 'imageroot/d/.wh..wh..opq': '', 'imageroot/d/y': 'Y' },
    ],
    { 'org.nethserver.rootfull': '0' },
  );
}, 60_000);

afterAll(async () => {
  await registry?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

test('two concurrent fetches of one image fetch it once; its layers are unpacked in order with their whiteouts applied', async () => {
  const runner = new RecordingRunner();
  const cache = newCache(runner, path.join(work, 'cache1'));
  const [a, b] = await Promise.all([cache.ensure(url, { roots: ROOTS, purpose: 't' }), cache.ensure(url, { roots: ROOTS, purpose: 't' })]);
  expect(skopeoCopies(runner)).toBe(1);
  expect(a).toEqual(b);
  expect(a).toMatchObject({ url, digest, labels: { 'org.nethserver.rootfull': '0' }, roots: { imageroot: ['d/', 'd/y', 'keep'], ui: ['index.html'] } });
  expect(a.id).toMatch(/^[0-9a-f]{64}$/);
  expect(statSync(path.join(work, 'cache1')).mode & 0o777).toBe(0o700);
  // Known by URL afterwards, without any process; a later fetch fetches nothing.
  const before = runner.all.length;
  expect(await cache.lookup(url)).toEqual(a);
  await cache.ensure(url, { digest, roots: ROOTS, purpose: 't' });
  expect(runner.all.length).toBe(before);
}, 60_000);

test('a half entry (no completion marker) is never used and is fetched again; a fill dir left by a killed fetch does not stop the next one', async () => {
  const runner = new RecordingRunner();
  const dir = path.join(work, 'cache2');
  const cache = newCache(runner, dir);
  await cache.ensure(url, { roots: ROOTS, purpose: 't' });
  await fs.rm(path.join(dir, digest.slice(7), 'complete'));
  expect(await cache.lookup(url)).toBeUndefined();
  // What a fetch killed half-way leaves: its temporary directory with part of the blobs.
  const fill = path.join(dir, `.fill-${sha(normalizeImageRef(url)).slice(0, 16)}`);
  await fs.mkdir(path.join(fill, 'blobs'), { recursive: true });
  await fs.writeFile(path.join(fill, 'blobs', 'manifest.json'), '{"trunc');
  const again = await cache.ensure(url, { roots: ROOTS, purpose: 't' });
  expect(skopeoCopies(runner)).toBe(2);
  expect(again.roots.imageroot).toEqual(['d/', 'd/y', 'keep']);
  expect((await fs.readFile(path.join(dir, digest.slice(7), 'complete'), 'utf8')).trim()).toBe(digest);
  expect(existsSync(fill)).toBe(false);
  // A marker naming another digest is not trusted either.
  await fs.writeFile(path.join(dir, digest.slice(7), 'complete'), `sha256:${'0'.repeat(64)}\n`);
  expect(await cache.lookup(url)).toBeUndefined();
}, 60_000);

test("a copy into an instance is written by the instance's user (files owned by it) and keeps files the user added", async () => {
  const cache = newCache(new ProcessRunner(), path.join(work, 'cache3'));
  const image = await cache.ensure(url, { roots: ROOTS, purpose: 't' });
  const dest = mkdtempSync(path.join(work, 'home-'));
  await fs.writeFile(path.join(dest, 'mine'), 'user file');
  await fs.chown(dest, 65534, 65534);
  await fs.chown(path.join(dest, 'mine'), 65534, 65534);
  const owner = { kind: 'user' as const, name: 'nobody', uid: 65534, gid: 65534, home: dest };
  expect(await cache.copy(image, 'imageroot', dest, owner, 't')).toEqual(['d/', 'd/y', 'keep']);
  expect(await fs.readFile(path.join(dest, 'd', 'y'), 'utf8')).toBe('Y');
  expect(statSync(path.join(dest, 'keep')).uid).toBe(65534);
  // Size and mtime travel with the copy: what drift detection compares.
  expect(fileStamp(statSync(path.join(dest, 'keep')))).toBe(image.stamps?.imageroot?.keep);
  expect(fileStamp(statSync(path.join(dest, 'd', 'y')))).toBe(image.stamps?.imageroot?.['d/y']);
  expect(statSync(path.join(dest, 'd')).uid).toBe(65534);
  expect(await fs.readFile(path.join(dest, 'mine'), 'utf8')).toBe('user file');
  expect(existsSync(path.join(dest, 'a'))).toBe(false);
  expect(await cache.copy(image, 'no-such-root', dest, owner, 't')).toBeUndefined();
}, 60_000);

test('evict removes the entries and refs of images not kept and fill dirs of long-dead fills, and keeps the ones named by id or digest', async () => {
  const dir = path.join(work, 'cache4');
  const cache = newCache(new ProcessRunner(), dir);
  const image = await cache.ensure(url, { roots: ROOTS, purpose: 't' });
  expect(await cache.evict(new Set([image.id]))).toEqual([]);
  expect(await cache.evict(new Set([digest]))).toEqual([]);
  expect(await cache.lookup(url)).toBeDefined();
  // A fill killed long ago, of an image never fetched again, goes too; a recent one may be running.
  const old = path.join(dir, '.fill-0000000000000000');
  const recent = path.join(dir, '.fill-1111111111111111');
  await fs.mkdir(old);
  await fs.mkdir(recent);
  await fs.utimes(old, new Date(Date.now() - 2 * 3600_000), new Date(Date.now() - 2 * 3600_000));
  expect(await cache.evict(new Set())).toEqual([digest]);
  expect(existsSync(path.join(dir, digest.slice(7)))).toBe(false);
  expect([existsSync(old), existsSync(recent)]).toEqual([false, true]);
  expect(await fs.readdir(path.join(dir, 'refs'))).toEqual([]);
  expect(await cache.lookup(url)).toBeUndefined();
}, 60_000);
