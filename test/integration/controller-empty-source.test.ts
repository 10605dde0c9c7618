/**
 * An empty or unreadable source never prunes; `allowEmpty` lets a source remove its last object
 * the GitOps way. Real Redis, real chokidar on temp dirs, real git repositories on disk.
 */
import { mkdirSync, mkdtempSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { Controller } from '../../src/controller/controller.js';
import { readEvents } from '../../src/state/events.js';
import { createLogger } from '../../src/runtime/log.js';
import { readSourceStatus, type SourceStatus } from '../../src/controller/source-status.js';
import type { SourceSpec } from '../../src/controller/source-reconciler.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { keys } from '../../src/state/keys.js';
import { gitRemote, type GitRemote } from '../support/git-remote.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait-for.js';

const mod = (name: string): string => `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${name}\nspec:\n  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0\n  node: 1\n`;

let srv: TestRedis;
let redis: Redis;
let dir: string;
let controllers: Controller[];
const logs: string[] = [];

beforeEach(async () => {
  srv = await startRedis();
  redis = srv.client();
  // NS8 knows node 1 (its VPN record): the sources hold Modules only.
  await redis.hset(keys.nodeVpn(1), { ip_address: '10.5.4.1' });
  await redis.set(keys.nodeSequence(), '1');
  dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-empty-'));
  controllers = [];
});
afterEach(async () => {
  if (process.env.NS8CTL_TEST_LOGS) process.stderr.write(logs.join('\n') + '\n');
  logs.length = 0;
  for (const c of controllers) await c.stop();
  await srv.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function start(spec: SourceSpec): Promise<Controller> {
  const c = new Controller(
    { sources: [spec], resyncMs: 0, leaseMs: 5000, debounceMs: 30, backoff: { baseMs: 100, maxMs: 1000, jitter: 0 } },
    { redis: srv.client(), runner: new ProcessRunner(), logger: createLogger('text', (l) => logs.push(l)) },
  );
  controllers.push(c);
  await c.start();
  await waitFor('leadership', () => c.isLeader);
  return c;
}

const modules = async (): Promise<string[]> => (await redis.smembers(keys.desiredIndex('Module'))).sort();

async function statusWith(pred: (s: SourceStatus) => boolean, what: string): Promise<SourceStatus> {
  return (await waitFor(what, async () => {
    const s = await readSourceStatus(redis, 'default');
    return s && pred(s) ? s : undefined;
  }))!;
}

const stalled = (reason: string) => (s: SourceStatus) => s.conditions.some((c) => c.type === 'Stalled' && c.status === 'True' && c.reason === reason);

describe('a manifests directory source', () => {
  const dirSource = (extra: Partial<SourceSpec> = {}): SourceSpec => ({ name: 'default', kind: 'directory', paths: [path.join(dir, 'm')], prune: true, selfHeal: true, ...extra });

  it('emptied (comments only, then no file at all) prunes nothing: Stalled SourceEmpty and a Warning event', async () => {
    mkdirSync(path.join(dir, 'm'));
    writeFileSync(path.join(dir, 'm', 'w1.yaml'), mod('webapp1'));
    writeFileSync(path.join(dir, 'm', 'w2.yaml'), mod('webapp2'));
    await start(dirSource());
    await waitFor('two modules', async () => (await modules()).length === 2);
    writeFileSync(path.join(dir, 'm', 'w1.yaml'), '# moved elsewhere\n');
    unlinkSync(path.join(dir, 'm', 'w2.yaml'));
    const st = await statusWith(stalled('SourceEmpty'), 'SourceEmpty');
    expect(st.lastError).toBe('source_empty');
    expect(st.conditions.find((c) => c.type === 'Ready')?.message).toMatch(/yields no object.*never prunes.*keeps the 2 object\(s\).*allow-empty/);
    expect(await modules()).toEqual(['webapp1', 'webapp2']);
    const warning = await waitFor('event', async () => (await readEvents(redis)).find((e) => e.name === 'source-prune-refused' && e.type === 'Warning'));
    expect(warning?.message).toContain('yields no object');
    unlinkSync(path.join(dir, 'm', 'w1.yaml'));
    await statusWith((s) => stalled('SourceEmpty')(s) && s.conditions.some((c) => c.type === 'Ready' && c.message.includes(path.join(dir, 'm'))), 'still SourceEmpty');
    await controllers[0]!.whenIdle();
    expect(await modules()).toEqual(['webapp1', 'webapp2']);
  });

  it('with allowEmpty, the last object leaving the source is pruned and the source is Ready with 0 objects', async () => {
    mkdirSync(path.join(dir, 'm'));
    writeFileSync(path.join(dir, 'm', 'w1.yaml'), mod('webapp1'));
    await start(dirSource({ allowEmpty: true }));
    await waitFor('webapp1', async () => (await modules()).length === 1);
    unlinkSync(path.join(dir, 'm', 'w1.yaml'));
    await waitFor('webapp1 pruned', async () => (await modules()).length === 0);
    // The status written before the prune also says Ready (with 1 object): wait for the one after it.
    const st = await statusWith((s) => s.conditions.some((c) => c.type === 'Ready' && c.status === 'True' && /\(0 objects\)/.test(c.message)), 'Ready with 0 objects');
    expect(st.conditions.find((c) => c.type === 'Ready')?.message).toMatch(/desired state matches the manifests \(0 objects\)/);
  });

  it('with allowEmpty, emptying a source of two objects at once trips the mass-prune guard', async () => {
    mkdirSync(path.join(dir, 'm'));
    writeFileSync(path.join(dir, 'm', 'w1.yaml'), mod('webapp1'));
    writeFileSync(path.join(dir, 'm', 'w2.yaml'), mod('webapp2'));
    await start(dirSource({ allowEmpty: true }));
    await waitFor('two modules', async () => (await modules()).length === 2);
    unlinkSync(path.join(dir, 'm', 'w1.yaml'));
    unlinkSync(path.join(dir, 'm', 'w2.yaml'));
    await statusWith(stalled('PruneRefused'), 'PruneRefused');
    expect(await modules()).toEqual(['webapp1', 'webapp2']);
  });
});

describe('a git source', () => {
  let repo: GitRemote;
  beforeEach(() => {
    repo = gitRemote(dir);
  });
  const gitSource = (extra: Partial<SourceSpec> = {}, sub = '.'): SourceSpec => ({
    name: 'default',
    kind: 'git',
    paths: [],
    prune: true,
    selfHeal: true,
    git: { url: repo.remote, branch: 'main', path: sub, cacheDir: path.join(dir, 'cache'), intervalMs: 300 },
    ...extra,
  });

  it('that cannot be fetched prunes nothing; a commit removing every manifest is refused (SourceEmpty)', async () => {
    const first = repo.commit({ 'w1.yaml': mod('webapp1'), 'w2.yaml': mod('webapp2') }, 'two modules');
    await start(gitSource());
    await statusWith((s) => s.lastAppliedRevision === first, 'first commit applied');
    // The forge goes away.
    renameSync(repo.remote, `${repo.remote}.gone`);
    const failed = await statusWith((s) => s.conditions.some((c) => c.type === 'Ready' && c.reason === 'FetchFailed'), 'FetchFailed');
    expect(failed.lastAppliedRevision).toBe(first);
    expect(await modules()).toEqual(['webapp1', 'webapp2']);
    renameSync(`${repo.remote}.gone`, repo.remote);
    const emptied = repo.commit({ 'w1.yaml': null, 'w2.yaml': null, 'README.md': 'manifests moved\n' }, 'remove every manifest');
    const st = await statusWith((s) => s.lastAttemptedRevision === emptied && stalled('SourceEmpty')(s), 'SourceEmpty');
    expect(st.lastAppliedRevision).toBe(first);
    expect(await modules()).toEqual(['webapp1', 'webapp2']);
  });

  it('with allowEmpty, a commit without the manifests path prunes the last object', async () => {
    const first = repo.commit({ 'm/w1.yaml': mod('webapp1'), 'README.md': 'x\n' }, 'one module');
    await start(gitSource({ allowEmpty: true }, 'm'));
    await statusWith((s) => s.lastAppliedRevision === first, 'first commit applied');
    expect(await modules()).toEqual(['webapp1']);
    const emptied = repo.commit({ 'm/w1.yaml': null }, 'retire webapp1');
    await statusWith((s) => s.lastAppliedRevision === emptied, 'empty commit applied');
    expect(await modules()).toEqual([]);
  });
});
