import { createServer, type Server } from 'node:http';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { ProcessRunner } from '../../src/host/runner.js';
import { createrepo } from '../../src/repository/createrepo.js';
import { RepositoryError } from '../../src/repository/errors.js';
import { loadAvailable, makeImageResolver } from '../../src/repository/image-resolver.js';
import { checkRepodata } from '../../src/repository/repodata.js';
import { admitMaxPerNode, checkUpdate, findModules, listUpdates } from '../../src/repository/resolve.js';
import { keys } from '../../src/state/keys.js';
import { ensureExampleImages, type ExampleImages } from '../support/example-images.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { startRegistry, type TestRegistry } from '../support/registry.js';
import { makePng } from '../fixtures/repodata/png.js';

const metadata = (name: string, source: string): string =>
  JSON.stringify({
    name,
    description: { en: `${name} example module` },
    categories: ['example'],
    authors: [{ name: 'ns8ctl', email: 'ns8ctl@example.org' }],
    docs: { documentation_url: 'https://example.org/docs', bug_url: 'https://example.org/bugs', code_url: 'https://example.org/code' },
    source,
  });

describe('createrepo against a real registry with the example module images', () => {
  let registry: TestRegistry;
  let images: ExampleImages;
  let root: string;
  const runner = new ProcessRunner();

  beforeAll(async () => {
    registry = await startRegistry();
    images = await ensureExampleImages(registry.address);
    root = mkdtempSync(join(tmpdir(), 'ns8ctl-createrepo-it-'));
    const put = (rel: string, content: string | Buffer): void => {
      mkdirSync(join(root, rel, '..'), { recursive: true });
      writeFileSync(join(root, rel), content);
    };
    put('webapp/metadata.json', metadata('Web App', `${registry.address}/ns8ctl-examples/webapp`));
    put('webapp/logo.png', makePng(256, 256));
    put('webapp/screenshots/main.png', makePng(1024, 768));
    put('rootfull-demo/metadata.json', metadata('Rootfull demo', `${registry.address}/ns8ctl-examples/rootfull-demo`));
  }, 600_000);

  afterAll(async () => {
    await registry?.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it('writes a repodata.json that validates, with every tag and its image labels', async () => {
    const res = await createrepo(root, { runner, registryTlsVerify: false });
    const written = JSON.parse(readFileSync(join(root, 'repodata.json'), 'utf8')) as unknown;
    expect(checkRepodata(written)).toEqual([]);
    expect(res.packages.map((p) => p.id)).toEqual(['rootfull-demo', 'webapp']);

    const webapp = res.packages.find((p) => p.id === 'webapp');
    expect(webapp).toMatchObject({ logo: 'logo.png', screenshots: ['screenshots/main.png'], source: `${registry.address}/ns8ctl-examples/webapp` });
    expect(webapp?.versions.map((v) => `${v.tag}:${v.testing}`)).toEqual(['2.0.0:false', '1.1.0:false', '1.0.0:false']);
    const v2 = webapp?.versions[0]?.labels ?? {};
    expect(v2['org.nethserver.min-from']).toBe('1.1.0');
    expect(v2['org.nethserver.images']).toBe(images.webappHttpd['2.0.0']);
    expect(v2['org.nethserver.rootfull']).toBe('0');
    expect(webapp?.versions[2]?.labels['org.nethserver.min-from']).toBeUndefined();

    const rootfull = res.packages.find((p) => p.id === 'rootfull-demo');
    expect(rootfull?.logo).toBeNull();
    expect(rootfull?.versions.map((v) => v.tag)).toEqual(['1.1.0', '1.0.0']);
    expect(rootfull?.versions[0]?.labels).toMatchObject({ 'org.nethserver.rootfull': '1', 'org.nethserver.max-per-node': '1', 'org.nethserver.tcp-ports-demand': '2' });
  });

  it('keeps only the latest stable tag under the ns8 tag policy', async () => {
    const res = await createrepo(root, { runner, registryTlsVerify: false, tagPolicy: 'ns8', output: null });
    expect(res.packages.find((p) => p.id === 'webapp')?.versions.map((v) => v.tag)).toEqual(['2.0.0']);
  });

  it('fails naming the module when TLS verification is asked of a plain-HTTP registry', async () => {
    const err = await createrepo(root, { runner, output: null }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RepositoryError);
    expect((err as RepositoryError).code).toBe('createrepo_registry_failed');
    expect((err as RepositoryError).problems.map((p) => p.where).sort()).toEqual(['rootfull-demo', 'webapp']);
  });

  describe('the generated repository served over HTTP and resolved through Redis', () => {
    let server: Server;
    let redisServer: TestRedis;
    let redis: Redis;
    let url: string;

    beforeAll(async () => {
      await createrepo(root, { runner, registryTlsVerify: false });
      const text = readFileSync(join(root, 'repodata.json'));
      server = createServer((req, res) => {
        if ((req.url ?? '').startsWith('/repo/repodata.json')) res.end(text);
        else {
          res.statusCode = 404;
          res.end();
        }
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const addr = server.address();
      if (!addr || typeof addr === 'string') throw new Error('no address');
      url = `http://127.0.0.1:${addr.port}/repo/`;
      redisServer = await startRedis();
      redis = redisServer.client();
      await redis.hset(keys.repository('examples'), { url, status: '1', testing: '0' });
    });
    afterAll(async () => {
      server?.closeAllConnections();
      await new Promise((r) => server?.close(r));
      await redisServer?.stop();
    });

    it('resolves the example module to the pushed image URLs', async () => {
      const resolveImage = makeImageResolver(redis, { coreVersion: '3.21.0' });
      await expect(resolveImage({ module: 'webapp' })).resolves.toBe(images.webapp['2.0.0']);
      await expect(resolveImage({ module: 'webapp', version: '~1.0' })).resolves.toBe(images.webapp['1.0.0']);
      await expect(resolveImage({ module: 'webapp', version: '^1' })).resolves.toBe(images.webapp['1.1.0']);
      await expect(resolveImage({ module: 'rootfull-demo', version: '1.0.0' })).resolves.toBe(images.rootfullDemo['1.0.0']);
    });

    it('refuses the 1.0.0 -> 2.0.0 update by min-from and offers 1.1.0 first', async () => {
      const { available, coreVersion } = await loadAvailable(redis, { coreVersion: '3.21.0' });
      const webapp = findModules(available, 'webapp')[0];
      const v2 = webapp?.versions.find((v) => v.tag === '2.0.0');
      const check = checkUpdate({ id: 'webapp1', image: images.webapp['1.0.0'] }, { image: images.webapp['2.0.0'], labels: v2?.labels }, { coreVersion, available: webapp });
      expect(check).toMatchObject({ ok: false, code: 'min_from_not_met', message: expect.stringContaining('update through 1.1.0 first') });
      expect(checkUpdate({ id: 'webapp1', image: images.webapp['1.1.0'] }, { image: images.webapp['2.0.0'], labels: v2?.labels }, { coreVersion }).ok).toBe(true);
      expect(listUpdates([{ id: 'webapp1', image: images.webapp['1.0.0'] }], available, { coreVersion })[0]).toMatchObject({ update: '1.1.0', blocked: [{ tag: '2.0.0', code: 'min_from_not_met' }] });
    });

    it('enforces the max-per-node label of the rootfull example', async () => {
      const { available } = await loadAvailable(redis, { coreVersion: '3.21.0' });
      const labels = findModules(available, 'rootfull-demo')[0]?.versions[0]?.labels;
      const res = admitMaxPerNode([
        { id: 'rootfull-demo1', module: 'rootfull-demo', node: 1, labels },
        { id: 'rootfull-demo2', module: 'rootfull-demo', node: 1, labels },
        { id: 'rootfull-demo3', module: 'rootfull-demo', node: 2, labels },
      ]);
      expect([...res].map(([id, c]) => `${id}:${c.ok}`).sort()).toEqual(['rootfull-demo1:true', 'rootfull-demo2:false', 'rootfull-demo3:true']);
    });
  });
});
