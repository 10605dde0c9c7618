import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Command } from 'commander';
import type { Redis } from 'ioredis';
import type { CliDeps } from '../../src/cli/deps.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { RepositoryError } from '../../src/repository/errors.js';
import { CACHE_TTL_SECONDS, getRepodata, loadSnapshots, readRepositories, refreshRepositories } from '../../src/repository/fetch.js';
import { makeImageResolver, makeModuleResolver } from '../../src/repository/image-resolver.js';
import { updatesFromRedis } from '../../src/repository/installed.js';
import { getAvailable, registerRepositoryCommands, repoRefresh, search, type RepositoryDeps } from '../../src/cli/commands/repository.js';
import type { RepositoryInfo } from '../../src/repository/resolve.js';
import { keys } from '../../src/state/keys.js';
import { freePort, startRedis, type TestRedis } from '../support/redis-server.js';
import { rejectionOf } from '../support/caught.js';

const sample = readFileSync(new URL('../fixtures/repodata/sample.json', import.meta.url), 'utf8');
const LAST_MODIFIED = 'Wed, 01 Jan 2025 10:00:00 GMT';

/** A repository web server on 127.0.0.1: path -> handler; records every request. */
class RepoServer {
  readonly requests: { path: string; view: string | null; userAgent: string | undefined }[] = [];
  readonly routes = new Map<string, (res: ServerResponse) => void>();
  private server: Server | undefined;
  base = '';

  async start(): Promise<void> {
    this.server = createServer((req: IncomingMessage, res: ServerResponse) => {
      const url = new URL(req.url ?? '/', 'http://x');
      this.requests.push({ path: url.pathname, view: url.searchParams.get('view'), userAgent: req.headers['user-agent'] });
      const route = this.routes.get(url.pathname);
      if (route) route(res);
      else {
        res.statusCode = 404;
        res.end('not found');
      }
    });
    await new Promise<void>((r) => this.server?.listen(0, '127.0.0.1', r));
    const addr = this.server.address();
    if (!addr || typeof addr === 'string') throw new Error('no address');
    this.base = `http://127.0.0.1:${addr.port}`;
  }

  json(path: string, body: string, status = 200): void {
    this.routes.set(path, (res) => {
      res.writeHead(status, { 'Content-Type': 'application/json', 'Last-Modified': LAST_MODIFIED });
      res.end(body);
    });
  }

  hits(path: string): number {
    return this.requests.filter((r) => r.path === path).length;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise((r) => this.server?.close(r));
  }
}

const rejection = (p: Promise<unknown>): Promise<RepositoryError> => rejectionOf(RepositoryError, p);

describe('repository metadata over HTTP with the Redis cache', () => {
  let redisServer: TestRedis;
  let redis: Redis;
  let web: RepoServer;
  let tmp: string;

  /** Writes cluster/repository/<name> the way apply does. */
  async function addRepository(name: string, url: string, opts: { enabled?: boolean; testing?: boolean } = {}): Promise<RepositoryInfo> {
    await redis.hset(keys.repository(name), { url, status: opts.enabled === false ? '0' : '1', testing: opts.testing ? '1' : '0' });
    return { name, url, enabled: opts.enabled !== false, testing: opts.testing ?? false };
  }

  beforeAll(async () => {
    redisServer = await startRedis();
    redis = redisServer.client();
    web = new RepoServer();
    await web.start();
    tmp = mkdtempSync(join(tmpdir(), 'ns8ctl-repo-'));
  });
  afterAll(async () => {
    await web.stop();
    await redisServer.stop();
    rmSync(tmp, { recursive: true, force: true });
  });
  beforeEach(async () => {
    await redis.flushall();
    web.routes.clear();
    web.requests.length = 0;
  });

  it('downloads repodata.json once, caches it as NS8 (data, updated, repo_view, TTL 3600) and then serves it from Redis', async () => {
    web.json('/ns8/updates/repodata.json', sample);
    const repo = await addRepository('default', `${web.base}/ns8/updates/`);
    const first = await getRepodata(redis, repo);
    expect(first.origin).toBe('network');
    expect(first.packages.map((p) => p.id)).toEqual(['webapp', 'vault']);
    expect(first.updated).toBe(LAST_MODIFIED);

    const key = keys.repositoryCache('default');
    expect(await redis.hgetall(key)).toEqual({ data: sample, updated: LAST_MODIFIED, repo_view: 'latest' });
    const ttl = await redis.ttl(key);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(CACHE_TTL_SECONDS);

    const second = await getRepodata(redis, repo);
    expect(second.origin).toBe('cache');
    expect(second.packages).toEqual(first.packages);
    expect(web.hits('/ns8/updates/repodata.json')).toBe(1);
    expect(web.requests[0]).toMatchObject({ view: 'latest', userAgent: expect.stringContaining('ns8-downloader') });
  });

  it('joins repodata.json under a URL without trailing slash (not beside it)', async () => {
    web.json('/ns8/updates/repodata.json', sample);
    const repo = await addRepository('default', `${web.base}/ns8/updates`);
    await expect(getRepodata(redis, repo)).resolves.toMatchObject({ origin: 'network' });
  });

  it('expires the cache on refresh so the next read downloads again', async () => {
    web.json('/a/repodata.json', sample);
    web.json('/b/repodata.json', sample);
    const a = await addRepository('aaa', `${web.base}/a/`);
    const b = await addRepository('bbb', `${web.base}/b/`);
    await getRepodata(redis, a);
    await getRepodata(redis, b);
    expect(await refreshRepositories(redis, 'aaa')).toEqual(['aaa']);
    expect(await redis.exists(keys.repositoryCache('aaa'))).toBe(0);
    expect(await redis.exists(keys.repositoryCache('bbb'))).toBe(1);
    expect((await getRepodata(redis, a)).origin).toBe('network');
    expect(web.hits('/a/repodata.json')).toBe(2);

    expect(await refreshRepositories(redis)).toEqual(['aaa', 'bbb']);
    expect(await redis.keys('cluster/repository_cache/*')).toEqual([]);
    expect(await refreshRepositories(redis, 'aaa')).toEqual([]);
    expect(await redis.exists(keys.repository('aaa'))).toBe(1);
  });

  it('re-downloads when the cached view differs, and replaces a cache that no longer validates', async () => {
    web.json('/r/repodata.json', sample);
    const repo = await addRepository('default', `${web.base}/r/`);
    await getRepodata(redis, repo);
    expect((await getRepodata(redis, repo, { view: 'managed' })).origin).toBe('network');
    expect(web.requests.at(-1)?.view).toBe('managed');
    expect(await redis.hget(keys.repositoryCache('default'), 'repo_view')).toBe('managed');
    await redis.hset(keys.repositoryCache('default'), 'data', '[{"name": 1}]');
    expect((await getRepodata(redis, repo, { view: 'managed' })).origin).toBe('network');
    expect(await redis.hget(keys.repositoryCache('default'), 'data')).toBe(sample);
  });

  it('sees a cache rewritten by another writer, even with data of the same length', async () => {
    web.json('/r/repodata.json', sample);
    const repo = await addRepository('default', `${web.base}/r/`);
    expect((await getRepodata(redis, repo)).packages[0]?.name).toBe('Web App');
    const renamed = sample.replace('"Web App"', '"Web Ap2"');
    expect(renamed.length).toBe(sample.length);
    await redis.multi().hset(keys.repositoryCache('default'), { data: renamed, updated: LAST_MODIFIED, repo_view: 'latest' }).expire(keys.repositoryCache('default'), 1800).exec();
    const again = await getRepodata(redis, repo);
    expect(again.origin).toBe('cache');
    expect(again.packages[0]?.name).toBe('Web Ap2');
    expect(web.hits('/r/repodata.json')).toBe(1);
  });

  it('still resolves for a read-only Redis user that may not write the cache', async () => {
    web.json('/r/repodata.json', sample);
    const repo = await addRepository('default', `${web.base}/r/`);
    await redis.call('ACL', 'SETUSER', 'reader', 'on', '>pw', 'resetkeys', '~cluster/*', '~module/*', '+@read', '+@connection');
    const reader = redisServer.client();
    await reader.call('AUTH', 'reader', 'pw');
    const snap = await getRepodata(reader, repo);
    expect(snap.packages).toHaveLength(2);
    expect(await redis.exists(keys.repositoryCache('default'))).toBe(0);
    await expect(makeImageResolver(reader, { coreVersion: '3.21.0' })({ module: 'webapp' })).resolves.toBe('127.0.0.1:5000/ns8ctl-examples/webapp:2.0.0');
  });

  it('does not cache a repository with no package (as NS8)', async () => {
    web.json('/empty/repodata.json', '[]');
    const repo = await addRepository('empty', `${web.base}/empty/`);
    expect((await getRepodata(redis, repo)).packages).toEqual([]);
    expect(await redis.exists(keys.repositoryCache('empty'))).toBe(0);
  });

  it('names the repository, the URL and the JSON pointer when the metadata is invalid', async () => {
    const bad = JSON.parse(sample) as Record<string, unknown>[];
    delete (bad[1] as Record<string, unknown>).source;
    web.json('/bad/repodata.json', JSON.stringify(bad));
    const repo = await addRepository('broken', `${web.base}/bad/`);
    const e = await rejection(getRepodata(redis, repo));
    expect(e.code).toBe('repodata_is_not_valid_metadata');
    expect(e.message).toContain(`repository 'broken': ${web.base}/bad/repodata.json?view=latest does not match the repodata schema`);
    expect(e.problems).toEqual([{ where: '/1/source', message: "is required (package 'vault')" }]);
    expect(await redis.exists(keys.repositoryCache('broken'))).toBe(0);
  });

  it('reports 404, non-JSON, server errors, refused connections and timeouts with NS8 codes', async () => {
    web.json('/html/repodata.json', '<html></html>');
    web.json('/err/repodata.json', 'oops', 500);
    web.routes.set('/slow/repodata.json', () => undefined);
    expect((await rejection(getRepodata(redis, await addRepository('a', `${web.base}/missing/`)))).code).toBe('repodata_not_found');
    expect((await rejection(getRepodata(redis, await addRepository('b', `${web.base}/html/`)))).code).toBe('repodata_is_not_json');
    const err = await rejection(getRepodata(redis, await addRepository('c', `${web.base}/err/`)));
    expect(err).toMatchObject({ code: 'repository_not_accessible', message: expect.stringContaining('answered HTTP 500') });
    const refused = await rejection(getRepodata(redis, await addRepository('d', `http://127.0.0.1:${await freePort()}/`)));
    expect(refused).toMatchObject({ code: 'repository_not_accessible', message: expect.stringContaining('ECONNREFUSED') });
    const slow = await rejection(getRepodata(redis, await addRepository('e', `${web.base}/slow/`), { timeoutMs: 300 }));
    expect(slow).toMatchObject({ code: 'repository_not_accessible', message: expect.stringContaining('no answer within 300 ms') });
  });

  it('reads a file:// repository', async () => {
    const dir = join(tmp, 'filerepo');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'repodata.json'), sample);
    const repo = await addRepository('local', pathToFileURL(dir).href);
    const snap = await getRepodata(redis, repo);
    expect(snap.packages).toHaveLength(2);
    expect(await redis.hget(keys.repositoryCache('local'), 'data')).toBe(sample);
    expect((await rejection(getRepodata(redis, await addRepository('nofile', pathToFileURL(join(tmp, 'nowhere')).href)))).code).toBe('repodata_not_found');
  });

  it('reads the configured repositories and loads only the enabled ones, reporting failures', async () => {
    web.json('/ok/repodata.json', sample);
    await addRepository('default', `${web.base}/ok/`, { testing: true });
    await addRepository('nethforge', `${web.base}/off/`, { enabled: false });
    await addRepository('zbroken', `${web.base}/missing/`);
    expect(await readRepositories(redis)).toEqual([
      { name: 'default', url: `${web.base}/ok/`, enabled: true, testing: true },
      { name: 'nethforge', url: `${web.base}/off/`, enabled: false, testing: false },
      { name: 'zbroken', url: `${web.base}/missing/`, enabled: true, testing: false },
    ]);
    const { snapshots, failures } = await loadSnapshots(redis);
    expect(snapshots.map((s) => s.repository.name)).toEqual(['default']);
    expect(failures.map((f) => `${f.repository}:${f.error.code}`)).toEqual(['zbroken:repodata_not_found']);
    expect(web.hits('/off/repodata.json')).toBe(0);
  });

  it('resolves module specs through the repositories in Redis for the node agent', async () => {
    web.json('/ok/repodata.json', sample);
    await addRepository('default', `${web.base}/ok/`);
    const resolveImage = makeImageResolver(redis, { coreVersion: '3.21.0' });
    await expect(resolveImage({ module: 'webapp', version: 'latest' })).resolves.toBe('127.0.0.1:5000/ns8ctl-examples/webapp:2.0.0');
    await expect(resolveImage({ module: 'webapp', version: '^1' })).resolves.toBe('127.0.0.1:5000/ns8ctl-examples/webapp:1.1.0');
    await expect(resolveImage('webapp')).resolves.toBe('127.0.0.1:5000/ns8ctl-examples/webapp:2.0.0');
    await expect(resolveImage({ image: 'ghcr.io/other/thing:9.9.9' })).resolves.toBe('ghcr.io/other/thing:9.9.9');
    await expect(resolveImage({ module: 'vault' })).resolves.toBe('ghcr.io/example/vault:2.4.1');

    await redis.hset(keys.repository('default'), 'testing', '1');
    await expect(makeModuleResolver(redis, { coreVersion: '3.21.0' })({ module: 'webapp' })).resolves.toMatchObject({ tag: '2.1.0-rc.1', repository: 'default', prerelease: true });

    await addRepository('zzz', `${web.base}/missing/`);
    const e = await rejection(resolveImage({ module: 'nothere' }));
    expect(e.code).toBe('module_not_found');
    expect(e.message).toContain("some repositories could not be read: repository 'zzz'");
  });

  it('lists updates of installed instances from module/<id>/environment', async () => {
    web.json('/ok/repodata.json', sample);
    await addRepository('default', `${web.base}/ok/`);
    await redis.hset(keys.moduleEnvironment('webapp1'), { IMAGE_URL: '127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0', NODE_ID: '1' });
    await redis.hset(keys.moduleEnvironment('webapp2'), { IMAGE_URL: '127.0.0.1:5000/ns8ctl-examples/webapp:1.1.0', NODE_ID: '1' });
    const { updates } = await updatesFromRedis(redis, { coreVersion: '3.21.0', versionSpecs: new Map([['webapp2', '^1']]) });
    expect(updates).toEqual([
      { id: 'webapp1', module: 'webapp', current: '1.0.0', update: '1.1.0', blocked: [expect.objectContaining({ tag: '2.0.0', code: 'min_from_not_met' })] },
      { id: 'webapp2', module: 'webapp', current: '1.1.0', update: '2.0.0', blocked: [] },
    ]);
  });

  describe('commands', () => {
    let deps: RepositoryDeps;
    const logs: string[] = [];
    beforeEach(() => {
      logs.length = 0;
      deps = { connectRedis: async () => redis, runner: new ProcessRunner(), coreVersion: '3.21.0', log: (l) => logs.push(l) };
    });

    it('repo refresh expires and re-downloads, reporting per repository', async () => {
      web.json('/ok/repodata.json', sample);
      await addRepository('default', `${web.base}/ok/`);
      await addRepository('off', `${web.base}/off/`, { enabled: false });
      await getRepodata(redis, { name: 'default', url: `${web.base}/ok/`, enabled: true, testing: false });
      const rows = await repoRefresh({}, deps);
      expect(rows).toEqual([
        { repository: 'default', enabled: true, expired: true, modules: 2, updated: LAST_MODIFIED },
        { repository: 'off', enabled: false, expired: false },
      ]);
      expect(web.hits('/ok/repodata.json')).toBe(2);
      await expect(repoRefresh({ name: 'nope' }, deps)).rejects.toThrow('repository "nope" is not configured (configured: default, off)');
    });

    it('search filters by text and get available lists everything with hidden versions', async () => {
      web.json('/ok/repodata.json', sample);
      await addRepository('default', `${web.base}/ok/`);
      const found = await search({ text: 'SECRET' }, deps);
      expect(found.modules.map((m) => m.id)).toEqual(['vault']);
      expect(found.modules[0]).toMatchObject({ latest: '2.4.1', versions: ['2.4.1'], hidden: [expect.objectContaining({ tag: '3.0.0', reason: 'min_core' })] });
      const all = await getAvailable({}, deps);
      expect(all.modules.map((m) => `${m.id}@${m.latest}`)).toEqual(['vault@2.4.1', 'webapp@2.0.0']);
      expect(all.coreVersion).toBe('3.21.0');
    });

    it('are wired into a commander program (repo refresh, search, get available)', async () => {
      web.json('/ok/repodata.json', sample);
      await addRepository('default', `${web.base}/ok/`);
      const out: string[] = [];
      const err: string[] = [];
      let exit = -1;
      const cli: CliDeps = {
        stdout: (t) => out.push(t),
        stderr: (t) => err.push(t),
        env: { NS8CTL_CORE_VERSION: '3.21.0' },
        isTTY: false,
        runner: new ProcessRunner(),
        connect: async () => ({ redis, url: redisServer.url, embedded: false }),
        stdin: async () => '',
        cwd: tmp,
      };
      const program = new Command('ns8ctl').exitOverride();
      const get = program.command('get').argument('<resource>').option('-o, --output <format>', 'like main.ts', 'table').action(() => undefined);
      registerRepositoryCommands(program, () => cli, (c) => (exit = c), get);

      await program.parseAsync(['search', 'web', '-o', 'json'], { from: 'user' });
      expect(exit).toBe(0);
      expect((JSON.parse(out.join('')) as { modules: { id: string }[] }).modules.map((m) => m.id)).toEqual(['webapp']);

      out.length = 0;
      await program.parseAsync(['get', 'available'], { from: 'user' });
      expect(out.join('')).toMatch(/^ID\s+LATEST\s+VERSIONS\s+REPOSITORY\s+DESCRIPTION\nvault\s+2\.4\.1/);

      out.length = 0;
      await program.parseAsync(['get', 'available', '-o', 'wide'], { from: 'user' });
      expect(out.join('')).toMatch(/^ID\s+LATEST\s+VERSIONS\s+REPOSITORY\s+SOURCE\s+CERT\s+HIDDEN\s+DESCRIPTION\n/);
      expect(out.join('')).toContain('3.0.0:min_core');

      out.length = 0;
      await program.parseAsync(['get', 'available', '-o', 'json'], { from: 'user' });
      expect((JSON.parse(out.join('')) as { coreVersion: string }).coreVersion).toBe('3.21.0');

      out.length = 0;
      await program.parseAsync(['repo', 'refresh', 'default', '-o', 'json'], { from: 'user' });
      expect(JSON.parse(out.join(''))).toEqual([{ repository: 'default', enabled: true, expired: true, modules: 2, updated: LAST_MODIFIED }]);
    });
  });
});
