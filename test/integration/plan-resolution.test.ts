import { createServer, type Server } from 'node:http';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { keys } from '../../src/state/keys.js';
import { runCli } from '../support/cli.js';
import { freePort, startRedis, type TestRedis } from '../support/redis-server.js';

const sample = readFileSync(new URL('../fixtures/repodata/sample.json', import.meta.url), 'utf8');
const WEBAPP = '127.0.0.1:5000/ns8ctl-examples/webapp';

/** Serves `/<repo>/repodata.json` on 127.0.0.1 and counts requests. */
class RepodataServer {
  readonly hits: string[] = [];
  private server: Server | undefined;
  base = '';

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      this.hits.push(url.pathname);
      if (url.pathname === '/default/repodata.json') {
        res.writeHead(200, { 'Content-Type': 'application/json', 'Last-Modified': 'Wed, 01 Jan 2025 10:00:00 GMT' });
        res.end(sample);
      } else {
        res.writeHead(404);
        res.end('not found');
      }
    });
    await new Promise<void>((r) => this.server?.listen(0, '127.0.0.1', r));
    const addr = this.server.address();
    if (!addr || typeof addr === 'string') throw new Error('the repodata server has no TCP address');
    this.base = `http://127.0.0.1:${addr.port}`;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise((r) => this.server?.close(r));
  }
}

const nodeDoc = `apiVersion: ns8ctl.nethserver.org/v1
kind: Node
metadata:
  name: node1
spec:
  id: 1
---
apiVersion: ns8ctl.nethserver.org/v1
kind: Node
metadata:
  name: node2
spec:
  id: 2
`;

const repositoryDoc = (url: string, testing = false): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Repository
metadata:
  name: default
spec:
  url: ${url}
  testing: ${testing}
`;

const moduleDoc = (name: string, module: string, version: string | undefined, node = 1): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata:
  name: ${name}
spec:
  module: ${module}
${version !== undefined ? `  version: "${version}"\n` : ''}  node: ${node}
`;

describe('plan-time resolution against a repository server and a real Redis', () => {
  let srv: TestRedis;
  let redis: Redis;
  let web: RepodataServer;
  let dir: string;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    srv = await startRedis();
    redis = srv.client();
    web = new RepodataServer();
    await web.start();
  });
  afterAll(async () => {
    await web.stop();
    await srv.stop();
  });
  beforeEach(async () => {
    await redis.flushall();
    web.hits.length = 0;
    dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-plan-resolution-'));
    env = { NS8CTL_REDIS_URL: srv.url, NS8CTL_STATE_DIR: path.join(dir, '.state'), NS8CTL_CORE_VERSION: '3.21.0' };
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** Writes the manifests directory from documents and returns its path. */
  function manifests(...docs: string[]): string {
    const m = path.join(dir, 'm');
    rmSync(m, { recursive: true, force: true });
    mkdirSync(m, { recursive: true });
    writeFileSync(path.join(m, 'nodes.yaml'), nodeDoc);
    docs.forEach((d, i) => writeFileSync(path.join(m, `doc${i}.yaml`), d));
    return m;
  }

  it('resolves module webapp with version ^1.0 to the highest 1.x through the repository declared in the same manifests', async () => {
    const m = manifests(repositoryDoc(`${web.base}/default/`), moduleDoc('webapp1', 'webapp', '^1.0'));
    const diff = await runCli(['diff', '-f', m], env);
    expect(diff.stderr).toBe('');
    expect(diff.code).toBe(1);
    expect(diff.stdout).toContain(`+ Module/webapp1 (create)\n    # new object\n    # resolves to ${WEBAPP}:1.1.0 (repository default)\n`);
    // The repository is not configured yet: its metadata was read without filling the cache.
    expect(web.hits).toEqual(['/default/repodata.json']);
    expect(await redis.exists(keys.repositoryCache('default'))).toBe(0);

    const json = await runCli(['diff', '-f', m, '-o', 'json'], env);
    const change = JSON.parse(json.stdout).changes.find((c: { key: string }) => c.key === 'Module/webapp1');
    expect(change.resolved).toEqual({ image: `${WEBAPP}:1.1.0`, tag: '1.1.0', version: '1.1.0', repository: 'default', prerelease: false });

    expect((await runCli(['apply', '-f', m], env)).code).toBe(0);
    const again = await runCli(['diff', '-f', m], env);
    expect(again.code).toBe(0);
    expect(again.stdout).toBe('No changes. Desired state matches.\n');
    // Now configured: read through NS8's cache.
    expect(await redis.hget(keys.repositoryCache('default'), 'data')).toBe(sample);

    // A new URL expires the cache (it is keyed by name only).
    const moved = manifests(repositoryDoc(`${web.base}/default`), moduleDoc('webapp1', 'webapp', '^1.0'));
    expect((await runCli(['apply', '-f', moved], env)).code).toBe(0);
    expect(await redis.exists(keys.repositoryCache('default'))).toBe(0);
  });

  it('offers the prerelease only when the repository has testing: true', async () => {
    const stable = await runCli(['diff', '-f', manifests(repositoryDoc(`${web.base}/default/`), moduleDoc('webapp1', 'webapp', undefined))], env);
    expect(stable.stdout).toContain(`# resolves to ${WEBAPP}:2.0.0 (repository default)`);
    const testing = await runCli(['diff', '-f', manifests(repositoryDoc(`${web.base}/default/`, true), moduleDoc('webapp1', 'webapp', 'latest'))], env);
    expect(testing.stdout).toContain(`# resolves to ${WEBAPP}:2.1.0-rc.1 (repository default, prerelease)`);
    const range = await runCli(['diff', '-f', manifests(repositoryDoc(`${web.base}/default/`), moduleDoc('webapp1', 'webapp', '>=2.1.0-rc.0'))], env);
    expect(range.stdout).toContain('! Module/webapp1 (blocked)');
    expect(range.stdout).toContain('2.1.0-rc.1 is a prerelease and repository \'default\' has testing disabled');
  });

  it('refuses a second instance over org.nethserver.max-per-node and writes nothing', async () => {
    const repoDoc = repositoryDoc(`${web.base}/default/`);
    expect((await runCli(['apply', '-f', manifests(repoDoc, moduleDoc('vault1', 'vault', undefined))], env)).code).toBe(0);
    const m = manifests(repoDoc, moduleDoc('vault1', 'vault', undefined), moduleDoc('vault2', 'vault', undefined), moduleDoc('vault3', 'vault', undefined, 2));
    const diff = await runCli(['diff', '-f', m], env);
    expect(diff.code).toBe(1);
    expect(diff.stdout).toContain(
      '! Module/vault2 (blocked)\n    # vault2: module vault allows at most 1 instance per node (org.nethserver.max-per-node=1); node 1 already has vault1; place it on another node\n',
    );
    expect(diff.stdout).toContain('+ Module/vault3 (create)');
    const apply = await runCli(['apply', '-f', m], env);
    expect(apply.code).not.toBe(0);
    expect(apply.stderr).toContain('Module/vault2: vault2: module vault allows at most 1 instance per node');
    expect(await redis.exists(keys.desired('Module', 'vault3'))).toBe(0);
  });

  it('shows a pending update when the status hash says an older image runs, and why min-from refuses a jump', async () => {
    const repoDoc = repositoryDoc(`${web.base}/default/`);
    const m = manifests(repoDoc, moduleDoc('webapp1', 'webapp', '^1.0'));
    expect((await runCli(['apply', '-f', m], env)).code).toBe(0);
    await redis.hset(keys.moduleStatus('webapp1'), { imageUrl: `${WEBAPP}:1.0.0`, observedGeneration: '1' });

    const diff = await runCli(['diff', '-f', m], env);
    expect(diff.code).toBe(0);
    expect(diff.stdout).toBe(
      [
        '↑ Module/webapp1 update 1.0.0 -> 1.1.0',
        `    # resolves to ${WEBAPP}:1.1.0 (repository default)`,
        `    # running ${WEBAPP}:1.0.0; the node agent performs the update`,
        '',
        'No changes. Desired state matches. 1 version update pending.',
        '',
      ].join('\n'),
    );
    // Applying it again changes nothing: the node agent performs the update.
    const twice = await runCli(['apply', '-f', m, '-o', 'json'], env);
    expect(JSON.parse(twice.stdout)).toMatchObject({ empty: true, applied: false, summary: { updates: 1 }, updates: [{ key: 'Module/webapp1', from: '1.0.0', to: '1.1.0', refused: null }] });

    const jump = manifests(repoDoc, moduleDoc('webapp1', 'webapp', '2.0.0'));
    const refused = await runCli(['diff', '-f', jump], env);
    expect(refused.stdout).toContain('~ Module/webapp1 (update)');
    expect(refused.stdout).toContain(
      '↑ Module/webapp1 update 1.0.0 -> 2.0.0 (refused)\n' +
        `    # resolves to ${WEBAPP}:2.0.0 (repository default)\n` +
        '    # webapp1: cannot update 1.0.0 -> 2.0.0: 2.0.0 can only update instances running >= 1.1.0 (org.nethserver.min-from); update through 1.1.0 first (set version: 1.1.0)\n',
    );
    expect(refused.stdout).toContain('Plan: 0 to create, 1 to update, 0 to delete. 1 version update refused (see above).');

    // The instance's environment (what the agent installed) wins over the status' last target.
    await redis.hset(keys.moduleEnvironment('webapp1'), { IMAGE_URL: `${WEBAPP}:1.1.0`, NODE_ID: '1' });
    const fromEnv = await runCli(['diff', '-f', jump], env);
    expect(fromEnv.stdout).toContain('↑ Module/webapp1 update 1.1.0 -> 2.0.0\n');
  });

  it('warns on stderr and blocks nothing when the repository cannot be reached', async () => {
    const port = await freePort();
    const closed = `http://127.0.0.1:${port}/nothing/`;
    const m = manifests(repositoryDoc(closed), moduleDoc('webapp1', 'webapp', '^1.0'));
    const diff = await runCli(['diff', '-f', m], env);
    expect(diff.stderr).toMatch(new RegExp(`^warning: repository 'default': cannot download http://127\\.0\\.0\\.1:${port}/nothing/repodata\\.json\\?view=latest: ECONNREFUSED\n$`));
    expect(diff.stdout).toContain('+ Module/webapp1 (create)');
    expect(diff.stdout).toContain("    # image not resolved: module 'webapp' is not offered by any enabled repository");
    expect((await runCli(['apply', '-f', m], env)).code).toBe(0);
    const again = await runCli(['diff', '-f', m], env);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('? Module/webapp1: image not resolved at plan time:');
    expect(again.stdout.endsWith('\nNo changes. Desired state matches.\n')).toBe(true);
  });

  it('lists the available update per installed instance in get modules -o wide and -o json', async () => {
    const m = manifests(repositoryDoc(`${web.base}/default/`), moduleDoc('webapp1', 'webapp', '^1.0'), moduleDoc('webapp2', 'webapp', undefined, 2));
    expect((await runCli(['apply', '-f', m], env)).code).toBe(0);
    await redis.hset(keys.moduleEnvironment('webapp1'), { IMAGE_URL: `${WEBAPP}:1.0.0`, NODE_ID: '1' });
    await redis.hset(keys.moduleEnvironment('webapp2'), { IMAGE_URL: `${WEBAPP}:1.1.0`, NODE_ID: '2' });

    const wide = await runCli(['get', 'modules', '-o', 'wide'], env);
    expect(wide.code).toBe(0);
    const lines = wide.stdout.split('\n');
    expect(lines[0]).toMatch(/^NAME +MODULE +VERSION +NODE +GEN +STATUS +IMAGE +TARGET +UPDATE +PORTS +LAST BACKUP +SOURCE/);
    const cell = (row: string): string => row.slice(lines[0]!.indexOf('UPDATE'), lines[0]!.indexOf('PORTS')).trim();
    expect(cell(lines.find((l) => l.startsWith('webapp1'))!)).toBe('1.1.0');
    expect(cell(lines.find((l) => l.startsWith('webapp2'))!)).toBe('2.0.0');

    const json = JSON.parse((await runCli(['get', 'modules', '-o', 'json'], env)).stdout);
    const webapp1 = json.items.find((i: { metadata: { name: string } }) => i.metadata.name === 'webapp1');
    expect(webapp1.status.updates).toEqual({
      current: '1.0.0',
      update: '1.1.0',
      testingUpdate: null,
      inSpec: '1.1.0',
      blocked: [{ tag: '2.0.0', code: 'min_from_not_met', message: expect.stringContaining('2.0.0 can only update instances running >= 1.1.0') }],
    });
    // The plain table does not read the repositories.
    web.hits.length = 0;
    await redis.del(keys.repositoryCache('default'));
    expect((await runCli(['get', 'modules'], env)).stdout).not.toContain('UPDATE');
    expect(web.hits).toEqual([]);
  });
});
