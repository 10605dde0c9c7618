/**
 * Git sources against real git repositories (a bare repository on disk as the remote, a work
 * clone to commit and push from) and a real Redis: pickup by interval and by webhook, the commit
 * SHA recorded, bad commits rejected while the last good one stays, branch and path options.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { Controller } from '../../src/controller/controller.js';
import { readEvents } from '../../src/state/events.js';
import { createLogger } from '../../src/runtime/log.js';
import { readSourceStatus } from '../../src/controller/source-status.js';
import type { SourceSpec } from '../../src/controller/source-reconciler.js';
import { hmacHex } from '../../src/controller/webhook-auth.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { gitRemote, type GitRemote } from '../support/git-remote.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait-for.js';

const NODE = 'apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: {name: node1}\nspec: {id: 1}\n';
const mod = (name: string, tag: string, extra = ''): string =>
  `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${name}\nspec:\n  image: 127.0.0.1:5000/ns8ctl-examples/webapp:${tag}\n  node: 1\n${extra}`;


describe('controller with a git source', () => {
  let srv: TestRedis;
  let redis: Redis;
  let dir: string;
  let remote: string;
  let repo: GitRemote;
  let controllers: Controller[];

  beforeEach(async () => {
    srv = await startRedis();
    redis = srv.client();
    dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-git-'));
    repo = gitRemote(dir);
    remote = repo.remote;
    controllers = [];
  });
  afterEach(async () => {
    for (const c of controllers) await c.stop();
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Writes files in the work clone, commits and pushes; returns the commit SHA. */
  const commit = (files: Record<string, string | null>, message: string, branch = 'main'): string => repo.commit(files, message, { branch });

  async function start(gitOpts: Partial<NonNullable<SourceSpec['git']>> = {}, extra: { webhookSecret?: string; prune?: boolean } = {}): Promise<Controller> {
    const spec: SourceSpec = {
      name: 'default',
      kind: 'git',
      paths: [],
      prune: extra.prune ?? false,
      selfHeal: true,
      git: { url: remote, branch: 'main', path: '.', cacheDir: path.join(dir, 'cache'), intervalMs: 300, ...gitOpts },
    };
    const c = new Controller(
      { sources: [spec], resyncMs: 0, leaseMs: 5000, http: { port: 0 }, backoff: { baseMs: 100, maxMs: 1000, jitter: 0 }, ...(extra.webhookSecret ? { webhookSecret: extra.webhookSecret } : {}) },
      { redis: srv.client(), runner: new ProcessRunner(), logger: createLogger('text', () => undefined) },
    );
    controllers.push(c);
    await c.start();
    await waitFor('leadership', () => c.isLeader);
    return c;
  }

  const image = async (id: string): Promise<string | undefined> => {
    const h = await redis.hget(`ns8ctl/desired/module/${id}`, 'object');
    return h ? (JSON.parse(h) as { spec: { image: string } }).spec.image : undefined;
  };

  it('applies the branch head, records its SHA, and picks up new commits on the interval', async () => {
    const first = commit({ 'node.yaml': NODE, 'wiki.yaml': mod('webapp1', '1.0.0') }, 'first');
    await start();
    await waitFor('first commit applied', async () => (await readSourceStatus(redis, 'default'))?.lastAppliedRevision === first);
    expect(await image('webapp1')).toMatch(/:1\.0\.0$/);
    expect(await redis.hget('ns8ctl/desired/module/webapp1', 'revision')).toBe(first);
    const second = commit({ 'wiki.yaml': mod('webapp1', '1.1.0') }, 'bump webapp1');
    await waitFor('second commit applied', async () => (await readSourceStatus(redis, 'default'))?.lastAppliedRevision === second);
    expect(await image('webapp1')).toMatch(/:1\.1\.0$/);
    expect(await redis.hget('ns8ctl/desired/module/webapp1', 'revision')).toBe(second);
    const applied = (await readEvents(redis)).filter((e) => e.name === 'source-applied');
    expect(applied.at(-1)?.data).toMatchObject({ revision: second, subject: 'bump webapp1', author: 'Ada' });
  });

  it('fetches at once on a webhook with the shared secret and refuses a wrong one', async () => {
    const first = commit({ 'node.yaml': NODE, 'wiki.yaml': mod('webapp1', '1.0.0') }, 'first');
    const c = await start({ intervalMs: 3_600_000 }, { webhookSecret: 's3cret' });
    await waitFor('first commit applied', async () => (await readSourceStatus(redis, 'default'))?.lastAppliedRevision === first);
    const second = commit({ 'wiki.yaml': mod('webapp1', '2.0.0') }, 'second');
    // Drift repair before the webhook re-applies the fetched commit; it does not fetch the new one.
    const h = await redis.hget('ns8ctl/desired/module/webapp1', 'object');
    await redis.hset('ns8ctl/desired/module/webapp1', 'object', h!.replace(':1.0.0', ':7.7.7'));
    c.trigger('source/default'); // as a resync or a desired-state-changed event would
    await waitFor('drift repaired', async () => (await image('webapp1'))?.endsWith(':1.0.0'));
    await c.whenIdle();
    expect((await readSourceStatus(redis, 'default'))?.lastAppliedRevision).toBe(first);
    const url = `http://127.0.0.1:${c.httpPort}/hooks/default`;
    const body = JSON.stringify({ ref: 'refs/heads/main', after: second });
    const wrong = await fetch(url, { method: 'POST', body, headers: { 'x-hub-signature-256': `sha256=${hmacHex('guess', body)}` } });
    expect(wrong.status).toBe(401);
    const none = await fetch(url, { method: 'POST', body });
    expect(none.status).toBe(401);
    expect((await fetch(`http://127.0.0.1:${c.httpPort}/hooks/other`, { method: 'POST', body, headers: { authorization: 'Bearer s3cret' } })).status).toBe(404);
    await c.whenIdle();
    expect((await readSourceStatus(redis, 'default'))?.lastAppliedRevision).toBe(first);
    const ok = await fetch(url, { method: 'POST', body, headers: { 'x-hub-signature-256': `sha256=${hmacHex('s3cret', body)}` } });
    expect(ok.status).toBe(202);
    await waitFor('second commit applied', async () => (await readSourceStatus(redis, 'default'))?.lastAppliedRevision === second);
    expect(await image('webapp1')).toMatch(/:2\.0\.0$/);
  });

  it('rejects a bad commit, keeps the last good one applied, and recovers on the next good commit', async () => {
    const good = commit({ 'node.yaml': NODE, 'wiki.yaml': mod('webapp1', '1.0.0') }, 'good');
    await start();
    await waitFor('good commit applied', async () => (await readSourceStatus(redis, 'default'))?.lastAppliedRevision === good);
    const bad = commit({ 'wiki.yaml': mod('webapp1', '6.6.6', '  colour: red\n') }, 'typo');
    const st = await waitFor('bad commit rejected', async () => {
      const s = await readSourceStatus(redis, 'default');
      return s?.lastAttemptedRevision === bad ? s : undefined;
    });
    expect(st.lastAppliedRevision).toBe(good);
    expect(st.lastError).toBe('manifest_invalid');
    expect(st.conditions.find((c) => c.type === 'Stalled')).toMatchObject({ status: 'True', reason: 'ValidationFailed' });
    expect(st.conditions.find((c) => c.type === 'Ready')!.message).toContain('wiki.yaml:');
    expect(st.conditions.find((c) => c.type === 'Ready')!.message).toContain(`keeps commit ${good.slice(0, 12)}`);
    expect(await image('webapp1')).toMatch(/:1\.0\.0$/);
    const rejected = (await readEvents(redis)).filter((e) => e.name === 'source-rejected');
    expect(rejected).toHaveLength(1);
    expect(rejected[0]!.data).toMatchObject({ revision: bad, subject: 'typo' });
    // Later polls keep the good commit (and repair drift from it) without re-announcing the bad one.
    const h = await redis.hget('ns8ctl/desired/module/webapp1', 'object');
    await redis.hset('ns8ctl/desired/module/webapp1', 'object', h!.replace(':1.0.0', ':7.7.7'));
    await waitFor('drift repaired from the last good commit', async () => (await image('webapp1'))?.endsWith(':1.0.0'));
    expect((await readEvents(redis)).filter((e) => e.name === 'source-rejected')).toHaveLength(1);
    const fixed = commit({ 'wiki.yaml': mod('webapp1', '1.2.0') }, 'fix');
    await waitFor('fixed commit applied', async () => (await readSourceStatus(redis, 'default'))?.lastAppliedRevision === fixed);
    const ready = (await readSourceStatus(redis, 'default'))!.conditions.find((c) => c.type === 'Ready');
    expect(ready).toMatchObject({ status: 'True', reason: 'Applied' });
    expect(await image('webapp1')).toMatch(/:1\.2\.0$/);
  });

  it('follows the given branch and path only', async () => {
    commit({ 'deploy/node.yaml': NODE, 'deploy/wiki.yaml': mod('webapp1', '1.0.0'), 'other/x.yaml': 'not: a manifest\n' }, 'main');
    const prod = commit({ 'deploy/wiki.yaml': mod('webapp1', '3.0.0') }, 'prod', 'prod');
    await start({ branch: 'prod', path: 'deploy' });
    await waitFor('prod applied', async () => (await readSourceStatus(redis, 'default'))?.lastAppliedRevision === prod);
    expect(await image('webapp1')).toMatch(/:3\.0\.0$/);
    const st = await readSourceStatus(redis, 'default');
    expect(st).toMatchObject({ kind: 'git', branch: 'prod', path: 'deploy', url: remote });
  });

  it('prunes what a commit removed, per the source setting', async () => {
    commit({ 'node.yaml': NODE, 'a.yaml': mod('webapp1', '1.0.0'), 'b.yaml': mod('webapp2', '1.0.0'), 'c.yaml': mod('webapp3', '1.0.0') }, 'three');
    await start({}, { prune: true });
    await waitFor('three modules', async () => (await redis.smembers('ns8ctl/desired/module')).length === 3);
    const removed = commit({ 'c.yaml': null }, 'drop webapp3');
    await waitFor('webapp3 pruned', async () => (await readSourceStatus(redis, 'default'))?.lastAppliedRevision === removed);
    expect((await redis.smembers('ns8ctl/desired/module')).sort()).toEqual(['webapp1', 'webapp2']);
  });

  it('reports an unreachable remote and recovers when it is back', async () => {
    const first = commit({ 'node.yaml': NODE, 'wiki.yaml': mod('webapp1', '1.0.0') }, 'first');
    const moved = path.join(dir, 'moved.git');
    execFileSync('mv', [remote, moved]);
    await start();
    const st = await waitFor('fetch failure reported', async () => {
      const s = await readSourceStatus(redis, 'default');
      return s?.lastError === 'git_fetch_failed' ? s : undefined;
    });
    expect(st.conditions.find((c) => c.type === 'Ready')).toMatchObject({ status: 'False', reason: 'FetchFailed' });
    // The event is recorded just after the status is written.
    await waitFor('source-fetch-failed event', async () => (await readEvents(redis)).some((e) => e.name === 'source-fetch-failed'));
    execFileSync('mv', [moved, remote]);
    await waitFor('applied after recovery', async () => (await readSourceStatus(redis, 'default'))?.lastAppliedRevision === first);
  });
});
